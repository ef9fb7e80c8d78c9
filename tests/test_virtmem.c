/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_virtmem: file handles, mappings, page faults and writeout, through
 * the public API only, counting loadblk/storeblk calls exactly.
 *
 * Every page-state transition of virtmem.h (EMPTY -> CLEAN -> DIRTY ->
 * CLEAN, discard, invalidate), overlapping mappings, unmap keeping dirty
 * data, the two writeout phases and their partial failure, bad arguments,
 * prefault and system calls on mapped memory, errno across a fault, and the
 * two backends that come with the library (in-RAM and plain file, whose
 * clean blocks come from the mapped base layer).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/mman.h>
#include <semaphore.h>
#include <pthread.h>

#include <outcore/outcore.h>

#include "check.h"
#include "testfile.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static oc_ram_stats_t stats(oc_ram_t *ram)
{
	oc_ram_stats_t st;
	memset(&st, 0, sizeof(st));
	oc_ram_stats(ram, &st);
	return st;
}

/* 1 when the handle's dirty blocks are exactly want[0..n). */
static int dirty_is(oc_fileh_t *fh, const uint64_t *want, uint64_t n)
{
	uint64_t got[64];
	int64_t r = oc_fileh_dirty_blocks(fh, got, 64);
	if (r != (int64_t)n) {
		printf("#   dirty_blocks returned %lld, want %llu\n",
		       (long long)r, (unsigned long long)n);
		return 0;
	}
	for (uint64_t i = 0; i < n; i++)
		if (got[i] != want[i]) {
			printf("#   dirty[%llu] = %llu, want %llu\n",
			       (unsigned long long)i,
			       (unsigned long long)got[i],
			       (unsigned long long)want[i]);
			return 0;
		}
	return 1;
}

/* 1 when the stores logged from index from on are exactly want[0..n). */
static int stores_are(tfile_t *tf, uint64_t from, const uint64_t *want,
		      uint64_t n)
{
	uint64_t have = TF_GET(&tf->nstore_log);
	if (have - from != n) {
		printf("#   %llu stores, want %llu\n",
		       (unsigned long long)(have - from),
		       (unsigned long long)n);
		return 0;
	}
	for (uint64_t i = 0; i < n; i++)
		if (tf->store_log[from + i] != want[i]) {
			printf("#   store %llu was block %llu, want %llu\n",
			       (unsigned long long)i,
			       (unsigned long long)tf->store_log[from + i],
			       (unsigned long long)want[i]);
			return 0;
		}
	return 1;
}

/* The stored copy of blk holds value v at word i (and the pattern at the
 * last word, when i is not the last). */
static int stored_word(tfile_t *tf, uint64_t blk, uint64_t i, uint64_t v)
{
	uint64_t *s = tf->stored[blk];
	size_t n = tf->blksize / 8;
	return s && s[i] == v && (i == n - 1 || s[n - 1] == tf_word(blk, n - 1));
}

/* Every transition of one page, for one page size. */
static void test_transitions(size_t ps)
{
	const uint64_t V0 = 0xA0A0A0A0A0A0A0A0ull, V1 = 0xB1B1B1B1B1B1B1B1ull;
	const uint64_t V2 = 0xC2C2C2C2C2C2C2C2ull, V3 = 0xD3D3D3D3D3D3D3D3ull;
	const uint64_t V0b = 0xE4E4E4E4E4E4E4E4ull;
	size_t n = ps / 8;
	tfile_t tf;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v1 = NULL, *v2 = NULL;
	oc_ram_stats_t st0, st1;
	uint64_t s0;
	char *a, *b;
	int err;

	printf("# transitions, page size %zu KiB\n", ps / KiB);
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram != NULL, "[%zuK] oc_ram_new: %d", ps / KiB, err);
	if (!ram)
		return;
	CHECK_EQ(tfile_init(&tf, ps, "tv"), 0, "oc_file_init");
	CHECK_EQ(oc_fileh_open(&fh, &tf.file, ram), 0, "oc_fileh_open");
	if (!fh)
		return;
	CHECK(oc_fileh_file(fh) == &tf.file && oc_fileh_ram(fh) == ram,
	      "oc_fileh_file / oc_fileh_ram");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 8, &v1), 0, "mmap [0,8)");
	if (!v1)
		return;
	a = oc_vma_addr(v1);
	CHECK_EQ(oc_vma_len(v1), 8 * ps, "vma length 8 pages");
	CHECK_EQ(oc_vma_pgoffset(v1), 0, "vma pgoffset");
	CHECK(oc_vma_fileh(v1) == fh, "vma fileh");
	CHECK((uintptr_t)a % ps == 0, "vma address page-aligned");
	if (8 * ps >= 2 * MiB)
		CHECK((uintptr_t)a % (2 * MiB) == 0, "vma address 2 MiB-aligned");
	CHECK(oc_vma_lookup(a + 3 * ps + 17) == v1, "oc_vma_lookup inside");
	CHECK(oc_vma_lookup(&n) == NULL, "oc_vma_lookup outside is NULL");
	oc_vma_set_user(v1, &tf);
	CHECK(oc_vma_user(v1) == &tf, "vma user pointer");
	CHECK_EQ(TF_GET(&tf.nloads), 0, "mmap loads nothing");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "new handle not dirty");

	/* EMPTY --read--> CLEAN: one load */
	st0 = stats(ram);
	CHECK(*tf_at(a, ps, 0, 1) == tf_word(0, 1), "read unloaded page 0");
	CHECK_EQ(TF_GET(&tf.nloads), 1, "read of unloaded page loads once");
	CHECK(tf_is_pattern(a, ps, 0, 1), "page 0 holds block 0 entirely");
	CHECK_EQ(TF_GET(&tf.nloads), 1, "second read does not load");
	st1 = stats(ram);
	CHECK_EQ(st1.loads - st0.loads, 1, "stats.loads +1");
	CHECK(st1.faults - st0.faults >= 1, "stats.faults counts the fault");
	CHECK_EQ(st1.ram_pages, 1, "stats.ram_pages 1");
	CHECK_EQ(st1.used, ps, "stats.used one page");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "read does not dirty");

	/* CLEAN --write--> DIRTY: no load */
	st0 = stats(ram);
	*tf_at(a, ps, 0, 0) = V0;
	CHECK_EQ(TF_GET(&tf.nloads), 1, "write to clean page: no load");
	CHECK_EQ(oc_fileh_isdirty(fh), 1, "write to clean page dirties");
	CHECK(dirty_is(fh, (uint64_t[]){0}, 1), "dirty blocks [0]");
	st1 = stats(ram);
	CHECK_EQ(st1.write_faults - st0.write_faults, 1, "stats.write_faults +1");
	CHECK_EQ(st1.dirty_pages, 1, "stats.dirty_pages 1");
	CHECK(*tf_at(a, ps, 0, 0) == V0 && *tf_at(a, ps, 0, 1) == tf_word(0, 1),
	      "page 0 reads back the write and the rest");

	/* EMPTY --write--> DIRTY: one load */
	*tf_at(a, ps, 1, 5) = V1;
	CHECK_EQ(TF_GET(&tf.nloads), 2, "write to unloaded page loads once");
	CHECK_EQ(TF_GET(&tf.blk_loads[1]), 1, "block 1 loaded once");
	CHECK(*tf_at(a, ps, 1, 4) == tf_word(1, 4) && *tf_at(a, ps, 1, n - 1) ==
	      tf_word(1, n - 1), "rest of page 1 is the loaded data");
	CHECK(dirty_is(fh, (uint64_t[]){0, 1}, 2), "dirty blocks [0 1]");

	/* overlapping mappings share pages */
	CHECK_EQ(oc_fileh_mmap(fh, 1, 3, &v2), 0, "mmap [1,4) overlapping");
	if (!v2)
		return;
	b = oc_vma_addr(v2);
	CHECK(b != a + ps, "second mapping at its own address");
	CHECK(*tf_at(b, ps, 0, 5) == V1, "dirty block 1 seen through mapping 2");
	CHECK_EQ(TF_GET(&tf.nloads), 2, "no load for a resident page");
	CHECK(*tf_at(b, ps, 1, 3) == tf_word(2, 3), "block 2 through mapping 2");
	CHECK_EQ(TF_GET(&tf.nloads), 3, "block 2 loaded once");
	CHECK(*tf_at(a, ps, 2, 3) == tf_word(2, 3), "block 2 through mapping 1");
	CHECK_EQ(TF_GET(&tf.nloads), 3, "one load for both mappings");
	*tf_at(a, ps, 2, 7) = V2;
	CHECK(*tf_at(b, ps, 1, 7) == V2, "write through 1 seen through 2");
	*tf_at(b, ps, 2, 9) = V3;
	CHECK_EQ(TF_GET(&tf.nloads), 4, "write to unloaded block 3 loads once");
	CHECK(*tf_at(a, ps, 3, 9) == V3, "write through 2 seen through 1");
	CHECK_EQ(TF_GET(&tf.nloads), 4, "and without another load");
	CHECK(dirty_is(fh, (uint64_t[]){0, 1, 2, 3}, 4), "dirty blocks [0 1 2 3]");
	CHECK(oc_vma_lookup(b) == v2, "lookup finds mapping 2");

	/* unmap keeps dirty data */
	CHECK_EQ(oc_vma_unmap(v2), 0, "unmap mapping 2");
	CHECK_EQ(oc_vma_unmap(v1), 0, "unmap mapping 1");
	CHECK(oc_vma_lookup(a) == NULL, "lookup after unmap is NULL");
	CHECK(dirty_is(fh, (uint64_t[]){0, 1, 2, 3}, 4),
	      "dirty blocks survive unmap");
	v1 = NULL;
	CHECK_EQ(oc_fileh_mmap(fh, 0, 8, &v1), 0, "mmap again");
	if (!v1)
		return;
	a = oc_vma_addr(v1);
	CHECK(*tf_at(a, ps, 0, 0) == V0 && *tf_at(a, ps, 1, 5) == V1 &&
	      *tf_at(a, ps, 2, 7) == V2 && *tf_at(a, ps, 3, 9) == V3,
	      "remapped: dirty data is back");
	CHECK_EQ(TF_GET(&tf.nloads), 4, "remapped dirty pages: no load");
	CHECK(*tf_at(a, ps, 1, 1) == tf_word(1, 1), "remapped: rest of page");

	/* STORE: ascending order, pages stay dirty */
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE), 0, "writeout STORE");
	CHECK(stores_are(&tf, s0, (uint64_t[]){0, 1, 2, 3}, 4),
	      "STORE stored blocks 0 1 2 3 in order");
	CHECK(stored_word(&tf, 0, 0, V0) && stored_word(&tf, 3, 9, V3),
	      "stored data is the written data");
	CHECK_EQ(oc_fileh_isdirty(fh), 1, "STORE leaves pages dirty");
	CHECK(dirty_is(fh, (uint64_t[]){0, 1, 2, 3}, 4), "still dirty [0 1 2 3]");
	CHECK_EQ(stats(ram).stores, 4, "stats.stores 4");

	/* MARKSTORED: clean, no store; a later write faults and re-dirties */
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_MARKSTORED), 0,
		 "writeout MARKSTORED");
	CHECK_EQ(TF_GET(&tf.nstore_log) - s0, 0, "MARKSTORED stores nothing");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "MARKSTORED: handle clean");
	CHECK(dirty_is(fh, NULL, 0), "MARKSTORED: no dirty blocks");
	CHECK_EQ(stats(ram).dirty_pages, 0, "stats.dirty_pages 0");
	CHECK(*tf_at(a, ps, 0, 0) == V0 && *tf_at(a, ps, 3, 9) == V3,
	      "data still there after MARKSTORED");
	st0 = stats(ram);
	*tf_at(a, ps, 2, 0) = V2;
	st1 = stats(ram);
	CHECK_EQ(st1.write_faults - st0.write_faults, 1,
		 "write after MARKSTORED faults again");
	CHECK(dirty_is(fh, (uint64_t[]){2}, 1), "and re-dirties [2]");
	CHECK_EQ(TF_GET(&tf.nloads), 4, "without a load");

	/* STORE|MARKSTORED in one call */
	*tf_at(a, ps, 5, 0) = V1; /* unloaded: loads block 5 */
	CHECK_EQ(TF_GET(&tf.nloads), 5, "block 5 loaded");
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0,
		 "writeout STORE|MARKSTORED");
	CHECK(stores_are(&tf, s0, (uint64_t[]){2, 5}, 2), "stored 2 then 5");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "and clean");
	CHECK(stored_word(&tf, 2, 0, V2) && stored_word(&tf, 5, 0, V1),
	      "stored data of 2 and 5");
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0,
		 "writeout with nothing dirty");
	CHECK_EQ(TF_GET(&tf.nstore_log) - s0, 0, "stores nothing");

	/* discard: the next access reloads the stored data */
	*tf_at(a, ps, 0, 0) = V0b;
	CHECK(dirty_is(fh, (uint64_t[]){0}, 1), "dirty [0] before discard");
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "discard: clean");
	CHECK(*tf_at(a, ps, 0, 0) == V0, "discarded page reads the stored data");
	CHECK_EQ(TF_GET(&tf.nloads), 6, "discarded page reloaded once");
	CHECK_EQ(TF_GET(&tf.blk_loads[0]), 2, "block 0 loaded twice in all");
	CHECK(*tf_at(a, ps, 5, 0) == V1, "clean page untouched by discard");
	CHECK_EQ(TF_GET(&tf.nloads), 6, "clean page not reloaded");

	/* invalidate: a clean block, a dirty block, a block not resident */
	CHECK(*tf_at(a, ps, 6, 2) == tf_word(6, 2), "read block 6");
	CHECK_EQ(TF_GET(&tf.nloads), 7, "block 6 loaded");
	CHECK_EQ(oc_fileh_invalidate(fh, 6), 0, "invalidate clean block 6");
	CHECK(*tf_at(a, ps, 6, 2) == tf_word(6, 2), "block 6 again");
	CHECK_EQ(TF_GET(&tf.nloads), 8, "invalidated clean block reloads");
	*tf_at(a, ps, 6, 2) = V3;
	CHECK(dirty_is(fh, (uint64_t[]){6}, 1), "dirty [6]");
	CHECK_EQ(oc_fileh_invalidate(fh, 6), 0, "invalidate dirty block 6");
	CHECK(dirty_is(fh, NULL, 0), "invalidated dirty block is not dirty");
	CHECK(*tf_at(a, ps, 6, 2) == tf_word(6, 2),
	      "invalidated dirty block reads the file's data");
	CHECK_EQ(TF_GET(&tf.nloads), 9, "and was reloaded");
	CHECK_EQ(oc_fileh_invalidate(fh, 7), 0, "invalidate a non-resident block");
	CHECK_EQ(oc_fileh_invalidate(fh, 1000000), 0,
		 "invalidate a block never mapped");

	/* bad writeout flags */
	CHECK_EQ(oc_fileh_writeout(fh, 0), -EINVAL, "writeout flags 0");
	CHECK_EQ(oc_fileh_writeout(fh, 4), -EINVAL, "writeout flags 4");
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE | 8), -EINVAL,
		 "writeout STORE|8");
	CHECK_EQ(oc_fileh_writeout(fh, -1), -EINVAL, "writeout flags -1");

	/* close with a mapping */
	CHECK_EQ(oc_fileh_close(fh), -EBUSY, "close with a mapping: -EBUSY");
	CHECK(*tf_at(a, ps, 0, 0) == V0, "handle still usable after -EBUSY");
	CHECK_EQ(oc_vma_unmap(v1), 0, "unmap");
	CHECK_EQ(oc_ram_close(ram), -EBUSY, "ram close with a handle: -EBUSY");
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	CHECK_EQ(stats(ram).ram_pages, 0, "close frees every page");
	CHECK_EQ(TF_GET(&tf.released), 0, "file not released while referenced");
	oc_file_put(&tf.file);
	CHECK_EQ(TF_GET(&tf.released), 1, "last put releases the file");
	CHECK_EQ(oc_ram_close(ram), 0, "ram close");
}

/* storeblk failing at the k-th page; a file without storeblk. */
static void test_writeout_errors(void)
{
	const size_t ps = 4 * KiB;
	tfile_t tf, ro;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL, *fr = NULL;
	oc_vma_t *v = NULL, *vr = NULL;
	uint64_t s0;
	char *a;
	int err;

	printf("# writeout errors\n");
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram != NULL, "oc_ram_new: %d", err);
	if (!ram)
		return;
	tfile_init(&tf, ps, "twerr");
	CHECK_EQ(oc_fileh_open(&fh, &tf.file, ram), 0, "open");
	oc_file_put(&tf.file); /* the handle holds its own reference */
	CHECK_EQ(TF_GET(&tf.released), 0, "handle keeps the file alive");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 8, &v), 0, "mmap");
	if (!v)
		return;
	a = oc_vma_addr(v);
	for (int i = 0; i < 5; i++)
		*tf_at(a, ps, i, 0) = 100 + i;
	CHECK(dirty_is(fh, (uint64_t[]){0, 1, 2, 3, 4}, 5), "5 dirty pages");

	/* STORE alone fails at the 3rd page: everything stays dirty */
	TF_SET(&tf.store_fail_at, TF_GET(&tf.nstore_calls) + 3);
	tf.store_fail_err = -EIO;
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE), -EIO,
		 "STORE failing at page 3 returns the error");
	CHECK(stores_are(&tf, s0, (uint64_t[]){0, 1, 2}, 3),
	      "stopped at the failing page");
	CHECK(dirty_is(fh, (uint64_t[]){0, 1, 2, 3, 4}, 5), "all still dirty");
	CHECK_EQ(stats(ram).store_errors, 1, "stats.store_errors 1");
	TF_SET(&tf.store_fail_at, 0);
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE), 0, "STORE retried");
	CHECK(stores_are(&tf, s0, (uint64_t[]){0, 1, 2, 3, 4}, 5),
	      "retry stores all 5");
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_MARKSTORED), 0, "MARKSTORED");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "clean");

	/* STORE|MARKSTORED fails at the 3rd: pages from it on stay dirty */
	for (int i = 0; i < 5; i++)
		*tf_at(a, ps, i, 0) = 200 + i;
	TF_SET(&tf.store_fail_at, TF_GET(&tf.nstore_calls) + 3);
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), -EIO,
		 "STORE|MARKSTORED failing at page 3 returns the error");
	CHECK(dirty_is(fh, (uint64_t[]){2, 3, 4}, 3),
	      "pages from the failing one on stay dirty [2 3 4]");
	CHECK(stored_word(&tf, 0, 0, 200) && stored_word(&tf, 1, 0, 201) &&
	      stored_word(&tf, 2, 0, 102), "blocks 0 1 stored, 2 not");
	{
		int ok = 1;
		for (int i = 0; i < 5; i++)
			ok &= *tf_at(a, ps, i, 0) == (uint64_t)(200 + i);
		CHECK(ok, "nothing lost: every page still holds its write");
	}
	CHECK_EQ(TF_GET(&tf.nloads), 5, "no reload happened");
	TF_SET(&tf.store_fail_at, 0);
	s0 = TF_GET(&tf.nstore_log);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0, "retry succeeds");
	CHECK(stores_are(&tf, s0, (uint64_t[]){2, 3, 4}, 3), "retry stored 2 3 4");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "clean after retry");
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard (nothing dirty)");
	CHECK(stored_word(&tf, 4, 0, 204), "block 4 stored");

	/* failure then discard: the stored data comes back */
	*tf_at(a, ps, 1, 0) = 301;
	TF_SET(&tf.store_fail_at, TF_GET(&tf.nstore_calls) + 1);
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), -EIO, "fails again");
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard after a failed writeout");
	CHECK(*tf_at(a, ps, 1, 0) == 201, "discarded: the stored data is back");
	TF_SET(&tf.store_fail_at, 0);
	CHECK_EQ(oc_vma_unmap(v), 0, "unmap");
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	CHECK_EQ(TF_GET(&tf.released), 1, "close dropped the last reference");

	/* read-only file: -EROFS, the page stays dirty */
	tfile_init_ops(&ro, ps, "tro", &tf_ops_ro);
	CHECK_EQ(oc_fileh_open(&fr, &ro.file, ram), 0, "open read-only file");
	CHECK_EQ(oc_fileh_mmap(fr, 0, 2, &vr), 0, "mmap");
	if (vr) {
		*tf_at(oc_vma_addr(vr), ps, 0, 0) = 7;
		CHECK_EQ(oc_fileh_writeout(fr, OC_WRITEOUT_STORE), -EROFS,
			 "writeout without storeblk: -EROFS");
		CHECK_EQ(oc_fileh_isdirty(fr), 1, "page stays dirty");
		CHECK_EQ(oc_fileh_discard(fr), 0, "discard");
		CHECK(*tf_at(oc_vma_addr(vr), ps, 0, 0) == tf_word(0, 0),
		      "original data after discard");
		oc_vma_unmap(vr);
	}
	oc_fileh_close(fr);
	oc_file_put(&ro.file);
	CHECK_EQ(oc_ram_close(ram), 0, "ram close");
}

static int dummy_load(oc_file_t *f, uint64_t blk, void *buf)
{
	(void)f, (void)blk, (void)buf;
	return 0;
}

/* Bad arguments return errors, never crash. */
static void test_bad_args(void)
{
	const size_t ps = 4 * KiB;
	tfile_t tf, tf8, tf2m;
	oc_ram_t *ram, *ram2m;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = (oc_vma_t *)&tf;
	oc_file_t f;
	oc_file_ops_t ops = {.version = OC_FILE_OPS_VERSION, .loadblk = dummy_load};
	int err;

	printf("# bad arguments\n");
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram != NULL, "oc_ram_new: %d", err);
	if (!ram)
		return;

	/* file ops table */
	memset(&f, 0, sizeof(f));
	ops.version = 0;
	CHECK_EQ(oc_file_init(&f, &ops, ps, "v0"), OC_EVERSION,
		 "ops version 0: OC_EVERSION");
	ops.version = OC_FILE_OPS_VERSION + 1000;
	CHECK_EQ(oc_file_init(&f, &ops, ps, "vnew"), OC_EVERSION,
		 "ops version from the future: OC_EVERSION");
	ops.version = OC_FILE_OPS_VERSION;
	ops.loadblk = NULL;
	CHECK_EQ(oc_file_init(&f, &ops, ps, "noload"), -EINVAL,
		 "NULL loadblk: -EINVAL");
	ops.loadblk = dummy_load;
	CHECK_EQ(oc_file_init(&f, &ops, 6000, "bs"), -EINVAL,
		 "block size not a power of two: -EINVAL");
	CHECK_EQ(oc_file_init(&f, &ops, 2048, "bs"), -EINVAL,
		 "block size 2048: -EINVAL");
	CHECK_EQ(oc_file_init(&f, NULL, ps, "x"), -EINVAL, "NULL ops: -EINVAL");
	CHECK_EQ(oc_file_init(NULL, &ops, ps, "x"), -EINVAL, "NULL file: -EINVAL");
	CHECK_EQ(oc_fileh_open(&fh, NULL, ram), -EINVAL, "open NULL file");
	CHECK(fh == NULL, "out untouched");

	/* block size differing from the page size */
	tfile_init(&tf8, 8 * KiB, "t8k");
	fh = NULL;
	CHECK_EQ(oc_fileh_open(&fh, &tf8.file, ram), OC_EBLKSIZE,
		 "8 KiB blocks on 4 KiB pages: OC_EBLKSIZE");
	CHECK(fh == NULL, "out untouched");
	oc_file_put(&tf8.file);
	CHECK(strlen(oc_strerror(OC_EBLKSIZE)) > 0, "strerror(OC_EBLKSIZE): %s",
	      oc_strerror(OC_EBLKSIZE));

	/* mapping ranges */
	tfile_init(&tf, ps, "targs");
	CHECK_EQ(oc_fileh_open(&fh, &tf.file, ram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 0, &v), -EINVAL, "mmap pglen 0: -EINVAL");
	CHECK(v == (oc_vma_t *)&tf, "out untouched");
	CHECK_EQ(oc_fileh_mmap(fh, UINT64_MAX, 1, &v), -EINVAL,
		 "mmap at block 2^64-1: -EINVAL");
	CHECK_EQ(oc_fileh_mmap(fh, 1, UINT64_MAX, &v), -EINVAL,
		 "mmap 2^64-1 blocks (offset overflow): -EINVAL");
	CHECK_EQ(oc_fileh_mmap(fh, ((uint64_t)1 << 51) - 1, 2, &v), -EINVAL,
		 "mmap reaching past 2^63 bytes: -EINVAL");
	CHECK_EQ(oc_fileh_mmap(fh, (uint64_t)1 << 52, 1, &v), -EINVAL,
		 "mmap starting past 2^63 bytes: -EINVAL");
	err = oc_fileh_mmap(fh, 0, (uint64_t)1 << 50, &v);
	CHECK_EQ(err, -ENOMEM, "mmap of 2^62 bytes (beyond the address space)");
	CHECK(v == (oc_vma_t *)&tf, "out untouched");
	v = NULL;
	CHECK_EQ(oc_fileh_mmap(fh, ((uint64_t)1 << 51) - 4, 2, &v), 0,
		 "mmap just below 2^63 bytes works");
	if (v) {
		CHECK(*tf_at(oc_vma_addr(v), ps, 1, 0) ==
		      tf_word(((uint64_t)1 << 51) - 3, 0),
		      "and loads the right block");
		oc_vma_unmap(v);
	}
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
	CHECK_EQ(oc_fileh_close(NULL), 0, "close NULL");
	CHECK_EQ(oc_vma_unmap(NULL), 0, "unmap NULL");

	/* 2 MiB pages: 2^46 pages is 2^67 bytes, 2^38 pages is 2^59 bytes */
	ram2m = tf_ram(2 * MiB, 64 * MiB, &err);
	CHECK(ram2m != NULL, "2 MiB RAM: %d", err);
	if (ram2m) {
		fh = NULL;
		tfile_init(&tf2m, 2 * MiB, "t2m");
		CHECK_EQ(oc_fileh_open(&fh, &tf2m.file, ram2m), 0, "open 2 MiB");
		v = NULL;
		err = oc_fileh_mmap(fh, 0, (uint64_t)1 << 46, &v);
		CHECK(err < 0 && v == NULL, "mmap 2^46 pages of 2 MiB: error %d",
		      err);
		err = oc_fileh_mmap(fh, 0, (uint64_t)1 << 38, &v);
		CHECK(err == -ENOMEM && v == NULL,
		      "mmap 2^38 pages of 2 MiB (2^59 bytes): -ENOMEM (%d)", err);
		CHECK_EQ(oc_fileh_close(fh), 0, "close");
		oc_file_put(&tf2m.file);
		CHECK_EQ(oc_ram_close(ram2m), 0, "close 2 MiB RAM");
	}
	CHECK_EQ(oc_ram_close(ram), 0, "ram close");
}

/* oc_prefault and oc_fileh_load; system calls on mapped memory; errno. */
static void test_prefault(void)
{
	const size_t ps = 4 * KiB;
	tfile_t tf;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	oc_ram_stats_t st0, st1;
	uint64_t l0;
	char *a, local[64];
	int p[2], err, ok;
	ssize_t r;
	static char buf[4 * KiB];

	printf("# prefault, syscalls, errno\n");
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram != NULL, "oc_ram_new: %d", err);
	if (!ram)
		return;
	tfile_init(&tf, ps, "tpre");
	CHECK_EQ(oc_fileh_open(&fh, &tf.file, ram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 24, &v), 0, "mmap 24 blocks");
	if (!v)
		return;
	a = oc_vma_addr(v);

	CHECK_EQ(oc_prefault(a + 2 * ps, 4 * ps, 0), 0, "prefault blocks 2-5");
	CHECK_EQ(TF_GET(&tf.nloads), 4, "4 loads");
	st0 = stats(ram);
	ok = 1;
	for (int i = 2; i < 6; i++)
		ok &= tf_is_pattern(a + i * ps, ps, i, 1);
	st1 = stats(ram);
	CHECK(ok, "prefaulted data is right");
	CHECK_EQ(st1.faults - st0.faults, 0, "reading them takes no fault");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "read prefault does not dirty");
	CHECK_EQ(oc_prefault(a + 2 * ps, 4 * ps, 0), 0, "prefault again");
	CHECK_EQ(TF_GET(&tf.nloads), 4, "no more loads");

	CHECK_EQ(oc_prefault(a + 6 * ps + 100, 10, OC_PREFAULT_WRITE), 0,
		 "prefault for write inside block 6");
	CHECK_EQ(TF_GET(&tf.nloads), 5, "block 6 loaded");
	CHECK(dirty_is(fh, (uint64_t[]){6}, 1), "and dirty");
	st0 = stats(ram);
	*tf_at(a, ps, 6, 0) = 66;
	st1 = stats(ram);
	CHECK_EQ(st1.faults - st0.faults, 0, "writing it takes no fault");
	CHECK_EQ(oc_prefault(a + 3 * ps, ps, OC_PREFAULT_WRITE), 0,
		 "prefault for write of a clean page");
	CHECK(dirty_is(fh, (uint64_t[]){3, 6}, 2), "dirty [3 6]");
	CHECK_EQ(oc_prefault(a, ps, 0x100), -EINVAL, "prefault bad flags");
	CHECK_EQ(oc_prefault(local, sizeof(local), 0), 0,
		 "prefault outside managed memory is ignored");
	CHECK_EQ(oc_prefault(a + 23 * ps, 8 * ps, 0), 0,
		 "prefault straddling the end of the mapping");
	CHECK_EQ(TF_GET(&tf.blk_loads[23]), 1, "loads the managed part");

	/* errors come back as return codes */
	tf.load_fail_err = -EIO;
	TF_SET(&tf.load_fail, 1);
	l0 = TF_GET(&tf.nload_calls);
	CHECK_EQ(oc_prefault(a + 8 * ps, ps, 0), -EIO,
		 "prefault with a failing loadblk returns its error");
	CHECK_EQ(TF_GET(&tf.nload_calls) - l0, 1, "no retry in prefault");
	CHECK_EQ(stats(ram).load_errors, 1, "stats.load_errors 1");
	CHECK(*tf_at(a, ps, 8, 0) == tf_word(8, 0),
	      "the block loads fine afterwards");
	TF_SET(&tf.load_fail, 1);
	l0 = TF_GET(&tf.nload_calls);
	CHECK_EQ(oc_fileh_load(fh, 9, 2), -EIO,
		 "oc_fileh_load with a failing loadblk returns its error");
	CHECK_EQ(TF_GET(&tf.nload_calls) - l0, 1,
		 "one call, no retry, stops at the first error");
	CHECK_EQ(oc_fileh_load(fh, 9, 2), 0, "oc_fileh_load again: 0");
	CHECK(TF_GET(&tf.blk_loads[9]) == 2 && TF_GET(&tf.blk_loads[10]) == 1,
	      "blocks 9 and 10 loaded");
	l0 = TF_GET(&tf.nloads);
	st0 = stats(ram);
	CHECK(*tf_at(a, ps, 9, 0) == tf_word(9, 0) &&
	      *tf_at(a, ps, 10, 0) == tf_word(10, 0), "read blocks 9 10");
	CHECK_EQ(TF_GET(&tf.nloads) - l0, 0, "no load after oc_fileh_load");
	CHECK_EQ(oc_fileh_load(fh, 100, 3), 0,
		 "oc_fileh_load of blocks no mapping shows");
	CHECK_EQ(TF_GET(&tf.blk_loads[101]), 1, "loaded");

	/* system calls on unloaded memory: EFAULT; fine after prefault.
	 * (A pipe, not /dev/null: writing to /dev/null never reads the
	 * buffer.) */
	if (pipe(p) == 0) {
		l0 = TF_GET(&tf.nloads);
		errno = 0;
		r = write(p[1], a + 12 * ps, ps);
		CHECK(r == -1 && errno == EFAULT,
		      "write(2) from unloaded memory: EFAULT (%zd, %d)", r, errno);
		CHECK_EQ(TF_GET(&tf.nloads) - l0, 0, "no load from the kernel");
		CHECK_EQ(oc_prefault(a + 12 * ps, ps, 0), 0, "prefault it");
		r = write(p[1], a + 12 * ps, ps);
		CHECK_EQ(r, (ssize_t)ps, "write(2) after prefault succeeds");
		r = read(p[0], buf, ps);
		CHECK(r == (ssize_t)ps && tf_is_pattern(buf, ps, 12, 1),
		      "and wrote the block's data");
		/* input buffer: needs a write prefault */
		memset(buf, 0x5a, ps);
		CHECK_EQ(write(p[1], buf, ps), (ssize_t)ps, "fill pipe");
		errno = 0;
		r = read(p[0], a + 14 * ps, ps);
		CHECK(r == -1 && errno == EFAULT,
		      "read(2) into unloaded memory: EFAULT (%zd, %d)", r, errno);
		CHECK_EQ(oc_prefault(a + 14 * ps, ps, OC_PREFAULT_WRITE), 0,
			 "prefault for write");
		r = read(p[0], a + 14 * ps, ps);
		CHECK(r == (ssize_t)ps && *tf_at(a, ps, 14, 0) ==
		      0x5a5a5a5a5a5a5a5aull, "read(2) after write prefault");
		CHECK_EQ(TF_GET(&tf.blk_loads[14]), 1, "block 14 loaded once");
		close(p[0]);
		close(p[1]);
	} else {
		CHECK(0, "pipe: %s", strerror(errno));
	}

	/* errno is preserved across a served fault */
	errno = 12345;
	ok = *tf_at(a, ps, 16, 1) == tf_word(16, 1);
	CHECK(ok && errno == 12345, "errno kept across a read fault (%d)", errno);
	errno = 12345;
	*tf_at(a, ps, 16, 1) = 1;
	CHECK_EQ(errno, 12345, "errno kept across a write fault (clean page)");
	errno = 12345;
	*tf_at(a, ps, 17, 1) = 1;
	CHECK_EQ(errno, 12345, "errno kept across a write fault (unloaded)");
	tf.load_fail_err = -ENOSPC;
	TF_SET(&tf.load_fail, 1); /* retried inside the fault */
	errno = 12345;
	ok = *tf_at(a, ps, 18, 1) == tf_word(18, 1);
	CHECK(ok && errno == 12345,
	      "errno kept across a fault whose first load failed (%d)", errno);

	oc_vma_unmap(v);
	oc_fileh_close(fh);
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "ram close");
}

/* The in-RAM backend. */
static void test_memfile(size_t ps)
{
	oc_file_t *f = NULL, *g = (oc_file_t *)&ps;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL, *fh2 = NULL;
	oc_vma_t *v = NULL, *v2 = NULL;
	uint64_t loads = 9, stores = 9, nblocks = 9;
	size_t n = ps / 8;
	char *a;
	int err, ok;

	printf("# in-RAM file, page size %zu KiB\n", ps / KiB);
	CHECK_EQ(oc_memfile_new(&g, 1000), -EINVAL, "memfile block size 1000");
	CHECK(g == (oc_file_t *)&ps, "out untouched");
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram != NULL, "oc_ram_new: %d", err);
	if (!ram)
		return;
	CHECK_EQ(oc_memfile_new(&f, ps), 0, "oc_memfile_new");
	if (!f)
		return;
	CHECK_EQ(f->blksize, ps, "blksize");
	CHECK_EQ(oc_fileh_open(&fh, f, ram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 4, &v), 0, "mmap");
	if (!v)
		return;
	a = oc_vma_addr(v);
	ok = 1;
	for (size_t i = 0; i < n; i++)
		ok &= *tf_at(a, ps, 1, i) == 0;
	CHECK(ok, "a never-stored block reads zeros");
	for (size_t i = 0; i < n; i++)
		*tf_at(a, ps, 0, i) = tf_word(0, i);
	*tf_at(a, ps, 2, n - 1) = 42;
	CHECK(dirty_is(fh, (uint64_t[]){0, 2}, 2), "dirty [0 2]");
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0, "writeout");
	CHECK_EQ(oc_memfile_counts(f, &loads, &stores, &nblocks), 0, "counts");
	CHECK(loads <= 3, "memfile: at most one load per block (%llu)",
	      (unsigned long long)loads);
	CHECK_EQ(stores, 2, "memfile stores 2");
	CHECK_EQ(nblocks, 2, "memfile holds 2 blocks");

	CHECK_EQ(oc_fileh_open(&fh2, f, ram), 0, "second handle");
	CHECK_EQ(oc_fileh_mmap(fh2, 0, 4, &v2), 0, "mmap second handle");
	if (v2) {
		char *b = oc_vma_addr(v2);
		uint64_t l0 = loads;
		CHECK(tf_is_pattern(b, ps, 0, 1), "second handle reads block 0");
		CHECK(*tf_at(b, ps, 2, n - 1) == 42 && *tf_at(b, ps, 2, 0) == 0,
		      "second handle reads block 2");
		oc_memfile_counts(f, &loads, &stores, &nblocks);
		CHECK_EQ(loads - l0, 2, "memfile: each stored block loaded once");
		*tf_at(b, ps, 3, 0) = 99;
		CHECK(*tf_at(a, ps, 3, 0) == 0,
		      "a handle's dirty page is not seen by another handle");
		oc_vma_unmap(v2);
	}
	oc_fileh_close(fh2);
	*tf_at(a, ps, 0, 0) = 77;
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
	oc_memfile_counts(f, &loads, &stores, &nblocks);
	{
		uint64_t l0 = loads;
		CHECK(tf_is_pattern(a, ps, 0, 1), "discarded: stored data back");
		oc_memfile_counts(f, &loads, &stores, &nblocks);
		CHECK_EQ(loads - l0, 1, "memfile: reloaded once");
	}
	CHECK_EQ(stores, 2, "no store from the second handle (never written "
		 "out)");
	CHECK_EQ(oc_vma_unmap(v), 0, "unmap");
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(f);
	CHECK_EQ(oc_ram_close(ram), 0, "ram close");
}

static int write_all(int fd, const void *p, size_t n, off_t off)
{
	return pwrite(fd, p, n, off) == (ssize_t)n ? 0 : -1;
}

/* The plain-file backend and its mapped base layer. */
static void test_plainfile(void)
{
	const size_t ps = 64 * KiB;
	size_t n = ps / 8;
	char path[256], path2[sizeof(path) + 8];
	const char *tmp = getenv("TMPDIR");
	oc_file_t *f = NULL, *g = NULL;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	oc_ram_stats_t st0, st1;
	uint64_t *blk;
	char *a;
	int fd, err, ok;

	printf("# plain file, page size %zu KiB\n", ps / KiB);
	snprintf(path, sizeof(path), "%s/oc-test-plain-XXXXXX", tmp ? tmp : "/tmp");
	fd = mkstemp(path);
	CHECK(fd >= 0, "mkstemp %s", path);
	if (fd < 0)
		return;
	blk = malloc(ps);
	/* 4.5 blocks of pattern */
	for (uint64_t b = 0; b < 5; b++) {
		tf_fill(blk, ps, b);
		write_all(fd, blk, b < 4 ? ps : ps / 2, b * ps);
	}
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram != NULL, "oc_ram_new: %d", err);
	if (!ram)
		goto out;
	CHECK_EQ(oc_plainfile_open(&f, path, ps, 0), 0, "oc_plainfile_open");
	if (!f)
		goto out;
	CHECK_EQ(oc_plainfile_size(f), 4 * ps + ps / 2, "size 4.5 blocks");
	CHECK_EQ(oc_fileh_open(&fh, f, ram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 8, &v), 0, "mmap 8 blocks");
	if (!v)
		goto out;
	a = oc_vma_addr(v);

	st0 = stats(ram);
	CHECK(tf_is_pattern(a, ps, 0, 1), "block 0 reads the file");
	st1 = stats(ram);
	/* the budget holds the whole mapping: the blocks that follow are
	 * mapped too, up to the partial block 4 */
	CHECK_EQ(st1.base_maps - st0.base_maps, 4,
		 "through the base layer, with the following full blocks");
	CHECK_EQ(st1.loads - st0.loads, 0, "without a loadblk copy");
	CHECK_EQ(st1.base_blocks, 4, "stats.base_blocks 4");
	CHECK_EQ(st1.ram_pages, 0, "no RAM page used");
	CHECK_EQ(st1.used, 4 * ps, "used counts the base-mapped blocks");
	CHECK_EQ(stats(ram).faults - st0.faults, 1, "one fault");
	CHECK(tf_is_pattern(a + 3 * ps, ps, 3, 1) &&
	      stats(ram).faults - st0.faults == 1 && stats(ram).base_maps - st0.base_maps == 4,
	      "block 3 reads the file with no fault (mapped with block 0)");
	ok = tf_is_pattern(a + 4 * ps, ps / 2, 4, 1);
	for (size_t i = n / 2; i < n; i++)
		ok &= *tf_at(a, ps, 4, i) == 0;
	CHECK(ok, "partial last block: data then zeros");
	ok = 1;
	for (size_t i = 0; i < n; i++)
		ok &= *tf_at(a, ps, 6, i) == 0;
	CHECK(ok, "block past the end reads zeros");

	/* copy-on-write */
	CHECK(tf_is_pattern(a + ps, ps, 1, 1), "block 1 reads the file");
	st0 = stats(ram);
	*tf_at(a, ps, 1, 0) = 0xfeed;
	st1 = stats(ram);
	CHECK(st1.granule_copies - st0.granule_copies == 1 &&
	      st1.cow_copies == st0.cow_copies && st1.patched_pages == 1,
	      "first write copies one granule (a patched block)");
	CHECK(dirty_is(fh, (uint64_t[]){1}, 1), "dirty [1]");
	CHECK(*tf_at(a, ps, 1, 0) == 0xfeed && *tf_at(a, ps, 1, 1) == tf_word(1, 1),
	      "copy holds the write and the file's data");
	CHECK(pread(fd, blk, 8, ps) == 8 && blk[0] == tf_word(1, 0),
	      "file unchanged before writeout");
	*tf_at(a, ps, 1, 1) = 0xbeef;
	CHECK_EQ(stats(ram).granule_copies - st0.granule_copies, 1,
		 "second write to that granule: no second copy");
	*tf_at(a, ps, 3, n - 1) = 0xcafe; /* never read: write to base block */
	*tf_at(a, ps, 7, 0) = 0xdead;     /* past the end */
	CHECK(dirty_is(fh, (uint64_t[]){1, 3, 7}, 3), "dirty [1 3 7]");
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0, "writeout");
	CHECK(pread(fd, blk, ps, ps) == (ssize_t)ps && blk[0] == 0xfeed &&
	      blk[1] == 0xbeef && blk[2] == tf_word(1, 2) &&
	      blk[n - 1] == tf_word(1, n - 1), "pread: block 1 written");
	CHECK(pread(fd, blk, ps, 3 * ps) == (ssize_t)ps &&
	      blk[n - 1] == 0xcafe && blk[0] == tf_word(3, 0),
	      "pread: block 3 written");
	{
		struct stat sb;
		CHECK(fstat(fd, &sb) == 0 && sb.st_size == (off_t)(4 * ps + ps / 2),
		      "block past the end not written: size unchanged");
	}
	CHECK(*tf_at(a, ps, 1, 0) == 0xfeed && *tf_at(a, ps, 3, n - 1) == 0xcafe,
	      "data readable after writeout");
	st0 = stats(ram);
	*tf_at(a, ps, 1, 2) = 5;
	st1 = stats(ram);
	CHECK_EQ(st1.write_faults - st0.write_faults, 1,
		 "write after writeout faults");
	CHECK(dirty_is(fh, (uint64_t[]){1}, 1), "and re-dirties");

	/* discard: the file's data comes back */
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
	CHECK(*tf_at(a, ps, 1, 2) == tf_word(1, 2) && *tf_at(a, ps, 1, 0) == 0xfeed,
	      "discarded block reads the file");
	*tf_at(a, ps, 2, 0) = 1;
	CHECK_EQ(oc_fileh_invalidate(fh, 2), 0, "invalidate dirty block 2");
	CHECK(tf_is_pattern(a + 2 * ps, ps, 2, 1), "block 2 reads the file");

	/* resize */
	CHECK_EQ(oc_plainfile_resize(f, 8 * ps), 0, "resize to 8 blocks");
	CHECK_EQ(oc_plainfile_size(f), 8 * ps, "size 8 blocks");
	*tf_at(a, ps, 7, 0) = 0xdead;
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0, "writeout");
	CHECK(pread(fd, blk, 8, 7 * ps) == 8 && blk[0] == 0xdead,
	      "block 7 written after growth");
	CHECK_EQ(oc_plainfile_sync(f), 0, "sync");

	/* shrinking under mapped blocks: they read zeros past the new end
	 * (blocks mapped from the file raised SIGBUS there) */
	{
		uint64_t w1 = *tf_at(a, ps, 1, 1), w2 = *tf_at(a, ps, 2, 1),
			 w3 = *tf_at(a, ps, 3, 1); /* mapped now */
		*tf_at(a, ps, 6, 0) = 1;
		CHECK_EQ(oc_plainfile_resize(f, 2 * ps + ps / 2), -EBUSY,
			 "shrink over a dirty page: -EBUSY");
		CHECK_EQ(oc_plainfile_size(f), 8 * ps, "the size unchanged");
		CHECK_EQ(oc_fileh_discard(fh), 0, "discard it");
		CHECK_EQ(oc_plainfile_resize(f, 2 * ps + ps / 2), 0,
			 "shrink to 2.5 blocks");
		ok = *tf_at(a, ps, 2, 1) == w2;
		for (size_t i = n / 2; i < n; i++)
			ok &= *tf_at(a, ps, 2, i) == 0;
		CHECK(ok, "the block holding the end: data then zeros");
		CHECK(w3 && *tf_at(a, ps, 3, 1) == 0 && *tf_at(a, ps, 7, 0) == 0,
		      "blocks past the end: zeros");
		CHECK(*tf_at(a, ps, 1, 1) == w1, "block 1 as it was");
	}
	oc_vma_unmap(v);
	v = NULL;
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	fh = NULL;
	oc_file_put(f);
	f = NULL;

	/* read-only */
	CHECK_EQ(oc_plainfile_open(&f, path, ps, OC_PLAINFILE_RDONLY), 0,
		 "open read-only");
	if (f) {
		CHECK_EQ(oc_fileh_open(&fh, f, ram), 0, "open handle");
		CHECK_EQ(oc_fileh_mmap(fh, 0, 2, &v), 0, "mmap");
		if (v) {
			a = oc_vma_addr(v);
			*tf_at(a, ps, 0, 0) = 3;
			CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE), -EROFS,
				 "writeout of a read-only plain file: -EROFS");
			CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
			CHECK(tf_is_pattern(a, ps, 0, 1), "file data back");
			oc_vma_unmap(v);
			v = NULL;
		}
		CHECK_EQ(oc_plainfile_resize(f, ps), -EROFS,
			 "resize read-only: -EROFS");
		oc_fileh_close(fh);
		fh = NULL;
		oc_file_put(f);
		f = NULL;
	}

	/* create */
	snprintf(path2, sizeof(path2), "%s.new", path);
	unlink(path2);
	CHECK_EQ(oc_plainfile_open(&g, path2, ps, 0), -ENOENT,
		 "open missing file: -ENOENT");
	CHECK_EQ(oc_plainfile_open(&g, path2, ps, OC_PLAINFILE_CREATE), 0,
		 "open with CREATE");
	if (g) {
		CHECK_EQ(oc_plainfile_size(g), 0, "created empty");
		CHECK_EQ(oc_plainfile_resize(g, ps), 0, "resize to one block");
		CHECK_EQ(oc_fileh_open(&fh, g, ram), 0, "open handle");
		CHECK_EQ(oc_fileh_mmap(fh, 0, 1, &v), 0, "mmap");
		if (v) {
			*tf_at(oc_vma_addr(v), ps, 0, 3) = 33;
			CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
						   OC_WRITEOUT_MARKSTORED), 0,
				 "writeout");
			oc_vma_unmap(v);
			v = NULL;
		}
		oc_fileh_close(fh);
		fh = NULL;
		oc_file_put(g);
		int fd2 = open(path2, O_RDONLY);
		CHECK(fd2 >= 0 && pread(fd2, blk, 32, 0) == 32 && blk[3] == 33 &&
		      blk[0] == 0, "created file holds the write");
		if (fd2 >= 0)
			close(fd2);
	}
	unlink(path2);
out:
	if (v)
		oc_vma_unmap(v);
	if (fh)
		oc_fileh_close(fh);
	if (f)
		oc_file_put(f);
	if (ram)
		CHECK_EQ(oc_ram_close(ram), 0, "ram close");
	if (fd >= 0)
		close(fd);
	unlink(path);
	free(blk);
}

/* ---- partial copy-on-write of base-layer blocks ------------------------ */

/* A file over a real file with a base layer, that keeps its own copy of
 * what was stored and records how. */
struct bfile {
	oc_file_t file;
	int fd;
	size_t bs;
	unsigned char *kept;   /* nblk blocks: the file as stored */
	uint64_t nfull, npart; /* storeblk / storeblk_part calls */
	uint32_t last_mask;
	size_t last_granule;
};

static int bf_mapblk(oc_file_t *f, uint64_t blk, int *fd, uint64_t *off)
{
	struct bfile *b = (struct bfile *)f;
	*fd = b->fd;
	*off = blk * b->bs;
	return 0;
}

static int bf_loadblk(oc_file_t *f, uint64_t blk, void *buf)
{
	struct bfile *b = (struct bfile *)f;
	return pread(b->fd, buf, b->bs, (off_t)(blk * b->bs)) == (ssize_t)b->bs
		       ? 0 : -EIO;
}

static int bf_storeblk(oc_file_t *f, uint64_t blk, const void *buf)
{
	struct bfile *b = (struct bfile *)f;
	memcpy(b->kept + blk * b->bs, buf, b->bs);
	b->nfull++;
	return 0;
}

static int bf_storeblk_part(oc_file_t *f, uint64_t blk, const void *buf,
			    uint32_t changed, size_t granule)
{
	struct bfile *b = (struct bfile *)f;
	for (size_t g = 0; g < b->bs / granule; g++)
		if ((changed >> g) & 1)
			memcpy(b->kept + blk * b->bs + g * granule,
			       (const char *)buf + g * granule, granule);
	b->npart++;
	b->last_mask = changed;
	b->last_granule = granule;
	return 0;
}

static const oc_file_ops_t bf_ops = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = bf_loadblk,
	.storeblk = bf_storeblk,
	.mapblk = bf_mapblk,
	.storeblk_part = bf_storeblk_part,
};

/* The same file as a version 1 ops table (which has no storeblk_part). */
static const oc_file_ops_t bf_ops_v1 = {
	.version = 1,
	.loadblk = bf_loadblk,
	.storeblk = bf_storeblk,
	.mapblk = bf_mapblk,
};

static void test_patch(size_t ps, int v1)
{
	const uint64_t N = 8;
	const size_t gran = ps / 32 > 4096 ? ps / 32 : 4096, ng = ps / gran;
	const size_t wpg = gran / 8; /* words per granule */
	char path[256];
	const char *tmp = getenv("TMPDIR");
	struct bfile bf = {0};
	oc_ram_t *ram = NULL;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL, *w = NULL;
	oc_ram_stats_t st0, st;
	unsigned char *buf = malloc(ps);
	char *a, *b;
	int err, ok;

	printf("# partial copy-on-write, page size %zu KiB, granule %zu KiB%s\n",
	       ps / KiB, gran / KiB, v1 ? ", version 1 ops" : "");
	snprintf(path, sizeof(path), "%s/oc-test-patch-XXXXXX", tmp ? tmp : "/tmp");
	bf.fd = mkstemp(path);
	CHECK(bf.fd >= 0 && buf, "mkstemp");
	if (bf.fd < 0 || !buf)
		goto out;
	unlink(path);
	bf.bs = ps;
	bf.kept = malloc(N * ps);
	for (uint64_t k = 0; k < N; k++) {
		tf_fill(bf.kept + k * ps, ps, k);
		write_all(bf.fd, bf.kept + k * ps, ps, (off_t)(k * ps));
	}
	CHECK_EQ(oc_file_init(&bf.file, v1 ? &bf_ops_v1 : &bf_ops, ps, "patch"),
		 0, "file");
	ram = tf_ram(ps, 64 * ps, &err);
	CHECK(ram && oc_fileh_open(&fh, &bf.file, ram) == 0 &&
	      oc_fileh_mmap(fh, 0, N, &v) == 0, "open and map");
	if (!v)
		goto out;
	a = oc_vma_addr(v);

	/* writes to granules 0 and 2 of block 1: two granules copied */
	st0 = stats(ram);
	*tf_at(a, ps, 1, 0) = 0xa0;
	*tf_at(a, ps, 1, 1) = 0xa1;
	*tf_at(a, ps, 1, 2 * wpg + 3) = 0xa2;
	st = stats(ram);
	CHECK(st.granule_copies - st0.granule_copies == 2 &&
	      st.cow_copies == st0.cow_copies && st.patched_pages == 1 &&
	      st.dirty_pages == 1 && st.ram_pages == st0.ram_pages,
	      "two granules copied, one patched page (%llu copies)",
	      (unsigned long long)(st.granule_copies - st0.granule_copies));
	CHECK(st.patch_bytes == 2 * gran &&
	      st.used == (st.base_blocks + st.ram_pages) * ps + st.patch_bytes,
	      "used: mapped bases + RAM pages + 2 granules (%llu KiB)",
	      (unsigned long long)(st.used / KiB));
	ok = 1;
	for (size_t i = 0; i < ps / 8; i++) {
		uint64_t want = i == 0 ? 0xa0 : i == 1 ? 0xa1
			      : i == 2 * wpg + 3 ? 0xa2 : tf_word(1, i);
		ok &= *tf_at(a, ps, 1, i) == want;
	}
	CHECK(ok, "block 1 reads the writes over the file's data");
	CHECK(pread(bf.fd, buf, 8, (off_t)ps) == 8 &&
	      ((uint64_t *)buf)[0] == tf_word(1, 0), "the file is unchanged");
	CHECK(dirty_is(fh, (uint64_t[]){1}, 1), "dirty [1]");

	/* a second mapping shows the same block, and writes through either
	 * are seen by both */
	CHECK_EQ(oc_fileh_mmap(fh, 1, 1, &w), 0, "second mapping of block 1");
	if (!w)
		goto out;
	b = oc_vma_addr(w);
	CHECK(*tf_at(b, ps, 0, 0) == 0xa0 && *tf_at(b, ps, 0, 2 * wpg + 3) == 0xa2 &&
	      *tf_at(b, ps, 0, 5 * wpg) == tf_word(1, 5 * wpg),
	      "the second mapping shows the patched block");
	*tf_at(b, ps, 0, 5 * wpg) = 0xb5;  /* a new granule, through w */
	*tf_at(b, ps, 0, 1) = 0xb1;        /* an existing one */
	CHECK(*tf_at(a, ps, 1, 5 * wpg) == 0xb5 && *tf_at(a, ps, 1, 1) == 0xb1,
	      "writes through the second mapping are seen in the first");
	*tf_at(a, ps, 1, 5 * wpg + 1) = 0xa5;
	CHECK(*tf_at(b, ps, 0, 5 * wpg + 1) == 0xa5, "and the other way");
	CHECK_EQ(stats(ram).granule_copies - st0.granule_copies, 3,
		 "three granules copied in all");
	CHECK_EQ(oc_vma_unmap(w), 0, "unmap the second mapping");
	w = NULL;

	/* writeout: the file is told which granules changed */
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE), 0, "STORE");
	if (v1) {
		CHECK(bf.nfull == 1 && bf.npart == 0,
		      "version 1 file: storeblk with the whole block");
	} else {
		CHECK(bf.npart == 1 && bf.nfull == 0 && bf.last_granule == gran &&
		      bf.last_mask == ((1u << 0) | (1u << 2) | (1u << 5)),
		      "storeblk_part with granules 0, 2, 5 (mask %#x)",
		      (unsigned)bf.last_mask);
	}
	ok = 1;
	for (size_t i = 0; i < ps / 8; i++) {
		uint64_t want = i == 0 ? 0xa0 : i == 1 ? 0xb1
			      : i == 2 * wpg + 3 ? 0xa2 : i == 5 * wpg ? 0xb5
			      : i == 5 * wpg + 1 ? 0xa5 : tf_word(1, i);
		ok &= ((uint64_t *)(bf.kept + ps))[i] == want;
	}
	CHECK(ok, "what was stored is the whole new block");
	CHECK(dirty_is(fh, (uint64_t[]){1}, 1), "still dirty after STORE alone");
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_MARKSTORED), 0, "MARKSTORED");
	st = stats(ram);
	CHECK(st.patched_pages == 0 && st.dirty_pages == 0 &&
	      !oc_fileh_isdirty(fh), "marked stored: no patched page left");

	/* promotion: a quarter of the granules makes a whole RAM page */
	st0 = stats(ram);
	for (size_t g = 0; g <= ng / 4; g++)
		*tf_at(a, ps, 3, g * wpg) = 0xc0 + g;
	st = stats(ram);
	CHECK(st.cow_copies - st0.cow_copies == 1 && st.patched_pages == 0 &&
	      st.ram_pages - st0.ram_pages == 1 &&
	      st.granule_copies - st0.granule_copies == ng / 4,
	      "%zu granules written: promoted to a whole page", ng / 4 + 1);
	ok = 1;
	for (size_t i = 0; i < ps / 8; i++) {
		uint64_t want = i % wpg == 0 && i / wpg <= ng / 4 ? 0xc0 + i / wpg
								: tf_word(3, i);
		ok &= *tf_at(a, ps, 3, i) == want;
	}
	CHECK(ok, "the promoted page holds the writes and the file's data");

	/* discard drops a patched page: the file's data again */
	*tf_at(a, ps, 4, 7) = 0xd7;
	CHECK_EQ(stats(ram).patched_pages, 1, "block 4 patched");
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
	st = stats(ram);
	CHECK(st.patched_pages == 0 && st.dirty_pages == 0 &&
	      *tf_at(a, ps, 4, 7) == tf_word(4, 7) && *tf_at(a, ps, 3, 0) == tf_word(3, 0),
	      "after discard: the file's data, nothing patched");

	/* the budget: patched blocks are unmapped (never dropped) to bound
	 * what is used, and their data stays */
	CHECK_EQ(oc_ram_set_budget(ram, 3 * ps), 0, "budget 3 blocks");
	st0 = stats(ram);
	for (uint64_t k = 0; k < N; k++)
		*tf_at(a, ps, k, k) = 0xe0 + k;
	st = stats(ram);
	CHECK(st.patched_pages == N && st.dirty_pages == N &&
	      st.patch_unmaps - st0.patch_unmaps >= N - 3 &&
	      st.used <= 3 * ps + N * gran,
	      "%llu blocks patched within the budget (used %llu KiB, %llu unmapped)",
	      (unsigned long long)N, (unsigned long long)(st.used / KiB),
	      (unsigned long long)(st.patch_unmaps - st0.patch_unmaps));
	ok = 1;
	for (uint64_t k = 0; k < N; k++)
		ok &= *tf_at(a, ps, k, k) == 0xe0 + k &&
		      *tf_at(a, ps, k, k + 1) == tf_word(k, k + 1);
	CHECK(ok, "every patched block still holds its write");
	CHECK(stats(ram).used <= 3 * ps + N * gran, "and reading them stays in the budget");
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED),
		 0, "writeout of the unmapped patched blocks");
	ok = 1;
	for (uint64_t k = 0; k < N; k++)
		ok &= ((uint64_t *)(bf.kept + k * ps))[k] == 0xe0 + k;
	CHECK(ok, "all stored");
out:
	if (w)
		oc_vma_unmap(w);
	if (v)
		oc_vma_unmap(v);
	if (fh)
		oc_fileh_close(fh);
	if (ram)
		oc_ram_close(ram);
	if (bf.fd >= 0)
		close(bf.fd);
	free(bf.kept);
	free(buf);
}

/* Calls that fill a caller's buffer with the core lock held faulted on
 * a buffer in managed memory not loaded yet, and the fault waited for
 * that lock for ever: they fill it with the lock released now.  An alarm
 * ends the program if one hangs.  Then small argument checks. */
static void test_results_into_managed_memory(void)
{
	const size_t ps = 4 * KiB;
	oc_lock_hooks_t half = {0};
	oc_ram_stats_t *st;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	oc_ram_t *ram;
	uint64_t *out;
	char *a;
	tfile_t tf;
	int err;

	printf("# results written into managed memory\n");
	ram = tf_ram(ps, 64 * ps, &err);
	if (!ram || tfile_init(&tf, ps, "tout")) {
		CHECK(0, "RAM and file (%d)", err);
		return;
	}
	err = oc_fileh_open(&fh, &tf.file, ram);
	if (!err)
		err = oc_fileh_mmap(fh, 0, 8, &v);
	CHECK_EQ(err, 0, "open and map");
	if (!err) {
		a = oc_vma_addr(v);
		a[0] = 1;
		a[2 * ps] = 1;
		out = (uint64_t *)(a + 4 * ps); /* block 4: not loaded */
		alarm(120);
		CHECK_EQ(oc_fileh_dirty_blocks(fh, out, 4), 2,
			 "dirty blocks into an unloaded block: 2");
		CHECK(out[0] == 0 && out[1] == 2, "blocks 0 and 2 (%llu, %llu)",
		      (unsigned long long)out[0], (unsigned long long)out[1]);
		st = (oc_ram_stats_t *)(a + 6 * ps);
		CHECK_EQ(oc_ram_stats(ram, st), 0, "RAM stats into an unloaded block");
		CHECK(st->pagesize == ps, "they are there (page size %llu)",
		      (unsigned long long)st->pagesize);
		alarm(0);
		oc_fileh_discard(fh);
		oc_vma_unmap(v);
	}
	if (fh)
		oc_fileh_close(fh);
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");

	CHECK_EQ(oc_fileh_isdirty(NULL), -EINVAL, "isdirty(NULL): EINVAL");
	CHECK(!oc_fileh_file(NULL) && !oc_fileh_ram(NULL) && !oc_vma_addr(NULL) &&
	      !oc_vma_len(NULL) && !oc_vma_pgoffset(NULL) && !oc_vma_fileh(NULL) &&
	      !oc_vma_user(NULL) && !oc_ram_pagesize(NULL) && !oc_ram_budget(NULL),
	      "getters of NULL: NULL or 0");
	half.release = (void *(*)(void))1;
	CHECK_EQ(oc_set_lock_hooks(&half), -EINVAL,
		 "lock hooks: release without reacquire: EINVAL");
}

/* Read ahead runs mapblk for the blocks after the faulting one with the
 * lock released.  An oc_fileh_invalidate of one of them meanwhile found
 * nothing to drop (not in the map yet), and the read ahead then put the
 * block's old place in: the access after the invalidation saw old data.
 * Here the file moves block 1 while the read ahead waits in its mapblk. */
#define RA_BS 4096
static int ra_fd;
static uint64_t ra_where[8];
static sem_t ra_in, ra_go;
static int ra_calls1;

static int ra_load(oc_file_t *f, uint64_t blk, void *buf)
{
	(void)f;
	return pread(ra_fd, buf, RA_BS, (off_t)ra_where[blk]) == RA_BS ? 0 : -EIO;
}

static int ra_map(oc_file_t *f, uint64_t blk, int *fd, uint64_t *off)
{
	(void)f;
	if (blk >= 8)
		return OC_ZEROBLK;
	*fd = ra_fd;
	*off = __atomic_load_n(&ra_where[blk], __ATOMIC_SEQ_CST);
	if (blk == 1 && __atomic_fetch_add(&ra_calls1, 1, __ATOMIC_SEQ_CST) == 0) {
		sem_post(&ra_in); /* read ahead of block 1: wait here */
		sem_wait(&ra_go);
	}
	return 0;
}

static void *ra_toucher(void *a)
{
	return (void *)(uintptr_t)*(volatile char *)a;
}

static void test_readahead_vs_invalidate(void)
{
	static const oc_file_ops_t ops = {.version = 1, .loadblk = ra_load,
					  .mapblk = ra_map};
	char buf[RA_BS];
	oc_ram_t *ram;
	oc_file_t f;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	pthread_t t;
	char *a;
	int err;

	printf("# read ahead and an invalidation meanwhile\n");
	sem_init(&ra_in, 0, 0);
	sem_init(&ra_go, 0, 0);
	ra_fd = memfd_create("ra", 0);
	ram = tf_ram(RA_BS, 256 * RA_BS, &err);
	if (ra_fd < 0 || !ram || ftruncate(ra_fd, 16 * RA_BS)) {
		CHECK(0, "memfd and RAM (%d)", err);
		return;
	}
	memset(buf, 'O', sizeof buf);
	for (int i = 0; i < 8; i++) {
		(void)!pwrite(ra_fd, buf, RA_BS, (off_t)i * RA_BS);
		ra_where[i] = (uint64_t)i * RA_BS;
	}
	err = oc_file_init(&f, &ops, RA_BS, "ra");
	if (!err)
		err = oc_fileh_open(&fh, &f, ram);
	if (!err)
		err = oc_fileh_mmap(fh, 0, 8, &v);
	CHECK_EQ(err, 0, "open and map");
	if (!err && pthread_create(&t, NULL, ra_toucher, oc_vma_addr(v)) == 0) {
		a = oc_vma_addr(v);
		sem_wait(&ra_in);
		memset(buf, 'N', sizeof buf); /* block 1 moves, and says so */
		(void)!pwrite(ra_fd, buf, RA_BS, 9 * RA_BS);
		__atomic_store_n(&ra_where[1], 9 * RA_BS, __ATOMIC_SEQ_CST);
		CHECK_EQ(oc_fileh_invalidate(fh, 1), 0, "invalidate block 1");
		sem_post(&ra_go);
		pthread_join(t, NULL);
		CHECK(a[RA_BS] == 'N', "block 1 after the invalidation: %c (want N)",
		      a[RA_BS]);
		CHECK(a[0] == 'O' && a[2 * RA_BS] == 'O', "the others as they were");
	}
	if (v)
		oc_vma_unmap(v);
	if (fh)
		oc_fileh_close(fh);
	oc_file_put(&f);
	oc_ram_close(ram);
	close(ra_fd);
	sem_destroy(&ra_in);
	sem_destroy(&ra_go);
}

int main(void)
{
	test_transitions(4 * KiB);
	test_transitions(64 * KiB);
	test_transitions(2 * MiB);
	test_writeout_errors();
	test_bad_args();
	test_results_into_managed_memory();
	test_readahead_vs_invalidate();
	test_prefault();
	test_memfile(4 * KiB);
	test_memfile(2 * MiB);
	test_plainfile();
	test_patch(64 * KiB, 0);
	test_patch(64 * KiB, 1);
	test_patch(2 * MiB, 0);
	return check_done();
}
