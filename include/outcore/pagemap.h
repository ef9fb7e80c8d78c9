/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * pagemap.h: a map from 64-bit keys (page or block numbers) to pointers.
 *
 * A radix tree of 64-way nodes whose height grows with the largest key
 * stored, so a get/set/delete walks at most 11 levels (O(1)) and a map whose
 * keys are small stays shallow.  Nodes are allocated on set and freed as
 * soon as they become empty, so an emptied map holds no memory beyond the
 * oc_pagemap_t itself.  Iteration visits keys in ascending order.
 *
 * Values may not be NULL (NULL means "absent").  A map is not thread-safe:
 * its owner locks it.  Nothing here calls back into the caller.
 */
#ifndef OUTCORE_PAGEMAP_H
#define OUTCORE_PAGEMAP_H

#include <outcore/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The map itself; embed it and oc_pagemap_init() it.  Fields are private. */
typedef struct oc_pagemap {
	void *root;      /* private */
	unsigned height; /* private: levels below root (0: empty) */
	uint64_t count;  /* number of entries: readable, never write */
} oc_pagemap_t;

/* Make an empty map.  Cannot fail. */
OC_API void oc_pagemap_init(oc_pagemap_t *pm);

/* The value at key, or NULL. */
OC_API void *oc_pagemap_get(const oc_pagemap_t *pm, uint64_t key);

/* Set key -> value (value != NULL), replacing any old value.
 * Returns 0, -EINVAL for a NULL value, -ENOMEM (the map is unchanged). */
OC_API int oc_pagemap_set(oc_pagemap_t *pm, uint64_t key, void *value);

/* Remove key; returns the value it had, or NULL if absent.  Frees nodes
 * that become empty. */
OC_API void *oc_pagemap_del(oc_pagemap_t *pm, uint64_t key);

/* Remove every entry and free every node.  Values are not touched. */
OC_API void oc_pagemap_clear(oc_pagemap_t *pm);

/* Iteration in ascending key order: the first entry whose key is >= *key.
 * Returns its value and stores its key in *key, or NULL when there is none.
 * To visit every entry:
 *     for (uint64_t k = 0; (v = oc_pagemap_next(pm, &k)); k++) ...
 * (stop after k == UINT64_MAX, which the loop above does because k++ wraps
 * to 0 only after visiting the last possible key: check for it). Entries may
 * be deleted during iteration; entries set during it may or may not be seen.
 */
OC_API void *oc_pagemap_next(const oc_pagemap_t *pm, uint64_t *key);

/* Check the tree's invariants (counts, no empty nodes, height).  Returns 0
 * or -EINVAL. For tests and debug builds; O(n). */
OC_API int oc_pagemap_check(const oc_pagemap_t *pm);

#ifdef __cplusplus
}
#endif
#endif
