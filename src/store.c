/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * store.c: the generic store layer (see store.h): arrays, their files and
 * handles, local metadata changes, commit / abort over an engine
 * (store_engine.h).
 *
 * Arrays this store object has touched are kept in a list of sarray
 * records.  A record is either live (visible in this transaction: committed
 * and unchanged, committed with local changes, created locally, or deleted
 * locally) or gone (deleted and committed, created and aborted, deleted by
 * another process): a gone record is kept only for its handle, which the
 * store owns until close, and reads as zeros.  Names are matched only
 * against live, not locally deleted records; a name no record has is
 * looked up in the engine's snapshot.
 *
 * Each sarray embeds the oc_file_t of its handle: loadblk/mapblk read the
 * engine's snapshot through the array's committed id (0: nothing stored:
 * zeros); storeblk hands blocks to the engine's write transaction and works
 * only inside oc_store_commit.
 */
#include "internal.h"
#include "store_engine.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct sarray {
	oc_file_t file;        /* first: the handle's file */
	oc_store_t *st;
	struct sarray *next;
	char *name;
	uint64_t id;           /* committed id (atomic: read by loads) */
	uint64_t new_id;       /* assigned during a commit */
	oc_array_meta_t meta;  /* as this transaction sees it */
	bool created, deleted, meta_dirty, gone, meta_stale;
	uint64_t trunc;        /* oc_store_truncate: blocks kept (NO_TRUNC) */
	oc_fileh_t *fh;
};

#define NO_TRUNC UINT64_MAX

struct oc_store {
	const oc_store_engine_ops_t *ops;
	void *eng;
	oc_ram_t *ram;
	int flags;
	pid_t pid;
	dev_t dev;
	ino_t ino;
	char *url;             /* a server store: its connection string */
	struct sarray *arrays;
	struct sarray *committing; /* whose writeout runs now */
	bool failed;
	uint64_t n_commits, n_aborts, n_failed, n_conflicts, n_invalidated;
	struct oc_store *next_open;
};

/* The stores open in this process, to refuse a second open. */
static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static struct oc_store *open_stores;

void oc_array_meta_clear(oc_array_meta_t *m)
{
	if (!m)
		return;
	free(m->dtype);
	free(m->attrs);
	m->dtype = m->attrs = NULL;
}

static int meta_copy(oc_array_meta_t *dst, const oc_array_meta_t *src)
{
	oc_array_meta_t m = *src;

	m.dtype = strdup(src->dtype);
	m.attrs = strdup(src->attrs ? src->attrs : "{}");
	if (!m.dtype || !m.attrs) {
		oc_array_meta_clear(&m);
		return -ENOMEM;
	}
	*dst = m;
	return 0;
}

static int check_name(const char *name)
{
	size_t n;

	if (!name)
		return -EINVAL;
	n = strlen(name);
	if (n == 0 || n > OC_STORE_NAME_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return -EINVAL;
	return 0;
}

static int check_meta(const oc_array_meta_t *m)
{
	uint64_t count = 1;
	size_t n;

	if (!m || m->ndim > OC_STORE_MAXDIM || !m->dtype)
		return -EINVAL;
	n = strnlen(m->dtype, OC_STORE_DTYPE_MAX + 1);
	if (n == 0 || n > OC_STORE_DTYPE_MAX)
		return -EINVAL;
	if (m->attrs && strnlen(m->attrs, OC_STORE_ATTRS_MAX + 1) > OC_STORE_ATTRS_MAX)
		return -EINVAL;
	if (m->order != 'C' && m->order != 'F')
		return -EINVAL;
	if (m->blksize < 4096 || m->blksize > OC_STORE_BLKSIZE_MAX ||
	    (m->blksize & (m->blksize - 1)))
		return -EINVAL;
	/* The element count, as the byte count, must fit an int64 (the
	 * itemsize is the caller's: dtype is its text). */
	for (unsigned i = 0; i < m->ndim; i++)
		if (__builtin_mul_overflow(count, m->shape[i], &count) ||
		    count > INT64_MAX)
			return -EINVAL;
	return 0;
}

/* A path naming a PostgreSQL server rather than a directory. */
static bool is_pg_url(const char *path)
{
	return !strncmp(path, "postgresql://", 13) ||
	       !strncmp(path, "postgres://", 11);
}

static bool forked(const oc_store_t *st)
{
	return st->pid != getpid();
}

/* ---- the arrays' file ---------------------------------------------------- */

static uint64_t sa_id(struct sarray *sa)
{
	return __atomic_load_n(&sa->id, __ATOMIC_ACQUIRE);
}

/* What the engine said (its error detail: a data file that ends before
 * the block, say), or a checksum mismatch. */
static void corrupt_msg(struct sarray *sa, uint64_t blk)
{
	char why[256];

	snprintf(why, sizeof why, "%s",
		 oc_error_detail()[0] ? oc_error_detail() : "checksum mismatch");
	_oc_msg("outcore: store: array '%s' block %llu: %s: the stored data "
		"is corrupt\n", sa->name, (unsigned long long)blk, why);
	oc_set_error_detail("array '%s' block %llu: %s", sa->name,
			    (unsigned long long)blk, why);
}

/* Put the array and block in front of the engine's error detail (which
 * names the server, say), so that one line says what failed. */
static void name_in_detail(struct sarray *sa, uint64_t blk)
{
	char was[256];

	snprintf(was, sizeof was, "%s", oc_error_detail());
	if (was[0])
		oc_set_error_detail("array '%s' block %llu: %s", sa->name,
				    (unsigned long long)blk, was);
	else
		oc_set_error_detail("array '%s' block %llu", sa->name,
				    (unsigned long long)blk);
}

/* After a file op of sa's block blk failed with err (< 0; the positive
 * answers OC_NOMAP and OC_ZEROBLK are not failures): say so. */
static void report_err(struct sarray *sa, uint64_t blk, int err)
{
	if (err == OC_ECORRUPT)
		corrupt_msg(sa, blk);
	else if (err < 0)
		name_in_detail(sa, blk);
}

static int sa_loadblk(oc_file_t *f, uint64_t blk, void *buf)
{
	struct sarray *sa = (struct sarray *)f;
	oc_store_t *st = sa->st;
	uint64_t id = sa_id(sa);
	int err;

	if (!id) {
		memset(buf, 0, f->blksize);
		return 0;
	}
	oc_set_error_detail(NULL); /* what the engine says, or nothing */
	err = st->ops->blk_load(st->eng, id, blk, f->blksize,
				!(st->flags & OC_STORE_NOVERIFY), buf);
	report_err(sa, blk, err);
	return err;
}

static int sa_mapblk(oc_file_t *f, uint64_t blk, int *fd, uint64_t *off)
{
	struct sarray *sa = (struct sarray *)f;
	oc_store_t *st = sa->st;
	uint64_t id = sa_id(sa);
	int err;

	if (!id)
		return OC_ZEROBLK;
	if (st->flags & OC_STORE_NOMAP)
		return OC_NOMAP;
	oc_set_error_detail(NULL);
	err = st->ops->blk_map(st->eng, id, blk, f->blksize,
			       !(st->flags & OC_STORE_NOVERIFY), fd, off);
	report_err(sa, blk, err);
	return err;
}

static int sa_mapblk_patched(oc_file_t *f, uint64_t blk, int *fd,
			     uint64_t *off, void *buf, uint32_t *changed,
			     size_t granule)
{
	struct sarray *sa = (struct sarray *)f;
	oc_store_t *st = sa->st;
	uint64_t id = sa_id(sa);
	int err;

	if (!id || (st->flags & OC_STORE_NOMAP) || !st->ops->blk_map_patched)
		return OC_NOMAP;
	oc_set_error_detail(NULL);
	err = st->ops->blk_map_patched(st->eng, id, blk, f->blksize,
				       !(st->flags & OC_STORE_NOVERIFY),
				       granule, fd, off, buf, changed);
	report_err(sa, blk, err);
	return err;
}

static int sa_storeblk(oc_file_t *f, uint64_t blk, const void *buf)
{
	struct sarray *sa = (struct sarray *)f;
	oc_store_t *st = sa->st;

	if (st->committing != sa)
		return -EPERM; /* only oc_store_commit writes */
	if (blk >= sa->trunc)
		return 0; /* cut off: deleted by txn_truncate */
	return st->ops->txn_block(st->eng, sa->id ? sa->id : sa->new_id, blk,
				  f->blksize, buf);
}

static int sa_storeblk_part(oc_file_t *f, uint64_t blk, const void *buf,
			    uint32_t changed, size_t granule)
{
	struct sarray *sa = (struct sarray *)f;
	oc_store_t *st = sa->st;

	if (!st->ops->txn_block_part || blk >= sa->trunc)
		return sa_storeblk(f, blk, buf);
	if (st->committing != sa)
		return -EPERM; /* only oc_store_commit writes */
	return st->ops->txn_block_part(st->eng, sa->id ? sa->id : sa->new_id,
				       blk, f->blksize, buf, changed, granule);
}

static void sa_release(oc_file_t *f)
{
	struct sarray *sa = (struct sarray *)f;

	oc_array_meta_clear(&sa->meta);
	free(sa->name);
	free(sa);
}

static const oc_file_ops_t sa_ops = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = sa_loadblk,
	.storeblk = sa_storeblk,
	.release = sa_release,
	.mapblk = sa_mapblk,
	.storeblk_part = sa_storeblk_part,
	.mapblk_patched = sa_mapblk_patched,
};

/* A new record (one file reference: the store's). */
static int sa_new(oc_store_t *st, const char *name, const oc_array_meta_t *meta,
		  uint64_t id, struct sarray **out)
{
	struct sarray *sa = calloc(1, sizeof *sa);
	int err;

	if (!sa)
		return -ENOMEM;
	sa->name = strdup(name);
	if (!sa->name) {
		free(sa);
		return -ENOMEM;
	}
	err = meta_copy(&sa->meta, meta);
	if (!err)
		err = oc_file_init(&sa->file, &sa_ops, (size_t)meta->blksize, name);
	if (err) {
		oc_array_meta_clear(&sa->meta);
		free(sa->name);
		free(sa);
		return err;
	}
	sa->st = st;
	sa->id = id;
	sa->trunc = NO_TRUNC;
	sa->next = st->arrays;
	st->arrays = sa;
	*out = sa;
	return 0;
}

/* Drop every cached page of a handle from block k on (the array is gone,
 * or was cut short), dirty ones too: a batch of block numbers at a time,
 * taken under the lock and invalidated without it. */
static void invalidate_from(struct sarray *sa, uint64_t k)
{
	uint64_t blks[256], n;

	if (!sa->fh)
		return;
	do {
		_oc_lock();
		for (n = 0; n < 256 && oc_pagemap_next(&sa->fh->pages, &k); k++)
			blks[n++] = k;
		_oc_unlock();
		for (uint64_t i = 0; i < n; i++)
			(void)oc_fileh_invalidate(sa->fh, blks[i]);
	} while (n == 256);
}

static void invalidate_all(struct sarray *sa)
{
	invalidate_from(sa, 0);
}

/* The live record of name: 0 and *out; OC_ENOTFOUND (also when deleted in
 * this transaction); or an engine error. */
static int lookup(oc_store_t *st, const char *name, struct sarray **out)
{
	struct sarray *sa, *deleted = NULL;
	oc_array_meta_t meta;
	uint64_t id;
	int err;

	for (sa = st->arrays; sa; sa = sa->next) {
		if (sa->gone || strcmp(sa->name, name))
			continue;
		if (!sa->deleted) {
			*out = sa;
			return 0;
		}
		deleted = sa;
	}
	if (deleted)
		return OC_ENOTFOUND;
	err = st->ops->array_get(st->eng, name, &id, &meta);
	if (err)
		return err;
	err = sa_new(st, name, &meta, id, out);
	oc_array_meta_clear(&meta);
	return err;
}

static int usable(oc_store_t *st)
{
	if (!st)
		return -EINVAL;
	if (forked(st))
		return OC_EFORKED;
	if (st->failed)
		return OC_EFAILED;
	return 0;
}

static int writable(oc_store_t *st)
{
	int err = usable(st);
	if (!err && (st->flags & OC_STORE_RDONLY))
		err = OC_EREADONLY;
	return err;
}

/* ---- open / close ---------------------------------------------------------- */

int oc_store_open(oc_store_t **out, const char *path, int flags, oc_ram_t *ram)
{
	oc_store_t *st, *o;
	struct stat sb;
	int err;

	if (!out || !path ||
	    (flags & ~(OC_STORE_RDONLY | OC_STORE_CREATE | OC_STORE_NOVERIFY |
		       OC_STORE_NOMAP)) ||
	    ((flags & OC_STORE_RDONLY) && (flags & OC_STORE_CREATE)))
		return -EINVAL;
	if (!ram) {
		err = oc_ram_default(OC_PAGESIZE_DEFAULT, &ram);
		if (err)
			return err;
	}
	st = calloc(1, sizeof *st);
	if (!st)
		return -ENOMEM;
	st->ops = &_oc_store_lmdb;
	st->ram = ram;
	st->flags = flags;
	st->pid = getpid();
	if (is_pg_url(path)) {
		st->ops = &_oc_store_pg;
		if (!(st->url = strdup(path))) {
			free(st);
			return -ENOMEM;
		}
	}

	pthread_mutex_lock(&open_mu);
	if (st->url) {
		for (o = open_stores; o; o = o->next_open)
			if (o->pid == st->pid && o->url &&
			    !strcmp(strstr(o->url, "://"), strstr(st->url, "://"))) {
				pthread_mutex_unlock(&open_mu);
				free(st->url);
				free(st);
				return -EBUSY;
			}
	} else if (!stat(path, &sb)) {
		for (o = open_stores; o; o = o->next_open)
			if (o->pid == st->pid && o->dev == sb.st_dev &&
			    o->ino == sb.st_ino) {
				pthread_mutex_unlock(&open_mu);
				free(st);
				return -EBUSY;
			}
	}
	err = st->ops->open(&st->eng, path, flags);
	if (!err && !st->url && stat(path, &sb))
		err = -errno;
	if (err) {
		if (st->eng)
			st->ops->close(st->eng);
		pthread_mutex_unlock(&open_mu);
		free(st->url);
		free(st);
		return err;
	}
	if (!st->url) {
		st->dev = sb.st_dev;
		st->ino = sb.st_ino;
	}
	_oc_lock(); /* oc_ram_close refuses while the store is open */
	_oc_ram_ref(ram);
	_oc_unlock();
	st->next_open = open_stores;
	open_stores = st;
	pthread_mutex_unlock(&open_mu);
	*out = st;
	return 0;
}

int oc_store_close(oc_store_t *st)
{
	struct sarray *sa;
	oc_store_t **pp;
	bool busy = false;

	if (!st)
		return 0;
	if (forked(st))
		return 0; /* the parent's: forget it */
	/* All or nothing: a handle closed before a busy one is found would
	 * have lost its dirty pages, and its caller's pointer. */
	_oc_lock();
	for (sa = st->arrays; sa && !busy; sa = sa->next)
		busy = sa->fh && _oc_fileh_busy(sa->fh);
	_oc_unlock();
	if (busy)
		return -EBUSY;
	for (sa = st->arrays; sa; sa = sa->next) {
		if (sa->fh) {
			int err = oc_fileh_close(sa->fh);
			if (err)
				return err; /* another thread mapped it meanwhile */
			sa->fh = NULL;
		}
	}
	while ((sa = st->arrays)) {
		st->arrays = sa->next;
		oc_file_put(&sa->file);
	}
	pthread_mutex_lock(&open_mu);
	for (pp = &open_stores; *pp; pp = &(*pp)->next_open)
		if (*pp == st) {
			*pp = st->next_open;
			break;
		}
	pthread_mutex_unlock(&open_mu);
	st->ops->close(st->eng);
	_oc_lock();
	_oc_ram_unref(st->ram);
	_oc_unlock();
	free(st->url);
	free(st);
	return 0;
}

/* ---- arrays ---------------------------------------------------------------- */

int oc_store_create(oc_store_t *st, const char *name, const oc_array_meta_t *meta)
{
	oc_array_meta_t m;
	struct sarray *sa;
	int err = writable(st);

	if (err)
		return err;
	if (!meta)
		return -EINVAL;
	m = *meta;
	if (!m.blksize)
		m.blksize = oc_ram_pagesize(st->ram);
	err = check_name(name);
	if (!err)
		err = check_meta(&m);
	if (err)
		return err;
	err = lookup(st, name, &sa);
	if (err == 0)
		return OC_EEXIST;
	if (err != OC_ENOTFOUND)
		return err;
	err = sa_new(st, name, &m, 0, &sa);
	if (err)
		return err;
	sa->created = true;
	return 0;
}

/* The live record of name, for a change in this transaction: 0 and *out,
 * or what writable() and lookup() say (OC_ENOTFOUND for a bad name). */
static int lookup_for_change(oc_store_t *st, const char *name,
			     struct sarray **out)
{
	int err = writable(st);

	if (!err && check_name(name))
		err = OC_ENOTFOUND;
	return err ? err : lookup(st, name, out);
}

int oc_store_delete(oc_store_t *st, const char *name)
{
	struct sarray *sa;
	int err = lookup_for_change(st, name, &sa);

	if (err)
		return err;
	if (sa->created) {
		/* Never committed: it just goes. */
		sa->created = false;
		sa->gone = true;
		if (sa->fh) {
			oc_fileh_discard(sa->fh);
			invalidate_all(sa);
		}
	} else {
		sa->deleted = true;
	}
	return 0;
}

int oc_store_meta_get(oc_store_t *st, const char *name, oc_array_meta_t *meta)
{
	struct sarray *sa;
	int err = usable(st);

	if (err)
		return err;
	if (!meta)
		return -EINVAL;
	if (check_name(name))
		return OC_ENOTFOUND;
	err = lookup(st, name, &sa);
	if (err)
		return err;
	return meta_copy(meta, &sa->meta);
}

int oc_store_meta_set(oc_store_t *st, const char *name, const oc_array_meta_t *meta)
{
	oc_array_meta_t m, copy;
	struct sarray *sa;
	int err = meta ? lookup_for_change(st, name, &sa) : -EINVAL;

	if (err)
		return err;
	m = *meta;
	if (!m.blksize)
		m.blksize = sa->meta.blksize;
	if (m.blksize != sa->meta.blksize)
		return -EINVAL;
	err = check_meta(&m);
	if (!err)
		err = meta_copy(&copy, &m);
	if (err)
		return err;
	oc_array_meta_clear(&sa->meta);
	sa->meta = copy;
	sa->meta_dirty = true;
	return 0;
}

int oc_store_truncate(oc_store_t *st, const char *name, uint64_t nblk)
{
	struct sarray *sa;
	int err = lookup_for_change(st, name, &sa);

	if (!err)
		sa->trunc = nblk;
	return err;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct namelist {
	char **v;
	size_t n, cap;
};

static int namelist_add(const char *name, void *arg)
{
	struct namelist *l = arg;

	if (l->n == l->cap) {
		char **nv = realloc(l->v, (l->cap = l->cap * 2 + 16) * sizeof *nv);
		if (!nv)
			return -ENOMEM;
		l->v = nv;
	}
	if (!(l->v[l->n] = strdup(name)))
		return -ENOMEM;
	l->n++;
	return 0;
}

int oc_store_names(oc_store_t *st, int (*cb)(const char *name, void *arg),
		   void *arg)
{
	struct namelist l = {0};
	struct sarray *sa;
	size_t i, j;
	int err = usable(st);

	if (err)
		return err;
	if (!cb)
		return -EINVAL;
	err = st->ops->array_list(st->eng, namelist_add, &l);
	for (sa = st->arrays; sa && !err; sa = sa->next)
		if (sa->created && !sa->gone)
			err = namelist_add(sa->name, &l);
	if (!err && l.n)
		qsort(l.v, l.n, sizeof *l.v, name_cmp);
	for (i = 0; i < l.n; i++) {
		bool skip = i > 0 && !strcmp(l.v[i], l.v[i - 1]);
		for (sa = st->arrays; sa && !skip; sa = sa->next)
			if (sa->deleted && !sa->gone && !strcmp(sa->name, l.v[i])) {
				/* deleted here, unless created again */
				skip = true;
				for (struct sarray *s2 = st->arrays; s2; s2 = s2->next)
					if (s2->created && !s2->gone &&
					    !strcmp(s2->name, l.v[i]))
						skip = false;
			}
		if (!err && !skip)
			err = cb(l.v[i], arg);
	}
	for (j = 0; j < l.n; j++)
		free(l.v[j]);
	free(l.v);
	return err;
}

int oc_store_array_fileh(oc_store_t *st, const char *name, oc_fileh_t **out)
{
	struct sarray *sa;
	int err = usable(st);

	if (err)
		return err;
	if (!out)
		return -EINVAL;
	if (check_name(name))
		return OC_ENOTFOUND;
	err = lookup(st, name, &sa);
	if (err)
		return err;
	if (!sa->fh) {
		if (sa->meta.blksize != oc_ram_pagesize(st->ram))
			return OC_EBLKSIZE;
		err = oc_fileh_open(&sa->fh, &sa->file, st->ram);
		if (err)
			return err;
		sa->fh->owned_writeout = true; /* oc_store_commit writes */
	}
	*out = sa->fh;
	return 0;
}

/* ---- transactions ---------------------------------------------------------- */

static struct sarray *by_id(oc_store_t *st, uint64_t id)
{
	for (struct sarray *sa = st->arrays; sa; sa = sa->next)
		if (!sa->gone && sa->id == id)
			return sa;
	return NULL;
}

static void on_changed(void *arg, uint64_t id, uint64_t blk)
{
	oc_store_t *st = arg;
	struct sarray *sa = by_id(st, id);

	if (!sa)
		return;
	if (blk == OC_SE_META) {
		sa->meta_stale = true;
	} else if (sa->fh) {
		oc_fileh_invalidate(sa->fh, blk);
		st->n_invalidated++;
	}
}

/* Let go of the snapshot the last renew_keep replaced. */
static void release_old(oc_store_t *st)
{
	if (st->ops->snapshot_release)
		st->ops->snapshot_release(st->eng);
}

/* Start a new snapshot and bring the records up to date with it; the old
 * one is held until release_old. */
static int renew_keep(oc_store_t *st)
{
	struct sarray *sa;
	int err = st->ops->snapshot_renew(st->eng, on_changed, st);

	if (err)
		return err;
	for (sa = st->arrays; sa; sa = sa->next) {
		oc_array_meta_t meta;
		uint64_t id;
		if (!sa->meta_stale)
			continue;
		err = st->ops->array_get(st->eng, sa->name, &id, &meta);
		if (err && err != OC_ENOTFOUND)
			return err; /* meta_stale stays: the next renew retries */
		sa->meta_stale = false;
		if (err || id != sa->id) {
			/* deleted (perhaps created again) by another process */
			if (!err)
				oc_array_meta_clear(&meta);
			__atomic_store_n(&sa->id, 0, __ATOMIC_RELEASE);
			sa->gone = true;
			invalidate_all(sa);
			continue;
		}
		oc_array_meta_clear(&sa->meta);
		sa->meta = meta;
	}
	return 0;
}

/* renew_keep, letting go of the old snapshot at once. */
static int renew(oc_store_t *st)
{
	int err = renew_keep(st);

	release_old(st);
	return err;
}

static bool has_changes(oc_store_t *st)
{
	for (struct sarray *sa = st->arrays; sa; sa = sa->next) {
		if (sa->gone)
			continue;
		if (sa->created || sa->deleted || sa->meta_dirty ||
		    sa->trunc != NO_TRUNC || (sa->fh && oc_fileh_isdirty(sa->fh)))
			return true;
	}
	return false;
}

int oc_store_commit(oc_store_t *st)
{
	struct sarray *sa;
	int err, rerr, pass;

	if (!st)
		return -EINVAL;
	if (forked(st))
		return OC_EFORKED;
	/* Writes into the handle of an array that is gone (through mappings
	 * kept from before) have nowhere to go. */
	for (sa = st->arrays; sa; sa = sa->next)
		if (sa->gone && sa->fh && oc_fileh_isdirty(sa->fh) > 0)
			invalidate_all(sa);
	if (!has_changes(st)) {
		err = renew(st);
		if (err)
			goto fail;
		st->failed = false;
		return 0;
	}
	if (st->flags & OC_STORE_RDONLY) {
		err = OC_EREADONLY;
		goto fail;
	}
	err = st->ops->txn_begin(st->eng);
	if (err)
		goto fail;
	/* Metadata: deletes first (a name may be deleted and created again),
	 * then changes, then creates. */
	for (pass = 0; pass < 3 && !err; pass++)
		for (sa = st->arrays; sa && !err; sa = sa->next) {
			if (sa->gone)
				continue;
			if (pass == 0 && sa->deleted)
				err = st->ops->txn_array(st->eng, OC_SE_DELETE, sa->id,
							 sa->name, NULL, NULL);
			else if (pass == 1 && sa->meta_dirty && !sa->created &&
				 !sa->deleted)
				err = st->ops->txn_array(st->eng, OC_SE_SET, sa->id,
							 sa->name, &sa->meta, NULL);
			else if (pass == 2 && sa->created)
				err = st->ops->txn_array(st->eng, OC_SE_CREATE, 0,
							 sa->name, &sa->meta,
							 &sa->new_id);
		}
	/* Data: every dirty page of every live array, in block order. */
	for (sa = st->arrays; sa && !err; sa = sa->next) {
		if (sa->gone || sa->deleted || !sa->fh)
			continue;
		st->committing = sa;
		sa->fh->owner_writing = true;
		err = oc_fileh_writeout(sa->fh, OC_WRITEOUT_STORE);
		sa->fh->owner_writing = false;
		st->committing = NULL;
	}
	/* Arrays cut short: what is stored past their end goes (one created
	 * in this transaction has nothing stored). */
	for (sa = st->arrays; sa && !err; sa = sa->next)
		if (!sa->gone && !sa->deleted && !sa->created &&
		    sa->trunc != NO_TRUNC)
			err = st->ops->txn_truncate(st->eng, sa->id, sa->trunc,
						    (size_t)sa->meta.blksize);
	if (err) {
		st->ops->txn_abort(st->eng);
		goto fail;
	}
	err = st->ops->txn_commit(st->eng);
	if (err)
		goto fail;

	/* The data is durable.  The next snapshot comes first: loads from
	 * here on (another thread's, of a block the loop below drops) must
	 * see this commit; from the old snapshot they cached what it
	 * replaced, for good (the renewal passes over our own commit).  The
	 * old one is held until the loop has dropped what still maps it.  A
	 * failure to take the new one is reported, but the commit stands. */
	rerr = renew_keep(st);

	/* Committed: make the records and pages say so. */
	for (sa = st->arrays; sa; sa = sa->next) {
		if (sa->gone)
			continue;
		if (sa->deleted) {
			sa->deleted = false;
			sa->gone = true;
			__atomic_store_n(&sa->id, 0, __ATOMIC_RELEASE);
			if (sa->fh) {
				oc_fileh_discard(sa->fh);
				invalidate_all(sa);
			}
			continue;
		}
		if (sa->created) {
			sa->created = false;
			__atomic_store_n(&sa->id, sa->new_id, __ATOMIC_RELEASE);
		}
		sa->new_id = 0;
		sa->meta_dirty = false;
		if (sa->fh) {
			sa->fh->owner_writing = true;
			oc_fileh_writeout(sa->fh, OC_WRITEOUT_MARKSTORED);
			sa->fh->owner_writing = false;
		}
		if (sa->trunc != NO_TRUNC) {
			/* cached pages there show what is no longer stored */
			invalidate_from(sa, sa->trunc);
			sa->trunc = NO_TRUNC;
		}
	}
	/* The pages that showed the old snapshot's extents (patched ones)
	 * are gone: its space may be reused now. */
	release_old(st);
	st->failed = rerr != 0;
	st->n_commits++;
	return rerr;

fail:
	for (sa = st->arrays; sa; sa = sa->next)
		sa->new_id = 0;
	st->failed = true;
	st->n_failed++;
	if (err == OC_ECONFLICT)
		st->n_conflicts++;
	return err;
}

int oc_store_abort(oc_store_t *st)
{
	struct sarray *sa, **pp;
	bool busy = false;
	int err;

	if (!st)
		return -EINVAL;
	if (forked(st))
		return OC_EFORKED;
	/* All or nothing, as close. */
	_oc_lock();
	for (sa = st->arrays; sa && !busy; sa = sa->next)
		busy = sa->fh && sa->fh->writeout;
	_oc_unlock();
	if (busy)
		return -EBUSY;
	for (sa = st->arrays; sa; sa = sa->next) {
		if (sa->fh) {
			err = oc_fileh_discard(sa->fh);
			if (err)
				return err;
		}
	}
	for (sa = st->arrays; sa; sa = sa->next) {
		sa->trunc = NO_TRUNC;
		if (sa->gone)
			continue;
		if (sa->created) {
			sa->created = false;
			sa->gone = true;
			invalidate_all(sa);
			continue;
		}
		sa->deleted = false;
		if (sa->meta_dirty) {
			sa->meta_dirty = false;
			sa->meta_stale = true; /* reloaded from the snapshot */
		}
	}
	/* Records without a handle are only a cache: drop the gone ones. */
	for (pp = &st->arrays; (sa = *pp);) {
		if (sa->gone && !sa->fh) {
			*pp = sa->next;
			oc_file_put(&sa->file);
		} else {
			pp = &sa->next;
		}
	}
	st->n_aborts++;
	err = renew(st);
	st->failed = err != 0;
	return err;
}

int oc_store_stats(oc_store_t *st, oc_store_stats_t *s)
{
	if (!st || !s)
		return -EINVAL;
	if (forked(st))
		return OC_EFORKED;
	memset(s, 0, sizeof *s);
	st->ops->stats(st->eng, s);
	s->commits = st->n_commits;
	s->aborts = st->n_aborts;
	s->failed_commits = st->n_failed;
	s->conflicts = st->n_conflicts;
	s->invalidated = st->n_invalidated;
	for (struct sarray *sa = st->arrays; sa; sa = sa->next)
		if (sa->fh)
			s->narrays_open++;
	return 0;
}
