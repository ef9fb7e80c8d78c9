/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * _core.c: the CPython extension outcore._core, a thin binding of the C
 * core (include/outcore/).  The core never includes Python.h; everything
 * Python-specific lives here.
 *
 * Objects and who holds whom:
 *
 *   VMA  --strong-->  FileH  --strong-->  BigFile, RAM
 *   VMA  --strong-->  FileH (borrowed)  --strong-->  Store  --strong-->  RAM
 *
 * A VMA unmaps itself when its last reference dies; a FileH closes its C
 * handle when its last reference dies, which can only happen after every
 * VMA of it is gone; so a C handle never outlives the Python objects its
 * file and RAM live in.  GC: a VMA clears only its .pyuser in tp_clear, a
 * FileH clears nothing (its references are what keeps the C objects valid);
 * cycles through a BigFile subclass are broken by clearing its __dict__.
 * A store's array handles belong to the C store (store.h): their FileH
 * objects are "borrowed" (they never close the handle) and hold the Store
 * object, whose C store closes only when no mapping of them is left.
 *
 * Python-defined files.  The oc_file_t is embedded in the BigFile object.
 * The object owns the reference oc_file_init() gives and drops it in
 * tp_dealloc; every open C handle holds one more, and its FileH object holds
 * a strong Python reference to the BigFile, so the embedded oc_file_t
 * outlives every C reference to it; ops->release therefore only records
 * that it ran.  (Should a handle ever leak - a close that failed in
 * tp_dealloc - the BigFile's memory is deliberately leaked with it.)
 *
 * Callbacks (loadblk/storeblk of a Python file) take the GIL with
 * PyGILState_Ensure, save the thread's whole exception state (the pending
 * exception and the handled one: a fault can happen anywhere, inside an
 * except block too) and restore it after the call.  The block is passed as
 * a memoryview of exactly one block over the core's buffer (writable for
 * loadblk, read-only for storeblk): zero copy.  After the call the
 * memoryview is released and must be referenced by nothing else.  If the
 * callee kept buf or something made from it (NumPy's frombuffer keeps only
 * a reference to buf, not a buffer export, together with the raw pointer),
 * the frames of the callee's traceback are cleared and the cycle collector
 * is run, and the check is repeated; if something still holds it, Python
 * would keep a pointer into a RAM page that outcore will reuse or free,
 * which no later check can make safe: the process is stopped (abort) with
 * a message naming the file and the block.
 *
 * Errors of a callback.  The core calls ops in two contexts:
 *   - explicit calls (FileH.load, prefault, FileH.dirty_writeout): the
 *     binding sets a thread-local flag around them; the callback then keeps
 *     the Python exception in a thread-local slot and returns an error, and
 *     the binding re-raises that very exception from the call;
 *   - page faults (anything else): the traceback is printed on stderr with
 *     the file and block, and an error is returned; the core retries and
 *     then stops the process with SIGBUS (a fatal hook flushes stderr).
 * The flag is consumed by the callback (reset while the Python code runs),
 * so a fault taken inside a callback is treated as a fault.
 *
 * The GIL.  Lock hooks registered at import release the GIL while the core
 * waits for its lock or for another thread's load, when the waiting thread
 * holds it (a page fault in NumPy code).  Blocking calls (writeout, load,
 * prefault, discard, invalidate, close, reclaim) release the GIL
 * explicitly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <outcore/outcore.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- thread-local state of explicit calls ------------------------------ */

static _Thread_local int tls_explicit;     /* next callback: explicit mode */
static _Thread_local PyObject *tls_exc_type, *tls_exc_value, *tls_exc_tb;
/* the last block whose load failed in a fault in this thread (for retries) */
static _Thread_local oc_file_t *tls_fail_file;
static _Thread_local uint64_t tls_fail_blk;

static void tls_exc_clear(void)
{
	Py_CLEAR(tls_exc_type);
	Py_CLEAR(tls_exc_value);
	Py_CLEAR(tls_exc_tb);
}

/* Run a blocking core call in explicit mode with the GIL released. */
#define EXPLICIT_CALL(stmt)                                             \
	do {                                                            \
		int saved_explicit_ = tls_explicit;                     \
		tls_exc_clear();                                        \
		tls_explicit = 1;                                       \
		Py_BEGIN_ALLOW_THREADS stmt;                            \
		Py_END_ALLOW_THREADS tls_explicit = saved_explicit_;    \
	} while (0)

#define NOGIL_CALL(stmt)                                                \
	do {                                                            \
		Py_BEGIN_ALLOW_THREADS stmt;                            \
		Py_END_ALLOW_THREADS                                    \
	} while (0)

/* ---- exceptions: the one table that maps core codes to classes -------- */

static PyObject *Error, *InvalidArgument, *OutOfMemory, *BusyError,
	*ConflictError, *StoreError, *ForkedError, *ReadOnlyError,
	*NotFoundError, *ExistsError;

static const struct excdef {
	PyObject **cls;
	const char *name;
	PyObject **base2; /* a builtin second base, or NULL */
	const char *doc;
} excdefs[] = {
	{&InvalidArgument, "outcore.InvalidArgument", &PyExc_ValueError,
	 "A bad argument: a size that is not a power of two, a block size that "
	 "differs from the RAM page size, a range past 2**63, bad flags."},
	{&OutOfMemory, "outcore.OutOfMemory", &PyExc_MemoryError,
	 "Out of memory or address space, the kernel's mapping limit, or no "
	 "huge pages reserved."},
	{&BusyError, "outcore.BusyError", NULL,
	 "The object is in use: a handle with live mappings, a writeout "
	 "running, a mapping with exported buffers."},
	{&ConflictError, "outcore.ConflictError", NULL,
	 "A concurrent transaction changed the same data."},
	{&StoreError, "outcore.StoreError", NULL,
	 "The storage backend failed to load or store a block (I/O error, "
	 "corrupt data, lost connection)."},
	{&ForkedError, "outcore.ForkedError", NULL,
	 "The object was inherited across fork(): a child process must open "
	 "what it needs anew."},
	{&ReadOnlyError, "outcore.ReadOnlyError", &PyExc_PermissionError,
	 "The file or store was opened read-only (or has no storeblk)."},
	{&NotFoundError, "outcore.NotFoundError", &PyExc_FileNotFoundError,
	 "No such file, array or object."},
	{&ExistsError, "outcore.ExistsError", &PyExc_FileExistsError,
	 "The file, array or object already exists."},
};

static const struct errmap {
	int code;
	PyObject **cls;
} errmap[] = {
	{-EINVAL, &InvalidArgument},
	{-ERANGE, &InvalidArgument},
	{-EOVERFLOW, &InvalidArgument},
	{OC_EBLKSIZE, &InvalidArgument},
	{OC_EVERSION, &StoreError}, /* a store of a newer format */
	{-ENOMEM, &OutOfMemory},
	{OC_EMAPLIMIT, &OutOfMemory},
	{OC_ENOHUGE, &OutOfMemory},
	{-EBUSY, &BusyError},
	{OC_ECONFLICT, &ConflictError},
	{OC_ELOAD, &StoreError},
	{OC_ESTORE, &StoreError},
	{OC_ESTOREIO, &StoreError},
	{OC_ECORRUPT, &StoreError},
	{OC_ENOTSTORE, &StoreError},
	{OC_EFAILED, &StoreError},
	{-EIO, &StoreError},
	{-ENOSPC, &StoreError},
	{-EDQUOT, &StoreError},
	{OC_EFORKED, &ForkedError},
	{-EROFS, &ReadOnlyError},
	{-EACCES, &ReadOnlyError},
	{-EPERM, &ReadOnlyError},
	{OC_EREADONLY, &ReadOnlyError},
	{-ENOENT, &NotFoundError},
	{OC_ENOTFOUND, &NotFoundError},
	{-EEXIST, &ExistsError},
	{OC_EEXIST, &ExistsError},
};

static PyObject *code_class(int code)
{
	for (size_t i = 0; i < sizeof(errmap) / sizeof(errmap[0]); i++)
		if (errmap[i].code == code)
			return *errmap[i].cls;
	return Error;
}

/* Raise the exception for core code err, with "context: message".  If a
 * callback of an explicit call left a Python exception, raise that one
 * instead.  Returns NULL. */
static PyObject *raise_code(int err, const char *fmt, ...)
{
	if (tls_exc_type) {
		PyErr_Restore(tls_exc_type, tls_exc_value, tls_exc_tb);
		tls_exc_type = tls_exc_value = tls_exc_tb = NULL;
		return NULL;
	}
	va_list ap;
	va_start(ap, fmt);
	PyObject *ctx = PyUnicode_FromFormatV(fmt, ap);
	va_end(ap);
	if (!ctx)
		return NULL;
	PyObject *cls = code_class(err);
	/* The failing op may have said where (e.g. which array and block). */
	const char *detail = oc_error_detail();
	PyObject *msg = detail[0]
		? PyUnicode_FromFormat("%U: %s: %s", ctx, detail, oc_strerror(err))
		: PyUnicode_FromFormat("%U: %s", ctx, oc_strerror(err));
	oc_set_error_detail(NULL);
	Py_DECREF(ctx);
	if (!msg)
		return NULL;
	PyObject *exc;
	if (err < 0 && err > OC_ERROR_BASE + 100 &&
	    PyObject_IsSubclass(cls, PyExc_OSError) == 1)
		exc = PyObject_CallFunction(cls, "iO", -err, msg);
	else
		exc = PyObject_CallOneArg(cls, msg);
	Py_DECREF(msg);
	if (!exc)
		return NULL;
	PyObject *c = PyLong_FromLong(err);
	if (!c || PyObject_SetAttrString(exc, "code", c) < 0) {
		Py_XDECREF(c);
		Py_DECREF(exc);
		return NULL;
	}
	Py_DECREF(c);
	PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
	Py_DECREF(exc);
	return NULL;
}

/* ---- argument converters ----------------------------------------------- */

/* A non-negative int that fits uint64_t. */
static int u64_conv(PyObject *o, void *p)
{
	if (!PyLong_Check(o)) {
		PyErr_Format(PyExc_TypeError, "expected an int, got %.100s",
			     Py_TYPE(o)->tp_name);
		return 0;
	}
	unsigned long long v = PyLong_AsUnsignedLongLong(o);
	if (v == (unsigned long long)-1 && PyErr_Occurred()) {
		PyErr_Clear();
		PyErr_Format(InvalidArgument,
			     "%R is out of range (0 .. 2**64-1)", o);
		return 0;
	}
	*(uint64_t *)p = v;
	return 1;
}

/* A byte size: an int, or a string such as "512MiB" (oc_parse_size). */
static int size_conv(PyObject *o, void *p)
{
	if (PyUnicode_Check(o)) {
		const char *s = PyUnicode_AsUTF8(o);
		if (!s)
			return 0;
		int err = oc_parse_size(s, (uint64_t *)p);
		if (err) {
			raise_code(err, "size %R", o);
			return 0;
		}
		return 1;
	}
	if (PyIndex_Check(o) && !PyLong_Check(o)) {
		PyObject *i = PyNumber_Index(o);
		if (!i)
			return 0;
		int r = u64_conv(i, p);
		Py_DECREF(i);
		return r;
	}
	return u64_conv(o, p);
}

/* ---- RAM ----------------------------------------------------------------- */

typedef struct {
	PyObject_HEAD
	oc_ram_t *ram;
	int owned; /* closed at dealloc (not for the shared default RAMs) */
	PyObject *weakreflist;
} RAMObject;

static PyTypeObject RAMType;
static PyObject *default_rams; /* dict pagesize -> RAMObject */

/* The RAMObject of the core's default RAM of pagesize.  After a fork()
 * the core gives the child a default RAM of its own (the parent's is
 * inherited, unusable): a cached object of another RAM is replaced. */
static PyObject *ram_wrap_default(uint64_t pagesize)
{
	oc_ram_t *ram;
	int err;
	NOGIL_CALL(err = oc_ram_default((size_t)pagesize, &ram));
	if (err)
		return raise_code(err, "default RAM for page size %llu",
				  (unsigned long long)pagesize);
	PyObject *key = PyLong_FromUnsignedLongLong(pagesize);
	if (!key)
		return NULL;
	PyObject *r = PyDict_GetItemWithError(default_rams, key);
	if (r && ((RAMObject *)r)->ram == ram) {
		Py_DECREF(key);
		return Py_NewRef(r);
	}
	if (PyErr_Occurred()) {
		Py_DECREF(key);
		return NULL;
	}
	RAMObject *o = PyObject_New(RAMObject, &RAMType);
	if (!o) {
		Py_DECREF(key);
		return NULL;
	}
	o->ram = ram;
	o->owned = 0;
	o->weakreflist = NULL;
	if (PyDict_SetItem(default_rams, key, (PyObject *)o) < 0) {
		Py_DECREF(key);
		Py_DECREF(o);
		return NULL;
	}
	Py_DECREF(key);
	return (PyObject *)o;
}

static int RAM_init(RAMObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"pagesize", "budget", "kind", "dir", NULL};
	uint64_t pagesize = OC_PAGESIZE_DEFAULT;
	PyObject *budget_o = Py_None, *dir_o = Py_None;
	const char *kind = "memfd";
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|O&OsO:RAM", kwlist,
					 size_conv, &pagesize, &budget_o,
					 &kind, &dir_o))
		return -1;
	if (self->ram) {
		PyErr_SetString(PyExc_TypeError, "RAM already initialised");
		return -1;
	}
	oc_ram_opts_t opts;
	memset(&opts, 0, sizeof(opts));
	opts.version = OC_RAM_OPTS_VERSION;
	opts.pagesize = (size_t)pagesize;
	if (budget_o != Py_None && !size_conv(budget_o, &opts.budget))
		return -1;
	if (budget_o != Py_None && opts.budget == 0) {
		PyErr_SetString(InvalidArgument, "budget must be > 0");
		return -1;
	}
	if (budget_o != Py_None && opts.budget < pagesize) {
		PyErr_Format(InvalidArgument,
			     "budget %llu bytes is smaller than one page of "
			     "%llu bytes: give at least one page",
			     (unsigned long long)opts.budget,
			     (unsigned long long)pagesize);
		return -1;
	}
	if (!strcmp(kind, "memfd"))
		opts.kind = OC_RAM_MEMFD;
	else if (!strcmp(kind, "hugetlb"))
		opts.kind = OC_RAM_HUGETLB;
	else if (!strcmp(kind, "tmpfs"))
		opts.kind = OC_RAM_TMPFS;
	else {
		PyErr_Format(InvalidArgument,
			     "kind must be 'memfd', 'hugetlb' or 'tmpfs', not '%s'",
			     kind);
		return -1;
	}
	PyObject *dirb = NULL;
	if (dir_o != Py_None) {
		if (!PyUnicode_FSConverter(dir_o, &dirb))
			return -1;
		opts.dir = PyBytes_AS_STRING(dirb);
	}
	oc_ram_t *ram;
	int err;
	NOGIL_CALL(err = oc_ram_new(&ram, &opts));
	Py_XDECREF(dirb);
	if (err) {
		raise_code(err, "RAM(pagesize=%llu, kind='%s')",
			   (unsigned long long)pagesize, kind);
		return -1;
	}
	self->ram = ram;
	self->owned = 1;
	return 0;
}

static void RAM_dealloc(RAMObject *self)
{
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	if (self->ram && self->owned) {
		/* -EBUSY cannot happen: every FileH holds its RAM object.  If it
		 * did, leaking the RAM is the safe choice. */
		int err;
		NOGIL_CALL(err = oc_ram_close(self->ram));
		(void)err;
	}
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ram_check(RAMObject *self)
{
	if (!self->ram) {
		PyErr_SetString(InvalidArgument, "RAM not initialised");
		return -1;
	}
	return 0;
}

static PyObject *RAM_get_pagesize(RAMObject *self, void *c)
{
	(void)c;
	if (ram_check(self))
		return NULL;
	return PyLong_FromSize_t(oc_ram_pagesize(self->ram));
}

static PyObject *RAM_get_kind(RAMObject *self, void *c)
{
	(void)c;
	if (ram_check(self))
		return NULL;
	switch (oc_ram_kind(self->ram)) {
	case OC_RAM_MEMFD: return PyUnicode_FromString("memfd");
	case OC_RAM_HUGETLB: return PyUnicode_FromString("hugetlb");
	case OC_RAM_TMPFS: return PyUnicode_FromString("tmpfs");
	}
	return PyUnicode_FromString("unknown");
}

static PyObject *RAM_get_budget(RAMObject *self, void *c)
{
	(void)c;
	if (ram_check(self))
		return NULL;
	return PyLong_FromUnsignedLongLong(oc_ram_budget(self->ram));
}

static int RAM_set_budget(RAMObject *self, PyObject *v, void *c)
{
	(void)c;
	uint64_t b;
	if (ram_check(self))
		return -1;
	if (!v) {
		PyErr_SetString(PyExc_AttributeError, "cannot delete budget");
		return -1;
	}
	if (v == Py_None)
		b = oc_ram_budget_default();
	else if (!size_conv(v, &b))
		return -1;
	int err;
	NOGIL_CALL(err = oc_ram_set_budget(self->ram, b));
	if (err) {
		raise_code(err, "RAM.budget = %R", v);
		return -1;
	}
	return 0;
}

static PyObject *RAM_stats(RAMObject *self, PyObject *unused)
{
	(void)unused;
	if (ram_check(self))
		return NULL;
	oc_ram_stats_t st;
	int err = oc_ram_stats(self->ram, &st);
	if (err)
		return raise_code(err, "RAM.stats()");
	return Py_BuildValue(
		"{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}",
		"budget", (unsigned long long)st.budget,
		"pagesize", (unsigned long long)st.pagesize,
		"used", (unsigned long long)st.used,
		"used_max", (unsigned long long)st.used_max,
		"ram_pages", (unsigned long long)st.ram_pages,
		"dirty_pages", (unsigned long long)st.dirty_pages,
		"base_blocks", (unsigned long long)st.base_blocks,
		"loads", (unsigned long long)st.loads,
		"load_errors", (unsigned long long)st.load_errors,
		"stores", (unsigned long long)st.stores,
		"store_errors", (unsigned long long)st.store_errors,
		"base_maps", (unsigned long long)st.base_maps,
		"cow_copies", (unsigned long long)st.cow_copies,
		"zero_fills", (unsigned long long)st.zero_fills,
		"faults", (unsigned long long)st.faults,
		"write_faults", (unsigned long long)st.write_faults,
		"reclaims", (unsigned long long)st.reclaims,
		"map_reclaims", (unsigned long long)st.map_reclaims,
		"overbudget", (unsigned long long)st.overbudget,
		"patched_pages", (unsigned long long)st.patched_pages,
		"patch_bytes", (unsigned long long)st.patch_bytes,
		"granule_copies", (unsigned long long)st.granule_copies,
		"patch_unmaps", (unsigned long long)st.patch_unmaps,
		"patch_loads", (unsigned long long)st.patch_loads,
		"table_moves", (unsigned long long)st.table_moves,
		"reclaim_runs", (unsigned long long)st.reclaim_runs);
}

static PyObject *RAM_reclaim(RAMObject *self, PyObject *args)
{
	uint64_t n = UINT64_MAX;
	if (!PyArg_ParseTuple(args, "|O&:reclaim", u64_conv, &n))
		return NULL;
	if (ram_check(self))
		return NULL;
	int64_t r;
	NOGIL_CALL(r = oc_ram_reclaim(self->ram, n));
	if (r < 0)
		return raise_code((int)r, "RAM.reclaim(%llu)",
				  (unsigned long long)n);
	return PyLong_FromLongLong(r);
}

static PyObject *RAM_repr(RAMObject *self)
{
	if (!self->ram)
		return PyUnicode_FromString("<outcore.RAM (uninitialised)>");
	PyObject *kind = RAM_get_kind(self, NULL);
	if (!kind)
		return NULL;
	PyObject *r = PyUnicode_FromFormat(
		"<outcore.RAM%s kind=%U pagesize=%zu budget=%llu>",
		self->owned ? "" : " (default)", kind,
		oc_ram_pagesize(self->ram),
		(unsigned long long)oc_ram_budget(self->ram));
	Py_DECREF(kind);
	return r;
}

static PyMethodDef RAM_methods[] = {
	{"stats", (PyCFunction)RAM_stats, METH_NOARGS,
	 "stats() -> dict\n\nCounters and gauges of this RAM: budget, pagesize, "
	 "used, used_max, ram_pages, dirty_pages, base_blocks, loads, "
	 "load_errors, stores, store_errors, base_maps, cow_copies, "
	 "zero_fills, faults, "
	 "write_faults, reclaims, map_reclaims, overbudget; patched_pages "
	 "(dirty base-layer blocks kept as their base plus the granules "
	 "written), patch_bytes (those granules), granule_copies, "
	 "patch_unmaps, patch_loads (blocks stored as a base plus changes "
	 "loaded for a write as just their changed granules), table_moves "
	 "(blocks loaded into a reclaimed page's slot and shown by moving "
	 "its page tables rather than filling new ones), reclaim_runs "
	 "(reclaims of a run of a scan's base blocks with one unmapping)."},
	{"reclaim", (PyCFunction)RAM_reclaim, METH_VARARGS,
	 "reclaim(n=all) -> int\n\nReclaim up to n clean pages (and "
	 "base-mapped blocks), least recently used first, regardless of the "
	 "budget; returns how many were reclaimed.  Dirty pages are never "
	 "reclaimed."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef RAM_getset[] = {
	{"pagesize", (getter)RAM_get_pagesize, NULL, "Page size in bytes.", NULL},
	{"kind", (getter)RAM_get_kind, NULL,
	 "Where pages come from: 'memfd', 'hugetlb' or 'tmpfs'.", NULL},
	{"budget", (getter)RAM_get_budget, (setter)RAM_set_budget,
	 "Byte budget (settable: an int or a string like '512MiB'; None "
	 "restores the default).  Lowering it reclaims clean pages at once.",
	 NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RAMType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.RAM",
	.tp_basicsize = sizeof(RAMObject),
	.tp_dealloc = (destructor)RAM_dealloc,
	.tp_repr = (reprfunc)RAM_repr,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "RAM(pagesize=2MiB, budget=None, kind='memfd', dir=None)\n\n"
		  "Memory that outcore pages live in: pages of one power-of-two "
		  "size (>= 4 KiB) carved from a memfd (default), a hugetlb "
		  "memfd (needs huge pages reserved) or an unlinked file in the "
		  "tmpfs directory dir.  budget (an int or a string such as "
		  "'512MiB'; None: $OUTCORE_RAM or a quarter of physical memory) "
		  "bounds what the handles of this RAM keep resident: beyond it "
		  "the least recently used clean pages are reclaimed.  Dirty "
		  "pages are never dropped (the budget is exceeded instead and "
		  "stats()['overbudget'] counts it).",
	.tp_weaklistoffset = offsetof(RAMObject, weakreflist),
	.tp_methods = RAM_methods,
	.tp_getset = RAM_getset,
	.tp_init = (initproc)RAM_init,
	.tp_new = PyType_GenericNew,
};

/* ---- BigFile ------------------------------------------------------------- */

enum { FILE_NONE = 0, FILE_PY, FILE_MEM, FILE_PLAIN };

typedef struct {
	PyObject_HEAD
	oc_file_t *file;  /* the C file: &pyfile for Python files */
	oc_file_t pyfile; /* embedded, for Python-defined files */
	int kind;
	int released;     /* pyfile: ops->release ran */
	int nhandles;     /* open C handles of this file */
	PyObject *weakreflist;
} BigFileObject;

static PyTypeObject BigFileType, MemFileType, PlainFileType;
static PyObject *str_loadblk, *str_storeblk, *str_release, *clear_frames;

/* Whether anything but the caller still holds the memoryview or a view of
 * its memory.  Releasing mv fails while it has exports; NumPy's frombuffer
 * and memoryview(buf) or buf[a:b] make new memoryviews registered on mv's
 * managed buffer instead, which mv.release() does not see: they are
 * counted in the managed buffer's exports.  A plain reference to mv is
 * harmless once it is released, but is refused too, to keep the rule
 * simple ("keep nothing of buf").  The managed buffer's layout is
 * CPython's (memoryobject.h, stable since 3.3). */
static int view_held(PyObject *mv)
{
	_PyManagedBufferObject *mbuf = ((PyMemoryViewObject *)mv)->mbuf;
	PyObject *r = PyObject_CallMethodNoArgs(mv, str_release);
	if (!r) {
		PyErr_Clear(); /* BufferError: exports alive */
		return 1;
	}
	Py_DECREF(r);
	return Py_REFCNT(mv) > 1 || (mbuf && mbuf->exports > 0);
}

/* Release the memoryview handed to a callback; see the file comment. */
static void release_view(PyObject *mv, PyObject *exc, BigFileObject *self,
			 const char *op, uint64_t blk)
{
	if (!view_held(mv))
		return;
	/* The usual culprit: the callee's frames, kept by the traceback of
	 * the exception it raised, hold buf or an array made from it. */
	if (exc) {
		PyObject *tb = PyException_GetTraceback(exc);
		if (tb && clear_frames) {
			PyObject *r = PyObject_CallOneArg(clear_frames, tb);
			Py_XDECREF(r);
			PyErr_Clear();
		}
		Py_XDECREF(tb);
	}
	if (!view_held(mv))
		return;
	PyGC_Collect();
	if (!view_held(mv))
		return;
	fprintf(stderr,
		"outcore: %s.%s(blk=%llu) kept a reference to its buffer (buf, "
		"or an array or memoryview made from it, is still referenced "
		"after the call).  buf is memory that outcore reuses for other "
		"blocks, so the process cannot continue safely: aborting.  Copy "
		"the data out of buf instead of keeping it.\n",
		Py_TYPE(self)->tp_name, op, (unsigned long long)blk);
	fflush(stderr);
	abort();
}

static int pyfile_op(oc_file_t *f, uint64_t blk, void *buf, int store)
{
	BigFileObject *self = f->priv;
	PyGILState_STATE gs = PyGILState_Ensure();
	int explicit = tls_explicit;
	tls_explicit = 0;

	/* Save the thread's whole exception state. */
	PyObject *st, *sv, *stb, *ht, *hv, *htb;
	PyErr_Fetch(&st, &sv, &stb);
	PyErr_GetExcInfo(&ht, &hv, &htb);
	PyErr_SetExcInfo(NULL, NULL, NULL);

	const char *opname = store ? "storeblk" : "loadblk";
	int err = 0;
	PyObject *res = NULL, *blko = NULL, *mv;
	mv = PyMemoryView_FromMemory(buf, (Py_ssize_t)f->blksize,
				     store ? PyBUF_READ : PyBUF_WRITE);
	if (mv)
		blko = PyLong_FromUnsignedLongLong(blk);
	if (blko)
		res = PyObject_CallMethodObjArgs(
			(PyObject *)self, store ? str_storeblk : str_loadblk,
			blko, mv, NULL);
	Py_XDECREF(blko);
	PyObject *et = NULL, *ev = NULL, *etb = NULL;
	if (!res) {
		err = store ? OC_ESTORE : OC_ELOAD;
		PyErr_Fetch(&et, &ev, &etb);
		PyErr_NormalizeException(&et, &ev, &etb);
		if (etb && ev)
			PyException_SetTraceback(ev, etb);
	}
	Py_XDECREF(res);
	if (!err && tls_fail_file == f && tls_fail_blk == blk)
		tls_fail_file = NULL;

	if (err && !explicit) {
		/* Inside a page fault: nobody can catch it.  Print now, while
		 * the frames are intact; the core retries, then stops.  The
		 * retries of the same block print one line each. */
		if (tls_fail_file == f && tls_fail_blk == blk) {
			PyObject *s = ev ? PyObject_Str(ev) : NULL;
			fprintf(stderr,
				"outcore: %s.%s(blk=%llu) failed again: %s: "
				"%s\n", Py_TYPE(self)->tp_name, opname,
				(unsigned long long)blk,
				et ? ((PyTypeObject *)et)->tp_name : "?",
				s ? PyUnicode_AsUTF8(s) : "?");
			Py_XDECREF(s);
			PyErr_Clear();
			fflush(stderr);
		} else {
			fprintf(stderr,
				"outcore: exception in %s.%s(blk=%llu) during "
				"a page fault (file '%s'); it cannot be raised "
				"where the memory was touched (use "
				"outcore.prefault() or FileH.load() for "
				"that):\n", Py_TYPE(self)->tp_name, opname,
				(unsigned long long)blk, f->name);
			fflush(stderr);
			if (et)
				PyErr_Display(et, ev, etb);
		}
		tls_fail_file = f;
		tls_fail_blk = blk;
		PyObject *se = PySys_GetObject("stderr");
		if (se && se != Py_None) {
			PyObject *r = PyObject_CallMethod(se, "flush", NULL);
			Py_XDECREF(r);
			PyErr_Clear();
		}
	}
	if (mv) {
		/* keep the managed buffer alive for view_held() */
		PyObject *mbuf = (PyObject *)((PyMemoryViewObject *)mv)->mbuf;
		Py_XINCREF(mbuf);
		release_view(mv, ev, self, opname, blk);
		Py_DECREF(mv);
		Py_XDECREF(mbuf);
	}
	if (err && explicit && et && !tls_exc_type) {
		tls_exc_type = et;
		tls_exc_value = ev;
		tls_exc_tb = etb;
	} else {
		Py_XDECREF(et);
		Py_XDECREF(ev);
		Py_XDECREF(etb);
	}

	PyErr_SetExcInfo(ht, hv, htb);
	PyErr_Restore(st, sv, stb);
	tls_explicit = explicit;
	PyGILState_Release(gs);
	return err;
}

static int pyfile_loadblk(oc_file_t *f, uint64_t blk, void *buf)
{
	return pyfile_op(f, blk, buf, 0);
}

static int pyfile_storeblk(oc_file_t *f, uint64_t blk, const void *buf)
{
	return pyfile_op(f, blk, (void *)buf, 1);
}

static void pyfile_release(oc_file_t *f)
{
	BigFileObject *self = f->priv;
	self->released = 1;
}

static const oc_file_ops_t pyfile_ops = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = pyfile_loadblk,
	.storeblk = pyfile_storeblk,
	.release = pyfile_release,
};

static const oc_file_ops_t pyfile_ops_nostore = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = pyfile_loadblk,
	.storeblk = NULL,
	.release = pyfile_release,
};

static int BigFile_init(BigFileObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"blksize", NULL};
	uint64_t blksize;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O&:BigFile", kwlist,
					 size_conv, &blksize))
		return -1;
	if (self->kind != FILE_NONE) {
		PyErr_SetString(PyExc_TypeError, "BigFile already initialised");
		return -1;
	}
	int has_store = PyObject_HasAttr((PyObject *)Py_TYPE(self),
					 str_storeblk);
	int err = oc_file_init(&self->pyfile,
			       has_store ? &pyfile_ops : &pyfile_ops_nostore,
			       (size_t)blksize, Py_TYPE(self)->tp_name);
	if (err) {
		raise_code(err, "BigFile(blksize=%llu)",
			   (unsigned long long)blksize);
		return -1;
	}
	self->pyfile.priv = self;
	self->file = &self->pyfile;
	self->kind = FILE_PY;
	return 0;
}

static void BigFile_dealloc(BigFileObject *self)
{
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	if (self->nhandles > 0) {
		/* A C handle leaked (its close failed): it still points into
		 * this object, so the object is leaked with it. */
		return;
	}
	if (self->file)
		oc_file_put(self->file);
	self->file = NULL;
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int file_check(BigFileObject *self)
{
	if (!self->file) {
		PyErr_Format(InvalidArgument,
			     "%s not initialised (did __init__ call "
			     "BigFile.__init__(self, blksize)?)",
			     Py_TYPE(self)->tp_name);
		return -1;
	}
	return 0;
}

static PyObject *BigFile_get_blksize(BigFileObject *self, void *c)
{
	(void)c;
	if (file_check(self))
		return NULL;
	return PyLong_FromSize_t(self->file->blksize);
}

static PyObject *BigFile_get_name(BigFileObject *self, void *c)
{
	(void)c;
	if (file_check(self))
		return NULL;
	return PyUnicode_FromString(self->file->name);
}

static PyObject *fileh_new(BigFileObject *file, RAMObject *ram,
			   oc_fileh_t *fh);

static PyObject *BigFile_fileh_open(BigFileObject *self, PyObject *args,
				    PyObject *kw)
{
	static char *kwlist[] = {"ram", NULL};
	PyObject *ram_o = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:fileh_open", kwlist,
					 &ram_o))
		return NULL;
	if (file_check(self))
		return NULL;
	if (self->kind == FILE_PY &&
	    !PyObject_HasAttr((PyObject *)Py_TYPE(self), str_loadblk)) {
		PyErr_Format(PyExc_TypeError,
			     "%s defines no loadblk(self, blk, buf)",
			     Py_TYPE(self)->tp_name);
		return NULL;
	}
	PyObject *ram;
	if (ram_o == Py_None) {
		ram = ram_wrap_default(self->file->blksize);
		if (!ram)
			return NULL;
	} else if (PyObject_TypeCheck(ram_o, &RAMType)) {
		if (ram_check((RAMObject *)ram_o))
			return NULL;
		ram = Py_NewRef(ram_o);
	} else {
		PyErr_Format(PyExc_TypeError,
			     "ram must be an outcore.RAM or None, not %.100s",
			     Py_TYPE(ram_o)->tp_name);
		return NULL;
	}
	oc_fileh_t *fh;
	int err;
	NOGIL_CALL(err = oc_fileh_open(&fh, self->file,
				       ((RAMObject *)ram)->ram));
	if (err) {
		Py_DECREF(ram);
		return raise_code(err, "fileh_open(%s, blksize %zu, RAM page "
				       "size %zu)",
				  self->file->name, self->file->blksize,
				  oc_ram_pagesize(((RAMObject *)ram)->ram));
	}
	PyObject *r = fileh_new(self, (RAMObject *)ram, fh);
	Py_DECREF(ram);
	return r;
}

static PyMethodDef BigFile_methods[] = {
	{"fileh_open", (PyCFunction)(void (*)(void))BigFile_fileh_open,
	 METH_VARARGS | METH_KEYWORDS,
	 "fileh_open(ram=None) -> FileH\n\nOpen a handle: a view of this file "
	 "with its own local modifications.  ram is an outcore.RAM whose page "
	 "size equals blksize, or None for the shared default RAM of that "
	 "page size."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef BigFile_getset[] = {
	{"blksize", (getter)BigFile_get_blksize, NULL,
	 "Block size in bytes (read-only).", NULL},
	{"name", (getter)BigFile_get_name, NULL,
	 "The name used in messages.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BigFileType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.BigFile",
	.tp_basicsize = sizeof(BigFileObject),
	.tp_dealloc = (destructor)BigFile_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
	.tp_doc =
		"BigFile(blksize)\n\n"
		"A file of fixed-size blocks defined in Python.  Subclass it and "
		"define loadblk(self, blk, buf) (fill buf, a writable memoryview "
		"of exactly one block, with block blk; a block never stored must "
		"read as zeros) and, for a writable file, storeblk(self, blk, "
		"buf) (store the read-only memoryview buf as block blk).  Do not "
		"keep buf or anything made from it after returning: the process "
		"is aborted if an export of buf survives the call.\n\n"
		"loadblk runs when a page is first touched, possibly inside "
		"NumPy code in any thread; an exception it raises there cannot "
		"be caught: its traceback is printed and, after retries, the "
		"process is stopped with SIGBUS.  Through FileH.load() and "
		"outcore.prefault() the exception is raised normally; an "
		"exception of storeblk comes out of FileH.dirty_writeout().",
	.tp_weaklistoffset = offsetof(BigFileObject, weakreflist),
	.tp_methods = BigFile_methods,
	.tp_getset = BigFile_getset,
	.tp_init = (initproc)BigFile_init,
	.tp_new = PyType_GenericNew,
};

/* MemFile */

static int MemFile_init(BigFileObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"blksize", NULL};
	uint64_t blksize;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O&:MemFile", kwlist,
					 size_conv, &blksize))
		return -1;
	if (self->kind != FILE_NONE) {
		PyErr_SetString(PyExc_TypeError, "MemFile already initialised");
		return -1;
	}
	oc_file_t *f;
	int err = oc_memfile_new(&f, (size_t)blksize);
	if (err) {
		raise_code(err, "MemFile(blksize=%llu)",
			   (unsigned long long)blksize);
		return -1;
	}
	self->file = f;
	self->kind = FILE_MEM;
	return 0;
}

static PyObject *MemFile_counts(BigFileObject *self, PyObject *unused)
{
	(void)unused;
	if (file_check(self))
		return NULL;
	uint64_t loads, stores, nblocks;
	int err = oc_memfile_counts(self->file, &loads, &stores, &nblocks);
	if (err)
		return raise_code(err, "MemFile.counts()");
	return Py_BuildValue("{sKsKsK}", "loads", (unsigned long long)loads,
			     "stores", (unsigned long long)stores, "blocks",
			     (unsigned long long)nblocks);
}

static PyMethodDef MemFile_methods[] = {
	{"counts", (PyCFunction)MemFile_counts, METH_NOARGS,
	 "counts() -> dict\n\nloads and stores served so far, and blocks held "
	 "(for tests)."},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject MemFileType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.MemFile",
	.tp_basicsize = sizeof(BigFileObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "MemFile(blksize)\n\nAn in-RAM file implemented in C: blocks "
		  "kept in malloc'd memory, copied on load and store.  For tests "
		  "and scratch arrays.",
	.tp_methods = MemFile_methods,
	.tp_init = (initproc)MemFile_init,
	.tp_base = &BigFileType,
};

/* PlainFile */

static int PlainFile_init(BigFileObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"path", "blksize", "readonly", "create",
				 NULL};
	PyObject *pathb = NULL;
	uint64_t blksize = OC_PAGESIZE_DEFAULT;
	int readonly = 0, create = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&pp:PlainFile", kwlist,
					 PyUnicode_FSConverter, &pathb,
					 size_conv, &blksize, &readonly,
					 &create))
		return -1;
	if (self->kind != FILE_NONE) {
		Py_DECREF(pathb);
		PyErr_SetString(PyExc_TypeError,
				"PlainFile already initialised");
		return -1;
	}
	int flags = (readonly ? OC_PLAINFILE_RDONLY : 0) |
		    (create ? OC_PLAINFILE_CREATE : 0);
	oc_file_t *f;
	int err;
	const char *path = PyBytes_AS_STRING(pathb);
	NOGIL_CALL(err = oc_plainfile_open(&f, path, (size_t)blksize, flags));
	if (err) {
		raise_code(err, "PlainFile(%s)", path);
		if (PyErr_ExceptionMatches(PyExc_OSError)) {
			/* give OSError subclasses their filename */
			PyObject *t, *v, *tb;
			PyErr_Fetch(&t, &v, &tb);
			PyErr_NormalizeException(&t, &v, &tb);
			PyObject *fn = PyUnicode_DecodeFSDefault(path);
			if (fn && v)
				PyObject_SetAttrString(v, "filename", fn);
			Py_XDECREF(fn);
			PyErr_Clear();
			PyErr_Restore(t, v, tb);
		}
		Py_DECREF(pathb);
		return -1;
	}
	Py_DECREF(pathb);
	self->file = f;
	self->kind = FILE_PLAIN;
	return 0;
}

static PyObject *PlainFile_get_size(BigFileObject *self, void *c)
{
	(void)c;
	if (file_check(self))
		return NULL;
	return PyLong_FromUnsignedLongLong(oc_plainfile_size(self->file));
}

static PyObject *PlainFile_resize(BigFileObject *self, PyObject *args)
{
	uint64_t n;
	if (!PyArg_ParseTuple(args, "O&:resize", size_conv, &n))
		return NULL;
	if (file_check(self))
		return NULL;
	int err;
	NOGIL_CALL(err = oc_plainfile_resize(self->file, n));
	if (err)
		return raise_code(err, "PlainFile.resize(%llu)",
				  (unsigned long long)n);
	Py_RETURN_NONE;
}

static PyObject *PlainFile_sync(BigFileObject *self, PyObject *unused)
{
	(void)unused;
	if (file_check(self))
		return NULL;
	int err;
	NOGIL_CALL(err = oc_plainfile_sync(self->file));
	if (err)
		return raise_code(err, "PlainFile.sync()");
	Py_RETURN_NONE;
}

static PyMethodDef PlainFile_methods[] = {
	{"resize", (PyCFunction)PlainFile_resize, METH_VARARGS,
	 "resize(nbytes)\n\nSet the file size (ftruncate): growth reads as "
	 "zeros, shrinking drops the data past the new end.  Blocks past the "
	 "end are never written by writeout."},
	{"sync", (PyCFunction)PlainFile_sync, METH_NOARGS,
	 "sync()\n\nfdatasync the file."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef PlainFile_getset[] = {
	{"size", (getter)PlainFile_get_size, NULL,
	 "Current logical size of the file in bytes.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PlainFileType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.PlainFile",
	.tp_basicsize = sizeof(BigFileObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "PlainFile(path, blksize=2MiB, readonly=False, create=False)"
		  "\n\nA plain file on disk, implemented in C.  Clean blocks are "
		  "mapped from the file itself (zero copy, served by the page "
		  "cache); writeout is pwrite of each dirty block, clipped to "
		  "the file size.  Not transactional.  The size is fixed at "
		  "open (0 when created) and changed only by resize().",
	.tp_methods = PlainFile_methods,
	.tp_getset = PlainFile_getset,
	.tp_init = (initproc)PlainFile_init,
	.tp_base = &BigFileType,
};

/* ---- FileH --------------------------------------------------------------- */

typedef struct {
	PyObject_HEAD
	oc_fileh_t *fh;   /* NULL once closed */
	PyObject *file;   /* BigFileObject, or the StoreObject (borrowed) */
	PyObject *ram;    /* RAMObject */
	Py_ssize_t nvma;  /* live VMA objects */
	size_t blksize;
	int borrowed;     /* a store's handle: the store closes it, not us */
	int readonly;     /* of a read-only store: its buffers are too */
	PyObject *weakreflist;
} FileHObject;

static PyTypeObject FileHType, VMAType;

typedef struct {
	PyObject_HEAD
	oc_vma_t *vma;       /* NULL once unmapped */
	FileHObject *fileh;
	PyObject *pyuser;
	Py_ssize_t exports;
	PyObject *weakreflist;
} VMAObject;


static PyObject *fileh_new(BigFileObject *file, RAMObject *ram,
			   oc_fileh_t *fh)
{
	FileHObject *o = PyObject_GC_New(FileHObject, &FileHType);
	if (!o) {
		int err;
		NOGIL_CALL(err = oc_fileh_close(fh));
		(void)err;
		return NULL;
	}
	o->fh = fh;
	o->file = Py_NewRef((PyObject *)file);
	o->ram = Py_NewRef((PyObject *)ram);
	o->nvma = 0;
	o->blksize = file->file->blksize;
	o->borrowed = 0;
	o->readonly = 0; /* a read-only PlainFile's pages may be written:
			  * they are never stored (copy on write) */
	o->weakreflist = NULL;
	file->nhandles++;
	PyObject_GC_Track(o);
	return (PyObject *)o;
}

/* Close the C handle.  Returns 0 or the core's error (handle stays).  A
 * borrowed handle (a store's) is only forgotten: its store closes it. */
static int fileh_close_c(FileHObject *self)
{
	if (!self->fh)
		return 0;
	if (self->borrowed) {
		if (self->nvma > 0)
			return -EBUSY;
		self->fh = NULL;
		return 0;
	}
	int err;
	NOGIL_CALL(err = oc_fileh_close(self->fh));
	if (err == 0) {
		self->fh = NULL;
		((BigFileObject *)self->file)->nhandles--;
	}
	return err;
}

static void FileH_dealloc(FileHObject *self)
{
	PyObject_GC_UnTrack(self);
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	if (fileh_close_c(self) != 0) {
		/* Cannot happen (no VMA object is left, no writeout runs);
		 * if it does, keep the file and RAM alive forever rather
		 * than free memory a C handle points into. */
		self->file = self->ram = NULL;
	}
	Py_XDECREF(self->file);
	Py_XDECREF(self->ram);
	PyObject_GC_Del(self);
}

/* No tp_clear: the references keep the C objects the handle uses alive. */
static int FileH_traverse(FileHObject *self, visitproc visit, void *arg)
{
	Py_VISIT(self->file);
	Py_VISIT(self->ram);
	return 0;
}

static int fileh_check(FileHObject *self)
{
	if (!self->fh) {
		PyErr_SetString(InvalidArgument,
				"operation on a closed file handle");
		return -1;
	}
	return 0;
}

static PyObject *FileH_mmap(FileHObject *self, PyObject *args)
{
	uint64_t pgoffset, pglen;
	if (!PyArg_ParseTuple(args, "O&O&:mmap", u64_conv, &pgoffset, u64_conv,
			      &pglen))
		return NULL;
	if (fileh_check(self))
		return NULL;
	oc_vma_t *vma;
	int err = oc_fileh_mmap(self->fh, pgoffset, pglen, &vma);
	if (err)
		return raise_code(err, "FileH.mmap(%llu, %llu)",
				  (unsigned long long)pgoffset,
				  (unsigned long long)pglen);
	VMAObject *v = PyObject_GC_New(VMAObject, &VMAType);
	if (!v) {
		oc_vma_unmap(vma);
		return NULL;
	}
	v->vma = vma;
	v->fileh = (FileHObject *)Py_NewRef(self);
	v->pyuser = Py_NewRef(Py_None);
	v->exports = 0;
	v->weakreflist = NULL;
	oc_vma_set_user(vma, v);
	self->nvma++;
	PyObject_GC_Track(v);
	return (PyObject *)v;
}

static PyObject *FileH_dirty_writeout(FileHObject *self, PyObject *args)
{
	int flags;
	if (!PyArg_ParseTuple(args, "i:dirty_writeout", &flags))
		return NULL;
	if (fileh_check(self))
		return NULL;
	int err;
	EXPLICIT_CALL(err = oc_fileh_writeout(self->fh, flags));
	if (err)
		return raise_code(err, "FileH.dirty_writeout(%d)", flags);
	tls_exc_clear();
	Py_RETURN_NONE;
}

static PyObject *FileH_dirty_discard(FileHObject *self, PyObject *unused)
{
	(void)unused;
	if (fileh_check(self))
		return NULL;
	int err;
	NOGIL_CALL(err = oc_fileh_discard(self->fh));
	if (err)
		return raise_code(err, "FileH.dirty_discard()");
	Py_RETURN_NONE;
}

static PyObject *FileH_invalidate_page(FileHObject *self, PyObject *args)
{
	uint64_t blk;
	if (!PyArg_ParseTuple(args, "O&:invalidate_page", u64_conv, &blk))
		return NULL;
	if (fileh_check(self))
		return NULL;
	int err;
	NOGIL_CALL(err = oc_fileh_invalidate(self->fh, blk));
	if (err)
		return raise_code(err, "FileH.invalidate_page(%llu)",
				  (unsigned long long)blk);
	Py_RETURN_NONE;
}

static PyObject *FileH_isdirty(FileHObject *self, PyObject *unused)
{
	(void)unused;
	if (fileh_check(self))
		return NULL;
	int r = oc_fileh_isdirty(self->fh);
	if (r < 0)
		return raise_code(r, "FileH.isdirty()");
	return PyBool_FromLong(r);
}

static PyObject *FileH_dirty_pages(FileHObject *self, PyObject *unused)
{
	(void)unused;
	if (fileh_check(self))
		return NULL;
	uint64_t cap = 64, *blks = NULL;
	int64_t n;
	for (;;) {
		uint64_t *nb = PyMem_Realloc(blks, cap * sizeof(*blks));
		if (!nb) {
			PyMem_Free(blks);
			return PyErr_NoMemory();
		}
		blks = nb;
		n = oc_fileh_dirty_blocks(self->fh, blks, cap);
		if (n < 0) {
			PyMem_Free(blks);
			return raise_code((int)n, "FileH.dirty_pages()");
		}
		if ((uint64_t)n <= cap)
			break;
		cap = (uint64_t)n + 64;
	}
	PyObject *l = PyList_New((Py_ssize_t)n);
	for (int64_t i = 0; l && i < n; i++) {
		PyObject *b = PyLong_FromUnsignedLongLong(blks[i]);
		if (!b) {
			Py_CLEAR(l);
			break;
		}
		PyList_SET_ITEM(l, (Py_ssize_t)i, b);
	}
	PyMem_Free(blks);
	return l;
}

static PyObject *FileH_load(FileHObject *self, PyObject *args)
{
	uint64_t blk, n = 1;
	if (!PyArg_ParseTuple(args, "O&|O&:load", u64_conv, &blk, u64_conv, &n))
		return NULL;
	if (fileh_check(self))
		return NULL;
	int err;
	EXPLICIT_CALL(err = oc_fileh_load(self->fh, blk, n));
	if (err)
		return raise_code(err, "FileH.load(%llu, %llu)",
				  (unsigned long long)blk,
				  (unsigned long long)n);
	tls_exc_clear();
	Py_RETURN_NONE;
}

static PyObject *FileH_close(FileHObject *self, PyObject *unused)
{
	(void)unused;
	int err = fileh_close_c(self);
	if (err)
		return raise_code(err, "FileH.close() (%zd mapping(s) left)",
				  self->nvma);
	Py_RETURN_NONE;
}

static PyObject *FileH_enter(FileHObject *self, PyObject *unused)
{
	(void)unused;
	return Py_NewRef(self);
}

static PyObject *FileH_exit(FileHObject *self, PyObject *args)
{
	(void)args;
	return FileH_close(self, NULL);
}

static PyObject *FileH_get_closed(FileHObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->fh == NULL);
}

static PyObject *FileH_get_blksize(FileHObject *self, void *c)
{
	(void)c;
	return PyLong_FromSize_t(self->blksize);
}

static PyObject *FileH_repr(FileHObject *self)
{
	return PyUnicode_FromFormat("<outcore.FileH of %R%s>", self->file,
				    self->fh ? "" : " (closed)");
}

static PyMethodDef FileH_methods[] = {
	{"mmap", (PyCFunction)FileH_mmap, METH_VARARGS,
	 "mmap(pgoffset, pglen) -> VMA\n\nMap blocks [pgoffset, pgoffset + "
	 "pglen) into the address space.  Pages appear on first touch; "
	 "mappings of one handle share pages."},
	{"dirty_writeout", (PyCFunction)FileH_dirty_writeout, METH_VARARGS,
	 "dirty_writeout(flags)\n\nWRITEOUT_STORE: storeblk() every dirty "
	 "page in ascending block order (they stay dirty); "
	 "WRITEOUT_MARKSTORED: mark them clean without storing; both: store "
	 "and mark in one pass.  An exception raised by storeblk comes out "
	 "of this call as that exception; the pages not stored stay dirty "
	 "and the handle stays usable (retry or discard)."},
	{"dirty_discard", (PyCFunction)FileH_dirty_discard, METH_NOARGS,
	 "dirty_discard()\n\nDrop every dirty page: the next access reloads "
	 "the stored data."},
	{"invalidate_page", (PyCFunction)FileH_invalidate_page, METH_VARARGS,
	 "invalidate_page(blk)\n\nForget block blk (the file changed "
	 "underneath): drop its page, dirty or not.  A load of it in "
	 "progress is thrown away and redone."},
	{"isdirty", (PyCFunction)FileH_isdirty, METH_NOARGS,
	 "isdirty() -> bool\n\nWhether the handle has dirty pages."},
	{"dirty_pages", (PyCFunction)FileH_dirty_pages, METH_NOARGS,
	 "dirty_pages() -> list\n\nThe dirty block numbers, ascending."},
	{"load", (PyCFunction)FileH_load, METH_VARARGS,
	 "load(blk, n=1)\n\nLoad blocks [blk, blk + n) through the normal "
	 "return path: an exception raised by loadblk is raised here."},
	{"close", (PyCFunction)FileH_close, METH_NOARGS,
	 "close()\n\nClose the handle, dropping every page (dirty ones too: "
	 "write out first).  BusyError while mappings of it remain.  "
	 "Idempotent."},
	{"__enter__", (PyCFunction)FileH_enter, METH_NOARGS,
	 "Return self."},
	{"__exit__", (PyCFunction)FileH_exit, METH_VARARGS,
	 "Close the handle."},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef FileH_members[] = {
	{"file", T_OBJECT, offsetof(FileHObject, file), READONLY,
	 "The BigFile this handle views."},
	{"ram", T_OBJECT, offsetof(FileHObject, ram), READONLY,
	 "The RAM its pages live in."},
	{NULL, 0, 0, 0, NULL},
};

static PyGetSetDef FileH_getset[] = {
	{"closed", (getter)FileH_get_closed, NULL, "Whether closed.", NULL},
	{"blksize", (getter)FileH_get_blksize, NULL,
	 "The file's block size (= the RAM's page size).", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FileHType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.FileH",
	.tp_basicsize = sizeof(FileHObject),
	.tp_dealloc = (destructor)FileH_dealloc,
	.tp_repr = (reprfunc)FileH_repr,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "A file handle: one view of a BigFile with its own local "
		  "modifications (dirty pages), made by BigFile.fileh_open().  "
		  "Closed when the last reference to it (every VMA holds one) "
		  "dies, dropping unsaved changes.",
	.tp_traverse = (traverseproc)FileH_traverse,
	.tp_weaklistoffset = offsetof(FileHObject, weakreflist),
	.tp_methods = FileH_methods,
	.tp_members = FileH_members,
	.tp_getset = FileH_getset,
};

/* ---- VMA ----------------------------------------------------------------- */

static void vma_unmap_c(VMAObject *self)
{
	if (!self->vma)
		return;
	oc_vma_set_user(self->vma, NULL);
	int err = oc_vma_unmap(self->vma);
	(void)err; /* documented to return 0 */
	self->vma = NULL;
	self->fileh->nvma--;
}

static void VMA_dealloc(VMAObject *self)
{
	PyObject_GC_UnTrack(self);
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	vma_unmap_c(self);
	Py_XDECREF(self->pyuser);
	Py_XDECREF(self->fileh);
	PyObject_GC_Del(self);
}

static int VMA_traverse(VMAObject *self, visitproc visit, void *arg)
{
	Py_VISIT(self->pyuser);
	Py_VISIT(self->fileh);
	return 0;
}

/* Clears only pyuser: the handle must outlive the mapping. */
static int VMA_clear(VMAObject *self)
{
	Py_CLEAR(self->pyuser);
	return 0;
}

static int VMA_getbuffer(VMAObject *self, Py_buffer *view, int flags)
{
	if (!self->vma) {
		PyErr_SetString(PyExc_BufferError, "VMA is unmapped");
		view->obj = NULL;
		return -1;
	}
	/* Read-only for a read-only store: an ndarray over it then cannot be
	 * made writeable (flags.writeable = True raises). */
	if (PyBuffer_FillInfo(view, (PyObject *)self, oc_vma_addr(self->vma),
			      (Py_ssize_t)oc_vma_len(self->vma),
			      self->fileh->readonly, flags) < 0)
		return -1;
	self->exports++;
	return 0;
}

static void VMA_releasebuffer(VMAObject *self, Py_buffer *view)
{
	(void)view;
	self->exports--;
}

static PyBufferProcs VMA_as_buffer = {
	.bf_getbuffer = (getbufferproc)VMA_getbuffer,
	.bf_releasebuffer = (releasebufferproc)VMA_releasebuffer,
};

static Py_ssize_t VMA_len(VMAObject *self)
{
	return self->vma ? (Py_ssize_t)oc_vma_len(self->vma) : 0;
}

static PyObject *VMA_get_addr_start(VMAObject *self, void *c)
{
	(void)c;
	if (!self->vma)
		return PyLong_FromLong(0);
	return PyLong_FromUnsignedLongLong(
		(unsigned long long)(uintptr_t)oc_vma_addr(self->vma));
}

static PyObject *VMA_get_addr_stop(VMAObject *self, void *c)
{
	(void)c;
	if (!self->vma)
		return PyLong_FromLong(0);
	return PyLong_FromUnsignedLongLong(
		(unsigned long long)((uintptr_t)oc_vma_addr(self->vma) +
				     oc_vma_len(self->vma)));
}

static PyObject *VMA_get_mapped(VMAObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->vma != NULL);
}

static int vma_check(VMAObject *self)
{
	if (!self->vma) {
		PyErr_SetString(InvalidArgument, "VMA is unmapped");
		return -1;
	}
	return 0;
}

static PyObject *VMA_filerange(VMAObject *self, PyObject *unused)
{
	(void)unused;
	if (vma_check(self))
		return NULL;
	size_t ps = self->fileh->blksize;
	return Py_BuildValue("KK",
			     (unsigned long long)oc_vma_pgoffset(self->vma),
			     (unsigned long long)(oc_vma_len(self->vma) / ps));
}

static PyObject *VMA_pagesize(VMAObject *self, PyObject *unused)
{
	(void)unused;
	return PyLong_FromSize_t(self->fileh->blksize);
}

static PyObject *VMA_unmap(VMAObject *self, PyObject *unused)
{
	(void)unused;
	if (self->exports > 0) {
		PyErr_Format(BusyError,
			     "VMA.unmap(): %zd buffer export(s) of this "
			     "mapping are alive (memoryviews); release them "
			     "first", self->exports);
		return NULL;
	}
	vma_unmap_c(self);
	Py_RETURN_NONE;
}

static PyObject *VMA_repr(VMAObject *self)
{
	if (!self->vma)
		return PyUnicode_FromString("<outcore.VMA (unmapped)>");
	size_t ps = self->fileh->blksize;
	return PyUnicode_FromFormat(
		"<outcore.VMA blocks [%llu, %llu) at %p>",
		(unsigned long long)oc_vma_pgoffset(self->vma),
		(unsigned long long)(oc_vma_pgoffset(self->vma) +
				     oc_vma_len(self->vma) / ps),
		oc_vma_addr(self->vma));
}

static PyMethodDef VMA_methods[] = {
	{"filerange", (PyCFunction)VMA_filerange, METH_NOARGS,
	 "filerange() -> (pgoffset, pglen)\n\nThe block range shown."},
	{"pagesize", (PyCFunction)VMA_pagesize, METH_NOARGS,
	 "pagesize() -> int\n\nThe page (= block) size."},
	{"unmap", (PyCFunction)VMA_unmap, METH_NOARGS,
	 "unmap()\n\nUnmap now (dirty pages stay in the handle).  BusyError "
	 "while memoryviews of it are alive.  Arrays made with "
	 "numpy.ndarray(buffer=vma) or numpy.frombuffer hold only a "
	 "reference, not an export: touching them after unmap() kills the "
	 "process, so call unmap() only when no array uses the mapping, or "
	 "just drop the references (the mapping goes with the last one)."},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef VMA_members[] = {
	{"pyuser", T_OBJECT, offsetof(VMAObject, pyuser), 0,
	 "A free slot for the user (None by default)."},
	{"fileh", T_OBJECT, offsetof(VMAObject, fileh), READONLY,
	 "The handle mapped."},
	{NULL, 0, 0, 0, NULL},
};

static PyGetSetDef VMA_getset[] = {
	{"addr_start", (getter)VMA_get_addr_start, NULL,
	 "First address of the mapping.", NULL},
	{"addr_stop", (getter)VMA_get_addr_stop, NULL,
	 "Address just past the mapping.", NULL},
	{"mapped", (getter)VMA_get_mapped, NULL,
	 "False once unmapped.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods VMA_as_sequence = {
	.sq_length = (lenfunc)VMA_len,
};

static PyTypeObject VMAType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.VMA",
	.tp_basicsize = sizeof(VMAObject),
	.tp_dealloc = (destructor)VMA_dealloc,
	.tp_repr = (reprfunc)VMA_repr,
	.tp_as_sequence = &VMA_as_sequence,
	.tp_as_buffer = &VMA_as_buffer,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "A mapping of a range of a handle's blocks (FileH.mmap).  "
		  "Supports the writable buffer protocol (memoryview(vma), "
		  "numpy.frombuffer(vma, ...)); len() is its size in bytes.  "
		  "Unmapped when the last reference dies; dirty pages stay in "
		  "the handle.",
	.tp_traverse = (traverseproc)VMA_traverse,
	.tp_clear = (inquiry)VMA_clear,
	.tp_weaklistoffset = offsetof(VMAObject, weakreflist),
	.tp_methods = VMA_methods,
	.tp_members = VMA_members,
	.tp_getset = VMA_getset,
};

/* ---- Store ----------------------------------------------------------------- */

/* A transactional store (store.h).  The store owns its arrays' C handles:
 * array_fileh() wraps one in a borrowed FileH (one Python object per C
 * handle while it lives, found again through a weak reference) that holds
 * the Store object and never closes the handle.  So the C store outlives
 * every FileH and VMA of it; close() refuses while a mapping of one of its
 * handles is alive, and forgets the handles of the FileH objects left.
 *
 * All calls on one store come from one thread at a time (store.h): commit
 * and abort run with the GIL released and set busy, which every other
 * method checks (BusyError). */

typedef struct {
	PyObject_HEAD
	oc_store_t *st;     /* NULL once closed */
	PyObject *ram;      /* RAMObject */
	PyObject *path;     /* str or bytes, as given */
	int flags;
	int busy;           /* commit/abort running without the GIL */
	PyObject *handles;  /* dict: C handle address -> weakref to FileH */
	PyObject *weakreflist;
} StoreObject;

static PyTypeObject StoreType;

static int store_check(StoreObject *self)
{
	if (!self->st) {
		PyErr_SetString(InvalidArgument, "operation on a closed store");
		return -1;
	}
	if (self->busy) {
		PyErr_SetString(BusyError,
				"the store is busy: a commit or abort runs in "
				"another thread (calls on one store must not "
				"overlap)");
		return -1;
	}
	return 0;
}

/* A store path fit to show: a connection string may hold a password, so
 * a URI shows neither its user info nor its options.  Returns buf or
 * path. */
static const char *shown_path(const char *path, char *buf, size_t n)
{
	const char *at = strchr(path, '@'), *sl = strstr(path, "://");
	size_t q = strcspn(path, "?");

	if (!sl)
		return path;
	if (at && (size_t)(at - path) < q)
		snprintf(buf, n, "%.*s***%.*s", (int)(sl + 3 - path), path,
			 (int)(q - (size_t)(at - path)), at);
	else
		snprintf(buf, n, "%.*s", (int)q, path);
	return buf;
}

static int Store_init(StoreObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"path", "flags", "ram", NULL};
	PyObject *path_o, *ram_o = Py_None, *pathb = NULL;
	int flags = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iO:Store", kwlist,
					 &path_o, &flags, &ram_o))
		return -1;
	if (self->st) {
		PyErr_SetString(PyExc_TypeError, "Store already initialised");
		return -1;
	}
	if (!PyUnicode_FSConverter(path_o, &pathb))
		return -1;
	PyObject *ram;
	if (ram_o == Py_None) {
		ram = ram_wrap_default(OC_PAGESIZE_DEFAULT);
	} else if (PyObject_TypeCheck(ram_o, &RAMType)) {
		ram = ram_check((RAMObject *)ram_o) ? NULL : Py_NewRef(ram_o);
	} else {
		PyErr_Format(PyExc_TypeError,
			     "ram must be an outcore.RAM or None, not %.100s",
			     Py_TYPE(ram_o)->tp_name);
		ram = NULL;
	}
	if (!ram) {
		Py_DECREF(pathb);
		return -1;
	}
	PyObject *handles = PyDict_New();
	if (!handles) {
		Py_DECREF(pathb);
		Py_DECREF(ram);
		return -1;
	}
	const char *path = PyBytes_AS_STRING(pathb);
	oc_store_t *st;
	int err;
	NOGIL_CALL(err = oc_store_open(&st, path, flags,
				       ((RAMObject *)ram)->ram));
	if (err) {
		char shown[512];
		raise_code(err, "Store(%s)", shown_path(path, shown, sizeof shown));
		Py_DECREF(pathb);
		Py_DECREF(ram);
		Py_DECREF(handles);
		return -1;
	}
	Py_DECREF(pathb);
	self->st = st;
	self->flags = flags;
	Py_XSETREF(self->ram, ram);
	Py_XSETREF(self->path, Py_NewRef(path_o));
	Py_XSETREF(self->handles, handles);
	return 0;
}

/* Forget the C handles of the FileH objects still alive (after the C store
 * closed them). */
static void store_forget_handles(StoreObject *self)
{
	PyObject *key, *wr;
	Py_ssize_t pos = 0;
	if (!self->handles)
		return;
	while (PyDict_Next(self->handles, &pos, &key, &wr)) {
		PyObject *fo = PyWeakref_GetObject(wr);
		if (fo && fo != Py_None)
			((FileHObject *)fo)->fh = NULL;
	}
	PyDict_Clear(self->handles);
}

/* The live mappings of this store's handles. */
static Py_ssize_t store_nmaps(StoreObject *self)
{
	PyObject *key, *wr;
	Py_ssize_t pos = 0, n = 0;
	if (!self->handles)
		return 0;
	while (PyDict_Next(self->handles, &pos, &key, &wr)) {
		PyObject *fo = PyWeakref_GetObject(wr);
		if (fo && fo != Py_None && ((FileHObject *)fo)->fh)
			n += ((FileHObject *)fo)->nvma;
	}
	return n;
}

static void Store_dealloc(StoreObject *self)
{
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	if (self->st) {
		/* No FileH of ours is left (each holds this object), so no
		 * mapping either: the close cannot be refused. */
		int err;
		NOGIL_CALL(err = oc_store_close(self->st));
		(void)err;
		self->st = NULL;
	}
	Py_XDECREF(self->handles);
	Py_XDECREF(self->ram);
	Py_XDECREF(self->path);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Store_close(StoreObject *self, PyObject *unused)
{
	(void)unused;
	if (!self->st)
		Py_RETURN_NONE;
	if (store_check(self))
		return NULL;
	/* Refuse before the C store closes some handles and not others. */
	Py_ssize_t n = store_nmaps(self);
	if (n > 0)
		return raise_code(-EBUSY, "Store.close(): %zd mapping(s) of its "
					  "arrays are alive (arrays or views "
					  "still referenced)", n);
	int err;
	self->busy = 1;
	NOGIL_CALL(err = oc_store_close(self->st));
	self->busy = 0;
	if (err)
		return raise_code(err, "Store.close()");
	self->st = NULL;
	store_forget_handles(self);
	Py_RETURN_NONE;
}

/* Fill *m from (shape, dtype, order, blksize, attrs); the strings point into
 * the Python objects, which the caller keeps alive. */
static int meta_from_args(oc_array_meta_t *m, PyObject *shape_o,
			  const char *dtype, const char *order,
			  uint64_t blksize, const char *attrs)
{
	memset(m, 0, sizeof(*m));
	PyObject *seq = PySequence_Fast(shape_o, "shape must be a sequence "
						 "of ints");
	if (!seq)
		return -1;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	if (n > OC_STORE_MAXDIM) {
		Py_DECREF(seq);
		PyErr_Format(InvalidArgument, "%zd dimensions: at most %d", n,
			     OC_STORE_MAXDIM);
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
		PyObject *ix = PyNumber_Index(it);
		if (!ix) {
			Py_DECREF(seq);
			return -1;
		}
		int ok = u64_conv(ix, &m->shape[i]);
		Py_DECREF(ix);
		if (!ok) {
			Py_DECREF(seq);
			return -1;
		}
		if (m->shape[i] > INT64_MAX) {
			Py_DECREF(seq);
			PyErr_Format(InvalidArgument,
				     "shape[%zd] = %llu is past 2**63-1", i,
				     (unsigned long long)m->shape[i]);
			return -1;
		}
	}
	Py_DECREF(seq);
	if (strlen(order) != 1 || (order[0] != 'C' && order[0] != 'F')) {
		PyErr_Format(InvalidArgument, "order must be 'C' or 'F', not "
					      "'%s'", order);
		return -1;
	}
	m->ndim = (unsigned)n;
	m->dtype = (char *)dtype;
	m->order = order[0];
	m->blksize = blksize;
	m->attrs = (char *)attrs;
	return 0;
}

static PyObject *meta_to_dict(const oc_array_meta_t *m)
{
	PyObject *shape = PyTuple_New(m->ndim);
	if (!shape)
		return NULL;
	for (unsigned i = 0; i < m->ndim; i++) {
		PyObject *v = PyLong_FromUnsignedLongLong(m->shape[i]);
		if (!v) {
			Py_DECREF(shape);
			return NULL;
		}
		PyTuple_SET_ITEM(shape, i, v);
	}
	char order[2] = {m->order, 0};
	return Py_BuildValue("{sNsssssKss}", "shape", shape, "dtype", m->dtype,
			     "order", order, "blksize",
			     (unsigned long long)m->blksize, "attrs",
			     m->attrs ? m->attrs : "{}");
}

static int store_meta_call(StoreObject *self, PyObject *args, PyObject *kw,
			   int set)
{
	static char *kwlist[] = {"name", "shape", "dtype", "order", "blksize",
				 "attrs", NULL};
	const char *name, *dtype, *order = "C", *attrs = NULL;
	PyObject *shape_o;
	uint64_t blksize = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw,
					 set ? "sOs|sO&z:meta_set"
					     : "sOs|sO&z:create",
					 kwlist, &name, &shape_o, &dtype, &order,
					 size_conv, &blksize, &attrs))
		return -1;
	if (store_check(self))
		return -1;
	oc_array_meta_t m;
	if (meta_from_args(&m, shape_o, dtype, order, blksize, attrs))
		return -1;
	int err = set ? oc_store_meta_set(self->st, name, &m)
		      : oc_store_create(self->st, name, &m);
	if (err) {
		raise_code(err, "Store.%s('%s')", set ? "meta_set" : "create",
			   name);
		return -1;
	}
	return 0;
}

static PyObject *Store_create(StoreObject *self, PyObject *args, PyObject *kw)
{
	if (store_meta_call(self, args, kw, 0))
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *Store_meta_set(StoreObject *self, PyObject *args,
				PyObject *kw)
{
	if (store_meta_call(self, args, kw, 1))
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *Store_meta_get(StoreObject *self, PyObject *args)
{
	const char *name;
	if (!PyArg_ParseTuple(args, "s:meta_get", &name))
		return NULL;
	if (store_check(self))
		return NULL;
	oc_array_meta_t m;
	memset(&m, 0, sizeof(m));
	int err = oc_store_meta_get(self->st, name, &m);
	if (err)
		return raise_code(err, "Store.meta_get('%s')", name);
	PyObject *d = meta_to_dict(&m);
	oc_array_meta_clear(&m);
	return d;
}

static PyObject *Store_delete(StoreObject *self, PyObject *args)
{
	const char *name;
	if (!PyArg_ParseTuple(args, "s:delete", &name))
		return NULL;
	if (store_check(self))
		return NULL;
	int err = oc_store_delete(self->st, name);
	if (err)
		return raise_code(err, "Store.delete('%s')", name);
	Py_RETURN_NONE;
}

static PyObject *Store_truncate(StoreObject *self, PyObject *args)
{
	const char *name;
	unsigned long long nblk;
	if (!PyArg_ParseTuple(args, "sK:truncate", &name, &nblk))
		return NULL;
	if (store_check(self))
		return NULL;
	int err = oc_store_truncate(self->st, name, (uint64_t)nblk);
	if (err)
		return raise_code(err, "Store.truncate('%s', %llu)", name, nblk);
	Py_RETURN_NONE;
}

static int names_cb(const char *name, void *arg)
{
	PyObject *s = PyUnicode_DecodeUTF8(name, (Py_ssize_t)strlen(name),
					   "surrogateescape");
	if (!s)
		return 1;
	int r = PyList_Append((PyObject *)arg, s);
	Py_DECREF(s);
	return r ? 1 : 0;
}

static PyObject *Store_names(StoreObject *self, PyObject *unused)
{
	(void)unused;
	if (store_check(self))
		return NULL;
	PyObject *l = PyList_New(0);
	if (!l)
		return NULL;
	int err = oc_store_names(self->st, names_cb, l);
	if (err == 1 && PyErr_Occurred()) {
		Py_DECREF(l);
		return NULL;
	}
	if (err) {
		Py_DECREF(l);
		return raise_code(err, "Store.names()");
	}
	return l;
}

static PyObject *Store_array_fileh(StoreObject *self, PyObject *args)
{
	const char *name;
	if (!PyArg_ParseTuple(args, "s:array_fileh", &name))
		return NULL;
	if (store_check(self))
		return NULL;
	oc_fileh_t *fh;
	int err;
	err = oc_store_array_fileh(self->st, name, &fh);
	if (err) {
		if (err == OC_EBLKSIZE) {
			oc_array_meta_t m;
			memset(&m, 0, sizeof(m));
			if (!oc_store_meta_get(self->st, name, &m)) {
				raise_code(err, "Store.array_fileh('%s'): "
					   "block size %llu, RAM page size "
					   "%zu (open the store with a RAM of "
					   "that page size)", name,
					   (unsigned long long)m.blksize,
					   oc_ram_pagesize(
						   ((RAMObject *)self->ram)->ram));
				oc_array_meta_clear(&m);
				return NULL;
			}
		}
		return raise_code(err, "Store.array_fileh('%s')", name);
	}
	PyObject *key = PyLong_FromVoidPtr(fh);
	if (!key)
		return NULL;
	PyObject *wr = PyDict_GetItemWithError(self->handles, key);
	if (wr) {
		PyObject *fo = PyWeakref_GetObject(wr);
		if (fo && fo != Py_None && ((FileHObject *)fo)->fh == fh) {
			Py_DECREF(key);
			return Py_NewRef(fo);
		}
	} else if (PyErr_Occurred()) {
		Py_DECREF(key);
		return NULL;
	}
	FileHObject *o = PyObject_GC_New(FileHObject, &FileHType);
	if (!o) {
		Py_DECREF(key);
		return NULL;
	}
	o->fh = fh;
	o->file = Py_NewRef((PyObject *)self);
	o->ram = Py_NewRef(self->ram);
	o->nvma = 0;
	o->blksize = oc_fileh_file(fh)->blksize;
	o->borrowed = 1;
	o->readonly = (self->flags & OC_STORE_RDONLY) != 0;
	o->weakreflist = NULL;
	PyObject_GC_Track(o);
	wr = PyWeakref_NewRef((PyObject *)o, NULL);
	if (!wr || PyDict_SetItem(self->handles, key, wr) < 0) {
		Py_XDECREF(wr);
		Py_DECREF(key);
		Py_DECREF(o);
		return NULL;
	}
	Py_DECREF(wr);
	Py_DECREF(key);
	return (PyObject *)o;
}

static PyObject *Store_commit(StoreObject *self, PyObject *unused)
{
	(void)unused;
	if (store_check(self))
		return NULL;
	int err;
	self->busy = 1;
	NOGIL_CALL(err = oc_store_commit(self->st));
	self->busy = 0;
	if (err)
		return raise_code(err, "Store.commit()");
	Py_RETURN_NONE;
}

static PyObject *Store_abort(StoreObject *self, PyObject *unused)
{
	(void)unused;
	if (store_check(self))
		return NULL;
	int err;
	self->busy = 1;
	NOGIL_CALL(err = oc_store_abort(self->st));
	self->busy = 0;
	if (err)
		return raise_code(err, "Store.abort()");
	Py_RETURN_NONE;
}

static PyObject *Store_stats(StoreObject *self, PyObject *unused)
{
	(void)unused;
	if (store_check(self))
		return NULL;
	oc_store_stats_t s;
	int err = oc_store_stats(self->st, &s);
	if (err)
		return raise_code(err, "Store.stats()");
	return Py_BuildValue(
		"{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}",
		"commits", (unsigned long long)s.commits,
		"aborts", (unsigned long long)s.aborts,
		"failed_commits", (unsigned long long)s.failed_commits,
		"conflicts", (unsigned long long)s.conflicts,
		"blocks_stored", (unsigned long long)s.blocks_stored,
		"blocks_zeroed", (unsigned long long)s.blocks_zeroed,
		"bytes_written", (unsigned long long)s.bytes_written,
		"loads", (unsigned long long)s.loads,
		"maps", (unsigned long long)s.maps,
		"holes", (unsigned long long)s.holes,
		"verified", (unsigned long long)s.verified,
		"corrupt", (unsigned long long)s.corrupt,
		"invalidated", (unsigned long long)s.invalidated,
		"snapshot", (unsigned long long)s.snapshot,
		"data_size", (unsigned long long)s.data_size,
		"narrays_open", (unsigned long long)s.narrays_open,
		"round_trips", (unsigned long long)s.round_trips);
}

static PyObject *Store_enter(StoreObject *self, PyObject *unused)
{
	(void)unused;
	return Py_NewRef(self);
}

static PyObject *Store_exit(StoreObject *self, PyObject *args)
{
	(void)args;
	return Store_close(self, NULL);
}

static PyObject *Store_get_closed(StoreObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->st == NULL);
}

static PyObject *Store_get_readonly(StoreObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong((self->flags & OC_STORE_RDONLY) != 0);
}

static PyObject *Store_repr(StoreObject *self)
{
	PyObject *str;
	const char *path;
	char shown[512];

	if (!self->path)
		return PyUnicode_FromString("<outcore.Store (uninitialised)>");
	str = PyObject_Str(self->path);
	if (!str)
		return NULL;
	path = PyUnicode_AsUTF8(str);
	if (!path) {
		Py_DECREF(str);
		return NULL;
	}
	PyObject *r = PyUnicode_FromFormat(
		"<outcore.Store '%s'%s%s>", shown_path(path, shown, sizeof shown),
		(self->flags & OC_STORE_RDONLY) ? " readonly" : "",
		self->st ? "" : " (closed)");
	Py_DECREF(str);
	return r;
}

static PyMethodDef Store_methods[] = {
	{"close", (PyCFunction)Store_close, METH_NOARGS,
	 "close()\n\nClose the store, dropping uncommitted changes.  "
	 "BusyError while a mapping of one of its arrays is alive (the store "
	 "stays open).  The FileH objects of its arrays are closed with it.  "
	 "Idempotent."},
	{"create", (PyCFunction)(void (*)(void))Store_create,
	 METH_VARARGS | METH_KEYWORDS,
	 "create(name, shape, dtype, order='C', blksize=0, attrs=None)\n\n"
	 "Create an array in this transaction.  shape: a sequence of ints; "
	 "dtype: the dtype text (not interpreted); blksize 0: the RAM's page "
	 "size; attrs: JSON text or None ('{}')."},
	{"delete", (PyCFunction)Store_delete, METH_VARARGS,
	 "delete(name)\n\nDelete an array in this transaction.  Its FileH "
	 "stays valid and reads as zeros once the delete is committed."},
	{"truncate", (PyCFunction)Store_truncate, METH_VARARGS,
	 "truncate(name, nblk)\n\nAt commit, delete the array's blocks from "
	 "nblk on and drop what this transaction wrote there (no RAM, no "
	 "reads: see oc_store_truncate)."},
	{"meta_get", (PyCFunction)Store_meta_get, METH_VARARGS,
	 "meta_get(name) -> dict\n\nThe metadata as this transaction sees "
	 "it: shape (tuple), dtype, order, blksize, attrs (JSON text)."},
	{"meta_set", (PyCFunction)(void (*)(void))Store_meta_set,
	 METH_VARARGS | METH_KEYWORDS,
	 "meta_set(name, shape, dtype, order='C', blksize=0, attrs=None)\n\n"
	 "Change the metadata in this transaction (blksize cannot change; 0 "
	 "keeps it).  Blocks past a smaller shape are kept."},
	{"names", (PyCFunction)Store_names, METH_NOARGS,
	 "names() -> list\n\nThe arrays of this transaction, in byte order "
	 "of their UTF-8 names."},
	{"array_fileh", (PyCFunction)Store_array_fileh, METH_VARARGS,
	 "array_fileh(name) -> FileH\n\nThe handle of an array (the same "
	 "object while it lives).  The store owns the C handle: it lives "
	 "until the store closes, across commits and aborts; its "
	 "dirty_writeout fails (only commit writes)."},
	{"commit", (PyCFunction)Store_commit, METH_NOARGS,
	 "commit()\n\nCommit every change (data and metadata) atomically and "
	 "durably, with the GIL released.  ConflictError if another process "
	 "committed a change to the same block or metadata since this "
	 "transaction began; on any error nothing is written, the changes "
	 "are kept, and only abort() or another commit() is accepted."},
	{"abort", (PyCFunction)Store_abort, METH_NOARGS,
	 "abort()\n\nDrop every local change and begin a new transaction."},
	{"stats", (PyCFunction)Store_stats, METH_NOARGS,
	 "stats() -> dict\n\nCounters of the store: commits, aborts, "
	 "failed_commits, conflicts, blocks_stored, blocks_zeroed, "
	 "bytes_written, loads, maps, holes, verified, corrupt, invalidated, "
	 "round_trips (requests that waited for a server; 0 for LMDB); "
	 "gauges snapshot, data_size, narrays_open."},
	{"__enter__", (PyCFunction)Store_enter, METH_NOARGS, "Return self."},
	{"__exit__", (PyCFunction)Store_exit, METH_VARARGS,
	 "Close the store."},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef Store_members[] = {
	{"path", T_OBJECT, offsetof(StoreObject, path), READONLY,
	 "The path given to open."},
	{"ram", T_OBJECT, offsetof(StoreObject, ram), READONLY,
	 "The RAM of the arrays' handles."},
	{"flags", T_INT, offsetof(StoreObject, flags), READONLY,
	 "The STORE_* flags given to open."},
	{NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Store_getset[] = {
	{"closed", (getter)Store_get_closed, NULL, "Whether closed.", NULL},
	{"readonly", (getter)Store_get_readonly, NULL,
	 "Whether opened read-only.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject StoreType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "outcore.Store",
	.tp_basicsize = sizeof(StoreObject),
	.tp_dealloc = (destructor)Store_dealloc,
	.tp_repr = (reprfunc)Store_repr,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Store(path, flags=0, ram=None)\n\n"
		  "A transactional store of named arrays (the low level of "
		  "outcore.open): flags are STORE_RDONLY, STORE_CREATE, "
		  "STORE_NOVERIFY, STORE_NOMAP; ram an outcore.RAM whose page "
		  "size is the arrays' block size (None: the default RAM of "
		  "2 MiB pages).  A transaction begins at open and after each "
		  "commit() and abort().  A process opens a store once at a "
		  "time (BusyError); a forked child must open it anew.",
	.tp_weaklistoffset = offsetof(StoreObject, weakreflist),
	.tp_methods = Store_methods,
	.tp_members = Store_members,
	.tp_getset = Store_getset,
	.tp_init = (initproc)Store_init,
	.tp_new = PyType_GenericNew,
};

/* ---- module functions ----------------------------------------------------- */

static PyObject *do_prefault(void *addr, size_t len, int write)
{
	if (len == 0)
		Py_RETURN_NONE;
	int err;
	EXPLICIT_CALL(err = oc_prefault(addr, len,
					write ? OC_PREFAULT_WRITE : 0));
	if (err)
		return raise_code(err, "prefault(%p, %zu%s)", addr, len,
				  write ? ", write=True" : "");
	tls_exc_clear();
	Py_RETURN_NONE;
}

static PyObject *mod_prefault(PyObject *m, PyObject *args, PyObject *kw)
{
	(void)m;
	static char *kwlist[] = {"buffer", "write", NULL};
	PyObject *obj;
	int write = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p:prefault", kwlist,
					 &obj, &write))
		return NULL;
	Py_buffer v;
	if (PyObject_GetBuffer(obj, &v,
			       write ? PyBUF_STRIDES | PyBUF_WRITABLE
				     : PyBUF_STRIDES) < 0)
		return NULL;
	char *lo = v.buf, *hi = (char *)v.buf + v.len;
	if (v.strides && v.ndim > 0) {
		hi = lo = v.buf;
		int empty = 0;
		for (int i = 0; i < v.ndim; i++) {
			if (v.shape[i] == 0)
				empty = 1;
			Py_ssize_t ext = (v.shape[i] - 1) * v.strides[i];
			if (ext < 0)
				lo += ext;
			else
				hi += ext;
		}
		hi += v.itemsize;
		if (empty)
			hi = lo;
	}
	PyObject *r = do_prefault(lo, (size_t)(hi - lo), write);
	PyBuffer_Release(&v);
	return r;
}

static PyObject *mod_prefault_range(PyObject *m, PyObject *args,
				    PyObject *kw)
{
	(void)m;
	static char *kwlist[] = {"addr", "length", "write", NULL};
	uint64_t addr, len;
	int write = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|p:prefault_range",
					 kwlist, u64_conv, &addr, u64_conv,
					 &len, &write))
		return NULL;
	return do_prefault((void *)(uintptr_t)addr, (size_t)len, write);
}

static PyObject *mod_parse_size(PyObject *m, PyObject *arg)
{
	(void)m;
	uint64_t v;
	if (!size_conv(arg, &v))
		return NULL;
	return PyLong_FromUnsignedLongLong(v);
}

static PyObject *mod_strerror(PyObject *m, PyObject *arg)
{
	(void)m;
	long code = PyLong_AsLong(arg);
	if (code == -1 && PyErr_Occurred())
		return NULL;
	if (code < INT_MIN || code > INT_MAX)
		return PyUnicode_FromString(oc_strerror(-EINVAL));
	return PyUnicode_FromString(oc_strerror((int)code));
}

static PyObject *mod_pagefault_install(PyObject *m, PyObject *unused)
{
	(void)m;
	(void)unused;
	int err = oc_pagefault_install();
	if (err)
		return raise_code(err, "pagefault_install()");
	Py_RETURN_NONE;
}

static PyObject *mod_ram_default(PyObject *m, PyObject *args)
{
	(void)m;
	uint64_t ps = OC_PAGESIZE_DEFAULT;
	if (!PyArg_ParseTuple(args, "|O&:ram_default", size_conv, &ps))
		return NULL;
	return ram_wrap_default(ps);
}

static PyObject *mod_ram_budget_default(PyObject *m, PyObject *unused)
{
	(void)m;
	(void)unused;
	return PyLong_FromUnsignedLongLong(oc_ram_budget_default());
}

#define MEM_NOGIL_MIN (256 * 1024)

static PyObject *mod_memset(PyObject *m, PyObject *args)
{
	(void)m;
	Py_buffer v;
	int byte;
	if (!PyArg_ParseTuple(args, "w*i:memset", &v, &byte))
		return NULL;
	if (byte < 0 || byte > 255) {
		PyBuffer_Release(&v);
		PyErr_SetString(InvalidArgument, "byte must be in 0..255");
		return NULL;
	}
	if (v.len >= MEM_NOGIL_MIN)
		NOGIL_CALL(memset(v.buf, byte, (size_t)v.len));
	else
		memset(v.buf, byte, (size_t)v.len);
	PyBuffer_Release(&v);
	Py_RETURN_NONE;
}

static PyObject *mod_bzero(PyObject *m, PyObject *args)
{
	(void)m;
	Py_buffer v;
	if (!PyArg_ParseTuple(args, "w*:bzero", &v))
		return NULL;
	if (v.len >= MEM_NOGIL_MIN)
		NOGIL_CALL(memset(v.buf, 0, (size_t)v.len));
	else
		memset(v.buf, 0, (size_t)v.len);
	PyBuffer_Release(&v);
	Py_RETURN_NONE;
}

static PyObject *mod_memcpy(PyObject *m, PyObject *args)
{
	(void)m;
	Py_buffer d, s;
	if (!PyArg_ParseTuple(args, "w*y*:memcpy", &d, &s))
		return NULL;
	if (d.len < s.len) {
		PyErr_Format(InvalidArgument,
			     "memcpy: destination (%zd bytes) is smaller than "
			     "the source (%zd bytes)", d.len, s.len);
		PyBuffer_Release(&d);
		PyBuffer_Release(&s);
		return NULL;
	}
	if (s.len >= MEM_NOGIL_MIN)
		NOGIL_CALL(memmove(d.buf, s.buf, (size_t)s.len));
	else
		memmove(d.buf, s.buf, (size_t)s.len);
	PyBuffer_Release(&d);
	PyBuffer_Release(&s);
	Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
	{"prefault", (PyCFunction)(void (*)(void))mod_prefault,
	 METH_VARARGS | METH_KEYWORDS,
	 "prefault(buffer, write=False)\n\nLoad (and with write=True dirty) "
	 "every page of managed memory the buffer spans, through the normal "
	 "return path: a loadblk exception is raised here instead of killing "
	 "the process, and the memory can then be handed to system calls.  "
	 "Memory that is not managed by outcore is ignored.  Keep the range "
	 "within the RAM budget."},
	{"prefault_range", (PyCFunction)(void (*)(void))mod_prefault_range,
	 METH_VARARGS | METH_KEYWORDS,
	 "prefault_range(addr, length, write=False)\n\nprefault() of a raw "
	 "address range."},
	{"parse_size", (PyCFunction)mod_parse_size, METH_O,
	 "parse_size(s) -> int\n\nParse a byte size such as '512MiB', '4G', "
	 "'64k' (binary units); an int is returned unchanged."},
	{"strerror", (PyCFunction)mod_strerror, METH_O,
	 "strerror(code) -> str\n\nThe message of a core return code."},
	{"pagefault_install", (PyCFunction)mod_pagefault_install, METH_NOARGS,
	 "pagefault_install()\n\nPut outcore's SIGSEGV handler back on top if "
	 "another replaced it (it chains to that one); done by every handle "
	 "open, and after faulthandler.enable()."},
	{"ram_default", (PyCFunction)mod_ram_default, METH_VARARGS,
	 "ram_default(pagesize=2MiB) -> RAM\n\nThe shared default RAM for a "
	 "page size (what fileh_open(ram=None) uses)."},
	{"ram_budget_default", (PyCFunction)mod_ram_budget_default, METH_NOARGS,
	 "ram_budget_default() -> int\n\nThe default budget: $OUTCORE_RAM, "
	 "else a quarter of physical memory, at least 64 MiB."},
	{"memset", (PyCFunction)mod_memset, METH_VARARGS,
	 "memset(buf, byte)\n\nFill a writable contiguous buffer with byte."},
	{"bzero", (PyCFunction)mod_bzero, METH_VARARGS,
	 "bzero(buf)\n\nZero a writable contiguous buffer."},
	{"memcpy", (PyCFunction)mod_memcpy, METH_VARARGS,
	 "memcpy(dst, src)\n\nCopy the bytes of src to the start of dst "
	 "(overlap allowed); dst must be at least as large."},
	{NULL, NULL, 0, NULL},
};

/* ---- hooks and module init ----------------------------------------------- */

static void *gil_release(void)
{
	if (PyGILState_Check())
		return PyEval_SaveThread();
	return NULL;
}

static void gil_reacquire(void *token)
{
	if (token)
		PyEval_RestoreThread((PyThreadState *)token);
}

static void fatal_hook(const char *message)
{
	(void)message;
	fflush(stdout);
	fflush(stderr);
}

static struct PyModuleDef coremodule = {
	PyModuleDef_HEAD_INIT,
	.m_name = "outcore._core",
	.m_doc = "The CPython binding of the outcore C core (liboutcore): "
		 "RAM, BigFile (MemFile, PlainFile), FileH, VMA, Store, prefault, "
		 "memory helpers and the exception classes.",
	.m_size = -1,
	.m_methods = module_methods,
};

static int add_type(PyObject *m, PyTypeObject *t, const char *name)
{
	if (PyType_Ready(t) < 0)
		return -1;
	Py_INCREF(t);
	if (PyModule_AddObject(m, name, (PyObject *)t) < 0) {
		Py_DECREF(t);
		return -1;
	}
	return 0;
}

PyMODINIT_FUNC PyInit__core(void)
{
	static int hooks_set;
	PyObject *m = PyModule_Create(&coremodule);
	if (!m)
		return NULL;

	str_loadblk = PyUnicode_InternFromString("loadblk");
	str_storeblk = PyUnicode_InternFromString("storeblk");
	str_release = PyUnicode_InternFromString("release");
	if (!str_loadblk || !str_storeblk || !str_release)
		goto fail;
	PyObject *tbmod = PyImport_ImportModule("traceback");
	if (!tbmod)
		goto fail;
	clear_frames = PyObject_GetAttrString(tbmod, "clear_frames");
	Py_DECREF(tbmod);
	if (!clear_frames)
		goto fail;
	default_rams = PyDict_New();
	if (!default_rams)
		goto fail;

	Error = PyErr_NewExceptionWithDoc(
		"outcore.Error",
		"Base class of the errors outcore reports.  .code is the core's "
		"return code (-errno or an OC_E* code).",
		NULL, NULL);
	if (!Error || PyModule_AddObjectRef(m, "Error", Error) < 0)
		goto fail;
	for (size_t i = 0; i < sizeof(excdefs) / sizeof(excdefs[0]); i++) {
		const struct excdef *d = &excdefs[i];
		PyObject *bases = d->base2
			? PyTuple_Pack(2, Error, *d->base2)
			: PyTuple_Pack(1, Error);
		if (!bases)
			goto fail;
		*d->cls = PyErr_NewExceptionWithDoc(d->name, d->doc, bases,
						    NULL);
		Py_DECREF(bases);
		if (!*d->cls ||
		    PyModule_AddObjectRef(m, strchr(d->name, '.') + 1,
					  *d->cls) < 0)
			goto fail;
	}

	if (add_type(m, &RAMType, "RAM") < 0 ||
	    add_type(m, &BigFileType, "BigFile") < 0 ||
	    add_type(m, &MemFileType, "MemFile") < 0 ||
	    add_type(m, &PlainFileType, "PlainFile") < 0 ||
	    add_type(m, &FileHType, "FileH") < 0 ||
	    add_type(m, &VMAType, "VMA") < 0 ||
	    add_type(m, &StoreType, "Store") < 0)
		goto fail;

	if (PyModule_AddIntConstant(m, "WRITEOUT_STORE", OC_WRITEOUT_STORE) ||
	    PyModule_AddIntConstant(m, "WRITEOUT_MARKSTORED",
				    OC_WRITEOUT_MARKSTORED) ||
	    PyModule_AddIntConstant(m, "PAGESIZE_DEFAULT",
				    (long)OC_PAGESIZE_DEFAULT) ||
	    PyModule_AddIntConstant(m, "LOAD_RETRIES", OC_LOAD_RETRIES) ||
	    PyModule_AddIntConstant(m, "STORE_RDONLY", OC_STORE_RDONLY) ||
	    PyModule_AddIntConstant(m, "STORE_CREATE", OC_STORE_CREATE) ||
	    PyModule_AddIntConstant(m, "STORE_NOVERIFY", OC_STORE_NOVERIFY) ||
	    PyModule_AddIntConstant(m, "STORE_NOMAP", OC_STORE_NOMAP) ||
	    PyModule_AddStringConstant(m, "core_version", oc_version()))
		goto fail;
	/* the core's codes, for tests and for matching exc.code */
	static const struct { const char *name; int code; } codes[] = {
		{"OC_ENOHUGE", OC_ENOHUGE}, {"OC_EMAPLIMIT", OC_EMAPLIMIT},
		{"OC_EFORKED", OC_EFORKED}, {"OC_EBLKSIZE", OC_EBLKSIZE},
		{"OC_ELOAD", OC_ELOAD}, {"OC_ESTORE", OC_ESTORE},
		{"OC_ECORRUPT", OC_ECORRUPT}, {"OC_ECONFLICT", OC_ECONFLICT},
		{"OC_EVERSION", OC_EVERSION}, {"OC_ENOTSTORE", OC_ENOTSTORE},
		{"OC_EREADONLY", OC_EREADONLY}, {"OC_ENOTFOUND", OC_ENOTFOUND},
		{"OC_EEXIST", OC_EEXIST}, {"OC_EFAILED", OC_EFAILED},
		{"OC_ESTOREIO", OC_ESTOREIO},
	};
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (PyModule_AddIntConstant(m, codes[i].name, codes[i].code))
			goto fail;

	if (!hooks_set) {
		static const oc_lock_hooks_t hooks = {
			.release = gil_release,
			.reacquire = gil_reacquire,
		};
		int err = oc_set_lock_hooks(&hooks);
		if (err) {
			raise_code(err, "oc_set_lock_hooks");
			goto fail;
		}
		oc_set_fatal_hook(fatal_hook);
		hooks_set = 1;
	}
	return m;
fail:
	Py_DECREF(m);
	return NULL;
}
