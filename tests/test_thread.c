/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_thread: several threads faulting at once.  Two threads on one
 * unloaded page: loadblk runs once.  Two threads on two pages: the loads
 * overlap.  Invalidate from another thread during a load: the stale load
 * is thrown away and the access sees a fresh one.  A backend lock crossing
 * an invalidate from another thread (loadblk and storeblk cases): no
 * deadlock.  The lock hooks release a binding's global lock while a thread
 * waits for another thread's load.  And short stresses of readers and
 * writers under a small budget: 4 KiB pages, and 2 MiB pages, whose loads
 * into recycled slots take over the reclaimed pages' page tables.
 *
 * Every wait has a timeout, so a deadlock fails a check instead of hanging.
 */
/* TSAN */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <outcore/outcore.h>

#include "check.h"
#include "internal.h" /* _oc_os_under_valgrind */
#include "testfile.h"

#define PS ((size_t)4096)
#define NBLK 128

#define BLK_INVAL 20 /* invalidate during a load */
#define BLK_LOCKZ 30 /* loadblk takes backend lock Z */
#define BLK_GIL 40   /* loadblk takes the global lock G */

static tfile_t tf;
static oc_ram_t *ram;
static oc_fileh_t *fh;
static oc_vma_t *vma;
static char *base;

/* ---- timed waits on a flag ------------------------------------------ */

static pthread_mutex_t flag_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t flag_cv = PTHREAD_COND_INITIALIZER;
static int flags; /* bits, under flag_mu */

enum {
	F_INLOAD = 1,      /* loadblk of the scenario block was entered */
	F_INVALIDATED = 2, /* main called invalidate */
	F_INSTORE = 4,     /* storeblk entered */
	F_HASG = 8,        /* a thread holds G */
};

static void deadline(struct timespec *ts, double sec)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += (time_t)sec;
	ts->tv_nsec += (long)((sec - (time_t)sec) * 1e9);
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void flag_set(int f)
{
	pthread_mutex_lock(&flag_mu);
	flags |= f;
	pthread_cond_broadcast(&flag_cv);
	pthread_mutex_unlock(&flag_mu);
}

/* Wait until flag f is set; 0, or -ETIMEDOUT after sec seconds. */
static int flag_wait(int f, double sec)
{
	struct timespec ts;
	int r = 0;
	deadline(&ts, sec);
	pthread_mutex_lock(&flag_mu);
	while (!(flags & f) && r == 0)
		r = pthread_cond_timedwait(&flag_cv, &flag_mu, &ts);
	r = (flags & f) ? 0 : -ETIMEDOUT;
	pthread_mutex_unlock(&flag_mu);
	return r;
}

static void flags_clear(void)
{
	pthread_mutex_lock(&flag_mu);
	flags = 0;
	pthread_mutex_unlock(&flag_mu);
}

/* Join with a timeout; a thread that does not end is a deadlock: report
 * and stop the program (it cannot be recovered). */
static void *join(pthread_t t, const char *what)
{
	struct timespec ts;
	void *ret = NULL;
	deadline(&ts, 15);
	if (pthread_timedjoin_np(t, &ret, &ts) != 0) {
		CHECK(0, "%s: thread did not finish in 15 s (deadlock)", what);
		exit(check_done());
	}
	return ret;
}

/* ---- the global lock G of a pretend language binding ---------------- */

static pthread_mutex_t G = PTHREAD_MUTEX_INITIALIZER;
static __thread int holds_G;
static int hook_releases; /* atomic */

static void *hook_release(void)
{
	if (!holds_G)
		return NULL;
	holds_G = 0;
	TF_ADD(&hook_releases, 1);
	pthread_mutex_unlock(&G);
	return (void *)&G;
}

static void hook_reacquire(void *token)
{
	if (!token)
		return;
	pthread_mutex_lock(&G);
	holds_G = 1;
}

static const oc_lock_hooks_t hooks = {hook_release, hook_reacquire};

/* ---- the scenario load and store hooks ------------------------------ */

static pthread_mutex_t Z = PTHREAD_MUTEX_INITIALIZER;
static int inval_loads;  /* loads of BLK_INVAL (atomic) */
static int z_timeouts;   /* timed out waiting for Z or G (atomic) */
static int inval_timeout;
static int store_takes_z; /* storeblk takes Z */

static int timed_lock(pthread_mutex_t *m, double sec)
{
	struct timespec ts;
	deadline(&ts, sec);
	return pthread_mutex_timedlock(m, &ts);
}

static int load_hook(tfile_t *t, uint64_t blk, void *buf)
{
	(void)t;
	if (blk == BLK_INVAL) {
		int n = TF_ADD(&inval_loads, 1);
		if (n == 1) {
			((char *)buf)[0] = '1';
			flag_set(F_INLOAD);
			if (flag_wait(F_INVALIDATED, 5))
				TF_SET(&inval_timeout, 1);
		} else {
			((char *)buf)[0] = '2';
		}
	} else if (blk == BLK_LOCKZ || blk == BLK_GIL) {
		pthread_mutex_t *m = blk == BLK_LOCKZ ? &Z : &G;
		flag_set(F_INLOAD);
		if (timed_lock(m, 5)) {
			TF_ADD(&z_timeouts, 1);
		} else {
			pthread_mutex_unlock(m);
		}
	}
	return 0;
}

static int store_hook(tfile_t *t, uint64_t blk, const void *buf)
{
	(void)t, (void)blk, (void)buf;
	if (TF_GET(&store_takes_z)) {
		flag_set(F_INSTORE);
		if (timed_lock(&Z, 5))
			TF_ADD(&z_timeouts, 1);
		else
			pthread_mutex_unlock(&Z);
	}
	return 0;
}

/* ---- threads that touch memory -------------------------------------- */

struct toucher {
	uint64_t blk;
	int write;
	pthread_barrier_t *bar;
	uint64_t seen;     /* word 1 read */
	int want_first;    /* read byte 0 too (not while another thread
			    * writes word 0: that would be a data race) */
	char first;        /* byte 0 read */
	double t0, t1;     /* access start and end */
};

static void *touch(void *arg)
{
	struct toucher *t = arg;
	if (t->bar)
		pthread_barrier_wait(t->bar);
	t->t0 = tf_now();
	if (t->write)
		*tf_at(base, PS, t->blk, 0) = 0x77;
	if (t->want_first)
		t->first = *(volatile char *)(base + t->blk * PS);
	t->seen = *tf_at(base, PS, t->blk, 1);
	t->t1 = tf_now();
	return NULL;
}

static void two_touchers(struct toucher *a, struct toucher *b)
{
	pthread_barrier_t bar;
	pthread_t ta, tb;
	pthread_barrier_init(&bar, NULL, 2);
	a->bar = b->bar = &bar;
	pthread_create(&ta, NULL, touch, a);
	pthread_create(&tb, NULL, touch, b);
	join(ta, "toucher a");
	join(tb, "toucher b");
	pthread_barrier_destroy(&bar);
}

static void test_same_page(void)
{
	printf("# two threads, one page\n");
	TF_SET(&tf.load_delay_us, 50000);
	for (uint64_t blk = 0; blk < 3; blk++) {
		struct toucher a = {.blk = blk}, b = {.blk = blk};
		uint64_t l0 = TF_GET(&tf.nload_calls);
		b.write = blk == 2; /* last round: one reads, one writes */
		two_touchers(&a, &b);
		CHECK_EQ(TF_GET(&tf.nload_calls) - l0, 1,
			 blk == 2 ? "read and write of one unloaded page: one load"
				  : "two reads of one unloaded page: one load");
		CHECK(a.seen == tf_word(blk, 1) && b.seen == tf_word(blk, 1),
		      "both threads see the data");
	}
	CHECK(*tf_at(base, PS, 2, 0) == 0x77, "the write is there");
	CHECK(oc_fileh_isdirty(fh) == 1, "and dirty");
	oc_fileh_discard(fh);
	TF_SET(&tf.load_delay_us, 0);
}

static void test_two_pages(void)
{
	struct toucher a = {.blk = 10}, b = {.blk = 11};
	double t0 = tf_now(), dt;

	printf("# two threads, two pages\n");
	TF_SET(&tf.load_delay_us, 100000);
	TF_SET(&tf.max_loads, 0);
	two_touchers(&a, &b);
	dt = tf_now() - t0;
	TF_SET(&tf.load_delay_us, 0);
	CHECK(TF_GET(&tf.max_loads) >= 2,
	      "loads of two pages overlap (max %d at once)",
	      TF_GET(&tf.max_loads));
	printf("# both loads of 100 ms took %.3f s\n", dt);
	CHECK(a.seen == tf_word(10, 1) && b.seen == tf_word(11, 1),
	      "both see their data");
	CHECK(TF_GET(&tf.blk_loads[10]) == 1 && TF_GET(&tf.blk_loads[11]) == 1,
	      "one load each");
}

static void test_load_vs_invalidate(void)
{
	struct toucher t = {.blk = BLK_INVAL, .want_first = 1};
	pthread_t th;
	double t0, dt;
	int r;

	printf("# invalidate during a load\n");
	flags_clear();
	pthread_create(&th, NULL, touch, &t);
	CHECK_EQ(flag_wait(F_INLOAD, 10), 0, "loadblk #1 running");
	t0 = tf_now();
	r = oc_fileh_invalidate(fh, BLK_INVAL);
	dt = tf_now() - t0;
	CHECK_EQ(r, 0, "invalidate during the load returns 0");
	CHECK(dt < 2, "without waiting for the load (%.3f s)", dt);
	flag_set(F_INVALIDATED);
	join(th, "faulting thread");
	CHECK_EQ(TF_GET(&inval_timeout), 0, "loadblk #1 was not left waiting");
	CHECK_EQ(TF_GET(&inval_loads), 2, "block loaded twice");
	CHECK(t.first == '2', "the faulting thread sees the fresh load ('%c')",
	      t.first ? t.first : '?');
	CHECK(*(volatile char *)(base + BLK_INVAL * PS) == '2',
	      "and so does everyone after");
	CHECK_EQ(TF_GET(&inval_loads), 2, "no third load");
}

struct writeout_arg {
	int ret;
};

static void *do_writeout(void *arg)
{
	struct writeout_arg *w = arg;
	w->ret = oc_fileh_writeout(fh, OC_WRITEOUT_STORE |
				   OC_WRITEOUT_MARKSTORED);
	return NULL;
}

static void test_lock_vs_invalidate(void)
{
	struct toucher t = {.blk = BLK_LOCKZ};
	struct writeout_arg w = {-1};
	oc_ram_stats_t st;
	pthread_t th;
	double t0, dt;
	int r;

	printf("# backend lock vs invalidate\n");
	/* loadblk: T faults, loadblk waits for Z, held by main, which
	 * invalidates that very block and another one. */
	flags_clear();
	pthread_mutex_lock(&Z);
	pthread_create(&th, NULL, touch, &t);
	CHECK_EQ(flag_wait(F_INLOAD, 10), 0, "loadblk entered, waits for Z");
	t0 = tf_now();
	r = oc_fileh_invalidate(fh, BLK_LOCKZ);
	CHECK_EQ(r, 0, "invalidate of the loading block with Z held");
	r = oc_fileh_invalidate(fh, 1);
	CHECK_EQ(r, 0, "invalidate of another block with Z held");
	CHECK_EQ(oc_ram_stats(ram, &st), 0, "stats with Z held");
	dt = tf_now() - t0;
	CHECK(dt < 2, "no wait on the loader (%.3f s)", dt);
	pthread_mutex_unlock(&Z);
	join(th, "faulting thread");
	CHECK_EQ(TF_GET(&z_timeouts), 0, "loadblk got Z without timing out");
	CHECK(t.seen == tf_word(BLK_LOCKZ, 1), "the faulting thread has data");
	CHECK_EQ(TF_GET(&tf.blk_loads[BLK_LOCKZ]), 2,
		 "reloaded after the invalidate");

	/* storeblk: T writes out, storeblk waits for Z held by main, which
	 * invalidates a block of the handle under writeout. */
	*tf_at(base, PS, 50, 0) = 5;
	*tf_at(base, PS, 51, 0) = 5;
	flags_clear();
	TF_SET(&store_takes_z, 1);
	pthread_mutex_lock(&Z);
	pthread_create(&th, NULL, do_writeout, &w);
	CHECK_EQ(flag_wait(F_INSTORE, 10), 0, "storeblk entered, waits for Z");
	t0 = tf_now();
	r = oc_fileh_invalidate(fh, 60);
	CHECK(r == 0 || r == -EBUSY,
	      "invalidate during writeout with Z held: 0 or -EBUSY (%d)", r);
	r = oc_fileh_discard(fh);
	CHECK(r == -EBUSY, "discard during writeout: -EBUSY (%d)", r);
	r = oc_fileh_close(fh);
	CHECK(r == -EBUSY, "close during writeout: -EBUSY (%d)", r);
	r = oc_fileh_writeout(fh, OC_WRITEOUT_STORE);
	CHECK(r == -EBUSY, "a second writeout at once: -EBUSY (%d)", r);
	dt = tf_now() - t0;
	CHECK(dt < 2, "no wait on the writeout (%.3f s)", dt);
	pthread_mutex_unlock(&Z);
	join(th, "writeout thread");
	TF_SET(&store_takes_z, 0);
	CHECK_EQ(w.ret, 0, "writeout succeeded");
	CHECK_EQ(TF_GET(&z_timeouts), 0, "storeblk got Z without timing out");
	CHECK_EQ(oc_fileh_isdirty(fh), 0, "handle clean");
	CHECK(*tf_at(base, PS, 50, 0) == 5, "data kept");
}

/* Holds G, waits until the loader is inside loadblk (which then waits for
 * G), then touches the page being loaded: the core must release G through
 * the hook while it waits for that load. */
static void *gil_waiter(void *arg)
{
	struct toucher *t = arg;
	pthread_mutex_lock(&G);
	holds_G = 1;
	flag_set(F_HASG);
	if (flag_wait(F_INLOAD, 10) == 0) {
		t->first = *(volatile char *)(base + t->blk * PS);
		t->seen = *tf_at(base, PS, t->blk, 1);
	}
	holds_G = 0;
	pthread_mutex_unlock(&G);
	return NULL;
}

static void test_lock_hooks(void)
{
	struct toucher loader = {.blk = BLK_GIL}, waiter = {.blk = BLK_GIL};
	pthread_t tl, tw;

	printf("# lock hooks release the global lock while waiting\n");
	flags_clear();
	TF_SET(&hook_releases, 0);
	pthread_create(&tw, NULL, gil_waiter, &waiter);
	CHECK_EQ(flag_wait(F_HASG, 10), 0, "waiter holds G");
	pthread_create(&tl, NULL, touch, &loader);
	join(tw, "waiter");
	join(tl, "loader");
	CHECK_EQ(TF_GET(&z_timeouts), 0,
		 "loadblk got the global lock: the waiter released it");
	CHECK(TF_GET(&hook_releases) >= 1, "release hook called (%d)",
	      TF_GET(&hook_releases));
	CHECK(waiter.seen == tf_word(BLK_GIL, 1) &&
	      loader.seen == tf_word(BLK_GIL, 1), "both see the data");
	CHECK_EQ(TF_GET(&tf.blk_loads[BLK_GIL]), 1, "one load");
}

/* ---- stress: readers and writers under a small budget --------------- */

/* ThreadSanitizer models mmap() as a write to the whole range.  When one
 * thread reclaims a page (mmap of a reservation over it) and another later
 * reads the page after a third thread mapped it again, the reader never
 * took a lock after the reclaim: the kernel's page tables order the
 * accesses, which TSan cannot see.  Those reports (one side inside the
 * core's mmap wrappers) are false positives of userspace paging; every
 * other race is still reported. */
#if defined(__SANITIZE_THREAD__)
const char *__tsan_default_suppressions(void);
__attribute__((visibility("default"))) const char *
__tsan_default_suppressions(void)
{
	return "race:_oc_os_unmap_to_reserve\n"
	       "race:_oc_os_map_fixed\n"
	       "race:_oc_os_move\n";
}
#endif

#define STRESS_THREADS 4

struct stresser {
	int id;
	unsigned iters;
	char *base;      /* the mapping, of blocks of ps bytes */
	size_t ps;
	uint64_t nread;  /* blocks 0..nread-1 are read */
	uint64_t own;    /* the thread writes block own */
	uint64_t bad;
	uint64_t last; /* last value written to the thread's own block */
};

static void *stress(void *arg)
{
	struct stresser *s = arg;
	unsigned seed = 12345u + (unsigned)s->id;
	size_t ps = s->ps;
	for (unsigned i = 0; i < s->iters; i++) {
		uint64_t blk = (uint64_t)rand_r(&seed) % s->nread;
		size_t w = 1 + (size_t)rand_r(&seed) % (ps / 8 - 1);
		if (*tf_at(s->base, ps, blk, w) != tf_word(blk, w) ||
		    *tf_at(s->base, ps, blk, ps / 8 - 1) !=
			    tf_word(blk, ps / 8 - 1))
			s->bad++;
		if (i % 8 == 0) {
			s->last = ((uint64_t)s->id << 32) | i;
			*tf_at(s->base, ps, s->own, 0) = s->last;
			if (*tf_at(s->base, ps, s->own, 0) != s->last ||
			    *tf_at(s->base, ps, s->own, 1) != tf_word(s->own, 1))
				s->bad++;
		}
	}
	return NULL;
}

/* Run the stress threads over blocks [0, nread) of base and their own
 * blocks own0.. (each writes its own); returns the bad reads. */
static uint64_t run_stress(struct stresser *s, char *b, size_t ps,
			   uint64_t nread, uint64_t own0, unsigned iters)
{
	pthread_t th[STRESS_THREADS];
	uint64_t bad = 0;

	for (int i = 0; i < STRESS_THREADS; i++) {
		s[i] = (struct stresser){.id = i, .iters = iters, .base = b,
					 .ps = ps, .nread = nread,
					 .own = own0 + (uint64_t)i};
		pthread_create(&th[i], NULL, stress, &s[i]);
	}
	for (int i = 0; i < STRESS_THREADS; i++) {
		join(th[i], "stress thread");
		bad += s[i].bad;
	}
	return bad;
}

/* After run_stress: no bad read, reclaim ran, and after a writeout each
 * thread's last write to its block (own0 + id) is what was stored. */
static void check_stress(const struct stresser *s, uint64_t bad, oc_ram_t *r,
			 oc_fileh_t *h, tfile_t *t, uint64_t own0)
{
	oc_ram_stats_t st;
	int ok = 1;

	CHECK_EQ(bad, 0, "every read saw the right data");
	oc_ram_stats(r, &st);
	printf("# loads %llu, reclaims %llu, faults %llu, table moves %llu\n",
	       (unsigned long long)st.loads, (unsigned long long)st.reclaims,
	       (unsigned long long)st.faults,
	       (unsigned long long)st.table_moves);
	CHECK(st.reclaims > 0, "reclaim ran under the budget");
	CHECK_EQ(oc_fileh_writeout(h, OC_WRITEOUT_STORE |
				  OC_WRITEOUT_MARKSTORED), 0, "writeout");
	for (int i = 0; i < STRESS_THREADS; i++) {
		uint64_t *stored = t->stored[own0 + (uint64_t)i];
		ok &= stored && stored[0] == s[i].last;
	}
	CHECK(ok, "each thread's last write was stored");
}

static void test_stress(void)
{
	struct stresser s[STRESS_THREADS];
	uint64_t bad;
	unsigned iters = (unsigned)(4000 / check_scale());

	printf("# stress: %d threads, %u accesses each, budget 8 pages\n",
	       STRESS_THREADS, iters);
	oc_fileh_discard(fh);
	oc_ram_reclaim(ram, 1000);
	CHECK_EQ(oc_ram_set_budget(ram, 8 * PS), 0, "budget 8 pages");
	bad = run_stress(s, base, PS, 64, 100, iters);
	check_stress(s, bad, ram, fh, &tf, 100);
}

/* The same with 2 MiB pages and a budget of 8 (4 kept dirty): most loads
 * reuse a slot and take over page tables (moved away from the reclaimed
 * block's address, then to the new block's, while other threads fault on
 * both). */
static void test_stress_big(void)
{
	const size_t ps = (size_t)2 << 20;
	struct stresser s[STRESS_THREADS];
	tfile_t tf2;
	oc_ram_t *ram2;
	oc_fileh_t *fh2 = NULL;
	oc_vma_t *v2 = NULL;
	uint64_t bad;
	unsigned iters = (unsigned)(400 / check_scale());
	int r;

	printf("# stress: %d threads, %u accesses each, 2 MiB pages, budget "
	       "8 pages (4 dirty)\n", STRESS_THREADS, iters);
	ram2 = tf_ram(ps, 8 * ps, &r);
	CHECK(ram2 != NULL, "RAM of 2 MiB pages: %d", r);
	if (!ram2)
		return;
	tfile_init(&tf2, ps, "tthread2");
	r = oc_fileh_open(&fh2, &tf2.file, ram2);
	r = r ? r : oc_fileh_mmap(fh2, 0, 16, &v2);
	CHECK_EQ(r, 0, "open and map 16 blocks");
	if (r)
		goto out;
	bad = run_stress(s, oc_vma_addr(v2), ps, 12, 12, iters);
	check_stress(s, bad, ram2, fh2, &tf2, 12);
	if (_oc_os_under_valgrind()) {
		printf("# skipped: table moves (valgrind refuses mremap's "
		       "MREMAP_DONTUNMAP; the loads above mapped again)\n");
	} else {
		oc_ram_stats_t st;
		oc_ram_stats(ram2, &st);
		CHECK(st.table_moves > 0, "loads took over page tables (%llu)",
		      (unsigned long long)st.table_moves);
	}
out:
	if (v2)
		oc_vma_unmap(v2);
	if (fh2)
		CHECK_EQ(oc_fileh_close(fh2), 0, "close");
	oc_file_put(&tf2.file);
	CHECK_EQ(oc_ram_close(ram2), 0, "close RAM");
}

int main(void)
{
	int r;

	alarm(120); /* the last resort against a hang */
	CHECK_EQ(oc_set_lock_hooks(&hooks), 0, "set lock hooks");
	ram = tf_ram(PS, 256 * PS, &r);
	CHECK(ram != NULL, "RAM: %d", r);
	if (!ram)
		return check_done();
	tfile_init(&tf, PS, "tthread");
	tf.load_hook = load_hook;
	tf.store_hook = store_hook;
	r = oc_fileh_open(&fh, &tf.file, ram);
	CHECK_EQ(r, 0, "open");
	r = r ? r : oc_fileh_mmap(fh, 0, NBLK, &vma);
	CHECK_EQ(r, 0, "mmap");
	if (r)
		return check_done();
	base = oc_vma_addr(vma);
	CHECK_EQ(oc_set_lock_hooks(&hooks), -EBUSY,
		 "lock hooks cannot change once a handle is open");

	test_same_page();
	test_two_pages();
	test_load_vs_invalidate();
	test_lock_vs_invalidate();
	test_lock_hooks();
	test_stress();
	test_stress_big();

	CHECK_EQ(oc_vma_unmap(vma), 0, "unmap");
	CHECK_EQ(oc_fileh_close(fh), 0, "close");
	oc_file_put(&tf.file);
	CHECK_EQ(oc_ram_close(ram), 0, "close RAM");
	return check_done();
}
