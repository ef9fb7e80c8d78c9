/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * bench_core.c: the core benchmark.  A benchmark, not a test: it prints
 * figures and a TARGET MET/MISSED line per target, and exits 0 unless it
 * could not run at all.
 *
 * Measured side by side in one run, single thread, contenders alternated
 * run by run, medians of OC_BENCH_RUNS (default 5; (b) runs twice as many, it is short) runs after one warm-up
 * run that is not counted:
 *
 *   (a) read faults through the in-RAM copying file (oc_memfile_new), 2 MiB
 *       pages, touching one byte per 4 KiB of each block in a fresh mapping,
 *       with a budget >= the data and with a budget that recycles, against
 *       the bare kernel work (copy the block into a RAM page, one
 *       mmap(MAP_FIXED|MAP_SHARED|MAP_POPULATE, PROT_READ) of it, the same
 *       touch) in several variants;
 *   (b) sequential scan (sum of every uint64) of a page-cached plain file
 *       through oc_plainfile_open's mapped base layer against the kernel's
 *       plain mmap of the same file;
 *   (c) (a) with 64 KiB and 4 KiB pages;
 *   (d) the first write to each block (copy-on-write of a base-layer block,
 *       dirtying a loaded memfile page) against the bare kernel work;
 *   (h) (a) on hugetlb pages when HugePages_Free >= 600.
 *
 * The REF of (a) is the bare work the target is defined against: memcpy
 * of the block into a *resident* slot of a memfd mapped read-write in a
 * window, one mmap(MAP_FIXED|MAP_SHARED|MAP_POPULATE, PROT_READ) of that
 * slot at the target address, the touch.  The "ref" rows split out what
 * outcore may add on top of it: a SIGSEGV round trip, evicting the old
 * mapping of a recycled slot, filling by pwrite (directly or from a bounce
 * buffer), and fresh (just hole-punched) slots, which on these VMs cost a
 * new allocation from the host: with a budget >= the data every load goes
 * to a fresh page, so that row (the same bounce + pwrite outcore does, on
 * fresh pages; through the window on hugetlb) is the bare work the
 * budget >= data target compares with, and REF the one of the recycling
 * budget (where loads go to resident pages).
 * Outcore contenders drop their pages just before each timed run (as the
 * fresh references punch theirs), so every block is loaded once per run.
 *
 * Counts per block: getrusage minor+major faults (mandatory; note that it
 * also counts the faults the kernel takes *inside* MAP_POPULATE or
 * MADV_POPULATE_*, 32 per 2 MiB of 4 KiB shmem pages, which are no trap);
 * hardware faults (traps, the SIGSEGVs included) and system calls from
 * perf counters opened in-process (PERF_COUNT_SW_PAGE_FAULTS and the
 * raw_syscalls:sys_enter tracepoint) when the kernel allows them, else n/a.
 *
 * Environment: OC_BENCH_MB (data size of (a) in MiB, default 1024),
 * OC_BENCH_RUNS (default 5; (b) runs twice as many, it is short), OC_BENCH_DIR (where (b)'s file goes, default
 * /tmp), OC_BENCH_SECTIONS (subset of "abcdh", default all).
 */
#include <outcore/outcore.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define TOUCH 4096 /* one byte per 4 KiB is touched */
#define MAXRUNS 15

static size_t g_data = 1024 * MiB;
static int g_runs = 5;
static const char *g_dir = "/tmp";
static const char *g_sections = "abcdh";

/* ---- timing and counters --------------------------------------------- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long rusage_faults(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt + ru.ru_majflt;
}

static int pf_fd = -1; /* PERF_COUNT_SW_PAGE_FAULTS: every user fault trap */
static int sc_fd = -1; /* raw_syscalls:sys_enter */
static long long pf_base, sc_base; /* what begin/end themselves count */

static int perf_open(uint32_t type, uint64_t config)
{
	struct perf_event_attr a;

	memset(&a, 0, sizeof a);
	a.size = sizeof a;
	a.type = type;
	a.config = config;
	a.disabled = 1;
	a.exclude_hv = 1;
	return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

static long long perf_read(int fd)
{
	long long v = 0;
	if (fd < 0 || read(fd, &v, sizeof v) != (ssize_t)sizeof v)
		return -1;
	return v;
}

/* One measured span: wall time, rusage faults, traps, syscalls; t_mid is
 * an optional split point set by the caller (now_s(), no syscall). */
struct meas {
	double t0, t_mid, t1;
	long f0, f1;
	long long hw, sc;
	/* outcore counters over the span (filled by outcore contenders) */
	double loads, ofaults, cows, wfaults, moves;
	bool bad; /* wrong data read */
};

static void meas_begin(struct meas *m)
{
	memset(m, 0, sizeof *m);
	m->loads = m->ofaults = m->cows = m->wfaults = m->moves = -1;
	if (pf_fd >= 0) {
		ioctl(pf_fd, PERF_EVENT_IOC_RESET, 0);
		ioctl(pf_fd, PERF_EVENT_IOC_ENABLE, 0);
	}
	if (sc_fd >= 0) {
		ioctl(sc_fd, PERF_EVENT_IOC_RESET, 0);
		ioctl(sc_fd, PERF_EVENT_IOC_ENABLE, 0);
	}
	m->f0 = rusage_faults();
	m->t0 = now_s();
	m->t_mid = 0;
}

static void meas_end(struct meas *m)
{
	m->t1 = now_s();
	m->f1 = rusage_faults();
	if (sc_fd >= 0)
		ioctl(sc_fd, PERF_EVENT_IOC_DISABLE, 0);
	if (pf_fd >= 0)
		ioctl(pf_fd, PERF_EVENT_IOC_DISABLE, 0);
	m->sc = sc_fd >= 0 ? perf_read(sc_fd) - sc_base : -1;
	m->hw = pf_fd >= 0 ? perf_read(pf_fd) - pf_base : -1;
}

static void counters_open(void)
{
	const char *ids[] = {"/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
			     "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id"};
	struct meas m;

	pf_fd = perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS);
	for (unsigned i = 0; i < 2 && sc_fd < 0; i++) {
		FILE *f = fopen(ids[i], "r");
		unsigned long long id;
		if (!f)
			continue;
		if (fscanf(f, "%llu", &id) == 1)
			sc_fd = perf_open(PERF_TYPE_TRACEPOINT, id);
		fclose(f);
	}
	/* Calibrate: what an empty span counts (getrusage, the ioctls). */
	meas_begin(&m);
	meas_end(&m);
	pf_base = m.hw > 0 ? m.hw : 0;
	sc_base = m.sc > 0 ? m.sc : 0;
}

/* ---- results ----------------------------------------------------------- */

struct res {
	char name[80];
	double per;  /* blocks per run, to normalise */
	double bytes; /* bytes per run, for GB/s */
	int n;
	double us[MAXRUNS], us1[MAXRUNS], flt[MAXRUNS], hw[MAXRUNS], sc[MAXRUNS];
	double loads[MAXRUNS], ofaults[MAXRUNS], cows[MAXRUNS], moves[MAXRUNS];
	bool failed, bad, split;
};

static double median(const double *v, int n)
{
	double s[MAXRUNS];
	if (n <= 0)
		return -1;
	memcpy(s, v, n * sizeof *v);
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && s[j - 1] > s[j]; j--) {
			double t = s[j];
			s[j] = s[j - 1];
			s[j - 1] = t;
		}
	return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void res_init(struct res *r, const char *name, double per, double bytes)
{
	memset(r, 0, sizeof *r);
	snprintf(r->name, sizeof r->name, "%s", name);
	r->per = per;
	r->bytes = bytes;
}

static void res_add(struct res *r, const struct meas *m)
{
	int i = r->n;
	if (i >= MAXRUNS)
		return;
	r->us[i] = (m->t1 - m->t0) * 1e6 / r->per;
	r->us1[i] = m->t_mid > 0 ? (m->t_mid - m->t0) * 1e6 / r->per : 0;
	r->flt[i] = (double)(m->f1 - m->f0) / r->per;
	r->hw[i] = m->hw >= 0 ? (double)m->hw / r->per : -1;
	r->sc[i] = m->sc >= 0 ? (double)m->sc / r->per : -1;
	r->loads[i] = m->loads >= 0 ? m->loads / r->per : -1;
	r->ofaults[i] = m->ofaults >= 0 ? m->ofaults / r->per : -1;
	r->cows[i] = m->cows >= 0 ? m->cows / r->per : -1;
	r->moves[i] = m->moves >= 0 ? m->moves / r->per : -1;
	if (m->bad)
		r->bad = true;
	r->n++;
}

static double fabs_d(double x) { return x < 0 ? -x : x; }

static double res_us(const struct res *r) { return r->failed || !r->n ? -1 : median(r->us, r->n); }

static void fmt_num(char *buf, size_t n, double v, const char *f)
{
	if (v < 0)
		snprintf(buf, n, "n/a");
	else
		snprintf(buf, n, f, v);
}

static void print_head(bool split)
{
	if (split)
		printf("  %-46s %10s %10s %10s %7s %8s %8s %8s\n", "contender", "1st-wr us", "rest us",
		       "total us", "GB/s", "flt/blk", "traps", "sysc");
	else
		printf("  %-46s %10s %7s %8s %8s %8s  %s\n", "contender", "us/block", "GB/s",
		       "flt/blk", "traps", "sysc", "notes");
}

static void print_res(const struct res *r)
{
	char hw[16], sc[16], note[160] = "";
	double us = res_us(r);

	if (r->failed || !r->n) {
		printf("  %-46s  (failed: see above)\n", r->name);
		return;
	}
	fmt_num(hw, sizeof hw, median(r->hw, r->n), "%.2f");
	fmt_num(sc, sizeof sc, median(r->sc, r->n), "%.2f");
	if (r->loads[0] >= 0) {
		size_t k = strlen(note);
		snprintf(note + k, sizeof note - k, "oc loads/blk %.2f faults/blk %.2f",
			 median(r->loads, r->n), median(r->ofaults, r->n));
	}
	if (r->moves[0] > 0) {
		size_t k = strlen(note);
		snprintf(note + k, sizeof note - k, "%stable moves/blk %.2f",
			 k ? " " : "", median(r->moves, r->n));
	}
	if (r->cows[0] >= 0) {
		size_t k = strlen(note);
		snprintf(note + k, sizeof note - k, "%scow/blk %.2f", k ? " " : "",
			 median(r->cows, r->n));
	}
	if (r->bad) {
		size_t k = strlen(note);
		snprintf(note + k, sizeof note - k, "%sWRONG DATA READ", k ? " " : "");
	}
	if (r->split) {
		double u1 = median(r->us1, r->n);
		printf("  %-46s %10.1f %10.1f %10.1f %7.2f %8.2f %8s %8s  %s\n", r->name, u1, us - u1, us,
		       r->bytes / r->per / (us * 1e3), median(r->flt, r->n), hw, sc, note);
	} else {
		printf("  %-46s %10.1f %7.2f %8.2f %8s %8s  %s\n", r->name, us,
		       r->bytes / r->per / (us * 1e3), median(r->flt, r->n), hw, sc, note);
	}
}

static void print_runs(const struct res *r)
{
	printf("    %-44s runs(us/blk):", r->name);
	for (int i = 0; i < r->n; i++)
		printf(" %.1f", r->us[i]);
	printf("\n");
}

/* Summary of the targets, printed again at the end. */
static char g_summary[8192];
static void target(bool met, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void target(bool met, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int k;

	k = snprintf(line, sizeof line, "TARGET %s: ", met ? "MET" : "MISSED");
	va_start(ap, fmt);
	vsnprintf(line + k, sizeof line - k, fmt, ap);
	va_end(ap);
	printf("%s\n", line);
	k = (int)strlen(g_summary);
	snprintf(g_summary + k, sizeof g_summary - k, "%s\n", line);
}
static void target_na(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void target_na(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int k;

	k = snprintf(line, sizeof line, "TARGET NOT MEASURED: ");
	va_start(ap, fmt);
	vsnprintf(line + k, sizeof line - k, fmt, ap);
	va_end(ap);
	printf("%s\n", line);
	k = (int)strlen(g_summary);
	snprintf(g_summary + k, sizeof g_summary - k, "%s\n", line);
}

/* ---- memory helpers ----------------------------------------------------- */

/* Non-zero data (zero pages are special-cased on these VMs): word k of
 * the data set holds k + 1. */
static void fill_words(void *buf, size_t len, uint64_t first_word)
{
	uint64_t *w = buf;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = first_word + i + 1;
}

/* Read one byte per 4 KiB; returns their sum. */
__attribute__((noinline)) static uint64_t touch_read(const unsigned char *p, size_t len)
{
	const volatile unsigned char *q = p;
	uint64_t s = 0;
	for (size_t off = 0; off < len; off += TOUCH)
		s += q[off];
	return s;
}

/* Write one byte per 4 KiB from byte `from` of each 4 KiB (keeps data). */
__attribute__((noinline)) static void touch_write(unsigned char *p, size_t len, size_t first)
{
	volatile unsigned char *q = p;
	for (size_t off = first; off < len; off += TOUCH)
		q[off] = q[off];
}

__attribute__((noinline)) static uint64_t sum_words(const uint64_t *w, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += w[i];
	return s;
}

/* Reserve len bytes of PROT_NONE address space aligned to 2 MiB. */
static unsigned char *reserve(size_t len)
{
	size_t a = 2 * MiB;
	unsigned char *p = mmap(NULL, len + a, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	return (unsigned char *)(((uintptr_t)p + a - 1) & ~(uintptr_t)(a - 1));
}

/* Make a range inaccessible again without freeing the page tables. */
static void to_prot_none(void *p, size_t len)
{
	if (mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
		perror("mmap PROT_NONE");
}

static unsigned char *anon_filled(size_t len, uint64_t first_word)
{
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	fill_words(p, len, first_word);
	return p;
}

static long meminfo_kb(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;
	size_t k = strlen(key);

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, key, k) && line[k] == ':') {
			v = strtol(line + k + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static const char *size_str(size_t n)
{
	static char buf[4][32];
	static int k;
	char *b = buf[k++ & 3];
	if (n >= MiB && n % MiB == 0)
		snprintf(b, 32, "%zu MiB", n / MiB);
	else
		snprintf(b, 32, "%zu KiB", n / KiB);
	return b;
}

#define OC_TRY(call)                                                             \
	do {                                                                     \
		int e_ = (call);                                                 \
		if (e_ < 0) {                                                    \
			printf("  outcore: %s failed: %s (%d)\n", #call, oc_strerror(e_), e_); \
			goto fail;                                               \
		}                                                                \
	} while (0)

static oc_ram_t *ram_make(size_t pagesize, uint64_t budget, oc_ram_kind_t kind)
{
	oc_ram_opts_t o;
	oc_ram_t *ram = NULL;
	int e;

	memset(&o, 0, sizeof o);
	o.version = OC_RAM_OPTS_VERSION;
	o.kind = kind;
	o.pagesize = pagesize;
	o.budget = budget;
	e = oc_ram_new(&ram, &o);
	if (e < 0) {
		printf("  outcore: oc_ram_new(%s pages, budget %s%s) failed: %s\n", size_str(pagesize),
		       size_str(budget), kind == OC_RAM_HUGETLB ? ", hugetlb" : "", oc_strerror(e));
		return NULL;
	}
	return ram;
}

/* ======================================================================
 * (a), (c), (h): read faults through the in-RAM copying file
 * ====================================================================== */

enum refv {
	RV_MEMCPY_ONLY, /* memcpy into a resident window slot, no mapping */
	RV_MEMCPY,      /* THE reference: memcpy to resident slot + mmap POPULATE + touch */
	RV_MEMCPY_EVICT,/* same, recycling pool: the old mapping of the slot made PROT_NONE */
	RV_PWRITE,      /* pwrite into a resident slot + mmap POPULATE + touch */
	RV_BOUNCE,      /* memcpy into a hot bounce buffer + pwrite into a resident slot + mmap + touch */
	RV_PWRITE_FRESH,/* pwrite into a punched (fresh) slot + mmap + touch */
	RV_WARM_FRESH,  /* punched slot: MADV_POPULATE_WRITE of its window + memcpy + mmap + touch */
	RV_BOUNCE_FRESH,/* memcpy into a hot bounce buffer + pwrite into a punched slot + mmap + touch */
	RV_SEGV,        /* RV_MEMCPY done inside a SIGSEGV handler on first touch */
	RV_N
};

static const char *refv_name[RV_N] = {
	"memcpy only (block -> resident slot)",
	"REF memcpy->slot + mmap(POPULATE) + touch",
	"ref same, pool recycled + evict old map",
	"ref pwrite->slot + mmap(POPULATE) + touch",
	"ref memcpy->bounce+pwrite->slot+mmap+touch",
	"ref pwrite->fresh slot + mmap + touch",
	"ref fresh slot: POPULATE_WRITE+memcpy+mmap",
	"ref fresh slot: memcpy->bounce+pwrite+mmap",
	"ref SIGSEGV handler: memcpy + mmap(POPULATE)",
};

struct rd {
	size_t bs, nblk, len;
	bool hugetlb;
	unsigned char *src;
	uint64_t expect;
	/* outcore */
	oc_file_t *mf;
	oc_ram_t *ram_big, *ram_small;
	oc_fileh_t *fh_big, *fh_small;
	uint64_t budget_small;
	/* reference */
	int fd;
	unsigned char *win; /* the ref memfd mapped read-write, nblk slots */
	size_t pool;        /* recycled slots (= budget_small / bs) */
	unsigned char *tgt;
	unsigned char *bounce; /* one block, resident, non-zero */
};

static struct rd *seg_rd;
static size_t seg_count;

static void seg_handler(int sig, siginfo_t *si, void *uc)
{
	struct rd *r = seg_rd;
	uintptr_t a = (uintptr_t)si->si_addr;
	int saved = errno;
	(void)uc;

	if (!r || a < (uintptr_t)r->tgt || a >= (uintptr_t)r->tgt + r->len) {
		signal(sig, SIG_DFL); /* a real crash: re-fault and die */
		return;
	}
	size_t i = (a - (uintptr_t)r->tgt) / r->bs, slot = i % r->pool;
	memcpy(r->win + slot * r->bs, r->src + i * r->bs, r->bs);
	if (mmap(r->tgt + i * r->bs, r->bs, PROT_READ, MAP_SHARED | MAP_FIXED | MAP_POPULATE, r->fd,
		 (off_t)(slot * r->bs)) == MAP_FAILED)
		signal(sig, SIG_DFL);
	seg_count++;
	errno = saved;
}

static int run_ref_read(struct rd *r, enum refv v, struct meas *m)
{
	bool fresh = v == RV_PWRITE_FRESH || v == RV_WARM_FRESH || v == RV_BOUNCE_FRESH;
	size_t P = fresh ? r->nblk : r->pool, bs = r->bs;
	struct sigaction sa, old;
	uint64_t sum = 0;

	if (fresh && fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, r->len) < 0) {
		printf("  fallocate punch: %s\n", strerror(errno));
		return -1;
	}
	if (v == RV_SEGV) {
		memset(&sa, 0, sizeof sa);
		sa.sa_sigaction = seg_handler;
		sa.sa_flags = SA_SIGINFO;
		seg_rd = r;
		sigaction(SIGSEGV, &sa, &old);
	}
	meas_begin(m);
	if (v == RV_SEGV) {
		sum = touch_read(r->tgt, r->len);
	} else {
		for (size_t i = 0; i < r->nblk; i++) {
			size_t slot = i % P;
			unsigned char *dst = r->win + slot * bs, *at = r->tgt + i * bs;
			const unsigned char *s = r->src + i * bs;

			if (v == RV_MEMCPY_EVICT && i >= P)
				to_prot_none(at - P * bs, bs);
			switch (v) {
			case RV_PWRITE:
			case RV_PWRITE_FRESH:
				if (pwrite(r->fd, s, bs, (off_t)(slot * bs)) != (ssize_t)bs)
					m->bad = true;
				break;
			case RV_WARM_FRESH:
				madvise(dst, bs, MADV_POPULATE_WRITE);
				memcpy(dst, s, bs);
				break;
			case RV_BOUNCE:
			case RV_BOUNCE_FRESH:
				memcpy(r->bounce, s, bs);
				if (pwrite(r->fd, r->bounce, bs, (off_t)(slot * bs)) != (ssize_t)bs)
					m->bad = true;
				break;
			default:
				memcpy(dst, s, bs);
			}
			if (v == RV_MEMCPY_ONLY)
				continue;
			if (mmap(at, bs, PROT_READ, MAP_SHARED | MAP_FIXED | MAP_POPULATE, r->fd,
				 (off_t)(slot * bs)) == MAP_FAILED) {
				m->bad = true;
				break;
			}
			sum += touch_read(at, bs);
		}
	}
	meas_end(m);
	if (v == RV_SEGV) {
		sigaction(SIGSEGV, &old, NULL);
		seg_rd = NULL;
	}
	if (v != RV_MEMCPY_ONLY && sum != r->expect)
		m->bad = true;
	to_prot_none(r->tgt, r->len);
	if (fresh) {
		/* Give back what is past the pool; keep the pool resident and
		 * its window page tables filled, as the other variants expect. */
		if (r->len > r->pool * bs)
			fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(r->pool * bs),
				  (off_t)(r->len - r->pool * bs));
		madvise(r->win, r->pool * bs, MADV_POPULATE_WRITE);
	}
	return 0;
}

/* reclaim_first: drop every page just before the timed touch, so that
 * every block loads (into fresh, just-punched pages, like the fresh-slot
 * references: memory freed long before is handed back to the host by
 * free-page reporting and costs more to allocate again). */
static int run_oc_read(struct rd *r, oc_fileh_t *fh, oc_ram_t *ram, bool reclaim_first, struct meas *m)
{
	oc_vma_t *v = NULL;
	oc_ram_stats_t s0, s1;
	uint64_t sum;
	int e;

	if (reclaim_first)
		oc_ram_reclaim(ram, UINT64_MAX);
	e = oc_fileh_mmap(fh, 0, r->nblk, &v);

	if (e < 0) {
		printf("  outcore: oc_fileh_mmap: %s\n", oc_strerror(e));
		return -1;
	}
	oc_ram_stats(ram, &s0);
	meas_begin(m);
	sum = touch_read(oc_vma_addr(v), r->len);
	meas_end(m);
	oc_ram_stats(ram, &s1);
	m->loads = (double)(s1.loads - s0.loads);
	m->ofaults = (double)(s1.faults - s0.faults);
	m->moves = (double)(s1.table_moves - s0.table_moves);
	m->bad = sum != r->expect;
	oc_vma_unmap(v);
	return 0;
}

/* Fill an in-RAM file with src through a handle (write faults, writeout). */
static oc_file_t *memfile_prefill(size_t bs, const unsigned char *src, size_t len, bool hugetlb)
{
	oc_file_t *f = NULL;
	oc_ram_t *ram = NULL;
	oc_fileh_t *fh = NULL;
	oc_vma_t *v = NULL;
	uint64_t loads, stores, nb;
	double t0, t1, t2;

	OC_TRY(oc_memfile_new(&f, bs));
	ram = ram_make(bs, len + 64 * MiB, hugetlb ? OC_RAM_HUGETLB : OC_RAM_MEMFD);
	if (!ram)
		goto fail;
	OC_TRY(oc_fileh_open(&fh, f, ram));
	OC_TRY(oc_fileh_mmap(fh, 0, len / bs, &v));
	t0 = now_s();
	memcpy(oc_vma_addr(v), src, len);
	t1 = now_s();
	OC_TRY(oc_fileh_writeout(fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED));
	t2 = now_s();
	oc_memfile_counts(f, &loads, &stores, &nb);
	printf("  prefill of the in-RAM file through a handle: first write %.1f us/block, writeout %.1f us/block"
	       " (loads %" PRIu64 ", stores %" PRIu64 ", blocks held %" PRIu64 ")\n",
	       (t1 - t0) * 1e6 / (len / bs), (t2 - t1) * 1e6 / (len / bs), loads, stores, nb);
	oc_vma_unmap(v);
	oc_fileh_close(fh);
	oc_ram_close(ram);
	if (nb != len / bs) {
		printf("  the in-RAM file holds %" PRIu64 " blocks, expected %zu\n", nb, len / bs);
		oc_file_put(f);
		return NULL;
	}
	return f;
fail:
	if (v)
		oc_vma_unmap(v);
	if (fh)
		oc_fileh_close(fh);
	oc_ram_close(ram);
	if (f)
		oc_file_put(f);
	return NULL;
}

/* Results of one read section, for the targets. */
struct rd_out {
	double oc_big, oc_small, ref, ref_evict, ref_fresh, memcpy_only, segv;
	double oc_big_hw, oc_small_hw, ref_hw, oc_big_flt, ref_flt;
	bool ok;
};

static struct rd_out section_read(const char *title, size_t bs, size_t len, bool hugetlb, bool with_small)
{
	struct rd r;
	struct rd_out out;
	struct res ro_big, ro_small, rr[RV_N];
	bool use[RV_N];
	struct meas m;

	memset(&r, 0, sizeof r);
	memset(&out, 0, sizeof out);
	r.bs = bs;
	r.len = len / bs * bs;
	r.nblk = len / bs;
	r.hugetlb = hugetlb;
	r.fd = -1;
	r.budget_small = with_small ? (r.len / 4 < 256 * MiB ? r.len / 4 : 256 * MiB) : r.len;
	if (r.budget_small < 4 * bs)
		r.budget_small = 4 * bs;
	r.pool = r.budget_small / bs;

	printf("\n== %s: %s pages, %s of data = %zu blocks%s\n", title, size_str(bs), size_str(r.len),
	       r.nblk, hugetlb ? ", hugetlb RAM" : "");
	r.src = anon_filled(r.len, 0x0101010101010100ULL);
	if (!r.src) {
		printf("  cannot allocate the source data\n");
		return out;
	}
	r.expect = touch_read(r.src, r.len);

	/* outcore side */
	r.mf = memfile_prefill(bs, r.src, r.len, hugetlb);
	if (r.mf) {
		r.ram_big = ram_make(bs, r.len + 64 * MiB, hugetlb ? OC_RAM_HUGETLB : OC_RAM_MEMFD);
		if (r.ram_big && oc_fileh_open(&r.fh_big, r.mf, r.ram_big) < 0)
			r.fh_big = NULL;
		if (with_small) {
			r.ram_small = ram_make(bs, r.budget_small, hugetlb ? OC_RAM_HUGETLB : OC_RAM_MEMFD);
			if (r.ram_small && oc_fileh_open(&r.fh_small, r.mf, r.ram_small) < 0)
				r.fh_small = NULL;
		}
	}

	/* reference side */
	r.fd = memfd_create("bench_ref", MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB : 0));
	if (r.fd < 0 || ftruncate(r.fd, (off_t)r.len) < 0) {
		printf("  reference memfd: %s\n", strerror(errno));
		goto out;
	}
	r.win = mmap(NULL, r.len, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
	r.tgt = reserve(r.len);
	if (r.win == MAP_FAILED || !r.tgt) {
		printf("  reference mappings: %s\n", strerror(errno));
		goto out;
	}
	fill_words(r.win, r.pool * bs, 7); /* the recycled pool: resident, page tables filled */
	r.bounce = anon_filled(bs, 9);

	for (int v = 0; v < RV_N; v++) {
		use[v] = true;
		res_init(&rr[v], refv_name[v], (double)r.nblk, (double)r.len);
	}
	if (hugetlb)
		use[RV_PWRITE] = use[RV_PWRITE_FRESH] = use[RV_BOUNCE] = use[RV_BOUNCE_FRESH] = false; /* hugetlbfs has no write(2) */
	if (!with_small)
		use[RV_MEMCPY_EVICT] = false;
	{
		char name[80];
		snprintf(name, sizeof name, "OUTCORE memfile, budget %s (>= data)", size_str(r.len + 64 * MiB));
		res_init(&ro_big, name, (double)r.nblk, (double)r.len);
		snprintf(name, sizeof name, "OUTCORE memfile, budget %s (recycles)", size_str(r.budget_small));
		res_init(&ro_small, name, (double)r.nblk, (double)r.len);
	}
	if (!r.fh_big)
		ro_big.failed = true;
	if (!r.fh_small)
		ro_small.failed = true;

	/* Alternate the contenders run by run; run -1 is the warm-up. */
	for (int run = -1; run < g_runs; run++) {
		if (!ro_big.failed) {
			if (run_oc_read(&r, r.fh_big, r.ram_big, true, &m) < 0)
				ro_big.failed = true;
			else if (run >= 0)
				res_add(&ro_big, &m);
		}
		for (int v = 0; v < RV_N; v++) {
			if (!use[v])
				continue;
			if (run_ref_read(&r, v, &m) < 0)
				rr[v].failed = true;
			else if (run >= 0)
				res_add(&rr[v], &m);
			/* put the outcore recycling run in the middle of the references */
			if (v == RV_MEMCPY && with_small && !ro_small.failed) {
				if (run_oc_read(&r, r.fh_small, r.ram_small, false, &m) < 0)
					ro_small.failed = true;
				else if (run >= 0)
					res_add(&ro_small, &m);
			}
		}
	}

	print_head(false);
	print_res(&ro_big);
	if (with_small)
		print_res(&ro_small);
	for (int v = 0; v < RV_N; v++)
		if (use[v])
			print_res(&rr[v]);
	print_runs(&ro_big);
	if (with_small)
		print_runs(&ro_small);
	print_runs(&rr[RV_MEMCPY]);

	out.oc_big = res_us(&ro_big);
	out.oc_small = with_small ? res_us(&ro_small) : -1;
	out.ref = res_us(&rr[RV_MEMCPY]);
	out.ref_evict = use[RV_MEMCPY_EVICT] ? res_us(&rr[RV_MEMCPY_EVICT]) : -1;
	/* outcore fills a fresh (cold) slot by loadblk into a bounce buffer
	 * and pwrite; hugetlb slots through the window */
	out.ref_fresh = res_us(&rr[hugetlb ? RV_WARM_FRESH : RV_BOUNCE_FRESH]);
	out.memcpy_only = res_us(&rr[RV_MEMCPY_ONLY]);
	out.segv = res_us(&rr[RV_SEGV]);
	out.oc_big_hw = ro_big.n ? median(ro_big.hw, ro_big.n) : -1;
	out.oc_small_hw = ro_small.n ? median(ro_small.hw, ro_small.n) : -1;
	out.ref_hw = rr[RV_MEMCPY].n ? median(rr[RV_MEMCPY].hw, rr[RV_MEMCPY].n) : -1;
	out.oc_big_flt = ro_big.n ? median(ro_big.flt, ro_big.n) : -1;
	out.ref_flt = rr[RV_MEMCPY].n ? median(rr[RV_MEMCPY].flt, rr[RV_MEMCPY].n) : -1;
	out.ok = !ro_big.bad && !ro_small.bad;
	if (!out.ok)
		printf("  WARNING: outcore returned wrong data in this section\n");
	if (ro_big.n && fabs_d(median(ro_big.loads, ro_big.n) - 1) > 0.01)
		printf("  WARNING: outcore did not load every block exactly once per run (loads/blk %.2f)\n",
		       median(ro_big.loads, ro_big.n));
out:
	if (r.fh_big)
		oc_fileh_close(r.fh_big);
	if (r.fh_small)
		oc_fileh_close(r.fh_small);
	oc_ram_close(r.ram_big);
	oc_ram_close(r.ram_small);
	if (r.mf)
		oc_file_put(r.mf);
	if (r.win && r.win != MAP_FAILED)
		munmap(r.win, r.len);
	if (r.tgt)
		munmap(r.tgt, r.len);
	if (r.fd >= 0)
		close(r.fd);
	if (r.bounce)
		munmap(r.bounce, bs);
	munmap(r.src, r.len);
	return out;
}

/* ======================================================================
 * (b): sequential scan through the mapped base layer vs the kernel's mmap
 * ====================================================================== */

struct plain {
	char path[512];
	int fd;
	size_t len;
	uint64_t expect; /* sum of all words */
};

static int plain_create(struct plain *pf, size_t len)
{
	size_t chunk = 2 * MiB;
	unsigned char *buf = malloc(chunk);
	uint64_t n = len / 8;
	double t0;

	pf->len = len;
	pf->expect = (n / 2) * (n + 1); /* n is even: no overflow concern (mod 2^64) */
	snprintf(pf->path, sizeof pf->path, "%s/oc_bench_core_%d.dat", g_dir, (int)getpid());
	pf->fd = open(pf->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (pf->fd < 0 || !buf) {
		printf("  cannot create %s: %s\n", pf->path, strerror(errno));
		free(buf);
		return -1;
	}
	t0 = now_s();
	for (size_t off = 0; off < len; off += chunk) {
		fill_words(buf, chunk, off / 8);
		if (pwrite(pf->fd, buf, chunk, (off_t)off) != (ssize_t)chunk) {
			printf("  write %s: %s\n", pf->path, strerror(errno));
			free(buf);
			return -1;
		}
	}
	/* Warm the page cache in this run (the host reclaims pages idle for
	 * about 60 s): read it all back. */
	for (size_t off = 0; off < len; off += chunk)
		if (pread(pf->fd, buf, chunk, (off_t)off) != (ssize_t)chunk)
			break;
	printf("  %s: %s written and read back in %.2f s\n", pf->path, size_str(len), now_s() - t0);
	free(buf);
	return 0;
}

static void plain_remove(struct plain *pf)
{
	if (pf->fd >= 0) {
		close(pf->fd);
		unlink(pf->path);
		pf->fd = -1;
	}
}

static int run_scan_kernel(struct plain *pf, struct meas *m, bool *aligned)
{
	uint64_t sum = 0;
	void *p;

	meas_begin(m);
	p = mmap(NULL, pf->len, PROT_READ, MAP_SHARED, pf->fd, 0);
	if (p != MAP_FAILED)
		sum = sum_words(p, pf->len / 8);
	meas_end(m);
	if (p == MAP_FAILED) {
		printf("  mmap: %s\n", strerror(errno));
		return -1;
	}
	*aligned = ((uintptr_t)p & (2 * MiB - 1)) == 0;
	m->bad = sum != pf->expect;
	munmap(p, pf->len);
	return 0;
}

static int run_scan_oc(struct plain *pf, oc_fileh_t *fh, oc_ram_t *ram, size_t bs, struct meas *m)
{
	oc_vma_t *v = NULL;
	oc_ram_stats_t s0, s1;
	uint64_t sum = 0;
	int e;

	oc_ram_reclaim(ram, UINT64_MAX);
	oc_ram_stats(ram, &s0);
	meas_begin(m);
	e = oc_fileh_mmap(fh, 0, pf->len / bs, &v);
	if (e == 0)
		sum = sum_words(oc_vma_addr(v), pf->len / 8);
	meas_end(m);
	if (e < 0) {
		printf("  outcore: oc_fileh_mmap: %s\n", oc_strerror(e));
		return -1;
	}
	oc_ram_stats(ram, &s1);
	m->loads = (double)(s1.base_maps - s0.base_maps);
	m->ofaults = (double)(s1.faults - s0.faults);
	m->bad = sum != pf->expect;
	oc_vma_unmap(v);
	return 0;
}

static void section_scan(struct plain *pf)
{
	size_t bs = 2 * MiB, nblk = pf->len / bs;
	oc_file_t *f = NULL;
	oc_ram_t *ram = NULL, *ram_small = NULL;
	oc_fileh_t *fh = NULL, *fh_small = NULL;
	struct res rk, ro, ros;
	struct meas m;
	bool aligned = false;
	uint64_t small = 256 * MiB < pf->len / 4 ? 256 * MiB : pf->len / 4;
	char name[80];

	if (small < 4 * bs)
		small = 4 * bs;
	printf("\n== (b) sequential scan (sum of every uint64) of a page-cached plain file, %s, 2 MiB blocks\n",
	       size_str(pf->len));
	res_init(&rk, "kernel mmap(MAP_SHARED, PROT_READ) + scan", (double)nblk, (double)pf->len);
	res_init(&ro, "OUTCORE plainfile base layer, budget >= file", (double)nblk, (double)pf->len);
	snprintf(name, sizeof name, "OUTCORE plainfile base layer, budget %s", size_str(small));
	res_init(&ros, name, (double)nblk, (double)pf->len);

	OC_TRY(oc_plainfile_open(&f, pf->path, bs, OC_PLAINFILE_RDONLY));
	ram = ram_make(bs, pf->len + 64 * MiB, OC_RAM_MEMFD);
	ram_small = ram_make(bs, small, OC_RAM_MEMFD);
	if (!ram || !ram_small)
		goto fail;
	OC_TRY(oc_fileh_open(&fh, f, ram));
	OC_TRY(oc_fileh_open(&fh_small, f, ram_small));

	for (int run = -1; run < 2 * g_runs + 1 && run < MAXRUNS; run++) {
		if (!rk.failed) {
			if (run_scan_kernel(pf, &m, &aligned) < 0)
				rk.failed = true;
			else if (run >= 0)
				res_add(&rk, &m);
		}
		if (!ro.failed) {
			if (run_scan_oc(pf, fh, ram, bs, &m) < 0)
				ro.failed = true;
			else if (run >= 0)
				res_add(&ro, &m);
		}
		if (!ros.failed) {
			if (run_scan_oc(pf, fh_small, ram_small, bs, &m) < 0)
				ros.failed = true;
			else if (run >= 0)
				res_add(&ros, &m);
		}
	}
	goto done;
fail:
	ro.failed = ros.failed = true;
	for (int run = -1; run < g_runs; run++)
		if (run_scan_kernel(pf, &m, &aligned) == 0 && run >= 0)
			res_add(&rk, &m);
done:
	print_head(false);
	print_res(&rk);
	print_res(&ro);
	print_res(&ros);
	print_runs(&rk);
	print_runs(&ro);
	printf("  (the kernel's mapping was %s2 MiB-aligned; 'oc loads/blk' = base-layer maps per block)\n",
	       aligned ? "" : "NOT ");
	if (res_us(&rk) > 0 && res_us(&ro) > 0) {
		double ratio = res_us(&rk) / res_us(&ro);
		printf("  scan throughput outcore / kernel mmap: %.3f (budget >= file), %.3f (budget %s)\n", ratio,
		       res_us(&ros) > 0 ? res_us(&rk) / res_us(&ros) : -1, size_str(small));
		target(ratio >= 0.9 && !ro.bad, "(b) base-layer scan / kernel mmap scan = %.3f (target >= 0.9)%s",
		       ratio, ro.bad ? " [WRONG SUM]" : "");
	} else {
		target_na("(b) base-layer scan / kernel mmap scan: a contender failed");
	}
	if (fh_small)
		oc_fileh_close(fh_small);
	if (fh)
		oc_fileh_close(fh);
	oc_ram_close(ram_small);
	oc_ram_close(ram);
	if (f)
		oc_file_put(f);
}

/* ======================================================================
 * (d): first write to each block
 * ====================================================================== */

enum wv { WV_OC_COW, WV_OC_DIRTY, WV_REF_COW, WV_REF_COW_FRESH, WV_REF_MPROTECT, WV_REF_MMAPRW, WV_N };

struct wd {
	size_t bs, nblk, len;
	struct plain *pf;
	oc_file_t *pfile, *mf;
	oc_ram_t *ram, *ram_mem; /* one per handle: dirty pages stay between runs */
	oc_fileh_t *fh_plain, *fh_mem;
	int fd;
	unsigned char *win, *tgt;
};

/* Phase 1: the first write to each block (one byte at its start); phase 2:
 * one byte in every other 4 KiB of it. */
static void write_phases(unsigned char *base, size_t nblk, size_t bs, struct meas *m)
{
	for (size_t i = 0; i < nblk; i++)
		touch_write(base + i * bs, 1, 0);
	m->t_mid = now_s();
	for (size_t i = 0; i < nblk; i++)
		touch_write(base + i * bs, bs, TOUCH);
}

static int run_oc_write(struct wd *w, oc_fileh_t *fh, oc_ram_t *ram, struct meas *m)
{
	oc_vma_t *v = NULL;
	oc_ram_stats_t s0, s1;
	unsigned char *p;
	uint64_t sum;
	int e;

	/* Drop the previous run's dirty pages and every clean page now, just
	 * before timing, as the fresh-slot reference punches its pool. */
	e = oc_fileh_discard(fh);
	if (e < 0) {
		printf("  outcore: oc_fileh_discard: %s\n", oc_strerror(e));
		return -1;
	}
	oc_ram_reclaim(ram, UINT64_MAX);
	e = oc_fileh_mmap(fh, 0, w->nblk, &v);

	if (e < 0) {
		printf("  outcore: oc_fileh_mmap: %s\n", oc_strerror(e));
		return -1;
	}
	p = oc_vma_addr(v);
	sum = touch_read(p, w->len); /* every block loaded (or base-mapped), clean */
	oc_ram_stats(ram, &s0);
	meas_begin(m);
	write_phases(p, w->nblk, w->bs, m);
	meas_end(m);
	oc_ram_stats(ram, &s1);
	m->loads = (double)(s1.loads - s0.loads);
	m->ofaults = (double)(s1.write_faults - s0.write_faults);
	m->cows = (double)(s1.cow_copies - s0.cow_copies);
	m->bad = touch_read(p, w->len) != sum;
	oc_vma_unmap(v); /* the dirty pages stay until the next run discards them */
	return 0;
}

static int run_ref_write(struct wd *w, enum wv v, struct meas *m)
{
	size_t bs = w->bs;
	unsigned char *t = w->tgt;
	int src_fd = v == WV_REF_COW || v == WV_REF_COW_FRESH ? w->pf->fd : w->fd;

	if (v == WV_REF_COW_FRESH &&
	    fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)w->len) < 0)
		return -1;

	/* Clean, read-only, populated and touched: like a loaded clean block. */
	if (mmap(t, w->len, PROT_READ, MAP_SHARED | MAP_FIXED | MAP_POPULATE, src_fd, 0) == MAP_FAILED) {
		printf("  mmap: %s\n", strerror(errno));
		return -1;
	}
	(void)touch_read(t, w->len);
	meas_begin(m);
	for (size_t i = 0; i < w->nblk; i++) {
		unsigned char *at = t + i * bs;
		switch (v) {
		case WV_REF_COW_FRESH:
			if (pwrite(w->fd, at, bs, (off_t)(i * bs)) != (ssize_t)bs)
				m->bad = true;
			goto map_rw;
		case WV_REF_COW:
			memcpy(w->win + i * bs, at, bs);
			/* fallthrough */
		map_rw:
		case WV_REF_MMAPRW:
			if (mmap(at, bs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, w->fd,
				 (off_t)(i * bs)) == MAP_FAILED)
				m->bad = true;
			break;
		default:
			if (mprotect(at, bs, PROT_READ | PROT_WRITE) < 0)
				m->bad = true;
		}
		touch_write(at, 1, 0);
	}
	m->t_mid = now_s();
	for (size_t i = 0; i < w->nblk; i++)
		touch_write(t + i * bs, bs, TOUCH);
	meas_end(m);
	to_prot_none(t, w->len);
	if (v == WV_REF_COW_FRESH)
		madvise(w->win, w->len, MADV_POPULATE_WRITE); /* resident again for the others */
	return 0;
}

static void section_write(struct plain *pf)
{
	static const char *names[WV_N] = {
		"OUTCORE plainfile: copy-on-write of base block",
		"OUTCORE memfile: dirty a loaded clean page",
		"REF cow: memcpy + mmap(RW,POPULATE) of slot",
		"ref cow, fresh slot: pwrite + mmap(RW,POP.)",
		"REF dirty: mprotect(RW) of RO-mapped block",
		"ref dirty: mmap(RW,POPULATE) over RO block",
	};
	struct wd w;
	struct res rs[WV_N];
	struct meas m;
	unsigned char *src = NULL;

	memset(&w, 0, sizeof w);
	w.bs = 2 * MiB;
	w.len = g_data < 256 * MiB ? g_data : 256 * MiB;
	if (w.len > pf->len)
		w.len = pf->len;
	w.nblk = w.len / w.bs;
	w.pf = pf;
	w.fd = -1;
	printf("\n== (d) first write to each block: 2 MiB pages, %zu blocks; '1st-wr' = the write fault "
	       "(one byte per block), 'rest' = one byte in each other 4 KiB of the block afterwards\n",
	       w.nblk);
	for (int v = 0; v < WV_N; v++) {
		res_init(&rs[v], names[v], (double)w.nblk, (double)w.len);
		rs[v].split = true;
	}

	/* reference side: a resident memfd pool with its window filled */
	w.fd = memfd_create("bench_ref_w", MFD_CLOEXEC);
	if (w.fd < 0 || ftruncate(w.fd, (off_t)w.len) < 0)
		goto out;
	w.win = mmap(NULL, w.len, PROT_READ | PROT_WRITE, MAP_SHARED, w.fd, 0);
	w.tgt = reserve(w.len);
	if (w.win == MAP_FAILED || !w.tgt)
		goto out;
	fill_words(w.win, w.len, 0);

	/* outcore side: the plain file of (b) opened read-write (never written
	 * out: every run discards), and an in-RAM file of the same data */
	src = anon_filled(w.len, 0);
	w.mf = src ? memfile_prefill(w.bs, src, w.len, false) : NULL;
	if (src)
		munmap(src, w.len);
	w.ram = ram_make(w.bs, w.len + 64 * MiB, OC_RAM_MEMFD);
	w.ram_mem = ram_make(w.bs, w.len + 64 * MiB, OC_RAM_MEMFD);
	if (oc_plainfile_open(&w.pfile, pf->path, w.bs, 0) < 0)
		w.pfile = NULL;
	if (!w.ram || !w.pfile || oc_fileh_open(&w.fh_plain, w.pfile, w.ram) < 0)
		rs[WV_OC_COW].failed = true;
	if (!w.ram_mem || !w.mf || oc_fileh_open(&w.fh_mem, w.mf, w.ram_mem) < 0)
		rs[WV_OC_DIRTY].failed = true;

	for (int run = -1; run < g_runs; run++) {
		for (int v = 0; v < WV_N; v++) {
			int e;
			if (rs[v].failed)
				continue;
			if (v == WV_OC_COW)
				e = run_oc_write(&w, w.fh_plain, w.ram, &m);
			else if (v == WV_OC_DIRTY)
				e = run_oc_write(&w, w.fh_mem, w.ram_mem, &m);
			else
				e = run_ref_write(&w, v, &m);
			if (e < 0)
				rs[v].failed = true;
			else if (run >= 0)
				res_add(&rs[v], &m);
		}
	}
	print_head(true);
	for (int v = 0; v < WV_N; v++)
		print_res(&rs[v]);
	for (int v = 0; v < WV_N; v++)
		print_runs(&rs[v]);
	printf("  ('oc loads/blk' here = loads during the writes, 'faults/blk' = outcore write faults)\n");
	if (res_us(&rs[WV_OC_COW]) > 0 && res_us(&rs[WV_REF_COW]) > 0)
		printf("  (d) copy-on-write: outcore %.1f us/block vs bare %.1f us/block (resident slot): overhead %+.0f%%;"
		       " vs bare into a fresh slot %.1f us/block: %+.0f%%\n",
		       res_us(&rs[WV_OC_COW]), res_us(&rs[WV_REF_COW]),
		       100 * (res_us(&rs[WV_OC_COW]) / res_us(&rs[WV_REF_COW]) - 1), res_us(&rs[WV_REF_COW_FRESH]),
		       100 * (res_us(&rs[WV_OC_COW]) / res_us(&rs[WV_REF_COW_FRESH]) - 1));
	if (res_us(&rs[WV_OC_DIRTY]) > 0 && res_us(&rs[WV_REF_MPROTECT]) > 0)
		printf("  (d) dirtying a clean RAM page: outcore %.1f us/block vs bare mprotect %.1f us/block: overhead %+.0f%%;"
		       " vs bare mmap(RW,POPULATE) %.1f us/block: %+.0f%%\n",
		       res_us(&rs[WV_OC_DIRTY]), res_us(&rs[WV_REF_MPROTECT]),
		       100 * (res_us(&rs[WV_OC_DIRTY]) / res_us(&rs[WV_REF_MPROTECT]) - 1), res_us(&rs[WV_REF_MMAPRW]),
		       100 * (res_us(&rs[WV_OC_DIRTY]) / res_us(&rs[WV_REF_MMAPRW]) - 1));
out:
	if (w.fh_plain)
		oc_fileh_close(w.fh_plain);
	if (w.fh_mem)
		oc_fileh_close(w.fh_mem);
	oc_ram_close(w.ram);
	oc_ram_close(w.ram_mem);
	if (w.pfile)
		oc_file_put(w.pfile);
	if (w.mf)
		oc_file_put(w.mf);
	if (w.win && w.win != MAP_FAILED)
		munmap(w.win, w.len);
	if (w.tgt)
		munmap(w.tgt, w.len);
	if (w.fd >= 0)
		close(w.fd);
}

/* ====================================================================== */

static void read_targets(const char *what, const struct rd_out *o, bool is_target)
{
	double ov;

	if (o->oc_big < 0 || o->ref < 0) {
		if (is_target)
			target_na("%s overhead: a contender failed", what);
		return;
	}
	/* With a budget >= the data every load goes to a fresh page: the bare
	 * work to compare with is the same work on fresh pages (ref_fresh);
	 * REF, on a resident page, is what the recycling row compares with. */
	ov = (o->oc_big - o->ref) / o->ref;
	if (is_target && o->ref_fresh > 0)
		target((o->oc_big - o->ref_fresh) / o->ref_fresh <= 0.20 && o->ok,
		       "%s budget >= data: outcore %.1f us/block vs the bare work on fresh pages %.1f us/block: overhead %+.1f%% (target <= 20%%)%s",
		       what, o->oc_big, o->ref_fresh,
		       100 * (o->oc_big - o->ref_fresh) / o->ref_fresh,
		       o->ok ? "" : " [WRONG DATA]");
	else if (is_target)
		target(ov <= 0.20 && o->ok,
		       "%s budget >= data: outcore %.1f us/block vs bare %.1f us/block: overhead %+.1f%% (target <= 20%%)%s", what,
		       o->oc_big, o->ref, 100 * ov, o->ok ? "" : " [WRONG DATA]");
	if (!is_target || o->ref_fresh > 0)
		printf("INFO %s budget >= data: outcore %.1f us/block vs REF (a resident page) %.1f us/block: %+.1f%%%s\n",
		       what, o->oc_big, o->ref, 100 * ov,
		       is_target ? "" : " (the 20% target is set for 2 MiB pages)");
	if (o->oc_small > 0 && is_target)
		target((o->oc_small - o->ref) / o->ref <= 0.20 && o->ok,
		       "%s recycling budget: outcore %.1f us/block vs bare %.1f us/block: overhead %+.1f%% (target <= 20%%)",
		       what, o->oc_small, o->ref, 100 * (o->oc_small - o->ref) / o->ref);
	if (o->oc_small > 0)
		printf("INFO %s recycling budget: outcore %.1f us/block: overhead %+.1f%% vs REF, %+.1f%% vs the bare work with eviction (%.1f us)\n",
		       what, o->oc_small, 100 * (o->oc_small - o->ref) / o->ref,
		       o->ref_evict > 0 ? 100 * (o->oc_small - o->ref_evict) / o->ref_evict : 0, o->ref_evict);
	if (o->ref_fresh > 0 && !is_target)
		printf("INFO %s budget >= data loads into fresh (punched) pages: overhead vs the same bare work on fresh pages (%.1f us): %+.1f%%\n",
		       what, o->ref_fresh, 100 * (o->oc_big - o->ref_fresh) / o->ref_fresh);
	if (o->segv > 0)
		printf("INFO %s a SIGSEGV-driven bare pager costs %.1f us/block (%+.1f%% vs REF): the floor for any signal-based pager\n",
		       what, o->segv, 100 * (o->segv - o->ref) / o->ref);
	if (!is_target)
		return;
	if (o->oc_big_hw >= 0)
		target(o->oc_big_hw <= 1.05,
		       "%s hardware page faults (traps) per block: %.2f (target 1; the REF takes %.2f, with no SIGSEGV)",
		       what, o->oc_big_hw, o->ref_hw);
	else
		target(o->oc_big_flt - o->ref_flt <= 0.5,
		       "%s faults per block by getrusage: outcore %.2f vs REF %.2f (perf n/a: the SIGSEGV trap is not counted by getrusage; "
		       "target: no fault beyond the mapping's own)", what, o->oc_big_flt, o->ref_flt);
}

int main(void)
{
	const char *s;
	struct utsname u;
	struct plain pf = {.fd = -1};
	long hp_free;
	double t_start = now_s();

	if ((s = getenv("OC_BENCH_MB")) && atol(s) > 0)
		g_data = (size_t)atol(s) * MiB;
	if ((s = getenv("OC_BENCH_RUNS")) && atoi(s) > 0)
		g_runs = atoi(s) < MAXRUNS ? atoi(s) : MAXRUNS;
	if ((s = getenv("OC_BENCH_DIR")) && *s)
		g_dir = s;
	if ((s = getenv("OC_BENCH_SECTIONS")) && *s)
		g_sections = s;
	if (g_data < 16 * MiB)
		g_data = 16 * MiB;
	setvbuf(stdout, NULL, _IOLBF, 0);

	counters_open();
	uname(&u);
	hp_free = meminfo_kb("HugePages_Free");
	printf("outcore %s core benchmark: %s %s, %ld CPUs, single thread; data %s (OC_BENCH_MB), "
	       "medians of %d runs after 1 warm-up, contenders alternated\n",
	       oc_version(), u.sysname, u.release, sysconf(_SC_NPROCESSORS_ONLN), size_str(g_data), g_runs);
	printf("counters: getrusage minor+major faults per block ('flt/blk', includes the in-kernel faults of MAP_POPULATE); "
	       "'traps' = hardware page faults per block (perf sw page-faults: %s); 'sysc' = system calls per block "
	       "(perf raw_syscalls:sys_enter: %s)\n",
	       pf_fd >= 0 ? "yes" : "n/a", sc_fd >= 0 ? "yes" : "n/a");
	printf("OUTCORE rows: the library; REF rows: the bare kernel work the targets compare against; ref rows: variants\n");

	if (strchr(g_sections, 'a')) {
		struct rd_out o = section_read("(a) read faults, in-RAM copying file", 2 * MiB, g_data, false, true);
		read_targets("(a) 2 MiB", &o, true);
	}
	if (strchr(g_sections, 'b') || strchr(g_sections, 'd')) {
		printf("\n== plain file for (b) and (d)\n");
		if (plain_create(&pf, g_data) < 0) {
			target_na("(b) the plain file could not be created");
		} else {
			if (strchr(g_sections, 'b'))
				section_scan(&pf);
			if (strchr(g_sections, 'd'))
				section_write(&pf);
		}
		plain_remove(&pf);
	}
	if (strchr(g_sections, 'c')) {
		struct rd_out o;
		o = section_read("(c) read faults, in-RAM copying file", 64 * KiB, g_data / 2, false, true);
		read_targets("(c) 64 KiB", &o, false);
		o = section_read("(c) read faults, in-RAM copying file", 4 * KiB, g_data / 16, false, true);
		read_targets("(c) 4 KiB", &o, false);
	}
	if (strchr(g_sections, 'h')) {
		printf("\n== (h) huge pages: HugePages_Free = %ld\n", hp_free);
		if (hp_free >= 600) {
			/* outcore's RAM and the reference pool each need the data */
			/* ... and the recycling RAM its budget (below 160 pages) */
			size_t len = (size_t)(hp_free - 32 - 160) / 2 * 2 * MiB;
			struct rd_out o;
			if (len > g_data)
				len = g_data;
			o = section_read("(h) read faults, in-RAM copying file", 2 * MiB, len, true, true);
			if (o.oc_big > 0 && o.memcpy_only > 0)
				printf("INFO (h) hugetlb, fresh pages (budget >= data): whole read fault %.1f us / memcpy of the block %.1f us = %.2f\n",
				       o.oc_big, o.memcpy_only, o.oc_big / o.memcpy_only);
			if (o.oc_small > 0 && o.memcpy_only > 0)
				target(o.oc_small / o.memcpy_only <= 1.5 && o.ok,
				       "(h) hugetlb, recycling budget: whole read fault %.1f us / memcpy of the block %.1f us = %.2f (target <= 1.5)",
				       o.oc_small, o.memcpy_only, o.oc_small / o.memcpy_only);
			else
				target_na("(h) hugetlb read fault: a contender failed");
			read_targets("(h) hugetlb 2 MiB", &o, false);
		} else {
			printf("  hugetlb pages are not reserved (HugePages_Free %ld < 600; vm.nr_hugepages left as it is)\n",
			       hp_free);
			target_na("(h) hugetlb read fault <= 1.5x memcpy: hugetlb pages are not reserved on this machine");
		}
	}

	printf("\n== summary (%.0f s)\n%s", now_s() - t_start, g_summary);
	return 0;
}
