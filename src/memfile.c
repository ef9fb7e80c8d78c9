/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * memfile.c: the in-RAM file backend: blocks in malloc'd memory, copied on
 * load and store.  Blocks never stored read as zeros (served by the core
 * without a load); storing an all-zero block frees it.  Loads go straight
 * into the RAM page with pwrite.  A read-write lock lets loads run in
 * parallel.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

struct memfile {
	oc_file_t file; /* first: the oc_file_t pointer is the memfile */
	pthread_rwlock_t lock;
	oc_pagemap_t blocks; /* blk -> block memory */
	uint64_t loads, stores;
};

static int mem_loadblk(oc_file_t *f, uint64_t blk, void *buf)
{
	struct memfile *m = (struct memfile *)f;
	void *b;

	pthread_rwlock_rdlock(&m->lock);
	b = oc_pagemap_get(&m->blocks, blk);
	if (b)
		memcpy(buf, b, f->blksize);
	else
		memset(buf, 0, f->blksize);
	__atomic_add_fetch(&m->loads, 1, __ATOMIC_RELAXED);
	pthread_rwlock_unlock(&m->lock);
	return 0;
}

/* Holes read as zeros without a load. */
static int mem_mapblk(oc_file_t *f, uint64_t blk, int *fd, uint64_t *off)
{
	struct memfile *m = (struct memfile *)f;
	void *b;

	(void)fd;
	(void)off;
	pthread_rwlock_rdlock(&m->lock);
	b = oc_pagemap_get(&m->blocks, blk);
	pthread_rwlock_unlock(&m->lock);
	return b ? OC_NOMAP : OC_ZEROBLK;
}

/* A stored block goes into the RAM page with one kernel copy. */
static int mem_loadblk_fd(oc_file_t *f, uint64_t blk, int fd, uint64_t off)
{
	struct memfile *m = (struct memfile *)f;
	void *b;
	int err;

	pthread_rwlock_rdlock(&m->lock);
	b = oc_pagemap_get(&m->blocks, blk);
	if (!b) {
		pthread_rwlock_unlock(&m->lock);
		return OC_NOMAP; /* deleted since mapblk: loadblk zero-fills */
	}
	err = _oc_os_pwrite_all(fd, b, f->blksize, off);
	__atomic_add_fetch(&m->loads, 1, __ATOMIC_RELAXED);
	pthread_rwlock_unlock(&m->lock);
	return err;
}

static int mem_storeblk(oc_file_t *f, uint64_t blk, const void *buf)
{
	struct memfile *m = (struct memfile *)f;
	void *b;
	int err = 0;

	pthread_rwlock_wrlock(&m->lock);
	b = oc_pagemap_get(&m->blocks, blk);
	if (_oc_all_zero(buf, f->blksize)) {
		if (b)
			free(oc_pagemap_del(&m->blocks, blk));
		goto out;
	}
	if (!b) {
		b = aligned_alloc(4096, f->blksize);
		if (!b) {
			err = -ENOMEM;
			goto out;
		}
		err = oc_pagemap_set(&m->blocks, blk, b);
		if (err) {
			free(b);
			goto out;
		}
	}
	memcpy(b, buf, f->blksize);
out:
	if (!err)
		m->stores++;
	pthread_rwlock_unlock(&m->lock);
	return err;
}

static void mem_release(oc_file_t *f)
{
	struct memfile *m = (struct memfile *)f;
	uint64_t k;
	void *b;

	for (k = 0; (b = oc_pagemap_next(&m->blocks, &k)); k++) {
		free(b);
		if (k == UINT64_MAX)
			break;
	}
	oc_pagemap_clear(&m->blocks);
	pthread_rwlock_destroy(&m->lock);
	free(m);
}

static const oc_file_ops_t mem_ops = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = mem_loadblk,
	.storeblk = mem_storeblk,
	.release = mem_release,
	.mapblk = mem_mapblk,
	.loadblk_fd = mem_loadblk_fd,
};

int oc_memfile_new(oc_file_t **out, size_t blksize)
{
	struct memfile *m;
	int err;

	if (!out)
		return -EINVAL;
	m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	err = oc_file_init(&m->file, &mem_ops, blksize, "memfile");
	if (err) {
		free(m);
		return err;
	}
	pthread_rwlock_init(&m->lock, NULL);
	oc_pagemap_init(&m->blocks);
	*out = &m->file;
	return 0;
}

int oc_memfile_counts(oc_file_t *f, uint64_t *loads, uint64_t *stores,
		      uint64_t *nblocks)
{
	struct memfile *m = (struct memfile *)f;

	if (!f || f->ops != &mem_ops)
		return -EINVAL;
	pthread_rwlock_rdlock(&m->lock);
	if (loads)
		*loads = __atomic_load_n(&m->loads, __ATOMIC_RELAXED);
	if (stores)
		*stores = m->stores;
	if (nblocks)
		*nblocks = m->blocks.count;
	pthread_rwlock_unlock(&m->lock);
	return 0;
}
