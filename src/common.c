/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * common.c: error messages, the size parser, the version, and the
 * signal-safe message and bug helpers.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

const char *oc_version(void)
{
	return "0.1.0";
}

static __thread char error_detail[256];

const char *oc_error_detail(void)
{
	return error_detail;
}

void oc_set_error_detail(const char *fmt, ...)
{
	va_list ap;

	if (!fmt) {
		error_detail[0] = 0;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(error_detail, sizeof error_detail, fmt, ap);
	va_end(ap);
}

const char *oc_strerror(int err)
{
	switch (err) {
	case 0: return "success";
	case OC_ENOHUGE: return "no free huge pages (reserve them with vm.nr_hugepages), or the page size is not a multiple of the huge page size";
	case OC_EMAPLIMIT: return "kernel mapping limit reached (vm.max_map_count)";
	case OC_EFORKED: return "object inherited across fork(): open it anew in this process";
	case OC_EBLKSIZE: return "file block size differs from the RAM page size";
	case OC_ELOAD: return "loading a block failed";
	case OC_ESTORE: return "storing a block failed";
	case OC_ECORRUPT: return "stored data is corrupt";
	case OC_ECONFLICT: return "conflict: another transaction changed the same data";
	case OC_EVERSION: return "unsupported version";
	case OC_ENOTSTORE: return "not an outcore store";
	case OC_EREADONLY: return "opened read-only";
	case OC_ENOTFOUND: return "not found";
	case OC_EEXIST: return "already exists";
	case OC_EFAILED: return "transaction failed earlier: abort it first";
	case OC_ESTOREIO: return "storage I/O or connection error";
	}
	if (err < 0 && err > -4096) {
		/* strerror is not async-signal-safe in general, but glibc's
		 * table lookup for known codes is; keep a few by hand. */
		switch (-err) {
		case EINVAL: return "invalid argument";
		case ENOMEM: return "out of memory or address space";
		case EBUSY: return "busy: still in use";
		case EROFS: return "read-only";
		case EIO: return "input/output error";
		case ERANGE: return "value out of range";
		case ENOENT: return "no such file or directory";
		case EACCES: return "permission denied";
		case ENOSPC: return "no space left";
		case EFAULT: return "bad address";
		case EDEADLK: return "would deadlock";
		}
		return strerror(-err);
	}
	return "unknown error";
}

int oc_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v;
	uint64_t mult = 1, ival;
	const char *p;

	if (!s || !out)
		return -EINVAL;
	while (isspace((unsigned char)*s))
		s++;
	if (!*s || *s == '-' || *s == '+')
		return -EINVAL;
	/* Integers exactly (no double rounding) when there is no dot. */
	errno = 0;
	ival = strtoull(s, &end, 10);
	if (end == s)
		return -EINVAL;
	if (*end == '.') {
		v = strtod(s, &end);
	} else {
		if (errno == ERANGE)
			return -ERANGE;
		v = -1;
	}
	p = end;
	while (isspace((unsigned char)*p))
		p++;
	if (*p) {
		switch (tolower((unsigned char)*p)) {
		case 'k': mult = 1ull << 10; break;
		case 'm': mult = 1ull << 20; break;
		case 'g': mult = 1ull << 30; break;
		case 't': mult = 1ull << 40; break;
		case 'p': mult = 1ull << 50; break;
		case 'b': mult = 1; p--; break;
		default: return -EINVAL;
		}
		p++;
		if (mult != 1 && tolower((unsigned char)*p) == 'i')
			p++;
		if (tolower((unsigned char)*p) == 'b')
			p++;
		while (isspace((unsigned char)*p))
			p++;
		if (*p)
			return -EINVAL;
	}
	if (v >= 0) {
		double r = v * (double)mult;
		if (r >= 18446744073709551615.0)
			return -ERANGE;
		*out = (uint64_t)r;
		return 0;
	}
	if (ival && mult > UINT64_MAX / ival)
		return -ERANGE;
	*out = ival * mult;
	return 0;
}

bool _oc_all_zero(const void *buf, size_t len)
{
	const uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* A tiny formatter for _oc_msg: %s %d %u %lu %llu %x %lx %llx %p %%. */
static size_t fmt_num(char *b, unsigned long long v, unsigned base)
{
	char tmp[32];
	size_t n = 0, i;
	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	for (i = 0; i < n; i++)
		b[i] = tmp[n - 1 - i];
	return n;
}

void _oc_msg(const char *fmt, ...)
{
	char buf[1024];
	size_t n = 0;
	va_list ap;
	const char *f;

	va_start(ap, fmt);
	for (f = fmt; *f && n < sizeof buf - 40; f++) {
		int lng = 0;
		if (*f != '%') {
			buf[n++] = *f;
			continue;
		}
		f++;
		while (*f == 'l') {
			lng++;
			f++;
		}
		switch (*f) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			while (*s && n < sizeof buf - 40)
				buf[n++] = *s++;
			break;
		}
		case 'd': {
			long long v = lng ? va_arg(ap, long) : va_arg(ap, int);
			if (v < 0) {
				buf[n++] = '-';
				v = -v;
			}
			n += fmt_num(buf + n, (unsigned long long)v, 10);
			break;
		}
		case 'u':
		case 'x': {
			unsigned long long v = lng ? va_arg(ap, unsigned long)
						   : va_arg(ap, unsigned);
			n += fmt_num(buf + n, v, *f == 'x' ? 16 : 10);
			break;
		}
		case 'p': {
			uintptr_t v = (uintptr_t)va_arg(ap, void *);
			buf[n++] = '0';
			buf[n++] = 'x';
			n += fmt_num(buf + n, v, 16);
			break;
		}
		case '%':
			buf[n++] = '%';
			break;
		default:
			buf[n++] = '?';
		}
	}
	va_end(ap);
	if (n && buf[n - 1] != '\n')
		buf[n++] = '\n';
	{
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(2, buf + off, n - off);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
	}
}

void _oc_bug(const char *file, int line, const char *what)
{
	_oc_msg("outcore: BUG at %s:%d: %s", file, line, what);
	abort();
}
