/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * probe_populate.c: mapping a block with MAP_POPULATE (or
 * MADV_POPULATE_READ) makes every page present, so touching the block
 * afterwards takes no further page fault; without it the first touch takes
 * one fault per fault-around window (64 KiB by default, 32 per 2 MiB).
 * On these paravirtualized machines a hardware fault costs ~10 µs, so
 * outcore's fault handler maps each block populated: one SIGSEGV per block,
 * nothing after it.  Shown without the library, with getrusage().
 *
 * Note: getrusage counts the faults the kernel takes inside MAP_POPULATE
 * itself (get_user_pages) as minor faults too; those are in-kernel and cost
 * no trap.  They are printed, not checked: only the touch after the mapping
 * is what the program pays in traps.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "check.h"

#define PAGE 4096
#define BLK ((size_t)2 << 20)

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

static long faults_now(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt + ru.ru_majflt;
}

enum how { PLAIN, POPULATE, MADV_POP };

/* Map each block of the memfd at its own place in a reserved region, then
 * touch one byte per 4 KiB.  Returns faults during the touches; *inmap
 * gets the faults counted during the mapping calls.  -1 on error. */
static long run(int fd, size_t nblk, enum how how, long *inmap, int *bad)
{
	size_t len = nblk * BLK;
	unsigned char *res, *base;
	long during = 0, touch = 0;

	*bad = 0;
	res = mmap(NULL, len + BLK, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		return -1;
	base = (unsigned char *)(((uintptr_t)res + BLK - 1) & ~(uintptr_t)(BLK - 1));
	for (size_t b = 0; b < nblk; b++) {
		unsigned char *at = base + b * BLK;
		int flags = MAP_SHARED | MAP_FIXED | (how == POPULATE ? MAP_POPULATE : 0);
		long f0 = faults_now(), f1;
		void *m = mmap(at, BLK, PROT_READ, flags, fd, b * BLK);

		if (m == MAP_FAILED) {
			munmap(res, len + BLK);
			return -1;
		}
		if (how == MADV_POP && madvise(at, BLK, MADV_POPULATE_READ) < 0) {
			munmap(res, len + BLK);
			return -2;
		}
		f1 = faults_now();
		during += f1 - f0;
		for (size_t off = 0; off < BLK; off += PAGE)
			if (((volatile unsigned char *)at)[off] != 0x5a)
				*bad = 1;
		touch += faults_now() - f1;
	}
	munmap(res, len + BLK);
	*inmap = during;
	return touch;
}

int main(void)
{
	size_t nblk = 32 / check_scale(); /* 64 MiB */
	unsigned char *buf;
	long t, m;
	int fd, bad;

	if (nblk < 2)
		nblk = 2;
	fd = memfd_create("probe_populate", MFD_CLOEXEC);
	if (fd < 0)
		check_skip("memfd_create not available");
	buf = malloc(BLK);
	memset(buf, 0x5a, BLK); /* non-zero: zero pages are special here */
	for (size_t b = 0; b < nblk; b++)
		if (pwrite(fd, buf, BLK, b * BLK) != (ssize_t)BLK) {
			CHECK(0, "fill memfd: %s", strerror(errno));
			return check_done();
		}
	free(buf);

	t = run(fd, nblk, POPULATE, &m, &bad);
	CHECK(t >= 0 && !bad, "mmap(MAP_POPULATE) of %zu blocks of 2 MiB of a filled memfd", nblk);
	CHECK(t >= 0 && (double)t / nblk < 0.5,
	      "touching a MAP_POPULATE'd block (1 byte per 4 KiB) takes no further fault: %.2f faults/block (%ld in all)",
	      (double)t / nblk, t);
	printf("# MAP_POPULATE itself: %.1f minor faults/block counted by getrusage (in-kernel, no trap)\n",
	       (double)m / nblk);

	t = run(fd, nblk, PLAIN, &m, &bad);
	CHECK(t >= 0 && !bad && (double)t / nblk >= 2,
	      "without MAP_POPULATE the same touch takes %.2f faults/block (fault-around: one per 64 KiB is 32)",
	      (double)t / nblk);

	t = run(fd, nblk, MADV_POP, &m, &bad);
	if (t == -2) {
		printf("# MADV_POPULATE_READ not supported by this kernel (Linux >= 5.14)\n");
	} else {
		CHECK(t >= 0 && !bad && (double)t / nblk < 0.5,
		      "mmap + madvise(MADV_POPULATE_READ) also leaves no fault for the touch: %.2f faults/block",
		      (double)t / nblk);
		printf("# MADV_POPULATE_READ itself: %.1f minor faults/block counted by getrusage\n",
		       (double)m / nblk);
	}
	close(fd);
	return check_done();
}
