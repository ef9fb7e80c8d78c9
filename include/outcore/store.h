/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * store.h: transactional stores: many named persistent arrays with atomic
 * commit, abort, snapshot isolation and conflict detection.
 *
 * A store holds named arrays.  Each array has metadata (oc_array_meta_t:
 * shape, NumPy dtype string, order, block size, user attributes as JSON
 * text) and blocks of data.  Blocks never written read as zeros and take
 * no space; a block that is all zeros at commit is deleted.
 *
 * Transactions.  A transaction begins when the store is opened and again
 * after every commit and abort.  Everything it reads (metadata, and every
 * block, whenever it is first touched) comes from one committed state, the
 * snapshot, even while other processes commit.  Changes are local until
 * commit: block data lives in the dirty pages of the arrays' file handles,
 * metadata changes in the store object.
 *
 *   commit   stores every dirty page of every open array and every metadata
 *            change (create, delete, meta_set) in one engine transaction:
 *            atomic and durable (synced) when it returns 0.  Only then are
 *            the pages marked stored.  If another process committed a
 *            change to a block or to the metadata of an array that this
 *            transaction also changed, after this transaction's snapshot
 *            began, commit fails with OC_ECONFLICT and writes nothing.
 *   failure  when commit fails for any reason nothing is written, the dirty
 *            pages and metadata changes are kept, and the store is in the
 *            failed state: every call that reads or changes it returns
 *            OC_EFAILED until oc_store_abort() or a successful retry of
 *            oc_store_commit().  One exception: the transaction is
 *            durable but the next snapshot could not be taken (an engine
 *            or server error right after the commit, or OC_EVERSION).
 *            Commit then returns that error and leaves the store failed
 *            with no local change left: abort (or a retry of commit,
 *            which writes nothing again) takes the snapshot.
 *   abort    drops every local change (dirty pages and metadata).
 *   after    commit or abort, a new snapshot begins; blocks that other
 *            processes committed since the old snapshot are dropped from the
 *            open handles (oc_fileh_invalidate), every other cached page
 *            stays.
 *
 * Integrity.  Every stored block carries a checksum, verified the first
 * time the block is mapped or loaded in the process (OC_STORE_NOVERIFY
 * turns this off).  A corrupt block makes its load fail with OC_ECORRUPT
 * after a message on stderr naming the array and the block; inside a page
 * fault the core then stops the process as for any load error (see
 * virtmem.h; use oc_fileh_load or oc_prefault to get the error back).
 *
 * Engines.  The store format and engine are chosen by oc_store_open(): a
 * postgresql:// URL names a PostgreSQL server (store_pg.c), any other path
 * a directory.  The directory engine (LMDB) keeps there index.mdb
 * (an LMDB database: arrays, block index, free space, change log, where
 * page deltas are, format version) and data (block extents, page-aligned,
 * mapped with no copy, and the page deltas).  A block of which few 4 KiB
 * pages changed is stored as those pages (deltas) over its old extent; such
 * a block is served by copying (loadblk) until enough changes accumulate
 * and it is written whole again to a fresh extent ("folded").  A read-only
 * open of a store the user may not write (no lock file can be made) reads
 * without an entry in LMDB's reader table: writers in other processes may
 * then reuse extents its snapshot still shows, which it reports as corrupt
 * blocks (OC_ECORRUPT; without verification it may read the newer data).
 * Readers that need isolation from concurrent writers need write access
 * to the lock file.
 *
 * Processes and threads.  A process opens a given store at most once at a
 * time (a second open gives -EBUSY).  A child made by fork() must not use
 * its parent's store (calls return OC_EFORKED): it opens the store anew.
 * All calls on one store must come from one thread at a time (the caller
 * serialises them); the arrays' memory may be touched from any thread
 * meanwhile, except during oc_store_commit, where the rule of virtmem.h
 * holds: pages must not be modified between the store and the mark of a
 * writeout.  No call is async-signal-safe.  Every call returns -EINVAL
 * for a NULL store or a NULL pointer it needs (oc_store_close accepts
 * NULL); the lists below give the other codes.  The Python binding releases
 * the GIL around oc_store_commit.
 */
#ifndef OUTCORE_STORE_H
#define OUTCORE_STORE_H

#include <outcore/common.h>
#include <outcore/ram.h>
#include <outcore/virtmem.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct oc_store oc_store_t;

#define OC_STORE_RDONLY 0x1   /* open read-only: every change gives OC_EREADONLY */
#define OC_STORE_CREATE 0x2   /* create the store if it does not exist */
#define OC_STORE_NOVERIFY 0x4 /* do not verify block checksums on first use */
#define OC_STORE_NOMAP 0x8    /* never map blocks (always copy with loadblk) */

#define OC_STORE_MAXDIM 32
#define OC_STORE_NAME_MAX 255    /* bytes of an array name */
#define OC_STORE_DTYPE_MAX 65536 /* bytes of a dtype string */
#define OC_STORE_ATTRS_MAX (1u << 20) /* bytes of the attributes text */
#define OC_STORE_BLKSIZE_MAX ((uint64_t)1 << 30) /* bytes of a block */

/* Metadata of an array.  The store does not interpret dtype or attrs: the
 * binding does (dtype: NumPy's dtype.str, e.g. "<f8", or a structured
 * dtype's descr as JSON text; attrs: a JSON object as text).
 * Passed in (create, meta_set): the caller owns the strings.
 * Filled by oc_store_meta_get: the strings are malloc'd for the caller,
 * who frees them with oc_array_meta_clear(). */
typedef struct oc_array_meta {
	unsigned ndim;                     /* 0..OC_STORE_MAXDIM */
	uint64_t shape[OC_STORE_MAXDIM];   /* their product <= INT64_MAX */
	char *dtype;                       /* non-empty, NUL-terminated */
	char order;                        /* 'C' or 'F' */
	uint64_t blksize;                  /* power of two, 4096 ..
					    * OC_STORE_BLKSIZE_MAX; 0: the
					    * store's RAM page size */
	char *attrs;                       /* NULL: "{}" */
} oc_array_meta_t;

/* Free the strings of a meta filled by oc_store_meta_get and zero them. */
OC_API void oc_array_meta_clear(oc_array_meta_t *meta);

/* Open (or with OC_STORE_CREATE create) the store at path (a directory, or
 * a postgresql:// URL: see store_pg.c for what it holds).
 * ram: the RAM of the arrays' handles (NULL: the default RAM of 2 MiB
 * pages); the store holds a reference to it until oc_store_close()
 * (oc_ram_close gives -EBUSY meanwhile).
 * Returns 0 and *out, or:
 *   -EINVAL      bad flags (RDONLY with CREATE, unknown bits), NULL args;
 *   OC_ENOTSTORE path is not an outcore store (no index, or an index that
 *                is not ours), or is missing without OC_STORE_CREATE
 *                (-ENOENT when path itself does not exist); with
 *                OC_STORE_CREATE, a directory that holds other files (a
 *                store is made only in a new or empty directory);
 *   OC_EVERSION  written by a newer format version;
 *   OC_ECORRUPT  its data file is missing (a store with data: one without
 *                gets a new, empty data file when opened writable);
 *   -EBUSY       this process has the store open already (a directory:
 *                the same one by any path; a server: the same URL, its
 *                scheme postgresql:// or postgres://);
 *   OC_ESTOREIO  an engine error; -errno from the file system.
 * The caller owns the store and closes it with oc_store_close(). */
OC_API int oc_store_open(oc_store_t **out, const char *path, int flags,
			 oc_ram_t *ram);

/* Close the store: local changes that were not committed are dropped.
 * Returns 0, or -EBUSY if an array handle still has mappings (the store
 * stays open and usable, every handle and change as it was; unmap first).
 * NULL is accepted.  In a forked child it only forgets the object. */
OC_API int oc_store_close(oc_store_t *st);

/* Create array name with meta in the current transaction.  Returns 0, or:
 *   -EINVAL       bad name (empty, too long, control characters) or meta
 *                 (ndim, shape, dtype, order, blksize, attrs size);
 *   OC_EEXIST     the name exists in this transaction;
 *   OC_EREADONLY, OC_EFAILED, OC_EFORKED, -ENOMEM. */
OC_API int oc_store_create(oc_store_t *st, const char *name,
			   const oc_array_meta_t *meta);

/* Delete array name in the current transaction.  Its handle (if any) stays
 * valid until the store is closed and reads as zeros once the delete is
 * committed; the name may be created again.  Returns 0, OC_ENOTFOUND,
 * OC_EREADONLY, OC_EFAILED, OC_EFORKED. */
OC_API int oc_store_delete(oc_store_t *st, const char *name);

/* Metadata of name as this transaction sees it (into *meta, strings
 * malloc'd: see oc_array_meta_clear).  Returns 0, OC_ENOTFOUND,
 * OC_EFAILED, OC_EFORKED, -ENOMEM. */
OC_API int oc_store_meta_get(oc_store_t *st, const char *name,
			     oc_array_meta_t *meta);

/* Change the metadata of name (resize, attrs, ...) in this transaction.
 * blksize cannot change (0 keeps it).  Blocks past a smaller shape are not
 * dropped: the binding clears them if it wants them gone.  Returns 0,
 * -EINVAL (as for create, or a blksize change), OC_ENOTFOUND, OC_EREADONLY,
 * OC_EFAILED, OC_EFORKED, -ENOMEM. */
OC_API int oc_store_meta_set(oc_store_t *st, const char *name,
			     const oc_array_meta_t *meta);

/* Cut array name short at commit: every block from nblk on is deleted
 * from the store (and reads as zeros from then on), and what this
 * transaction wrote there is dropped.  For an array whose size shrank
 * (the store does not know the item size: dtype is the caller's text):
 * zero the rest of the block that holds the new end first.  It costs
 * neither RAM nor reads, however much is cut.  Until the commit, cached
 * pages there still show what they showed.  The last call of the
 * transaction counts (nblk UINT64_MAX: no cut); abort forgets it, a
 * failed commit keeps it for the retry.  Returns 0, or OC_ENOTFOUND,
 * OC_EREADONLY, OC_EFAILED, OC_EFORKED, -ENOMEM, OC_ESTOREIO; a block
 * there that another process changed since the snapshot makes the commit
 * fail with OC_ECONFLICT. */
OC_API int oc_store_truncate(oc_store_t *st, const char *name, uint64_t nblk);

/* Call cb(name, arg) for every array of this transaction, in byte order of
 * the names.  A nonzero return of cb stops the walk and is returned.
 * cb must not change the store.  Returns 0, cb's value, OC_EFAILED,
 * OC_EFORKED, -ENOMEM, OC_ESTOREIO. */
OC_API int oc_store_names(oc_store_t *st,
			  int (*cb)(const char *name, void *arg), void *arg);

/* The file handle of array name, opened on first use on the store's RAM.
 * The store owns it (do not close it): it lives until oc_store_close(),
 * across commits and aborts, even if the array is deleted (it then reads
 * as zeros, and what is written into it is dropped at the next commit or
 * abort).  Map it with
 * oc_fileh_mmap; block b of the array is block b of the handle.  Writeout
 * happens only through oc_store_commit (a writeout of the handle by hand
 * fails with -EPERM).  Returns 0 and *out, or OC_ENOTFOUND, OC_EBLKSIZE
 * (the array's block size differs from the RAM's page size), OC_EFAILED,
 * OC_EFORKED, -ENOMEM. */
OC_API int oc_store_array_fileh(oc_store_t *st, const char *name,
				oc_fileh_t **out);

/* Commit the transaction (see the overview).  Returns 0, or:
 *   OC_ECONFLICT  another process changed the same block or metadata;
 *   OC_EREADONLY  the store is read-only and there are changes (with no
 *                 change, commit of a read-only store just starts a new
 *                 snapshot and returns 0);
 *   OC_EVERSION   a newer version of the library upgraded the store's
 *                 format since it was opened (close it and use that
 *                 version: older ones cannot read what it writes);
 *   OC_ESTOREIO, -errno (-ENOSPC, -EIO, ...): storage errors;
 *   -EBUSY        a writeout of an array handle is running elsewhere;
 *   OC_EFORKED.
 * On any error but OC_EFORKED the store is in the failed state. */
OC_API int oc_store_commit(oc_store_t *st);

/* Abort the transaction: drop every local change and start a new
 * snapshot.  Clears the failed state.  Returns 0, or OC_ESTOREIO (or
 * OC_EVERSION) when no new snapshot could be taken (the store is then
 * failed), -EBUSY during a writeout (nothing dropped), -EINVAL (NULL),
 * OC_EFORKED. */
OC_API int oc_store_abort(oc_store_t *st);

/* Counters of one store (they only grow) and gauges. */
typedef struct oc_store_stats {
	uint64_t commits;       /* successful commits */
	uint64_t aborts;        /* aborts */
	uint64_t failed_commits;/* commits that failed (conflicts included) */
	uint64_t conflicts;     /* commits that failed with OC_ECONFLICT */
	uint64_t blocks_stored; /* block versions written whole to the data file */
	uint64_t blocks_zeroed; /* all-zero blocks deleted instead of stored */
	uint64_t bytes_written; /* data bytes written: whole blocks and delta
				 * pages, to the data file */
	uint64_t loads;         /* blocks copied by loadblk */
	uint64_t maps;          /* blocks handed out for mapping */
	uint64_t holes;         /* blocks served as zeros (never stored) */
	uint64_t verified;      /* checksums verified */
	uint64_t corrupt;       /* checksum mismatches found */
	uint64_t invalidated;   /* blocks invalidated for foreign commits */
	uint64_t snapshot;      /* gauge: the engine's id of the snapshot */
	uint64_t data_size;     /* gauge: bytes of the data file in use */
	uint64_t narrays_open;  /* gauge: arrays with an open handle */
	uint64_t delta_pages_written; /* 4 KiB pages written as page deltas
				       * (a run of deltas that gains a page is
				       * rewritten whole, so this counts its
				       * old pages again) */
	uint64_t blocks_folded; /* stored blocks written whole again because
				 * their changed and pending delta pages were
				 * more than a quarter of the block */
	uint64_t round_trips;   /* requests that waited for the server: each
				 * exchange in which the engine waited for an
				 * answer with nothing else of its own in
				 * flight (a pipeline of read-ahead requests
				 * counts one; connecting is not counted).
				 * 0 for the LMDB store */
} oc_store_stats_t;

/* Fill *stats.  Returns 0, -EINVAL (NULL argument), OC_EFORKED. */
OC_API int oc_store_stats(oc_store_t *st, oc_store_stats_t *stats);

#ifdef __cplusplus
}
#endif
#endif
