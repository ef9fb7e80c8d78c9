/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * store_codec.c: what every storage engine encodes the same way: the array
 * record, and the set of blocks other processes changed (see
 * store_engine.h).
 */
#include "internal.h"
#include "store_engine.h"

#include <errno.h>
#include <string.h>

int _oc_se_meta_encode(uint64_t id, uint64_t version, const oc_array_meta_t *m,
		       unsigned char **out, size_t *len)
{
	const char *attrs = m->attrs ? m->attrs : "{}";
	size_t dl = strlen(m->dtype), al = strlen(attrs);
	size_t n = 8 + 8 + 4 + 8 + 8 * (size_t)m->ndim + 4 + dl + 4 + al;
	unsigned char *b = malloc(n), *p = b;

	if (!b)
		return -ENOMEM;
	_oc_put_le64(p, id), p += 8;
	_oc_put_le64(p, version), p += 8;
	p[0] = (unsigned char)m->ndim, p[1] = (unsigned char)m->order;
	p[2] = p[3] = 0, p += 4;
	_oc_put_le64(p, m->blksize), p += 8;
	for (unsigned i = 0; i < m->ndim; i++, p += 8)
		_oc_put_le64(p, m->shape[i]);
	_oc_put_le32(p, (uint32_t)dl), p += 4;
	memcpy(p, m->dtype, dl), p += dl;
	_oc_put_le32(p, (uint32_t)al), p += 4;
	memcpy(p, attrs, al);
	*out = b;
	*len = n;
	return 0;
}

int _oc_se_meta_decode(const void *rec, size_t size, uint64_t *id,
		       uint64_t *version, oc_array_meta_t *m)
{
	const unsigned char *p = rec, *end = p + size;
	uint32_t dl, al;

	if (size < 28)
		return OC_ECORRUPT;
	if (id)
		*id = _oc_get_le64(p);
	if (version)
		*version = _oc_get_le64(p + 8);
	if (!m)
		return 0;
	memset(m, 0, sizeof *m);
	m->ndim = p[16];
	m->order = (char)p[17];
	m->blksize = _oc_get_le64(p + 20);
	p += 28;
	if (m->ndim > OC_STORE_MAXDIM || (size_t)(end - p) < 8u * m->ndim + 4)
		return OC_ECORRUPT;
	for (unsigned i = 0; i < m->ndim; i++, p += 8)
		m->shape[i] = _oc_get_le64(p);
	dl = _oc_get_le32(p), p += 4;
	if ((size_t)(end - p) < (size_t)dl + 4)
		return OC_ECORRUPT;
	m->dtype = strndup((const char *)p, dl);
	p += dl;
	al = _oc_get_le32(p), p += 4;
	if ((size_t)(end - p) < al) {
		free(m->dtype);
		m->dtype = NULL;
		return OC_ECORRUPT;
	}
	m->attrs = strndup((const char *)p, al);
	if (!m->dtype || !m->attrs) {
		oc_array_meta_clear(m);
		return -ENOMEM;
	}
	return 0;
}

int _oc_se_change_cmp(const void *a, const void *b)
{
	const struct oc_se_blkref *x = a, *y = b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->blk < y->blk ? -1 : x->blk > y->blk;
}

bool _oc_se_changed_from(const struct oc_se_blkref *set, size_t n,
			 uint64_t id, uint64_t blk, bool meta)
{
	struct oc_se_blkref lo = {id, blk};
	size_t a = 0, b = n;

	while (a < b) { /* the first entry >= (id, blk) */
		size_t m = a + (b - a) / 2;
		if (_oc_se_change_cmp(&set[m], &lo) < 0)
			a = m + 1;
		else
			b = m;
	}
	return a < n && set[a].id == id && (meta || set[a].blk != OC_SE_META);
}

bool _oc_se_changed(const struct oc_se_blkref *set, size_t n, uint64_t id,
		    uint64_t blk)
{
	struct oc_se_blkref key = {id, blk};

	return n && bsearch(&key, set, n, sizeof key, _oc_se_change_cmp);
}
