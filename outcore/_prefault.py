# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""outcore.prefault: load managed memory through the normal return path."""
import numpy

from . import _core


def _extent(a):
    """The byte range [lo, hi) that ndarray a spans in memory."""
    if a.size == 0:
        return 0, 0
    lo = hi = a.__array_interface__["data"][0]
    for n, st in zip(a.shape, a.strides):
        ext = (n - 1) * st
        if ext < 0:
            lo += ext
        else:
            hi += ext
    return lo, hi + a.itemsize


def prefault(obj, write=False):
    """Load every page of managed memory that obj spans, as touching it would.

    obj is a NumPy array (any strides), a :class:`BigArray` (its whole
    extent) or any object with the buffer protocol.  With ``write=True`` the
    pages are also made dirty and writable (obj must be writable).

    Unlike a touch, a failure comes back here: an exception raised by a
    Python ``loadblk`` is raised from this call, and a core error is raised
    as an :class:`outcore.Error`.  Use it before passing managed memory to
    system calls (``os.write``, ``socket.send``, ``readinto``...), which fail
    with EFAULT on pages that are not loaded, and when load errors must not
    be fatal.  The pages stay loaded until reclaimed, so keep the range
    within the RAM budget.  Memory not managed by outcore is ignored.
    """
    from .bigarray import BigArray

    if isinstance(obj, BigArray):
        obj = obj[...]
    if isinstance(obj, numpy.ndarray):
        if write and not obj.flags.writeable:
            raise ValueError("prefault(write=True) of a read-only array")
        lo, hi = _extent(obj)
        if hi > lo:
            _core.prefault_range(lo, hi - lo, write)
        return
    _core.prefault(obj, write)
