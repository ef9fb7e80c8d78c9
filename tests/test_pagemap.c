/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_pagemap.c: the radix-tree page map: edge keys, node freeing, ordered
 * iteration, allocation failure, and a randomized differential test against
 * a sorted array.
 *
 * This program compiles src/pagemap.c into itself, with calloc and free
 * renamed to counting wrappers, so that it can see how many nodes the map
 * holds and make the N-th allocation fail; the library itself has no test
 * hooks.  The copy's public functions are renamed too, so that it links
 * alongside the library's own pagemap.o (which it then does not use), and
 * builds alone as well: cc -Iinclude tests/test_pagemap.c.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static long live_nodes;     /* allocated by the map and not yet freed */
static long fail_countdown = -1; /* allocations left before they fail; -1: never */

static void *test_calloc(size_t n, size_t size)
{
	void *p;

	if (fail_countdown == 0)
		return NULL;
	if (fail_countdown > 0)
		fail_countdown--;
	p = calloc(n, size);
	if (p)
		live_nodes++;
	return p;
}

static void test_free(void *p)
{
	if (p)
		live_nodes--;
	free(p);
}

#define oc_pagemap_init t_pagemap_init
#define oc_pagemap_get t_pagemap_get
#define oc_pagemap_set t_pagemap_set
#define oc_pagemap_del t_pagemap_del
#define oc_pagemap_clear t_pagemap_clear
#define oc_pagemap_next t_pagemap_next
#define oc_pagemap_check t_pagemap_check
#define calloc test_calloc
#define free test_free
#include "../src/pagemap.c"
#undef calloc
#undef free

#include "check.h"

#define N_ITER 10000   /* keys in the iteration test, before scaling */
#define N_OPS 100000   /* operations in the differential test, before scaling */

static uint64_t rng = 0x9e3779b97f4a7c15u;

/* xorshift64*: fixed seed, so every run is the same run. */
static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1du;
}

/* Keys of every shape: dense small ones, edges of levels, huge ones. */
static uint64_t rnd_key(void)
{
	uint64_t r = rnd();

	switch (r % 8) {
	case 0:
	case 1:
		return rnd() % 65536;
	case 2:
		return UINT64_MAX - rnd() % 256;
	case 3: {
		unsigned b = rnd() % 64;
		return ((uint64_t)1 << b) + rnd() % 3 - 1;
	}
	case 4:
		return rnd() % ((uint64_t)1 << 36);
	default:
		return rnd();
	}
}

static void *val(uint64_t x)
{
	return (void *)(uintptr_t)(x * 2 + 1); /* never NULL */
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void test_empty(void)
{
	oc_pagemap_t pm;
	uint64_t k = 0;

	oc_pagemap_init(&pm);
	CHECK(oc_pagemap_get(&pm, 0) == NULL, "empty: get(0) is NULL");
	CHECK(oc_pagemap_get(&pm, UINT64_MAX) == NULL, "empty: get(max) is NULL");
	CHECK(oc_pagemap_next(&pm, &k) == NULL && k == 0, "empty: next is NULL, key untouched");
	CHECK(oc_pagemap_del(&pm, 5) == NULL, "empty: del is NULL");
	CHECK(oc_pagemap_check(&pm) == 0, "empty: check");
	CHECK_EQ(oc_pagemap_set(&pm, 7, NULL), -EINVAL, "set NULL value: -EINVAL");
	CHECK(pm.count == 0 && pm.root == NULL && live_nodes == 0, "set NULL value: map unchanged");
	oc_pagemap_clear(&pm);
	CHECK(pm.root == NULL && pm.height == 0 && pm.count == 0, "empty: clear");
}

static void test_basic(void)
{
	oc_pagemap_t pm;
	int a, b, c;
	uint64_t k;

	oc_pagemap_init(&pm);
	CHECK_EQ(oc_pagemap_set(&pm, 10, &a), 0, "set 10");
	CHECK(oc_pagemap_get(&pm, 10) == &a, "get 10");
	CHECK(oc_pagemap_get(&pm, 11) == NULL && oc_pagemap_get(&pm, 9) == NULL,
	      "neighbours of 10 absent");
	CHECK(pm.count == 1 && pm.height == 1 && live_nodes == 1, "one key: one node, height 1");
	CHECK_EQ(oc_pagemap_set(&pm, 10, &b), 0, "replace 10");
	CHECK(oc_pagemap_get(&pm, 10) == &b && pm.count == 1, "replace: new value, count 1");
	CHECK_EQ(oc_pagemap_set(&pm, 64 * 64, &c), 0, "set 4096");
	CHECK(pm.height == 3 && live_nodes == 5, "4096: height 3, 5 nodes");
	CHECK(oc_pagemap_check(&pm) == 0, "check after set");
	k = 11;
	CHECK(oc_pagemap_next(&pm, &k) == &c && k == 4096, "next(11) is 4096");
	k = 4097;
	CHECK(oc_pagemap_next(&pm, &k) == NULL && k == 4097, "next(4097) is NULL, key untouched");
	CHECK(oc_pagemap_del(&pm, 4095) == NULL && pm.count == 2, "del absent: NULL");
	CHECK(oc_pagemap_del(&pm, 4096) == &c, "del 4096 returns its value");
	CHECK(pm.height == 1 && live_nodes == 1, "del 4096: shrinks to height 1, 1 node");
	CHECK(oc_pagemap_del(&pm, 10) == &b, "del 10 returns its value");
	CHECK(pm.root == NULL && pm.height == 0 && pm.count == 0 && live_nodes == 0,
	      "emptied: root NULL, height 0, no nodes");
	CHECK(oc_pagemap_check(&pm) == 0, "check after emptying");
}

static void test_edges(void)
{
	static const uint64_t keys[] = {
		0, 1, 63, 64, 4095, 4096, (uint64_t)1 << 32, ((uint64_t)1 << 60) - 1,
		(uint64_t)1 << 60, (uint64_t)1 << 63, UINT64_MAX - 1, UINT64_MAX,
	};
	static const unsigned heights[] = { 1, 1, 1, 2, 2, 3, 6, 10, 11, 11, 11, 11 };
	const size_t n = sizeof(keys) / sizeof(keys[0]);
	oc_pagemap_t pm;
	size_t i, seen, bad;
	uint64_t k;
	void *v;

	for (i = 0, bad = 0; i < n; i++) {
		oc_pagemap_init(&pm);
		if (oc_pagemap_set(&pm, keys[i], val(keys[i])) || pm.height != heights[i] ||
		    oc_pagemap_get(&pm, keys[i]) != val(keys[i]) || oc_pagemap_check(&pm) ||
		    (unsigned long)live_nodes != heights[i])
			bad++;
		k = 0;
		if (oc_pagemap_next(&pm, &k) != val(keys[i]) || k != keys[i])
			bad++;
		if (oc_pagemap_del(&pm, keys[i]) != val(keys[i]) || pm.root || live_nodes)
			bad++;
	}
	CHECK_EQ(bad, 0, "each edge key alone: height, get, next, del");

	oc_pagemap_init(&pm);
	for (i = 0, bad = 0; i < n; i++)
		bad += oc_pagemap_set(&pm, keys[i], val(keys[i])) != 0;
	CHECK(bad == 0 && pm.count == n && pm.height == 11, "all edge keys: set, height 11");
	CHECK(oc_pagemap_check(&pm) == 0, "all edge keys: check");
	for (i = 0, bad = 0; i < n; i++)
		bad += oc_pagemap_get(&pm, keys[i]) != val(keys[i]);
	CHECK_EQ(bad, 0, "all edge keys: get");

	/* The iteration idiom of pagemap.h, stopping after UINT64_MAX. */
	seen = 0, bad = 0;
	for (k = 0; (v = oc_pagemap_next(&pm, &k)); k++) {
		if (seen >= n || k != keys[seen] || v != val(k))
			bad++;
		seen++;
		if (k == UINT64_MAX)
			break;
	}
	CHECK(bad == 0 && seen == n, "all edge keys: iteration in order, ends at UINT64_MAX");
	k = UINT64_MAX;
	CHECK(oc_pagemap_next(&pm, &k) == val(UINT64_MAX) && k == UINT64_MAX, "next(UINT64_MAX)");

	/* Delete from the top down: the tree shrinks with the largest key. */
	for (i = n, bad = 0; i-- > 0;) {
		if (oc_pagemap_del(&pm, keys[i]) != val(keys[i]) || oc_pagemap_check(&pm))
			bad++;
		if (i && pm.height != heights[i - 1])
			bad++;
	}
	CHECK_EQ(bad, 0, "edge keys deleted largest first: height follows the largest key");
	CHECK(pm.root == NULL && pm.height == 0 && live_nodes == 0, "edge keys: emptied, no nodes");

	/* 0 then UINT64_MAX: 1 leaf, 10 new top nodes, 10 nodes down to the key. */
	oc_pagemap_set(&pm, 0, val(0));
	oc_pagemap_set(&pm, UINT64_MAX, val(1));
	CHECK(live_nodes == 21 && pm.height == 11, "{0, max}: 21 nodes");
	oc_pagemap_del(&pm, UINT64_MAX);
	CHECK(live_nodes == 1 && pm.height == 1 && oc_pagemap_check(&pm) == 0,
	      "{0, max} minus max: back to 1 node, height 1");
	oc_pagemap_clear(&pm);
	CHECK(pm.root == NULL && live_nodes == 0 && oc_pagemap_check(&pm) == 0, "clear: no nodes");
}

/* Keys past what the tree's height holds alias low slots: never found. */
static void test_above(void)
{
	oc_pagemap_t pm;
	uint64_t k;

	oc_pagemap_init(&pm);
	oc_pagemap_set(&pm, 5, val(5));
	CHECK(oc_pagemap_get(&pm, 64 + 5) == NULL && oc_pagemap_get(&pm, ((uint64_t)1 << 63) + 5) == NULL,
	      "above height: get(64 + 5), get(2^63 + 5) NULL in {5}");
	CHECK(oc_pagemap_del(&pm, 64 + 5) == NULL && pm.count == 1, "above height: del(64 + 5) NULL");
	k = 6;
	CHECK(oc_pagemap_next(&pm, &k) == NULL && k == 6, "above height: next(6) NULL in {5}");
	k = 64;
	CHECK(oc_pagemap_next(&pm, &k) == NULL && k == 64, "above height: next(64) NULL in {5}");
	oc_pagemap_set(&pm, 4096 + 5, val(1));
	CHECK(oc_pagemap_get(&pm, ((uint64_t)1 << 18) + 4096 + 5) == NULL, "above height 3: get NULL");
	oc_pagemap_clear(&pm);
}

/* Break each invariant by hand: oc_pagemap_check() must notice. */
static void test_check_detects(void)
{
	oc_pagemap_t pm;
	struct node *root, *leaf;
	void *saved;
	int bad = 0;

	oc_pagemap_init(&pm);
	oc_pagemap_set(&pm, 1, val(1));
	oc_pagemap_set(&pm, UINT64_MAX, val(2));
	CHECK(oc_pagemap_check(&pm) == 0, "check: valid map passes");
	root = pm.root;

	root->count++;
	bad += oc_pagemap_check(&pm) != -EINVAL;
	root->count--;

	pm.count++;
	bad += oc_pagemap_check(&pm) != -EINVAL;
	pm.count--;

	pm.height = 12;
	bad += oc_pagemap_check(&pm) != -EINVAL;
	pm.height = 0;
	bad += oc_pagemap_check(&pm) != -EINVAL;
	pm.height = 11;

	root->slot[16] = root->slot[0]; /* top level holds 4 bits: 16 slots */
	root->count++;
	pm.count++; /* slot 0 holds 1 entry: only the slot number is wrong */
	bad += oc_pagemap_check(&pm) != -EINVAL;
	root->slot[16] = NULL;
	root->count--;
	pm.count--;

	for (leaf = root->slot[0]; leaf->slot[0] != val(1) && leaf->slot[1] != val(1);)
		leaf = leaf->slot[0];
	saved = leaf->slot[1]; /* an empty node counted as one entry */
	leaf->slot[1] = NULL;
	leaf->count = 0;
	pm.count--;
	bad += oc_pagemap_check(&pm) != -EINVAL;
	leaf->slot[1] = saved;
	leaf->count = 1;
	pm.count++;
	CHECK(bad == 0 && oc_pagemap_check(&pm) == 0, "check: wrong counts, height, slot, empty node");

	oc_pagemap_del(&pm, UINT64_MAX);
	oc_pagemap_set(&pm, 64, val(3)); /* height 2: root holds slots 0 and 1 */
	root = pm.root;
	saved = root->slot[1];
	root->slot[1] = NULL;
	root->count--;
	pm.count--;
	CHECK(oc_pagemap_check(&pm) == -EINVAL, "check: height not minimal (root holds only slot 0)");
	root->slot[1] = saved;
	root->count++;
	pm.count++;

	saved = pm.root;
	pm.root = NULL;
	CHECK(oc_pagemap_check(&pm) == -EINVAL, "check: no root but entries");
	pm.root = saved;
	CHECK(oc_pagemap_check(&pm) == 0, "check: repaired map passes");
	oc_pagemap_clear(&pm);
}

/* Fill with random keys; return them sorted and without duplicates. */
static size_t fill(oc_pagemap_t *pm, uint64_t *keys, size_t n)
{
	size_t i, j;

	for (i = 0; i < n; i++) {
		keys[i] = rnd_key();
		oc_pagemap_set(pm, keys[i], val(keys[i]));
	}
	qsort(keys, n, sizeof(keys[0]), cmp_u64);
	for (i = j = 0; i < n; i++)
		if (!j || keys[i] != keys[j - 1])
			keys[j++] = keys[i];
	return j;
}

static void test_iterate(void)
{
	size_t n = N_ITER / check_scale(), nkeys, i, bad, left;
	uint64_t *keys = malloc(n * sizeof(*keys)), k;
	oc_pagemap_t pm;
	void *v;

	oc_pagemap_init(&pm);
	nkeys = fill(&pm, keys, n);
	CHECK(pm.count == nkeys, "iterate: %zu distinct keys set", nkeys);
	CHECK(oc_pagemap_check(&pm) == 0, "iterate: check after fill");

	i = 0, bad = 0;
	for (k = 0; (v = oc_pagemap_next(&pm, &k)); k++) {
		if (i >= nkeys || k != keys[i] || v != val(k))
			bad++;
		i++;
		if (k == UINT64_MAX)
			break;
	}
	CHECK(bad == 0 && i == nkeys, "iterate: ascending order, every key once");

	/* next() from between keys lands on the following one. */
	for (i = 0, bad = 0; i < nkeys; i++) {
		if (i && keys[i - 1] + 1 == keys[i])
			continue;
		k = i ? keys[i - 1] + 1 : 0;
		if (oc_pagemap_next(&pm, &k) != val(keys[i]) || k != keys[i])
			bad++;
	}
	CHECK_EQ(bad, 0, "iterate: next() from the gap before each key");

	/* Delete every other key while iterating. */
	i = 0, bad = 0;
	for (k = 0; (v = oc_pagemap_next(&pm, &k)); k++) {
		if (i >= nkeys || k != keys[i])
			bad++;
		if (i % 2 == 0 && oc_pagemap_del(&pm, k) != val(k))
			bad++;
		i++;
		if (k == UINT64_MAX)
			break;
	}
	CHECK(bad == 0 && i == nkeys, "iterate: deleting during iteration visits every key");
	CHECK(oc_pagemap_check(&pm) == 0 && pm.count == nkeys / 2, "iterate: check after deleting half");
	for (i = 0, bad = 0; i < nkeys; i++)
		bad += oc_pagemap_get(&pm, keys[i]) != (i % 2 ? val(keys[i]) : NULL);
	CHECK_EQ(bad, 0, "iterate: exactly the odd-indexed keys remain");

	/* Delete the rest, each just after next() returned it. */
	left = 0;
	for (k = 0; (v = oc_pagemap_next(&pm, &k)); k++) {
		left++;
		oc_pagemap_del(&pm, k);
		if (k == UINT64_MAX)
			break;
	}
	CHECK(left == nkeys / 2 && pm.root == NULL && pm.height == 0 && live_nodes == 0,
	      "iterate: deleting the rest empties the map and frees every node");
	CHECK(oc_pagemap_check(&pm) == 0, "iterate: check when empty");

	nkeys = fill(&pm, keys, n);
	oc_pagemap_clear(&pm);
	CHECK(pm.root == NULL && pm.count == 0 && live_nodes == 0, "iterate: clear frees every node");
	CHECK(oc_pagemap_check(&pm) == 0, "iterate: check after clear");
	free(keys);
}

/* Set key with every allocation count that fails, then with enough. */
static void fail_each(oc_pagemap_t *pm, uint64_t key, long expect, const char *what)
{
	uint64_t count = pm->count;
	long nodes = live_nodes, n, bad = 0;
	int err;

	for (n = 0;; n++) {
		fail_countdown = n;
		err = oc_pagemap_set(pm, key, val(key));
		fail_countdown = -1;
		if (!err || n > 64)
			break;
		if (err != -ENOMEM || pm->count != count || live_nodes != nodes ||
		    oc_pagemap_get(pm, key) || oc_pagemap_check(pm))
			bad++;
	}
	CHECK(err == 0 && bad == 0 && n == expect && live_nodes == nodes + expect &&
	      oc_pagemap_get(pm, key) == val(key) && oc_pagemap_check(pm) == 0,
	      "ENOMEM %s: %ld failures left the map unchanged, then set", what, n);
}

static void test_enomem(void)
{
	oc_pagemap_t pm;

	oc_pagemap_init(&pm);
	fail_each(&pm, UINT64_MAX, 11, "into empty map");
	oc_pagemap_clear(&pm);
	oc_pagemap_set(&pm, 0, val(0));
	fail_each(&pm, UINT64_MAX, 20, "growing {0} to height 11");
	fail_each(&pm, (uint64_t)1 << 32, 5, "below an existing chain");
	fail_each(&pm, 1, 0, "into an existing leaf");
	fail_countdown = 0;
	CHECK(oc_pagemap_set(&pm, 1, val(7)) == 0 && oc_pagemap_get(&pm, 1) == val(7),
	      "ENOMEM: replacing a value allocates nothing");
	fail_countdown = -1;
	oc_pagemap_clear(&pm);
	CHECK(live_nodes == 0, "ENOMEM: no leak");
}

/* The reference: a sorted array of keys with their values. */
struct ref {
	uint64_t *key;
	void **val;
	size_t n;
};

/* Index of the first key >= k. */
static size_t ref_lower(const struct ref *r, uint64_t k)
{
	size_t lo = 0, hi = r->n, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (r->key[mid] < k)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void test_differential(void)
{
	size_t nops = N_OPS / check_scale(), npool = 2048, op, i;
	uint64_t *pool = malloc(npool * sizeof(*pool)), k, k2, serial = 0;
	struct ref r = { malloc(nops * sizeof(uint64_t)), malloc(nops * sizeof(void *)), 0 };
	unsigned long bad = 0, badcheck = 0, nsets = 0, ndels = 0, nhits = 0;
	oc_pagemap_t pm;
	void *v, *want;

	oc_pagemap_init(&pm);
	for (i = 0; i < npool; i++)
		pool[i] = rnd_key();

	for (op = 0; op < nops; op++) {
		uint64_t c = rnd() % 100;

		/* Mostly keys from the pool, so that deletes and gets hit. */
		k = rnd() % 8 ? pool[rnd() % npool] : rnd_key();
		i = ref_lower(&r, k);
		want = i < r.n && r.key[i] == k ? r.val[i] : NULL;
		if (c < 40) {
			v = val(++serial);
			if (oc_pagemap_set(&pm, k, v))
				bad++;
			if (want) {
				r.val[i] = v;
			} else {
				memmove(r.key + i + 1, r.key + i, (r.n - i) * sizeof(*r.key));
				memmove(r.val + i + 1, r.val + i, (r.n - i) * sizeof(*r.val));
				r.key[i] = k;
				r.val[i] = v;
				r.n++;
			}
			nsets++;
		} else if (c < 70) {
			if (oc_pagemap_del(&pm, k) != want)
				bad++;
			if (want) {
				memmove(r.key + i, r.key + i + 1, (r.n - i - 1) * sizeof(*r.key));
				memmove(r.val + i, r.val + i + 1, (r.n - i - 1) * sizeof(*r.val));
				r.n--;
				ndels++;
			}
		} else if (c < 85) {
			if (oc_pagemap_get(&pm, k) != want)
				bad++;
			nhits += want != NULL;
		} else {
			k2 = k + rnd() % 3 - 1; /* at, just before or just after a key */
			i = ref_lower(&r, k2);
			v = oc_pagemap_next(&pm, &k2);
			if (i < r.n ? v != r.val[i] || k2 != r.key[i] : v != NULL)
				bad++;
		}
		if (pm.count != r.n)
			bad++;
		if (op % 1024 == 0 && oc_pagemap_check(&pm))
			badcheck++;
	}
	CHECK(bad == 0, "differential: %zu ops (%lu sets, %lu deletes, %lu get hits), %lu mismatches",
	      nops, nsets, ndels, nhits, bad);
	CHECK(badcheck == 0 && oc_pagemap_check(&pm) == 0, "differential: check along the way");

	/* A final full comparison, then drain through del. */
	bad = 0, i = 0;
	for (k = 0; (v = oc_pagemap_next(&pm, &k)); k++) {
		if (i >= r.n || k != r.key[i] || v != r.val[i])
			bad++;
		i++;
		if (k == UINT64_MAX)
			break;
	}
	CHECK(bad == 0 && i == r.n, "differential: final iteration equals the reference");
	for (i = 0, bad = 0; i < r.n; i++)
		bad += oc_pagemap_del(&pm, r.key[i]) != r.val[i];
	CHECK(bad == 0 && pm.root == NULL && pm.height == 0 && live_nodes == 0,
	      "differential: deleting every key frees every node");
	free(pool);
	free(r.key);
	free(r.val);
}

int main(void)
{
	test_empty();
	test_basic();
	test_edges();
	test_above();
	test_check_detects();
	test_iterate();
	test_enomem();
	test_differential();
	CHECK(live_nodes == 0, "no nodes left at exit");
	return check_done();
}
