/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * check.h: the tiny test harness of the C tests.
 *
 * Each test is a standalone program.  CHECK(cond, fmt, ...) prints one line
 * per check ("ok - ..." or "FAIL - ... (file:line)"); check_done() prints
 * the closing "N passed, N failed" line and returns the exit status: 0 when
 * all passed, 1 otherwise.  check_skip(reason) prints the reason and exits
 * 77 (skipped).
 *
 * check_fork() is fork() for tests whose child ends with _exit() (see there).
 *
 * Environment: OC_TEST_SCALE (a divisor, default 1) lets the driver shrink
 * data sizes under valgrind; use check_scale() to size data, never to drop
 * a check.
 */
#ifndef OUTCORE_TESTS_CHECK_H
#define OUTCORE_TESTS_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif

static int check_npassed, check_nfailed;

static void check_report(int ok, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5), unused));
static void check_report(int ok, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	printf("%s - ", ok ? "ok" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	if (!ok)
		printf(" (%s:%d)", file, line);
	printf("\n");
	fflush(stdout);
	if (ok)
		check_npassed++;
	else
		check_nfailed++;
}

#define CHECK(cond, ...) check_report(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* CHECK_EQ for integers: prints both values on failure. */
#define CHECK_EQ(a, b, what)                                                    \
	do {                                                                    \
		long long check_a_ = (long long)(a), check_b_ = (long long)(b); \
		if (check_a_ == check_b_)                                       \
			check_report(1, __FILE__, __LINE__, "%s", what);        \
		else                                                            \
			check_report(0, __FILE__, __LINE__, "%s: %lld != %lld", \
				     what, check_a_, check_b_);                 \
	} while (0)

static int check_done(void) __attribute__((unused));
static int check_done(void)
{
	printf("%d passed, %d failed\n", check_npassed, check_nfailed);
	fflush(stdout);
	return check_nfailed ? 1 : 0;
}

static void check_skip(const char *reason) __attribute__((unused, noreturn));
static void check_skip(const char *reason)
{
	printf("SKIP: %s\n", reason);
	printf("%d passed, %d failed, 1 skipped\n", check_npassed, check_nfailed);
	fflush(stdout);
	exit(77);
}

/* The data-size divisor set by the test driver (1 unless under valgrind). */
static unsigned long check_scale(void) __attribute__((unused));
static unsigned long check_scale(void)
{
	const char *s = getenv("OC_TEST_SCALE");
	unsigned long v = s ? strtoul(s, NULL, 10) : 1;
	return v ? v : 1;
}

/* fork(), and in the child no leak check at exit under valgrind: a child
 * inherits the parent's heap, and whether valgrind finds a pointer to each
 * of the parent's blocks when the child calls _exit() depends on which
 * registers and stack slots the child's path happened to reuse, so the
 * child would report the parent's live data as "definitely lost" now and
 * then.  The child's code is the parent's, whose own leak check covers it.
 * Outside valgrind this is fork(). */
static pid_t check_fork(void) __attribute__((unused));
static pid_t check_fork(void)
{
	pid_t pid = fork();
#ifdef VALGRIND_CLO_CHANGE
	if (pid == 0)
		VALGRIND_CLO_CHANGE("--leak-check=no");
#endif
	return pid;
}

#endif
