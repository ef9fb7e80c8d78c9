# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""BigArray: NumPy indexing semantics, resize/append, chunks, RSS bound."""
import gc

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import outcore
from conftest import DictFile, make_array, rss_bytes

PS = 4096
RAM = outcore.RAM(PS, budget="512MiB")   # tiny pages: many pages per array

DTYPES = [numpy.dtype(t) for t in (
    "u1", "<i2", "<f4", "<f8", "<c16", ">i4",
    [("a", "<i4"), ("b", "<f8"), ("c", "u1")],   # structured, itemsize 13
)]

MAX_SIDE = {1: 3000, 2: 60, 3: 16, 4: 9}


def new(shape, dtype, order="C", partial=False, seed=0):
    """A BigArray filled with random bytes, and an ndarray holding the same."""
    A = make_array(shape, dtype, order, ram=RAM)
    dtype = numpy.dtype(dtype)
    n = int(numpy.prod(shape)) * dtype.itemsize
    raw = numpy.random.default_rng(seed).integers(0, 256, n, numpy.uint8)
    ref = numpy.frombuffer(raw.tobytes(), dtype).reshape(shape, order=order)
    ref = ref.copy(order=order)
    A[...] = ref
    if partial:
        A._whole = None
        A._vma = None
        A._partial = True        # map per access, as when too big to map
    return A, ref


def same(got, exp):
    got, exp = numpy.asarray(got), numpy.asarray(exp)
    assert got.shape == exp.shape
    assert got.dtype == exp.dtype
    assert got.tobytes() == exp.tobytes()


# ---- index strategies ------------------------------------------------------

@st.composite
def shapes(draw):
    ndim = draw(st.integers(1, 4))
    return tuple(draw(st.integers(0, MAX_SIDE[ndim])) for _ in range(ndim))


@st.composite
def slices(draw, n):
    bound = st.none() | st.integers(-n - 3, n + 3)
    step = st.none() | st.integers(-7, 7).filter(bool) | \
        st.sampled_from([-n - 1, n + 1, -max(n // 2, 1)])
    return slice(draw(bound), draw(bound), draw(step))


@st.composite
def basic_entry(draw, n):
    kind = draw(st.sampled_from(["int", "slice", "slice", "full"]))
    if kind == "int":
        return draw(st.integers(-n - 1, n))   # out of range sometimes
    if kind == "full":
        return slice(None)
    return draw(slices(n))


@st.composite
def indices(draw, shape, advanced=True):
    ndim = len(shape)
    k = draw(st.integers(0, ndim))
    use_ellipsis = draw(st.booleans())
    if use_ellipsis:
        # entries for a prefix and a suffix of the axes around "..."
        p = draw(st.integers(0, k))
        axes = list(range(p)) + list(range(ndim - (k - p), ndim))
    else:
        axes = list(range(k))
    items = []
    n_adv = 0
    for ax in axes:
        n = shape[ax]
        if advanced and n_adv < 2 and draw(st.integers(0, 5)) == 0:
            n_adv += 1
            if draw(st.booleans()) and n > 0:
                items.append(draw(st.lists(st.integers(-n, n - 1),
                                           min_size=0, max_size=5)))
            else:
                items.append(numpy.array(draw(st.lists(
                    st.booleans(), min_size=n, max_size=n)), dtype=bool))
        else:
            items.append(draw(basic_entry(n)))
    if use_ellipsis:
        items.insert(p, Ellipsis)
    for _ in range(draw(st.integers(0, 2))):
        items.insert(draw(st.integers(0, len(items))), None)
    if len(items) == 1 and draw(st.booleans()):
        return items[0]
    return tuple(items)


def check_get(A, ref, idx):
    """A[idx] gives what ref[idx] gives; None when both raise IndexError."""
    try:
        exp = ref[idx]
    except IndexError:
        with pytest.raises(IndexError):
            A[idx]
        return None
    got = A[idx]
    same(got, exp)
    if isinstance(exp, numpy.ndarray):
        assert type(got) is numpy.ndarray
    else:
        assert type(got) is type(exp)          # a NumPy scalar
    return got, exp


# ---- property tests ----------------------------------------------------------

@settings(max_examples=1000)
@given(shape=shapes(), dtype=st.sampled_from(DTYPES),
       order=st.sampled_from("CF"), partial=st.booleans(), data=st.data())
def test_getitem_like_numpy(shape, dtype, order, partial, data):
    A, ref = new(shape, dtype, order, partial)
    for _ in range(3):
        idx = data.draw(indices(shape), label="index")
        r = check_get(A, ref, idx)
        if r is None:
            continue
        got, exp = r
        if not isinstance(exp, numpy.ndarray) or exp.size == 0:
            continue
        # a view for basic indexing, a copy for advanced: as NumPy.  A
        # write through the result shows in the array exactly when it
        # does in NumPy.
        fill = numpy.frombuffer(bytes([0xA5]) * exp.dtype.itemsize,
                                exp.dtype)[0]
        got[...] = fill
        exp[...] = fill
        same(A[...], ref)


@settings(max_examples=1000)
@given(shape=shapes(), dtype=st.sampled_from(DTYPES),
       order=st.sampled_from("CF"), partial=st.booleans(), data=st.data())
def test_setitem_like_numpy(shape, dtype, order, partial, data):
    A, ref = new(shape, dtype, order, partial)
    idx = data.draw(indices(shape), label="index")
    try:
        target = ref[idx]
    except IndexError:
        with pytest.raises(IndexError):
            A[idx] = 0 if dtype.fields is None else numpy.zeros((), dtype)
        return
    tshape = numpy.shape(target)
    how = data.draw(st.sampled_from(["scalar", "full", "trailing"]),
                    label="value")
    if how == "scalar":
        vshape = ()
    elif how == "full":
        vshape = tshape
    else:
        cut = data.draw(st.integers(0, len(tshape)))
        vshape = tshape[cut:]
    n = int(numpy.prod(vshape)) * dtype.itemsize
    raw = numpy.random.default_rng(1).integers(0, 256, n, numpy.uint8)
    value = numpy.frombuffer(raw.tobytes(), dtype).reshape(vshape)
    ref[idx] = value
    A[idx] = value
    same(A[...], ref)


# ---- regressions of the system we descend from --------------------------------

@pytest.mark.parametrize("partial", [False, True])
def test_negative_step_keeps_lowest_element(partial):
    A, ref = new((4 * PS,), "u1", partial=partial)
    for idx in [slice(PS - 2, PS - 3, -5),       # 1 element at PS-2
                slice(PS + 1, None, -PS),        # 2 elements: PS+1, 1
                slice(2 * PS + 1, 0, -PS),       # 2 elements: 2PS+1, PS+1
                slice(None, None, -3),
                slice(3 * PS, PS - 1, -7),
                slice(-1, -4 * PS - 1, -PS - 1)]:
        same(A[idx], ref[idx])
        A[idx] = 77
        ref[idx] = 77
        same(A[...], ref)


@pytest.mark.parametrize("partial", [False, True])
def test_ellipsis_accepted(partial):
    A, ref = new((5, 7, 300), "<f8", partial=partial)
    for idx in [Ellipsis, (Ellipsis,), (Ellipsis, 0), (0, Ellipsis),
                (1, Ellipsis, 2), (Ellipsis, slice(None, None, -2)),
                (slice(1, 4), Ellipsis, None)]:
        same(A[idx], ref[idx])
    A[..., 3] = 1.5
    ref[..., 3] = 1.5
    same(A[...], ref)


@pytest.mark.parametrize("partial", [False, True])
def test_newaxis_accepted(partial):
    A, ref = new((600,), "<i4", partial=partial)
    for idx in [None, (None,), (None, Ellipsis, None), (slice(None), None),
                (None, slice(3, 10)), (None, 5), (5, None)]:
        same(A[idx], ref[idx])
    B, refB = new((6, 700), "<i2", order="F", partial=partial)
    for idx in [(None, 1), (None, Ellipsis, 3, None), (slice(None), None, 4)]:
        same(B[idx], refB[idx])


@pytest.mark.parametrize("partial", [False, True])
def test_out_of_range_and_iteration(partial):
    A, ref = new((10, 600), "u1", partial=partial)
    with pytest.raises(IndexError):
        A[10]
    with pytest.raises(IndexError):
        A[-11]
    with pytest.raises(IndexError):
        A[0, 600]
    with pytest.raises(IndexError):
        A[[0, 10]]
    rows = list(A)
    assert len(rows) == 10
    same(numpy.array(rows), ref)


def test_integer_arrays_and_masks_copy():
    A, ref = new((50, 200), "<f4")
    for idx in [[3, 1, 3], ([1, 2], [3, 4]), ref[:, 0] > 0,
                (slice(None), ref[0] > 0), numpy.array([-1, 0])]:
        got = A[idx]
        same(got, ref[idx])
        assert not numpy.shares_memory(got, A[...])


# ---- attributes ---------------------------------------------------------------

def test_attributes():
    A = make_array((3, 4, 5), "<f8", ram=RAM)
    assert A.shape == (3, 4, 5) and A.ndim == 3 and A.size == 60
    assert A.itemsize == 8 and A.nbytes == 480 and A.dtype == numpy.float64
    assert A.order == "C" and len(A) == 3 and A.major_axis == 0
    assert A.strides == numpy.zeros((3, 4, 5)).strides
    F = make_array((3, 4, 5), "<f8", order="F", ram=RAM)
    assert F.major_axis == 2 and len(F) == 3
    assert F.strides == numpy.zeros((3, 4, 5), order="F").strides
    assert F[...].flags.f_contiguous
    assert "BigArray" in repr(A)
    assert make_array(7, "u1", ram=RAM).shape == (7,)


def test_bad_construction():
    fh = outcore.MemFile(PS).fileh_open(RAM)
    with pytest.raises(TypeError):
        outcore.BigArray((3,), object, fh)
    with pytest.raises(TypeError):
        outcore.BigArray((3,), [("a", "i4"), ("o", "O")], fh)
    with pytest.raises(ValueError):
        outcore.BigArray((3,), "u1", fh, order="K")
    with pytest.raises(ValueError):
        outcore.BigArray((3, -1), "u1", fh)
    with pytest.raises(TypeError):
        outcore.BigArray((3,), "u1", "not a handle")


def test_structured_dtype():
    dt = numpy.dtype([("x", "<i4"), ("y", "<f8", (2,))])
    A = make_array((1000,), dt, ram=RAM)
    A["x"] = numpy.arange(1000)
    A[5] = (7, (1.5, 2.5))
    assert A[5]["x"] == 7 and list(A[5]["y"]) == [1.5, 2.5]
    assert A["x"][999] == 999
    assert A[...].dtype == dt


def test_zero_size_and_0d():
    E = make_array((0, 5), "<f8", ram=RAM)
    assert E[...].shape == (0, 5) and numpy.asarray(E).size == 0
    Z = make_array((), "<f8", ram=RAM)
    Z[...] = 3
    assert Z[()] == 3
    with pytest.raises(TypeError):
        len(Z)


def test_asarray_is_a_view_without_io():
    f = DictFile()
    A = outcore.BigArray((1000, 1000), "<f8", f.fileh_open(RAM))
    a = numpy.asarray(A)
    assert a.shape == (1000, 1000) and f.loads == []
    a[999, 999] = 1
    assert A[999, 999] == 1
    assert len(f.loads) == 1


def test_larger_than_address_space():
    f = DictFile()
    fh = f.fileh_open(RAM)
    A = outcore.BigArray((2 ** 50,), "u1", fh)    # 1 PiB
    with pytest.raises(MemoryError):
        numpy.asarray(A)
    with pytest.raises(MemoryError):
        A[...]
    assert A[0] == 0 and A[-1] == 0
    A[2 ** 49 + 3] = 5
    assert A[2 ** 49 + 3] == 5
    same(A[2 ** 49: 2 ** 49 + 10], numpy.array([0, 0, 0, 5, 0, 0, 0, 0, 0, 0], "u1"))
    same(A[2 ** 49 + 9: 2 ** 49 - 1: -3], numpy.array([0, 0, 5, 0], "u1"))
    assert fh.dirty_pages() == [2 ** 49 // PS]
    with pytest.raises(IndexError):
        A[2 ** 50]
    B = outcore.BigArray((2 ** 40, 2 ** 20), "<f8", fh)   # 8 EiB
    with pytest.raises(MemoryError):
        numpy.asarray(B)
    assert B[2 ** 39, 7] == 0
    with pytest.raises(MemoryError):
        B[:, 0]


# ---- resize / append ------------------------------------------------------------

@pytest.mark.parametrize("order", "CF")
def test_resize(order):
    shape = (10, 300) if order == "C" else (300, 10)
    A, ref = new(shape, "<i8", order)
    old = A[...]
    grown = (25, 300) if order == "C" else (300, 25)
    A.resize(grown)
    assert A.shape == grown
    assert old.shape == shape                 # old views keep their shape
    if order == "C":
        same(A[:10], ref)
        assert not A[10:].any()               # grown part reads as zeros
        A[0, 0] = 42
        assert old[0, 0] == 42                # and still alias
        old[1, 1] = 43
        assert A[1, 1] == 43
    else:
        same(A[:, :10], ref)
        assert not A[:, 10:].any()
        A[0, 0] = 42
        assert old[0, 0] == 42
    with pytest.raises(ValueError):
        A.resize((5, 5))                      # a non-major axis changes
    with pytest.raises(ValueError):
        A.resize((25,))
    small = (4, 300) if order == "C" else (300, 4)
    A.resize(small)
    assert A.shape == small
    A.resize(grown)                           # shrink then grow: zeros
    if order == "C":
        assert not A[4:].any()
    else:
        assert not A[:, 4:].any()


@pytest.mark.parametrize("order", "CF")
def test_append(order):
    shape = (3, 500) if order == "C" else (500, 3)
    A, ref = new(shape, "<f8", order)
    add = numpy.arange(1000.0).reshape((2, 500) if order == "C" else (500, 2))
    A.append(add)
    axis = 0 if order == "C" else 1
    same(A[...], numpy.concatenate([ref, add], axis=axis))
    A.append(add.astype("<f4"))                    # same kind: fine
    before = A[...].copy()
    bad_shape = numpy.zeros((2, 499) if order == "C" else (499, 2))
    with pytest.raises(ValueError):
        A.append(bad_shape)
    with pytest.raises(ValueError):
        A.append(numpy.zeros(500))                 # wrong ndim
    with pytest.raises(TypeError):
        A.append(add.astype(complex))              # unsafe kind
    with pytest.raises(TypeError):
        A.append(numpy.array([["abc"] * 500] * 2) if order == "C"
                 else numpy.array([["abc"] * 2] * 500))
    same(A[...], before)                           # left unchanged


def test_append_is_o_len_values():
    f = DictFile()
    A = outcore.BigArray((0, 512), "<f8", f.fileh_open(RAM))
    for i in range(200):
        A.append(numpy.full((1, 512), i, "<f8"))   # one block per row
    assert A.shape == (200, 512)
    assert f.loads == list(range(200))             # each block loaded once
    assert A[150, 3] == 150
    f.loads.clear()
    A.append(numpy.ones((1, 512)))
    assert f.loads == [200]                        # the old rows untouched


def test_append_rollback_on_failed_assignment():
    A, ref = new((4, 100), "<i4")

    class Bad:
        def __array__(self, dtype=None):
            return numpy.zeros((2, 100), "<i4")

    A.append(Bad())
    assert A.shape == (6, 100)
    before = A[...].copy()
    with pytest.raises(TypeError):
        A.append([[object()] * 100])
    same(A[...], before)


# ---- chunks -----------------------------------------------------------------------

@pytest.mark.parametrize("order", "CF")
def test_chunks(order):
    shape = (1000, 100) if order == "C" else (100, 1000)
    A, ref = new(shape, "<i4", order)
    seen = []
    for sl, v in A.chunks(max_bytes=32 * PS):
        seen.append(sl)
        idx = (sl,) if order == "C" else (Ellipsis, sl)
        same(v, ref[idx])
        assert v.nbytes <= 32 * PS
        assert v.nbytes % PS == 0 or sl.stop == 1000   # whole blocks
    assert len(seen) == 4                              # 256 rows = 25 blocks
    small = list(A.chunks(max_bytes=5 * PS))       # no whole-block fit:
    assert all(v.nbytes <= 5 * PS for _, v in small)   # just the size
    assert seen[0].start == 0 and seen[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(seen, seen[1:]))
    total = sum(int(v.sum(dtype="<i8")) for _, v in A.chunks())
    assert total == int(ref.sum(dtype="<i8"))


def test_chunks_of_rows_larger_than_max():
    A, ref = new((7, 3 * PS), "u1")
    parts = list(A.chunks(max_bytes=PS))
    assert [p[0] for p in parts] == [slice(i, i + 1) for i in range(7)]


# ---- memory bound ------------------------------------------------------------------

class Generated(outcore.BigFile):
    """Block blk holds float64 values equal to blk; nothing is stored."""

    def __init__(self, blksize):
        super().__init__(blksize)
        self.nloads = 0

    def loadblk(self, blk, buf):
        self.nloads += 1
        numpy.frombuffer(buf, "<f8")[:] = blk


def test_reduce_16x_the_budget_keeps_rss_bounded():
    bs = 64 << 10
    budget = 32 << 20
    nbytes = 512 << 20                       # 16 x the budget
    ram = outcore.RAM(bs, budget=budget)
    f = Generated(bs)
    A = outcore.BigArray((nbytes // 8,), "<f8", f.fileh_open(ram))
    gc.collect()
    rss0 = rss_bytes()
    peak = 0
    total = 0.0
    for i, (sl, v) in enumerate(A.chunks()):
        total += float(v.sum())
        if i % 8 == 0:
            peak = max(peak, rss_bytes() - rss0)
    peak = max(peak, rss_bytes() - rss0)
    nblk = nbytes // bs
    per = bs // 8
    assert total == per * nblk * (nblk - 1) / 2
    assert f.nloads == nblk
    st = ram.stats()
    assert st["used_max"] <= budget + bs
    assert st["reclaims"] >= nblk - budget // bs
    assert peak <= budget + (16 << 20), "RSS grew by %d MiB" % (peak >> 20)
    # the mean of the whole view works too, and reloads what it needs
    assert numpy.mean(A[...]) == total / (nbytes // 8)
    assert rss_bytes() - rss0 <= budget + (48 << 20)
