/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * pagemap.c: the radix tree behind oc_pagemap_t (see pagemap.h).
 *
 * Levels are numbered from the leaves: a level-1 node holds values, a
 * level-L node (L > 1) holds level-(L-1) nodes, and the root is at level
 * pm->height.  Each level consumes 6 bits of the key, lowest bits at level
 * 1, so 11 levels cover 64 bits; the top one uses only 4 bits (16 slots).
 *
 * Invariants, checked by oc_pagemap_check():
 *  - root == NULL  <=>  height == 0  <=>  count == 0;
 *  - every node's count is its number of non-NULL slots, and is > 0;
 *  - the height is the smallest that holds the largest key: when it is > 1
 *    the root has a child other than slot 0.
 * Keeping nodes non-empty is what lets oc_pagemap_next() take any non-NULL
 * slot as a promise that an entry lies below it.
 */
#include <errno.h>
#include <stdlib.h>

#include <outcore/pagemap.h>

#define BITS 6
#define FANOUT (1u << BITS)
#define MAXH 11 /* ceil(64 / BITS) */

struct node {
	unsigned count;       /* non-NULL slots */
	void *slot[FANOUT];   /* values at level 1, nodes above */
};

static unsigned shift(unsigned level)
{
	return BITS * (level - 1);
}

static unsigned idx(uint64_t key, unsigned level)
{
	return (key >> shift(level)) & (FANOUT - 1);
}

/* Slots that can be used at a level: all but at the top of a full tree. */
static unsigned fanout(unsigned level)
{
	return level == MAXH ? 1u << (64 - shift(MAXH)) : FANOUT;
}

/* The mask of the lowest bits bits of a key. */
static uint64_t low(unsigned bits)
{
	return bits >= 64 ? UINT64_MAX : ((uint64_t)1 << bits) - 1;
}

/* The largest key a tree of this height holds. */
static uint64_t maxkey(unsigned height)
{
	return low(BITS * height);
}

/* The smallest height that holds key. */
static unsigned height_for(uint64_t key)
{
	unsigned h = 1;

	while (key > maxkey(h))
		h++;
	return h;
}

void oc_pagemap_init(oc_pagemap_t *pm)
{
	pm->root = NULL;
	pm->height = 0;
	pm->count = 0;
}

void *oc_pagemap_get(const oc_pagemap_t *pm, uint64_t key)
{
	const struct node *n = pm->root;
	unsigned level;

	if (!n || key > maxkey(pm->height))
		return NULL;
	for (level = pm->height; level > 1; level--) {
		n = n->slot[idx(key, level)];
		if (!n)
			return NULL;
	}
	return n->slot[idx(key, 1)];
}

/* How many nodes setting key needs once the tree is grown to height want
 * (>= pm->height): new top levels plus the missing ones along key's path. */
static unsigned missing(const oc_pagemap_t *pm, uint64_t key, unsigned want)
{
	const struct node *n = pm->root;
	unsigned level, grow = want - pm->height;

	if (!n)
		return want;
	/* The new top nodes chain down through slot 0 to the old root; where
	 * key leaves that chain, everything below is new. */
	for (level = want; level > pm->height; level--)
		if (idx(key, level))
			return grow + level - 1;
	for (; level > 1; level--) {
		n = n->slot[idx(key, level)];
		if (!n)
			return grow + level - 1;
	}
	return grow;
}

int oc_pagemap_set(oc_pagemap_t *pm, uint64_t key, void *value)
{
	struct node *pool[2 * MAXH], *n;
	unsigned need, np = 0, want, level, i;
	int err = 0;

	if (!value)
		return -EINVAL;
	want = height_for(key);
	if (want < pm->height)
		want = pm->height;

	/* Allocate first, so that a failure leaves the map as it was. */
	need = missing(pm, key, want);
	for (np = 0; np < need; np++) {
		pool[np] = calloc(1, sizeof(struct node));
		if (!pool[np]) {
			err = -ENOMEM;
			goto out;
		}
	}

	if (!pm->root) {
		pm->root = pool[--np];
		pm->height = want;
	}
	while (pm->height < want) {
		n = pool[--np];
		n->slot[0] = pm->root;
		n->count = 1;
		pm->root = n;
		pm->height++;
	}
	n = pm->root;
	for (level = pm->height; level > 1; level--) {
		i = idx(key, level);
		if (!n->slot[i]) {
			n->slot[i] = pool[--np];
			n->count++;
		}
		n = n->slot[i];
	}
	i = idx(key, 1);
	if (!n->slot[i]) {
		n->count++;
		pm->count++;
	}
	n->slot[i] = value;
out:
	while (np)
		free(pool[--np]);
	return err;
}

/* Drop top nodes whose only child is slot 0: they add height, not keys. */
static void shrink(oc_pagemap_t *pm)
{
	struct node *n;

	while (pm->height > 1) {
		n = pm->root;
		if (n->count != 1 || !n->slot[0])
			break;
		pm->root = n->slot[0];
		pm->height--;
		free(n);
	}
}

void *oc_pagemap_del(oc_pagemap_t *pm, uint64_t key)
{
	struct node *path[MAXH + 1], *n = pm->root;
	unsigned level, top = pm->height;
	void *value;

	if (!n || key > maxkey(top))
		return NULL;
	for (level = top; level > 1; level--) {
		path[level] = n;
		n = n->slot[idx(key, level)];
		if (!n)
			return NULL;
	}
	path[1] = n;
	value = n->slot[idx(key, 1)];
	if (!value)
		return NULL;

	n->slot[idx(key, 1)] = NULL;
	n->count--;
	pm->count--;
	/* Free the nodes this emptied, bottom up. */
	for (level = 1; path[level]->count == 0; level++) {
		free(path[level]);
		if (level == top) {
			pm->root = NULL;
			pm->height = 0;
			return value;
		}
		path[level + 1]->slot[idx(key, level + 1)] = NULL;
		path[level + 1]->count--;
	}
	shrink(pm);
	return value;
}

static void free_tree(struct node *n, unsigned level)
{
	unsigned i;

	if (level > 1)
		for (i = 0; i < FANOUT; i++)
			if (n->slot[i])
				free_tree(n->slot[i], level - 1);
	free(n);
}

void oc_pagemap_clear(oc_pagemap_t *pm)
{
	if (pm->root)
		free_tree(pm->root, pm->height);
	oc_pagemap_init(pm);
}

/* The first entry under n (at level) whose key is >= *key, where *key's
 * bits above this level are n's own; on success *key becomes its key. */
static void *first(const struct node *n, unsigned level, uint64_t *key)
{
	uint64_t k = *key;
	unsigned i;
	void *v;

	for (i = idx(k, level); i < fanout(level); i++) {
		v = n->slot[i];
		if (v && level > 1)
			v = first(v, level - 1, &k);
		if (v) {
			*key = k;
			return v;
		}
		/* Nothing at or after k below slot i: start slot i + 1. */
		k = (k & ~low(shift(level) + BITS)) |
		    ((uint64_t)(i + 1) << shift(level));
	}
	return NULL;
}

void *oc_pagemap_next(const oc_pagemap_t *pm, uint64_t *key)
{
	if (!pm->root || *key > maxkey(pm->height))
		return NULL;
	return first(pm->root, pm->height, key);
}

/* Check the subtree at n; add its entries to *entries. */
static int walk(const struct node *n, unsigned level, uint64_t *entries)
{
	unsigned i, used = 0;

	for (i = 0; i < FANOUT; i++) {
		if (!n->slot[i])
			continue;
		if (i >= fanout(level))
			return -EINVAL;
		used++;
		if (level == 1)
			(*entries)++;
		else if (walk(n->slot[i], level - 1, entries))
			return -EINVAL;
	}
	return used && used == n->count ? 0 : -EINVAL;
}

int oc_pagemap_check(const oc_pagemap_t *pm)
{
	const struct node *root = pm->root;
	uint64_t entries = 0;

	if (!root)
		return pm->height || pm->count ? -EINVAL : 0;
	if (!pm->height || pm->height > MAXH)
		return -EINVAL;
	if (pm->height > 1 && root->count == 1 && root->slot[0])
		return -EINVAL;
	if (walk(root, pm->height, &entries) || entries != pm->count)
		return -EINVAL;
	return 0;
}
