/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_maplimit: the kernel's mapping limit (vm.max_map_count, 65530 by
 * default).  Every page outcore maps is a kernel mapping of its own unless
 * it merges with its neighbours; touching every other 4 KiB page of a
 * large mapping makes each one a separate mapping with a reserved gap on
 * either side.  Far more pages than the limit allows are read, then
 * written: outcore must keep the process under the limit by dropping or
 * unmapping the least recently faulted pages (counted in map_reclaims),
 * never fail a fault with ENOMEM, and never lose a dirty page.
 */
/* NOVALGRIND: valgrind's address-space manager cannot track tens of thousands of mappings */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <outcore/outcore.h>

#include "check.h"
#include "testfile.h"

#define PS ((size_t)4096)

static long max_map_count(void)
{
	long v = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = 65530;
		fclose(f);
	}
	return v;
}

static long kernel_maps(void)
{
	char line[512];
	long n = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strchr(line, '\n'))
			n++;
	fclose(f);
	return n;
}

/* Many small mappings: their address reservations are kernel mappings
 * too, which outcore's own count leaves out, so the kernel refused a page
 * mapping first, and the fault died of SIGBUS with clean pages it could
 * have dropped.  Now a refusal drops mappings and tries again. */
static void many_reservations(long limit)
{
	long n = limit * 3 / 4, i, bad = 0;
	oc_vma_t **vs = calloc((size_t)n, sizeof *vs);
	oc_ram_stats_t st;
	oc_fileh_t *fh = NULL;
	oc_ram_t *ram;
	tfile_t tf;
	int r;

	printf("# %ld mappings of 3 blocks, a page read in each\n", n);
	ram = tf_ram(PS, (uint64_t)(n + 16) * PS, &r);
	if (!ram || !vs) {
		CHECK(0, "RAM (%d)", r);
		free(vs);
		return;
	}
	tfile_init(&tf, PS, "tres");
	tf.keep = 0;
	r = oc_fileh_open(&fh, &tf.file, ram);
	for (i = 0; !r && i < n; i++) {
		char *a;
		r = oc_fileh_mmap(fh, (uint64_t)i * 2, 3, &vs[i]);
		if (r)
			break;
		a = oc_vma_addr(vs[i]);
		if (*tf_at(a, PS, 0, 1) != tf_word((uint64_t)i * 2, 1))
			bad++;
	}
	CHECK(r == 0 && i == n, "%ld mappings made and read (%d: %s)", i, r,
	      oc_strerror(r));
	CHECK_EQ(bad, 0, "every read saw its data");
	oc_ram_stats(ram, &st);
	printf("# map_reclaims %llu\n", (unsigned long long)st.map_reclaims);
	while (i-- > 0)
		oc_vma_unmap(vs[i]);
	free(vs);
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");
}

/* A cached block mapped again when the mappings are at the limit: making
 * room dropped the very pages being mapped (use after free, seen by ASan). */
static void remap_cached_at_limit(long limit)
{
	/* the mappings the core allows itself (map_limit): the first attempt to
	 * make room comes with block 0 mapped again, the oldest page */
	uint64_t n = (uint64_t)limit / 4 > 1024 ? (uint64_t)limit / 4 : 1024, bad = 0;
	oc_vma_t *v0 = NULL, *v1 = NULL;
	oc_fileh_t *fh = NULL;
	oc_ram_t *ram;
	tfile_t tf;
	int r;

	printf("# a cached block mapped again at the limit\n");
	ram = tf_ram(PS, (2 * n + 16) * PS, &r);
	if (!ram) {
		CHECK(0, "RAM (%d)", r);
		return;
	}
	tfile_init(&tf, PS, "tremap");
	tf.keep = 0;
	r = oc_fileh_open(&fh, &tf.file, ram);
	if (!r)
		r = oc_fileh_mmap(fh, 0, 1, &v0);
	if (!r && *tf_at(oc_vma_addr(v0), PS, 0, 1) != tf_word(0, 1))
		bad++;
	if (!r) {
		oc_vma_unmap(v0); /* block 0 stays cached */
		v0 = NULL;
		r = oc_fileh_mmap(fh, 1, 2 * n, &v1);
	}
	for (uint64_t i = 0; !r && i < n; i++) /* separate mappings */
		if (*tf_at(oc_vma_addr(v1), PS, 2 * i, 1) != tf_word(1 + 2 * i, 1))
			bad++;
	if (!r)
		r = oc_fileh_mmap(fh, 0, 1, &v0);
	if (!r && *tf_at(oc_vma_addr(v0), PS, 0, 1) != tf_word(0, 1))
		bad++;
	CHECK(r == 0 && bad == 0, "block 0 read again after %llu others (%d)",
	      (unsigned long long)n, r);
	oc_vma_unmap(v0);
	oc_vma_unmap(v1);
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");
}

int main(void)
{
	long limit = max_map_count();
	uint64_t npages, nblk;
	tfile_t tf;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	oc_ram_stats_t st;
	long maps, maxmaps = 0;
	uint64_t bad = 0;
	char *a;
	int r;

	if (limit > 1000000)
		check_skip("vm.max_map_count is too large to reach in a test");
	/* touched pages: 60% more than the limit allows as separate mappings */
	npages = (uint64_t)limit * 8 / 10;
	nblk = 2 * npages;
	printf("# vm.max_map_count %ld: touching %llu separate pages\n", limit,
	       (unsigned long long)npages);

	ram = tf_ram(PS, (npages + 16) * PS, &r);
	CHECK(ram != NULL, "RAM: %d", r);
	if (!ram)
		return check_done();
	tfile_init(&tf, PS, "tmaps");
	tf.keep = 0;
	r = oc_fileh_open(&fh, &tf.file, ram);
	CHECK_EQ(r, 0, "open");
	r = r ? r : oc_fileh_mmap(fh, 0, nblk, &v);
	CHECK_EQ(r, 0, "map twice as many blocks");
	if (r)
		return check_done();
	a = oc_vma_addr(v);

	/* read every other page */
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t b = 2 * i;
		if (*tf_at(a, PS, b, 1) != tf_word(b, 1))
			bad++;
		if (i % 4096 == 0 && (maps = kernel_maps()) > maxmaps)
			maxmaps = maps;
	}
	if ((maps = kernel_maps()) > maxmaps)
		maxmaps = maps;
	oc_ram_stats(ram, &st);
	printf("# read: kernel mappings max %ld, map_reclaims %llu, loads %llu\n",
	       maxmaps, (unsigned long long)st.map_reclaims,
	       (unsigned long long)st.loads);
	CHECK_EQ(bad, 0, "every read saw its data");
	CHECK(maxmaps < limit, "kernel mappings stayed under the limit (%ld)",
	      maxmaps);
	CHECK(st.map_reclaims > 0, "mappings were dropped to stay under it "
	      "(%llu)", (unsigned long long)st.map_reclaims);
	CHECK_EQ(st.overbudget, 0, "within the RAM budget");

	/* write every other page: dirty pages may be unmapped, never lost */
	maxmaps = 0;
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t b = 2 * i;
		*tf_at(a, PS, b, 0) = b + 7;
		if (i % 4096 == 0 && (maps = kernel_maps()) > maxmaps)
			maxmaps = maps;
	}
	if ((maps = kernel_maps()) > maxmaps)
		maxmaps = maps;
	oc_ram_stats(ram, &st);
	printf("# write: kernel mappings max %ld, map_reclaims %llu, dirty %llu\n",
	       maxmaps, (unsigned long long)st.map_reclaims,
	       (unsigned long long)st.dirty_pages);
	CHECK(maxmaps < limit, "kernel mappings stayed under the limit (%ld)",
	      maxmaps);
	CHECK(limit - maxmaps >= 2048, "and left the rest of the program room "
	      "for 2048 mappings of its own (%ld)", limit - maxmaps);
	CHECK_EQ(st.dirty_pages, npages, "every written page is dirty");
	CHECK_EQ(oc_fileh_dirty_blocks(fh, NULL, 0), (int64_t)npages,
		 "dirty_blocks counts them all");
	bad = 0;
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t b = 2 * i;
		if (*tf_at(a, PS, b, 0) != b + 7 || *tf_at(a, PS, b, 1) != tf_word(b, 1))
			bad++;
	}
	CHECK_EQ(bad, 0, "every dirty page kept its data");
	CHECK(kernel_maps() < limit, "still under the limit");
	oc_ram_stats(ram, &st);
	CHECK(st.loads <= 2 * npages, "dirty pages were not reloaded (loads %llu)",
	      (unsigned long long)st.loads);

	CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
	CHECK_EQ(oc_vma_unmap(v), 0, "unmap");
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");
	many_reservations(limit);
	remap_cached_at_limit(limit);
	return check_done();
}
