/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_hash.c: the block checksum (src/hash.c).  Whatever implementation
 * _oc_xxh3 picks (AVX2 where the CPU has it) must give the values of
 * Debian's libxxhash: stores written on one machine are verified on
 * another.  Lengths around every internal boundary of XXH3 (0-16, 17-128,
 * 129-240, stripes of 64, blocks of 1,024 bytes), at alignments 0-63 in
 * steps of 7, and the block sizes the stores use.
 */
#include "check.h"
#include "internal.h"

#include <stdint.h>
#include <string.h>

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* Whether _oc_xxh3 and the library agree on every length in [lo, hi] in
 * steps of step, at alignments of buf 0-63 in steps of 7. */
static int same(const unsigned char *buf, size_t lo, size_t hi, size_t step)
{
	for (size_t al = 0; al < 64; al += 7)
		for (size_t n = lo; n <= hi; n += step)
			if (_oc_xxh3(buf + al, n) != _oc_xxh3_lib(buf + al, n))
				return 0;
	return 1;
}

int main(void)
{
	size_t big = (size_t)2 << 20;
	unsigned char *buf = malloc(big + 64);
	const char *impl = _oc_xxh3_impl();

	CHECK(buf != NULL, "a 2 MiB buffer");
	if (!buf)
		return check_done();
	for (size_t i = 0; i < big + 64; i += 8) {
		uint64_t r = rnd();
		memcpy(buf + i, &r, 8);
	}
	CHECK(!strcmp(impl, "avx2") || !strcmp(impl, "libxxhash"),
	      "implementation: %s", impl ? impl : "(null)");
#ifdef OC_XXH3_AVX2
	/* the build has an AVX2 path (src/hash.c) */
	if (__builtin_cpu_supports("avx2"))
		CHECK(!strcmp(impl, "avx2"), "the CPU has AVX2 and it is used");
#else
	printf("# built without an AVX2 path (not GCC on x86-64): the library's XXH3\n");
#endif
	if (impl && !strcmp(impl, "libxxhash")) {
		printf("# skipped: equal values (no AVX2: _oc_xxh3 is the "
		       "library itself, nothing to compare)\n");
	} else {
		CHECK(same(buf, 0, 300, 1), "lengths 0-300 equal the library's");
		CHECK(same(buf, 1000, 5000, 13),
		      "lengths 1000-5000 equal the library's");
		CHECK(same(buf, 65536 - 3, 65536 + 3, 1),
		      "64 KiB +- 3 equal the library's");
		CHECK(_oc_xxh3(buf, big) == _oc_xxh3_lib(buf, big),
		      "2 MiB equals the library's");
	}
	/* A change anywhere changes the value (the checksum sees each byte). */
	{
		uint64_t h0 = _oc_xxh3(buf, 65536);
		int all = 1;
		for (size_t i = 0; i < 65536; i += 4093) {
			buf[i] ^= 1;
			all &= _oc_xxh3(buf, 65536) != h0;
			buf[i] ^= 1;
		}
		CHECK(all, "one flipped bit anywhere in 64 KiB changes the hash");
		CHECK(_oc_xxh3(buf, 65536) == h0, "and flipping it back restores it");
	}
	free(buf);
	return check_done();
}
