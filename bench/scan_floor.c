/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * scan_floor.c: what a verified scan costs this machine before outcore
 * does anything, for bench/bench_store.py (a helper it runs, not a
 * benchmark of its own: `make bench-c` does not run it).
 *
 *     scan_floor FILE [ROUNDS [AHEAD]]
 *
 * Sums the float64 of FILE (page-cached by the caller) as outcore's reader
 * sees them: mapped 16 MiB at a time (MAP_SHARED, MAP_POPULATE) at 2 MiB-
 * aligned addresses, the oldest mappings dropped past 256 MiB.  Once alone
 * ("sum"), once with every byte hashed as the store's verification does
 * ("sum_hash"): XXH3 (outcore's _oc_xxh3) over 64 KiB units, claimed one
 * at a time by a second thread, which runs up to AHEAD blocks of 2 MiB
 * (default 64, as the store's verifier) ahead of the mapped ones, and by
 * the reader, which maps no block before it is hashed and hashes the
 * units it waits for itself.  Nothing of outcore's core or store runs, and
 * the two threads share the work with no more than an atomic counter:
 * what is left is the hardware's and the kernel's share, two cores reading
 * the same memory.  The two scans alternate for ROUNDS rounds (default 5);
 * prints the medians as one JSON line {"sum": s, "sum_hash": s, "rounds":
 * n, "value": the sum}.  Exits 0, or 1 with a message on stderr.
 */
#include "internal.h" /* _oc_xxh3 */

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLK ((size_t)2 << 20)     /* outcore's block */
#define RUN 8                     /* blocks mapped at a time (16 MiB) */
#define KEEP 128                  /* blocks kept mapped (256 MiB) */
#define UNIT ((size_t)64 << 10)   /* a checksum unit */
#define UPB (BLK / UNIT)          /* units per block */

static int fd;
static size_t nblk;
static unsigned char *file;       /* the whole file, mapped for hashing */
static long ahead = 64;           /* the hashing thread's lead, in blocks */
static long mapped;               /* blocks the reader mapped; atomic */
static long next_unit;            /* the next unit to claim; atomic */
static unsigned *done;            /* units hashed, per block; atomic */
static uint64_t hash_sink;

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The sum of a block's float64, at the speed of memory (as NumPy's, with
 * several vector accumulators; the order of the additions is not NumPy's:
 * only the time counts). */
typedef double v2d __attribute__((vector_size(16)));

static double sum_block(const double *p)
{
	v2d a0 = {0, 0}, a1 = a0, a2 = a0, a3 = a0, v[4];

	for (size_t i = 0; i < BLK / 8; i += 8) {
		memcpy(v, p + i, sizeof v);
		a0 += v[0];
		a1 += v[1];
		a2 += v[2];
		a3 += v[3];
	}
	a0 += a1 + a2 + a3;
	return a0[0] + a0[1];
}

/* Claim and hash one unit below unit `below`: whether there was one. */
static bool hash_one(long below)
{
	long u = __atomic_load_n(&next_unit, __ATOMIC_RELAXED);
	uint64_t h;

	do {
		if (u >= below)
			return false;
	} while (!__atomic_compare_exchange_n(&next_unit, &u, u + 1, false,
					      __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	h = _oc_xxh3(file + (size_t)u * UNIT, UNIT);
	__atomic_fetch_add(&hash_sink, h, __ATOMIC_RELAXED);
	__atomic_fetch_add(&done[u / UPB], 1, __ATOMIC_RELEASE);
	return true;
}

/* The verifier: hashes units up to `ahead` blocks past the mapped ones,
 * and naps when it is that far ahead. */
static void *hasher(void *arg)
{
	long all = (long)(nblk * UPB);

	(void)arg;
	while (__atomic_load_n(&next_unit, __ATOMIC_RELAXED) < all) {
		long lim = (__atomic_load_n(&mapped, __ATOMIC_ACQUIRE) + ahead) * (long)UPB;
		if (!hash_one(lim < all ? lim : all))
			nanosleep(&(struct timespec){0, 20000}, NULL);
	}
	return NULL;
}

/* One scan, with the hashing thread or without: seconds, sum in *s. */
static double scan(unsigned char *space, int with_hash, double *s)
{
	pthread_t t;
	double t0 = now(), sum = 0;

	mapped = next_unit = 0;
	memset(done, 0, nblk * sizeof *done);
	if (with_hash && pthread_create(&t, NULL, hasher, NULL)) {
		fprintf(stderr, "scan_floor: no thread\n");
		exit(1);
	}
	for (size_t b = 0; b < nblk; b += RUN) {
		size_t n = nblk - b < RUN ? nblk - b : RUN;
		/* the blocks to map must be hashed: help, or wait for the
		 * other core's last units */
		for (size_t k = b; with_hash && k < b + n; k++)
			while (__atomic_load_n(&done[k], __ATOMIC_ACQUIRE) < UPB)
				if (!hash_one((long)((b + n) * UPB)))
					sched_yield();
		if (mmap(space + b * BLK, n * BLK, PROT_READ,
			 MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
			 (off_t)(b * BLK)) == MAP_FAILED) {
			perror("scan_floor: mmap");
			exit(1);
		}
		__atomic_store_n(&mapped, (long)(b + n), __ATOMIC_RELEASE);
		if (b >= KEEP)
			(void)mmap(space + (b - KEEP) * BLK, n * BLK, PROT_NONE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
				   -1, 0);
		for (size_t k = b; k < b + n; k++)
			sum += sum_block((const double *)(space + k * BLK));
	}
	if (with_hash)
		pthread_join(t, NULL);
	/* give the whole range back for the next round */
	(void)mmap(space, nblk * BLK, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
	*s = sum;
	return now() - t0;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	int rounds = argc > 2 ? atoi(argv[2]) : 5;
	double t_sum[64], t_hash[64], s1 = 0, s2 = 0;
	unsigned char *space;
	struct stat st;

	if (argc > 3)
		ahead = atol(argv[3]);
	if (argc < 2 || rounds < 1 || rounds > 64 || ahead < 1) {
		fprintf(stderr, "usage: scan_floor FILE [ROUNDS (1-64) [AHEAD (blocks, >= 1)]]\n");
		return 1;
	}
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st)) {
		perror(argv[1]);
		return 1;
	}
	nblk = (size_t)st.st_size / BLK;
	if (!nblk) {
		fprintf(stderr, "scan_floor: %s holds no 2 MiB block\n", argv[1]);
		return 1;
	}
	/* 2 MiB-aligned address space, as the core reserves it */
	/* what the hashing reads: a mapping of its own, as the verifier's */
	file = mmap(NULL, nblk * BLK, PROT_READ, MAP_SHARED, fd, 0);
	done = calloc(nblk, sizeof *done);
	if (file == MAP_FAILED || !done) {
		fprintf(stderr, "scan_floor: no memory\n");
		return 1;
	}
	space = mmap(NULL, (nblk + 1) * BLK, PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (space == MAP_FAILED) {
		perror("scan_floor: mmap");
		return 1;
	}
	space = (unsigned char *)(((uintptr_t)space + BLK - 1) & ~(uintptr_t)(BLK - 1));
	for (int r = 0; r < rounds; r++) {
		t_sum[r] = scan(space, 0, &s1);
		t_hash[r] = scan(space, 1, &s2);
		if (s1 != s2) {
			fprintf(stderr, "scan_floor: the sums differ (%g, %g)\n", s1, s2);
			return 1;
		}
	}
	qsort(t_sum, (size_t)rounds, sizeof t_sum[0], cmp);
	qsort(t_hash, (size_t)rounds, sizeof t_hash[0], cmp);
	printf("{\"sum\": %.6f, \"sum_hash\": %.6f, \"rounds\": %d, \"value\": %.17g}\n",
	       t_sum[rounds / 2], t_hash[rounds / 2], rounds, s1);
	return 0;
}
