/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_fault: faults the handler must not serve, and faults it cannot
 * serve.  Each case runs in a forked child (core dumps off, an alarm
 * against hangs, stderr captured through a pipe) and the parent checks how
 * it ended:
 *   - a fault outside managed memory still kills with SIGSEGV, and goes to
 *     the handler installed before outcore's when there is one;
 *   - a loadblk that always fails: SIGBUS, with the file and block named;
 *     one that fails twice then succeeds: the access succeeds;
 *   - a loadblk touching an unloaded page of its own handle: stopped with a
 *     message, not hung;
 *   - fork(): the child cannot touch the parent's pages (SIGSEGV with a
 *     message), inherited objects answer OC_EFORKED, the child can open
 *     what it needs anew, and the parent's data is untouched.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <outcore/outcore.h>
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif

#include "check.h"
#include "internal.h" /* _oc_os_under_valgrind */
#include "testfile.h"

#define PS ((size_t)4096)

struct child {
	int status;
	char err[16384]; /* the child's stderr */
};

/* Run fn(arg) in a child; it exits 0 unless fn exits otherwise. */
static void run_child(void (*fn)(void *), void *arg, struct child *c)
{
	int pe[2];
	size_t n = 0;
	ssize_t r;
	pid_t pid;

	memset(c, 0, sizeof(*c));
	if (pipe(pe)) {
		c->status = -1;
		return;
	}
	fflush(stdout);
	fflush(stderr);
	pid = check_fork();
	if (pid == 0) {
		struct rlimit rl = {0, 0};
		setrlimit(RLIMIT_CORE, &rl);
		dup2(pe[1], 2);
		close(pe[0]);
		close(pe[1]);
		alarm(10);
		fn(arg);
		_exit(0);
	}
	close(pe[1]);
	while (n < sizeof(c->err) - 1 &&
	       (r = read(pe[0], c->err + n, sizeof(c->err) - 1 - n)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		n += (size_t)r;
	}
	c->err[n] = 0;
	close(pe[0]);
	if (pid < 0 || waitpid(pid, &c->status, 0) != pid)
		c->status = -1;
}

static const char *how(const struct child *c)
{
	static char buf[64];
	if (WIFSIGNALED(c->status))
		snprintf(buf, sizeof(buf), "killed by signal %d (%s)",
			 WTERMSIG(c->status), strsignal(WTERMSIG(c->status)));
	else if (WIFEXITED(c->status))
		snprintf(buf, sizeof(buf), "exited %d", WEXITSTATUS(c->status));
	else
		snprintf(buf, sizeof(buf), "status %#x", c->status);
	return buf;
}

static int died_of(const struct child *c, int sig)
{
	return WIFSIGNALED(c->status) && WTERMSIG(c->status) == sig;
}

static int exited(const struct child *c, int code)
{
	return WIFEXITED(c->status) && WEXITSTATUS(c->status) == code;
}

/* Print the child's stderr as comments. */
static void show_err(const struct child *c)
{
	const char *p = c->err;
	int lines = 0;
	while (*p && lines < 12) {
		const char *e = strchr(p, '\n');
		int len = e ? (int)(e - p) : (int)strlen(p);
		printf("#   stderr: %.*s\n", len, p);
		lines++;
		p += len + (e ? 1 : 0);
	}
}

/* Loads whose values are stored here cannot be optimised away (valgrind's
 * JIT drops loads whose results are unused, even volatile ones). */
static volatile uint64_t sink;

/* Invalid addresses, through volatile pointers so that the compiler
 * neither warns nor assumes anything about the access. */
static volatile int *volatile null_ptr = (volatile int *)16;
static volatile int *volatile wild_ptr = (volatile int *)(uintptr_t)0xdead0000ul;

/* ---- in a child: a handle with a mapping ---------------------------- */

static tfile_t ctf;
static oc_ram_t *cram;
static oc_fileh_t *cfh;
static oc_vma_t *cvma;
static char *cbase;

static void child_open(const char *name)
{
	int r;
	cram = tf_ram(PS, 64 * PS, &r);
	if (!cram)
		_exit(90);
	if (tfile_init(&ctf, PS, name))
		_exit(91);
	if (oc_fileh_open(&cfh, &ctf.file, cram))
		_exit(92);
	if (oc_fileh_mmap(cfh, 0, 16, &cvma))
		_exit(93);
	cbase = oc_vma_addr(cvma);
}

/* ---- faults outside managed memory ---------------------------------- */

static void c_null_read(void *arg)
{
	(void)arg;
	child_open("tnull");
	sink = *tf_at(cbase, PS, 0, 0); /* a served fault first */
	sink = (uint64_t)*null_ptr;
	_exit(0);
}

static void c_null_write(void *arg)
{
	(void)arg;
	child_open("tnull");
	*null_ptr = 1;
	_exit(0);
}

static void c_wild(void *arg)
{
	(void)arg;
	child_open("twild");
	*wild_ptr = 1;
	_exit(0);
}

static void c_own_protnone(void *arg)
{
	char *p;
	(void)arg;
	child_open("tprot");
	p = mmap(NULL, PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		_exit(94);
	sink = (uint64_t)*(volatile char *)p; /* SEGV_ACCERR, but not ours */
	_exit(0);
}

static void c_raise(void *arg)
{
	(void)arg;
	child_open("traise");
	kill(getpid(), SIGSEGV);
	_exit(0);
}

static void c_unmapped(void *arg)
{
	char *old;
	(void)arg;
	child_open("tunmap");
	old = cbase;
	oc_vma_unmap(cvma);
	sink = (uint64_t)*(volatile char *)(old + PS); /* no longer managed */
	_exit(0);
}

static int null_load_hook(tfile_t *tf, uint64_t blk, void *buf)
{
	(void)tf, (void)blk, (void)buf;
	return *null_ptr;
}

static void c_crash_in_loadblk(void *arg)
{
	(void)arg;
	child_open("tcrashload");
	ctf.load_hook = null_load_hook;
	sink = *tf_at(cbase, PS, 1, 0);
	_exit(0);
}

static int null_store_hook(tfile_t *tf, uint64_t blk, const void *buf)
{
	(void)tf, (void)blk, (void)buf;
	return *null_ptr;
}

static void c_crash_in_storeblk(void *arg)
{
	(void)arg;
	child_open("tcrashstore");
	ctf.store_hook = null_store_hook;
	*tf_at(cbase, PS, 1, 0) = 1;
	oc_fileh_writeout(cfh, OC_WRITEOUT_STORE);
	_exit(0);
}

static void *expected_addr;

/* The previous handlers end the child with a signal of their own rather
 * than an exit code, which valgrind would replace by its error code (it
 * reports the invalid access before the handler runs). */
static void old_siginfo_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGSEGV && si->si_addr == expected_addr)
		raise(SIGUSR1);
	_exit(41);
}

static void old_plain_handler(int sig)
{
	if (sig == SIGSEGV)
		raise(SIGUSR2);
	_exit(44);
}

static void c_old_siginfo(void *arg)
{
	struct sigaction sa;
	(void)arg;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = old_siginfo_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	child_open("told");
	sink = *tf_at(cbase, PS, 0, 0); /* served by outcore */
	expected_addr = (void *)null_ptr;
	*null_ptr = 1;
	_exit(0);
}

static void c_old_plain(void *arg)
{
	struct sigaction sa;
	(void)arg;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = old_plain_handler;
	sigaction(SIGSEGV, &sa, NULL);
	child_open("told");
	sink = *tf_at(cbase, PS, 0, 0);
	*null_ptr = 1;
	_exit(0);
}

/* A handler installed after ours (a crash reporter, Python's
 * faulthandler.enable()) took managed faults for crashes: the next
 * oc_pagefault_install (every oc_fileh_open calls it) puts ours on top
 * again, chaining to it. */
static void c_later_handler(void *arg)
{
	struct sigaction sa;
	(void)arg;
	child_open("tlater");
	sink = *tf_at(cbase, PS, 0, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = old_siginfo_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	if (oc_pagefault_install())
		_exit(95);
	sink = *tf_at(cbase, PS, 1, 0); /* served by outcore */
	expected_addr = (void *)null_ptr;
	*null_ptr = 1;                  /* the later handler's */
	_exit(0);
}

/* One that restores its predecessor (ours) and raises the signal again,
 * as faulthandler does: the raised signal gets the default action, not
 * the same handler again and again. */
static struct sigaction reraise_prev;

static void reraise_handler(int sig)
{
	static const char msg[] = "reraise\n";
	(void)!write(2, msg, sizeof msg - 1);
	sigaction(SIGSEGV, &reraise_prev, NULL);
	raise(sig);
}

static void c_reraising_handler(void *arg)
{
	struct sigaction sa;
	(void)arg;
	child_open("treraise");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = reraise_handler;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGSEGV, &sa, &reraise_prev);
	if (oc_pagefault_install())
		_exit(95);
	sink = *tf_at(cbase, PS, 0, 0);
	*null_ptr = 1;
	_exit(0);
}

/* One that returns without curing the fault (faulthandler after its
 * disable() does): the fault comes back at once, again and again; after a
 * few rounds it gets the default action, not a loop (the alarm would end
 * one with SIGALRM). */
static void returning_handler(int sig)
{
	(void)sig;
}

static void c_returning_handler(void *arg)
{
	struct sigaction sa;
	(void)arg;
	child_open("treturn");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = returning_handler;
	sigaction(SIGSEGV, &sa, NULL);
	if (oc_pagefault_install())
		_exit(95);
	sink = *tf_at(cbase, PS, 0, 0);
	*null_ptr = 1;
	_exit(0);
}

static void test_outside(void)
{
	struct child c;

	printf("# faults outside managed memory\n");
	run_child(c_null_read, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "NULL read: SIGSEGV (%s)", how(&c));
	run_child(c_null_write, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "NULL write: SIGSEGV (%s)", how(&c));
	run_child(c_wild, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "wild pointer: SIGSEGV (%s)", how(&c));
	run_child(c_own_protnone, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "PROT_NONE page of the program: SIGSEGV (%s)",
	      how(&c));
	run_child(c_raise, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "kill(SIGSEGV): SIGSEGV (%s)", how(&c));
	run_child(c_unmapped, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "access to an unmapped mapping: SIGSEGV (%s)",
	      how(&c));
	run_child(c_crash_in_loadblk, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "NULL access inside loadblk: SIGSEGV (%s)",
	      how(&c));
	run_child(c_crash_in_storeblk, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "NULL access inside storeblk: SIGSEGV (%s)",
	      how(&c));
	run_child(c_old_siginfo, NULL, &c);
	CHECK(died_of(&c, SIGUSR1), "previous SA_SIGINFO handler called with "
	      "the fault's address (%s)", how(&c));
	run_child(c_old_plain, NULL, &c);
	CHECK(died_of(&c, SIGUSR2), "previous plain handler called (%s)",
	      how(&c));
	run_child(c_later_handler, NULL, &c);
	CHECK(died_of(&c, SIGUSR1), "a handler installed later: ours back on "
	      "top serves the fault, the other gets the crash (%s)", how(&c));
	run_child(c_returning_handler, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "a later handler that returns without "
	      "curing the fault: the default action, not a loop (%s)", how(&c));
	run_child(c_reraising_handler, NULL, &c);
	CHECK(died_of(&c, SIGSEGV) && strstr(c.err, "reraise\n") &&
	      !strstr(strstr(c.err, "reraise\n") + 1, "reraise\n"),
	      "a later handler that raises again: called once, then the "
	      "default action (%s)", how(&c));
}

/* ---- loadblk errors inside a fault ---------------------------------- */

static void fatal_hook(const char *msg)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "HOOK calls=%llu msg=%s\n",
			 (unsigned long long)TF_GET(&ctf.nload_calls),
			 msg ? msg : "(null)");
	if (write(2, buf, (size_t)n) < 0)
		_exit(95);
}

static void c_load_fails(void *arg)
{
	(void)arg;
	child_open("tbadfile");
	oc_set_fatal_hook(fatal_hook);
	ctf.load_fail_err = -EIO;
	TF_SET(&ctf.load_fail, -1);
	sink = *tf_at(cbase, PS, 5, 0);
	_exit(0);
}

static void c_load_fails_twice(void *arg)
{
	int write = arg != NULL;
	uint64_t v;
	child_open("tflaky");
	TF_SET(&ctf.load_fail, 2);
	if (write) {
		*tf_at(cbase, PS, 3, 0) = 99;
		v = *tf_at(cbase, PS, 3, 0);
		if (v != 99 || *tf_at(cbase, PS, 3, 1) != tf_word(3, 1))
			_exit(1);
		if (oc_fileh_isdirty(cfh) != 1)
			_exit(3);
	} else if (*tf_at(cbase, PS, 3, 0) != tf_word(3, 0)) {
		_exit(1);
	}
	_exit(TF_GET(&ctf.nload_calls) == 3 ? 0 : 2);
}

static int own_touch_hook(tfile_t *tf, uint64_t blk, void *buf)
{
	(void)tf, (void)buf;
	if (blk == 2) /* touch block 7 of the same handle, not loaded */
		sink = *tf_at(cbase, PS, 7, 0);
	return 0;
}

static void c_load_touches_own(void *arg)
{
	(void)arg;
	child_open("tselfload");
	ctf.load_hook = own_touch_hook;
	alarm(5);
	sink = *tf_at(cbase, PS, 2, 0);
	_exit(0);
}

static int own_touch_store_hook(tfile_t *tf, uint64_t blk, const void *buf)
{
	(void)tf, (void)buf;
	if (blk == 0)
		sink = *tf_at(cbase, PS, 7, 0);
	return 0;
}

static void c_store_touches_own(void *arg)
{
	(void)arg;
	child_open("tselfstore");
	ctf.store_hook = own_touch_store_hook;
	alarm(5);
	*tf_at(cbase, PS, 0, 0) = 1;
	_exit(oc_fileh_writeout(cfh, OC_WRITEOUT_STORE) == 0 ? 0 : 1);
}

static void test_load_errors(void)
{
	struct child c;
	const char *h;
	unsigned long long calls = 0;

	printf("# loadblk errors inside a fault\n");
	run_child(c_load_fails, NULL, &c);
	CHECK(died_of(&c, SIGBUS), "loadblk always failing: SIGBUS (%s)", how(&c));
	show_err(&c);
	CHECK(strstr(c.err, "tbadfile") != NULL, "stderr names the file");
	CHECK(strstr(c.err, "block 5") != NULL, "stderr names the block");
	CHECK(strstr(c.err, strerror(EIO)) || strstr(c.err, oc_strerror(-EIO)) ||
	      strstr(c.err, "EIO"), "stderr names the error");
	h = strstr(c.err, "HOOK calls=");
	CHECK(h != NULL, "the fatal hook was called");
	if (h)
		calls = strtoull(h + 11, NULL, 10);
	CHECK(calls >= 2 && calls <= OC_LOAD_RETRIES + 1,
	      "retried a bounded number of times (%llu loadblk calls)", calls);

	run_child(c_load_fails_twice, NULL, &c);
	CHECK(exited(&c, 0), "read: loadblk fails twice then succeeds: the "
	      "access succeeds, 3 calls (%s)", how(&c));
	if (!exited(&c, 0))
		show_err(&c);
	run_child(c_load_fails_twice, (void *)1, &c);
	CHECK(exited(&c, 0), "write: loadblk fails twice then succeeds: the "
	      "access succeeds, 3 calls (%s)", how(&c));
	if (!exited(&c, 0))
		show_err(&c);

	run_child(c_load_touches_own, NULL, &c);
	CHECK(!died_of(&c, SIGALRM), "loadblk touching its own handle: no hang "
	      "(%s)", how(&c));
	CHECK(!exited(&c, 0), "the process is stopped");
	CHECK(c.err[0] != 0, "with a message");
	show_err(&c);

	run_child(c_store_touches_own, NULL, &c);
	CHECK(!died_of(&c, SIGALRM), "storeblk touching an unloaded page of its "
	      "own handle: no hang (%s)", how(&c));
	CHECK(!exited(&c, 0) && c.err[0] != 0,
	      "the process is stopped with a message");
	show_err(&c);
}

/* ---- fork ----------------------------------------------------------- */

static tfile_t ptf, pdtf;
static oc_ram_t *pram;
static oc_fileh_t *pfh, *pdfh;
static oc_vma_t *pvma;
static char *pbase;

static void c_fork_touch(void *arg)
{
	int write = arg != NULL;
	if (write)
		*(volatile char *)pbase = 'C';
	else
		sink = (uint64_t)*(volatile char *)pbase;
	_exit(0);
}

static void c_fork_touch_unloaded(void *arg)
{
	(void)arg;
	sink = *tf_at(pbase, PS, 6, 0);
	_exit(0);
}

/* Every call on inherited objects: OC_EFORKED.  Exit code: a bit per
 * call that answered something else. */
static void c_fork_calls(void *arg)
{
	oc_vma_t *v = NULL;
	int bad = 0;
	(void)arg;
	if (oc_fileh_mmap(pfh, 0, 1, &v) != OC_EFORKED || v)
		bad |= 1;
	if (oc_fileh_writeout(pfh, OC_WRITEOUT_STORE) != OC_EFORKED)
		bad |= 2;
	if (oc_fileh_discard(pfh) != OC_EFORKED)
		bad |= 4;
	if (oc_fileh_invalidate(pfh, 0) != OC_EFORKED)
		bad |= 8;
	if (oc_fileh_load(pfh, 0, 1) != OC_EFORKED)
		bad |= 16;
	if (oc_prefault(pbase, PS, 0) != OC_EFORKED)
		bad |= 32;
	{
		uint64_t blks[4];
		oc_ram_stats_t st;
		if (oc_fileh_isdirty(pfh) != OC_EFORKED ||
		    oc_fileh_dirty_blocks(pfh, blks, 4) != OC_EFORKED ||
		    oc_ram_stats(oc_fileh_ram(pfh), &st) != OC_EFORKED)
			bad |= 64; /* they answered the parent's state */
	}
	/* closing and unmapping only forget them */
	oc_vma_unmap(pvma);
	oc_fileh_close(pfh);
	_exit(bad);
}

/* The child opens what it needs anew: on a RAM of its own (exit 0) or on
 * the default RAM (arg != NULL). */
static void c_fork_fresh(void *arg)
{
	oc_ram_t *ram = NULL;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	tfile_t *tf = &ctf;
	int r;
	if (!arg) {
		ram = tf_ram(PS, 64 * PS, &r);
		if (!ram)
			_exit(10);
	}
	tfile_init(tf, PS, "tchild");
	if ((r = oc_fileh_open(&fh, &tf->file, ram))) {
		fprintf(stderr, "child: oc_fileh_open: %d %s\n", r,
			oc_strerror(r));
		_exit(11);
	}
	if ((r = oc_fileh_mmap(fh, 0, 4, &v))) {
		fprintf(stderr, "child: oc_fileh_mmap: %d %s\n", r,
			oc_strerror(r));
		_exit(12);
	}
	if (*tf_at(oc_vma_addr(v), PS, 1, 1) != tf_word(1, 1))
		_exit(13);
	*tf_at(oc_vma_addr(v), PS, 2, 0) = 5;
	if (oc_fileh_writeout(fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED))
		_exit(14);
	if (!tf->stored[2] || ((uint64_t *)tf->stored[2])[0] != 5)
		_exit(15);
	oc_vma_unmap(v);
	if (oc_fileh_close(fh))
		_exit(16);
	_exit(0);
}

/* No mapping of a RAM's memory file reaches the child: exit 0, or 1 with
 * the line of /proc/self/maps that shows one. */
static void c_fork_maps(void *arg)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	(void)arg;
	if (!f)
		_exit(2);
	while (fgets(line, sizeof line, f))
		if (strstr(line, "memfd:outcore-ram")) {
			fprintf(stderr, "child maps: %s", line);
			_exit(1);
		}
	_exit(0);
}

static void test_fork(void)
{
	struct child c;
	oc_ram_t *dram = NULL;
	oc_vma_t *dv = NULL;
	int r;

	printf("# fork\n");
	pram = tf_ram(PS, 64 * PS, &r);
	CHECK(pram != NULL, "RAM: %d", r);
	if (!pram)
		return;
	tfile_init(&ptf, PS, "tparent");
	CHECK_EQ(oc_fileh_open(&pfh, &ptf.file, pram), 0, "open");
	CHECK_EQ(oc_fileh_mmap(pfh, 0, 8, &pvma), 0, "mmap");
	if (!pvma)
		return;
	pbase = oc_vma_addr(pvma);
	*pbase = 'P';
	sink = *tf_at(pbase, PS, 1, 0); /* a clean page too */
	/* the default RAM in use before the fork */
	CHECK_EQ(oc_ram_default(PS, &dram), 0, "default RAM");
	tfile_init(&pdtf, PS, "tpdefault");
	CHECK_EQ(oc_fileh_open(&pdfh, &pdtf.file, NULL), 0,
		 "open on the default RAM");
	if (pdfh && oc_fileh_mmap(pdfh, 0, 2, &dv) == 0)
		*tf_at(oc_vma_addr(dv), PS, 0, 0) = 1;

	run_child(c_fork_touch, (void *)1, &c);
	CHECK(died_of(&c, SIGSEGV), "child writing the parent's dirty page: "
	      "SIGSEGV (%s)", how(&c));
	CHECK(c.err[0] != 0, "with a message");
	show_err(&c);
	CHECK(*(volatile char *)pbase == 'P', "the parent's data is still 'P'");
	run_child(c_fork_touch, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "child reading the parent's dirty page: "
	      "SIGSEGV (%s)", how(&c));
	run_child(c_fork_touch_unloaded, NULL, &c);
	CHECK(died_of(&c, SIGSEGV), "child reading an unloaded page: SIGSEGV (%s)",
	      how(&c));
	CHECK(*(volatile char *)pbase == 'P', "the parent's data is still 'P'");
	CHECK_EQ(TF_GET(&ptf.blk_loads[6]), 0, "the child loaded nothing for "
		 "the parent");

	/* a RAM of 2 MiB pages that recycled slots, so that it has parks
	 * (mappings of its file moved out of the way: see struct oc_ram) */
	{
		tfile_t btf;
		oc_ram_t *bram = tf_ram(2 << 20, 2 << 21, &r);
		oc_fileh_t *bfh = NULL;
		oc_vma_t *bv = NULL;
		tfile_init(&btf, 2 << 20, "tparks");
		if (bram && !oc_fileh_open(&bfh, &btf.file, bram) &&
		    !oc_fileh_mmap(bfh, 0, 4, &bv))
			for (uint64_t b = 0; b < 4; b++)
				sink += *tf_at(oc_vma_addr(bv), 2 << 20, b, 1);
		CHECK(bv != NULL, "a RAM with recycled 2 MiB slots (%d)", r);
		if (_oc_os_under_valgrind()) {
			printf("# skipped: parks (valgrind refuses mremap's "
			       "MREMAP_DONTUNMAP, so none is made)\n");
		} else if (bram) {
			oc_ram_stats_t bst;
			oc_ram_stats(bram, &bst);
			CHECK(bst.table_moves > 0, "it moved page tables "
			      "through parks (%llu)",
			      (unsigned long long)bst.table_moves);
		}
		run_child(c_fork_maps, NULL, &c);
		CHECK(exited(&c, 0), "the child inherits no mapping of a RAM's "
		      "memory file (%s)", how(&c));
		if (!exited(&c, 0))
			show_err(&c);
		if (bv)
			oc_vma_unmap(bv);
		if (bfh)
			oc_fileh_close(bfh);
		oc_file_put(&btf.file);
		if (bram)
			CHECK_EQ(oc_ram_close(bram), 0, "close the 2 MiB RAM");
	}

	run_child(c_fork_calls, NULL, &c);
	CHECK(exited(&c, 0), "inherited handle: every call answers OC_EFORKED "
	      "(%s: bits of the calls that did not)", how(&c));
	if (!exited(&c, 0))
		show_err(&c);
	run_child(c_fork_fresh, NULL, &c);
	CHECK(exited(&c, 0), "child opens a new RAM and handle and uses them "
	      "(%s)", how(&c));
	if (!exited(&c, 0))
		show_err(&c);
	run_child(c_fork_fresh, (void *)1, &c);
	CHECK(exited(&c, 0), "child opens a handle on the default RAM (%s)",
	      how(&c));
	if (!exited(&c, 0))
		show_err(&c);

	/* the parent carries on */
	CHECK(*(volatile char *)pbase == 'P', "parent: data intact");
	*tf_at(pbase, PS, 1, 0) = 11;
	CHECK(oc_fileh_isdirty(pfh) == 1, "parent: writes still work");
	CHECK_EQ(oc_fileh_writeout(pfh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED), 0,
		 "parent: writeout");
	CHECK(ptf.stored[0] && ((char *)ptf.stored[0])[0] == 'P',
	      "parent: stored 'P'");
	CHECK_EQ(oc_vma_unmap(pvma), 0, "parent: unmap");
	CHECK_EQ(oc_fileh_close(pfh), 0, "parent: close");
	oc_file_put(&ptf.file);
	if (dv)
		oc_vma_unmap(dv);
	if (pdfh)
		oc_fileh_close(pdfh);
	oc_file_put(&pdtf.file);
	CHECK_EQ(oc_ram_close(pram), 0, "parent: close RAM");
}

/* ---- a small alternate signal stack ---------------------------------- */

/* A loadblk that needs 256 KiB of stack. */
static int deep_load_hook(tfile_t *tf, uint64_t blk, void *buf)
{
	volatile char big[256 << 10];
	(void)tf;
	for (size_t i = 0; i < sizeof big; i += 4096)
		big[i] = (char)i;
	((uint64_t *)buf)[1] += big[4096] == 0 ? 1 : 0; /* keeps big alive */
	((uint64_t *)buf)[1] -= big[4096] == 0 ? 1 : 0;
	(void)blk;
	return 0;
}

/* The program set a 16 KiB alternate stack with a guard page below it
 * (as Python's faulthandler, Go or Rust do): a fault in managed memory
 * must not run the loadblk on it. */
static void c_small_altstack(void *arg)
{
	size_t sz = 16 << 10, g = (size_t)sysconf(_SC_PAGESIZE);
	char *m = mmap(NULL, sz + g, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	stack_t ss;
	int ok = 1;
	(void)arg;
	if (m == MAP_FAILED || mprotect(m, g, PROT_NONE))
		_exit(80);
	memset(&ss, 0, sizeof ss);
	ss.ss_sp = m + g;
	ss.ss_size = sz;
	if (sigaltstack(&ss, NULL))
		_exit(81);
	child_open("taltstack");
	ctf.load_hook = deep_load_hook;
	for (uint64_t b = 0; b < 4; b++)
		ok &= *tf_at(cbase, PS, b, 5) == tf_word(b, 5);
	/* the alternate stack is still the program's */
	if (sigaltstack(NULL, &ss) || ss.ss_sp != m + g || ss.ss_size != sz ||
	    (ss.ss_flags & SS_DISABLE))
		_exit(82);
	_exit(ok ? 0 : 83);
}

static void test_altstack(void)
{
	struct child c;

	printf("# a small alternate signal stack\n");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	printf("# skipped under the sanitizers: outcore does not switch stacks "
	       "there (they do not follow a switch)\n");
	(void)c;
	return;
#endif
#ifdef RUNNING_ON_VALGRIND
	if (RUNNING_ON_VALGRIND) {
		printf("# skipped under valgrind: outcore does not switch stacks "
		       "there (it does not follow a switch)\n");
		return;
	}
#endif
	run_child(c_small_altstack, NULL, &c);
	CHECK(exited(&c, 0), "a loadblk needing 256 KiB of stack, a 16 KiB "
	      "alternate stack: served on outcore's stack (%s)", how(&c));
}

int main(void)
{
	test_outside();
	test_load_errors();
	test_altstack(); /* before test_fork: its children must not inherit
			  * (and, forgetting them, leak) the RAMs made there */
	test_fork();
	return check_done();
}
