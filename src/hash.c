/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * hash.c: the block checksum (XXH3, 64 bits) at the speed of the CPU.
 *
 * Debian builds libxxhash for the x86-64 baseline (SSE2): ~8 GB/s per core
 * here, slower than reading memory, so a verified scan ran at hashing
 * speed.  The same XXH3 compiled for AVX2 runs at ~13 GB/s from memory and
 * ~30 GB/s from cache.  This file compiles xxhash.h's inline implementation
 * a second time for AVX2 and picks it at the first call when the CPU (and
 * the kernel, which must save the YMM registers) supports it.  XXH3 is
 * defined bit for bit, so every path gives the same values (test_hash
 * compares them with the library's) and stores move between machines.
 */
#include "internal.h"

#include <stdatomic.h>
#include <xxhash.h>

/* The library's own, for CPUs without AVX2 (and other architectures,
 * where Debian's build already uses what the baseline has). */
uint64_t _oc_xxh3_lib(const void *p, size_t n)
{
	return XXH3_64bits(p, n);
}

#ifdef OC_XXH3_AVX2
/* xxhash.h again, inline (its names get an XXH_INLINE_ prefix), with every
 * function of this part compiled for AVX2: GCC's pragma also defines
 * __AVX2__, from which xxhash.h picks its AVX2 loop.  (clang has no such
 * pragma: built with it, outcore uses the library's XXH3.) */
#pragma GCC push_options
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#include <xxhash.h>
static uint64_t xxh3_avx2(const void *p, size_t n)
{
	return XXH3_64bits(p, n);
}
#pragma GCC pop_options

static uint64_t (*pick(void))(const void *, size_t)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		return xxh3_avx2;
	return _oc_xxh3_lib;
}
#else
static uint64_t (*pick(void))(const void *, size_t)
{
	return _oc_xxh3_lib;
}
#endif

static uint64_t (*_Atomic xxh3_fn)(const void *, size_t);

uint64_t _oc_xxh3(const void *p, size_t n)
{
	uint64_t (*fn)(const void *, size_t) =
		atomic_load_explicit(&xxh3_fn, memory_order_relaxed);

	if (!fn) { /* racing first calls pick the same */
		fn = pick();
		atomic_store_explicit(&xxh3_fn, fn, memory_order_relaxed);
	}
	return fn(p, n);
}

const char *_oc_xxh3_impl(void)
{
	(void)_oc_xxh3("", 0);
	return atomic_load(&xxh3_fn) == _oc_xxh3_lib ? "libxxhash" : "avx2";
}
