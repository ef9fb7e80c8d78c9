# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Transactional stores: many named persistent arrays, changed in transactions.

::

    import numpy, outcore
    with outcore.open("data.oc", ram="512MiB") as db:
        A = db.create("temps", (10**9,), numpy.float32, attrs={"unit": "K"})
        A[:1000] = 273.15
        db.commit()                       # atomic and durable
        with db.transaction():            # commit, or abort on exception
            A.append(numpy.ones(10, numpy.float32))
            A.attrs["rev"] = 2

A store (a directory: an LMDB index plus a data file, see
include/outcore/store.h) holds arrays, each with its metadata (shape, dtype,
order, block size, attrs).  A transaction begins when the store is opened
and again after every :meth:`Store.commit` and :meth:`Store.abort`;
everything it reads comes from one committed state even while other
processes commit.  Changes (data, resize/append, attrs, create, delete) stay
local until commit; abort drops them.

Arrays are :class:`StoreArray` objects, i.e. :class:`outcore.BigArray`
(views, assignment, resize, append, chunks) whose handle is the store's.
``db[name]`` gives the same object while it lives; it and the ndarray views
taken from it stay valid across commit and abort and show the transaction in
progress (after abort: the stored data and shape again).  Using an array
whose name was deleted meanwhile raises :class:`outcore.NotFoundError`.

How metadata are kept: dtype as NumPy's ``dtype.str`` ("<f8"), or for a
structured dtype the JSON text of its ``descr``; attrs as JSON text.

Shrinking.  The store keeps no data past an array's end: at commit, the
blocks after a shrunk array's end block are deleted from the store, with
no RAM and no reads however much was cut (oc_store_truncate), and the rest
of the end block is zeroed; what views taken before wrote past the end is
dropped too.  Before the commit, views of the cut part still alias the old
data as for any BigArray.  Growing an array again over a part cut in the
same transaction zeroes that part through RAM (dirty pages until the
commit): to empty a large array and refill it, commit in between.

Pickling a StoreArray gives a reference (store path, array name): unpickling
it in another process opens the store there (once per process, see
:func:`_open_ref`) and returns its array of that name, so ``multiprocessing``
and Dask workers can share arrays.  Each process commits its own changes.

Threads: calls on one store must not overlap (BusyError during a commit or
abort running in another thread); array memory may be touched from any
thread except during commit.
"""
import collections.abc
import contextlib
import gc
import json
import math
import os
import sys
import weakref

import numpy
import numpy.lib.format as _npformat

from . import _core
from .bigarray import BigArray, _MAX_NBYTES, _error, _normshape

__all__ = ["open", "Store", "StoreArray"]

# Stores open in this process, by real path (to reuse them when unpickling).
_open_stores = weakref.WeakValueDictionary()
# Stores opened by unpickling references: kept for the process lifetime.
_ref_stores = {}
# Core stores whose close() was deferred because views of their arrays were
# alive, by real path: (weakref to the _core.Store, flags, RAM owned by it).
# They close when the last view goes; an open() of the same path meanwhile
# takes the core store over (its changes were dropped at close).
_deferred = {}


# ---- metadata text ----------------------------------------------------------

def _descr_from_json(x):
    """A dtype descr read back from JSON (lists -> tuples where NumPy wants
    tuples)."""
    if isinstance(x, str):
        return x
    out = []
    for f in x:
        name = tuple(f[0]) if isinstance(f[0], list) else f[0]
        sub = _descr_from_json(f[1])
        out.append((name, sub) if len(f) == 2 else (name, sub, tuple(f[2])))
    return out


def _dtype_from_text(text):
    if text.startswith("["):
        return _npformat.descr_to_dtype(_descr_from_json(json.loads(text)))
    return numpy.dtype(text)


def _dtype_text(dtype):
    """The stored text of a dtype; TypeError for what cannot be stored."""
    if dtype.hasobject:
        raise TypeError("a store cannot hold dtype %s: it contains Python "
                        "objects" % (dtype,))
    if dtype.subdtype is not None:
        raise TypeError("subarray dtype %s: put its dimensions %r in the "
                        "shape instead" % (dtype, dtype.shape))
    if dtype.itemsize == 0:
        raise TypeError("a store needs a dtype of non-zero size, not %s"
                        % (dtype,))
    if dtype.fields is not None:
        text = json.dumps(_npformat.dtype_to_descr(dtype))
    else:
        text = dtype.str
    try:
        ok = _dtype_from_text(text) == dtype
    except Exception:
        ok = False
    if not ok:
        raise TypeError("dtype %r cannot be stored exactly (its description "
                        "%s does not give it back)" % (dtype, text))
    return text


_ATTRS_MAX = 1 << 20   # bytes of attrs JSON a store holds (store.h)


def _attrs_text(attrs):
    """JSON text of an attrs dict; TypeError if it is not JSON-serialisable,
    InvalidArgument past 1 MiB of UTF-8 (checked before anything
    changes)."""
    if attrs is None:
        return "{}"
    if not isinstance(attrs, dict):
        try:
            attrs = dict(attrs)
        except (TypeError, ValueError):
            raise TypeError("attrs must be a dict, not %s"
                            % type(attrs).__name__) from None
    for k in attrs:
        if not isinstance(k, str):
            raise TypeError("attrs keys must be str, not %r" % (k,))
    try:
        text = json.dumps(attrs, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TypeError("attrs must be JSON-serialisable: %s" % (e,)) from None
    n = len(text.encode("utf-8", "surrogatepass"))
    if n > _ATTRS_MAX:
        raise _error(_core.InvalidArgument, -22, "attrs take %d bytes as "
                     "JSON, more than the 1 MiB a store holds: keep big "
                     "data in arrays" % (n,))
    return text


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError("array names are str, not %s" % type(name).__name__)
    return name


def _check_new_name(name):
    """The store's rule for a name to create (store.h), said clearly:
    1-255 bytes of UTF-8 without control characters."""
    _check_name(name)
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise _error(_core.InvalidArgument, -22, "array name %s is not "
                     "valid UTF-8" % (ascii(name),)) from None
    bad = [c for c in name if ord(c) < 0x20 or ord(c) == 0x7f]
    if not n or n > 255 or bad:
        raise _error(_core.InvalidArgument, -22, "array name %s: %s" % (
            ascii(name), "empty" if not n else "%d bytes, more than 255" % n
            if n > 255 else "control character U+%04X" % ord(bad[0])))
    return name


# ---- the store ----------------------------------------------------------------

def _is_url(path):
    """Whether path names a database server (a PostgreSQL connection URI)
    rather than a directory: it is passed to the C store unchanged."""
    return path.startswith(("postgresql://", "postgres://"))


def _shown(path):
    """path for messages: a URI without its user info (which may hold a
    password) and options."""
    if not _is_url(path):
        return path
    scheme, rest = path.split("://", 1)
    rest = rest.split("?", 1)[0]
    if "@" in rest:
        rest = "***" + rest[rest.index("@"):]
    return scheme + "://" + rest


def open(path, ram=None, readonly=False, *, verify=True):
    """Open the store at path (a directory), creating it if missing unless
    readonly.

    ram: the RAM budget of the store's arrays: None (the shared default RAM
    of 2 MiB pages), a byte count or a string such as "512MiB" (a RAM of
    2 MiB pages with that budget is made for the store), or an
    :class:`outcore.RAM` (its page size is the block size of the arrays it
    can open).  readonly: open read-only (works on files the user may not
    write; every change raises :class:`outcore.ReadOnlyError`).  verify:
    check block checksums when blocks are first used.

    Errors: :class:`outcore.StoreError` for a path that is not an outcore
    store (a store is created only in a new or empty directory, not among
    other files), :class:`outcore.NotFoundError` for a missing store opened
    read-only, :class:`outcore.BusyError` if this process has it open,
    :class:`outcore.InvalidArgument` for an empty path.
    """
    return Store(path, ram=ram, readonly=readonly, verify=verify)


class Store:
    """A store of named arrays; see :func:`outcore.open` and the module
    documentation (:mod:`outcore.store`)."""

    def __init__(self, path, ram=None, readonly=False, *, verify=True):
        self._st = None
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path:
            # abspath would make it the current directory
            raise _error(_core.InvalidArgument, -22, "empty store path")
        self._path = path if _is_url(path) else os.path.abspath(path)
        self._readonly = bool(readonly)
        self._verify = bool(verify)
        self._ram_user = isinstance(ram, _core.RAM)
        if ram is None:
            ramobj, self._ram_spec = None, None
        elif isinstance(ram, _core.RAM):
            ramobj = ram
            self._ram_spec = (ram.pagesize, ram.budget)
        else:
            budget = _core.parse_size(ram)
            if budget == 0:
                raise _error(_core.InvalidArgument, -22,
                             "ram must be a budget > 0")
            ramobj = _core.RAM(pagesize=_core.PAGESIZE_DEFAULT, budget=budget)
            self._ram_spec = (_core.PAGESIZE_DEFAULT, budget)
        flags = _core.STORE_RDONLY if readonly else _core.STORE_CREATE
        if not verify:
            flags |= _core.STORE_NOVERIFY
        try:
            st = _core.Store(self._path, flags, ramobj)
        except _core.BusyError:
            other = _open_stores.get(self._key())
            if other is not None and not other.closed:
                raise _error(_core.BusyError, -16,
                             "store %s is already open in this process "
                             "(%r): use that object, or close it first"
                             % (_shown(self._path), other)) from None
            st = self._take_deferred(flags, ram, ramobj)
        self._st = st
        self._ram = st.ram
        self._pid = os.getpid()
        self._arrays = weakref.WeakValueDictionary()  # name -> StoreArray
        self._pending = set()   # arrays shrunk in this transaction
        # The handles of the arrays made here -> their names, for commit to
        # find data written past an array's end.  Held, not weak: views
        # write into a handle after its StoreArray is gone, and its dirty
        # pages outlive the FileH object too (the C store owns the handles
        # until it closes anyway).
        self._handles = {}
        self._failed = False    # mirrors the C store's failed state
        self._gen = 0           # bumped when arrays may have changed
        self._txn = 0           # bumped when a transaction ends
        _open_stores[self._key()] = self

    def _key(self):
        return self._path if _is_url(self._path) else os.path.realpath(self._path)

    def _take_deferred(self, flags, ram, ramobj):
        """The core store of this path whose close was deferred (views of
        it alive), if it can serve this open; else BusyError."""
        key = self._key()
        gc.collect()                 # views in garbage cycles
        rec = _deferred.pop(key, None)
        st = rec[0]() if rec else None
        if st is None or st.closed:
            return _core.Store(self._path, flags, ramobj)
        _, oflags, owned = rec
        why = None
        if oflags != flags:
            why = "with other flags (readonly, verify)"
        elif ram is None and st.ram is not _core.ram_default():
            why = "with another RAM"
        elif isinstance(ram, _core.RAM) and st.ram is not ram:
            why = "with another RAM"
        elif ram is not None and not isinstance(ram, _core.RAM):
            if not owned:
                why = "with another RAM"
            else:
                st.ram.budget = self._ram_spec[1]
        if why:
            _deferred[key] = rec
            raise _error(_core.BusyError, -16,
                         "store %s was closed while views of its arrays "
                         "were alive, and opened before %s: it stays open "
                         "until they are gone (drop them, or open it as "
                         "before)" % (_shown(self._path), why))
        # A new transaction, as an open begins: on the state committed
        # now, without what the old views wrote after the close.
        st.abort()
        return st

    # ---- attributes -----------------------------------------------------

    @property
    def path(self):
        """The absolute path of the store."""
        return self._path

    @property
    def readonly(self):
        """Whether the store was opened read-only."""
        return self._readonly

    @property
    def ram(self):
        """The :class:`outcore.RAM` of the store's arrays."""
        return self._ram

    @property
    def closed(self):
        """Whether :meth:`close` was called."""
        return self._st is None

    def __repr__(self):
        return "<outcore.Store %r%s%s>" % (
            _shown(self._path), " readonly" if self._readonly else "",
            " (closed)" if self._st is None else "")

    def _core(self):
        if self._st is None:
            raise _error(_core.InvalidArgument, -22,
                         "operation on a closed store (%s)" % _shown(self._path))
        return self._st

    # ---- arrays -----------------------------------------------------------

    def create(self, name, shape, dtype, order="C", blksize=None, attrs=None):
        """Create array name in this transaction and return it
        (a :class:`StoreArray`, zeros).

        shape: an int or a sequence of non-negative ints; dtype: any NumPy
        dtype without Python objects (structured dtypes included); order
        "C" or "F"; blksize: None for the RAM's page size (the only block
        size this store object can open); attrs: a JSON-serialisable dict.
        Bad input raises before anything changes: TypeError (dtype, attrs,
        name; NumPy's own ValueError for a dtype it cannot make, such as
        overlapping fields), ValueError / :class:`outcore.InvalidArgument`
        (shape, order, blksize, a name that is empty, has control
        characters or is longer than 255 bytes, attrs over 1 MiB as JSON),
        :class:`outcore.ExistsError` if the name exists.
        """
        st = self._core()
        _check_new_name(name)
        shape = _normshape(shape)
        dtype = numpy.dtype(dtype)
        dtext = _dtype_text(dtype)
        if order not in ("C", "F"):
            raise ValueError("order must be 'C' or 'F', not %r" % (order,))
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > _MAX_NBYTES:
            raise _error(_core.InvalidArgument, -75,
                         "shape %r of %s needs %d bytes: past 2**63-1"
                         % (shape, dtype, nbytes))
        pagesize = self._ram.pagesize
        if blksize is None:
            blksize = 0
        else:
            blksize = _core.parse_size(blksize)
            if blksize != pagesize:
                raise _error(_core.InvalidArgument, _core.OC_EBLKSIZE,
                             "blksize %d differs from the page size %d of "
                             "this store's RAM (open the store with "
                             "ram=outcore.RAM(pagesize=%d, ...) for such "
                             "arrays)" % (blksize, pagesize, blksize))
        atext = _attrs_text(attrs)
        st.create(name, shape, dtext, order, blksize, atext)
        self._gen += 1
        return self[name]

    def __getitem__(self, name):
        """The array name (the same object while it lives);
        :class:`outcore.NotFoundError` if there is none."""
        self._core()
        _check_name(name)
        a = self._arrays.get(name)
        if a is not None:
            try:
                a._sync()
                return a
            except _core.NotFoundError:
                pass
        a = StoreArray(self, name)
        self._arrays[name] = a
        return a

    def __contains__(self, name):
        st = self._core()         # closed: raise, not "no such name"
        if not isinstance(name, str):
            return False
        try:
            st.meta_get(name)
        except _core.NotFoundError:
            return False
        except ValueError:        # an embedded NUL: no such name
            return False
        return True

    def __delitem__(self, name):
        """Delete array name in this transaction (NotFoundError if none)."""
        st = self._core()
        _check_name(name)
        st.delete(name)
        a = self._arrays.pop(name, None)
        if a is not None:
            self._pending.discard(a)
        self._gen += 1

    def names(self):
        """The names of the arrays of this transaction, sorted (by the
        bytes of their UTF-8 encoding)."""
        return self._core().names()

    def __iter__(self):
        return iter(self.names())

    def __len__(self):
        return len(self.names())

    # ---- transactions -----------------------------------------------------

    def commit(self):
        """Commit every change of this transaction atomically and durably
        (the GIL is released meanwhile), then begin a new one, which sees
        the commits of other processes.

        :class:`outcore.ConflictError` if another process committed a change
        to a block or to the metadata of an array that this transaction also
        changed; :class:`outcore.ReadOnlyError` for changes to a read-only
        store; :class:`outcore.StoreError` for storage errors.  On any error
        nothing is written and the changes are kept: only :meth:`abort` or
        another commit() is accepted.  Other changes raise StoreError until
        then, except writes through ndarray views taken from the arrays,
        which nothing can stop: a retry of commit() stores them.
        """
        st = self._core()
        # A retry after a failure: the C store kept the cuts of the attempt
        # that failed, and neither shapes nor attrs can change meanwhile.
        cuts = [] if self._failed else self._cut_past_ends()
        try:
            st.commit()
        except BaseException as e:
            # store.h: any error but OC_EFORKED leaves the store failed,
            # with the cuts kept for the retry (an error without a code is
            # the binding's, or an interrupt: nothing was tried)
            if getattr(e, "code", None) not in (None, _core.OC_EFORKED):
                self._failed = True
            else:
                self._uncut(cuts)
            raise
        self._failed = False
        self._end_txn()
        # handles nothing else holds (no array object, no view) can take no
        # more writes, and commit left them clean
        for fh in [fh for fh in self._handles
                   if sys.getrefcount(fh) <= 3 and
                   (fh.closed or not fh.isdirty())]:
            del self._handles[fh]

    def _cut_past_ends(self):
        """The store keeps no data past an array's end (see the module doc).
        An array shrunk in this transaction, or with dirty blocks after its
        end block (written through a view taken when it was longer), is cut
        at its end block: the C store deletes what is stored after it and
        drops what was written there, with no RAM and no reads
        (oc_store_truncate).  The rest of the end block is zeroed here, if
        the array shrank or that block is dirty (it is then in RAM).
        Returns the names cut (see _uncut)."""
        st = self._st
        tails, cut = {}, {}          # name -> array
        for a in list(self._pending):
            if a._fileh.closed or a._nbytes() >= a._hwm:
                continue
            try:
                a._sync()
            except _core.NotFoundError:
                continue
            tails[a._name] = cut[a._name] = a
        for fh, name in list(self._handles.items()):
            if name in cut or fh.closed or not fh.isdirty():
                continue
            try:
                if st.array_fileh(name) is not fh:
                    continue    # the name was created again
                a = self[name]
            except _core.NotFoundError:
                continue        # gone: the C store drops its pages
            except _core.Error as e:
                if getattr(e, "code", None) != _core.OC_EBLKSIZE:
                    raise
                continue        # created again with another block size
            end, bs = a._nbytes(), fh.blksize
            keep = -(-end // bs)
            dirty = fh.dirty_pages()
            if end % bs and keep - 1 in dirty:
                tails[name] = a
            if dirty and dirty[-1] >= keep:
                cut[name] = a
        done = []
        try:
            for name, a in tails.items():
                end, bs = a._nbytes(), a._fileh.blksize
                a._zero_bytes(end, -(-end // bs) * bs)
            for name, a in cut.items():
                st.truncate(name, -(-a._nbytes() // a._fileh.blksize))
                done.append(name)
        except BaseException:
            self._uncut(done)
            raise
        return done

    def _uncut(self, names):
        """Take back the cuts of a commit that was not tried: a later grow
        must not find its new blocks dropped."""
        for name in names:
            try:
                self._st.truncate(name, (1 << 64) - 1)   # no cut
            except _core.Error:
                pass

    def abort(self):
        """Drop every local change (data, metadata, creates, deletes) and
        begin a new transaction."""
        st = self._core()
        try:
            st.abort()
        except _core.Error as e:
            # store.h: only -EBUSY and OC_EFORKED leave the state as it was
            if getattr(e, "code", None) not in (None, -16, _core.OC_EFORKED):
                self._failed = True
            raise
        self._failed = False
        self._end_txn()

    def _end_txn(self):
        self._pending.clear()
        self._txn += 1
        self._gen += 1

    @contextlib.contextmanager
    def transaction(self):
        """``with db.transaction(): ...`` commits when the block succeeds and
        aborts when it raises.  If the commit itself fails (a conflict),
        the transaction is aborted too and the error raised: run the block
        again to retry."""
        self._core()
        try:
            yield self
        except BaseException:
            if self._st is not None:
                self.abort()
            raise
        try:
            self.commit()
        except BaseException:
            if self._st is not None:
                self.abort()
            raise

    # ---- the rest ---------------------------------------------------------

    def stats(self):
        """Counters and gauges: budget, ram_used, dirty_bytes (of the
        store's RAM, shared with whatever else uses it), loads (blocks
        brought into RAM: copies + maps), stores, reclaims, faults; and the
        store's own: commits, aborts, failed_commits, conflicts,
        blocks_stored, blocks_zeroed, bytes_written, store_loads,
        store_maps, holes, verified, corrupt, invalidated, round_trips
        (requests that waited for the server: exchanges in which the
        PostgreSQL engine waited for an answer with nothing else of its own
        in flight, a pipeline of read-ahead counting one; 0 for LMDB),
        snapshot, data_size, narrays_open."""
        s = self._core().stats()
        r = self._ram.stats()
        out = {
            "budget": r["budget"],
            "ram_used": r["used"],
            "dirty_bytes": ((r["dirty_pages"] - r["patched_pages"]) * r["pagesize"]
                            + r["patch_bytes"]),
            "loads": r["loads"] + r["base_maps"],
            "stores": r["stores"],
            "reclaims": r["reclaims"] + r["map_reclaims"],
            "faults": r["faults"],
        }
        out["store_loads"] = s.pop("loads")
        out["store_maps"] = s.pop("maps")
        out.update(s)
        return out

    def close(self):
        """Close the store: uncommitted changes are dropped.  The arrays
        taken from it are closed; if ndarray views of them are still
        referenced, the store's files are closed when the last one goes.
        Idempotent."""
        st = self._st
        if st is None:
            return
        for a in list(self._arrays.values()):
            a._detach()
        self._arrays.clear()
        self._pending.clear()
        self._handles.clear()   # the core store closes with its last view
        self._st = None
        if _open_stores.get(self._key()) is self:
            del _open_stores[self._key()]
        try:
            st.close()
        except _core.BusyError:
            # Views alive: the core store closes with the last of them.
            # Drop the changes now, as a close does.
            try:
                st.abort()
            except _core.Error:
                pass
            _deferred[self._key()] = (weakref.ref(st), st.flags,
                                      self._ram_spec is not None and
                                      not self._ram_user)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        return _open_ref, (self._path, None, self._readonly, self._ram_spec)


# ---- arrays -------------------------------------------------------------------

class StoreArray(BigArray):
    """An array of a :class:`Store`: a :class:`outcore.BigArray` over the
    store's handle whose shape and attrs live in the store's metadata.

    Get one with ``db[name]`` or ``db.create(...)``.  Everything BigArray
    does works (views, assignment, resize, append, chunks); resize and
    append change the stored shape in the transaction.  Pickling gives a
    reference that reopens the array in another process.
    """

    def __init__(self, db, name):
        st = db._core()
        meta = st.meta_get(name)
        dtype = self._meta_dtype(name, meta)
        fileh = st.array_fileh(name)
        self._db = db
        self._name = name
        self._gen = db._gen
        self._txn = db._txn
        self._closed = False
        super().__init__(meta["shape"], dtype, fileh, meta["order"])
        self._readonly = db.readonly
        db._handles[fileh] = name

    @staticmethod
    def _meta_dtype(name, meta):
        try:
            return _dtype_from_text(meta["dtype"])
        except Exception as e:
            raise _error(_core.StoreError, _core.OC_ENOTSTORE,
                         "array %r: dtype %r is not a NumPy dtype this "
                         "process can read: %s" % (name, meta["dtype"], e)) \
                from None

    def _nbytes(self):
        return math.prod(self._shape) * self._dtype.itemsize

    def _sync(self):
        """Catch up with the store after a transaction boundary or a
        create/delete: new shape, or a clear error if the array is gone."""
        db = self._db
        if self._closed or db._st is None:
            raise _error(_core.InvalidArgument, -22,
                         "array %r: its store %s is closed"
                         % (self._name, _shown(db._path)))
        if self._gen == db._gen:
            return
        st = db._st
        try:
            meta = st.meta_get(self._name)
            gone = st.array_fileh(self._name) is not self._fileh
        except _core.NotFoundError:
            gone = True
        if gone:
            raise _error(
                _core.NotFoundError, _core.OC_ENOTFOUND,
                "array %r was deleted from the store %s (if it was created "
                "again, get the new one with db[%r])"
                % (self._name, _shown(db._path), self._name))
        if self._meta_dtype(self._name, meta) != self._dtype or \
                meta["order"] != self._order:
            raise _error(_core.NotFoundError, _core.OC_ENOTFOUND,
                         "array %r changed its dtype or order: get it "
                         "again with db[%r]" % (self._name, self._name))
        shape = tuple(meta["shape"])
        if shape != self._shape:
            self._shape = shape
            self._whole = None
        if self._txn != db._txn:
            # the store holds nothing past the end (tails zeroed at commit)
            self._hwm = self._nbytes()
            self._txn = db._txn
        self._gen = db._gen

    def _detach(self):
        """The store closes: drop the mapping and the handle (the store's
        files close when no view holds them: this object does not), refuse
        further use."""
        self._whole = None
        self._vma = None
        self._fileh = None
        self._closed = True

    # ---- what syncs first -------------------------------------------------

    @property
    def shape(self):
        self._sync()
        return self._shape

    @property
    def size(self):
        self._sync()
        return math.prod(self._shape)

    @property
    def nbytes(self):
        self._sync()
        return self._nbytes()

    @property
    def ndim(self):
        self._sync()
        return len(self._shape)

    def __len__(self):
        self._sync()
        return super().__len__()

    def __getitem__(self, index):
        self._sync()
        return super().__getitem__(index)

    def __setitem__(self, index, value):
        self._sync()
        if self._readonly:
            raise _error(_core.ReadOnlyError, _core.OC_EREADONLY,
                         "array %r: the store %s is open read-only"
                         % (self._name, _shown(self._db._path)))
        if self._db._failed:
            # the C store refuses resize, attrs, create then; data writes
            # do not pass through it, so they are refused here
            raise _error(_core.StoreError, _core.OC_EFAILED, "array %r: %s"
                         % (self._name, _core.strerror(_core.OC_EFAILED)))
        super().__setitem__(index, value)

    def resize(self, newshape):
        self._sync()
        super().resize(newshape)

    def append(self, values):
        self._sync()
        super().append(values)

    def chunks(self, max_bytes=None):
        self._sync()
        return super().chunks(max_bytes)

    def _resize_storage(self, old_nbytes, new_nbytes):
        st = self._db._core()
        meta = st.meta_get(self._name)
        st.meta_set(self._name, self._shape, meta["dtype"], meta["order"], 0,
                    meta["attrs"])
        if new_nbytes < self._hwm:
            self._db._pending.add(self)

    # ---- store-specific ---------------------------------------------------

    @property
    def name(self):
        """The array's name in its store."""
        return self._name

    @property
    def store(self):
        """The :class:`Store` the array belongs to."""
        return self._db

    @property
    def attrs(self):
        """User attributes: a dict-like view of the JSON object in the
        array's metadata, changed in the transaction (abort restores it).
        Values must be JSON-serialisable (TypeError otherwise, nothing
        changed); tuples come back as lists."""
        return Attrs(self)

    @attrs.setter
    def attrs(self, value):
        Attrs(self)._store(value)

    def __repr__(self):
        try:
            self._sync()
            state = ""
        except _core.Error as e:
            state = " (%s)" % (e,)
        return "StoreArray(%r, shape=%r, dtype=%r, order=%r)%s" % (
            self._name, self._shape, self._dtype.str if not self._dtype.fields
            else self._dtype.descr, self._order, state)

    def __reduce__(self):
        db = self._db
        return _open_ref, (db._path, self._name, db._readonly, db._ram_spec)


class Attrs(collections.abc.MutableMapping):
    """The attrs of a :class:`StoreArray` (a MutableMapping over the JSON
    object kept in its metadata; every access reads or writes the store's
    view of this transaction)."""

    def __init__(self, arr):
        self._arr = arr

    def _load(self):
        a = self._arr
        a._sync()
        return json.loads(a._db._st.meta_get(a._name)["attrs"])

    def _store(self, d):
        text = _attrs_text(d)
        a = self._arr
        a._sync()
        st = a._db._st
        meta = st.meta_get(a._name)
        st.meta_set(a._name, meta["shape"], meta["dtype"], meta["order"], 0,
                    text)

    def __getitem__(self, key):
        return self._load()[key]

    def __setitem__(self, key, value):
        d = self._load()
        d[key] = value
        self._store(d)

    def __delitem__(self, key):
        d = self._load()
        del d[key]
        self._store(d)

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())

    def __contains__(self, key):
        return key in self._load()

    def get(self, key, default=None):
        return self._load().get(key, default)

    def keys(self):
        return self._load().keys()

    def values(self):
        return self._load().values()

    def items(self):
        return self._load().items()

    def update(self, *args, **kw):
        d = self._load()
        d.update(*args, **kw)
        self._store(d)

    def pop(self, key, *default):
        d = self._load()
        v = d.pop(key, *default)
        self._store(d)
        return v

    def setdefault(self, key, default=None):
        d = self._load()
        if key not in d:
            d[key] = default
            self._store(d)
        return d[key]

    def clear(self):
        self._store({})

    def asdict(self):
        """A copy as a plain dict."""
        return self._load()

    def __eq__(self, other):
        if isinstance(other, Attrs):
            other = other._load()
        return self._load() == other

    __hash__ = None

    def __repr__(self):
        return "Attrs(%r)" % (self._load(),)


# ---- references (pickling) ----------------------------------------------------

def _open_ref(path, name, readonly, ram_spec):
    """Unpickle a reference: the store at path as this process has it open
    (opened now, and kept for the process lifetime, if it is not), and its
    array name (None: the store itself)."""
    key = path if _is_url(path) else os.path.realpath(path)
    db = _open_stores.get(key)
    if db is None or db.closed or db._pid != os.getpid():
        db = _ref_stores.get(key)
        if db is None or db.closed or db._pid != os.getpid():
            ram = None
            if ram_spec is not None:
                ram = _core.RAM(pagesize=ram_spec[0], budget=ram_spec[1])
            db = Store(path, ram=ram, readonly=readonly)
            _ref_stores[key] = db
    if name is None:
        return db
    return db[name]
