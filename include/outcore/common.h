/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 * (see LICENSE: combining with software under any OSI-approved licence is
 * permitted).
 *
 * common.h: what every outcore header shares: the export macro, error codes
 * and the size parser.
 *
 * Errors.  Every fallible call returns an int: 0 on success, -errno for an
 * operating-system error (for example -ENOMEM, -EINVAL, -EBUSY), or one of
 * the negative OC_E* codes below for conditions that have no errno.  No call
 * sets errno as its way of reporting.  oc_strerror() explains any code.
 * Constructors fill an out-parameter and leave it untouched on failure.
 */
#ifndef OUTCORE_COMMON_H
#define OUTCORE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define OC_API __attribute__((visibility("default")))
#else
#define OC_API
#endif

/* Library error codes: a reserved range below every errno value. */
enum {
	OC_ERROR_BASE  = -30900,
	OC_ENOHUGE     = -30900, /* huge pages requested but none reserved */
	OC_EMAPLIMIT   = -30899, /* kernel mapping limit (vm.max_map_count) */
	OC_EFORKED     = -30898, /* object inherited across fork(): unusable */
	OC_EBLKSIZE    = -30897, /* file block size differs from RAM page size */
	OC_ELOAD       = -30896, /* loadblk failed (see the message printed) */
	OC_ESTORE      = -30895, /* storeblk failed */
	OC_ECORRUPT    = -30894, /* stored data failed verification */
	OC_ECONFLICT   = -30893, /* a concurrent transaction changed the same data */
	OC_EVERSION    = -30892, /* unsupported format or ops-table version */
	OC_ENOTSTORE   = -30891, /* not an outcore store */
	OC_EREADONLY   = -30890, /* opened read-only */
	OC_ENOTFOUND   = -30889, /* no such array or object */
	OC_EEXIST      = -30888, /* already exists */
	OC_EFAILED     = -30887, /* transaction failed earlier: abort first */
	OC_ESTOREIO    = -30886, /* storage backend I/O or connection error */
	OC_ERROR_LAST  = -30886,
};

/* A message for any return code of this library (0, -errno or OC_E*).
 * The string is static; never NULL.  Safe anywhere, including a signal
 * handler. */
OC_API const char *oc_strerror(int err);

/* Parse a byte size such as "512MiB", "4GiB", "1.5G", "65536", "64k".
 * Suffixes (case-insensitive): k, m, g, t, p with optional "i" and "b";
 * binary (1024-based) in all cases, because memory is.  Returns 0 and
 * fills *out, -EINVAL for a malformed string, -ERANGE on overflow. */
OC_API int oc_parse_size(const char *s, uint64_t *out);

/* A detail of the calling thread's last error, set by the code that failed
 * (a file op or a storage engine) with oc_set_error_detail(): for example
 * "array 'x' block 4" for OC_ECORRUPT.  Returns "" when there is none.
 * The string lives until the thread's next oc_set_error_detail(). */
OC_API const char *oc_error_detail(void);

/* Set (printf-style) or, with fmt NULL, clear the calling thread's error
 * detail.  Safe in a file op, including one running in a page fault. */
OC_API void oc_set_error_detail(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

/* Library version, "MAJOR.MINOR.PATCH". */
OC_API const char *oc_version(void);

#ifdef __cplusplus
}
#endif
#endif
