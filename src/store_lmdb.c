/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * store_lmdb.c: the LMDB storage engine (see store_engine.h).
 *
 * A store is a directory:
 *   index.mdb   LMDB (MDB_NOSUBDIR), named databases:
 *     meta     "format" -> magic, format version, next array id, data end
 *     arrays   name -> array id, meta version (txnid), metadata
 *     ids      array id (BE) -> name
 *     blocks   (array id, blk) (BE) -> extent offset, version (txnid),
 *              number of delta pages, checksums (see "Checksums")
 *     meta     "arena" -> the arena delta runs are written to, its fill
 *              position, flags (none yet) (see "Page deltas")
 *     deltas   (array id, blk, first page) (BE) -> where in the data file
 *              a run of 4 KiB pages that replace those of the extent is
 *              (version 3: the pages themselves)
 *     arenas   arena offset (BE) -> bytes of live delta runs in it
 *     free     extent offset (BE) -> freed-at txnid, length
 *     log      (txnid, array id, blk) (BE) -> nothing: what each commit
 *              changed (blk UINT64_MAX: the array's metadata); read to
 *              invalidate other processes' blocks and to detect conflicts
 *   data        block extents, each at a multiple of its block size, and
 *               arenas of delta runs (ARENA bytes, at multiples of it).
 *
 * Commit point.  Block data goes to extents nobody can see (free extents
 * whose freed-at txnid no live reader predates, or past the data end), is
 * fdatasync'ed, and becomes visible only when the LMDB write transaction
 * pointing to it commits: LMDB's meta-page switch is the one commit point.
 * A crash at any instant leaves the last committed LMDB state, whose
 * extents were never overwritten.  (Extents past the data end are written
 * with O_DIRECT, the others through the page cache: see write_extent.)
 *
 * Snapshot.  One LMDB read-only transaction (MDB_NOTLS) per outcore
 * transaction; the next one is begun before the old one is released, so
 * that the extents the old one sees stay untouched while other processes'
 * blocks are invalidated (an extent is reused only once every reader in
 * the reader table is at or past the txnid that freed it).
 *
 * Page deltas.  A block that has a stored version is compared with it page
 * by page (4 KiB) when it is stored again.  If the pages that changed,
 * together with the block's pending delta pages, are at most a quarter of
 * the block, only the runs of delta pages that contain changed pages are
 * written, and the block record keeps its extent, with the checksums of the
 * new content and the new version; else the block is "folded": written
 * whole to a fresh extent, its deltas dropped.  Delta runs of a block never
 * overlap.  A run's pages go to the data file, into an arena (see "delta
 * arenas": runs are packed one after the other and written in large
 * writes, with O_DIRECT into new space), under the same rules as extents
 * (space nobody can see, synced before the commit point); its record in
 * the deltas database says where.  (Version 3 kept the pages in the record:
 * LMDB then copied every delta twice, into fresh memory and into fresh
 * pages of the index file, which cost more than all the rest of a commit
 * of 1,000 x 64 KiB on these machines.)  An extent with deltas is never
 * written.  A block with deltas is not mapped (blk_map says OC_NOMAP):
 * blk_load reads the extent, lays the deltas of the same snapshot over it
 * and verifies the checksums of the assembled block.
 *
 * Checksums.  A block is cut in granules (one per 4 KiB page, at most 32:
 * 64 KiB of a 2 MiB block, the core's granule of partial copy-on-write),
 * and its record keeps the XXH3 hash of each, verified when the block is
 * first mapped or loaded in a process.  A commit of a block that the core
 * kept as base + written granules (txn_block_part) reads, compares and
 * hashes only those granules: 1,000 changes of 64 KiB cost 64 MiB of
 * hashing, not 2 GiB.  Records of format 1 and 2 (one XXH64 of the whole
 * block) stay readable.
 *
 * Conflicts.  At txn_begin (which holds LMDB's writer lock) the change log
 * since our snapshot is read into a sorted set; a block or metadata this
 * transaction writes that is in the set is a conflict.  Log entries older
 * than the oldest reader are pruned there too.
 *
 * Not done: growing the LMDB map on MDB_MAP_FULL (it would need every
 * snapshot of the process released; the map is 1 TiB of address space
 * instead, see MAPSIZE), coalescing free extents of different sizes, and a
 * reader-table entry for read-only opens that fall back to MDB_NOLOCK (a
 * store the user cannot write).
 */
#include "internal.h"
#include "store_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <string.h>
#include <sys/mman.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* 2: block records carry a delta count, and the deltas database.  Stores
 * of version 1 are read (their records have no deltas) and become version
 * 2 at their first commit.
 * 3: block records carry one checksum per granule (see "Checksums"), so
 * that a commit that changes a few granules of a block hashes only those.
 * Records of versions 1 and 2 (one XXH64 of the whole block) are read and
 * verified as they are, and replaced by version 3 records when their block
 * is written.
 * 4: delta runs are stored in the data file, their records in the deltas
 * database give where (see "Page deltas"), and the arenas database and
 * the meta record "arena" keep the space they take.  Runs of version 3
 * (the bytes in the record) stay readable next to them and go when their
 * block is written again. */
#define FORMAT_VERSION 4
#define MAXGRAN 32 /* granules per block, at most (one per 4 KiB at least) */
#define PG 4096 /* delta page size */
#define MARK_OLD 1 /* a page with a stored delta */
#define MARK_NEW 2 /* a page that changes now */
#define MAGIC "outcore-store\0\0" /* 16 bytes with the NULs */
/* The index map: address space only (the file grows as it is written),
 * 1 TiB, which the page deltas of many TiB of data do not fill; where
 * that much address space cannot be had (ulimit -v, valgrind), a quarter,
 * and so on down to MAPSIZE_MIN.  A full map fails the commit with
 * -ENOSPC (nothing written). */
#define MAPSIZE ((size_t)1 << 40)
#define MAPSIZE_MIN ((size_t)256 << 20)
#define PREALLOC ((uint64_t)64 << 20) /* data file space allocated at once */

/* Delta runs are written to arenas: extents of ARENA bytes of the data
 * file, filled from the start in the order runs are written (see "Page
 * deltas"). */
#define ARENA ((uint64_t)2 << 20)
#define INLINE UINT64_MAX /* struct run's off of a run of version 3 */

struct run {
	uint64_t start, n; /* pages */
	uint64_t off;      /* where in the data file, or INLINE */
};

struct runlist {
	struct run *v;
	size_t n, cap;
};

static int runlist_add(struct runlist *l, uint64_t start, uint64_t n,
		       uint64_t off)
{
	if (l->n == l->cap) {
		size_t cap = l->cap * 2 + 16;
		struct run *v = realloc(l->v, cap * sizeof *v);
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n].start = start;
	l->v[l->n].n = n;
	l->v[l->n++].off = off;
	return 0;
}

struct lmdb_eng {
	MDB_env *env;
	MDB_dbi db_meta, db_arrays, db_ids, db_blocks, db_free, db_log, db_deltas,
		db_arenas;
	bool has_deltas;        /* db_deltas is open (a read-only open of a
				 * version 1 store has none) */
	bool has_arenas;        /* db_arenas is open (not in a read-only open
				 * of a store of version 3 or less) */
	int datafd;
	int directfd;   /* the data file opened O_DIRECT (-1: none) */
	int runfd;      /* the data file for reading delta runs: no read
			 * ahead (see delta_read); datafd if it cannot be had */
	int flags;

	pthread_mutex_t mu;     /* guards snap, snap_id and verified */
	MDB_txn *snap;          /* the snapshot */
	MDB_txn *spare;         /* a reset read txn for the next snapshot */
	uint64_t snap_id;
	oc_pagemap_t verified;  /* extent offset / 4096 -> version verified */

	/* write transaction */
	MDB_txn *w;
	uint64_t w_id, min_reader, data_end, next_id, alloc_pos;
	bool alloc_done, wrote;
	struct oc_se_blkref *changed; /* sorted: changed by others since snap */
	size_t nchanged;
	uint64_t last_commit;   /* our last committed txnid */
	uint64_t data_size;     /* data end of the last state we know */
	MDB_txn *held;          /* the snapshot the last renewal replaced,
				 * until snapshot_release */
	uint64_t prealloc_end;  /* the data file is allocated up to here */
	unsigned char *old;     /* txn_block: the stored version of a block */
	unsigned char *marks;   /* txn_block: MARK_* of each page */
	size_t old_size;        /* bytes of old (marks: old_size / PG) */
	uint64_t zero_gh;       /* checksum of a granule of zero_gs zeros */
	size_t zero_gs;
	struct runlist runs;    /* txn_block: the stored delta runs */
	/* the arena delta runs go to (meta "arena"), read at first use */
	bool ar_loaded, ar_dirty;
	bool ar_fresh;          /* taken in this transaction from past the data
				 * end: written with O_DIRECT (write_extent) */
	uint64_t ar_off, ar_pos; /* ar_off INLINE: none */
	/* delta runs written since the last flush: [stage_off, +stage_len) */
	unsigned char *stage;   /* ARENA bytes, O_DIRECT-aligned */
	uint64_t stage_off;
	size_t stage_len;

	/* verification ahead of a sequential reader (see "Checksums"); all
	 * under mu */
	pthread_cond_t vcond;   /* work queued, or a block's hash done */
	pthread_t vthr;
	pid_t vthr_pid;         /* the process that runs vthr (0: none) */
	bool vstop;
	uint64_t vq_id, vq_next, vq_end; /* queued: [vq_next, vq_end) of vq_id */
	bool vq_fetch;          /* the queued blocks are only to be read into
				 * the page cache, not verified */
	size_t vq_blksize;
	uint64_t vbusy_off;     /* extent the thread is hashing (UINT64_MAX) */
	uint64_t file_size;     /* the data file's size when last seen (atomic;
				 * see in_file) */
	uint64_t vseq;          /* bumped at each broadcast of vcond (vwait) */
	struct vjob *vjob;      /* its units, while it hashes them (or NULL) */
	uint64_t last_id, last_blk; /* the last block mapped */

	/* counters (atomic) */
	uint64_t n_stored, n_zeroed, n_bytes, n_loads, n_maps, n_holes,
		n_verified, n_corrupt, n_dpages, n_folded;
};

/* O_DIRECT's alignment of buffers, offsets and lengths (write_extent). */
#define DIRECT_ALIGN 4096

#define CNT(e, f) __atomic_add_fetch(&(e)->f, 1, __ATOMIC_RELAXED)

/* ---- encoding ------------------------------------------------------------ */

static int mdb_err(int rc)
{
	if (rc == 0)
		return 0;
	if (rc > 0)
		return -rc; /* an errno value */
	if (rc == MDB_MAP_FULL)
		return -ENOSPC;
	if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
		return OC_ENOTSTORE;
	return OC_ESTOREIO;
}

/* The meta record. */
static int metarec_get(struct lmdb_eng *e, MDB_txn *txn, uint32_t *version,
		       uint64_t *next_id, uint64_t *data_end)
{
	MDB_val k = {6, "format"}, v;
	const unsigned char *p;
	int rc = mdb_get(txn, e->db_meta, &k, &v);

	if (rc == MDB_NOTFOUND)
		return OC_ENOTSTORE;
	if (rc)
		return mdb_err(rc);
	p = v.mv_data;
	if (v.mv_size < 36 || memcmp(p, MAGIC, 16))
		return OC_ENOTSTORE;
	*version = _oc_get_le32(p + 16);
	*next_id = _oc_get_le64(p + 20);
	*data_end = _oc_get_le64(p + 28);
	return 0;
}

static int metarec_put(struct lmdb_eng *e, MDB_txn *txn, uint64_t next_id,
		       uint64_t data_end)
{
	unsigned char b[36];
	MDB_val k = {6, "format"}, v = {sizeof b, b};

	memcpy(b, MAGIC, 16);
	_oc_put_le32(b + 16, FORMAT_VERSION);
	_oc_put_le64(b + 20, next_id);
	_oc_put_le64(b + 28, data_end);
	return mdb_err(mdb_put(txn, e->db_meta, &k, &v, 0));
}

/* ---- open / close ---------------------------------------------------------- */

static int open_dbs(struct lmdb_eng *e, MDB_txn *txn, unsigned flags)
{
	struct {
		const char *name;
		MDB_dbi *dbi;
	} dbs[] = {
		{"meta", &e->db_meta},	   {"arrays", &e->db_arrays},
		{"ids", &e->db_ids},	   {"blocks", &e->db_blocks},
		{"free", &e->db_free},	   {"log", &e->db_log},
	};
	for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
		int rc = mdb_dbi_open(txn, dbs[i].name, flags, dbs[i].dbi);
		if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE)
			return OC_ENOTSTORE;
		if (rc)
			return mdb_err(rc);
	}
	return 0;
}

static void eng_close(void *p)
{
	struct lmdb_eng *e = p;

	if (!e)
		return;
	if (e->vthr_pid && e->vthr_pid == getpid()) {
		pthread_mutex_lock(&e->mu);
		e->vstop = true;
		pthread_cond_broadcast(&e->vcond);
		pthread_mutex_unlock(&e->mu);
		pthread_join(e->vthr, NULL);
	}
	if (e->w)
		mdb_txn_abort(e->w);
	if (e->snap)
		mdb_txn_abort(e->snap);
	if (e->spare)
		mdb_txn_abort(e->spare);
	if (e->held)
		mdb_txn_abort(e->held);
	if (e->env)
		mdb_env_close(e->env);
	if (e->datafd >= 0)
		close(e->datafd);
	if (e->directfd >= 0)
		close(e->directfd);
	if (e->runfd >= 0 && e->runfd != e->datafd)
		close(e->runfd);
	oc_pagemap_clear(&e->verified);
	pthread_mutex_destroy(&e->mu);
	pthread_cond_destroy(&e->vcond);
	free(e->changed);
	free(e->old);
	free(e->marks);
	free(e->runs.v);
	free(e->stage);
	free(e);
}

/* Open the environment with the largest map the address space allows
 * (MAPSIZE; less under a limit such as ulimit -v or valgrind).  Returns an
 * LMDB code. */
static int env_open(struct lmdb_eng *e, const char *index, unsigned flags)
{
	size_t mapsize = MAPSIZE;
	void *probe;
	int rc;

	/* Find how much address space there is first: a failed
	 * mdb_env_open leaks what it allocated. */
	while (mapsize > MAPSIZE_MIN) {
		if (_oc_os_reserve(mapsize, 0, &probe) == 0) {
			_oc_os_release(probe, mapsize);
			break;
		}
		mapsize /= 4;
	}
	for (;;) {
		rc = mdb_env_create(&e->env);
		if (rc)
			return rc;
		mdb_env_set_maxdbs(e->env, 10);
		mdb_env_set_mapsize(e->env, mapsize);
		rc = mdb_env_open(e->env, index, flags, 0644);
		if (!rc)
			return 0;
		mdb_env_close(e->env);
		e->env = NULL;
		if ((rc != EINVAL && rc != ENOMEM) || mapsize <= MAPSIZE_MIN)
			return rc;
		mapsize /= 4;
	}
}

/* Whether directory path may become a store: empty but for LMDB's lock
 * file (left by an open that failed) or an empty data file.  A file of
 * the user's named data must not become the store's data file.  0,
 * OC_ENOTSTORE (other files: a store is not made among them), -errno. */
static int only_ours(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	struct stat sb;
	int err = 0;

	if (!d)
		return -errno;
	while (!err && (de = readdir(d))) {
		if (!strcmp(de->d_name, "data") &&
		    !fstatat(dirfd(d), "data", &sb, AT_SYMLINK_NOFOLLOW) &&
		    S_ISREG(sb.st_mode) && sb.st_size == 0)
			continue;
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
		    strcmp(de->d_name, "index.mdb-lock")) {
			oc_set_error_detail("%s holds other files and no store: "
					    "a store is made only in an empty "
					    "or new directory", path);
			err = OC_ENOTSTORE;
		}
	}
	closedir(d);
	return err;
}

/* Open the data file (e->data_size read from the index): made here only
 * for a store that has no data yet (new, or left without it by a crash
 * during its creation).  A missing data file the index points into is
 * corruption, said as such: made anew, it would have read as zeros. */
static int open_data(struct lmdb_eng *e, const char *data, bool rdonly)
{
	int create = !rdonly && e->data_size == 0 ? O_CREAT : 0;

	e->datafd = open(data, O_CLOEXEC | (rdonly ? O_RDONLY : O_RDWR) | create,
			 0644);
	if (e->datafd < 0) {
		int err = -errno;
		if (err != -ENOENT)
			return err;
		oc_set_error_detail("the data file %s is missing", data);
		return OC_ECORRUPT;
	}
	if (!rdonly) /* not every filesystem can: then -1 */
		e->directfd = open(data, O_CLOEXEC | O_RDWR | O_DIRECT);
	e->runfd = open(data, O_CLOEXEC | O_RDONLY);
	if (e->runfd < 0 ||
	    posix_fadvise(e->runfd, 0, 0, POSIX_FADV_RANDOM) != 0) {
		if (e->runfd >= 0)
			close(e->runfd);
		e->runfd = e->datafd;
	}
	return 0;
}

static int eng_open(void **out, const char *path, int flags)
{
	struct lmdb_eng *e;
	struct stat sb;
	char *index = NULL, *data = NULL;
	bool rdonly = flags & OC_STORE_RDONLY, fresh = false;
	unsigned eflags = MDB_NOSUBDIR | MDB_NOTLS | (rdonly ? MDB_RDONLY : 0);
	MDB_txn *txn = NULL;
	uint32_t version;
	int rc, err;

	e = calloc(1, sizeof *e);
	if (!e)
		return -ENOMEM;
	e->datafd = -1;
	e->directfd = -1;
	e->runfd = -1;
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->vcond, NULL);
	e->vbusy_off = UINT64_MAX;
	e->last_id = UINT64_MAX;
	oc_pagemap_init(&e->verified);
	e->flags = flags;

	if (stat(path, &sb)) {
		err = -errno;
		if (err != -ENOENT || !(flags & OC_STORE_CREATE))
			goto fail;
		if (mkdir(path, 0755) && errno != EEXIST) {
			err = -errno;
			goto fail;
		}
	} else if (!S_ISDIR(sb.st_mode)) {
		err = OC_ENOTSTORE;
		goto fail;
	}
	if (asprintf(&index, "%s/index.mdb", path) < 0 ||
	    asprintf(&data, "%s/data", path) < 0) {
		index = data = NULL;
		err = -ENOMEM;
		goto fail;
	}
	if (stat(index, &sb)) {
		if (errno != ENOENT || !(flags & OC_STORE_CREATE)) {
			err = errno == ENOENT ? OC_ENOTSTORE : -errno;
			goto fail;
		}
		err = only_ours(path);
		if (err)
			goto fail;
		fresh = true;
	}
	rc = env_open(e, index, eflags);
	if (rc == EACCES && rdonly) /* a store we may not write: no lock file */
		rc = env_open(e, index, eflags | MDB_NOLOCK);
	if (rc) {
		err = mdb_err(rc);
		goto fail;
	}
	rc = mdb_txn_begin(e->env, NULL, rdonly ? MDB_RDONLY : 0, &txn);
	if (rc) {
		err = mdb_err(rc);
		goto fail;
	}
	if (!rdonly) {
		/* A fresh index, or one left empty by a crash during creation,
		 * is initialised; any other database must hold our record. */
		MDB_dbi main;
		MDB_stat ms;
		rc = mdb_dbi_open(txn, NULL, 0, &main);
		if (!rc)
			rc = mdb_stat(txn, main, &ms);
		if (rc) {
			err = mdb_err(rc);
			goto fail;
		}
		if (ms.ms_entries == 0 && (fresh || (flags & OC_STORE_CREATE))) {
			err = open_dbs(e, txn, MDB_CREATE);
			if (!err)
				err = metarec_put(e, txn, 1, 0);
			if (err)
				goto fail;
		}
	}
	err = open_dbs(e, txn, 0);
	if (err)
		goto fail;
	err = metarec_get(e, txn, &version, &e->next_id, &e->data_size);
	if (err)
		goto fail;
	if (version > FORMAT_VERSION) {
		err = OC_EVERSION;
		goto fail;
	}
	err = open_data(e, data, rdonly);
	if (err)
		goto fail;
	/* Created here for stores of version 1. */
	rc = mdb_dbi_open(txn, "deltas", rdonly ? 0 : MDB_CREATE, &e->db_deltas);
	if (rc && rc != MDB_NOTFOUND) {
		err = mdb_err(rc);
		goto fail;
	}
	e->has_deltas = rc == 0;
	/* Created here for stores of version 3 and less. */
	rc = mdb_dbi_open(txn, "arenas", rdonly ? 0 : MDB_CREATE, &e->db_arenas);
	if (rc && rc != MDB_NOTFOUND) {
		err = mdb_err(rc);
		goto fail;
	}
	e->has_arenas = rc == 0;
	rc = mdb_txn_commit(txn); /* keeps the dbi handles */
	txn = NULL;
	if (rc) {
		err = mdb_err(rc);
		goto fail;
	}
	rc = mdb_txn_begin(e->env, NULL, MDB_RDONLY, &e->snap);
	if (rc) {
		err = mdb_err(rc);
		goto fail;
	}
	e->snap_id = mdb_txn_id(e->snap);
	free(index);
	free(data);
	*out = e;
	return 0;
fail:
	if (txn)
		mdb_txn_abort(txn);
	free(index);
	free(data);
	eng_close(e);
	return err;
}

/* ---- snapshot reads ------------------------------------------------------ */

static int eng_array_get(void *p, const char *name, uint64_t *id,
			 oc_array_meta_t *meta)
{
	struct lmdb_eng *e = p;
	MDB_val k = {strlen(name), (void *)name}, v;
	int rc, err;

	pthread_mutex_lock(&e->mu);
	rc = mdb_get(e->snap, e->db_arrays, &k, &v);
	if (rc == MDB_NOTFOUND)
		err = OC_ENOTFOUND;
	else if (rc)
		err = mdb_err(rc);
	else
		err = _oc_se_meta_decode(v.mv_data, v.mv_size, id, NULL, meta);
	pthread_mutex_unlock(&e->mu);
	return err;
}

static int eng_array_name(void *p, uint64_t id, char **name)
{
	struct lmdb_eng *e = p;
	unsigned char kb[8];
	MDB_val k = {8, kb}, v;
	int rc, err = 0;

	_oc_put_be64(kb, id);
	pthread_mutex_lock(&e->mu);
	rc = mdb_get(e->snap, e->db_ids, &k, &v);
	if (rc == MDB_NOTFOUND)
		err = OC_ENOTFOUND;
	else if (rc)
		err = mdb_err(rc);
	else if (!(*name = strndup(v.mv_data, v.mv_size)))
		err = -ENOMEM;
	pthread_mutex_unlock(&e->mu);
	return err;
}

static int eng_array_list(void *p, int (*cb)(const char *, void *), void *arg)
{
	struct lmdb_eng *e = p;
	MDB_cursor *c;
	MDB_val k, v;
	int rc, err = 0;

	/* Names are copied out under the lock, then handed to cb. */
	char **names = NULL;
	size_t n = 0, cap = 0;

	pthread_mutex_lock(&e->mu);
	rc = mdb_cursor_open(e->snap, e->db_arrays, &c);
	if (rc) {
		pthread_mutex_unlock(&e->mu);
		return mdb_err(rc);
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (n == cap) {
			char **nn = realloc(names, (cap = cap * 2 + 16) * sizeof *nn);
			if (!nn) {
				err = -ENOMEM;
				break;
			}
			names = nn;
		}
		if (!(names[n] = strndup(k.mv_data, k.mv_size))) {
			err = -ENOMEM;
			break;
		}
		n++;
	}
	if (!err && rc != MDB_NOTFOUND)
		err = mdb_err(rc);
	mdb_cursor_close(c);
	pthread_mutex_unlock(&e->mu);
	for (size_t i = 0; i < n; i++) {
		if (!err)
			err = cb(names[i], arg);
		free(names[i]);
	}
	free(names);
	return err;
}

/* A block record: extent offset, version (txnid), delta page count, and
 * the checksums: ngran XXH3 hashes of the granules (version 3), or, with
 * ngran 0, hash, one XXH64 of the whole block (versions 1 and 2). */
struct blkrec {
	uint64_t off, hash, version, ndelta;
	unsigned ngran;
	uint64_t gh[MAXGRAN];
};

/* The granules of a block of blksize bytes: one per 4 KiB page, at most
 * MAXGRAN (the core's granule, for blocks of 128 KiB and more). */
static unsigned granules_of(size_t blksize)
{
	size_t n = blksize / PG;
	return n > MAXGRAN ? MAXGRAN : n ? (unsigned)n : 1;
}

static void hash_granules(const unsigned char *buf, size_t blksize,
			  uint32_t which, uint64_t *gh)
{
	unsigned n = granules_of(blksize), g;
	size_t gs = blksize / n;

	for (g = 0; g < n; g++)
		if ((which >> g) & 1)
			gh[g] = _oc_xxh3(buf + g * gs, gs);
}

#define ALL_GRANULES 0xffffffffu

static void blk_key(unsigned char *kb, uint64_t id, uint64_t blk)
{
	_oc_put_be64(kb, id);
	_oc_put_be64(kb + 8, blk);
}

static int blk_get(struct lmdb_eng *e, MDB_txn *txn, uint64_t id, uint64_t blk,
		   struct blkrec *r)
{
	unsigned char kb[16];
	MDB_val k = {16, kb}, v;
	int rc;

	blk_key(kb, id, blk);
	rc = mdb_get(txn, e->db_blocks, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 1;
	if (rc)
		return mdb_err(rc);
	if (v.mv_size < 24)
		return OC_ECORRUPT;
	r->off = _oc_get_le64(v.mv_data);
	r->hash = _oc_get_le64((unsigned char *)v.mv_data + 8);
	r->version = _oc_get_le64((unsigned char *)v.mv_data + 16);
	r->ndelta = v.mv_size >= 32 ? _oc_get_le64((unsigned char *)v.mv_data + 24) : 0;
	r->ngran = 0;
	if (v.mv_size > 32) {
		const unsigned char *b = v.mv_data;
		r->ngran = _oc_get_le32(b + 32);
		if (r->ngran == 0 || r->ngran > MAXGRAN ||
		    v.mv_size != 40 + 8 * (size_t)r->ngran)
			return OC_ECORRUPT;
		for (unsigned g = 0; g < r->ngran; g++)
			r->gh[g] = _oc_get_le64(b + 40 + 8 * g);
	}
	return 0;
}

static int blk_put(struct lmdb_eng *e, uint64_t id, uint64_t blk,
		   const struct blkrec *r)
{
	unsigned char kb[16], vb[40 + 8 * MAXGRAN];
	MDB_val k = {16, kb}, v = {40 + 8 * (size_t)r->ngran, vb};

	OC_BUG_ON(r->ngran == 0 || r->ngran > MAXGRAN);
	blk_key(kb, id, blk);
	_oc_put_le64(vb, r->off);
	_oc_put_le64(vb + 8, 0);
	_oc_put_le64(vb + 16, r->version);
	_oc_put_le64(vb + 24, r->ndelta);
	_oc_put_le32(vb + 32, r->ngran);
	_oc_put_le32(vb + 36, 0);
	for (unsigned g = 0; g < r->ngran; g++)
		_oc_put_le64(vb + 40 + 8 * g, r->gh[g]);
	return mdb_err(mdb_put(e->w, e->db_blocks, &k, &v, 0));
}

static void delta_key(unsigned char *kb, uint64_t id, uint64_t blk,
		      uint64_t page)
{
	_oc_put_be64(kb, id);
	_oc_put_be64(kb + 8, blk);
	_oc_put_be64(kb + 16, page);
}

/* Read the delta run of len bytes at off in the data file into dst.  In
 * the write transaction (staged), a run not written yet comes from the
 * stage (see "Page deltas").  0, OC_ECORRUPT (past the end of the data
 * file) or -errno.
 * Through runfd, which does not read ahead: the page cache then holds the
 * pages of runs and not the free part of their arena, into which the next
 * runs are written with O_DIRECT; a cached page there would have to be
 * invalidated by that write (the kernel does, but cannot for a page that
 * a reader is copying at that instant, and it would then keep stale
 * data). */
static int delta_read(struct lmdb_eng *e, bool staged, void *dst, size_t len,
		      uint64_t off)
{
	int err;

	if (staged && e->stage_len && off >= e->stage_off &&
	    off + len <= e->stage_off + e->stage_len) {
		memcpy(dst, e->stage + (off - e->stage_off), len);
		return 0;
	}
	err = _oc_os_pread_all(e->runfd, dst, len, off);
	return err == -EIO ? OC_ECORRUPT : err;
}

static int delta_free(struct lmdb_eng *e, uint64_t off, uint64_t len);

/* Lay the delta runs of block (id, blk) in txn over buf (unless NULL),
 * count their pages into *count and set in *gmask (unless NULL) the bits
 * of the granules (granules_of) they touch.  With later, the runs in the
 * data file are not read but listed there, for the caller to read without
 * holding mu (lay_deltas).  With collect, also list the runs in e->runs
 * and set MARK_OLD in e->marks for their pages (the caller zeroes the
 * marks): only in the write transaction.  Returns 0, OC_ECORRUPT (a run
 * that does not fit the block, its arena or the data file), -ENOMEM,
 * -errno or an LMDB error. */
static int deltas_apply(struct lmdb_eng *e, MDB_txn *txn, uint64_t id,
			uint64_t blk, size_t blksize, void *buf, bool collect,
			uint64_t *count, uint32_t *gmask, struct runlist *later)
{
	MDB_cursor *c;
	unsigned char kb[24];
	MDB_val k = {24, kb}, v;
	uint64_t np = blksize / PG, n = 0, off;
	int rc, err = 0;

	if (!e->has_deltas)
		return OC_ESTOREIO; /* a version 2 record seen by a read-only
				     * open of what was a version 1 store */
	if (collect)
		e->runs.n = 0;
	rc = mdb_cursor_open(txn, e->db_deltas, &c);
	if (rc)
		return mdb_err(rc);
	delta_key(kb, id, blk, 0);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		const unsigned char *kp = k.mv_data;
		uint64_t start, len = v.mv_size / PG;
		if (k.mv_size != 24) {
			err = OC_ECORRUPT;
			break;
		}
		if (_oc_get_be64(kp) != id || _oc_get_be64(kp + 8) != blk)
			break;
		start = _oc_get_be64(kp + 16);
		off = INLINE;
		if (v.mv_size == 16) { /* where in the data file */
			off = _oc_get_le64(v.mv_data);
			len = _oc_get_le64((unsigned char *)v.mv_data + 8);
		} else if (v.mv_size % PG) {
			len = 0;
		}
		if (!len || start >= np || len > np - start ||
		    (off != INLINE && (off % PG || off % ARENA + len * PG > ARENA))) {
			err = OC_ECORRUPT;
			break;
		}
		if (buf && off == INLINE)
			memcpy((unsigned char *)buf + start * PG, v.mv_data,
			       v.mv_size);
		else if (buf && later)
			err = runlist_add(later, start, len, off);
		else if (buf)
			err = delta_read(e, collect,
					 (unsigned char *)buf + start * PG,
					 len * PG, off);
		if (err)
			break;
		for (uint64_t pg = start; gmask && pg < start + len; pg++)
			*gmask |= (uint32_t)1 << (pg * granules_of(blksize) / np);
		n += len;
		if (!collect)
			continue;
		err = runlist_add(&e->runs, start, len, off);
		if (err)
			break;
		memset(e->marks + start, MARK_OLD, len);
	}
	if (!err && rc && rc != MDB_NOTFOUND)
		err = mdb_err(rc);
	mdb_cursor_close(c);
	*count = n;
	return err;
}

/* Delete the delta runs of block (id, blk), or with all of every block of
 * array id, in the write transaction, and free their space. */
static int deltas_drop(struct lmdb_eng *e, uint64_t id, uint64_t blk, bool all)
{
	MDB_cursor *c;
	unsigned char kb[24];
	MDB_val k = {24, kb}, v;
	int rc, err = 0;

	rc = mdb_cursor_open(e->w, e->db_deltas, &c);
	if (rc)
		return mdb_err(rc);
	delta_key(kb, id, all ? 0 : blk, 0);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc && !err;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		/* After a delete MDB_NEXT returns the item that moved under
		 * the cursor. */
		if (k.mv_size != 24 || _oc_get_be64(k.mv_data) != id ||
		    (!all && _oc_get_be64((unsigned char *)k.mv_data + 8) != blk))
			break;
		if (v.mv_size == 16) /* a run in the data file */
			err = delta_free(e, _oc_get_le64(v.mv_data),
					 _oc_get_le64((unsigned char *)v.mv_data + 8) * PG);
		if (!err)
			err = mdb_err(mdb_cursor_del(c, 0));
	}
	if (!err && rc && rc != MDB_NOTFOUND)
		err = mdb_err(rc);
	mdb_cursor_close(c);
	return err;
}

/* Whether r's extent was verified at r's version (mu held). */
static bool verified_locked(struct lmdb_eng *e, const struct blkrec *r)
{
	return (uint64_t)(uintptr_t)oc_pagemap_get(&e->verified, r->off >> 12) ==
	       r->version;
}

static bool is_verified(struct lmdb_eng *e, const struct blkrec *r)
{
	bool yes;

	pthread_mutex_lock(&e->mu);
	yes = verified_locked(e, r);
	pthread_mutex_unlock(&e->mu);
	return yes;
}

static void set_verified(struct lmdb_eng *e, const struct blkrec *r)
{
	pthread_mutex_lock(&e->mu);
	/* A failed insert only costs a verification later. */
	(void)oc_pagemap_set(&e->verified, r->off >> 12,
			     (void *)(uintptr_t)r->version);
	pthread_mutex_unlock(&e->mu);
}

/* A record's checksums cover units of a block: its granules (version 3),
 * or the whole block (versions 1 and 2, ngran 0).  How many: */
static unsigned units_of(const struct blkrec *r)
{
	return r->ngran ? r->ngran : 1;
}

/* Whether unit u of the block at buf matches r's checksum. */
static bool unit_ok(const struct blkrec *r, const unsigned char *buf,
		    size_t blksize, unsigned u)
{
	size_t gs;

	if (!r->ngran)
		return XXH64(buf, blksize, 0) == r->hash;
	if (r->ngran != granules_of(blksize))
		return false;
	gs = blksize / r->ngran;
	return _oc_xxh3(buf + u * gs, gs) == r->gh[u];
}

/* Check block r against its checksums, reading unit u from over when bit
 * u of mask is set, else from base; count it, and record it as verified
 * when it matches.  0 or OC_ECORRUPT. */
static int verify(struct lmdb_eng *e, const struct blkrec *r, size_t blksize,
		  const void *base, const void *over, uint32_t mask)
{
	bool ok = true;

	CNT(e, n_verified);
	for (unsigned u = 0; ok && u < units_of(r); u++)
		ok = unit_ok(r, (mask >> u) & 1 ? over : base, blksize, u);
	if (!ok) {
		CNT(e, n_corrupt);
		return OC_ECORRUPT;
	}
	set_verified(e, r);
	return 0;
}

/* Map r's extent read-only at *m (give it back with _oc_os_release):
 * 0, OC_ECORRUPT when the data file ends before it, or -errno. */
static int map_extent(struct lmdb_eng *e, const struct blkrec *r,
		      size_t blksize, const void **m)
{
	int err = _oc_os_map_file_ro(e->datafd, r->off, blksize, m);

	if (err == -EIO)
		oc_set_error_detail("the data file ends before the block");
	return err == -EIO ? OC_ECORRUPT : err;
}

/* Read the granules of mask (granules_of(blksize) of them) of the extent
 * at off into the same places of dst: 0, OC_ECORRUPT when the data file
 * ends before them, or -errno. */
static int pread_granules(struct lmdb_eng *e, void *dst, size_t blksize,
			  uint32_t mask, uint64_t off)
{
	unsigned n = granules_of(blksize), g;
	size_t gs = blksize / n;
	int err = 0;

	for (g = 0; !err && g < n; g++)
		if ((mask >> g) & 1)
			err = _oc_os_pread_all(e->datafd, (char *)dst + g * gs,
					       gs, off + g * gs);
	return err == -EIO ? OC_ECORRUPT : err;
}

/* verify() with the base read through a mapping of r's extent: no copy
 * and no buffer to fault in, and the pages it reads are those the core's
 * mapping will use. */
static int verify_extent(struct lmdb_eng *e, const struct blkrec *r,
			 size_t blksize, const unsigned char *over,
			 uint32_t mask)
{
	const void *m;
	int err = map_extent(e, r, blksize, &m);

	if (!err) {
		err = verify(e, r, blksize, m, over, mask);
		_oc_os_release((void *)m, blksize);
	}
	return err;
}

/* Lay the deltas of block (id, blk) over buf, with r its record as read
 * in snapshot sid: 0, 1 when the snapshot moved on meanwhile (read the
 * record again), or an error. */
static int lay_deltas(struct lmdb_eng *e, uint64_t id, uint64_t blk,
		      size_t blksize, void *buf, uint64_t sid,
		      const struct blkrec *r)
{
	struct runlist later = {NULL, 0, 0};
	uint64_t n;
	bool moved;
	int err;

	pthread_mutex_lock(&e->mu);
	if (e->snap_id != sid) {
		pthread_mutex_unlock(&e->mu);
		return 1;
	}
	err = deltas_apply(e, e->snap, id, blk, blksize, buf, false, &n, NULL,
			   &later);
	pthread_mutex_unlock(&e->mu);
	/* The runs in the data file are read without mu (a disk read must
	 * not hold up every other reader); they are snapshot sid's only if
	 * it is still the snapshot when they have been read (the space of
	 * an older one may be reused). */
	for (size_t i = 0; !err && i < later.n; i++)
		err = delta_read(e, false,
				 (unsigned char *)buf + later.v[i].start * PG,
				 later.v[i].n * PG, later.v[i].off);
	free(later.v);
	if (later.n && (!err || err == OC_ECORRUPT)) {
		pthread_mutex_lock(&e->mu);
		moved = e->snap_id != sid;
		pthread_mutex_unlock(&e->mu);
		if (moved)
			return 1;
	}
	return !err && n != r->ndelta ? OC_ECORRUPT : err;
}

/* Verification ahead.  Hashing a block costs about as much as reading it
 * (XXH3 with AVX2 from memory, ~13 GB/s here), so a sequential scan with
 * verification would run at half speed on one core.  When blocks of an
 * array are mapped in sequence, a thread of the engine verifies the next
 * VERIFY_AHEAD blocks while the reader reads the ones it has.  When the
 * reader catches up with it (hashing is the slower of the two when they
 * share the memory bus), the reader does not wait idle: it hashes the
 * remaining units of the thread's block too, so the two cores share the
 * hashing.  The lead is long (128 MiB of 2 MiB blocks; leads of 2-8
 * blocks measured slower) so that the two seldom meet.  The thread only
 * ever records a block as verified (a mismatch, which may also be an
 * extent reused after our snapshot moved on, is left to the reader's own
 * verification, which reports it).
 *
 * Without verification the same thread reads ahead: it brings the next
 * blocks' extents into the page cache (a fault on each, the kernel's
 * readahead doing the rest), so that the device reads while the reader
 * sums.  Not with posix_fadvise(WILLNEED): the kernel then fills the page
 * cache with 4 KiB pages, and every later scan maps 512 entries per block
 * instead of one large folio (warm scans measured 2.5x slower). */
#define VERIFY_AHEAD 64

/* The block the thread is hashing, unit by unit (under mu: claims and
 * counts; the units are hashed with mu dropped). */
struct vjob {
	struct blkrec r;
	const unsigned char *m; /* the extent, mapped read-only */
	size_t blksize;
	unsigned n, next, done; /* units; the next to claim; those hashed */
	bool bad;
};

/* The thread reads extents through a window: a mapping of VWIN bytes of
 * the data file, moved when an extent is outside it.  Extents of
 * consecutive blocks are mostly consecutive in the file, so it maps and
 * unmaps once per VWIN / blksize blocks: each unmapping interrupts the
 * reader's core (a TLB shootdown), which measured ~15% of the thread's
 * time with a mapping per block.  The pages it shows count in the RSS while
 * mapped: VWIN is kept small for that (a block larger than VWIN gets a
 * mapping of its size). */
#define VWIN ((size_t)8 << 20)

struct vwin {
	const unsigned char *p;
	uint64_t off;      /* of the data file */
	size_t size;       /* mapped: VWIN, a block larger than that, or (at
			    * the end of the data file) the extent */
};

static void win_drop(struct vwin *w)
{
	if (w->p)
		_oc_os_release((void *)w->p, w->size);
	w->p = NULL;
}

/* The extent at off (len bytes) seen through w, or NULL (not in the data
 * file, or no mapping). */
static const unsigned char *win_get(struct lmdb_eng *e, struct vwin *w,
				    uint64_t off, size_t len)
{
	size_t size = len > VWIN ? len : VWIN;
	const void *p;

	if (w->p && off >= w->off && off + len <= w->off + w->size)
		return w->p + (off - w->off);
	win_drop(w);
	/* near the end of the data file, just the extent */
	if (_oc_os_map_file_ro(e->datafd, off, size, &p) &&
	    _oc_os_map_file_ro(e->datafd, off, size = len, &p))
		return NULL;
	(void)madvise((void *)p, size, MADV_DONTFORK);
	w->p = p;
	w->size = size;
	w->off = off;
	return w->p;
}

/* Wake whoever waits on vcond (mu held). */
static void vwake(struct lmdb_eng *e)
{
	__atomic_store_n(&e->vseq, e->vseq + 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&e->vcond);
}

/* Wait for vwake (mu held, dropped meanwhile), which comes within a unit's
 * hashing (~5 us for 64 KiB) when the thread and a reader share a block:
 * spin that long first.  Sleeping on the condition variable and being
 * woken cost a futex round trip and an interrupt of the other core per
 * block, for both. */
static void vwait(struct lmdb_eng *e)
{
	uint64_t seq = e->vseq;

	pthread_mutex_unlock(&e->mu);
	for (int i = 0; i < 2000 &&
			__atomic_load_n(&e->vseq, __ATOMIC_ACQUIRE) == seq; i++) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
	pthread_mutex_lock(&e->mu);
	if (e->vseq == seq)
		pthread_cond_wait(&e->vcond, &e->mu);
}

/* Hash the unclaimed units of the thread's job (mu held; dropped while
 * hashing).  Whoever hashes the last one wakes the waiters. */
static void vjob_work(struct lmdb_eng *e, struct vjob *j)
{
	while (j->next < j->n) {
		unsigned u = j->next++;
		bool ok;
		pthread_mutex_unlock(&e->mu);
		ok = unit_ok(&j->r, j->m, j->blksize, u);
		pthread_mutex_lock(&e->mu);
		if (!ok)
			j->bad = true;
		if (++j->done == j->n)
			vwake(e);
	}
}

/* Whether the page cache holds all of [off, off+len) of fd: cachestat
 * (Linux 6.5) asks without a mapping, so a warm scan costs the thread one
 * system call per block, and the reader no TLB shootdown.  -1: cannot
 * tell. */
static int cached(int fd, uint64_t off, uint64_t len)
{
#ifdef __x86_64__
	struct {
		uint64_t off, len;
	} range = {off, len};
	struct {
		uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted,
			nr_recently_evicted;
	} cs;
	static int none;

	if (!__atomic_load_n(&none, __ATOMIC_RELAXED)) {
		if (syscall(451 /* cachestat */, fd, &range, &cs, 0) == 0)
			return cs.nr_cache * (uint64_t)sysconf(_SC_PAGESIZE) >=
			       len;
		if (errno == ENOSYS || errno == EPERM) /* or a seccomp filter */
			__atomic_store_n(&none, 1, __ATOMIC_RELAXED);
	}
#else
	(void)fd;
	(void)off;
	(void)len;
#endif
	return -1;
}

/* Bring a block's extent into the page cache, unless it is there already
 * (a warm scan). */
static void fetch_extent(struct lmdb_eng *e, const struct blkrec *r,
			 size_t blksize)
{
	unsigned char in[2] = {0, 0};
	const unsigned char *m;
	int c = cached(e->datafd, r->off, blksize);

	if (c > 0 || map_extent(e, r, blksize, (const void **)&m))
		return;
	if (c < 0) { /* its first and last pages tell */
		(void)mincore((void *)m, 4096, &in[0]);
		(void)mincore((void *)(m + blksize - 4096), 4096, &in[1]);
	}
	if (!(in[0] & in[1] & 1) &&
	    _oc_os_populate((void *)m, blksize) == -EINVAL) {
		for (size_t o = 0; o < blksize; o += 4096) /* before 5.14 */
			(void)*(volatile const unsigned char *)(m + o);
	}
	_oc_os_release((void *)m, blksize);
}

static void *verifier(void *arg)
{
	struct lmdb_eng *e = arg;
	struct vwin w = {NULL, 0, 0};
	struct vjob j;

	pthread_mutex_lock(&e->mu);
	while (!e->vstop) {
		uint64_t id = e->vq_id, blk = e->vq_next;
		const void *m;
		bool ok;
		if (blk >= e->vq_end) {
			win_drop(&w);
			pthread_cond_wait(&e->vcond, &e->mu);
			continue;
		}
		e->vq_next++;
		if (!e->snap || blk_get(e, e->snap, id, blk, &j.r) ||
		    j.r.ndelta)
			continue;
		if (e->vq_fetch) {
			size_t len = e->vq_blksize;
			pthread_mutex_unlock(&e->mu);
			fetch_extent(e, &j.r, len);
			pthread_mutex_lock(&e->mu);
			continue;
		}
		if (verified_locked(e, &j.r))
			continue;
		j.blksize = e->vq_blksize;
		e->vbusy_off = j.r.off;
		pthread_mutex_unlock(&e->mu);
		ok = (m = win_get(e, &w, j.r.off, j.blksize)) != NULL;
		pthread_mutex_lock(&e->mu);
		if (ok) {
			j.m = m;
			j.n = units_of(&j.r);
			j.next = j.done = 0;
			j.bad = false;
			e->vjob = &j;
			vwake(e); /* a reader may help */
			vjob_work(e, &j);
			while (j.done < j.n) /* a reader hashes the last units */
				vwait(e);
			e->vjob = NULL;
			ok = !j.bad;
		}
		if (ok) {
			CNT(e, n_verified);
			(void)oc_pagemap_set(&e->verified, j.r.off >> 12,
					     (void *)(uintptr_t)j.r.version);
		}
		e->vbusy_off = UINT64_MAX;
		vwake(e);
	}
	pthread_mutex_unlock(&e->mu);
	win_drop(&w);
	return NULL;
}

/* A reader maps block (id, blk) (mu held): when it goes in sequence, give
 * the thread the blocks after it, to verify or (fetch) only to read. */
static void queue_ahead(struct lmdb_eng *e, uint64_t id, uint64_t blk,
			size_t blksize, bool fetch)
{
	bool seq = id == e->last_id && blk == e->last_blk + 1;

	e->last_id = id;
	e->last_blk = blk;
	if (seq && !e->vthr_pid) {
		if (pthread_create(&e->vthr, NULL, verifier, e) == 0)
			e->vthr_pid = getpid();
	}
	if (seq && e->vthr_pid) {
		if (e->vq_id != id || e->vq_blksize != blksize ||
		    e->vq_fetch != fetch || e->vq_next <= blk ||
		    e->vq_next > blk + 1 + VERIFY_AHEAD) {
			e->vq_id = id;
			e->vq_blksize = blksize;
			e->vq_fetch = fetch;
			e->vq_next = blk + 1; /* this one is the reader's */
		}
		e->vq_end = blk + 1 + VERIFY_AHEAD;
		pthread_cond_signal(&e->vcond);
	}
}

/* Before block (id, blk), record r, is verified by the reader (mu held):
 * queue the blocks after it, and if the thread is hashing this one, help
 * it.  Returns whether r is verified now. */
static bool verify_ahead(struct lmdb_eng *e, uint64_t id, uint64_t blk,
			 size_t blksize, const struct blkrec *r)
{
	queue_ahead(e, id, blk, blksize, false);
	while (e->vbusy_off == r->off) {
		if (e->vjob && e->vjob->r.off == r->off &&
		    e->vjob->next < e->vjob->n)
			vjob_work(e, e->vjob);
		else
			vwait(e);
	}
	return verified_locked(e, r);
}

static int eng_blk_load(void *p, uint64_t id, uint64_t blk, size_t blksize,
			int do_verify, void *buf)
{
	struct lmdb_eng *e = p;
	struct blkrec r;
	uint64_t sid;
	int err;

again:
	pthread_mutex_lock(&e->mu);
	err = blk_get(e, e->snap, id, blk, &r);
	sid = e->snap_id;
	pthread_mutex_unlock(&e->mu);
	if (err == 1) {
		memset(buf, 0, blksize);
		CNT(e, n_holes);
		return 0;
	}
	if (err)
		return err;
	err = _oc_os_pread_all(e->datafd, buf, blksize, r.off);
	if (err == -EIO) /* short: the data file was truncated */
		err = OC_ECORRUPT;
	/* The deltas must come from the snapshot of the record. */
	if (!err && r.ndelta &&
	    (err = lay_deltas(e, id, blk, blksize, buf, sid, &r)) == 1)
		goto again;
	if (!err && do_verify && !is_verified(e, &r))
		err = verify(e, &r, blksize, buf, NULL, 0);
	if (!err)
		CNT(e, n_loads);
	return err;
}

/* Whether [off, off+len) lies inside the data file: 0, or OC_ECORRUPT
 * (said and counted).  An unverified map of an extent past its end (a
 * truncated file) would turn the reader's first touch into a SIGBUS
 * instead of an error.  fstat only when the size last seen is too small:
 * a file cut short while the store is open is seen only for extents past
 * the size seen last (the others still SIGBUS, as any mapping of a file
 * truncated under it). */
static int in_file(struct lmdb_eng *e, uint64_t off, size_t len)
{
	uint64_t size = __atomic_load_n(&e->file_size, __ATOMIC_RELAXED);
	struct stat sb;

	if (off + len <= size)
		return 0;
	if (!fstat(e->datafd, &sb) && sb.st_size >= 0) {
		size = (uint64_t)sb.st_size;
		__atomic_store_n(&e->file_size, size, __ATOMIC_RELAXED);
		if (off + len <= size)
			return 0;
	}
	oc_set_error_detail("the data file ends before the block");
	CNT(e, n_corrupt);
	return OC_ECORRUPT;
}

static int eng_blk_map(void *p, uint64_t id, uint64_t blk, size_t blksize,
		       int do_verify, int *fd, uint64_t *off)
{
	struct lmdb_eng *e = p;
	struct blkrec r;
	int err;

	pthread_mutex_lock(&e->mu);
	err = blk_get(e, e->snap, id, blk, &r);
	if (!err && !do_verify)
		queue_ahead(e, id, blk, blksize, true); /* read ahead */
	else if (!err && !r.ndelta && verify_ahead(e, id, blk, blksize, &r))
		do_verify = 0; /* verified already */
	pthread_mutex_unlock(&e->mu);
	if (err == 1) {
		CNT(e, n_holes);
		return OC_ZEROBLK;
	}
	if (err)
		return err;
	if (r.ndelta)
		return OC_NOMAP; /* to be assembled by blk_load */
	if (do_verify && (err = verify_extent(e, &r, blksize, NULL, 0)))
		return err;
	if ((err = in_file(e, r.off, blksize)))
		return err;
	CNT(e, n_maps);
	*fd = e->datafd;
	*off = r.off;
	return 0;
}

/* A block with page deltas, about to be written (blk_map_patched): its
 * extent as the base, and the granules its deltas touch assembled in buf,
 * so that the core keeps those granules in RAM and not the whole block.
 * Verified granule by granule: those in buf from buf, the others from the
 * extent.  OC_NOMAP when the block is better loaded whole (deltas in a
 * quarter of the granules or more, another granule size, a format 1-2
 * record). */
static int eng_blk_map_patched(void *p, uint64_t id, uint64_t blk,
			       size_t blksize, int do_verify, size_t granule,
			       int *fd, uint64_t *off, void *buf,
			       uint32_t *changed)
{
	struct lmdb_eng *e = p;
	unsigned n = granules_of(blksize);
	size_t gs = blksize / n;
	struct blkrec r;
	uint32_t mask;
	uint64_t sid, cnt;
	int err;

again:
	mask = 0;
	pthread_mutex_lock(&e->mu);
	err = blk_get(e, e->snap, id, blk, &r);
	sid = e->snap_id;
	/* (the deltas are walked only for a record that can be patched) */
	if (!err && r.ndelta && r.ngran == n && granule == gs)
		err = deltas_apply(e, e->snap, id, blk, blksize, NULL, false,
				   &cnt, &mask, NULL);
	pthread_mutex_unlock(&e->mu);
	if (err == 1) {
		CNT(e, n_holes);
		return OC_ZEROBLK;
	}
	if (err)
		return err;
	if (!mask || (unsigned)__builtin_popcount(mask) >= n / 4)
		return OC_NOMAP;
	if ((err = pread_granules(e, buf, blksize, mask, r.off)))
		return err;
	if ((err = lay_deltas(e, id, blk, blksize, buf, sid, &r)) == 1)
		goto again;
	if (!err && do_verify && !is_verified(e, &r))
		err = verify_extent(e, &r, blksize, buf, mask);
	if (!err)
		err = in_file(e, r.off, blksize);
	if (err)
		return err;
	CNT(e, n_maps);
	*fd = e->datafd;
	*off = r.off;
	*changed = mask;
	return 0;
}

/* ---- write transaction ----------------------------------------------------- */

static bool changed_by_others(struct lmdb_eng *e, uint64_t id, uint64_t blk)
{
	return _oc_se_changed(e->changed, e->nchanged, id, blk);
}

/* The oldest snapshot in the reader table (UINT64_MAX: none). */
static int reader_line(const char *msg, void *ctx)
{
	uint64_t *min = ctx;
	const char *l = msg;

	while (l && *l) {
		int pid;
		size_t tid;
		unsigned long long txnid;
		if (sscanf(l, "%d %zx %llu", &pid, &tid, &txnid) == 3 &&
		    txnid < *min)
			*min = txnid;
		l = strchr(l, '\n');
		if (l)
			l++;
	}
	return 0;
}

static int log_put(struct lmdb_eng *e, uint64_t id, uint64_t blk)
{
	unsigned char kb[24];
	MDB_val k = {24, kb}, v = {0, ""};

	_oc_put_be64(kb, e->w_id);
	blk_key(kb + 8, id, blk);
	return mdb_err(mdb_put(e->w, e->db_log, &k, &v, 0));
}

static int free_put(struct lmdb_eng *e, uint64_t off, uint64_t len)
{
	unsigned char kb[8], vb[16];
	MDB_val k = {8, kb}, v = {16, vb};

	_oc_put_be64(kb, off);
	_oc_put_le64(vb, e->w_id);
	_oc_put_le64(vb + 8, len);
	return mdb_err(mdb_put(e->w, e->db_free, &k, &v, 0));
}

static void eng_txn_abort(void *p)
{
	struct lmdb_eng *e = p;

	if (e->w)
		mdb_txn_abort(e->w);
	e->w = NULL;
	e->ar_loaded = e->ar_dirty = false; /* read again by the next one */
	e->stage_len = 0; /* runs of no record */
	free(e->changed);
	e->changed = NULL;
	e->nchanged = 0;
}

static int eng_txn_begin(void *p)
{
	struct lmdb_eng *e = p;
	MDB_cursor *c = NULL;
	MDB_val k, v;
	unsigned char kb[24];
	uint32_t version;
	size_t cap = 0;
	int dead, rc, err;

	if (e->flags & OC_STORE_RDONLY)
		return OC_EREADONLY;
	OC_BUG_ON(e->w);
	mdb_reader_check(e->env, &dead);
	rc = mdb_txn_begin(e->env, NULL, 0, &e->w);
	if (rc)
		return mdb_err(rc);
	e->w_id = mdb_txn_id(e->w);
	/* Read the reader table with the writer lock held: readers that
	 * start from now on see the last commit, which references no free
	 * extent. */
	e->min_reader = UINT64_MAX;
	mdb_reader_list(e->env, reader_line, &e->min_reader);
	if (e->min_reader > e->snap_id)
		e->min_reader = e->snap_id; /* ours, even under MDB_NOLOCK */
	err = metarec_get(e, e->w, &version, &e->next_id, &e->data_end);
	if (!err && version > FORMAT_VERSION)
		err = OC_EVERSION; /* upgraded by a newer library meanwhile */
	if (err)
		goto fail;
	e->alloc_pos = 0;
	e->alloc_done = false;
	e->wrote = false;

	/* What others committed since our snapshot, and pruning of what no
	 * reader needs any more. */
	rc = mdb_cursor_open(e->w, e->db_log, &c);
	if (rc) {
		err = mdb_err(rc);
		goto fail;
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		uint64_t t;
		if (k.mv_size != 24) {
			err = OC_ECORRUPT;
			goto fail;
		}
		t = _oc_get_be64(k.mv_data);
		if (t > e->min_reader)
			break;
		rc = mdb_cursor_del(c, 0);
		if (rc)
			break;
	}
	if (rc && rc != MDB_NOTFOUND) {
		err = mdb_err(rc);
		goto fail;
	}
	_oc_put_be64(kb, e->snap_id + 1);
	memset(kb + 8, 0, 16);
	k.mv_size = 24;
	k.mv_data = kb;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (e->nchanged == cap) {
			struct oc_se_blkref *n = realloc(e->changed,
						   (cap = cap * 2 + 64) * sizeof *n);
			if (!n) {
				err = -ENOMEM;
				goto fail;
			}
			e->changed = n;
		}
		e->changed[e->nchanged].id = _oc_get_be64((unsigned char *)k.mv_data + 8);
		e->changed[e->nchanged].blk = _oc_get_be64((unsigned char *)k.mv_data + 16);
		e->nchanged++;
	}
	if (rc != MDB_NOTFOUND) {
		err = mdb_err(rc);
		goto fail;
	}
	mdb_cursor_close(c);
	c = NULL;
	if (e->nchanged)
		qsort(e->changed, e->nchanged, sizeof *e->changed, _oc_se_change_cmp);
	return 0;
fail:
	if (c)
		mdb_cursor_close(c);
	eng_txn_abort(e);
	return err;
}

static int ids_get(struct lmdb_eng *e, uint64_t id, MDB_val *name)
{
	unsigned char kb[8];
	MDB_val k = {8, kb};
	int rc;

	_oc_put_be64(kb, id);
	rc = mdb_get(e->w, e->db_ids, &k, name);
	if (rc == MDB_NOTFOUND)
		return OC_ENOTFOUND;
	return mdb_err(rc);
}

/* Whether array id still exists in the write transaction, if its metadata
 * changed since our snapshot (it may have been deleted, or deleted and
 * created again under a new id): 0, OC_ECONFLICT, or an error. */
static int still_there(struct lmdb_eng *e, uint64_t id)
{
	MDB_val nm;
	int err;

	if (!changed_by_others(e, id, OC_SE_META))
		return 0;
	err = ids_get(e, id, &nm);
	return err == OC_ENOTFOUND ? OC_ECONFLICT : err;
}

/* Drop the blocks of array id from block from on (free the extents, drop
 * the deltas, log the blocks).  A record too short to name its extent is
 * dropped all the same (its extent, if any, is lost to reuse): a corrupt
 * array can still be deleted. */
static int drop_blocks(struct lmdb_eng *e, uint64_t id, uint64_t from,
		       uint64_t blksize)
{
	MDB_cursor *c;
	unsigned char kb[16];
	MDB_val k = {16, kb}, v;
	int rc, err = 0;

	rc = mdb_cursor_open(e->w, e->db_blocks, &c);
	if (rc)
		return mdb_err(rc);
	blk_key(kb, id, from);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc && !err;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		/* After a delete MDB_NEXT returns the item that moved under
		 * the cursor. */
		uint64_t blk, ndelta;
		if (k.mv_size != 16 || _oc_get_be64(k.mv_data) != id)
			break;
		blk = _oc_get_be64((unsigned char *)k.mv_data + 8);
		ndelta = v.mv_size >= 32 ? _oc_get_le64((unsigned char *)v.mv_data + 24) : 0;
		if (v.mv_size >= 24)
			err = free_put(e, _oc_get_le64(v.mv_data), blksize);
		if (!err)
			err = log_put(e, id, blk);
		if (!err && ndelta && from)
			err = deltas_drop(e, id, blk, false);
		if (!err)
			err = mdb_err(mdb_cursor_del(c, 0));
	}
	if (!err && rc && rc != MDB_NOTFOUND)
		err = mdb_err(rc);
	mdb_cursor_close(c);
	if (!err && !from)
		err = deltas_drop(e, id, 0, true);
	return err;
}

static int eng_txn_array(void *p, enum oc_se_change what, uint64_t id,
			 const char *name, const oc_array_meta_t *meta,
			 uint64_t *new_id)
{
	struct lmdb_eng *e = p;
	unsigned char kb[8], *rec = NULL;
	char namebuf[OC_STORE_NAME_MAX];
	MDB_val k, v, nm;
	size_t len;
	int rc, err;

	switch (what) {
	case OC_SE_CREATE:
		k.mv_size = strlen(name);
		k.mv_data = (void *)name;
		rc = mdb_get(e->w, e->db_arrays, &k, &v);
		if (rc == 0)
			return OC_ECONFLICT; /* created meanwhile by another */
		if (rc != MDB_NOTFOUND)
			return mdb_err(rc);
		id = e->next_id++;
		err = _oc_se_meta_encode(id, e->w_id, meta, &rec, &len);
		if (err)
			return err;
		v.mv_size = len;
		v.mv_data = rec;
		err = mdb_err(mdb_put(e->w, e->db_arrays, &k, &v, 0));
		free(rec);
		if (err)
			return err;
		_oc_put_be64(kb, id);
		nm = k;
		k.mv_size = 8;
		k.mv_data = kb;
		err = mdb_err(mdb_put(e->w, e->db_ids, &k, &nm, 0));
		if (!err)
			err = log_put(e, id, OC_SE_META);
		if (!err)
			*new_id = id;
		return err;
	case OC_SE_DELETE:
	case OC_SE_SET:
		/* Any change by another process to the metadata (or, for a
		 * delete, to any block) since our snapshot conflicts. */
		if (changed_by_others(e, id, OC_SE_META) ||
		    (what == OC_SE_DELETE &&
		     _oc_se_changed_from(e->changed, e->nchanged, id, 0, true)))
			return OC_ECONFLICT;
		err = ids_get(e, id, &nm);
		if (err == OC_ENOTFOUND)
			return OC_ECONFLICT;
		if (err)
			return err;
		/* Copy the name out of the database before changing it. */
		if (nm.mv_size > OC_STORE_NAME_MAX)
			return OC_ECORRUPT;
		memcpy(namebuf, nm.mv_data, nm.mv_size);
		nm.mv_data = namebuf;
		if (what == OC_SE_DELETE) {
			uint64_t bs;
			rc = mdb_get(e->w, e->db_arrays, &nm, &v);
			if (rc)
				return mdb_err(rc);
			if (v.mv_size < 28)
				return OC_ECORRUPT;
			bs = _oc_get_le64((unsigned char *)v.mv_data + 20);
			err = mdb_err(mdb_del(e->w, e->db_arrays, &nm, NULL));
			_oc_put_be64(kb, id);
			k.mv_size = 8;
			k.mv_data = kb;
			if (!err)
				err = mdb_err(mdb_del(e->w, e->db_ids, &k, NULL));
			if (!err)
				err = drop_blocks(e, id, 0, bs);
		} else {
			err = _oc_se_meta_encode(id, e->w_id, meta, &rec, &len);
			if (err)
				return err;
			v.mv_size = len;
			v.mv_data = rec;
			err = mdb_err(mdb_put(e->w, e->db_arrays, &nm, &v, 0));
			free(rec);
		}
		if (!err)
			err = log_put(e, id, OC_SE_META);
		return err;
	}
	return -EINVAL;
}

/* Write block data buf of len bytes to the extent at off, which is new
 * (past the data end before it was allocated) when fresh.  A new extent is
 * written with O_DIRECT when the buffer allows: no page of it can be in
 * use (an extent is only ever mapped once a commit refers to it), and here
 * filling new page-cache pages costs more than the disk write (1 GB/s
 * direct against 0.22 GB/s buffered then fdatasync'ed, on these VMs).
 * Its first read then comes from the disk.  A reused extent is written
 * through the page cache (its pages may still be cached, and mapped by
 * nobody: see the snapshot note above) and started towards the disk at
 * once, so that the fdatasync at commit waits for less. */
static int write_extent(struct lmdb_eng *e, const void *buf, size_t len,
			uint64_t off, bool fresh)
{
	int err;

	if (fresh && e->directfd >= 0 && (uintptr_t)buf % DIRECT_ALIGN == 0 &&
	    len % DIRECT_ALIGN == 0 && off % DIRECT_ALIGN == 0) {
		err = _oc_os_pwrite_all(e->directfd, buf, len, off);
		if (err != -EINVAL)
			return err;
		close(e->directfd); /* refused after all: stop trying */
		e->directfd = -1;
	}
	err = _oc_os_pwrite_all(e->datafd, buf, len, off);
	if (!err)
		(void)sync_file_range(e->datafd, (off_t)off, (off_t)len,
				      SYNC_FILE_RANGE_WRITE);
	return err;
}

/* An extent of len bytes nobody can see: a free one no reader predates,
 * or a new one at the end. */
static int alloc_extent(struct lmdb_eng *e, uint64_t len, uint64_t *off)
{
	MDB_cursor *c;
	unsigned char kb[8];
	MDB_val k = {8, kb}, v;
	int rc, err = 0;

	if (!e->alloc_done) {
		rc = mdb_cursor_open(e->w, e->db_free, &c);
		if (rc)
			return mdb_err(rc);
		_oc_put_be64(kb, e->alloc_pos);
		for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc;
		     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
			uint64_t o = _oc_get_be64(k.mv_data);
			uint64_t freed = _oc_get_le64(v.mv_data);
			uint64_t l = _oc_get_le64((unsigned char *)v.mv_data + 8);
			if (l == len && freed <= e->min_reader && o % len == 0) {
				err = mdb_err(mdb_cursor_del(c, 0));
				mdb_cursor_close(c);
				if (err)
					return err;
				e->alloc_pos = o + 1;
				*off = o;
				return 0;
			}
		}
		mdb_cursor_close(c);
		if (rc != MDB_NOTFOUND)
			return mdb_err(rc);
		e->alloc_done = true; /* entries added now are not eligible */
	}
	*off = (e->data_end + len - 1) / len * len;
	e->data_end = *off + len;
	if (e->data_end > e->prealloc_end) {
		/* Allocate the file's space ahead, PREALLOC at a time: ext4
		 * here writes new blocks several times faster into space
		 * allocated by one fallocate than with an allocation per
		 * write, and a full disk fails here, before anything is
		 * written.  The file may so end past data_end. */
		uint64_t n = (len > PREALLOC ? len : PREALLOC);
		if (fallocate(e->datafd, 0, (off_t)*off, (off_t)n) == 0)
			e->prealloc_end = *off + n;
		else if (errno == ENOSPC)
			return -ENOSPC;
	}
	return 0;
}

/* ---- delta arenas ----------------------------------------------------------
 *
 * A run of delta pages goes to the current arena, at its fill position,
 * through the stage: runs written one after the other are contiguous in the
 * data file and reach it as one write when the arena is full or at commit
 * (1,000 runs of 64 KiB: 32 writes of 2 MiB).  The arenas database counts
 * the live bytes of each arena; an arena whose count falls to zero and that
 * is not the current one is freed whole, like a block extent (free_put's
 * txnid keeps it from snapshots that may still read it).  Space freed
 * inside an arena is reused only with the whole arena; the current arena
 * stays current when nothing in it lives (it is at most ARENA bytes, and
 * runs that follow go on filling it). */

/* Read the current arena (meta "arena") at its first use in the write
 * transaction. */
static int arena_load(struct lmdb_eng *e)
{
	MDB_val k = {5, "arena"}, v;
	int rc;

	if (e->ar_loaded)
		return 0;
	if (!e->has_arenas)
		return OC_ESTOREIO;
	e->ar_off = INLINE;
	e->ar_pos = 0;
	e->ar_fresh = false;
	rc = mdb_get(e->w, e->db_meta, &k, &v);
	if (rc == 0) {
		const unsigned char *b = v.mv_data;
		if (v.mv_size != 24)
			return OC_ECORRUPT;
		e->ar_off = _oc_get_le64(b);
		e->ar_pos = _oc_get_le64(b + 8);
		if (e->ar_off % ARENA || e->ar_pos > ARENA || e->ar_pos % PG)
			return OC_ECORRUPT;
	} else if (rc != MDB_NOTFOUND) {
		return mdb_err(rc);
	}
	e->ar_loaded = true;
	e->ar_dirty = false;
	return 0;
}

static int arena_save(struct lmdb_eng *e)
{
	unsigned char b[24];
	MDB_val k = {5, "arena"}, v = {sizeof b, b};

	if (!e->ar_loaded || !e->ar_dirty)
		return 0;
	_oc_put_le64(b, e->ar_off);
	_oc_put_le64(b + 8, e->ar_pos);
	_oc_put_le64(b + 16, 0); /* flags: none yet */
	return mdb_err(mdb_put(e->w, e->db_meta, &k, &v, 0));
}

/* Add delta to the live bytes of the arena at off, into *live; an arena
 * left with none is freed unless it is the current one. */
static int arena_live(struct lmdb_eng *e, uint64_t off, int64_t delta,
		      uint64_t *live)
{
	unsigned char kb[8], vb[8];
	MDB_val k = {8, kb}, v;
	uint64_t n = 0;
	int rc, err;

	_oc_put_be64(kb, off);
	rc = mdb_get(e->w, e->db_arenas, &k, &v);
	if (rc == 0 && v.mv_size != 8)
		return OC_ECORRUPT;
	if (rc == 0)
		n = _oc_get_le64(v.mv_data);
	else if (rc != MDB_NOTFOUND)
		return mdb_err(rc);
	if (delta < 0 && n < (uint64_t)-delta)
		return OC_ECORRUPT; /* freeing more than it holds */
	n += (uint64_t)delta;
	*live = n;
	if (n == 0 && off != e->ar_off) {
		err = rc == 0 ? mdb_err(mdb_del(e->w, e->db_arenas, &k, NULL)) : 0;
		return err ? err : free_put(e, off, ARENA);
	}
	_oc_put_le64(vb, n);
	v.mv_size = sizeof vb;
	v.mv_data = vb;
	return mdb_err(mdb_put(e->w, e->db_arenas, &k, &v, 0));
}

/* Write the stage to the data file. */
static int arena_flush(struct lmdb_eng *e)
{
	int err;

	if (!e->stage_len)
		return 0;
	err = write_extent(e, e->stage, e->stage_len, e->stage_off, e->ar_fresh);
	if (err)
		return err;
	e->wrote = true;
	e->stage_len = 0;
	return 0;
}

/* Take a new current arena, leaving (and, if nothing in it lives, freeing)
 * the full one. */
static int arena_take(struct lmdb_eng *e)
{
	uint64_t end0 = e->data_end, off, live;
	int err = arena_flush(e);

	if (!err && e->ar_off != INLINE) {
		off = e->ar_off;
		e->ar_off = INLINE; /* no longer current: may be freed */
		err = arena_live(e, off, 0, &live);
	}
	if (!err)
		err = alloc_extent(e, ARENA, &off);
	if (err)
		return err;
	e->ar_off = off;
	e->ar_pos = 0;
	e->ar_fresh = off >= end0;
	e->ar_dirty = true;
	return 0;
}

/* Store the delta run of n pages from src as the run of block (id, blk)
 * that starts at page start: its bytes into the stage (as one run or
 * more, where it crosses arenas), its records into the deltas database. */
static int delta_put(struct lmdb_eng *e, uint64_t id, uint64_t blk,
		     uint64_t start, uint64_t n, const unsigned char *src)
{
	unsigned char kb[24], vb[16];
	MDB_val k = {24, kb}, v = {16, vb};
	uint64_t m, off, live;
	int err = arena_load(e);

	while (!err && n) {
		if (e->ar_off == INLINE || e->ar_pos == ARENA) {
			err = arena_take(e);
			if (err)
				break;
		}
		if (!e->stage) {
			void *b = NULL;
			if (posix_memalign(&b, DIRECT_ALIGN, ARENA)) {
				err = -ENOMEM;
				break;
			}
			e->stage = b;
		}
		m = (ARENA - e->ar_pos) / PG;
		if (m > n)
			m = n;
		off = e->ar_off + e->ar_pos;
		if (!e->stage_len)
			e->stage_off = off;
		OC_BUG_ON(e->stage_off + e->stage_len != off);
		memcpy(e->stage + e->stage_len, src, m * PG);
		e->stage_len += m * PG;
		e->ar_pos += m * PG;
		e->ar_dirty = true;
		err = arena_live(e, e->ar_off, (int64_t)(m * PG), &live);
		if (err)
			break;
		delta_key(kb, id, blk, start);
		_oc_put_le64(vb, off);
		_oc_put_le64(vb + 8, m);
		err = mdb_err(mdb_put(e->w, e->db_deltas, &k, &v, 0));
		start += m;
		src += m * PG;
		n -= m;
	}
	return err;
}

/* Free the delta run of len bytes at off. */
static int delta_free(struct lmdb_eng *e, uint64_t off, uint64_t len)
{
	uint64_t live;
	int err = arena_load(e);

	if (!err && (off % PG || len % PG || !len ||
		     off % ARENA + len > ARENA))
		err = OC_ECORRUPT;
	return err ? err : arena_live(e, off - off % ARENA, -(int64_t)len, &live);
}

/* Make room in e->old for a block of blksize, and clear what describes
 * the block there: no marks, no delta runs. */
static int old_buffers(struct lmdb_eng *e, size_t blksize)
{
	uint64_t np = blksize / PG;

	if (e->old_size < blksize) {
		unsigned char *o = NULL, *m = malloc(np);
		/* aligned for O_DIRECT (write_extent) */
		if (posix_memalign((void **)&o, DIRECT_ALIGN, blksize))
			o = NULL;
		if (!o || !m) {
			free(o);
			free(m);
			return -ENOMEM;
		}
		free(e->old);
		free(e->marks);
		e->old = o;
		e->marks = m;
		e->old_size = blksize;
	}
	memset(e->marks, 0, np);
	e->runs.n = 0; /* they were another block's */
	return 0;
}

/* Read the stored version of block (id, blk), *old, as this transaction
 * sees it (that is our snapshot's, or there was a conflict) into e->old,
 * and set e->marks to MARK_OLD for its delta pages (listed in e->runs). */
static int read_old(struct lmdb_eng *e, uint64_t id, uint64_t blk,
		    size_t blksize, const struct blkrec *old)
{
	uint64_t nold;
	int err = old_buffers(e, blksize);

	if (err)
		return err;
	err = _oc_os_pread_all(e->datafd, e->old, blksize, old->off);
	if (err)
		return err == -EIO ? OC_ECORRUPT : err;
	if (old->ndelta) {
		err = deltas_apply(e, e->w, id, blk, blksize, e->old, true, &nold,
				   NULL, NULL);
		if (!err && nold != old->ndelta)
			err = OC_ECORRUPT;
	}
	return err;
}

/* Whether a granule of the core's (granule bytes, bit i of changed) that
 * meets bytes [off, off+len) of the block changed. */
static bool any_changed(uint32_t changed, size_t granule, size_t off, size_t len)
{
	for (size_t b = off / granule; b <= (off + len - 1) / granule; b++)
		if ((changed >> b) & 1)
			return true;
	return false;
}

/* Read into e->old the stored granules of *old that meet a changed granule
 * of the core's (these), or the others (!these). */
static int read_granules(struct lmdb_eng *e, size_t blksize, uint32_t changed,
			 size_t granule, const struct blkrec *old, bool these)
{
	unsigned n = granules_of(blksize), g;
	size_t gs = blksize / n;
	uint32_t mask = 0;

	for (g = 0; g < n; g++)
		if (any_changed(changed, granule, g * gs, gs) == these)
			mask |= (uint32_t)1 << g;
	return pread_granules(e, e->old, blksize, mask, old->off);
}

/* The new version of a block of which only the granules in changed may
 * differ from the stored one, *old, into e->old, with MARK_NEW in e->marks
 * for the pages that really changed, and its checksums into nr->gh.  When
 * old has granule checksums and no deltas, only the changed granules are
 * read and hashed (*partial: the rest of e->old is not filled); else the
 * whole block is. */
static int assemble_part(struct lmdb_eng *e, uint64_t id, uint64_t blk,
			 size_t blksize, const unsigned char *buf,
			 uint32_t changed, size_t granule,
			 const struct blkrec *old, struct blkrec *nr,
			 bool *partial)
{
	unsigned n = granules_of(blksize);
	size_t gs = blksize / n, p;
	uint32_t touched = 0;
	int err;

	*partial = old->ngran == n && !old->ndelta;
	if (*partial) {
		err = old_buffers(e, blksize);
		if (!err)
			err = read_granules(e, blksize, changed, granule, old, true);
	} else {
		err = read_old(e, id, blk, blksize, old);
	}
	if (err)
		return err;
	for (p = 0; p < blksize / PG; p++) {
		if (!any_changed(changed, granule, p * PG, PG) ||
		    !memcmp(buf + p * PG, e->old + p * PG, PG))
			continue;
		memcpy(e->old + p * PG, buf + p * PG, PG);
		e->marks[p] |= MARK_NEW;
		touched |= (uint32_t)1 << (p * PG / gs);
	}
	nr->ngran = n;
	if (*partial) {
		memcpy(nr->gh, old->gh, n * sizeof *nr->gh);
		hash_granules(e->old, blksize, touched, nr->gh);
	} else {
		hash_granules(e->old, blksize, ALL_GRANULES, nr->gh);
	}
	return 0;
}

/* Fill the granules of e->old that assemble_part did not read. */
static int complete_part(struct lmdb_eng *e, size_t blksize, uint32_t changed,
			 size_t granule, const struct blkrec *old)
{
	return read_granules(e, blksize, changed, granule, old, false);
}

/* Whether the block whose granule checksums are gh may be all zeros. */
static bool maybe_zero(struct lmdb_eng *e, size_t blksize, const uint64_t *gh)
{
	unsigned n = granules_of(blksize), g;
	size_t gs = blksize / n;

	if (e->zero_gs != gs) {
		unsigned char *z = calloc(1, gs);
		if (!z)
			return true; /* the caller checks the bytes */
		e->zero_gh = _oc_xxh3(z, gs);
		e->zero_gs = gs;
		free(z);
	}
	for (g = 0; g < n; g++)
		if (gh[g] != e->zero_gh)
			return false;
	return true;
}

/* Store block (id, blk), which has the stored version *old, as page deltas
 * if few enough pages change: *whole is then false and the block record is
 * updated; else *whole is true and nothing is written. */
static int store_delta(struct lmdb_eng *e, uint64_t id, uint64_t blk,
		       size_t blksize, const unsigned char *buf,
		       const struct blkrec *old, bool marked, struct blkrec *r,
		       bool *whole)
{
	uint64_t np = blksize / PG, nu = 0, written = 0, p, s;
	unsigned char kb[24];
	MDB_val k = {24, kb};
	int err;

	*whole = true;
	if (np < 4)
		return 0; /* a quarter of the block is less than a page */
	if (!marked) {
		err = read_old(e, id, blk, blksize, old);
		if (err)
			return err;
		for (p = 0; p < np; p++)
			if (memcmp(buf + p * PG, e->old + p * PG, PG))
				e->marks[p] |= MARK_NEW;
	}
	for (p = 0; p < np; p++)
		nu += e->marks[p] != 0;
	if (nu * 4 > np)
		return 0; /* fold */

	/* Rewrite each maximal run of delta pages that has a changed page,
	 * replacing the stored runs inside it. */
	for (p = 0; p < np;) {
		bool changed = false;
		if (!e->marks[p]) {
			p++;
			continue;
		}
		for (s = p; p < np && e->marks[p]; p++)
			changed |= e->marks[p] & MARK_NEW;
		if (!changed)
			continue;
		for (size_t i = 0; i < e->runs.n; i++) {
			const struct run *o = &e->runs.v[i];
			if (o->start < s || o->start >= p)
				continue;
			err = o->off == INLINE ? 0 : delta_free(e, o->off, o->n * PG);
			delta_key(kb, id, blk, o->start);
			if (!err)
				err = mdb_err(mdb_del(e->w, e->db_deltas, &k, NULL));
			if (err)
				return err;
		}
		err = delta_put(e, id, blk, s, p - s, buf + s * PG);
		if (err)
			return err;
		written += p - s;
	}
	r->off = old->off;
	r->version = e->w_id;
	r->ndelta = nu;
	err = blk_put(e, id, blk, r);
	if (err)
		return err;
	__atomic_add_fetch(&e->n_dpages, written, __ATOMIC_RELAXED);
	__atomic_add_fetch(&e->n_bytes, written * PG, __ATOMIC_RELAXED);
	*whole = false;
	return 0;
}

/* Store a block version; with granule != 0, only the granules in changed
 * may differ from the stored version (txn_block_part), and only those are
 * read from buf. */
static int txn_block(struct lmdb_eng *e, uint64_t id, uint64_t blk,
		     size_t blksize, const void *buf, uint32_t changed,
		     size_t granule)
{
	struct blkrec old, r;
	unsigned char kb[16];
	MDB_val k = {16, kb};
	bool whole = true, partial = false, zero;
	uint64_t end0;
	int had, err;

	OC_BUG_ON(!e->w);
	if (changed_by_others(e, id, blk))
		return OC_ECONFLICT;
	err = still_there(e, id);
	if (err)
		return err;
	had = blk_get(e, e->w, id, blk, &old);
	if (had < 0)
		return had;
	had = !had;
	blk_key(kb, id, blk);
	if (granule && had && blksize / PG >= 4) {
		/* The new version is assembled in e->old from the stored one
		 * and the changed granules. */
		err = assemble_part(e, id, blk, blksize, buf, changed, granule,
				    &old, &r, &partial);
		if (err)
			return err;
		buf = e->old;
		zero = maybe_zero(e, blksize, r.gh);
		if (zero && partial) {
			err = complete_part(e, blksize, changed, granule, &old);
			if (err)
				return err;
			partial = false;
		}
		zero = zero && _oc_all_zero(buf, blksize);
	} else {
		granule = 0;
		zero = _oc_all_zero(buf, blksize);
		if (!zero) {
			r.ngran = granules_of(blksize);
			hash_granules(buf, blksize, ALL_GRANULES, r.gh);
		}
	}
	if (zero) {
		CNT(e, n_zeroed);
		if (!had)
			return 0;
		err = mdb_err(mdb_del(e->w, e->db_blocks, &k, NULL));
	} else {
		if (had) {
			err = store_delta(e, id, blk, blksize, buf, &old,
					  granule != 0, &r, &whole);
			if (err)
				return err;
		}
		if (!whole)
			return log_put(e, id, blk);
		if (partial) {
			/* Folded: the whole block is written. */
			err = complete_part(e, blksize, changed, granule, &old);
			if (err)
				return err;
		}
		end0 = e->data_end;
		err = alloc_extent(e, blksize, &r.off);
		if (err)
			return err;
		err = write_extent(e, buf, blksize, r.off, r.off >= end0);
		if (err)
			return err;
		e->wrote = true;
		__atomic_add_fetch(&e->n_bytes, blksize, __ATOMIC_RELAXED);
		CNT(e, n_stored);
		if (had)
			CNT(e, n_folded);
		r.version = e->w_id;
		r.ndelta = 0;
		err = blk_put(e, id, blk, &r);
	}
	if (!err && had && old.ndelta)
		err = deltas_drop(e, id, blk, false);
	if (!err && had)
		err = free_put(e, old.off, blksize);
	if (!err)
		err = log_put(e, id, blk);
	return err;
}

static int eng_txn_block(void *p, uint64_t id, uint64_t blk, size_t blksize,
			 const void *buf)
{
	return txn_block(p, id, blk, blksize, buf, 0, 0);
}

static int eng_txn_truncate(void *p, uint64_t id, uint64_t nblk,
			    size_t blksize)
{
	struct lmdb_eng *e = p;
	int err;

	OC_BUG_ON(!e->w);
	/* any change from nblk on, deletes included, as for txn_block */
	if (_oc_se_changed_from(e->changed, e->nchanged, id, nblk, false))
		return OC_ECONFLICT;
	err = still_there(e, id);
	return err ? err : drop_blocks(e, id, nblk, blksize);
}

static int eng_txn_block_part(void *p, uint64_t id, uint64_t blk,
			      size_t blksize, const void *buf, uint32_t changed,
			      size_t granule)
{
	if (!granule || granule % PG || blksize % granule ||
	    blksize / granule > MAXGRAN)
		granule = 0; /* not what the core gives: take the whole block */
	return txn_block(p, id, blk, blksize, buf, changed, granule);
}

static int eng_txn_commit(void *p)
{
	struct lmdb_eng *e = p;
	int err = 0, rc;

	OC_BUG_ON(!e->w);
	err = arena_flush(e);
	if (!err)
		err = arena_save(e);
	if (!err && e->wrote && fdatasync(e->datafd))
		err = -errno;
	if (!err)
		err = metarec_put(e, e->w, e->next_id, e->data_end);
	if (err) {
		eng_txn_abort(e);
		return err;
	}
	rc = mdb_txn_commit(e->w); /* durable: LMDB syncs on commit */
	e->w = NULL;
	if (rc) {
		eng_txn_abort(e);
		return mdb_err(rc);
	}
	e->last_commit = e->w_id;
	e->data_size = e->data_end;
	eng_txn_abort(e); /* frees the change set */
	return 0;
}

/* ---- snapshot renewal ------------------------------------------------------ */

static void eng_snapshot_release(void *p)
{
	struct lmdb_eng *e = p;

	if (!e->held)
		return;
	mdb_txn_reset(e->held); /* its reader slot: space it sees may go */
	if (e->spare)
		mdb_txn_abort(e->held);
	else
		e->spare = e->held;
	e->held = NULL;
}

static int eng_snapshot_renew(void *p,
			      void (*changed)(void *arg, uint64_t id, uint64_t blk),
			      void *arg)
{
	struct lmdb_eng *e = p;
	MDB_txn *n = e->spare, *old;
	MDB_cursor *c;
	unsigned char kb[24];
	MDB_val k = {24, kb}, v;
	uint64_t new_id, next_id, data_end;
	uint32_t version;
	int rc, err;

	e->spare = NULL;
	rc = n ? mdb_txn_renew(n) : mdb_txn_begin(e->env, NULL, MDB_RDONLY, &n);
	if (rc) {
		if (n && e->spare == NULL)
			mdb_txn_abort(n);
		return mdb_err(rc);
	}
	new_id = mdb_txn_id(n);
	err = metarec_get(e, n, &version, &next_id, &data_end);
	if (!err && version > FORMAT_VERSION)
		err = OC_EVERSION; /* upgraded by a newer library meanwhile */
	if (err) {
		mdb_txn_abort(n);
		return err;
	}
	rc = mdb_cursor_open(n, e->db_log, &c);
	if (rc) {
		mdb_txn_abort(n);
		return mdb_err(rc);
	}
	_oc_put_be64(kb, e->snap_id + 1);
	memset(kb + 8, 0, 16);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		uint64_t t = _oc_get_be64(k.mv_data);
		if (t > new_id)
			break;
		if (t != e->last_commit)
			changed(arg, _oc_get_be64((unsigned char *)k.mv_data + 8),
				_oc_get_be64((unsigned char *)k.mv_data + 16));
	}
	mdb_cursor_close(c);
	if (rc && rc != MDB_NOTFOUND) {
		mdb_txn_abort(n);
		return mdb_err(rc);
	}
	pthread_mutex_lock(&e->mu);
	old = e->snap;
	e->snap = n;
	e->snap_id = new_id;
	pthread_mutex_unlock(&e->mu);
	eng_snapshot_release(e); /* one older still held */
	e->held = old;           /* until snapshot_release */
	return 0;
}

static void eng_stats(void *p, oc_store_stats_t *s)
{
	struct lmdb_eng *e = p;

#define GET(f) __atomic_load_n(&e->f, __ATOMIC_RELAXED)
	s->blocks_stored = GET(n_stored);
	s->blocks_zeroed = GET(n_zeroed);
	s->bytes_written = GET(n_bytes);
	s->loads = GET(n_loads);
	s->maps = GET(n_maps);
	s->holes = GET(n_holes);
	s->verified = GET(n_verified);
	s->corrupt = GET(n_corrupt);
	s->delta_pages_written = GET(n_dpages);
	s->blocks_folded = GET(n_folded);
#undef GET
	s->snapshot = e->snap_id;
	s->data_size = e->data_size;
}

const oc_store_engine_ops_t _oc_store_lmdb = {
	.version = OC_STORE_ENGINE_VERSION,
	.name = "lmdb",
	.open = eng_open,
	.close = eng_close,
	.array_get = eng_array_get,
	.array_name = eng_array_name,
	.array_list = eng_array_list,
	.blk_map = eng_blk_map,
	.blk_map_patched = eng_blk_map_patched,
	.blk_load = eng_blk_load,
	.txn_begin = eng_txn_begin,
	.txn_array = eng_txn_array,
	.txn_block = eng_txn_block,
	.txn_commit = eng_txn_commit,
	.txn_abort = eng_txn_abort,
	.snapshot_renew = eng_snapshot_renew,
	.snapshot_release = eng_snapshot_release,
	.stats = eng_stats,
	.txn_block_part = eng_txn_block_part,
	.txn_truncate = eng_txn_truncate,
};
