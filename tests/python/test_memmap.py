# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""outcore.memmap against numpy.memmap on the same files."""
import warnings

import numpy
import pytest

import outcore

BS = 64 << 10


def test_roundtrip_with_numpy_memmap(tmp_path):
    p = tmp_path / "a.f8"
    ref = numpy.random.default_rng(0).random((300, 1000))
    m = numpy.memmap(p, "<f8", "w+", shape=ref.shape)
    m[:] = ref
    m.flush()
    del m
    with outcore.memmap(p, "<f8", "r+", shape=(300, 1000), ram="4MiB",
                        blksize=BS) as a:
        assert (a[...] == ref).all()
        a[10:20, ::3] = -1.0
        ref[10:20, ::3] = -1.0
        a[-1] = 7
        ref[-1] = 7
        # nothing reaches the file before flush()
        assert (numpy.memmap(p, "<f8", "r", shape=ref.shape)[-1] != 7).all()
        a.flush()
        assert (numpy.memmap(p, "<f8", "r", shape=ref.shape) == ref).all()
        a[0, 0] = 123.0
    # close() flushed
    assert numpy.memmap(p, "<f8", "r", shape=ref.shape)[0, 0] == 123.0


def test_sees_changes_written_by_numpy(tmp_path):
    p = tmp_path / "b.i4"
    numpy.arange(100000, dtype="<i4").tofile(p)
    a = outcore.memmap(p, "<i4", "r", blksize=BS)
    assert a.shape == (100000,)
    assert (a[...] == numpy.arange(100000)).all()
    assert a[...].flags.writeable is False
    with pytest.raises(ValueError):
        a[0] = 1
    a.close()


def test_shape_none_and_offset(tmp_path):
    p = tmp_path / "c.bin"
    data = numpy.arange(1000, dtype="<u2")
    p.write_bytes(b"HEADER" + data.tobytes())
    a = outcore.memmap(p, "<u2", "r", offset=6, blksize="4k")
    n = numpy.memmap(p, "<u2", "r", offset=6)
    assert a.shape == n.shape == (1000,)
    assert (a[...] == n).all()
    with pytest.raises(ValueError):
        outcore.memmap(p, "<u4", "r", offset=4, blksize="4k")  # not a multiple
    a.close()
    b = outcore.memmap(p, "<u2", "r+", offset=6, shape=(10, 100),
                       order="F", blksize="4k")
    n = numpy.memmap(p, "<u2", "r+", offset=6, shape=(10, 100), order="F")
    assert (b[...] == n).all()
    b[3, ::7] = 9
    b.flush()
    n2 = numpy.memmap(p, "<u2", "r", offset=6, shape=(10, 100), order="F")
    assert (n2[3, ::7] == 9).all()
    assert p.read_bytes()[:6] == b"HEADER"
    b.close()


def test_modes(tmp_path):
    p = tmp_path / "d.u1"
    with pytest.raises(ValueError):
        outcore.memmap(p, "u1", "w+")                 # shape needed
    with pytest.raises(ValueError):
        outcore.memmap(p, "u1", "x")
    with pytest.raises(FileNotFoundError):
        outcore.memmap(p, "u1", "r+")
    w = outcore.memmap(p, "u1", "w+", shape=(5000,), blksize="4k")
    assert p.stat().st_size == 5000
    assert not w[...].any()
    w[...] = 3
    w.close()
    assert p.read_bytes() == b"\x03" * 5000
    # w+ truncates an existing file
    w = outcore.memmap(p, "u1", "write", shape=(10,), blksize="4k")
    w.close()
    assert p.read_bytes() == b"\x00" * 10
    # c: copy on write, never reaches the file
    c = outcore.memmap(p, "u1", "c", blksize="4k")
    c[...] = 9
    assert (c[...] == 9).all()
    c.flush()
    c.close()
    assert p.read_bytes() == b"\x00" * 10
    # r+ extends a short file like numpy.memmap
    r = outcore.memmap(p, "u1", "r+", shape=(20,), blksize="4k")
    assert p.stat().st_size == 20
    r.close()
    with pytest.raises(ValueError):
        outcore.memmap(p, "u1", "r", shape=(30,), blksize="4k")


def test_flush_only(tmp_path):
    p = tmp_path / "e.f4"
    numpy.zeros(50000, "<f4").tofile(p)
    a = outcore.memmap(p, "<f4", blksize="4k")
    a[100:200] = 1
    del a                                # dropped unflushed: lost
    gc_collect()
    assert numpy.fromfile(p, "<f4").sum() == 0
    a = outcore.memmap(p, "<f4", blksize="4k")
    a[100:200] = 1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a.__del__()
    assert any(issubclass(x.category, ResourceWarning) for x in w)
    a.flush()
    assert numpy.fromfile(p, "<f4").sum() == 100
    a.close()
    a.close()
    with pytest.raises(ValueError):
        a[0]


def gc_collect():
    import gc
    gc.collect()


def test_resize_and_append_reach_the_file_at_flush(tmp_path):
    p = tmp_path / "g.i8"
    a = outcore.memmap(p, "<i8", "w+", shape=(0, 4), blksize="4k")
    for i in range(1000):
        a.append(numpy.full((1, 4), i, "<i8"))
    assert p.stat().st_size == 0
    a.flush()
    got = numpy.fromfile(p, "<i8").reshape(-1, 4)
    assert got.shape == (1000, 4) and (got[:, 0] == numpy.arange(1000)).all()
    a.resize((10, 4))
    a.flush()
    assert p.stat().st_size == 10 * 4 * 8
    a.resize((20, 4))
    assert not a[10:].any()
    a.close()
    r = outcore.memmap(p, "<i8", "r", shape=(10, 4), blksize="4k")
    with pytest.raises(ValueError):
        r.resize((11, 4))
    r.close()


def test_shrinking_flush_with_old_views(tmp_path):
    """A view taken before the array shrank, read past the new end after
    the flush that cut the file: zeros (blocks mapped from the file there
    raised SIGBUS), a change made there before is written and then cut,
    and the file ends where the array does."""
    p = tmp_path / "s.u1"
    numpy.full(8 << 20, 7, numpy.uint8).tofile(p)
    m = outcore.memmap(p, numpy.uint8, "r+", shape=(8 << 20,))
    v = m[...]
    assert v[-1] == 7 and v[(3 << 20) + 5] == 7   # mapped from the file
    v[6 << 20] = 9                                 # a change past the cut
    m.resize((1 << 20) + 100)                      # inside block 0's end
    m.flush()
    assert p.stat().st_size == (1 << 20) + 100
    assert v[-1] == 0 and v[(3 << 20) + 5] == 0 and v[6 << 20] == 0
    assert v[(1 << 20) + 99] == 7 and v[(1 << 20) + 100] == 0
    assert (m[...] == 7).all()
    m.close()


def test_views_survive_close(tmp_path):
    p = tmp_path / "h.u1"
    a = outcore.memmap(p, "u1", "w+", shape=(9000,), blksize="4k")
    v = a[10:20]
    v[...] = 5
    a.close()                            # flushes; the view stays valid
    assert (v == 5).all()
    assert p.read_bytes()[10:20] == b"\x05" * 10


def test_budget_bounds_resident_blocks(tmp_path):
    p = tmp_path / "i.f8"
    n = (16 << 20) // 8
    numpy.ones(n, "<f8").tofile(p)
    a = outcore.memmap(p, "<f8", "r", ram="1MiB", blksize="64k")
    assert a.ram.budget == 1 << 20
    assert a[...].sum() == n
    st = a.ram.stats()
    assert st["used_max"] <= (1 << 20) + (64 << 10)
    assert st["reclaims"] > 0
    a.close()


def test_prefault_before_syscall(tmp_path):
    p = tmp_path / "j.u1"
    q = tmp_path / "k.u1"
    p.write_bytes(bytes(range(256)) * 64)
    a = outcore.memmap(p, "u1", "r", blksize="4k")
    v = a[...]
    outcore.prefault(v)
    with open(q, "wb") as f:
        f.write(memoryview(v))
    assert q.read_bytes() == p.read_bytes()
    a.close()


def test_scattered_writes_keep_only_the_granules_written(tmp_path):
    """A write to a block mapped from the file copies one granule (1/32 of
    a 2 MiB block) into RAM, not the block; flush writes those granules."""
    p = tmp_path / "s.f8"
    nblk, per = 64, (2 << 20) // 8
    ref = numpy.arange(nblk * per, dtype="<f8")
    ref.tofile(p)
    a = outcore.memmap(p, "<f8", "r+", ram="32MiB", blksize="2MiB")
    st0 = a.ram.stats()
    rng = numpy.random.default_rng(1)
    for b in range(nblk):
        i = b * per + int(rng.integers(0, per))
        a[i] = -1.0
        ref[i] = -1.0
    st = a.ram.stats()
    assert st["patched_pages"] == nblk
    assert st["granule_copies"] - st0["granule_copies"] == nblk
    assert st["patch_bytes"] == nblk * (64 << 10)
    assert st["cow_copies"] == st0["cow_copies"]
    # 64 dirty blocks of 2 MiB would be 128 MiB: the granules fit a 32 MiB
    # budget, whose bases were unmapped as needed (never dropped)
    assert st["used_max"] <= (32 << 20) + nblk * (64 << 10)
    assert (a[...] == ref).all()
    a.flush()
    st = a.ram.stats()
    assert st["patched_pages"] == 0 and st["patch_bytes"] == 0
    assert (numpy.fromfile(p, "<f8") == ref).all()
    a.close()
