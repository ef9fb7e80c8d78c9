# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""outcore.memmap: numpy.memmap with bounded RAM and explicit flush()."""
import os
import warnings

import numpy

from . import _core
from .bigarray import BigArray, _normshape

__all__ = ["memmap"]

_MODES = {"r": "r", "readonly": "r", "r+": "r+", "readwrite": "r+",
          "w+": "w+", "write": "w+", "c": "c", "copyonwrite": "c"}


class memmap(BigArray):
    """A file on disk seen as an N-d array, like ``numpy.memmap``.

    ``memmap(path, dtype=uint8, mode="r+", shape=None, order="C",
    offset=0, ram=None, blksize="2MiB")``

    mode (NumPy's names): "r" read-only; "r+" read and write an existing
    file; "w+" create or truncate it to hold shape; "c" copy-on-write
    (changes stay in memory and never reach the file).  shape None means
    the whole file after offset, which must then be a multiple of the
    itemsize; for "r+" and "w+" a file shorter than offset + the array's
    size is extended with zeros (for "r" and "c" it is an error), as
    ``numpy.memmap`` does.

    Differences from ``numpy.memmap``:

    * RAM is bounded: ram is a byte budget (an int or a string such as
      "512MiB", or an :class:`outcore.RAM`; None: the shared default RAM of
      the block size, whose budget is $OUTCORE_RAM or a quarter of physical
      memory).  Clean data are served from the page cache without copies;
      blocks beyond the budget are unmapped least recently used first.
    * Changes reach the file only at :meth:`flush` (or :meth:`close`,
      which flushes): until then they live in RAM pages (dirty pages are
      never dropped, even over the budget).  Dropping the object without
      close() discards unflushed changes (with a ResourceWarning).
    * Indexing returns plain ``numpy.ndarray`` views (see
      :class:`BigArray`); ``numpy.asarray(m)`` is a view of everything.
    * :meth:`resize` / :meth:`append` change the length of the major axis;
      the file's size follows at the next flush().
    """

    def __init__(self, path, dtype=numpy.uint8, mode="r+", shape=None,
                 order="C", offset=0, ram=None, blksize="2MiB"):
        self._closed = True   # until fully open (for __del__)
        try:
            m = _MODES[mode]
        except (KeyError, TypeError):
            raise ValueError("mode must be one of %s, not %r"
                             % (sorted(_MODES), mode)) from None
        dtype = numpy.dtype(dtype)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if m == "w+" and shape is None:
            raise ValueError("shape must be given if mode == 'w+'")
        blksize = _core.parse_size(blksize)
        path = os.fspath(path)
        self.filename = os.path.abspath(path)
        self.mode = m

        file = _core.PlainFile(path, blksize, readonly=m in ("r", "c"),
                               create=m == "w+")
        if m == "w+":
            file.resize(0)
        size = file.size
        if shape is None:
            avail = size - offset
            if avail < 0:
                raise ValueError("offset %d is past the end of the file "
                                 "(%d bytes)" % (offset, size))
            if avail % dtype.itemsize:
                raise ValueError("Size of available data is not a multiple "
                                 "of the data-type size.")
            shape = (avail // dtype.itemsize,)
        shape = _normshape(shape)
        need = offset + dtype.itemsize * int(numpy.prod(shape, dtype=object))
        if size < need:
            if m in ("r", "c"):
                raise ValueError("mmap length is greater than file size "
                                 "(%d bytes needed, %d in %s)"
                                 % (need, size, path))
            file.resize(need)

        if ram is None or isinstance(ram, _core.RAM):
            ramobj = ram
        else:
            ramobj = _core.RAM(pagesize=blksize, budget=ram)
        self.file = file
        fileh = file.fileh_open(ramobj)
        super().__init__(shape, dtype, fileh, order, offset=offset)
        self._readonly = m == "r"

    @property
    def ram(self):
        """The :class:`outcore.RAM` this array's pages live in."""
        return self._fileh.ram

    def _resize_storage(self, old_nbytes, new_nbytes):
        if self.mode == "r":
            raise ValueError("cannot resize a read-only memmap")

    def _file_size(self):
        return self._offset + self.nbytes

    def flush(self):
        """Write every change to the file and fdatasync it.

        Sets the file size to what the array needs (after resize/append),
        stores the dirty pages in block order, marks them clean, and syncs.
        A no-op for modes "r" and "c".  If storing fails the exception is
        raised and the unstored pages stay dirty: call flush() again.
        """
        self._check_open()
        if self.mode not in ("r+", "w+"):
            return
        want = self._file_size()
        grow = self.file.size < want
        if grow:                  # before: stores past the end are clipped
            self.file.resize(want)
        self._fileh.dirty_writeout(_core.WRITEOUT_STORE |
                                   _core.WRITEOUT_MARKSTORED)
        if self.file.size > want:  # after: no dirty page is left past it
            self.file.resize(want)
        self.file.sync()

    def close(self):
        """Flush (modes "r+"/"w+") and close.  Idempotent.

        If flushing fails the exception is raised and the memmap stays
        open with its changes (retry, or drop it to discard them).  Views
        taken before stay valid (they keep their mapping and the
        handle alive); changes made through them after close() never reach
        the file.
        """
        if self._closed:
            return
        self.flush()   # if it fails, stay open: the changes are still here
        self._closed = True
        self._whole = None
        self._vma = None
        try:
            self._fileh.close()
        except _core.BusyError:
            pass  # views are alive: the handle closes with the last one

    @property
    def closed(self):
        """Whether close() was called."""
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed and self.mode in ("r+", "w+") and \
                    self._fileh.isdirty():
                warnings.warn("outcore.memmap(%r) dropped with unflushed "
                              "changes; they are lost (call flush() or "
                              "close())" % self.filename, ResourceWarning,
                              stacklevel=2)
        except Exception:
            pass

    def __repr__(self):
        return "outcore.memmap(%r, dtype=%r, mode=%r, shape=%r, order=%r%s)" % (
            self.filename, self._dtype.str, self.mode, self._shape,
            self._order, ", offset=%d" % self._offset if self._offset else "")
