/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * pagefault.c: the SIGSEGV handler.
 *
 * It serves faults in managed memory and passes every other fault on:
 * to the handler that was installed before ours, or, when there was none,
 * it restores the default action and returns, so the faulting instruction
 * runs again and the kernel kills the process with a core dump at that
 * instruction, as if outcore were not there.
 *
 * Read or write.  On x86-64 the page-fault error code in the signal
 * context says whether the access was a write, which saves a second fault
 * for a first write to an unloaded page.  Elsewhere, and under valgrind
 * (which does not reproduce the error code), the portable rule applies: a
 * fault on a page we mapped read-only is a write; a fault on an unmapped
 * page is served as a read, and if it was a write the retried instruction
 * faults again on the read-only page.
 *
 * The handler runs with SA_NODEFER so that a fault inside a loadblk (which
 * runs in the handler) reaches us too: on memory of the same handle it can
 * never complete, and we stop with a message instead of hanging; on
 * memory of another handle it is served normally.
 *
 * Stacks.  The handler runs with SA_ONSTACK, so that faults of programs
 * that set an alternate signal stack (to report their own stack overflows:
 * Python's faulthandler, Go, Rust) are still passed on there.  Such a stack
 * is small (a few KiB), far too small for a loadblk (a Python loadblk, a
 * database client): a fault taken on it is served on a stack of our own
 * instead, FAULT_STACK bytes per thread (mapped on the first such fault,
 * kept while the process lives), with the alternate stack disabled
 * meanwhile so that a fault inside the loadblk nests on our stack.  Not
 * under ASan, TSan or valgrind, which do not follow the switch.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define FAULT_STACK ((size_t)1 << 20)

static struct sigaction prev;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static int installed;
static struct sigaction ours; /* our handler as installed */
static bool trust_error_code;
oc_fatal_hook_t _oc_fatal_hook;

void oc_set_fatal_hook(oc_fatal_hook_t hook)
{
	__atomic_store_n(&_oc_fatal_hook, hook, __ATOMIC_SEQ_CST);
}

void _oc_die(int sig)
{
	struct sigaction sa;
	sigset_t set;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigaction(sig, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	raise(sig);
	_exit(128 + sig);
}

/* Set while this thread runs the handler we chain to: one that restores
 * its own predecessor (us, when it was installed after us) and raises the
 * signal again, as Python's faulthandler does, reaches us again here, and
 * gets the default action instead of a loop.  (Reset by a served fault:
 * a handler may leave by siglongjmp.) */
static __thread int chaining;
/* The fault last passed on.  When the same one keeps coming back at once
 * (64 times, each within a millisecond), the handler returns without
 * curing it (faulthandler once disabled does that), and passing it on
 * again would loop for ever: the default action instead.  A handler that
 * cures a fault lets the instruction go on; one that takes the same fault
 * again later (a runtime's safepoint, say) is not at once. */
#define PASS_LOOP 64
static __thread struct {
	void *addr;
	uintptr_t ip;
	uint64_t ns;
	unsigned n;
} passed;

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t); /* async-signal-safe */
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uintptr_t fault_ip(void *ucv)
{
#if defined(__x86_64__) && defined(REG_RIP)
	return (uintptr_t)((ucontext_t *)ucv)->uc_mcontext.gregs[REG_RIP];
#else
	(void)ucv;
	return 0;
#endif
}

static void chain(int sig, siginfo_t *si, void *uc)
{
	struct sigaction sa;
	bool looping = false;

	if (si->si_code > 0) {
		uint64_t t = now_ns();
		if (passed.addr == si->si_addr && passed.ip == fault_ip(uc) &&
		    t - passed.ns < 1000000) {
			looping = ++passed.n >= PASS_LOOP;
		} else {
			passed.addr = si->si_addr;
			passed.ip = fault_ip(uc);
			passed.n = 0;
		}
		passed.ns = t;
	}
	/* sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN
	 * are never functions, whatever the flags say. */
	if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN &&
	    !chaining && !looping) {
		chaining = 1;
		if (prev.sa_flags & SA_SIGINFO)
			prev.sa_sigaction(sig, si, uc);
		else
			prev.sa_handler(sig);
		chaining = 0;
		return;
	}
	/* No handler before us: the default action, at the faulting
	 * instruction (it runs again when we return). */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGSEGV, &sa, NULL);
	if (si->si_code <= 0)
		raise(sig); /* sent by kill(): nothing will fault again */
}

static int access_kind(void *ucv)
{
#if defined(__x86_64__) && defined(REG_ERR)
	if (trust_error_code) {
		ucontext_t *uc = ucv;
		return (uc->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
	}
#endif
	(void)ucv;
	return 2;
}

static void on_segv_body(int sig, siginfo_t *si, void *uc)
{
	int saved = errno, r, attempt = 0;
	uintptr_t addr = (uintptr_t)si->si_addr;
	struct oc_fault_info fi = {0, 0, NULL};
	int write;

	if (si->si_code <= 0)
		goto pass; /* kill(), sigqueue(), ...: not a fault */
	write = access_kind(uc);
	fi.ip = fault_ip(uc);
	for (;;) {
		r = _oc_serve(addr, write, &fi);
		if (r == 0) {
			chaining = 0;
			errno = saved;
			return;
		}
		if (r == 1) {
			if (_oc_addr_inherited(addr))
				_oc_msg("outcore: this process, a fork() child, touched "
					"address %p, which outcore manages in the parent "
					"process; a child sees none of its parent's managed "
					"memory: open the file or store anew in the child",
					(void *)addr);
			goto pass;
		}
		if (r == -EDEADLK) {
			_oc_msg("outcore: a loadblk/storeblk of file '%s' touched "
				"block %lu of the very handle it serves, which is not "
				"loaded and can never be while that op runs; stopping",
				fi.file, (unsigned long)fi.blk);
			_oc_die(SIGABRT);
		}
		if (++attempt > OC_LOAD_RETRIES)
			break;
		{
			struct timespec ts = {0, 10 * 1000 * 1000 * attempt};
			nanosleep(&ts, NULL);
		}
	}
	_oc_msg("outcore: loading block %lu of file '%s' for a page fault at %p "
		"failed %d times: %s (error %d)%s%s; a fault cannot return an "
		"error, so the process stops with SIGBUS, as the kernel does when "
		"a read through a file mapping fails (use oc_prefault() to get "
		"errors as return codes)",
		(unsigned long)fi.blk, fi.file ? fi.file : "?", (void *)addr,
		attempt, oc_strerror(r), r, oc_error_detail()[0] ? ": " : "",
		oc_error_detail());
	{
		oc_fatal_hook_t hook = __atomic_load_n(&_oc_fatal_hook, __ATOMIC_SEQ_CST);
		if (hook)
			hook("outcore: a load failed inside a page fault");
	}
	_oc_die(SIGBUS);
pass:
	errno = saved;
	chain(sig, si, uc);
}

/* Serving on our own stack (see "Stacks"). */
static __thread char *fault_stack;
static __thread ucontext_t serve_ret;
static __thread struct {
	int sig;
	siginfo_t *si;
	void *uc;
	stack_t alt;
} call;

static void body_on_our_stack(void)
{
	stack_t off;

	memset(&off, 0, sizeof off);
	off.ss_flags = SS_DISABLE;
	sigaltstack(&off, NULL);
	on_segv_body(call.sig, call.si, call.uc);
	call.alt.ss_flags = 0;
	sigaltstack(&call.alt, NULL);
	/* returns to serve_ret (uc_link) */
}

/* (unused under the sanitizers, see oc_pagefault_install) */
__attribute__((unused)) static void on_segv(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	ucontext_t run;
	/* The alternate stack as the kernel saved it for this signal: no
	 * system call on the fault path to learn whether we run on it. */
	stack_t ss = ((ucontext_t *)uc)->uc_stack;
	char *here_sp = (char *)&run;

	if (si->si_code <= 0 || (ss.ss_flags & SS_DISABLE) || !ss.ss_size ||
	    here_sp < (char *)ss.ss_sp || here_sp >= (char *)ss.ss_sp + ss.ss_size)
		goto here; /* on the thread's own stack */
	if (!fault_stack) {
		void *p = mmap(NULL, FAULT_STACK, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
		if (p == MAP_FAILED)
			goto here; /* as good as we can */
		fault_stack = p;
	}
	if (getcontext(&run))
		goto here;
	run.uc_stack.ss_sp = fault_stack;
	run.uc_stack.ss_size = FAULT_STACK;
	run.uc_link = &serve_ret;
	makecontext(&run, body_on_our_stack, 0);
	call.sig = sig;
	call.si = si;
	call.uc = uc;
	call.alt = ss;
	errno = saved;
	if (swapcontext(&serve_ret, &run) == 0)
		return;
here:
	errno = saved;
	on_segv_body(sig, si, uc);
}

int oc_pagefault_install(void)
{
	struct sigaction sa, cur;
	int err = 0;

	pthread_mutex_lock(&install_lock);
	if (installed) {
		/* Still ours?  A handler installed after ours (Python's
		 * faulthandler.enable(), say) would take every fault of
		 * managed memory for a crash: ours goes on top again, and
		 * chains to it. */
		if (sigaction(SIGSEGV, NULL, &cur) || !(cur.sa_flags & SA_SIGINFO) ||
		    cur.sa_sigaction != ours.sa_sigaction) {
			if (sigaction(SIGSEGV, &ours, &cur) == 0)
				prev = cur;
			else
				err = -errno;
		}
		goto out;
	}
	trust_error_code = !_oc_os_under_valgrind();
	memset(&sa, 0, sizeof sa);
	/* The sanitizers and valgrind do not follow a stack switch: there,
	 * faults are served on the stack the kernel gave. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	sa.sa_sigaction = on_segv_body;
#else
	sa.sa_sigaction = _oc_os_under_valgrind() ? on_segv_body : on_segv;
#endif
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, &prev)) {
		err = -errno;
		goto out;
	}
	ours = sa;
	installed = 1;
out:
	pthread_mutex_unlock(&install_lock);
	return err;
}
