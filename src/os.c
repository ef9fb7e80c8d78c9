/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * os.c: every memory-management system call of the core, in one place.
 *
 * Contract: each function returns 0 or -errno and leaves the caller's errno
 * as it was (the fault handler must preserve errno for the interrupted
 * code).  All are async-signal-safe: they only make system calls.
 *
 * Memory checkers.  Managed memory is reserved PROT_NONE and becomes
 * accessible page by page when the fault handler maps it.  Valgrind's
 * memcheck would report each first touch of a PROT_NONE page as an invalid
 * access before our handler runs; _oc_os_mark_managed() tells it that the
 * range is addressable, so only real errors are reported.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4 /* Linux 5.7; shared mappings since 5.13 */
#endif

#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#define HAVE_VALGRIND 1
#else
#define HAVE_VALGRIND 0
#endif

#define SAVE_ERRNO int saved_errno_ = errno
#define RET(r) do { int r_ = (r); errno = saved_errno_; return r_; } while (0)

bool _oc_os_under_valgrind(void)
{
#if HAVE_VALGRIND
	return RUNNING_ON_VALGRIND != 0;
#else
	return false;
#endif
}

void _oc_os_mark_managed(void *addr, size_t len)
{
#if HAVE_VALGRIND
	VALGRIND_MAKE_MEM_DEFINED(addr, len);
#else
	(void)addr;
	(void)len;
#endif
}

int _oc_os_reserve(size_t len, size_t align, void **out)
{
	SAVE_ERRNO;
	size_t total;
	char *p, *a;

	if (align < 4096)
		align = 4096;
	if (len > SIZE_MAX - align)
		RET(-ENOMEM);
	total = len + align;
	p = mmap(NULL, total, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) /* EINVAL here only means "too large" (valgrind) */
		RET(errno == EINVAL ? -ENOMEM : -errno);
	a = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + len < p + total)
		munmap(a + len, (size_t)(p + total - (a + len)));
	_oc_os_mark_managed(a, len);
	*out = a;
	RET(0);
}

int _oc_os_release(void *addr, size_t len)
{
	SAVE_ERRNO;
	if (munmap(addr, len))
		RET(-errno);
	RET(0);
}

int _oc_os_unmap_to_reserve(void *addr, size_t len)
{
	SAVE_ERRNO;
	void *p = mmap(addr, len, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
		       -1, 0);
	if (p == MAP_FAILED)
		RET(-errno);
	_oc_os_mark_managed(addr, len);
	RET(0);
}

int _oc_os_map_fixed(void *addr, size_t len, int prot, int fd, uint64_t off,
		     bool populate)
{
	SAVE_ERRNO;
	/* MAP_NORESERVE: hugetlb memory would otherwise reserve huge pages
	 * for the whole range at mmap time; the RAM allocates each page
	 * (fallocate) before use, which fails cleanly instead. */
	int flags = MAP_SHARED | MAP_FIXED | MAP_NORESERVE |
		    (populate ? MAP_POPULATE : 0);
	void *p = mmap(addr, len, prot, flags, fd, (off_t)off);
	if (p == MAP_FAILED)
		RET(-errno);
	RET(0);
}

void _oc_os_advise_huge(void *addr, size_t len)
{
	SAVE_ERRNO;
	(void)madvise(addr, len, MADV_HUGEPAGE);
	errno = saved_errno_;
}

int _oc_os_populate(void *addr, size_t len)
{
	SAVE_ERRNO;
	if (madvise(addr, len, MADV_POPULATE_READ))
		RET(-errno);
	RET(0);
}

int _oc_os_move(void *from, size_t len, void *to)
{
	SAVE_ERRNO;
	void *p = mremap(from, len, len,
			 MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, to);
	if (p == MAP_FAILED)
		RET(-errno);
	RET(0);
}

int _oc_os_map_file_ro(int fd, uint64_t off, size_t len, const void **out)
{
	SAVE_ERRNO;
	struct stat sb;
	void *p;

	if (fstat(fd, &sb))
		RET(-errno);
	if (sb.st_size < 0 || (uint64_t)sb.st_size < off ||
	    (uint64_t)sb.st_size - off < len)
		RET(-EIO);
	/* Not populated: a read of each page faults it in from the page
	 * cache (with the kernel's fault-around), which measured here costs
	 * half of filling every entry up front. */
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off);
	if (p == MAP_FAILED)
		RET(-errno);
	_oc_os_advise_huge(p, len);
	*out = p;
	RET(0);
}

int _oc_os_map_zeros(size_t len, const void **out)
{
	SAVE_ERRNO;
	void *p = mmap(NULL, len, PROT_READ,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		RET(-errno);
	*out = p;
	RET(0);
}

int _oc_os_protect(void *addr, size_t len, int prot)
{
	SAVE_ERRNO;
	if (mprotect(addr, len, prot))
		RET(-errno);
	if (prot == PROT_NONE)
		_oc_os_mark_managed(addr, len);
	RET(0);
}

int _oc_os_punch(int fd, uint64_t off, size_t len)
{
	SAVE_ERRNO;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)len))
		RET(-errno);
	RET(0);
}

/* pread or pwrite all of len bytes, resuming after EINTR and short counts. */
static int rw_all(int fd, char *buf, size_t len, uint64_t off, bool write)
{
	SAVE_ERRNO;
	while (len) {
		ssize_t n = write ? pwrite(fd, buf, len, (off_t)off)
				  : pread(fd, buf, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			RET(-errno);
		}
		if (n == 0)
			RET(-EIO);
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	RET(0);
}

int _oc_os_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	return rw_all(fd, (char *)buf, len, off, true);
}

int _oc_os_pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	return rw_all(fd, buf, len, off, false);
}

long _oc_os_max_map_count(void)
{
	SAVE_ERRNO;
	char buf[32];
	long v = 65530;
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof buf - 1);
		if (n > 0) {
			buf[n] = 0;
			v = strtol(buf, NULL, 10);
			if (v <= 0)
				v = 65530;
		}
		close(fd);
	}
	errno = saved_errno_;
	return v;
}
