# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""The low level: RAM, files, handles, mappings, errors, mem helpers."""
import gc
import weakref

import numpy
import pytest

import outcore
from conftest import DictFile

PS = 4096


# ---- errors -------------------------------------------------------------

def test_exception_hierarchy():
    assert issubclass(outcore.InvalidArgument, outcore.Error)
    assert issubclass(outcore.InvalidArgument, ValueError)
    assert issubclass(outcore.OutOfMemory, MemoryError)
    assert issubclass(outcore.OutOfMemory, outcore.Error)
    for c in (outcore.BusyError, outcore.ConflictError, outcore.StoreError,
              outcore.ForkedError, outcore.ReadOnlyError,
              outcore.NotFoundError, outcore.ExistsError):
        assert issubclass(c, outcore.Error)
    assert issubclass(outcore.NotFoundError, FileNotFoundError)
    assert issubclass(outcore.ReadOnlyError, PermissionError)


@pytest.mark.parametrize("bs", [0, 1000, 3 * 4096, 2048])
def test_blksize_not_power_of_two(bs):
    with pytest.raises(outcore.InvalidArgument) as e:
        outcore.MemFile(bs)
    assert e.value.code == -22
    assert "MemFile" in str(e.value)
    with pytest.raises(ValueError):
        DictFile(bs)


def test_ram_bad_args():
    with pytest.raises(ValueError):
        outcore.RAM(3000)
    with pytest.raises(ValueError):
        outcore.RAM(4096, kind="nonsense")
    with pytest.raises(ValueError):
        outcore.RAM(4096, budget="12 bananas")
    with pytest.raises(ValueError):
        outcore.RAM(4096, budget=0)
    with pytest.raises(TypeError):
        outcore.RAM(4096, budget=1.5)
    # below one page: says so (it said "invalid argument"), here and where
    # a store makes its RAM from a budget
    with pytest.raises(outcore.InvalidArgument, match="smaller than one "
                       "page of 2097152 bytes"):
        outcore.RAM(budget="1MiB")
    with pytest.raises(outcore.InvalidArgument, match="smaller than one page"):
        outcore.open("/nonexistent/x.oc", ram=4096)


def test_hugetlb_without_huge_pages():
    try:
        with open("/proc/sys/vm/nr_hugepages") as f:
            reserved = int(f.read())
    except OSError:
        reserved = 0
    if reserved:
        pytest.skip("this machine has huge pages reserved")
    with pytest.raises(MemoryError) as e:
        outcore.RAM(2 << 20, kind="hugetlb")
    assert isinstance(e.value, outcore.OutOfMemory)
    assert e.value.code == outcore._core.OC_ENOHUGE


def test_blksize_differs_from_pagesize():
    f = outcore.MemFile(8192)
    with pytest.raises(outcore.InvalidArgument) as e:
        f.fileh_open(outcore.RAM(4096))
    assert e.value.code == outcore._core.OC_EBLKSIZE


def test_parse_size():
    assert outcore.parse_size("512MiB") == 512 << 20
    assert outcore.parse_size("4GiB") == 4 << 30
    assert outcore.parse_size("64k") == 64 << 10
    assert outcore.parse_size(12345) == 12345
    with pytest.raises(ValueError):
        outcore.parse_size("lots")
    with pytest.raises(ValueError):
        outcore.parse_size(-1)


def test_strerror():
    assert outcore.strerror(0)
    assert "huge" in outcore.strerror(outcore._core.OC_ENOHUGE).lower()


# ---- RAM -----------------------------------------------------------------

def test_ram_attributes():
    r = outcore.RAM(8192, budget="1MiB")
    assert r.pagesize == 8192
    assert r.kind == "memfd"
    assert r.budget == 1 << 20
    r.budget = "2MiB"
    assert r.budget == 2 << 20
    r.budget = 3 << 20
    assert r.budget == 3 << 20
    st = r.stats()
    assert st["budget"] == 3 << 20 and st["pagesize"] == 8192
    assert st["used"] == 0
    assert r.reclaim() == 0
    assert "RAM" in repr(r)


def test_ram_tmpfs(tmp_path):
    r = outcore.RAM(4096, budget="1MiB", kind="tmpfs", dir="/dev/shm")
    assert r.kind == "tmpfs"
    f = DictFile(4096)
    fh = f.fileh_open(r)
    v = fh.mmap(0, 2)
    m = memoryview(v)
    m[10] = 5
    assert m[10] == 5
    m.release()
    with pytest.raises(outcore.NotFoundError):
        outcore.RAM(4096, kind="tmpfs", dir=str(tmp_path / "nonexistent"))


def test_ram_default_is_shared():
    a = outcore.ram_default(4096)
    b = outcore.ram_default(4096)
    assert a is b
    fh = outcore.MemFile(4096).fileh_open()
    assert fh.ram is a
    fh16 = outcore.MemFile(16384).fileh_open()
    assert fh16.ram.pagesize == 16384
    assert outcore.ram_budget_default() >= 64 << 20


def test_ram_reclaim_and_budget(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    v = fh.mmap(0, 16)
    a = numpy.frombuffer(v, numpy.uint8)
    a.sum()
    assert len(f.loads) == 16
    assert ram4k.stats()["ram_pages"] == 16
    assert ram4k.reclaim(4) == 4
    assert ram4k.stats()["ram_pages"] == 12
    a.sum()
    assert len(f.loads) == 20
    ram4k.budget = 8 * PS
    assert ram4k.stats()["ram_pages"] <= 8
    a[0] = 1  # dirty pages are never reclaimed
    ram4k.budget = PS
    assert fh.dirty_pages() == [0]
    assert a[0] == 1


# ---- files, handles, mappings -------------------------------------------

def test_memfile_roundtrip(ram4k):
    f = outcore.MemFile(PS)
    assert f.blksize == PS and isinstance(f, outcore.BigFile)
    with f.fileh_open(ram4k) as fh:
        v = fh.mmap(0, 4)
        a = numpy.frombuffer(v, numpy.uint32)
        assert a.sum() == 0
        a[:] = numpy.arange(a.size)
        fh.dirty_writeout(outcore.WRITEOUT_STORE | outcore.WRITEOUT_MARKSTORED)
        assert f.counts()["stores"] == 4
        del a
        del v
    fh2 = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh2.mmap(0, 4), numpy.uint32)
    assert (a == numpy.arange(a.size)).all()


def test_vma_attributes(ram4k):
    fh = DictFile().fileh_open(ram4k)
    v = fh.mmap(3, 5)
    assert v.filerange() == (3, 5)
    assert v.pagesize() == PS
    assert len(v) == 5 * PS
    assert v.addr_stop - v.addr_start == 5 * PS
    assert v.addr_start % PS == 0
    assert v.fileh is fh
    assert v.pyuser is None
    v.pyuser = "mine"
    assert v.pyuser == "mine"
    r = weakref.ref(v)
    m = memoryview(v)
    assert not m.readonly and m.nbytes == 5 * PS
    a = numpy.frombuffer(v, numpy.uint8)
    assert a.ctypes.data == v.addr_start
    with pytest.raises(outcore.BusyError):
        v.unmap()
    m.release()
    del a
    v.unmap()
    assert len(v) == 0 and not v.mapped
    with pytest.raises(BufferError):
        memoryview(v)
    with pytest.raises(ValueError):
        v.filerange()
    del v
    assert r() is None


def test_vma_unmapped_with_last_reference(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    v = fh.mmap(0, 2)
    a = numpy.frombuffer(v, numpy.uint8)
    a[PS] = 7                     # dirty block 1
    r = weakref.ref(v)
    del v
    assert r() is not None        # the array keeps the mapping
    del a
    assert r() is None
    gc.collect()
    assert fh.dirty_pages() == [1]   # unmapping keeps dirty pages
    fh.close()
    assert fh.closed
    fh.close()                    # idempotent
    with pytest.raises(ValueError):
        fh.mmap(0, 1)


def test_vma_pyuser_cycle_collected(ram4k):
    fh = DictFile().fileh_open(ram4k)
    v = fh.mmap(0, 1)

    class Owner:
        pass

    o = Owner()
    o.vma = v
    v.pyuser = o
    r = weakref.ref(v)
    del v, o
    gc.collect()
    assert r() is None


def test_file_handle_cycle_collected(ram4k):
    f = DictFile()
    f.fh = f.fileh_open(ram4k)
    f.fh.mmap(0, 1)
    r = weakref.ref(f)
    del f
    gc.collect()
    assert r() is None


def test_close_with_mappings_busy(ram4k):
    fh = DictFile().fileh_open(ram4k)
    v = fh.mmap(0, 1)
    with pytest.raises(outcore.BusyError) as e:
        fh.close()
    assert e.value.code == -16
    del v
    fh.close()


def test_mmap_bad_ranges(ram4k):
    fh = DictFile().fileh_open(ram4k)
    with pytest.raises(outcore.InvalidArgument):
        fh.mmap(0, 0)
    with pytest.raises(ValueError):
        fh.mmap(2 ** 62, 2 ** 20)        # past 2**63 bytes of file
    with pytest.raises(ValueError):
        fh.mmap(-1, 1)
    with pytest.raises(MemoryError):
        fh.mmap(0, 2 ** 40)              # 4 PiB: no such address space


def test_two_mappings_alias(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 4), numpy.uint8)
    b = numpy.frombuffer(fh.mmap(2, 2), numpy.uint8)
    a[2 * PS + 5] = 42
    assert b[5] == 42
    b[PS] = 9
    assert a[3 * PS] == 9
    assert f.loads == [2, 3]


def test_discard_and_invalidate(ram4k):
    f = DictFile()
    f.blocks[0] = b"\x01" * PS
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 2), numpy.uint8)
    assert a[0] == 1
    a[0] = 5
    assert fh.isdirty()
    fh.dirty_discard()
    assert not fh.isdirty()
    assert a[0] == 1
    assert f.loads == [0, 0]
    f.blocks[0] = b"\x02" * PS
    assert a[0] == 1
    fh.invalidate_page(0)
    assert a[0] == 2
    assert f.loads == [0, 0, 0]


def test_writeout_two_phases(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 8), numpy.uint8)
    for blk in (5, 1, 7, 3):
        a[blk * PS] = blk
    fh.dirty_writeout(outcore.WRITEOUT_STORE)
    assert f.stores == [1, 3, 5, 7]           # ascending
    assert fh.dirty_pages() == [1, 3, 5, 7]   # still dirty
    fh.dirty_writeout(outcore.WRITEOUT_MARKSTORED)
    assert fh.dirty_pages() == []
    assert f.stores == [1, 3, 5, 7]
    a[PS] = 11                                # clean again: dirties anew
    assert fh.dirty_pages() == [1]
    with pytest.raises(outcore.InvalidArgument):
        fh.dirty_writeout(0)
    with pytest.raises(outcore.InvalidArgument):
        fh.dirty_writeout(8)


def test_file_without_storeblk_is_readonly(ram4k):
    class RO(outcore.BigFile):
        def loadblk(self, blk, buf):
            outcore.mem.bzero(buf)

    fh = RO(PS).fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 1), numpy.uint8)
    a[0] = 1
    with pytest.raises(outcore.ReadOnlyError):
        fh.dirty_writeout(outcore.WRITEOUT_STORE)
    assert fh.dirty_pages() == [0]


def test_bigfile_requires_init_and_loadblk(ram4k):
    class NoInit(outcore.BigFile):
        def __init__(self):
            pass

        def loadblk(self, blk, buf):
            pass

    with pytest.raises(ValueError):
        NoInit().fileh_open(ram4k)
    with pytest.raises(TypeError):
        outcore.BigFile(PS).fileh_open(ram4k)
    with pytest.raises(AttributeError):
        outcore.MemFile(PS).blksize = 5


def test_plainfile(tmp_path, ram4k):
    p = tmp_path / "f.bin"
    with pytest.raises(FileNotFoundError):
        outcore.PlainFile(p, PS)
    f = outcore.PlainFile(p, PS, create=True)
    assert f.size == 0
    f.resize(3 * PS + 10)
    assert f.size == 3 * PS + 10
    with f.fileh_open(ram4k) as fh:
        v = fh.mmap(0, 4)
        a = numpy.frombuffer(v, numpy.uint8)
        assert a.sum() == 0
        a[:3 * PS + 10] = 7
        a[3 * PS + 10:] = 9          # past the end: never written
        fh.dirty_writeout(outcore.WRITEOUT_STORE | outcore.WRITEOUT_MARKSTORED)
        f.sync()
        del a, v
    data = p.read_bytes()
    assert data == b"\x07" * (3 * PS + 10)
    ro = outcore.PlainFile(p, PS, readonly=True)
    with ro.fileh_open(ram4k) as fh:
        a = numpy.frombuffer(fh.mmap(0, 4), numpy.uint8)
        assert a[3 * PS + 9] == 7 and a[3 * PS + 10] == 0
        a[0] = 1
        with pytest.raises(outcore.ReadOnlyError):
            fh.dirty_writeout(outcore.WRITEOUT_STORE)
        del a
    with pytest.raises(outcore.ReadOnlyError):
        ro.resize(0)


# ---- mem helpers, prefault ----------------------------------------------

def test_mem_helpers():
    b = bytearray(b"x" * 100)
    outcore.mem.bzero(b)
    assert b == bytearray(100)
    outcore.mem.memset(b, 0xAB)
    assert b == bytearray(b"\xab" * 100)
    outcore.mem.memcpy(b, b"hello")
    assert b[:6] == bytearray(b"hello\xab")
    with pytest.raises(ValueError):
        outcore.mem.memcpy(bytearray(2), b"hello")
    with pytest.raises(ValueError):
        outcore.mem.memset(b, 256)
    with pytest.raises(TypeError):
        outcore.mem.bzero(b"immutable")
    big = numpy.ones(1 << 20, numpy.uint8)
    outcore.mem.bzero(big)
    assert not big.any()


def test_mem_on_managed_memory(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    v = fh.mmap(0, 100)
    outcore.mem.memset(v, 3)
    assert f.loads == list(range(100))
    assert fh.dirty_pages() == list(range(100))
    assert numpy.frombuffer(v, numpy.uint8).min() == 3


def test_prefault(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    v = fh.mmap(0, 10)
    a = numpy.frombuffer(v, numpy.uint8)
    outcore.prefault(a[2 * PS:4 * PS])
    assert f.loads == [2, 3]
    assert fh.dirty_pages() == []
    outcore.prefault(a[5 * PS + 1:7 * PS - 1], write=True)
    assert f.loads == [2, 3, 5, 6]
    assert fh.dirty_pages() == [5, 6]
    outcore.prefault(a[::-PS])                   # negative strides
    assert sorted(set(f.loads)) == list(range(10))
    outcore.prefault(memoryview(v)[8 * PS:], write=True)
    assert fh.dirty_pages() == [5, 6, 8, 9]
    outcore.prefault(numpy.zeros(10))            # unmanaged: ignored
    outcore.prefault(b"bytes")
    ro = a[:]
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        outcore.prefault(ro, write=True)
