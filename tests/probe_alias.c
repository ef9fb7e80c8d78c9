/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * probe_alias.c: the kernel behaviour outcore's RAM relies on, shown
 * without the library.
 *
 *   - a memfd page mapped MAP_SHARED at several addresses is one page: a
 *     write through one mapping is read through the others (this is how a
 *     RAM page appears in a window and in every mapping of a handle);
 *   - private memory cannot be aliased: mremap(old_size 0) of a private
 *     anonymous mapping is refused (or, on old kernels, copies), and a
 *     MAP_PRIVATE mapping of the memfd stops sharing at the first write;
 *     this is why RAM pages live in a memfd and not in malloc'd memory;
 *   - punching a hole (fallocate PUNCH_HOLE|KEEP_SIZE) frees the page at
 *     once: every alias reads zeros and the process's RssShmem and the
 *     memfd's allocated blocks go down (how freed RAM pages go back to the
 *     OS);
 *   - MADV_DONTFORK keeps a mapping out of a fork()ed child, whose access
 *     then gets SIGSEGV; without it a child writes straight into the
 *     parent's shared pages (the hazard outcore's fork() rule avoids).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define PAGE 4096
#define SZ ((size_t)4 << 20) /* 4 MiB: large next to RSS counter slack */

/* RssShmem of this process in kB, or -1. */
static long rss_shmem_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "RssShmem: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* Read every page through p; returns the OR of the bytes read. */
static unsigned char touch_read(const volatile unsigned char *p, size_t len)
{
	unsigned char acc = 0;
	for (size_t off = 0; off < len; off += PAGE)
		acc |= p[off];
	return acc;
}

static int all_equal(const unsigned char *p, size_t len, unsigned char v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static void probe_memfd_alias(int fd)
{
	unsigned char *a, *b, *c;

	a = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	b = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (a == MAP_FAILED || b == MAP_FAILED) {
		CHECK(0, "mmap of the memfd twice: %s", strerror(errno));
		return;
	}
	memset(a, 0x5a, SZ);
	CHECK(a != b && all_equal(b, SZ, 0x5a),
	      "memfd mapped MAP_SHARED at two addresses: 4 MiB written through one is read through the other");
	b[SZ - 1] = 0x17;
	CHECK(a[SZ - 1] == 0x17, "and a write through the second is read through the first");

	/* mremap(old_size 0) duplicates a shared mapping: a third alias. */
	c = mremap(a, 0, SZ, MREMAP_MAYMOVE);
	CHECK(c != MAP_FAILED && c != a && c[0] == 0x5a && c[SZ - 1] == 0x17,
	      "mremap(old_size 0) of a MAP_SHARED memfd mapping makes another alias");
	if (c != MAP_FAILED) {
		c[0] = 0x33;
		CHECK(a[0] == 0x33 && b[0] == 0x33, "a write through that alias is seen by both others");
		c[0] = 0x5a;
		munmap(c, SZ);
	}
	munmap(a, SZ);
	munmap(b, SZ);
}

static void probe_private_no_alias(int fd)
{
	unsigned char *p, *q, *s;

	p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		CHECK(0, "mmap private anonymous: %s", strerror(errno));
		return;
	}
	p[0] = 1;
	errno = 0;
	q = mremap(p, 0, PAGE, MREMAP_MAYMOVE);
	if (q == MAP_FAILED) {
		CHECK(errno == EINVAL,
		      "mremap(old_size 0) of a MAP_PRIVATE|MAP_ANONYMOUS mapping fails with EINVAL (got %s): anonymous memory cannot be aliased",
		      strerror(errno));
	} else {
		/* Old kernels (< 5.14) made a new, independent mapping. */
		q[0] = 2;
		p[0] = 3;
		CHECK(q[0] == 2, "mremap(old_size 0) of a MAP_PRIVATE|MAP_ANONYMOUS mapping made an independent copy (no alias)");
		munmap(q, PAGE);
	}
	munmap(p, PAGE);

	/* A MAP_PRIVATE mapping of the memfd shares only until written. */
	p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	s = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED || s == MAP_FAILED) {
		CHECK(0, "mmap memfd shared + private: %s", strerror(errno));
		return;
	}
	p[1] = 0x44;
	CHECK(s[1] == 0x44, "a MAP_PRIVATE mapping of the memfd sees shared writes before its own first write");
	s[2] = 0x55; /* copy-on-write: s now has its own anonymous copy */
	p[1] = 0x66;
	CHECK(s[1] == 0x44 && p[2] != 0x55,
	      "after its first write the MAP_PRIVATE mapping is a private copy (no longer an alias)");
	munmap(p, PAGE);
	munmap(s, PAGE);
}

static void probe_punch(int fd)
{
	unsigned char *a, *b;
	struct stat st0, st1;
	long rss0, rss1;

	a = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	b = mmap(NULL, SZ, PROT_READ, MAP_SHARED, fd, 0);
	if (a == MAP_FAILED || b == MAP_FAILED) {
		CHECK(0, "mmap of the memfd twice: %s", strerror(errno));
		return;
	}
	memset(a, 0x5a, SZ);
	(void)touch_read(b, SZ); /* map every page in the second alias too */
	fstat(fd, &st0);
	rss0 = rss_shmem_kb();

	int r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, SZ);
	CHECK(r == 0, "fallocate(PUNCH_HOLE|KEEP_SIZE) of 4 MiB of a memfd%s%s",
	      r ? ": " : "", r ? strerror(errno) : "");
	/* Measure before reading: a read of a hole allocates a new page. */
	rss1 = rss_shmem_kb();
	fstat(fd, &st1);

	CHECK(rss0 >= 0 && rss0 - rss1 >= (long)(SZ / 1024),
	      "RssShmem drops by at least the punched size: %ld kB -> %ld kB (2 aliases x %zu kB mapped)",
	      rss0, rss1, SZ / 1024);
	CHECK(st0.st_blocks >= (blkcnt_t)(SZ / 512) && st1.st_blocks == 0,
	      "the memfd's allocated blocks go to 0: %lld -> %lld (512-byte units)",
	      (long long)st0.st_blocks, (long long)st1.st_blocks);
	CHECK(all_equal(a, SZ, 0) && all_equal(b, SZ, 0),
	      "every alias reads zeros after the punch");
	munmap(a, SZ);
	munmap(b, SZ);
}

static int child_status(pid_t pid)
{
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return status;
}

static void probe_dontfork(int fd)
{
	volatile unsigned char *a, *b;
	pid_t pid;
	int st;

	a = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	b = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, PAGE);
	if (a == MAP_FAILED || b == MAP_FAILED) {
		CHECK(0, "mmap: %s", strerror(errno));
		return;
	}
	a[0] = 0x11;
	b[0] = 0x11;
	CHECK(madvise((void *)a, PAGE, MADV_DONTFORK) == 0, "madvise(MADV_DONTFORK) on a shared memfd mapping");

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct rlimit rl = {0, 0};
		setrlimit(RLIMIT_CORE, &rl); /* no core file for the expected crash */
		signal(SIGSEGV, SIG_DFL);
		a[0] = 0x22; /* not mapped in the child */
		_exit(0);
	}
	st = child_status(pid);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV && a[0] == 0x11,
	      "a fork()ed child touching a MADV_DONTFORK mapping gets SIGSEGV (status 0x%x), the parent's page is untouched", st);

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		b[0] = 0x22; /* inherited shared mapping: writes the parent's page */
		_exit(0);
	}
	st = child_status(pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && b[0] == 0x22,
	      "without MADV_DONTFORK the child's write lands in the parent's shared page (the hazard)");
	munmap((void *)a, PAGE);
	munmap((void *)b, PAGE);
}

int main(void)
{
	int fd = memfd_create("probe_alias", MFD_CLOEXEC);

	if (fd < 0)
		check_skip("memfd_create not available");
	if (ftruncate(fd, SZ) < 0) {
		CHECK(0, "ftruncate memfd: %s", strerror(errno));
		return check_done();
	}
	probe_memfd_alias(fd);
	probe_private_no_alias(fd);
	probe_punch(fd);
	probe_dontfork(fd);
	close(fd);
	return check_done();
}
