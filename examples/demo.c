/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * demo.c: what `make demo` runs until the Python layer has its own demo.
 *
 * A file four times bigger than the RAM budget is mapped whole, filled
 * through the mapping (written out every few blocks so dirty pages never
 * pile up), scanned back (sum of every uint64) and partly changed and
 * discarded: the discarded change is gone, the written data is there.
 * Each step prints its time, its throughput and the process's peak RSS
 * next to the budget.
 *
 * Usage: demo [DIR] [SIZE] [BUDGET]   (defaults: /var/tmp 1GiB 256MiB)
 */
#include <outcore/outcore.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long peak_rss_mib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss / 1024;
}

static void step(const char *what, double t0, uint64_t bytes, uint64_t budget)
{
	double dt = now() - t0;
	printf("%-34s %6.2f s  %7.2f GB/s   peak RSS %4ld MiB (budget %" PRIu64
	       " MiB)\n",
	       what, dt, (double)bytes / dt / 1e9, peak_rss_mib(), budget >> 20);
}

#define TRY(call)                                                             \
	do {                                                                  \
		int err_ = (call);                                            \
		if (err_) {                                                   \
			fprintf(stderr, "demo: %s: %s\n", #call,              \
				oc_strerror(err_));                           \
			goto out;                                             \
		}                                                             \
	} while (0)

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/var/tmp";
	uint64_t size = (uint64_t)1 << 30, budget = (uint64_t)256 << 20, sum = 0,
		 expect = 0;
	const size_t bs = (size_t)2 << 20;
	char path[4096];
	oc_ram_opts_t ro = {OC_RAM_OPTS_VERSION, OC_RAM_MEMFD, bs, 0, NULL};
	oc_ram_t *ram = NULL;
	oc_file_t *file = NULL;
	oc_fileh_t *fh = NULL;
	oc_vma_t *vma = NULL;
	oc_ram_stats_t st;
	uint64_t *a, n, nblk, i;
	double t0;
	int rc = 1;

	if ((argc > 2 && oc_parse_size(argv[2], &size)) ||
	    (argc > 3 && oc_parse_size(argv[3], &budget)) || size < bs) {
		fprintf(stderr, "usage: demo [DIR] [SIZE] [BUDGET]\n");
		return 2;
	}
	size -= size % bs;
	nblk = size / bs;
	n = size / 8;
	snprintf(path, sizeof path, "%s/outcore-demo-%d.dat", dir, (int)getpid());
	ro.budget = budget;

	printf("outcore %s demo: a %" PRIu64 " MiB file through a %" PRIu64
	       " MiB RAM budget (%s)\n",
	       oc_version(), size >> 20, budget >> 20, path);
	TRY(oc_ram_new(&ram, &ro));
	TRY(oc_plainfile_open(&file, path, bs, OC_PLAINFILE_CREATE));
	TRY(oc_plainfile_resize(file, size));
	TRY(oc_fileh_open(&fh, file, ram));
	TRY(oc_fileh_mmap(fh, 0, nblk, &vma));
	a = oc_vma_addr(vma);

	/* Fill: pages become dirty in RAM; writing out every 32 blocks
	 * keeps them within the budget. */
	t0 = now();
	for (i = 0; i < n; i++) {
		a[i] = i;
		if ((i + 1) % (32 * bs / 8) == 0)
			TRY(oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
						      OC_WRITEOUT_MARKSTORED));
	}
	TRY(oc_fileh_writeout(fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED));
	TRY(oc_plainfile_sync(file));
	step("fill + write out + sync", t0, size, budget);

	/* Scan: clean blocks are mapped from the file (no copy). */
	t0 = now();
	for (i = 0; i < n; i++)
		sum += a[i];
	expect = n * (n - 1) / 2;
	step("scan (sum of every uint64)", t0, size, budget);
	printf("  sum %s\n", sum == expect ? "correct" : "WRONG");

	/* Change a block and discard the change: the stored data is back. */
	t0 = now();
	memset(a, 0xff, bs);
	TRY(oc_fileh_discard(fh));
	printf("  after discard, a[1] = %" PRIu64 " (stored value 1)\n", a[1]);
	a[1] = 42;
	TRY(oc_fileh_writeout(fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED));
	step("change, discard, change, write out", t0, 2 * bs, budget);

	oc_ram_stats(ram, &st);
	printf("RAM: used at most %" PRIu64 " MiB of %" PRIu64 " MiB; %" PRIu64
	       " loads, %" PRIu64 " base-layer maps, %" PRIu64 " copy-on-write, %"
	       PRIu64 " stores, %" PRIu64 " reclaims\n",
	       st.used_max >> 20, st.budget >> 20, st.loads, st.base_maps,
	       st.cow_copies, st.stores, st.reclaims);
	rc = sum == expect && a[1] == 42 ? 0 : 1;
out:
	oc_vma_unmap(vma);
	oc_fileh_close(fh);
	oc_file_put(file);
	oc_ram_close(ram);
	unlink(path);
	return rc;
}
