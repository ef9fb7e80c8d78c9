/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * store_engine.h: the interface between the generic store layer (store.c)
 * and a storage engine (store_lmdb.c, store_pg.c).
 *
 * The generic layer owns the arrays' files and handles, the local
 * metadata changes and the transaction logic; an engine owns the persistent
 * state: a snapshot to read from, and a write transaction that gathers
 * metadata changes and block versions and commits them atomically.
 *
 * Arrays are known to the engine by a uint64 id (never 0) it assigns when
 * an array's creation commits; ids are never reused.  A block number
 * OC_SE_META in a change report means "the array's metadata changed"
 * (created, deleted or meta set).
 *
 * Sequence of a commit (all in the committing thread):
 *     txn_begin, txn_array* (metadata), txn_block* (data, from the
 *     handles' writeout), txn_commit            -> 0: durable
 *     any error on the way: txn_abort           -> nothing written
 * then snapshot_renew (also after an abort).  Conflicts are reported by
 * txn_array/txn_block/txn_commit as OC_ECONFLICT.
 *
 * Threads: snapshot reads (array_get, array_list, blk_map, blk_load) may
 * run in any thread at once, also inside the SIGSEGV handler (blk_map,
 * blk_load), and concurrently with a write transaction; the engine locks
 * what it must.  Everything else is called by one thread at a time.
 *
 * Ops table: version first, methods only appended.
 */
#ifndef OUTCORE_STORE_ENGINE_H
#define OUTCORE_STORE_ENGINE_H

#include <outcore/store.h>

#include <stdbool.h>

#define OC_STORE_ENGINE_VERSION 1
#define OC_SE_META UINT64_MAX

/* One metadata change handed to txn_array. */
enum oc_se_change {
	OC_SE_CREATE = 1, /* name, meta; the engine fills *new_id */
	OC_SE_DELETE = 2, /* id (committed array): drop it and its blocks */
	OC_SE_SET = 3,    /* id, meta */
};

typedef struct oc_store_engine_ops {
	unsigned version; /* OC_STORE_ENGINE_VERSION */
	const char *name;

	/* Open or create the store at path (flags: OC_STORE_*) and take the
	 * first snapshot.  Returns 0 and *eng, OC_ENOTSTORE, OC_EVERSION,
	 * -errno, OC_ESTOREIO. */
	int (*open)(void **eng, const char *path, int flags);
	void (*close)(void *eng);

	/* ---- snapshot reads ---- */
	/* Array by name: id and meta (strings malloc'd).  OC_ENOTFOUND, or
	 * an engine error (which store.c does not take for "not found"). */
	int (*array_get)(void *eng, const char *name, uint64_t *id,
			 oc_array_meta_t *meta);
	/* Name of array id into a malloc'd string.  OC_ENOTFOUND. */
	int (*array_name)(void *eng, uint64_t id, char **name);
	/* Every array name, in byte order. */
	int (*array_list)(void *eng, int (*cb)(const char *name, void *arg),
			  void *arg);
	/* As oc_file_ops_t mapblk / loadblk for block blk of array id:
	 * 0 with (fd, off), OC_NOMAP, OC_ZEROBLK (hole), OC_ECORRUPT.
	 * verify: check the checksum unless already checked in this process. */
	int (*blk_map)(void *eng, uint64_t id, uint64_t blk, size_t blksize,
		       int verify, int *fd, uint64_t *off);
	int (*blk_load)(void *eng, uint64_t id, uint64_t blk, size_t blksize,
			int verify, void *buf);

	/* ---- write transaction ---- */
	int (*txn_begin)(void *eng);
	int (*txn_array)(void *eng, enum oc_se_change what, uint64_t id,
			 const char *name, const oc_array_meta_t *meta,
			 uint64_t *new_id);
	/* Store a block version (all-zero: delete the block). */
	int (*txn_block)(void *eng, uint64_t id, uint64_t blk, size_t blksize,
			 const void *buf);
	int (*txn_commit)(void *eng);
	void (*txn_abort)(void *eng);

	/* Start a new snapshot; call changed(arg, id, blk) for every block
	 * (or OC_SE_META) that another process committed between the old
	 * snapshot and the new one, while the old snapshot is still held. */
	int (*snapshot_renew)(void *eng,
			      void (*changed)(void *arg, uint64_t id, uint64_t blk),
			      void *arg);

	/* Engine counters into the matching fields of *s. */
	void (*stats)(void *eng, oc_store_stats_t *s);

	/* Optional: txn_block for a block of which only the granules set in
	 * changed (granule bytes each) may differ from the version this
	 * transaction's snapshot has (see storeblk_part in file.h); the
	 * rest of buf should not be read.  NULL: txn_block is used. */
	int (*txn_block_part)(void *eng, uint64_t id, uint64_t blk,
			      size_t blksize, const void *buf, uint32_t changed,
			      size_t granule);

	/* Optional: as oc_file_ops_t mapblk_patched (a snapshot read): a
	 * block stored as an extent plus changes (page deltas) as its base
	 * (fd, off) and the changed granules (granule bytes each) in buf and
	 * *changed.  OC_NOMAP: use blk_load.  NULL: blk_load is used. */
	int (*blk_map_patched)(void *eng, uint64_t id, uint64_t blk,
			       size_t blksize, int verify, size_t granule,
			       int *fd, uint64_t *off, void *buf,
			       uint32_t *changed);

	/* In the write transaction: delete every stored block of array id
	 * from block nblk on (an array cut short), as txn_block of zeros
	 * would for each, conflicts included, in a time that grows with the
	 * blocks stored there, not with their numbers. */
	int (*txn_truncate)(void *eng, uint64_t id, uint64_t nblk,
			    size_t blksize);

	/* Optional: let go of the snapshot the last snapshot_renew replaced,
	 * which it keeps until then (or until the next renewal): what is
	 * still mapped from it (the base of a patched page) stays valid, its
	 * space not reused, while a commit drops those pages. */
	void (*snapshot_release)(void *eng);
} oc_store_engine_ops_t;

extern const oc_store_engine_ops_t _oc_store_lmdb;
extern const oc_store_engine_ops_t _oc_store_pg;


/* ---- helpers the engines share (store_codec.c) ---------------------------- */

/* Fixed-width integers in big-endian (keys: they sort as numbers) and
 * little-endian (record fields) byte order. */
static inline void _oc_put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static inline uint64_t _oc_get_be64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static inline void _oc_put_be32(unsigned char *p, uint32_t v)
{
	for (int i = 3; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static inline uint32_t _oc_get_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static inline void _oc_put_le64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++, v >>= 8)
		p[i] = (unsigned char)v;
}

static inline uint64_t _oc_get_le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline void _oc_put_le32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++, v >>= 8)
		p[i] = (unsigned char)v;
}

static inline uint32_t _oc_get_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* The array record every engine stores: id, version, ndim, order,
 * blksize, shape, dtype, attrs.  encode: *out is malloc'd for the caller;
 * returns 0 or -ENOMEM.  decode: id, version and m may each be NULL; the
 * strings of m are malloc'd (oc_array_meta_clear); returns 0, OC_ECORRUPT
 * or -ENOMEM. */
int _oc_se_meta_encode(uint64_t id, uint64_t version, const oc_array_meta_t *m,
		       unsigned char **out, size_t *len);
int _oc_se_meta_decode(const void *rec, size_t size, uint64_t *id,
		       uint64_t *version, oc_array_meta_t *m);

/* A block (or, with blk OC_SE_META, the metadata) of an array that other
 * processes changed since a snapshot; engines keep them sorted with
 * _oc_se_change_cmp and look them up with _oc_se_changed. */
struct oc_se_blkref {
	uint64_t id, blk;
};
int _oc_se_change_cmp(const void *a, const void *b);
bool _oc_se_changed(const struct oc_se_blkref *set, size_t n, uint64_t id,
		    uint64_t blk);
/* Whether the set holds a block of array id from blk on (its metadata,
 * OC_SE_META, included only when meta is set). */
bool _oc_se_changed_from(const struct oc_se_blkref *set, size_t n,
			 uint64_t id, uint64_t blk, bool meta);

#endif
