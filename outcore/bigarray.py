# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""BigArray: an N-dimensional array over an outcore file handle.

How it works (and why it is correct by construction).  The array's whole
block range is mapped once with one :class:`outcore.VMA` (reserving address
space costs nothing; pages load on first touch and the RAM budget bounds
what stays resident) and one ``numpy.ndarray`` is built over that mapping.
Indexing is then NumPy's own: ``A[index]`` is ``whole[index]`` (basic
indexing gives a view that aliases every other view, advanced indexing a
copy) and ``A[index] = value`` is ``whole[index] = value``, so every index
form NumPy accepts behaves exactly as NumPy defines it: negative steps,
Ellipsis, newaxis, integer arrays, boolean masks, broadcasting.

When the array does not fit the address space (the mapping fails with
MemoryError), each access maps only the rows of the major axis it touches:
the range is computed from the first and last element actually touched
(so steps below -1 cannot miss the lowest element, the bug of the system
outcore descends from), the index is rebased onto that sub-array, and NumPy
does the rest.  Index forms whose major-axis range cannot be bounded this
way need the whole array and raise MemoryError.

The major axis is the one laid out slowest in memory: the first for C
order, the last for Fortran order.  Only it may change in :meth:`resize`
and grow in :meth:`append`.
"""
import math
import operator

import numpy

from . import _core

__all__ = ["BigArray"]

# A BigArray larger than this is never mapped whole (the core refuses
# ranges past 2**63 bytes; NumPy cannot index past intp anyway).
_MAX_WHOLE = 1 << 62
# No array may end past this byte (file offsets are signed 64-bit).
_MAX_NBYTES = (1 << 63) - 1


def _error(cls, code, msg):
    """An exception of an outcore class with its code, as the core raises."""
    e = cls(msg)
    e.code = code
    return e


def _normshape(shape):
    """shape as a tuple of non-negative ints (an int is a 1-tuple)."""
    try:
        shape = (operator.index(shape),)
    except TypeError:
        shape = tuple(operator.index(n) for n in shape)
    for n in shape:
        if n < 0:
            raise ValueError("negative dimensions are not allowed")
    return shape


class BigArray:
    """An N-d array of a fixed-size dtype stored in a file handle's blocks.

    ``BigArray(shape, dtype, fileh, order="C", *, offset=0)``: shape is an
    int or a sequence of ints, dtype any NumPy dtype without Python objects
    (structured dtypes included), fileh an open :class:`outcore.FileH`,
    order "C" or "F", offset the byte offset of element 0 in the file.

    It behaves like ``numpy.ndarray`` for indexing and assignment:
    ``A[index]`` returns a real ``numpy.ndarray`` (a view whose pages load
    lazily and alias every other view for basic indexing, a copy for
    advanced indexing), ``A[index] = value`` broadcasts like NumPy, and
    ``numpy.asarray(A)`` / ``A[...]`` is a view of the whole array.
    ``len(A)`` is ``A.shape[0]`` as in NumPy.  Data reach the file when the
    handle's dirty pages are written out (``fileh.dirty_writeout``).

    An array larger than the RAM budget is fine: pages beyond the budget
    are reclaimed (clean ones) and reloaded when touched again.  Walk such
    an array with :meth:`chunks` for reductions whose temporaries must stay
    small.
    """

    def __init__(self, shape, dtype, fileh, order="C", *, offset=0):
        shape = _normshape(shape)
        dtype = numpy.dtype(dtype)
        if dtype.hasobject:
            raise TypeError(
                "BigArray cannot hold dtype %s: it contains Python objects, "
                "whose references cannot live in a file" % (dtype,))
        if dtype.itemsize == 0:
            raise TypeError("BigArray needs a dtype of non-zero size, not %s"
                            % (dtype,))
        if order not in ("C", "F"):
            raise ValueError("order must be 'C' or 'F', not %r" % (order,))
        offset = operator.index(offset)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if not isinstance(fileh, _core.FileH):
            raise TypeError("fileh must be an outcore.FileH, not %s"
                            % type(fileh).__name__)
        self._shape = shape
        self._dtype = dtype
        self._order = order
        self._fileh = fileh
        self._blksize = fileh.blksize
        self._offset = offset
        self._readonly = False
        self._closed = False
        self._vma = None          # the mapping of the whole array
        self._whole = None        # the ndarray over it
        self._partial = False     # True: the array does not fit the
                                  # address space; map per access
        # Bytes past the current end that may hold data written when the
        # array was longer: zeroed when the array grows over them.
        self._hwm = self.nbytes

    # ---- attributes ---------------------------------------------------

    @property
    def shape(self):
        """The shape, a tuple of ints."""
        return self._shape

    @property
    def dtype(self):
        """The element dtype."""
        return self._dtype

    @property
    def ndim(self):
        """Number of dimensions."""
        return len(self._shape)

    @property
    def size(self):
        """Number of elements."""
        return math.prod(self._shape)

    @property
    def itemsize(self):
        """Size of one element in bytes."""
        return self._dtype.itemsize

    @property
    def nbytes(self):
        """Size of the array in bytes."""
        return self.size * self._dtype.itemsize

    @property
    def order(self):
        """Memory layout: 'C' (row-major) or 'F' (column-major)."""
        return self._order

    @property
    def strides(self):
        """Byte strides, as NumPy computes them for a contiguous array."""
        return self._strides()

    @property
    def fileh(self):
        """The file handle the data live in."""
        return self._fileh

    @property
    def offset(self):
        """Byte offset of element 0 in the file."""
        return self._offset

    @property
    def major_axis(self):
        """The axis laid out slowest in memory: 0 for C, ndim-1 for F."""
        if not self._shape:
            return None
        return 0 if self._order == "C" else len(self._shape) - 1

    def _strides(self):
        st, acc = [0] * self.ndim, self.itemsize
        axes = range(self.ndim - 1, -1, -1) if self._order == "C" \
            else range(self.ndim)
        for i in axes:
            st[i] = acc
            acc *= self._shape[i]
        return tuple(st)

    def _row_bytes(self):
        """Bytes of one step along the major axis."""
        m = self.major_axis
        return math.prod(n for i, n in enumerate(self._shape) if i != m) \
            * self.itemsize

    def __len__(self):
        """Length of the first axis, as in NumPy."""
        if not self._shape:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    def __repr__(self):
        return "BigArray(shape=%r, dtype=%r, order=%r)" % (
            self._shape, self._dtype.str if not self._dtype.fields
            else self._dtype.descr, self._order)

    # ---- mapping ------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise ValueError("operation on a closed %s" % type(self).__name__)

    def _fits(self):
        return self._offset + self.nbytes <= _MAX_WHOLE

    def _map_bytes(self, b0, b1, headroom=False):
        """A VMA covering array bytes [b0, b1) and the offset of b0 in it."""
        bs = self._blksize
        a0, a1 = self._offset + b0, self._offset + b1
        pg0 = a0 // bs
        pglen = -(-a1 // bs) - pg0
        if headroom:
            # growing: leave room so that appends do not remap each time
            old = self._vma.filerange()[1] if self._vma is not None else 0
            want = max(pglen, 2 * old)
            if want > pglen:
                try:
                    return self._fileh.mmap(pg0, want), a0 - pg0 * bs
                except MemoryError:
                    pass
        return self._fileh.mmap(pg0, pglen), a0 - pg0 * bs

    def _ndarray(self, shape, vma, off):
        a = numpy.ndarray(shape, self._dtype, buffer=vma, offset=off,
                          order=self._order)
        if self._readonly:
            a.flags.writeable = False
        return a

    def _empty(self, shape):
        a = numpy.zeros(shape, self._dtype, order=self._order)
        if self._readonly:
            a.flags.writeable = False
        return a

    def _too_big(self):
        return MemoryError(
            "%s of %d bytes does not fit the address space: index a part of "
            "it, or walk it with .chunks()" % (type(self).__name__,
                                               self.nbytes))

    def _get_whole(self):
        """The ndarray over the whole array (MemoryError if it cannot be)."""
        self._check_open()
        if self._whole is not None:
            return self._whole
        if self._partial or not self._fits():
            self._partial = True
            raise self._too_big()
        nbytes = self.nbytes
        if nbytes == 0:
            self._whole = self._empty(self._shape)
            return self._whole
        bs = self._blksize
        end = self._offset + nbytes
        vma = self._vma
        if vma is None or (vma.filerange()[0] + vma.filerange()[1]) * bs < end:
            try:
                vma, _ = self._map_bytes(0, nbytes,
                                         headroom=self._vma is not None)
            except MemoryError:
                self._partial = True
                raise self._too_big() from None
            self._vma = vma
        off = self._offset - vma.filerange()[0] * bs
        self._whole = self._ndarray(self._shape, vma, off)
        return self._whole

    def _rows(self, lo, hi):
        """An ndarray of major-axis rows [lo, hi), mapping only them."""
        m = self.major_axis
        shape = self._shape[:m] + (hi - lo,) + self._shape[m + 1:]
        rb = self._row_bytes()
        if hi <= lo or rb == 0:
            return self._empty(shape)
        if lo == 0 and hi == self._shape[m] and not self._partial:
            return self._get_whole()
        if not self._fits() and (hi - lo) * rb > _MAX_WHOLE:
            raise self._too_big()
        try:
            vma, off = self._map_bytes(lo * rb, hi * rb)
        except MemoryError:
            raise self._too_big() from None
        return self._ndarray(shape, vma, off)

    # ---- indexing -----------------------------------------------------

    def _locate(self, index):
        """Bound the major-axis rows an index touches.

        Returns (lo, hi, rebased index) such that
        ``A[index] == A_rows(lo, hi)[rebased]``, or None when the index
        cannot be bounded (it then needs every row).
        """
        ndim = self.ndim
        if ndim == 0:
            return None
        items = list(index) if isinstance(index, tuple) else [index]
        for k, e in enumerate(items):
            if isinstance(e, (bool, numpy.bool_)):
                return None
            if isinstance(e, list):
                items[k] = e = numpy.asarray(e)
                if e.size == 0:
                    items[k] = e = e.astype(numpy.intp)

        def consumes(e):
            if e is None or e is Ellipsis:
                return 0
            if isinstance(e, numpy.ndarray) and e.dtype == bool:
                return e.ndim
            return 1

        used = sum(consumes(e) for e in items)
        if sum(1 for e in items if e is Ellipsis) > 1:
            return None
        if self._order == "F" and used < ndim and \
                not any(e is Ellipsis for e in items):
            return None  # the last (major) axis is an implicit ":"
        order = range(len(items)) if self._order == "C" \
            else range(len(items) - 1, -1, -1)
        pos = None
        for k in order:
            e = items[k]
            if e is None:
                continue
            if e is Ellipsis:
                if ndim - used > 0:
                    return None  # the major axis is inside "..."
                continue
            if consumes(e) != 1:
                return None      # a multi-d (or 0-d) mask: not bounded here
            pos = k
            break
        if pos is None:
            return None

        m = self.major_axis
        n = self._shape[m]
        e = items[pos]
        if isinstance(e, slice):
            start, stop, step = e.indices(n)
            r = range(start, stop, step)
            if len(r) == 0:
                lo = hi = 0
                new = slice(0, 0)
            else:
                first, last = r[0], r[-1]
                lo, hi = min(first, last), max(first, last) + 1
                if step > 0:
                    new = slice(first - lo, last - lo + 1, step)
                else:
                    new = slice(first - lo, None, step)
        elif isinstance(e, numpy.ndarray):
            if e.dtype == bool:
                if e.shape != (n,):
                    return None
                nz = numpy.flatnonzero(e)
                if nz.size == 0:
                    lo = hi = 0
                else:
                    lo, hi = int(nz[0]), int(nz[-1]) + 1
                new = e[lo:hi]
            elif e.dtype.kind in "iu":
                if e.size == 0:
                    lo = hi = 0
                    new = e.astype(numpy.intp)
                else:
                    bad = (e < -n) | (e >= n)
                    if bad.any():
                        raise IndexError(
                            "index %d is out of bounds for axis %d with "
                            "size %d" % (e[bad].flat[0], m, n))
                    norm = numpy.where(e < 0, e + n, e).astype(numpy.intp)
                    lo, hi = int(norm.min()), int(norm.max()) + 1
                    new = norm - lo
            else:
                return None
        else:
            try:
                i = operator.index(e)
            except TypeError:
                return None
            if not -n <= i < n:
                raise IndexError("index %d is out of bounds for axis %d "
                                 "with size %d" % (i, m, n))
            if i < 0:
                i += n
            lo, hi, new = i, i + 1, 0
        items[pos] = new
        return lo, hi, tuple(items)

    def _target(self, index):
        """(ndarray, index) to apply: the whole array, or just the rows."""
        if not self._partial:
            try:
                return self._get_whole(), index
            except MemoryError:
                if not self._partial:
                    raise
        self._check_open()
        loc = self._locate(index)
        if loc is None:
            return self._rows(0, self._shape[self.major_axis]
                              if self._shape else 0), index
        lo, hi, new = loc
        return self._rows(lo, hi), new

    def __getitem__(self, index):
        """``A[index]``: exactly what NumPy returns for an ndarray."""
        if not self._shape:
            self._check_open()
            return self._get_whole()[index]
        a, idx = self._target(index)
        return a[idx]

    def __setitem__(self, index, value):
        """``A[index] = value`` with NumPy semantics (broadcasting too)."""
        if not self._shape:
            self._check_open()
            self._get_whole()[index] = value
            return
        a, idx = self._target(index)
        a[idx] = value

    def __iter__(self):
        """Iterate over the first axis, as NumPy does."""
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype=None):
        """The whole array as an ndarray view (no copy, no I/O).

        An array that does not fit the address space raises MemoryError:
        index a part of it or use :meth:`chunks`.
        """
        a = self[...]
        if dtype is not None:
            a = a.astype(dtype, copy=False)
        return a

    # ---- resize / append ----------------------------------------------

    def _resize_storage(self, old_nbytes, new_nbytes):
        """Hook for subclasses whose storage must follow the size."""

    def resize(self, newshape):
        """Change the length of the major axis in O(1).

        Only the major axis may change (the first for C order, the last for
        F order).  Views taken before keep their shape and still alias the
        array.  The grown part reads as zeros: what the file holds past the
        old end, plus zeros written over any part that a previous shrink
        cut off (shrinking itself discards nothing: the file keeps those
        bytes until they are overwritten or the file is truncated).
        """
        self._check_open()
        newshape = _normshape(newshape)
        if not self._shape:
            raise ValueError("cannot resize a 0-d BigArray")
        m = self.major_axis
        if len(newshape) != self.ndim or any(
                a != b for i, (a, b) in enumerate(zip(newshape, self._shape))
                if i != m):
            raise ValueError(
                "resize: only the major axis (%d) may change: %r -> %r"
                % (m, self._shape, newshape))
        end = self._offset + math.prod(newshape) * self.itemsize
        if end > _MAX_NBYTES:
            raise _error(_core.InvalidArgument, -75,
                         "resize: shape %r of %s ends at byte %d: past "
                         "2**63-1" % (newshape, self._dtype, end))
        old_shape, old_nbytes = self._shape, self.nbytes
        self._shape = newshape
        new_nbytes = self.nbytes
        try:
            self._resize_storage(old_nbytes, new_nbytes)
        except BaseException:
            self._shape = old_shape
            raise
        self._whole = None
        if new_nbytes > old_nbytes and old_nbytes < self._hwm:
            z1 = min(new_nbytes, self._hwm)
            try:
                self._zero_bytes(old_nbytes, z1)
            except BaseException:
                self._shape = old_shape
                self._whole = None
                self._resize_storage(new_nbytes, old_nbytes)
                raise
        self._hwm = max(self._hwm, new_nbytes)

    def _zero_bytes(self, b0, b1):
        if b1 <= b0:
            return
        if self._readonly:
            raise ValueError("cannot resize a read-only array over old data")
        vma, off = self._map_bytes(b0, b1)
        z = numpy.ndarray((b1 - b0,), numpy.uint8, buffer=vma, offset=off)
        _core.bzero(z)

    def append(self, values):
        """Append values along the major axis, in O(len(values)).

        values must have the array's shape on every other axis (same ndim)
        and a dtype that casts to the array's under NumPy's "same_kind"
        rule (int64 into int32 is allowed, float into int is not).  On any
        error the array is left unchanged.
        """
        self._check_open()
        if not self._shape:
            raise ValueError("cannot append to a 0-d BigArray")
        values = numpy.asarray(values)
        m = self.major_axis
        if values.ndim != self.ndim or any(
                a != b for i, (a, b) in enumerate(zip(values.shape,
                                                      self._shape))
                if i != m):
            raise ValueError(
                "all the input array dimensions except for the "
                "concatenation axis must match exactly: array %r, values %r "
                "(axis %d)" % (self._shape, values.shape, m))
        if not numpy.can_cast(values.dtype, self._dtype, casting="same_kind"):
            raise TypeError("cannot append %s values to a %s BigArray "
                            "(casting rule 'same_kind')"
                            % (values.dtype, self._dtype))
        n, d = self._shape[m], values.shape[m]
        if d == 0:
            return
        old_shape = self._shape
        self.resize(old_shape[:m] + (n + d,) + old_shape[m + 1:])
        idx = (slice(n, n + d),) if self._order == "C" \
            else (Ellipsis, slice(n, n + d))
        try:
            self[idx] = values
        except BaseException:
            self.resize(old_shape)
            raise

    # ---- chunks -------------------------------------------------------

    def chunks(self, max_bytes=None):
        """Walk the array along the major axis in block-aligned pieces.

        Yields ``(slice, view)`` pairs, ``view = A[slice]`` along the major
        axis (``A[..., slice]`` for F order), covering the array in order.
        Each piece is at most max_bytes long (default: a quarter of the RAM
        budget, at most 64 MiB) and, when a row does not exceed that, spans
        a whole number of blocks, so that a reduction such as
        ``sum(v.sum() for _, v in A.chunks())`` touches each block once and
        keeps its temporaries small whatever the array's size.
        """
        self._check_open()
        if not self._shape:
            raise TypeError("chunks() of a 0-d BigArray")
        m = self.major_axis
        n = self._shape[m]
        rb = self._row_bytes()
        bs = self._blksize
        if max_bytes is None:
            try:
                budget = self._fileh.ram.budget
            except Exception:
                budget = 256 << 20
            max_bytes = max(bs, min(budget // 4, 64 << 20))
        else:
            max_bytes = int(_core.parse_size(max_bytes))
        if n == 0:
            return
        if rb == 0:
            rows = n
        else:
            rows = max(1, max_bytes // rb)
            align = bs // math.gcd(rb, bs)   # rows per whole blocks
            if rows >= align:
                rows -= rows % align
        # when element 0 is not block-aligned, cut the first piece short so
        # that the following ones start on block boundaries
        first = rows
        if rb and self._offset % bs and rows > 1:
            skip = (-self._offset) % bs
            if skip % rb == 0 and 0 < skip // rb < rows:
                first = skip // rb
        start = 0
        step = first
        while start < n:
            stop = min(n, start + step)
            sl = slice(start, stop)
            idx = (sl,) if self._order == "C" else (Ellipsis, sl)
            yield sl, self[idx]
            start = stop
            step = rows
