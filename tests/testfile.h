/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * testfile.h: a counting test file for the C tests of the core.
 *
 * A tfile_t is an oc_file_t whose loadblk/storeblk count their calls (in
 * all, per block, and the order of stores) and fill a recognizable pattern:
 * the 8-byte word i of block b is tf_word(b, i) = b*1000003 + i, unless the
 * block was stored (and keep is set), in which case the stored bytes come
 * back.  Knobs let a test make loads fail, slow, or run a hook, and make the
 * k-th store fail.  Everything is thread-safe (counters are atomics, the
 * stored copies are under a mutex) so the threaded tests can use it under
 * ThreadSanitizer.
 *
 * The tfile_t lives in the test (static or on the stack): release only
 * frees the stored copies and sets released, so counters stay readable
 * after the last oc_file_put().
 *
 * Also here: small /proc readers and a RAM constructor.
 */
#ifndef OUTCORE_TESTS_TESTFILE_H
#define OUTCORE_TESTS_TESTFILE_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <outcore/outcore.h>

#define TF_MAXBLK 1024 /* blocks counted per block and kept when stored */
#define TF_LOG 4096    /* stores remembered in order */

typedef struct tfile tfile_t;
struct tfile {
	oc_file_t file;          /* first: ops receive &tf->file */
	size_t blksize;
	pthread_mutex_t mu;      /* guards stored[] */

	/* counters (atomic) */
	uint64_t nloads;         /* successful loadblk calls */
	uint64_t nload_calls;    /* every loadblk call, failures included */
	uint64_t nstores;        /* successful storeblk calls */
	uint64_t nstore_calls;   /* every storeblk call, failures included */
	uint64_t blk_loads[TF_MAXBLK];  /* loadblk calls per block */
	uint64_t store_log[TF_LOG];     /* block of each storeblk call */
	uint64_t nstore_log;
	int cur_loads, max_loads;       /* loads running at once, and the max */

	/* knobs (set before use, or with __atomic stores) */
	int keep;                /* keep stored blocks (blk < TF_MAXBLK) */
	int load_fail;           /* fail the next N loadblk calls; -1: all */
	int load_fail_err;       /* error returned by a failing load (-EIO) */
	uint64_t store_fail_at;  /* fail storeblk call number N (1-based) */
	int store_fail_err;      /* error returned then (-EIO) */
	unsigned load_delay_us;  /* sleep inside every loadblk */
	/* called after the fill; its return value is loadblk's */
	int (*load_hook)(tfile_t *tf, uint64_t blk, void *buf);
	/* called before the store; nonzero is returned without storing */
	int (*store_hook)(tfile_t *tf, uint64_t blk, const void *buf);
	void *user;

	void *stored[TF_MAXBLK];
	int released;
};

static inline uint64_t tf_word(uint64_t blk, uint64_t i)
{
	return blk * 1000003u + i;
}

#define TF_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define TF_GET(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define TF_SET(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

static void tf_fill(void *buf, size_t blksize, uint64_t blk)
	__attribute__((unused));
static void tf_fill(void *buf, size_t blksize, uint64_t blk)
{
	uint64_t *w = buf;
	for (size_t i = 0; i < blksize / 8; i++)
		w[i] = tf_word(blk, i);
}

/* 1 when buf holds the pattern of blk (every word when full, else the
 * first, a middle and the last word). */
static int tf_is_pattern(const void *buf, size_t blksize, uint64_t blk,
			 int full) __attribute__((unused));
static int tf_is_pattern(const void *buf, size_t blksize, uint64_t blk,
			 int full)
{
	const volatile uint64_t *w = buf;
	size_t n = blksize / 8;
	if (!full)
		return w[0] == tf_word(blk, 0) &&
		       w[n / 2] == tf_word(blk, n / 2) &&
		       w[n - 1] == tf_word(blk, n - 1);
	for (size_t i = 0; i < n; i++)
		if (w[i] != tf_word(blk, i))
			return 0;
	return 1;
}

static int tf_loadblk(oc_file_t *file, uint64_t blk, void *buf)
{
	tfile_t *tf = (tfile_t *)file;
	int err = 0, cur;

	TF_ADD(&tf->nload_calls, 1);
	if (blk < TF_MAXBLK)
		TF_ADD(&tf->blk_loads[blk], 1);
	cur = TF_ADD(&tf->cur_loads, 1);
	for (int m = TF_GET(&tf->max_loads); cur > m;
	     m = TF_GET(&tf->max_loads))
		if (__atomic_compare_exchange_n(&tf->max_loads, &m, cur, 0,
						__ATOMIC_SEQ_CST,
						__ATOMIC_SEQ_CST))
			break;
	if (TF_GET(&tf->load_delay_us))
		usleep(TF_GET(&tf->load_delay_us));

	for (;;) {
		int n = TF_GET(&tf->load_fail);
		if (n == 0)
			break;
		if (n < 0 || __atomic_compare_exchange_n(&tf->load_fail, &n,
							 n - 1, 0,
							 __ATOMIC_SEQ_CST,
							 __ATOMIC_SEQ_CST)) {
			err = tf->load_fail_err ? tf->load_fail_err : -EIO;
			goto out;
		}
	}

	pthread_mutex_lock(&tf->mu);
	if (blk < TF_MAXBLK && tf->stored[blk])
		memcpy(buf, tf->stored[blk], tf->blksize);
	else
		tf_fill(buf, tf->blksize, blk);
	pthread_mutex_unlock(&tf->mu);
	if (tf->load_hook)
		err = tf->load_hook(tf, blk, buf);
	if (!err)
		TF_ADD(&tf->nloads, 1);
out:
	TF_ADD(&tf->cur_loads, -1);
	return err;
}

static int tf_storeblk(oc_file_t *file, uint64_t blk, const void *buf)
{
	tfile_t *tf = (tfile_t *)file;
	uint64_t n = TF_ADD(&tf->nstore_calls, 1);
	uint64_t at = TF_GET(&tf->store_fail_at);
	uint64_t i;
	int err;

	i = TF_ADD(&tf->nstore_log, 1) - 1;
	if (i < TF_LOG)
		TF_SET(&tf->store_log[i], blk);
	if (at && n == at)
		return tf->store_fail_err ? tf->store_fail_err : -EIO;
	if (tf->store_hook && (err = tf->store_hook(tf, blk, buf)))
		return err;
	if (tf->keep && blk < TF_MAXBLK) {
		pthread_mutex_lock(&tf->mu);
		if (!tf->stored[blk])
			tf->stored[blk] = malloc(tf->blksize);
		if (tf->stored[blk])
			memcpy(tf->stored[blk], buf, tf->blksize);
		pthread_mutex_unlock(&tf->mu);
	}
	TF_ADD(&tf->nstores, 1);
	return 0;
}

static void tf_release(oc_file_t *file)
{
	tfile_t *tf = (tfile_t *)file;
	pthread_mutex_lock(&tf->mu);
	for (int i = 0; i < TF_MAXBLK; i++) {
		free(tf->stored[i]);
		tf->stored[i] = NULL;
	}
	pthread_mutex_unlock(&tf->mu);
	TF_SET(&tf->released, 1);
}

static const oc_file_ops_t tf_ops = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = tf_loadblk,
	.storeblk = tf_storeblk,
	.release = tf_release,
};

/* The same file without storeblk (read-only). */
static const oc_file_ops_t tf_ops_ro = {
	.version = OC_FILE_OPS_VERSION,
	.loadblk = tf_loadblk,
	.release = tf_release,
};

/* Zero tf and initialise it (keep on).  Returns oc_file_init's code. */
static int tfile_init_ops(tfile_t *tf, size_t blksize, const char *name,
			  const oc_file_ops_t *ops) __attribute__((unused));
static int tfile_init_ops(tfile_t *tf, size_t blksize, const char *name,
			  const oc_file_ops_t *ops)
{
	memset(tf, 0, sizeof(*tf));
	pthread_mutex_init(&tf->mu, NULL);
	tf->blksize = blksize;
	tf->keep = 1;
	return oc_file_init(&tf->file, ops, blksize, name);
}

static int tfile_init(tfile_t *tf, size_t blksize, const char *name)
	__attribute__((unused));
static int tfile_init(tfile_t *tf, size_t blksize, const char *name)
{
	return tfile_init_ops(tf, blksize, name, &tf_ops);
}

/* Reset the counters (not the stored data, not the knobs). */
static void tfile_reset_counts(tfile_t *tf) __attribute__((unused));
static void tfile_reset_counts(tfile_t *tf)
{
	TF_SET(&tf->nloads, 0);
	TF_SET(&tf->nload_calls, 0);
	TF_SET(&tf->nstores, 0);
	TF_SET(&tf->nstore_calls, 0);
	TF_SET(&tf->nstore_log, 0);
	TF_SET(&tf->max_loads, 0);
	for (int i = 0; i < TF_MAXBLK; i++)
		TF_SET(&tf->blk_loads[i], 0);
}

/* A RAM of the given page size and budget (0: the default), or NULL with
 * the error in *err. */
static oc_ram_t *tf_ram(size_t pagesize, uint64_t budget, int *err)
	__attribute__((unused));
static oc_ram_t *tf_ram(size_t pagesize, uint64_t budget, int *err)
{
	oc_ram_opts_t o;
	oc_ram_t *ram = NULL;
	int e;

	memset(&o, 0, sizeof(o));
	o.version = OC_RAM_OPTS_VERSION;
	o.kind = OC_RAM_MEMFD;
	o.pagesize = pagesize;
	o.budget = budget;
	e = oc_ram_new(&ram, &o);
	if (err)
		*err = e;
	return e ? NULL : ram;
}

/* A value in kB from a "Key:   123 kB" file, or -1. */
static long tf_proc_kb(const char *path, const char *key)
	__attribute__((unused));
static long tf_proc_kb(const char *path, const char *key)
{
	char line[256];
	size_t kl = strlen(key);
	long v = -1;
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static long tf_status_kb(const char *key) __attribute__((unused));
static long tf_status_kb(const char *key)
{
	return tf_proc_kb("/proc/self/status", key);
}

static double tf_now(void) __attribute__((unused));
static double tf_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Word i of the page of block (blk - pgoffset) in a mapping at base. */
static inline volatile uint64_t *tf_at(void *base, size_t ps, uint64_t pg,
				       uint64_t i)
{
	return (volatile uint64_t *)((char *)base + pg * ps) + i;
}

#endif
