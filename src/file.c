/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * file.c: the file object: validation and reference counting.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

#define FILE_MAGIC 0x6f636669u /* "ocfi" */

int oc_file_init(oc_file_t *file, const oc_file_ops_t *ops, size_t blksize,
		 const char *name)
{
	if (!file || !ops || !ops->loadblk)
		return -EINVAL;
	if (ops->version == 0 || ops->version > OC_FILE_OPS_VERSION)
		return OC_EVERSION;
	if (blksize < 4096 || (blksize & (blksize - 1)))
		return -EINVAL;
	file->ops = ops;
	file->blksize = blksize;
	memset(file->name, 0, sizeof file->name);
	if (name)
		strncpy(file->name, name, sizeof file->name - 1);
	file->refcnt = 1;
	file->magic = FILE_MAGIC;
	return 0;
}

void oc_file_get(oc_file_t *file)
{
	OC_BUG_ON(file->magic != FILE_MAGIC);
	__atomic_add_fetch(&file->refcnt, 1, __ATOMIC_SEQ_CST);
}

void oc_file_put(oc_file_t *file)
{
	if (!file)
		return;
	OC_BUG_ON(file->magic != FILE_MAGIC);
	if (__atomic_sub_fetch(&file->refcnt, 1, __ATOMIC_SEQ_CST) == 0) {
		file->magic = 0;
		if (file->ops->release)
			file->ops->release(file);
	}
}
