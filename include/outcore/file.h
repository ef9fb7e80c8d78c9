/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * file.h: the file interface: where block data comes from and goes to.
 *
 * A file is a user-defined array of fixed-size blocks (the block size is a
 * power of two >= 4096 and must equal the page size of the RAM it is opened
 * with).  The core never reads or writes storage itself: it calls the ops
 * below.  A block that was never stored must read as zeros.
 *
 * Ops table.  It starts with a version field and only ever grows at the
 * end: a file built against version 1 keeps working with later libraries.
 *
 * Calling context of every op:
 *   - never with the core lock held, so an op may take its own locks and
 *     may call oc_fileh_invalidate() or other core functions on *other*
 *     handles, and a crossing of a backend lock with an invalidate from
 *     another thread cannot deadlock;
 *   - loadblk may run inside the SIGSEGV handler of the faulting thread:
 *     it must not touch unloaded memory of the handle it is loading for
 *     (the core detects that and stops the process with a message, since it
 *     can never complete), and should not rely on async-signal-unsafe code
 *     being interrupted at a safe point (page faults only happen where the
 *     program touches managed memory, so in practice this is safe as long
 *     as the program does not hold a lock loadblk needs while it touches
 *     managed memory);
 *   - several threads may run loadblk on different blocks of one file at
 *     once; one block is loaded by one thread at a time.
 *
 * Errors: ops return 0 or a negative code (-errno or OC_E*).
 */
#ifndef OUTCORE_FILE_H
#define OUTCORE_FILE_H

#include <outcore/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct oc_file oc_file_t;

#define OC_FILE_OPS_VERSION 3

/* Returned by mapblk for a block with no mappable base: load it instead. */
#define OC_NOMAP 1
/* Returned by mapblk for a block that reads as zeros (a hole): the core
 * serves it from zeroed RAM without calling loadblk. */
#define OC_ZEROBLK 2

typedef struct oc_file_ops {
	unsigned version; /* OC_FILE_OPS_VERSION (3); 1 and 2 are accepted */

	/* Fill buf (blksize bytes, writable, page-aligned) with block blk.
	 * Required. */
	int (*loadblk)(oc_file_t *file, uint64_t blk, void *buf);

	/* Store block blk from buf (blksize bytes, read-only, page-aligned).
	 * The data must not be reachable through loadblk/mapblk of *other*
	 * handles before the caller's writeout says so only if the backend is
	 * transactional; plain backends may make it visible at once.  May be
	 * NULL for a read-only file (writeout then fails with -EROFS). */
	int (*storeblk)(oc_file_t *file, uint64_t blk, const void *buf);

	/* Called once when the last reference to the file is dropped (see
	 * oc_file_put); frees what the file owns, including itself if it was
	 * allocated.  May be NULL. */
	void (*release)(oc_file_t *file);

	/* Optional: the mapped base layer (zero copy).  For a clean block,
	 * return 0 and a descriptor and a page-aligned offset (a multiple of
	 * blksize is best: 2 MiB-aligned offsets let the kernel map large
	 * folios) from which the block's blksize bytes can be mapped
	 * read-only with MAP_SHARED; return OC_NOMAP when this block must be
	 * loaded with loadblk instead (a hole, a partial last block, data that
	 * must be assembled); OC_ZEROBLK when the block reads as zeros (it
	 * is then served from zeroed RAM, with no loadblk and no copy); or a
	 * negative error.  The descriptor stays owned
	 * by the file and must stay open while the file lives; the mapped bytes
	 * must not change while the block is mapped, except through the file's
	 * own storeblk of that same block.  NULL: every block is loaded. */
	int (*mapblk)(oc_file_t *file, uint64_t blk, int *fd, uint64_t *offset);

	/* Optional: write block blk's blksize bytes into descriptor fd at
	 * offset (with pwrite, from memory or another file) instead of into a
	 * buffer.  The kernel then copies the data straight into the RAM page
	 * with no intermediate buffer.  Return OC_NOMAP to have loadblk
	 * called instead.  NULL: loadblk is used. */
	int (*loadblk_fd)(oc_file_t *file, uint64_t blk, int fd, uint64_t offset);

	/* ---- version 2 ---- */

	/* Optional: store block blk, of which only some granules may have
	 * changed.  A block mapped from the base layer (mapblk) and then
	 * written here and there is kept as its base plus the granules that
	 * were written (see virtmem.h): bit i of changed set means bytes
	 * [i*granule, (i+1)*granule) may differ from the block as mapblk
	 * gave it to this handle; every other byte is equal to it.  buf shows
	 * the whole block, read-only, but its unchanged part is read through
	 * a mapping of the base: read only what you need.  NULL (or a
	 * version 1 table): storeblk is called with the same buf. */
	int (*storeblk_part)(oc_file_t *file, uint64_t blk, const void *buf,
			     uint32_t changed, size_t granule);

	/* ---- version 3 ---- */

	/* Optional: for a write to block blk, which mapblk could not give
	 * (OC_NOMAP) because it is stored as a mappable base plus changes
	 * (a store's page deltas): return 0 with the base (*fd, *offset, as
	 * mapblk does), in *changed the granules (bit i: bytes [i*granule,
	 * (i+1)*granule)) that differ from it, and their bytes at their
	 * offsets in buf (blksize bytes, writable; the rest is ignored).
	 * The core then keeps just those granules in RAM (a patched page,
	 * dirty, see virtmem.h) instead of loading the whole block; they are
	 * passed back as changed to storeblk_part.  OC_NOMAP: load the block
	 * with loadblk (say so when many granules changed); OC_ZEROBLK and
	 * errors as mapblk.  NULL: loadblk is used. */
	int (*mapblk_patched)(oc_file_t *file, uint64_t blk, int *fd,
			      uint64_t *offset, void *buf, uint32_t *changed,
			      size_t granule);
} oc_file_ops_t;

/* A file.  Embed it as the first member of your own structure (or anywhere,
 * with container_of) and initialise it with oc_file_init().  Fields are
 * read-only after that. */
struct oc_file {
	const oc_file_ops_t *ops;
	size_t blksize;
	char name[64];     /* for messages: "file 'name' block 12: ..." */
	void *priv;        /* free for the implementation */
	int refcnt;        /* private: use oc_file_get/oc_file_put */
	uint32_t magic;    /* private */
};

/* Initialise a file with one reference (the caller's).  name may be NULL.
 * Returns 0, or -EINVAL (NULL file or ops, NULL loadblk, blksize not a
 * power of two or < 4096), or OC_EVERSION (ops->version is 0 or newer than
 * this library knows). */
OC_API int oc_file_init(oc_file_t *file, const oc_file_ops_t *ops,
			size_t blksize, const char *name);

/* Take / drop a reference.  The last oc_file_put() calls ops->release.
 * File handles hold a reference while open, so a file may be put right
 * after oc_fileh_open().  Thread-safe.  Never call put from an op of the
 * same file. */
OC_API void oc_file_get(oc_file_t *file);
OC_API void oc_file_put(oc_file_t *file);

/* ---- Backends that come with the library --------------------------- */

/* An in-RAM file: blocks kept in malloc'd memory, copied on load and
 * store.  For tests and scratch arrays.  Returns 0 and *out (one reference,
 * the caller's), or -EINVAL/-ENOMEM. */
OC_API int oc_memfile_new(oc_file_t **out, size_t blksize);

/* Counters of an in-RAM file, for tests: loads, stores, and blocks held. */
OC_API int oc_memfile_counts(oc_file_t *file, uint64_t *loads,
			     uint64_t *stores, uint64_t *nblocks);

#define OC_PLAINFILE_RDONLY 0x1 /* open read-only: storeblk gives -EROFS */
#define OC_PLAINFILE_CREATE 0x2 /* create the file if missing */

/* A plain file on disk: clean blocks are mapped from the file itself
 * (the mapped base layer: no copy, no RAM budget beyond what is mapped);
 * writeout is pwrite of each dirty block, clipped to the file size.  Not
 * transactional: a crash during writeout may leave a mix of old and new
 * blocks, and other handles see stored blocks at once.
 * The file size is fixed at open (or 0 when created) and changed only by
 * oc_plainfile_resize(); blocks past the end read as zeros and are not
 * written.  Returns 0 and *out, or -errno from open/fstat, or -EINVAL. */
OC_API int oc_plainfile_open(oc_file_t **out, const char *path,
			     size_t blksize, int flags);

/* Current logical size of a plain file in bytes. */
OC_API uint64_t oc_plainfile_size(oc_file_t *file);

/* Set the file size (ftruncate): growth reads as zeros; shrinking drops
 * data past the new end, and the cached blocks from the one holding the
 * new end on in every handle of the file (they read as zeros past it
 * after, not SIGBUS).  Returns 0 or -errno (-EROFS read-only; -EBUSY
 * when a handle has dirty pages there, or a writeout or load running:
 * write out or discard them first; nothing changed).  Not from an op of
 * a handle of the file. */
OC_API int oc_plainfile_resize(oc_file_t *file, uint64_t size);

/* fdatasync the file.  Returns 0 or -errno. */
OC_API int oc_plainfile_sync(oc_file_t *file);

#ifdef __cplusplus
}
#endif
#endif
