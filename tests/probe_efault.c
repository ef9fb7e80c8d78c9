/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * probe_efault.c: system calls on pages the program cannot access, shown
 * without the library.
 *
 * A page of managed memory that is not loaded is mapped PROT_NONE, and a
 * clean page is mapped PROT_READ.  When the *kernel* touches such a page on
 * behalf of a system call (write(2) reading the buffer, read(2) filling
 * it), no SIGSEGV is raised: the call fails with EFAULT, or returns a short
 * count when the first pages could be copied.  outcore's SIGSEGV handler
 * therefore never sees these accesses; callers must prefault the range
 * (oc_prefault) before handing managed memory to a system call.
 * By contrast, a page that is accessible but not yet present (a fresh
 * MAP_SHARED mapping) is faulted in by the kernel itself and works.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

#define PAGE 4096

static volatile sig_atomic_t nsegv;

/* Should never run.  If it does, count it and open the page so the access
 * can complete instead of looping. */
static void on_segv(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	nsegv++;
	mprotect((void *)((uintptr_t)si->si_addr & ~(uintptr_t)(PAGE - 1)), PAGE,
		 PROT_READ | PROT_WRITE);
}

static int memfd_with(size_t len, unsigned char fill)
{
	int fd = memfd_create("probe_efault", MFD_CLOEXEC);
	unsigned char buf[PAGE];

	if (fd < 0)
		return -1;
	memset(buf, fill, sizeof buf);
	for (size_t off = 0; off < len; off += PAGE)
		if (pwrite(fd, buf, PAGE, off) != PAGE)
			return -1;
	return fd;
}

int main(void)
{
	struct sigaction sa;
	unsigned char *p, got[2 * PAGE];
	ssize_t r;
	int out, in;

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);

	out = memfd_with(0, 0);      /* the sink of write(2) */
	in = memfd_with(2 * PAGE, 0x77); /* the source of read(2) */
	if (out < 0 || in < 0)
		check_skip("memfd_create not available");

	/* Two pages of non-zero data, then protections per case. */
	p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		CHECK(0, "mmap: %s", strerror(errno));
		return check_done();
	}
	memset(p, 0x41, 2 * PAGE);

	/* write(2) from a PROT_NONE page. */
	mprotect(p, 2 * PAGE, PROT_NONE);
	errno = 0;
	r = pwrite(out, p, PAGE, 0);
	CHECK(r == -1 && errno == EFAULT,
	      "write(2) of 4 KiB from a PROT_NONE page returns -1/EFAULT (got %zd, %s)", r, strerror(errno));
	CHECK(nsegv == 0, "and raises no SIGSEGV");

	/* write(2) of 8 KiB: first page readable, second PROT_NONE. */
	mprotect(p, PAGE, PROT_READ);
	errno = 0;
	r = pwrite(out, p, 2 * PAGE, 0);
	CHECK(r == PAGE, "write(2) of 8 KiB whose second page is PROT_NONE returns 4096 (got %zd, %s)",
	      r, r < 0 ? strerror(errno) : "no error");
	memset(got, 0, sizeof got);
	r = pread(out, got, 2 * PAGE, 0);
	CHECK(r == PAGE && got[0] == 0x41 && got[PAGE - 1] == 0x41,
	      "the file received exactly the readable page (%zd bytes)", r);
	CHECK(nsegv == 0, "and raises no SIGSEGV");

	/* read(2) into a PROT_READ page (a clean page in outcore). */
	mprotect(p, 2 * PAGE, PROT_READ);
	errno = 0;
	r = pread(in, p, PAGE, 0);
	CHECK(r == -1 && errno == EFAULT,
	      "read(2) into a PROT_READ page returns -1/EFAULT (got %zd, %s)", r, strerror(errno));
	CHECK(p[0] == 0x41, "and leaves the page unchanged");

	/* read(2) into a PROT_NONE page (an unloaded page in outcore). */
	mprotect(p, 2 * PAGE, PROT_NONE);
	errno = 0;
	r = pread(in, p, PAGE, 0);
	CHECK(r == -1 && errno == EFAULT,
	      "read(2) into a PROT_NONE page returns -1/EFAULT (got %zd, %s)", r, strerror(errno));

	/* read(2) of 8 KiB: first page writable, second read-only. */
	mprotect(p, PAGE, PROT_READ | PROT_WRITE);
	mprotect(p + PAGE, PAGE, PROT_READ);
	r = pread(in, p, 2 * PAGE, 0);
	CHECK(r == PAGE && p[0] == 0x77 && p[PAGE] == 0x41,
	      "read(2) of 8 KiB whose second page is PROT_READ returns 4096 (got %zd)", r);
	CHECK(nsegv == 0, "no SIGSEGV was raised by any of these calls");
	munmap(p, 2 * PAGE);

	/* Contrast: accessible but not-yet-present pages are faulted in by
	 * the kernel itself. */
	{
		int fd = memfd_with(2 * PAGE, 0x42);
		unsigned char *q = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

		r = pwrite(out, q, PAGE, 0);
		CHECK(r == PAGE, "write(2) from an untouched readable MAP_SHARED page works (%zd)", r);
		r = pread(in, q + PAGE, PAGE, 0);
		CHECK(r == PAGE && q[PAGE] == 0x77,
		      "read(2) into an untouched writable MAP_SHARED page works (%zd)", r);
		CHECK(nsegv == 0, "and raises no SIGSEGV either");
		munmap(q, 2 * PAGE);
		close(fd);
	}
	close(in);
	close(out);
	return check_done();
}
