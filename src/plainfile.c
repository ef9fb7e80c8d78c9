/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * plainfile.c: the plain-file backend.  Clean blocks wholly inside the
 * file are handed out as mappable ranges of the file itself (the mapped
 * base layer), so reads are served by the kernel's page cache with no copy;
 * the partial last block and blocks past the end are loaded with pread
 * (zeros past the end).  Writeout is pwrite, clipped to the file size.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct plainfile {
	oc_file_t file;
	int fd;
	int flags;
	uint64_t size; /* read and written atomically */
};

static uint64_t psize(struct plainfile *p)
{
	return __atomic_load_n(&p->size, __ATOMIC_ACQUIRE);
}

static int plain_mapblk(oc_file_t *f, uint64_t blk, int *fd, uint64_t *off)
{
	struct plainfile *p = (struct plainfile *)f;
	uint64_t o = blk * f->blksize, size = psize(p);
	off_t data;

	if (blk > UINT64_MAX / f->blksize || o >= size)
		return OC_ZEROBLK; /* past the end */
	if (o + f->blksize > size)
		return OC_NOMAP; /* the partial last block */
	/* A hole (a sparse file, a file just grown) needs no page cache:
	 * serve it as zeros.  lseek moves the file position, which nothing
	 * here uses (all I/O is pread/pwrite). */
	data = lseek(p->fd, (off_t)o, SEEK_DATA);
	if ((data < 0 && errno == ENXIO) ||
	    (data >= 0 && (uint64_t)data >= o + f->blksize))
		return OC_ZEROBLK;
	*fd = p->fd;
	*off = o;
	return 0;
}

static int plain_loadblk(oc_file_t *f, uint64_t blk, void *buf)
{
	struct plainfile *p = (struct plainfile *)f;
	uint64_t o = blk * f->blksize, size = psize(p);
	size_t n = 0;
	int err = 0;

	if (blk <= UINT64_MAX / f->blksize && o < size) {
		n = size - o < f->blksize ? (size_t)(size - o) : f->blksize;
		err = _oc_os_pread_all(p->fd, buf, n, o);
		if (err)
			return err;
	}
	memset((char *)buf + n, 0, f->blksize - n);
	return 0;
}

static int plain_storeblk(oc_file_t *f, uint64_t blk, const void *buf)
{
	struct plainfile *p = (struct plainfile *)f;
	uint64_t o = blk * f->blksize, size = psize(p);
	size_t n;

	if (p->flags & OC_PLAINFILE_RDONLY)
		return -EROFS;
	if (blk > UINT64_MAX / f->blksize || o >= size)
		return 0; /* past the end: nothing to keep */
	n = size - o < f->blksize ? (size_t)(size - o) : f->blksize;
	return _oc_os_pwrite_all(p->fd, buf, n, o);
}

/* Write only the granules that changed: the rest of the block is already
 * in the file (it is what buf shows, through a mapping of the file). */
static int plain_storeblk_part(oc_file_t *f, uint64_t blk, const void *buf,
			       uint32_t changed, size_t granule)
{
	struct plainfile *p = (struct plainfile *)f;
	uint64_t o = blk * f->blksize, size = psize(p);
	size_t g, n = f->blksize / granule;
	int err = 0;

	if (p->flags & OC_PLAINFILE_RDONLY)
		return -EROFS;
	if (blk > UINT64_MAX / f->blksize || o >= size)
		return 0;
	for (g = 0; g < n && !err; g++) {
		uint64_t go = o + g * granule;
		size_t len = granule;
		if (!((changed >> g) & 1) || go >= size)
			continue;
		if (size - go < len)
			len = (size_t)(size - go);
		err = _oc_os_pwrite_all(p->fd, (const char *)buf + g * granule,
					len, go);
	}
	return err;
}

static void plain_release(oc_file_t *f)
{
	struct plainfile *p = (struct plainfile *)f;
	close(p->fd);
	free(p);
}

static const oc_file_ops_t plain_ops = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = plain_loadblk,
	.storeblk = plain_storeblk,
	.release = plain_release,
	.mapblk = plain_mapblk,
	.storeblk_part = plain_storeblk_part,
};

int oc_plainfile_open(oc_file_t **out, const char *path, size_t blksize,
		      int flags)
{
	struct plainfile *p = NULL;
	struct stat st;
	const char *base;
	int fd = -1, oflags, err;

	if (!out || !path || (flags & ~(OC_PLAINFILE_RDONLY | OC_PLAINFILE_CREATE)))
		return -EINVAL;
	if ((flags & OC_PLAINFILE_RDONLY) && (flags & OC_PLAINFILE_CREATE))
		return -EINVAL;
	oflags = O_CLOEXEC | ((flags & OC_PLAINFILE_RDONLY) ? O_RDONLY : O_RDWR);
	if (flags & OC_PLAINFILE_CREATE)
		oflags |= O_CREAT;
	fd = open(path, oflags, 0644);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		err = -errno;
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		err = -EINVAL;
		goto fail;
	}
	p = calloc(1, sizeof *p);
	if (!p) {
		err = -ENOMEM;
		goto fail;
	}
	base = strrchr(path, '/');
	err = oc_file_init(&p->file, &plain_ops, blksize, base ? base + 1 : path);
	if (err)
		goto fail;
	p->fd = fd;
	p->flags = flags;
	p->size = (uint64_t)st.st_size;
	*out = &p->file;
	return 0;
fail:
	free(p);
	close(fd);
	return err;
}

uint64_t oc_plainfile_size(oc_file_t *f)
{
	return (f && f->ops == &plain_ops) ? psize((struct plainfile *)f) : 0;
}

int oc_plainfile_resize(oc_file_t *f, uint64_t size)
{
	struct plainfile *p = (struct plainfile *)f;
	uint64_t old;

	if (!f || f->ops != &plain_ops || size > INT64_MAX)
		return -EINVAL;
	if (p->flags & OC_PLAINFILE_RDONLY)
		return -EROFS;
	old = __atomic_load_n(&p->size, __ATOMIC_ACQUIRE);
	if (size < old) {
		/* The new size, and the blocks from the one holding the new
		 * end on go (mapped from the file, their pages past the end
		 * would raise SIGBUS). */
		int err = _oc_file_cut(f, size / f->blksize, &p->size, size);
		if (err)
			return err;
	}
	if (ftruncate(p->fd, (off_t)size)) {
		__atomic_store_n(&p->size, old, __ATOMIC_RELEASE);
		return -errno;
	}
	__atomic_store_n(&p->size, size, __ATOMIC_RELEASE);
	return 0;
}

int oc_plainfile_sync(oc_file_t *f)
{
	struct plainfile *p = (struct plainfile *)f;

	if (!f || f->ops != &plain_ops)
		return -EINVAL;
	if (fdatasync(p->fd))
		return -errno;
	return 0;
}
