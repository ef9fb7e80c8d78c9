/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_ram: RAM creation and its errors, the three kinds of RAM, the
 * budget and its environment variable, the size parser, aliasing of one
 * page through two mappings, and freed pages going back to the OS.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <outcore/outcore.h>

#include "check.h"
#include "testfile.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static int new_ram(oc_ram_t **out, unsigned version, int kind, size_t ps,
		   uint64_t budget, const char *dir)
{
	oc_ram_opts_t o;
	memset(&o, 0, sizeof(o));
	o.version = version;
	o.kind = (oc_ram_kind_t)kind;
	o.pagesize = ps;
	o.budget = budget;
	o.dir = dir;
	return oc_ram_new(out, &o);
}

static void test_new_errors(void)
{
	oc_ram_t *sentinel = (oc_ram_t *)&sentinel, *ram = sentinel;
	const unsigned V = OC_RAM_OPTS_VERSION;

	printf("# oc_ram_new errors\n");
	CHECK_EQ(new_ram(&ram, V, OC_RAM_MEMFD, 5000, 0, NULL), -EINVAL,
		 "pagesize 5000: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, OC_RAM_MEMFD, 3 * 4096, 0, NULL), -EINVAL,
		 "pagesize 12 KiB: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, OC_RAM_MEMFD, 2048, 0, NULL), -EINVAL,
		 "pagesize 2048: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, OC_RAM_MEMFD, 1, 0, NULL), -EINVAL,
		 "pagesize 1: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, 7, 4096, 0, NULL), -EINVAL,
		 "unknown kind 7: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, -1, 4096, 0, NULL), -EINVAL,
		 "unknown kind -1: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, OC_RAM_TMPFS, 4096, 0, NULL), -EINVAL,
		 "tmpfs without dir: -EINVAL");
	CHECK_EQ(new_ram(&ram, 0, OC_RAM_MEMFD, 4096, 0, NULL), -EINVAL,
		 "opts version 0: -EINVAL");
	CHECK_EQ(new_ram(&ram, V + 1, OC_RAM_MEMFD, 4096, 0, NULL), -EINVAL,
		 "opts version from the future: -EINVAL");
	CHECK_EQ(new_ram(&ram, V, OC_RAM_TMPFS, 4096, 0,
			 "/nonexistent/oc-test-dir"), -ENOENT,
		 "tmpfs in a missing directory: -ENOENT");
	CHECK(ram == sentinel, "out untouched on every failure");
	CHECK_EQ(oc_ram_close(NULL), 0, "oc_ram_close(NULL)");
	CHECK_EQ(oc_ram_default(1000, &ram), -EINVAL,
		 "oc_ram_default(1000): -EINVAL");
}

static void test_defaults(void)
{
	oc_ram_t *ram = NULL, *d1 = NULL, *d2 = NULL, *d3 = NULL;
	oc_ram_stats_t st;

	printf("# defaults\n");
	CHECK_EQ(oc_ram_new(&ram, NULL), 0, "oc_ram_new(NULL opts)");
	if (ram) {
		CHECK_EQ(oc_ram_pagesize(ram), OC_PAGESIZE_DEFAULT,
			 "default page size 2 MiB");
		CHECK_EQ(oc_ram_kind(ram), OC_RAM_MEMFD, "default kind memfd");
		CHECK_EQ(oc_ram_budget(ram), oc_ram_budget_default(),
			 "default budget is oc_ram_budget_default()");
		memset(&st, 0xff, sizeof(st));
		CHECK_EQ(oc_ram_stats(ram, &st), 0, "oc_ram_stats");
		CHECK(st.pagesize == OC_PAGESIZE_DEFAULT &&
		      st.budget == oc_ram_budget(ram) && st.used == 0 &&
		      st.ram_pages == 0 && st.loads == 0 && st.faults == 0 &&
		      st.overbudget == 0, "fresh stats");
		CHECK_EQ(oc_ram_close(ram), 0, "close");
	}
	CHECK_EQ(oc_ram_default(4096, &d1), 0, "oc_ram_default(4096)");
	CHECK_EQ(oc_ram_default(4096, &d2), 0, "oc_ram_default(4096) again");
	CHECK(d1 && d1 == d2, "the same default RAM both times");
	CHECK_EQ(oc_ram_default(64 * KiB, &d3), 0, "oc_ram_default(64 KiB)");
	CHECK(d3 && d3 != d1 && oc_ram_pagesize(d3) == 64 * KiB,
	      "another default RAM for another page size");

	CHECK(strcmp(oc_strerror(0), "") != 0, "oc_strerror(0): %s",
	      oc_strerror(0));
	CHECK(strlen(oc_strerror(-ENOMEM)) > 0, "oc_strerror(-ENOMEM): %s",
	      oc_strerror(-ENOMEM));
	{
		int ok = 1;
		for (int e = OC_ERROR_BASE; e <= OC_ERROR_LAST; e++) {
			const char *m = oc_strerror(e);
			ok &= m && *m;
			for (int f = OC_ERROR_BASE; f < e; f++)
				ok &= strcmp(m, oc_strerror(f)) != 0;
		}
		CHECK(ok, "oc_strerror: a distinct message for every OC_E code");
	}
	CHECK(oc_strerror(-999999) != NULL, "oc_strerror of an unknown code");
	CHECK(oc_version() && strchr(oc_version(), '.'), "oc_version: %s",
	      oc_version());
}

static void test_budget(void)
{
	const size_t ps = 64 * KiB;
	oc_ram_t *ram = NULL;
	oc_ram_stats_t st;
	uint64_t phys, dflt;

	printf("# budget\n");
	CHECK_EQ(new_ram(&ram, OC_RAM_OPTS_VERSION, OC_RAM_MEMFD, ps, 10 * ps,
			 NULL), 0, "oc_ram_new budget 10 pages");
	if (!ram)
		return;
	CHECK_EQ(oc_ram_budget(ram), 10 * ps, "budget from opts");
	CHECK_EQ(oc_ram_set_budget(ram, 20 * ps), 0, "set budget 20 pages");
	CHECK_EQ(oc_ram_budget(ram), 20 * ps, "budget is 20 pages");
	oc_ram_stats(ram, &st);
	CHECK_EQ(st.budget, 20 * ps, "stats.budget");
	CHECK_EQ(st.pagesize, ps, "stats.pagesize");
	CHECK_EQ(oc_ram_set_budget(ram, ps - 1), -EINVAL,
		 "budget below one page: -EINVAL");
	CHECK_EQ(oc_ram_set_budget(ram, 0), -EINVAL, "budget 0: -EINVAL");
	CHECK_EQ(oc_ram_budget(ram), 20 * ps, "budget unchanged");
	CHECK_EQ(oc_ram_set_budget(ram, ps), 0, "budget of one page");
	CHECK_EQ(oc_ram_close(ram), 0, "close");

	/* OUTCORE_RAM */
	phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
	dflt = phys / 4 < 64 * MiB ? 64 * MiB : phys / 4;
	setenv("OUTCORE_RAM", "123MiB", 1);
	CHECK_EQ(oc_ram_budget_default(), 123 * MiB,
		 "OUTCORE_RAM=123MiB: default budget 123 MiB");
	ram = NULL;
	CHECK_EQ(new_ram(&ram, OC_RAM_OPTS_VERSION, OC_RAM_MEMFD, ps, 0, NULL),
		 0, "oc_ram_new with budget 0");
	CHECK_EQ(oc_ram_budget(ram), 123 * MiB, "takes OUTCORE_RAM");
	oc_ram_close(ram);
	setenv("OUTCORE_RAM", "1.5g", 1);
	CHECK_EQ(oc_ram_budget_default(), 3 * (uint64_t)512 * MiB,
		 "OUTCORE_RAM=1.5g");
	setenv("OUTCORE_RAM", "lots", 1);
	CHECK_EQ(oc_ram_budget_default(), dflt,
		 "OUTCORE_RAM invalid: a quarter of memory, at least 64 MiB");
	unsetenv("OUTCORE_RAM");
	CHECK_EQ(oc_ram_budget_default(), dflt,
		 "OUTCORE_RAM unset: a quarter of memory, at least 64 MiB");
}

static void test_parse_size(void)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
		{"512MiB", (uint64_t)512 << 20},
		{"4GiB", (uint64_t)4 << 30},
		{"1.5G", (uint64_t)3 << 29},
		{"64k", 65536},
		{"64K", 65536},
		{"64kb", 65536},
		{"64KiB", 65536},
		{"65536", 65536},
		{"0", 0},
		{"1m", (uint64_t)1 << 20},
		{"2T", (uint64_t)2 << 40},
		{"1P", (uint64_t)1 << 50},
		{"0.5k", 512},
		{"16383P", (uint64_t)16383 << 50},
		{"18446744073709551615", UINT64_MAX},
	};
	static const char *bad[] = {
		"", "abc", "12x", "k", "MiB", "1.5.5G", "-1", "1GiBx", "1Gi B",
		".", "1..5k",
	};
	static const char *range[] = {
		"18446744073709551616", "16384P", "17179869184G",
		"99999999999999999999999999",
	};
	uint64_t v;

	printf("# oc_parse_size\n");
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = 12345;
		int r = oc_parse_size(good[i].s, &v);
		CHECK(r == 0 && v == good[i].v, "parse \"%s\" = %llu (%d, %llu)",
		      good[i].s, (unsigned long long)good[i].v, r,
		      (unsigned long long)v);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 12345;
		int r = oc_parse_size(bad[i], &v);
		CHECK(r == -EINVAL && v == 12345, "parse \"%s\": -EINVAL (%d)",
		      bad[i], r);
	}
	for (size_t i = 0; i < sizeof(range) / sizeof(range[0]); i++) {
		v = 12345;
		int r = oc_parse_size(range[i], &v);
		CHECK(r == -ERANGE && v == 12345, "parse \"%s\": -ERANGE (%d)",
		      range[i], r);
	}
}

/* One page through two mappings, on one RAM. */
static void aliasing_on(oc_ram_t *ram, const char *what)
{
	size_t ps = oc_ram_pagesize(ram);
	tfile_t tf;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v1 = NULL, *v2 = NULL, *v3 = NULL;
	char *a, *b, *c;
	int r;

	tfile_init(&tf, ps, "talias");
	r = oc_fileh_open(&fh, &tf.file, ram);
	CHECK(r == 0, "%s: open (%d)", what, r);
	if (!fh)
		return;
	CHECK_EQ(oc_fileh_mmap(fh, 0, 4, &v1), 0, "mmap 1");
	CHECK_EQ(oc_fileh_mmap(fh, 0, 4, &v2), 0, "mmap 2 of the same blocks");
	CHECK_EQ(oc_fileh_mmap(fh, 2, 1, &v3), 0, "mmap 3 of block 2 alone");
	if (!v1 || !v2 || !v3)
		return;
	a = oc_vma_addr(v1);
	b = oc_vma_addr(v2);
	c = oc_vma_addr(v3);
	CHECK(a != b, "two addresses");
	*tf_at(a, ps, 2, 3) = 0x1111;
	CHECK(*tf_at(b, ps, 2, 3) == 0x1111, "%s: write through 1, read through 2",
	      what);
	CHECK(*tf_at(c, ps, 0, 3) == 0x1111, "%s: and through 3", what);
	*tf_at(b, ps, 3, 0) = 0x2222;
	CHECK(*tf_at(a, ps, 3, 0) == 0x2222, "%s: write through 2, read through 1",
	      what);
	*tf_at(c, ps, 0, 4) = 0x3333;
	CHECK(*tf_at(a, ps, 2, 4) == 0x3333 && *tf_at(b, ps, 2, 4) == 0x3333,
	      "%s: write through 3 seen by 1 and 2", what);
	CHECK_EQ(TF_GET(&tf.nloads), 2, "one load per block");
	CHECK_EQ(oc_vma_unmap(v1), 0, "unmap 1");
	CHECK(*tf_at(b, ps, 2, 3) == 0x1111, "2 still sees the data");
	*tf_at(b, ps, 2, 5) = 0x4444;
	CHECK(*tf_at(c, ps, 0, 5) == 0x4444, "2 and 3 still alias");
	oc_vma_unmap(v2);
	oc_vma_unmap(v3);
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
}

static void test_kinds(void)
{
	oc_ram_t *ram = NULL;
	long huge = tf_proc_kb("/proc/meminfo", "HugePages_Total");
	int r;

	printf("# kinds and aliasing\n");
	ram = tf_ram(4 * KiB, 64 * MiB, &r);
	CHECK(ram != NULL, "memfd RAM 4 KiB: %d", r);
	if (ram) {
		aliasing_on(ram, "memfd 4K");
		CHECK_EQ(oc_ram_close(ram), 0, "close");
	}
	ram = tf_ram(2 * MiB, 64 * MiB, &r);
	CHECK(ram != NULL, "memfd RAM 2 MiB: %d", r);
	if (ram) {
		aliasing_on(ram, "memfd 2M");
		CHECK_EQ(oc_ram_close(ram), 0, "close");
	}

	ram = NULL;
	r = new_ram(&ram, OC_RAM_OPTS_VERSION, OC_RAM_TMPFS, 64 * KiB, 64 * MiB,
		    "/dev/shm");
	CHECK_EQ(r, 0, "tmpfs RAM in /dev/shm");
	if (ram) {
		CHECK_EQ(oc_ram_kind(ram), OC_RAM_TMPFS, "kind tmpfs");
		aliasing_on(ram, "tmpfs 64K");
		CHECK_EQ(oc_ram_close(ram), 0, "close");
	}

	ram = NULL;
	r = new_ram(&ram, OC_RAM_OPTS_VERSION, OC_RAM_HUGETLB, 4096, 64 * MiB,
		    NULL);
	CHECK(r == OC_ENOHUGE || r == -EINVAL,
	      "hugetlb with 4 KiB pages: OC_ENOHUGE or -EINVAL (%d)", r);
	ram = NULL;
	r = new_ram(&ram, OC_RAM_OPTS_VERSION, OC_RAM_HUGETLB, 2 * MiB,
		    64 * MiB, NULL);
	if (huge == 0) {
		CHECK_EQ(r, OC_ENOHUGE, "hugetlb without reserved huge pages: "
			 "OC_ENOHUGE");
		CHECK(ram == NULL, "out untouched");
	} else if (huge > 0) {
		CHECK(r == 0, "hugetlb RAM (%ld huge pages reserved): %d", huge,
		      r);
		if (ram) {
			CHECK_EQ(oc_ram_kind(ram), OC_RAM_HUGETLB, "kind hugetlb");
			aliasing_on(ram, "hugetlb 2M");
			CHECK_EQ(oc_ram_close(ram), 0, "close");
		}
	} else {
		printf("# no HugePages_Total in /proc/meminfo: %d\n", r);
	}
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static int write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	int ok;
	if (!f)
		return -1;
	ok = fprintf(f, "%ld\n", v) > 0;
	return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* hugetlb memory in use: load, alias, write out, reload, and a clean error
 * when the huge pages run out.  Needs reserved huge pages: as root with
 * none reserved, reserve 8 for the test and give them back after. */
static void test_hugetlb(void)
{
	const char *knob = "/proc/sys/vm/nr_hugepages";
	long before = read_long(knob), have;
	oc_ram_t *ram = NULL;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	tfile_t tf;
	size_t ps = 2 * MiB;
	int r, ok;

	printf("# hugetlb pages in use\n");
	if (before == 0 && geteuid() == 0)
		write_long(knob, 8);
	have = tf_proc_kb("/proc/meminfo", "HugePages_Free");
	if (have < 6) {
		printf("# skipped: no free huge pages (HugePages_Free %ld) and "
		       "cannot reserve any (not root)\n", have);
		goto out;
	}
	/* A budget bigger than the huge pages there are. */
	r = new_ram(&ram, OC_RAM_OPTS_VERSION, OC_RAM_HUGETLB, ps,
		    (uint64_t)(have + 8) * ps, NULL);
	CHECK_EQ(r, 0, "hugetlb RAM");
	if (!ram)
		goto out;
	aliasing_on(ram, "hugetlb 2M");
	tfile_init(&tf, ps, "thuge");
	CHECK_EQ(oc_fileh_open(&fh, &tf.file, ram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(fh, 0, (uint64_t)have + 8, &v), 0, "mmap");
	if (!v)
		goto close;
	for (int i = 0; i < 3; i++)
		*tf_at(oc_vma_addr(v), ps, i, 7) = 0xabc0 + i;
	CHECK_EQ(oc_fileh_writeout(fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED),
		 0, "writeout from hugetlb pages");
	CHECK_EQ(TF_GET(&tf.nstores), 3, "3 stores");
	CHECK_EQ(oc_ram_reclaim(ram, 100), 3, "reclaim the 3 clean pages");
	ok = 1;
	for (int i = 0; i < 3; i++)
		ok &= *tf_at(oc_vma_addr(v), ps, i, 7) == (uint64_t)(0xabc0 + i) &&
		      *tf_at(oc_vma_addr(v), ps, i, 8) == tf_word(i, 8);
	CHECK(ok, "reloaded into hugetlb pages: the stored data");
	/* Loading more blocks than there are huge pages: a clean error. */
	r = oc_fileh_load(fh, 0, (uint64_t)have + 8);
	CHECK(r == OC_ENOHUGE || r == -ENOMEM || r == -ENOSPC,
	      "more blocks than huge pages: a clean error, no crash (%d: %s)", r,
	      oc_strerror(r));
	CHECK_EQ(oc_vma_unmap(v), 0, "unmap");
close:
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");
out:
	if (before == 0 && geteuid() == 0)
		write_long(knob, 0);
}

/* Pages freed by reclaim, discard and close leave the process. */
static void test_freed(void)
{
	const size_t ps = 2 * MiB;
	const int N = 8;
	tfile_t tf;
	oc_ram_t *ram;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	oc_ram_stats_t st;
	long s0, s1, s2, sh0, sh1;
	char *a;
	int r, ok;

	printf("# freed pages go back to the OS\n");
	ram = tf_ram(ps, 64 * MiB, &r);
	CHECK(ram != NULL, "RAM: %d", r);
	if (!ram)
		return;
	tfile_init(&tf, ps, "tfree");
	CHECK_EQ(oc_fileh_open(&fh, &tf.file, ram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(fh, 0, N, &v), 0, "mmap");
	if (!v)
		return;
	a = oc_vma_addr(v);

	s0 = tf_status_kb("RssShmem");
	sh0 = tf_proc_kb("/proc/meminfo", "Shmem");
	ok = 1;
	for (int i = 0; i < N; i++)
		ok &= tf_is_pattern(a + i * ps, ps, i, 1);
	CHECK(ok, "%d blocks read", N);
	s1 = tf_status_kb("RssShmem");
	sh1 = tf_proc_kb("/proc/meminfo", "Shmem");
	printf("# RssShmem %ld -> %ld kB, Shmem %ld -> %ld kB\n", s0, s1, sh0, sh1);
	CHECK(s1 - s0 >= (long)(N * ps / KiB) - 1024,
	      "RssShmem grew by the loaded pages (%ld kB)", s1 - s0);
	CHECK_EQ(oc_ram_reclaim(ram, 1000), N, "reclaim all 8 clean pages");
	s2 = tf_status_kb("RssShmem");
	printf("# after reclaim: RssShmem %ld kB, Shmem %ld kB\n", s2,
	       tf_proc_kb("/proc/meminfo", "Shmem"));
	CHECK(s2 - s0 <= 1024, "RssShmem back down after reclaim (%ld kB over)",
	      s2 - s0);
	oc_ram_stats(ram, &st);
	CHECK(st.ram_pages == 0 && st.used == 0, "stats: nothing resident");
	CHECK_EQ(st.reclaims, N, "stats.reclaims 8");

	for (int i = 0; i < N; i++)
		*tf_at(a, ps, i, 0) = i;
	CHECK_EQ(TF_GET(&tf.nloads), 2 * N, "reclaimed pages reloaded");
	s1 = tf_status_kb("RssShmem");
	CHECK(s1 - s0 >= (long)(N * ps / KiB) - 1024,
	      "RssShmem grew by the dirty pages (%ld kB)", s1 - s0);
	CHECK_EQ(oc_ram_reclaim(ram, 1000), 0, "dirty pages are not reclaimed");
	CHECK_EQ(oc_fileh_discard(fh), 0, "discard");
	s2 = tf_status_kb("RssShmem");
	CHECK(s2 - s0 <= 1024, "RssShmem back down after discard (%ld kB over)",
	      s2 - s0);
	oc_ram_stats(ram, &st);
	CHECK(st.ram_pages == 0 && st.dirty_pages == 0 && st.used == 0,
	      "stats: nothing resident after discard");

	ok = 1;
	for (int i = 0; i < N; i++)
		ok &= *tf_at(a, ps, i, 1) == tf_word(i, 1);
	CHECK(ok, "read again");
	oc_vma_unmap(v);
	s1 = tf_status_kb("RssShmem");
	CHECK_EQ(oc_fileh_close(fh), 0, "close handle");
	s2 = tf_status_kb("RssShmem");
	printf("# before close %ld kB, after %ld kB\n", s1, s2);
	CHECK(s2 - s0 <= 1024, "RssShmem back down after close (%ld kB over)",
	      s2 - s0);
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");
}

int main(void)
{
	test_new_errors();
	test_defaults();
	test_budget();
	test_parse_size();
	test_kinds();
	test_hugetlb();
	test_freed();
	return check_done();
}
