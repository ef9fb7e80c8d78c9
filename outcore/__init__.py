# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""outcore: out-of-core NumPy arrays on a userspace virtual memory manager.

The first thing most people want is :class:`outcore.memmap`, which is
``numpy.memmap`` with the RAM it keeps bounded by a budget and changes that
reach the file only at ``flush()``::

    import numpy, outcore
    a = outcore.memmap("data.f8", numpy.float64, mode="w+", shape=(10**8,),
                       ram="256MiB")
    a[:1000] = numpy.arange(1000)
    a.flush()
    print(numpy.mean(a[...]))      # streams through a 800 MB file in 256 MiB

Underneath: :class:`BigArray` (an N-d array over a file handle, NumPy
indexing semantics), and the low level that mirrors the C core:
:class:`BigFile` (subclass it with ``loadblk``/``storeblk``), the C-backed
:class:`MemFile` and :class:`PlainFile`, :class:`RAM`, :class:`FileH`
(``BigFile.fileh_open()``), :class:`VMA` (``FileH.mmap()``), and
:func:`prefault`.  Errors of the core are raised as subclasses of
:class:`Error`.

Persistent arrays changed in transactions live in stores:
``db = outcore.open(path, ram="512MiB")`` gives a :class:`Store`
(``db.create``, ``db[name]``, ``db.commit()``, ``db.abort()``,
``with db.transaction(): ...``) whose arrays are :class:`StoreArray`, a
:class:`BigArray`; see :mod:`outcore.store`.
"""
from . import _core
from ._core import (  # noqa: F401  (re-exported)
    BigFile,
    BusyError,
    ConflictError,
    Error,
    ExistsError,
    FileH,
    ForkedError,
    InvalidArgument,
    MemFile,
    NotFoundError,
    OutOfMemory,
    PlainFile,
    RAM,
    ReadOnlyError,
    StoreError,
    VMA,
    WRITEOUT_MARKSTORED,
    WRITEOUT_STORE,
    parse_size,
    ram_budget_default,
    ram_default,
    strerror,
)
from . import mem  # noqa: F401
from ._prefault import prefault  # noqa: F401
from .bigarray import BigArray  # noqa: F401
from ._memmap import memmap  # noqa: F401
from .store import Store, StoreArray, open  # noqa: F401

__version__ = _core.core_version


def _after_faulthandler():
    """faulthandler.enable() puts its SIGSEGV handler over outcore's, which
    would then take every page fault of managed memory for a crash: after
    it, outcore's goes back on top (and passes real crashes on to it, so
    they still print their traceback)."""
    import faulthandler
    enable = faulthandler.enable
    if getattr(enable, "_outcore", False):
        return

    def outcore_enable(*args, **kwargs):
        enable(*args, **kwargs)
        _core.pagefault_install()
    outcore_enable.__doc__ = enable.__doc__
    outcore_enable._outcore = True
    faulthandler.enable = outcore_enable


_after_faulthandler()

__all__ = [
    "BigArray", "memmap", "prefault", "mem", "open", "Store", "StoreArray",
    "BigFile", "MemFile", "PlainFile", "RAM", "FileH", "VMA",
    "WRITEOUT_STORE", "WRITEOUT_MARKSTORED",
    "parse_size", "ram_default", "ram_budget_default", "strerror",
    "Error", "InvalidArgument", "OutOfMemory", "BusyError", "ConflictError",
    "StoreError", "ForkedError", "ReadOnlyError", "NotFoundError",
    "ExistsError",
]
