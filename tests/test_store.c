/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * test_store.c: the transactional store (store.h) on the LMDB engine:
 * commit / abort / reopen round trips of data and metadata, holes, two
 * processes (disjoint commits, conflicts, invalidation), page deltas (small
 * changes stored as 4 KiB pages, folded when they accumulate), crash safety
 * under SIGKILL (with delta commits mixed in), corruption, bad input.
 */
#include "check.h"
#include "testfile.h"
#include "internal.h" /* _oc_os_under_valgrind */

#include <dirent.h>
#include <fcntl.h>
#include <lmdb.h>
#include <signal.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <outcore/store.h>

#define BS 65536u
#define W (BS / 8) /* words per block */
#define PW 512     /* words per 4 KiB page */
#define ARENA (2u << 20) /* store_lmdb.c's arenas of delta runs */

static oc_ram_t *ram;
static char base[256];

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", base, name);
}

static oc_store_t *sopen(const char *path, int flags)
{
	oc_store_t *s = NULL;
	int err = oc_store_open(&s, path, flags, ram);
	if (err)
		printf("# open %s: %s\n", path, oc_strerror(err));
	return s;
}

static oc_array_meta_t meta1(uint64_t nblk, const char *attrs)
{
	oc_array_meta_t m;
	memset(&m, 0, sizeof m);
	m.ndim = 1;
	m.shape[0] = nblk * W;
	m.dtype = (char *)"<f8";
	m.order = 'C';
	m.blksize = BS;
	m.attrs = (char *)attrs;
	return m;
}

struct view {
	oc_fileh_t *fh;
	oc_vma_t *vma;
	uint64_t *p;
};

static int view_open(oc_store_t *s, const char *name, uint64_t nblk,
		     struct view *v)
{
	int err = oc_store_array_fileh(s, name, &v->fh);
	if (!err)
		err = oc_fileh_mmap(v->fh, 0, nblk, &v->vma);
	if (err) {
		printf("# view %s: %s\n", name, oc_strerror(err));
		return err;
	}
	v->p = oc_vma_addr(v->vma);
	return 0;
}

static void view_close(struct view *v)
{
	oc_vma_unmap(v->vma);
	v->vma = NULL;
}

/* Close v and *s, open the store at path again and view its array name
 * (nblk blocks) in v.  Returns 0, or -1 (a failed check; *s is then
 * closed and NULL). */
static int reopen(const char *path, oc_store_t **s, struct view *v,
		  const char *name, uint64_t nblk)
{
	view_close(v);
	oc_store_close(*s);
	*s = sopen(path, 0);
	if (*s && !view_open(*s, name, nblk, v))
		return 0;
	CHECK(0, "reopen %s and view '%s'", path, name);
	oc_store_close(*s);
	*s = NULL;
	return -1;
}

static void fill(struct view *v, uint64_t blk, uint64_t val)
{
	for (uint64_t i = 0; i < W; i++)
		v->p[blk * W + i] = val ? val + i % 7 : 0;
}

static int blk_is(struct view *v, uint64_t blk, uint64_t val)
{
	for (uint64_t i = 0; i < W; i++)
		if (v->p[blk * W + i] != (val ? val + i % 7 : 0))
			return 0;
	return 1;
}

/* The value a block holds (its first word), 0 for zeros. */
static uint64_t blk_val(struct view *v, uint64_t blk)
{
	return v->p[blk * W];
}

static int count_name(const char *name, void *arg)
{
	char *buf = arg;
	strcat(buf, name);
	strcat(buf, ",");
	return 0;
}

static uint64_t attr_i(oc_store_t *s, const char *name)
{
	oc_array_meta_t m;
	unsigned long long i = 0;
	if (oc_store_meta_get(s, name, &m))
		return UINT64_MAX;
	if (sscanf(m.attrs, "{\"i\": %llu}", &i) != 1)
		i = UINT64_MAX - 1;
	oc_array_meta_clear(&m);
	return i;
}

static uint64_t ram_brings(void)
{
	oc_ram_stats_t rs;
	oc_ram_stats(ram, &rs);
	return rs.loads + rs.base_maps + rs.zero_fills;
}

static int copy_file(const char *from, const char *to)
{
	char buf[65536];
	ssize_t n;
	int a = open(from, O_RDONLY), b = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int ok = a >= 0 && b >= 0;
	while (ok && (n = read(a, buf, sizeof buf)) > 0)
		ok = write(b, buf, (size_t)n) == n;
	if (a >= 0)
		close(a);
	if (b >= 0)
		close(b);
	return ok ? 0 : -1;
}

/* Copy the store at path (its two files) to the directory copy, a check
 * per file, and put the copy's data file name in data. */
static void copy_store(const char *path, const char *copy, char *data,
		       size_t n)
{
	const char *files[2] = {"index.mdb", "data"};
	char from[700];

	mkdir(copy, 0755);
	for (int i = 0; i < 2; i++) {
		snprintf(from, sizeof from, "%s/%s", path, files[i]);
		snprintf(data, n, "%s/%s", copy, files[i]);
		CHECK(!copy_file(from, data), "copy %s", files[i]);
	}
}

static void rm_tree(const char *d)
{
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
	if (system(cmd))
		printf("# rm failed\n");
}

/* The index of the store at path, opened with a transaction in *t
 * (read-only if rdonly), or NULL.  Not in a process that has the store
 * open (LMDB must not open an index twice in one process). */
static MDB_env *idx_open(const char *path, int rdonly, MDB_txn **t)
{
	char p[700];
	MDB_env *env;
	snprintf(p, sizeof p, "%s/index.mdb", path);
	if (mdb_env_create(&env))
		return NULL;
	mdb_env_set_maxdbs(env, 10);
	mdb_env_set_mapsize(env, (size_t)256 << 20);
	if (mdb_env_open(env, p, MDB_NOSUBDIR | (rdonly ? MDB_RDONLY : 0), 0644) ||
	    mdb_txn_begin(env, NULL, rdonly ? MDB_RDONLY : 0, t)) {
		mdb_env_close(env);
		return NULL;
	}
	return env;
}

/* Set the format version in the store's meta record, in t: 0 or an LMDB
 * error (-1: a record of another size). */
static int format_set(MDB_txn *t, unsigned version)
{
	MDB_dbi d;
	MDB_val k = {6, "format"}, v;
	unsigned char rec[64];
	int rc = mdb_dbi_open(t, "meta", 0, &d);

	rc = rc ? rc : mdb_get(t, d, &k, &v);
	if (!rc && v.mv_size > sizeof rec)
		rc = -1;
	if (!rc) {
		memcpy(rec, v.mv_data, v.mv_size);
		rec[16] = (unsigned char)version;
		v.mv_data = rec;
		rc = mdb_put(t, d, &k, &v, 0);
	}
	return rc;
}

/* Give the store in dir a format version newer than this library's (as a
 * later version of it would): 0 or an error. */
static int bump_format(const char *dir)
{
	MDB_txn *t = NULL;
	MDB_env *env = idx_open(dir, 0, &t);
	int rc = env ? format_set(t, 99) : -1;

	if (env && !rc)
		rc = mdb_txn_commit(t);
	else if (env)
		mdb_txn_abort(t);
	if (env)
		mdb_env_close(env);
	return rc;
}

/* A child: fresh RAM and store of its own (nothing inherited is used). */
static oc_store_t *child_open(const char *path)
{
	int err;
	ram = tf_ram(BS, 64 * BS, &err);
	if (!ram)
		_exit(10);
	return sopen(path, 0);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_roundtrip(const char *path)
{
	oc_store_t *s = sopen(path, OC_STORE_CREATE);
	oc_array_meta_t m = meta1(8, "{\"x\": 1}"), g;
	oc_store_stats_t ss;
	struct view a, b;
	char names[256] = "";

	CHECK(s, "create a store");
	if (!s)
		return;
	CHECK_EQ(oc_store_create(s, "a", &m), 0, "create a");
	m = meta1(4, NULL);
	CHECK_EQ(oc_store_create(s, "b", &m), 0, "create b");
	CHECK_EQ(oc_store_create(s, "b", &m), OC_EEXIST, "create b again: EEXIST");
	if (view_open(s, "a", 8, &a) || view_open(s, "b", 4, &b))
		return;
	for (uint64_t i = 0; i < 8; i++)
		fill(&a, i, 100 + i);
	fill(&b, 1, 200);
	CHECK_EQ(oc_store_commit(s), 0, "commit two new arrays");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.blocks_stored, 9, "9 blocks stored");
	CHECK_EQ(ss.data_size, 9 * BS, "data file holds 9 blocks");
	CHECK(!oc_fileh_isdirty(a.fh) && !oc_fileh_isdirty(b.fh), "pages clean after commit");

	/* abort restores stored data and metadata */
	fill(&a, 3, 999);
	m = meta1(16, "{\"x\": 2}");
	CHECK_EQ(oc_store_meta_set(s, "a", &m), 0, "meta_set a");
	CHECK_EQ(oc_store_create(s, "c", &m), 0, "create c");
	CHECK_EQ(oc_store_delete(s, "b"), 0, "delete b");
	CHECK_EQ(oc_store_meta_get(s, "b", &g), OC_ENOTFOUND, "b gone in this txn");
	CHECK_EQ(oc_store_abort(s), 0, "abort");
	CHECK(blk_is(&a, 3, 103), "abort restores block data");
	CHECK(blk_is(&b, 1, 200), "b still there after abort");
	CHECK_EQ(oc_store_meta_get(s, "c", &g), OC_ENOTFOUND, "created c dropped by abort");
	CHECK_EQ(oc_store_meta_get(s, "a", &g), 0, "meta_get a");
	CHECK(g.shape[0] == 8 * W && !strcmp(g.attrs, "{\"x\": 1}") &&
	      !strcmp(g.dtype, "<f8") && g.order == 'C' && g.blksize == BS,
	      "abort restores metadata");
	oc_array_meta_clear(&g);

	/* holes and all-zero blocks */
	fill(&b, 1, 0);
	fill(&b, 2, 0);
	CHECK_EQ(oc_store_commit(s), 0, "commit zero blocks");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.blocks_zeroed, 2, "all-zero blocks not stored");
	CHECK_EQ(ss.blocks_stored, 9, "no new block version");
	CHECK_EQ(ss.data_size, 9 * BS, "no data growth");

	/* metadata change committed, and a block rewritten (the freed extent
	 * of b's block 1 is reused once no snapshot sees it) */
	m = meta1(16, "{\"x\": 3}");
	CHECK_EQ(oc_store_meta_set(s, "a", &m), 0, "resize a");
	fill(&a, 0, 500);
	CHECK_EQ(oc_store_commit(s), 0, "commit resize + data");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.data_size, 9 * BS, "freed extent reused");
	view_close(&a);
	view_close(&b);
	CHECK_EQ(oc_store_close(s), 0, "close");

	s = sopen(path, 0);
	CHECK(s, "reopen");
	if (!s)
		return;
	oc_store_names(s, count_name, names);
	CHECK(!strcmp(names, "a,b,"), "names after reopen: %s", names);
	CHECK_EQ(oc_store_meta_get(s, "a", &g), 0, "meta_get after reopen");
	CHECK(g.shape[0] == 16 * W && !strcmp(g.attrs, "{\"x\": 3}"), "metadata persisted");
	oc_array_meta_clear(&g);
	if (view_open(s, "a", 16, &a) || view_open(s, "b", 4, &b))
		return;
	int ok = blk_is(&a, 0, 500);
	for (uint64_t i = 1; i < 8; i++)
		ok &= blk_is(&a, i, 100 + i);
	for (uint64_t i = 8; i < 16; i++)
		ok &= blk_is(&a, i, 0);
	CHECK(ok, "data of a persisted (grown part reads zeros)");
	CHECK(blk_is(&b, 0, 0) && blk_is(&b, 1, 0) && blk_is(&b, 3, 0), "holes read as zeros");

	/* delete and create again under the same name */
	CHECK_EQ(oc_store_delete(s, "b"), 0, "delete b");
	m = meta1(2, NULL);
	CHECK_EQ(oc_store_create(s, "b", &m), 0, "create b again");
	names[0] = 0;
	oc_store_names(s, count_name, names);
	CHECK(!strcmp(names, "a,b,"), "names in txn: %s", names);
	CHECK_EQ(oc_store_commit(s), 0, "commit delete + create");
	CHECK_EQ(oc_store_meta_get(s, "b", &g), 0, "new b");
	CHECK_EQ(g.shape[0], 2 * W, "new b has its own shape");
	oc_array_meta_clear(&g);
	view_close(&a);
	view_close(&b);
	CHECK_EQ(oc_store_close(s), 0, "close");
}

/* ---- two processes ---------------------------------------------------------- */

/* Child: write value val into block blk of array a and commit; exit with
 * 0 on success, 2 on conflict, 1 on other errors. */
static void child_write(const char *path, uint64_t blk, uint64_t val)
{
	oc_store_t *s = child_open(path);
	struct view a;
	int err;
	if (!s || view_open(s, "a", 16, &a))
		_exit(1);
	fill(&a, blk, val);
	err = oc_store_commit(s);
	view_close(&a);
	oc_store_close(s);
	_exit(err == OC_ECONFLICT ? 2 : err ? 1 : 0);
}

static int run_child(const char *path, uint64_t blk, uint64_t val)
{
	int status;
	pid_t pid = check_fork();
	if (pid == 0)
		child_write(path, blk, val);
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static void test_two_processes(const char *path)
{
	oc_store_t *s = sopen(path, 0);
	oc_store_stats_t ss;
	struct view a;
	uint64_t before;
	int ok;

	CHECK(s, "open for two processes");
	if (!s || view_open(s, "a", 16, &a))
		return;

	/* disjoint blocks both commit */
	fill(&a, 5, 705);
	CHECK_EQ(run_child(path, 2, 702), 0, "child commits block 2");
	CHECK(blk_is(&a, 2, 102), "our snapshot still shows the old block 2");
	CHECK_EQ(oc_store_commit(s), 0, "we commit block 5 after it");
	CHECK(blk_is(&a, 2, 702) && blk_is(&a, 5, 705), "both changes visible");

	/* the same block: exactly one conflict */
	fill(&a, 3, 803);
	CHECK_EQ(run_child(path, 3, 903), 0, "child commits block 3 first");
	CHECK_EQ(oc_store_commit(s), OC_ECONFLICT, "our commit of block 3 conflicts");
	CHECK(oc_fileh_isdirty(a.fh) && blk_is(&a, 3, 803), "dirty data kept after the conflict");
	{
		oc_array_meta_t m = meta1(1, NULL);
		CHECK_EQ(oc_store_create(s, "z", &m), OC_EFAILED, "failed store refuses changes");
	}
	CHECK_EQ(oc_store_commit(s), OC_ECONFLICT, "retry conflicts again");
	CHECK_EQ(oc_store_abort(s), 0, "abort clears the failure");
	CHECK(blk_is(&a, 3, 903), "after abort: the other process's data");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.conflicts, 2, "conflicts counted");

	/* invalidation keeps the other pages */
	ok = 1;
	for (uint64_t i = 0; i < 8; i++)
		ok &= blk_val(&a, i) != 1; /* touch them all */
	CHECK(ok, "read all of a");
	before = ram_brings();
	CHECK_EQ(run_child(path, 4, 604), 0, "child commits block 4");
	CHECK(blk_is(&a, 4, 104), "old block 4 until our next transaction");
	CHECK_EQ(oc_store_commit(s), 0, "empty commit starts a new transaction");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.invalidated, 3, "one block invalidated now (blocks 2, 3 before)");
	ok = 1;
	for (uint64_t i = 0; i < 8; i++)
		ok &= blk_val(&a, i) != 1;
	CHECK(ok && blk_is(&a, 4, 604), "new block 4 seen");
	CHECK_EQ(ram_brings() - before, 1, "only block 4 was loaded again");
	view_close(&a);
	CHECK_EQ(oc_store_close(s), 0, "close");
}

/* ---- crash safety ----------------------------------------------------------- */

#define CK 4 /* blocks per array in the crash test */

/* Commit i of the crash test: even i fills the blocks (whole rewrites),
 * odd i changes only pages 0, 3 and 9 of the state of i - 1 (deltas). */
static int crash_page(uint64_t w)
{
	uint64_t pg = w / PW;
	return pg == 0 || pg == 3 || pg == 9;
}

static uint64_t crash_word(uint64_t i, uint64_t w)
{
	return (i % 2 && !crash_page(w) ? i - 1 : i) + w % 7;
}

static void crash_fill(struct view *v, uint64_t blk, uint64_t i)
{
	for (uint64_t w = 0; w < W; w++)
		if (i % 2 == 0 || crash_page(w))
			v->p[blk * W + w] = crash_word(i, w);
}

static int crash_is(struct view *v, uint64_t blk, uint64_t i)
{
	for (uint64_t w = 0; w < W; w++)
		if (v->p[blk * W + w] != crash_word(i, w))
			return 0;
	return 1;
}

static void crash_child(const char *path, uint64_t start, int fd)
{
	oc_store_t *s = child_open(path);
	struct view a, b;
	char attrs[64];
	if (!s || view_open(s, "ca", CK, &a) || view_open(s, "cb", CK, &b))
		_exit(1);
	for (uint64_t i = start;; i++) {
		oc_array_meta_t m = meta1(CK, attrs);
		for (uint64_t k = 0; k < CK; k++) {
			crash_fill(&a, k, i);
			crash_fill(&b, k, i);
		}
		snprintf(attrs, sizeof attrs, "{\"i\": %llu}", (unsigned long long)i);
		if (oc_store_meta_set(s, "ca", &m) || oc_store_commit(s))
			_exit(3);
		if (write(fd, &i, sizeof i) != sizeof i)
			_exit(4);
	}
}

/* The single value the store holds, or 0 when it is mixed. */
static uint64_t crash_state(const char *path)
{
	oc_store_t *s = sopen(path, 0);
	struct view a, b;
	uint64_t v, ok = 1;
	if (!s)
		return 0;
	if (view_open(s, "ca", CK, &a) || view_open(s, "cb", CK, &b)) {
		oc_store_close(s);
		return 0;
	}
	v = blk_val(&a, 0);
	for (uint64_t k = 0; k < CK; k++)
		ok &= crash_is(&a, k, v) && crash_is(&b, k, v);
	if (attr_i(s, "ca") != v)
		ok = 0;
	if (oc_fileh_load(a.fh, 0, CK) || oc_fileh_load(b.fh, 0, CK))
		ok = 0; /* checksums */
	view_close(&a);
	view_close(&b);
	oc_store_close(s);
	return ok ? v : 0;
}

static void test_crash(const char *path)
{
	oc_store_t *s = sopen(path, OC_STORE_CREATE);
	oc_array_meta_t m = meta1(CK, "{\"i\": 2}");
	struct view a, b;
	unsigned long rounds = 24 / check_scale();
	uint64_t cur = 2, bad = 0, killed_after_commit = 0;
	oc_store_stats_t ss;

	if (rounds < 8)
		rounds = 8;
	CHECK(s, "open the crash store");
	if (!s)
		return;
	CHECK(!oc_store_create(s, "ca", &m) && !oc_store_create(s, "cb", &m),
	      "create the crash arrays");
	if (view_open(s, "ca", CK, &a) || view_open(s, "cb", CK, &b)) {
		CHECK(0, "view the crash arrays");
		return;
	}
	for (uint64_t k = 0; k < CK; k++) {
		crash_fill(&a, k, 2);
		crash_fill(&b, k, 2);
	}
	CHECK_EQ(oc_store_meta_set(s, "ca", &m), 0, "crash test: attrs");
	CHECK_EQ(oc_store_commit(s), 0, "crash test: first commit");
	view_close(&a);
	view_close(&b);
	oc_store_close(s);

	srand(12345);
	for (unsigned long r = 0; r < rounds; r++) {
		int p[2], status;
		uint64_t last = cur, x, got;
		pid_t pid;
		if (pipe(p))
			break;
		pid = check_fork();
		if (pid == 0) {
			close(p[0]);
			crash_child(path, cur + 1, p[1]);
		}
		close(p[1]);
		usleep((useconds_t)(2000 + rand() % (20000 * (int)check_scale())));
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		while (read(p[0], &x, sizeof x) == sizeof x)
			last = x;
		close(p[0]);
		got = crash_state(path);
		if (got != last && got != last + 1) {
			bad++;
			printf("# round %lu: store holds %llu, last commit %llu\n", r,
			       (unsigned long long)got, (unsigned long long)last);
		}
		if (WIFEXITED(status)) {
			printf("# round %lu: child exited %d\n", r, WEXITSTATUS(status));
			bad++;
		}
		killed_after_commit += last > cur;
		if (got)
			cur = got;
	}
	CHECK_EQ(bad, 0, "after every SIGKILL the store is the last or the in-flight commit");
	s = sopen(path, 0);
	if (s && !view_open(s, "ca", CK, &a)) {
		/* one more delta commit (cur + 1 odd) or whole (even) */
		uint64_t before_d, before_s, i = cur + 1;
		if (i % 2 == 0) { /* a whole commit first */
			for (uint64_t k = 0; k < CK; k++)
				crash_fill(&a, k, i);
			CHECK_EQ(oc_store_commit(s), 0, "crash store: commit after the kills");
			i++;
		}
		oc_store_stats(s, &ss);
		before_d = ss.delta_pages_written;
		before_s = ss.blocks_stored;
		for (uint64_t k = 0; k < CK; k++)
			crash_fill(&a, k, i);
		CHECK(crash_is(&a, 0, i), "crash store: delta state in memory");
		CHECK_EQ(oc_store_commit(s), 0, "crash store: a delta commit after the kills");
		oc_store_stats(s, &ss);
		CHECK(ss.delta_pages_written - before_d == 3 * CK &&
		      ss.blocks_stored == before_s, "crash test: odd commits are deltas");
		view_close(&a);
	}
	oc_store_close(s);
	CHECK(killed_after_commit > 0, "commits happened between kills (%llu rounds)",
	      (unsigned long long)killed_after_commit);
}

/* ---- corruption --------------------------------------------------------------- */

static void test_corrupt(const char *path, const char *copy)
{
	oc_store_t *s = sopen(path, 0);
	oc_fileh_t *fh;
	oc_file_t *f;
	char to[700];
	uint64_t off = 0;
	int fd, err, flags[3] = {0, OC_STORE_NOMAP, OC_STORE_NOVERIFY};

	if (!s || oc_store_array_fileh(s, "a", &fh)) {
		CHECK(0, "open the store and array a");
		oc_store_close(s);
		return;
	}
	f = oc_fileh_file(fh);
	CHECK_EQ(f->ops->mapblk(f, 1, &fd, &off), 0, "block 1 of a is mappable");
	oc_store_close(s);

	copy_store(path, copy, to, sizeof to);
	fd = open(to, O_RDWR);
	{
		unsigned char c;
		CHECK(pread(fd, &c, 1, (off_t)off + 1000) == 1, "read a byte");
		c ^= 0x5a;
		CHECK(pwrite(fd, &c, 1, (off_t)off + 1000) == 1, "flip it");
	}
	close(fd);

	for (int i = 0; i < 3; i++) {
		oc_store_stats_t ss;
		s = sopen(copy, flags[i]);
		if (!s || oc_store_array_fileh(s, "a", &fh)) {
			CHECK(0, "open the corrupt copy and array a");
			oc_store_close(s);
			return;
		}
		err = oc_fileh_load(fh, 1, 1);
		if (flags[i] == OC_STORE_NOVERIFY) {
			CHECK_EQ(err, 0, "unverified load returns the data");
		} else {
			CHECK(err == OC_ECORRUPT, "corrupt block: OC_ECORRUPT (%s): %d",
			      i ? "loadblk" : "mapblk", err);
			CHECK(strstr(oc_error_detail(), "array 'a' block 1") != NULL,
			      "the error names array 'a' block 1: %s",
			      oc_error_detail());
			oc_store_stats(s, &ss);
			CHECK_EQ(ss.corrupt, 1, "corruption counted");
		}
		CHECK_EQ(oc_fileh_load(fh, 2, 1), 0, "other blocks load");
		oc_store_close(s);
	}

	/* A data file gone: corrupt, named, and not made anew (a writable
	 * open made an empty one, and every block read as zeros). */
	CHECK_EQ(unlink(to), 0, "remove the copy's data file");
	for (int i = 0; i < 2; i++) {
		struct stat sb;
		err = oc_store_open(&s, copy, i ? OC_STORE_RDONLY : 0, ram);
		CHECK(err == OC_ECORRUPT && strstr(oc_error_detail(), "missing"),
		      "%s open without its data file: OC_ECORRUPT (%d: %s)",
		      i ? "a read-only" : "a writable", err, oc_error_detail());
		if (!err)
			oc_store_close(s);
		CHECK(stat(to, &sb) != 0, "no data file made");
	}
}

/* A sequential scan hands blocks to the engine's verifier thread (which
 * the reader helps when it catches up): a corrupt block anywhere in the
 * scan, in its last 4 KiB, is still reported, and only that block. */
#define SN 96 /* blocks of the scanned array */

static void test_corrupt_scan(const char *path, const char *copy)
{
	oc_store_t *s = sopen(path, 0);
	oc_array_meta_t m = meta1(SN, NULL);
	struct view v;
	uint64_t off[SN];
	oc_file_t *f;
	char to[700];
	const uint64_t bad[] = {1, 2, 40, SN - 1};

	if (!s || oc_store_create(s, "scan", &m) || view_open(s, "scan", SN, &v)) {
		CHECK(0, "scan array created");
		return;
	}
	for (uint64_t b = 0; b < SN; b++)
		fill(&v, b, 1000 + b);
	CHECK_EQ(oc_store_commit(s), 0, "scan array committed");
	f = oc_fileh_file(v.fh);
	for (uint64_t b = 0; b < SN; b++) {
		int fd;
		if (f->ops->mapblk(f, b, &fd, &off[b]))
			off[b] = UINT64_MAX;
	}
	view_close(&v);
	oc_store_close(s);

	for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
		oc_store_stats_t ss;
		oc_fileh_t *fh;
		uint64_t nbad = 0, wrong = 0;
		unsigned char c = 0;
		int fd;
		copy_store(path, copy, to, sizeof to);
		fd = open(to, O_RDWR);
		CHECK(off[bad[k]] != UINT64_MAX &&
		      pread(fd, &c, 1, (off_t)(off[bad[k]] + BS - 100)) == 1,
		      "read a byte of block %llu", (unsigned long long)bad[k]);
		c ^= 0x01;
		CHECK(pwrite(fd, &c, 1, (off_t)(off[bad[k]] + BS - 100)) == 1,
		      "flip a bit in its last 4 KiB");
		close(fd);

		s = sopen(copy, 0);
		if (!s || oc_store_array_fileh(s, "scan", &fh)) {
			CHECK(0, "open the corrupt copy's array");
			oc_store_close(s);
			return;
		}
		f = oc_fileh_file(fh);
		for (uint64_t b = 0; b < SN; b++) {
			uint64_t o;
			int err = f->ops->mapblk(f, b, &fd, &o);
			if (b == bad[k])
				nbad += err == OC_ECORRUPT;
			else
				wrong += err != 0;
		}
		oc_store_stats(s, &ss);
		CHECK(nbad == 1 && wrong == 0 && ss.corrupt == 1,
		      "scan with block %llu corrupt: it alone fails (%llu other "
		      "failures), %llu verified",
		      (unsigned long long)bad[k], (unsigned long long)wrong,
		      (unsigned long long)ss.verified);
		oc_store_close(s);
	}
}

/* ---- page deltas ----------------------------------------------------------- */

#define DN 32 /* blocks of the delta test's array */

/* Set page pg of block blk to a pattern of val, in the view and the model. */
static void page_set(struct view *v, uint64_t *model, uint64_t blk,
		     uint64_t pg, uint64_t val)
{
	for (uint64_t w = 0; w < PW; w++) {
		uint64_t i = blk * W + pg * PW + w;
		v->p[i] = model[i] = val * 1000 + w;
	}
}

static int same(struct view *v, const uint64_t *model, uint64_t nblk)
{
	return !memcmp(v->p, model, nblk * BS);
}

static off_t file_size(const char *dir, const char *name)
{
	char p[700];
	struct stat sb;
	snprintf(p, sizeof p, "%s/%s", dir, name);
	return stat(p, &sb) ? -1 : sb.st_size;
}

/* Entries of the deltas database (read with LMDB directly), -1 on error. */
static long delta_entries(const char *path)
{
	char p[700];
	MDB_env *env;
	MDB_txn *t = NULL;
	MDB_dbi d;
	MDB_stat ms;
	int rc;
	snprintf(p, sizeof p, "%s/index.mdb", path);
	mdb_env_create(&env);
	mdb_env_set_maxdbs(env, 8);
	mdb_env_set_mapsize(env, (size_t)256 << 20);
	rc = mdb_env_open(env, p, MDB_NOSUBDIR | MDB_RDONLY, 0644);
	rc = rc ? rc : mdb_txn_begin(env, NULL, MDB_RDONLY, &t);
	rc = rc ? rc : mdb_dbi_open(t, "deltas", 0, &d);
	rc = rc ? rc : mdb_stat(t, d, &ms);
	if (t)
		mdb_txn_abort(t);
	mdb_env_close(env);
	return rc ? -1 : (long)ms.ms_entries;
}

/* A new store at path with array name of DN blocks, viewed in v, every
 * page set (in model too) and committed: the store, or NULL (a failed
 * check, nothing left open).  what names the test in the checks. */
static oc_store_t *whole_store(const char *path, const char *name,
			       uint64_t *model, struct view *v, const char *what)
{
	oc_store_t *s = sopen(path, OC_STORE_CREATE);
	oc_array_meta_t m = meta1(DN, NULL);
	int ok = s && model && !oc_store_create(s, name, &m) &&
		 !view_open(s, name, DN, v);

	CHECK(ok, "%s: create a store", what);
	if (!ok) {
		if (s)
			oc_store_close(s);
		return NULL;
	}
	for (uint64_t b = 0; b < DN; b++)
		for (uint64_t pg = 0; pg < BS / 4096; pg++)
			page_set(v, model, b, pg, b * 100 + pg + 1);
	ok = oc_store_commit(s);
	CHECK(ok == 0, "%s: commit whole blocks (%d)", what, ok);
	return s;
}

static void test_deltas(const char *path, const char *copy)
{
	oc_store_stats_t s0, ss;
	uint64_t *model = calloc(DN, BS), off4 = 0, off2 = 0;
	off_t idx0;
	struct view v;
	oc_store_t *s = whole_store(path, "d", model, &v, "delta test");
	oc_file_t *f;
	int fd, ok, status;
	pid_t pid;

	if (!s)
		goto out;
	f = oc_fileh_file(v.fh);
	CHECK_EQ(f->ops->mapblk(f, 4, &fd, &off4), 0, "block 4 is mapped");

	/* one page changed in each block: DN delta pages, no data growth */
	oc_store_stats(s, &s0);
	idx0 = file_size(path, "index.mdb");
	for (uint64_t b = 0; b < DN; b++)
		page_set(&v, model, b, 5, 7000 + b);
	CHECK_EQ(oc_store_commit(s), 0, "commit one page per block");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.delta_pages_written - s0.delta_pages_written, DN, "one delta page per block");
	CHECK_EQ(ss.bytes_written - s0.bytes_written, DN * 4096, "one page of bytes per block written");
	CHECK_EQ(ss.blocks_stored, s0.blocks_stored, "no block written whole");
	CHECK_EQ(ss.blocks_folded, 0, "nothing folded");
	CHECK(ss.data_size - s0.data_size <= ARENA,
	      "data grew by one arena at most: %llu KiB",
	      (unsigned long long)(ss.data_size - s0.data_size) >> 10);
	CHECK(file_size(path, "index.mdb") - idx0 <= (off_t)(DN / 2) * 4096,
	      "index grew by less than half a page per delta page (the runs "
	      "are in the data file): %lld bytes",
	      (long long)(file_size(path, "index.mdb") - idx0));
	CHECK(same(&v, model, DN), "data as written after the commit");
	CHECK_EQ(f->ops->mapblk(f, 4, &fd, &off4) , OC_NOMAP, "a block with deltas is not mapped");

	/* abort after delta commits */
	page_set(&v, model, 0, 7, 1); /* the model is restored below */
	page_set(&v, model, 1, 5, 2);
	page_set(&v, model, 2, 0, 3);
	CHECK_EQ(oc_store_abort(s), 0, "abort small changes");
	page_set(&v, model, 0, 7, 0 * 100 + 7 + 1);
	page_set(&v, model, 1, 5, 7000 + 1);
	page_set(&v, model, 2, 0, 2 * 100 + 0 + 1);
	CHECK(same(&v, model, DN), "abort restores the committed state");

	/* repeated small changes to block 2 fold after a quarter (4 pages) */
	ok = 1;
	for (uint64_t pg = 0; pg < 3; pg++) {
		page_set(&v, model, 2, pg, 9000 + pg);
		ok &= oc_store_commit(s) == 0;
	}
	oc_store_stats(s, &ss);
	CHECK(ok && ss.blocks_folded == 0 && ss.blocks_stored == s0.blocks_stored,
	      "4 delta pages in block 2: not folded");
	page_set(&v, model, 2, 10, 9010);
	CHECK_EQ(oc_store_commit(s), 0, "a fifth page");
	oc_store_stats(s, &ss);
	CHECK(ss.blocks_folded == 1 && ss.blocks_stored == s0.blocks_stored + 1,
	      "block 2 folded into a fresh extent");
	CHECK_EQ(f->ops->mapblk(f, 2, &fd, &off2), 0, "a folded block is mapped again");
	CHECK(same(&v, model, DN), "data after the fold");
	/* an all-zero block with deltas is deleted with them */
	memset(v.p + 3 * W, 0, BS);
	memset(model + 3 * W, 0, BS);
	CHECK_EQ(oc_store_commit(s), 0, "zero block 3");
	view_close(&v);
	CHECK_EQ(oc_store_close(s), 0, "close");
	CHECK_EQ(delta_entries(path), DN - 2, "deltas of the folded and zeroed blocks dropped");

	/* reopen: every block reads back; delta blocks are loaded */
	s = sopen(path, 0);
	if (!s || view_open(s, "d", DN, &v))
		goto out;
	CHECK(same(&v, model, DN), "data after reopen");
	oc_store_stats(s, &ss);
	CHECK(ss.loads == DN - 2 && ss.maps == 1 && ss.holes >= 1 &&
	      ss.verified == DN - 1 && ss.corrupt == 0,
	      "reopen: %llu loads, %llu maps, %llu holes, %llu verified",
	      (unsigned long long)ss.loads, (unsigned long long)ss.maps, (unsigned long long)ss.holes,
	      (unsigned long long)ss.verified);

	/* another process reads the same */
	pid = check_fork();
	if (pid == 0) {
		oc_store_t *c = child_open(path);
		struct view cv;
		if (!c || view_open(c, "d", DN, &cv))
			_exit(1);
		ok = same(&cv, model, DN);
		view_close(&cv);
		oc_store_close(c);
		_exit(ok ? 0 : 2);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0, "another process reads the same data");
	view_close(&v);
	oc_store_close(s);

	/* a corrupt base extent under deltas is caught by the checksum of
	 * the assembled block (byte 1000: page 0, not a delta page) */
	{
		char to[700];
		unsigned char c = 0;
		oc_fileh_t *fh;
		copy_store(path, copy, to, sizeof to);
		fd = open(to, O_RDWR);
		CHECK(fd >= 0 && pread(fd, &c, 1, (off_t)off4 + 1000) == 1, "read a byte of block 4");
		c ^= 0x5a;
		CHECK(pwrite(fd, &c, 1, (off_t)off4 + 1000) == 1, "flip it");
		close(fd);
		s = sopen(copy, 0);
		if (s && !oc_store_array_fileh(s, "d", &fh)) {
			CHECK_EQ(oc_fileh_load(fh, 4, 1), OC_ECORRUPT,
				 "corrupt extent under deltas: OC_ECORRUPT");
			CHECK_EQ(oc_fileh_load(fh, 5, 1), 0, "other delta blocks load");
			/* the same for a write (base + changed granules) */
			oc_file_t *f = oc_fileh_file(fh);
			unsigned char *b = malloc(BS);
			uint32_t ch = 0;
			uint64_t o = 0;
			int fd2;
			CHECK(b != NULL, "a block buffer");
			if (b) {
				int r;
				CHECK_EQ(f->ops->mapblk_patched(f, 4, &fd2, &o, b, &ch,
								4096),
					 OC_ECORRUPT, "for a write too: OC_ECORRUPT");
				r = f->ops->mapblk_patched(f, 6, &fd2, &o, b, &ch, 4096);
				CHECK(r == 0 && ch == 1u << 5 &&
				      !memcmp(b + 5 * 4096, model + 6 * W + 5 * PW,
					      4096),
				      "another block with deltas for a write: its "
				      "base and its changed granule (%#x)", ch);
				CHECK_EQ(f->ops->mapblk_patched(f, 6, &fd2, &o, b, &ch,
								8192),
					 OC_NOMAP,
					 "other granules than the store's: OC_NOMAP");
				free(b);
			}
		}
		oc_store_close(s);
	}

	/* deleting the array deletes its deltas */
	s = sopen(path, 0);
	if (s) {
		CHECK_EQ(oc_store_delete(s, "d"), 0, "delete the delta array");
		CHECK_EQ(oc_store_commit(s), 0, "commit the delete");
		oc_store_close(s);
		CHECK_EQ(delta_entries(path), 0, "its deltas are gone");
	}
out:
	free(model);
}


/* ---- where delta runs live (format 4) -------------------------------------- */

static uint64_t le64(const void *p)
{
	const unsigned char *b = p;
	uint64_t x = 0;
	for (int i = 7; i >= 0; i--)
		x = x << 8 | b[i];
	return x;
}

static uint64_t be64(const void *p)
{
	const unsigned char *b = p;
	uint64_t x = 0;
	for (int i = 0; i < 8; i++)
		x = x << 8 | b[i];
	return x;
}

/* What the index says of delta runs: pages of runs in the data file and
 * in records (version 3), live bytes the arenas database counts, arenas,
 * the format version, and where block blk's first run in the data file
 * is (0: none). */
struct dsum {
	uint64_t ext_pages, ext_runs, inline_pages, live, arenas, version,
		blk_off;
};

static int delta_sum(const char *path, uint64_t blk, struct dsum *d)
{
	MDB_txn *t = NULL;
	MDB_env *env = idx_open(path, 1, &t);
	MDB_dbi dd, da, dm;
	MDB_cursor *c;
	MDB_val k, v;
	int rc;

	memset(d, 0, sizeof *d);
	if (!env)
		return -1;
	rc = mdb_dbi_open(t, "deltas", 0, &dd);
	rc = rc ? rc : mdb_cursor_open(t, dd, &c);
	while (!rc && !mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (v.mv_size != 16) {
			d->inline_pages += v.mv_size / 4096;
			continue;
		}
		d->ext_pages += le64((char *)v.mv_data + 8);
		d->ext_runs++;
		if (!d->blk_off && be64((char *)k.mv_data + 8) == blk)
			d->blk_off = le64(v.mv_data);
	}
	if (!rc)
		mdb_cursor_close(c);
	if (!rc && mdb_dbi_open(t, "arenas", 0, &da) == 0 &&
	    mdb_cursor_open(t, da, &c) == 0) {
		while (!mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
			d->live += le64(v.mv_data);
			d->arenas++;
		}
		mdb_cursor_close(c);
	}
	k.mv_size = 6;
	k.mv_data = "format";
	rc = rc ? rc : mdb_dbi_open(t, "meta", 0, &dm);
	rc = rc ? rc : mdb_get(t, dm, &k, &v);
	if (!rc)
		d->version = le64((char *)v.mv_data + 16) & 0xffffffffu;
	mdb_txn_abort(t);
	mdb_env_close(env);
	return rc ? -1 : 0;
}

/* Close the store *s (and v, unless NULL; *s becomes NULL) and then sum
 * its deltas: LMDB must not have the index open twice in one process.
 * Whether delta_sum succeeded. */
static bool close_sum(const char *path, oc_store_t **s, struct view *v,
		      uint64_t blk, struct dsum *d)
{
	if (v)
		view_close(v);
	if (*s)
		oc_store_close(*s);
	*s = NULL;
	return delta_sum(path, blk, d) == 0;
}

/* Turn the store at path into what version 3 wrote: delta runs in their
 * records, no arenas.  0 or -1. */
static int to_version3(const char *path)
{
	char p[700];
	MDB_txn *t = NULL;
	MDB_env *env = idx_open(path, 0, &t);
	MDB_dbi dd, da, dm;
	MDB_cursor *c;
	MDB_val k, v, a = {5, "arena"};
	unsigned char *buf = malloc(ARENA);
	struct {
		unsigned char k[24], v[16];
	} rec[256];
	size_t nrec = 0;
	int fd, rc;

	snprintf(p, sizeof p, "%s/data", path);
	fd = open(p, O_RDONLY);
	if (!env || !buf || fd < 0) {
		rc = -1;
		goto out;
	}
	/* the records first, then each rewritten (no cursor under puts) */
	rc = mdb_dbi_open(t, "deltas", 0, &dd);
	rc = rc ? rc : mdb_cursor_open(t, dd, &c);
	while (!rc && nrec < 256 && !mdb_cursor_get(c, &k, &v, MDB_NEXT))
		if (v.mv_size == 16 && k.mv_size == 24) {
			memcpy(rec[nrec].k, k.mv_data, 24);
			memcpy(rec[nrec++].v, v.mv_data, 16);
		}
	if (!rc)
		mdb_cursor_close(c);
	for (size_t i = 0; !rc && i < nrec; i++) {
		uint64_t n = le64(rec[i].v + 8) * 4096;
		if (n > ARENA || pread(fd, buf, n, (off_t)le64(rec[i].v)) != (ssize_t)n) {
			rc = -1;
			break;
		}
		k.mv_size = 24;
		k.mv_data = rec[i].k;
		v.mv_size = n;
		v.mv_data = buf;
		rc = mdb_put(t, dd, &k, &v, 0);
	}
	rc = rc ? rc : mdb_dbi_open(t, "arenas", 0, &da);
	rc = rc ? rc : mdb_drop(t, da, 1);
	rc = rc ? rc : mdb_dbi_open(t, "meta", 0, &dm);
	if (!rc && mdb_del(t, dm, &a, NULL) == MDB_NOTFOUND)
		rc = -1;
	rc = rc ? rc : format_set(t, 3);
	rc = rc ? rc : mdb_txn_commit(t);
	t = NULL;
out:
	if (t)
		mdb_txn_abort(t);
	if (env)
		mdb_env_close(env);
	if (fd >= 0)
		close(fd);
	free(buf);
	return rc ? -1 : 0;
}

/* Delta runs live in the data file, in arenas whose space comes back when
 * nothing in them lives and no snapshot can read them; runs of version 3
 * (in the records) are still read and replaced. */
static void test_delta_space(const char *path, const char *copy)
{
	oc_store_stats_t s0, ss;
	uint64_t *model = calloc(DN, BS), r, b, grew;
	struct view v;
	oc_store_t *s = whole_store(path, "e", model, &v, "delta space");
	struct dsum d;
	int ok, status, p1[2] = {-1, -1}, p2[2] = {-1, -1};
	char to[700], x;
	pid_t pid;

	if (!s)
		goto out;

	/* 160 rounds of one page per block: 10 arenas' worth of runs (each
	 * round replaces the last), in at most 3 arenas of space */
	oc_store_stats(s, &s0);
	ok = 1;
	for (r = 0; r < 160; r++) {
		for (b = 0; b < DN; b++)
			page_set(&v, model, b, 1, 5000 + r * 100 + b);
		ok &= oc_store_commit(s) == 0;
	}
	oc_store_stats(s, &ss);
	grew = ss.data_size - s0.data_size;
	CHECK(ok && ss.blocks_stored == s0.blocks_stored &&
	      ss.delta_pages_written - s0.delta_pages_written == 160 * DN,
	      "160 rounds of delta commits, nothing written whole");
	CHECK(grew <= 3 * ARENA, "the data grew by %llu KiB for %u KiB of runs: "
	      "arenas are reused", (unsigned long long)grew >> 10,
	      160 * DN * 4);
	CHECK(same(&v, model, DN), "delta space: data after the rounds");
	ok = close_sum(path, &s, &v, 4, &d);
	CHECK(ok && d.ext_pages == DN && d.inline_pages == 0 &&
	      d.live == DN * 4096 && d.blk_off != 0 && d.version == 4,
	      "runs in the data file, the arenas count them: %llu pages, %llu "
	      "live bytes in %llu arenas, version %llu",
	      (unsigned long long)d.ext_pages, (unsigned long long)d.live,
	      (unsigned long long)d.arenas, (unsigned long long)d.version);
	s = sopen(path, 0);
	if (!s || view_open(s, "e", DN, &v))
		goto out;

	/* A snapshot that began before the rounds still reads its runs: their
	 * arenas are not reused under it. */
	if (pipe(p1) || pipe(p2)) {
		CHECK(0, "pipes");
		goto out;
	}
	pid = check_fork();
	if (pid == 0) {
		oc_store_t *c = child_open(path);
		struct view cv;
		close(p1[0]);
		close(p2[1]);
		if (!c || write(p1[1], "o", 1) != 1 || read(p2[0], &x, 1) != 1 ||
		    view_open(c, "e", DN, &cv))
			_exit(1);
		ok = same(&cv, model, DN); /* the model as it was at fork */
		view_close(&cv);
		oc_store_close(c);
		_exit(ok ? 0 : 2);
	}
	close(p1[1]);
	close(p2[0]);
	ok = pid > 0 && read(p1[0], &x, 1) == 1;
	for (r = 0; ok && r < 64; r++) { /* 4 arenas' worth */
		for (b = 0; b < DN; b++)
			page_set(&v, model, b, 1, 90000 + r * 100 + b);
		ok &= oc_store_commit(s) == 0;
	}
	ok &= write(p2[1], "g", 1) == 1;
	CHECK(ok && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0,
	      "a reader's old snapshot reads its delta runs after 64 more rounds");
	close(p1[0]);
	close(p2[1]);

	/* a corrupt delta run is caught by the block's checksums */
	ok = close_sum(path, &s, &v, 4, &d);
	CHECK(ok && d.blk_off, "where block 4's run is");
	copy_store(path, copy, to, sizeof to);
	{
		int fd = open(to, O_RDWR);
		unsigned char c = 0;
		oc_store_t *cs;
		oc_fileh_t *fh;
		CHECK(fd >= 0 && pread(fd, &c, 1, (off_t)d.blk_off + 100) == 1,
		      "read a byte of block 4's delta run");
		c ^= 0xa5;
		CHECK(fd >= 0 && pwrite(fd, &c, 1, (off_t)d.blk_off + 100) == 1,
		      "flip it");
		if (fd >= 0)
			close(fd);
		cs = sopen(copy, 0);
		if (cs && !oc_store_array_fileh(cs, "e", &fh)) {
			CHECK_EQ(oc_fileh_load(fh, 4, 1), OC_ECORRUPT,
				 "corrupt delta run: OC_ECORRUPT");
			CHECK_EQ(oc_fileh_load(fh, 5, 1), 0, "other blocks load");
		}
		oc_store_close(cs);
	}

	/* a store of version 3 (runs in the records) reads and is written */
	copy_store(path, copy, to, sizeof to);
	CHECK_EQ(to_version3(copy), 0, "made a version 3 store");
	ok = delta_sum(copy, 4, &d) == 0;
	CHECK(ok && d.inline_pages == DN && d.ext_pages == 0 && d.version == 3,
	      "its runs are in the records");
	s = sopen(copy, 0);
	if (!s || view_open(s, "e", DN, &v))
		goto out;
	CHECK(same(&v, model, DN), "version 3: data read");
	for (b = 0; b < DN; b++)
		page_set(&v, model, b, 2, 70000 + b); /* next to the old run */
	CHECK_EQ(oc_store_commit(s), 0, "version 3: a delta commit");
	CHECK(reopen(copy, &s, &v, "e", DN) == 0 && same(&v, model, DN),
	      "version 3: data after the commit and a reopen");
	ok = close_sum(copy, &s, &v, 4, &d);
	CHECK(ok && d.inline_pages == 0 && d.ext_pages == 2 * DN &&
	      d.live == 2 * DN * 4096 && d.version == 4,
	      "old runs replaced by runs in the data file, version 4");

	/* deleting the array frees its arenas */
	s = sopen(copy, 0);
	CHECK(s && oc_store_delete(s, "e") == 0 && oc_store_commit(s) == 0,
	      "delete the array");
	ok = close_sum(copy, &s, NULL, 4, &d);
	CHECK(ok && d.ext_pages == 0 && d.live == 0 && d.arenas <= 1,
	      "no runs, no arenas left but the current one (%llu)",
	      (unsigned long long)d.arenas);
out:
	if (s)
		oc_store_close(s);
	free(model);
}

/* The current arena is the store's, not a process's: a process that wrote
 * runs, then commits without runs after another process wrote some, must
 * not put back where it left the arena (the next runs would overwrite the
 * other process's). */
static void test_arena_handoff(const char *path)
{
	oc_array_meta_t m1 = meta1(1, "{\"n\": 1}");
	uint64_t *model = calloc(DN, BS), b;
	struct view v;
	oc_store_t *s = whole_store(path, "h", model, &v, "arena handoff");
	struct dsum d;
	int ok, status;
	pid_t pid;

	if (!s)
		goto out;
	CHECK(oc_store_create(s, "m", &m1) == 0 && oc_store_commit(s) == 0,
	      "arena handoff: an array for metadata commits");
	for (b = 0; b < DN; b++)
		page_set(&v, model, b, 1, 3000 + b);
	CHECK_EQ(oc_store_commit(s), 0, "runs by this process");

	/* another process writes runs (page 3 of the first half) */
	for (b = 0; b < DN / 2; b++) {
		for (uint64_t w = 0; w < PW; w++)
			model[b * W + 3 * PW + w] = (4000 + b) * 1000 + w;
	}
	pid = check_fork();
	if (pid == 0) {
		oc_store_t *c = child_open(path);
		struct view cv;
		if (!c || view_open(c, "h", DN, &cv))
			_exit(1);
		for (b = 0; b < DN / 2; b++)
			page_set(&cv, model, b, 3, 4000 + b);
		ok = oc_store_commit(c) == 0;
		view_close(&cv);
		oc_store_close(c);
		_exit(ok ? 0 : 2);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0, "another process commits runs");

	/* a commit without runs here, then runs (page 4 of the second half) */
	m1.attrs = (char *)"{\"n\": 2}";
	CHECK(oc_store_meta_set(s, "m", &m1) == 0 && oc_store_commit(s) == 0,
	      "a commit of metadata only");
	for (b = DN / 2; b < DN; b++)
		page_set(&v, model, b, 4, 5000 + b);
	CHECK_EQ(oc_store_commit(s), 0, "runs by this process again");
	CHECK(reopen(path, &s, &v, "h", DN) == 0, "reopen");
	if (!s)
		goto out;
	ok = 1;
	for (b = 0; b < DN; b++)
		ok &= oc_fileh_load(v.fh, b, 1) == 0;
	CHECK(ok && same(&v, model, DN),
	      "both processes' runs read back (none overwritten)");
	ok = close_sum(path, &s, &v, 0, &d);
	CHECK(ok && d.ext_pages == 2 * DN && d.live == 2 * DN * 4096,
	      "arenas count every run: %llu pages, %llu live bytes",
	      (unsigned long long)d.ext_pages, (unsigned long long)d.live);
out:
	if (s)
		oc_store_close(s);
	free(model);
}

/* Runs that cross from one arena into the next are stored in two pieces
 * and read back whole; a fold and a zeroed block free their runs. */
static void test_arena_split(const char *path)
{
	uint64_t *model = calloc(DN, BS), b, r;
	struct view v;
	oc_store_t *s = whole_store(path, "x", model, &v, "arena split");
	struct dsum d;
	int ok = 1;

	if (!s)
		goto out;
	/* runs of 3 pages (12 KiB): 2 MiB is no multiple of them, and 6
	 * rounds of 32 fill more than one arena */
	for (r = 0; r < 6; r++) {
		for (b = 0; b < DN; b++)
			for (uint64_t pg = 1; pg < 4; pg++)
				page_set(&v, model, b, pg, 6000 + r * 100 + b);
		ok &= oc_store_commit(s) == 0;
	}
	CHECK(ok, "arena split: 6 rounds of 3-page runs");
	CHECK(reopen(path, &s, &v, "x", DN) == 0, "arena split: reopen");
	if (!s)
		goto out;
	ok = 1;
	for (b = 0; b < DN; b++)
		ok &= oc_fileh_load(v.fh, b, 1) == 0;
	CHECK(ok && same(&v, model, DN), "runs read back whole");
	ok = close_sum(path, &s, &v, 0, &d);
	CHECK(ok && d.ext_pages == 3 * DN && d.live == 3 * DN * 4096 &&
	      d.ext_runs > DN,
	      "3 pages per block in the arenas, a run in two pieces: %llu pages "
	      "in %llu records, %llu live bytes", (unsigned long long)d.ext_pages,
	      (unsigned long long)d.ext_runs, (unsigned long long)d.live);

	/* block 0 folds (5 of 16 pages), block 1 becomes zeros */
	s = sopen(path, 0);
	if (!s || view_open(s, "x", DN, &v))
		goto out;
	page_set(&v, model, 0, 8, 1);
	page_set(&v, model, 0, 12, 2);
	memset(v.p + W, 0, BS);
	memset(model + W, 0, BS);
	CHECK_EQ(oc_store_commit(s), 0, "fold block 0, zero block 1");
	CHECK(reopen(path, &s, &v, "x", DN) == 0 && same(&v, model, DN),
	      "arena split: data after the fold");
	ok = close_sum(path, &s, &v, 0, &d);
	CHECK(ok && d.ext_pages == 3 * (DN - 2) && d.live == 3 * (DN - 2) * 4096,
	      "the fold and the zeroed block freed their runs: %llu pages, %llu "
	      "live bytes", (unsigned long long)d.ext_pages,
	      (unsigned long long)d.live);
out:
	if (s)
		oc_store_close(s);
	free(model);
}

/* ---- partial copy-on-write through the store ---------------------------------- */

/* Array "q" of test_partial after its three commits: words i + 1, but 8
 * in page 3 of block 0 and 9 in pages 2-4 of block 1. */
static int q_ok(struct view *q)
{
	int ok = 1;
	for (uint64_t i = 0; i < 2 * W; i++)
		ok &= q->p[i] == (i >= 3 * PW && i < 4 * PW ? 8 :
				  i >= W + 2 * PW && i < W + 5 * PW ? 9 : i + 1);
	return ok;
}

/* Blocks mapped from the store and then written here and there are kept
 * as patched pages (their base plus the granules written); commit stores
 * only the granules' changed pages, and hashes only those granules. */
static void test_partial(const char *path)
{
	oc_store_t *s = sopen(path, OC_STORE_CREATE);
	oc_array_meta_t m = meta1(DN, NULL);
	oc_store_stats_t s0, ss;
	oc_ram_stats_t r0, rs;
	uint64_t *model = calloc(DN, BS);
	struct view v = {0};
	int ok;

	CHECK(s && model, "partial test: create a store");
	if (!s || !model || oc_store_create(s, "p", &m) || view_open(s, "p", DN, &v))
		goto out;
	for (uint64_t b = 0; b < DN - 1; b++)
		for (uint64_t pg = 0; pg < BS / 4096; pg++)
			page_set(&v, model, b, pg, b * 100 + pg + 1);
	/* the last block holds data in its first page only */
	page_set(&v, model, DN - 1, 0, 4242);
	CHECK_EQ(oc_store_commit(s), 0, "commit");

	/* reopened: the blocks are mapped from the store, then patched */
	if (reopen(path, &s, &v, "p", DN))
		goto out;
	CHECK(same(&v, model, DN), "reopened: the data");
	oc_store_stats(s, &s0);
	oc_ram_stats(ram, &r0);
	for (uint64_t b = 0; b < DN - 1; b++)
		page_set(&v, model, b, 3, 5000 + b);
	page_set(&v, model, 7, 9, 5555);          /* a second granule of block 7 */
	for (uint64_t w = 0; w < PW; w++)         /* block 7, page 11: unchanged */
		v.p[7 * W + 11 * PW + w] = model[7 * W + 11 * PW + w];
	for (uint64_t w = 0; w < PW; w++)         /* the last block: zeros now */
		v.p[(DN - 1) * W + w] = model[(DN - 1) * W + w] = 0;
	oc_ram_stats(ram, &rs);
	CHECK(rs.patched_pages == DN && rs.granule_copies - r0.granule_copies == DN + 2 &&
	      rs.cow_copies == r0.cow_copies,
	      "%u blocks patched, %u granules copied (%llu, %llu)", DN, DN + 2,
	      (unsigned long long)rs.patched_pages,
	      (unsigned long long)(rs.granule_copies - r0.granule_copies));
	CHECK_EQ(oc_store_commit(s), 0, "commit the patched blocks");
	oc_store_stats(s, &ss);
	CHECK_EQ(ss.delta_pages_written - s0.delta_pages_written, DN,
		 "one delta page per changed page (the unchanged write is not one)");
	CHECK_EQ(ss.bytes_written - s0.bytes_written, DN * 4096, "that many bytes");
	CHECK(ss.blocks_stored == s0.blocks_stored && ss.blocks_folded == 0,
	      "no block written whole");
	CHECK_EQ(ss.blocks_zeroed - s0.blocks_zeroed, 1,
		 "the block that became zeros through one granule is deleted");
	oc_ram_stats(ram, &rs);
	CHECK(rs.patched_pages == 0 && rs.dirty_pages == 0, "nothing dirty after commit");
	CHECK(same(&v, model, DN), "the data after commit");

	/* reopened: every block verifies against its granule checksums */
	if (reopen(path, &s, &v, "p", DN))
		goto out;
	ok = same(&v, model, DN);
	oc_store_stats(s, &ss);
	CHECK(ok && ss.corrupt == 0 && ss.verified == DN - 1 && ss.holes >= 1,
	      "reopened: data, %llu verified, %llu holes",
	      (unsigned long long)ss.verified, (unsigned long long)ss.holes);

	/* Writes to blocks stored with deltas (not read before): only their
	 * changed granules come to RAM (patched pages), not whole blocks. */
	if (reopen(path, &s, &v, "p", DN))
		goto out;
	oc_store_stats(s, &s0);
	oc_ram_stats(ram, &r0);
	for (uint64_t b = 0; b < DN - 1; b++)
		page_set(&v, model, b, 12, 7000 + b);
	oc_ram_stats(ram, &rs);
	if (_oc_os_under_valgrind()) {
		/* Its faults carry no write bit: a first touch is taken for
		 * a read, which loads the whole block. */
		CHECK(rs.patch_loads == r0.patch_loads && rs.dirty_pages == DN - 1,
		      "valgrind: writes to %u blocks with deltas load them whole",
		      DN - 1);
	} else {
		CHECK(rs.patch_loads - r0.patch_loads == DN - 1 &&
		      rs.patched_pages == DN - 1 && rs.cow_copies == r0.cow_copies &&
		      rs.patch_bytes == (2 * (DN - 1) + 1) * 4096ull,
		      "writes to %u blocks with deltas: %llu patched loads, %llu "
		      "patched pages, %llu granule bytes (their deltas + the write)",
		      DN - 1, (unsigned long long)(rs.patch_loads - r0.patch_loads),
		      (unsigned long long)rs.patched_pages,
		      (unsigned long long)rs.patch_bytes);
	}
	CHECK(same(&v, model, DN), "they show deltas and writes");
	CHECK_EQ(oc_store_commit(s), 0, "commit them");
	oc_store_stats(s, &ss);
	CHECK(ss.delta_pages_written - s0.delta_pages_written == DN - 1 &&
	      ss.blocks_stored == s0.blocks_stored,
	      "one delta page more per block (%llu), no block written whole",
	      (unsigned long long)(ss.delta_pages_written - s0.delta_pages_written));
	CHECK(same(&v, model, DN), "the data after that commit");
	/* One commit with a block with deltas (page 3), then a block without
	 * any whose changed pages (2-4) span where the first one's delta
	 * run starts: the second must not see the first one's runs. */
	{
		oc_array_meta_t m2 = meta1(2, NULL);
		struct view q = {0};
		int err = oc_store_create(s, "q", &m2);
		if (!err)
			err = view_open(s, "q", 2, &q);
		for (uint64_t i = 0; !err && i < 2 * W; i++)
			q.p[i] = i + 1;
		if (!err)
			err = oc_store_commit(s);
		for (uint64_t i = 3 * PW; !err && i < 4 * PW; i++)
			q.p[i] = 7;
		if (!err)
			err = oc_store_commit(s);
		for (uint64_t i = 3 * PW; !err && i < 4 * PW; i++)
			q.p[i] = 8;
		for (uint64_t i = W + 2 * PW; !err && i < W + 5 * PW; i++)
			q.p[i] = 9;
		if (!err)
			err = oc_store_commit(s);
		CHECK(!err, "deltas over deltas next to a block without: %s",
		      oc_strerror(err));
		if (!err)
			CHECK(q_ok(&q), "and both blocks hold their data");
		if (q.vma)
			view_close(&q);
	}
	if (reopen(path, &s, &v, "p", DN))
		goto out;
	ok = same(&v, model, DN);
	{
		struct view q = {0};
		ok &= !view_open(s, "q", 2, &q) && q_ok(&q);
		if (q.vma)
			view_close(&q);
	}
	oc_store_stats(s, &ss);
	CHECK(ok && ss.corrupt == 0, "reopened: the data of both arrays, "
	      "verified");
	view_close(&v);
	oc_store_close(s);
out:
	free(model);
}

/* ---- bad input ----------------------------------------------------------------- */

/* Make the file at path hold text (a user's file in the way); whether it
 * does. */
static bool put_file(const char *path, const char *text)
{
	int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
	bool ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text);

	if (fd >= 0)
		close(fd);
	return ok;
}

static void test_bad_input(const char *path)
{
	char p[600], q[600];
	oc_store_t *s, *s2;
	oc_array_meta_t m = meta1(2, NULL), g;
	struct view a;
	int fd;

	path_of(p, sizeof p, "plainfile");
	CHECK(put_file(p, "hello world"), "a random file");
	CHECK_EQ(oc_store_open(&s, p, 0, ram), OC_ENOTSTORE, "a file: ENOTSTORE");
	CHECK_EQ(oc_store_open(&s, p, OC_STORE_CREATE, ram), OC_ENOTSTORE,
		 "a file with CREATE: ENOTSTORE");
	path_of(p, sizeof p, "emptydir");
	mkdir(p, 0755);
	CHECK_EQ(oc_store_open(&s, p, 0, ram), OC_ENOTSTORE, "an empty directory: ENOTSTORE");
	path_of(q, sizeof q, "emptydir/notes.txt");
	CHECK(put_file(q, "mine"), "a user's file in a directory");
	CHECK_EQ(oc_store_open(&s, p, OC_STORE_CREATE, ram), OC_ENOTSTORE,
		 "CREATE among other files: ENOTSTORE");
	path_of(q, sizeof q, "emptydir/index.mdb");
	CHECK(access(q, F_OK) != 0, "and nothing made there");
	path_of(q, sizeof q, "emptydir/notes.txt");
	unlink(q);
	path_of(q, sizeof q, "emptydir/data");
	CHECK(put_file(q, "mine"), "a user's file named data");
	CHECK_EQ(oc_store_open(&s, p, OC_STORE_CREATE, ram), OC_ENOTSTORE,
		 "CREATE next to it: ENOTSTORE (it would become the data file)");
	CHECK(truncate(q, 0) == 0, "empty it");
	s = NULL;
	CHECK_EQ(oc_store_open(&s, p, OC_STORE_CREATE, ram), 0,
		 "CREATE where only an empty data file is");
	oc_store_close(s);
	path_of(p, sizeof p, "missing");
	CHECK_EQ(oc_store_open(&s, p, 0, ram), -ENOENT, "missing: ENOENT");
	CHECK_EQ(oc_store_open(&s, p, OC_STORE_RDONLY | OC_STORE_CREATE, ram), -EINVAL,
		 "RDONLY|CREATE: EINVAL");
	path_of(p, sizeof p, "garbage");
	mkdir(p, 0755);
	path_of(q, sizeof q, "garbage/index.mdb");
	fd = open(q, O_CREAT | O_WRONLY, 0644);
	for (int i = 0; i < 64; i++)
		if (write(fd, "garbage garbage garbage garbage garbage garbage garbage garbage ", 64) != 64)
			printf("# short write\n");
	close(fd);
	CHECK_EQ(oc_store_open(&s, p, OC_STORE_CREATE, ram), OC_ENOTSTORE, "garbage index: ENOTSTORE");

	/* a newer format version */
	path_of(p, sizeof p, "newer");
	s = sopen(p, OC_STORE_CREATE);
	CHECK(s, "create a store to make newer");
	oc_store_close(s);
	CHECK_EQ(bump_format(p), 0, "bump the format version");
	s = NULL;
	CHECK_EQ(oc_store_open(&s, p, 0, ram), OC_EVERSION, "newer version: EVERSION");
	oc_store_close(s);

	/* names and metadata */
	s = sopen(path, 0);
	if (!s)
		return;
	CHECK_EQ(oc_store_open(&s2, path, 0, ram), -EBUSY, "second open in one process: EBUSY");
	CHECK_EQ(oc_store_create(s, "", &m), -EINVAL, "empty name");
	CHECK_EQ(oc_store_create(s, "a\nb", &m), -EINVAL, "control character in name");
	memset(q, 'x', 300);
	q[300] = 0;
	CHECK_EQ(oc_store_create(s, q, &m), -EINVAL, "name too long");
	CHECK_EQ(oc_store_create(s, "ünïcode/é", &m), 0, "odd but valid name");
	g = m;
	g.ndim = 33;
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL, "ndim 33");
	g = m;
	g.order = 'X';
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL, "bad order");
	g = m;
	g.dtype = (char *)"";
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL, "empty dtype");
	g = m;
	g.shape[0] = UINT64_MAX;
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL, "overflowing shape");
	g = m;
	g.ndim = 2;
	g.shape[0] = g.shape[1] = INT64_MAX;
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL,
		 "shape whose element count overflows");
	g = m;
	g.blksize = 5000;
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL, "bad block size");
	g = m;
	g.blksize = OC_STORE_BLKSIZE_MAX * 2;
	CHECK_EQ(oc_store_create(s, "x", &g), -EINVAL, "block size past the maximum");
	g = m;
	g.blksize = BS * 2;
	CHECK_EQ(oc_store_meta_set(s, "a", &g), -EINVAL, "block size change");
	CHECK_EQ(oc_store_delete(s, "nope"), OC_ENOTFOUND, "delete missing");
	CHECK_EQ(oc_store_commit(s), 0, "commit the odd name");
	if (!view_open(s, "a", 2, &a)) {
		fill(&a, 0, 42);
		CHECK_EQ(oc_fileh_writeout(a.fh, OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED),
			 -EPERM, "writeout by hand: EPERM");
		/* marking alone stored nothing and forgot the changes */
		CHECK_EQ(oc_fileh_writeout(a.fh, OC_WRITEOUT_MARKSTORED), -EPERM,
			 "marking stored by hand: EPERM");
		CHECK_EQ(oc_fileh_isdirty(a.fh), 1, "the changes are still dirty");
		CHECK_EQ(oc_store_abort(s), 0, "abort");
		view_close(&a);
	}
	oc_store_close(s);

	/* read-only */
	s = sopen(path, OC_STORE_RDONLY);
	CHECK(s, "open read-only");
	if (!s)
		return;
	CHECK_EQ(oc_store_create(s, "x", &m), OC_EREADONLY, "create read-only: EREADONLY");
	CHECK_EQ(oc_store_delete(s, "a"), OC_EREADONLY, "delete read-only: EREADONLY");
	CHECK_EQ(oc_store_commit(s), 0, "empty commit of a read-only store");
	if (!view_open(s, "a", 2, &a)) {
		uint64_t v0 = blk_val(&a, 0);
		fill(&a, 0, 4242);
		CHECK_EQ(oc_store_commit(s), OC_EREADONLY, "commit of changes: EREADONLY");
		CHECK_EQ(oc_store_abort(s), 0, "abort");
		CHECK(blk_val(&a, 0) == v0, "data unchanged");
		view_close(&a);
	}
	oc_store_close(s);
	s = sopen(path, 0);
	if (s) {
		CHECK(attr_i(s, "a") != UINT64_MAX, "store still readable");
		if (!view_open(s, "a", 2, &a)) {
			CHECK(blk_is(&a, 0, 500), "stored data unchanged");
			view_close(&a);
		}
		oc_store_close(s);
	}
}

/* What a store holds on to, and when: its RAM; every handle or none at a
 * refused close; writes into the handle of a deleted array; an array that
 * another process deleted and created again; a format upgraded by another
 * process; a data file cut short, read without verification. */
static void test_lifetimes(void)
{
	char p[600], q[700];
	oc_store_t *s = NULL;
	oc_ram_t *r2;
	oc_array_meta_t m = meta1(2, NULL);
	oc_fileh_t *fh = NULL;
	struct view x, y, g;
	pid_t pid;
	int err, status = -1;

	path_of(p, sizeof p, "life");
	r2 = tf_ram(BS, 64 * BS, &err);
	CHECK(r2 && !oc_store_open(&s, p, OC_STORE_CREATE, r2), "open with a RAM of its own");
	if (!s)
		return;
	CHECK_EQ(oc_ram_close(r2), -EBUSY, "the store's RAM cannot be closed under it");
	CHECK(!oc_store_create(s, "y", &m) && !oc_store_create(s, "x", &m) &&
	      !oc_store_create(s, "g", &m) && !oc_store_create(s, "r", &m) &&
	      !oc_store_commit(s), "create y, x, g, r");

	/* y stays mapped; x (the newer record) has a dirty page, not mapped */
	if (!view_open(s, "y", 2, &y) && !view_open(s, "x", 2, &x)) {
		fh = x.fh;
		fill(&x, 0, 42);
		view_close(&x);
		CHECK_EQ(oc_store_close(s), -EBUSY, "close with a mapping: EBUSY");
		CHECK(!oc_store_array_fileh(s, "x", &x.fh) && x.fh == fh,
		      "a refused close keeps every handle");
		if (!view_open(s, "x", 2, &x)) {
			CHECK(blk_is(&x, 0, 42), "and every dirty page");
			view_close(&x);
		}
		view_close(&y);
	}

	/* writes into a deleted array's handle */
	if (!view_open(s, "g", 2, &g)) {
		CHECK(!oc_store_delete(s, "g") && !oc_store_commit(s), "delete g");
		fill(&g, 1, 9);
		CHECK_EQ(oc_fileh_isdirty(g.fh), 1, "a write into deleted g");
		CHECK_EQ(oc_store_commit(s), 0, "commit");
		CHECK_EQ(oc_fileh_isdirty(g.fh), 0, "the write is dropped at commit");
		CHECK(blk_is(&g, 1, 0), "g reads as zeros");
		view_close(&g);
	}
	CHECK(!oc_store_array_fileh(s, "r", &fh), "r's handle");

	/* another process deletes r and creates it again */
	pid = check_fork();
	if (pid == 0) {
		oc_store_t *c = child_open(p);
		int bad = !c || oc_store_delete(c, "r") || oc_store_create(c, "r", &m) ||
			  oc_store_commit(c);
		oc_store_close(c);
		_exit(bad);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0, "another process creates r again");
	CHECK_EQ(oc_store_commit(s), 0, "a new snapshot");
	CHECK(!oc_store_array_fileh(s, "r", &g.fh) && g.fh != fh,
	      "r is the new array, with a new handle");
	CHECK(!oc_store_array_fileh(s, "x", &x.fh) && !view_open(s, "x", 2, &x) &&
	      blk_is(&x, 0, 42), "x committed");
	view_close(&x);

	/* another process upgrades the format */
	pid = check_fork();
	if (pid == 0)
		_exit(bump_format(p) != 0);
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0, "another process bumps the format");
	CHECK_EQ(oc_store_commit(s), OC_EVERSION, "the next snapshot: EVERSION");
	CHECK_EQ(oc_store_abort(s), OC_EVERSION, "abort too");
	CHECK_EQ(oc_store_close(s), 0, "close");
	CHECK_EQ(oc_ram_close(r2), 0, "the RAM closes after the store");

	/* a data file cut short, read without verification */
	path_of(p, sizeof p, "cut");
	s = sopen(p, OC_STORE_CREATE);
	CHECK(s && !oc_store_create(s, "t", &m), "a store to cut");
	if (!s)
		return;
	if (!view_open(s, "t", 2, &x)) {
		fill(&x, 0, 5);
		fill(&x, 1, 6);
		CHECK_EQ(oc_store_commit(s), 0, "commit t");
		view_close(&x);
	}
	oc_store_close(s);
	snprintf(q, sizeof q, "%s/data", p);
	CHECK_EQ(truncate(q, 0), 0, "cut the data file");
	s = sopen(p, OC_STORE_NOVERIFY);
	CHECK(s && !oc_store_array_fileh(s, "t", &fh), "open it without verification");
	if (!s)
		return;
	CHECK_EQ(oc_fileh_load(fh, 1, 1), OC_ECORRUPT,
		 "a block past the data file's end: ECORRUPT, not a SIGBUS");
	oc_store_close(s);
}

/* oc_store_truncate: what is cut goes at commit, without loading it, and
 * what this transaction wrote there goes too; a block there that another
 * process changed is a conflict; abort forgets the cut. */
static void test_truncate(const char *path)
{
	oc_store_t *s = sopen(path, OC_STORE_CREATE);
	oc_array_meta_t m = meta1(8, NULL);
	struct view t, u;
	uint64_t before;
	pid_t pid;
	int ok, status = -1;

	CHECK(s && !oc_store_create(s, "t", &m) && !oc_store_create(s, "u", &m),
	      "a store to cut");
	if (!s || view_open(s, "t", 8, &t) || view_open(s, "u", 8, &u)) {
		oc_store_close(s);
		return;
	}
	for (uint64_t k = 0; k < 8; k++) {
		fill(&t, k, 10 + k);
		fill(&u, k, 20 + k);
	}
	CHECK_EQ(oc_store_commit(s), 0, "commit t and u, 8 blocks each");

	CHECK_EQ(oc_store_truncate(s, "t", 1), 0, "cut t at 1");
	CHECK_EQ(oc_store_abort(s), 0, "abort");
	CHECK_EQ(oc_store_commit(s), 0, "commit");
	CHECK(blk_is(&t, 1, 11) && blk_is(&t, 7, 17), "abort forgot the cut");

	view_close(&t);
	oc_ram_reclaim(ram, UINT64_MAX); /* t's pages leave RAM */
	if (view_open(s, "t", 8, &t))
		goto out;
	fill(&t, 5, 99); /* loads block 5, then dirties it */
	before = ram_brings();
	m = meta1(3, NULL);
	CHECK(!oc_store_meta_set(s, "t", &m) && !oc_store_truncate(s, "t", 3),
	      "t shrinks to 3 blocks");
	CHECK_EQ(oc_store_commit(s), 0, "commit the cut");
	CHECK_EQ(ram_brings(), before, "the cut loaded nothing");
	ok = 1;
	for (uint64_t k = 3; k < 8; k++)
		ok &= blk_is(&t, k, 0);
	CHECK(ok, "blocks 3-7 read as zeros, the write into 5 dropped");
	CHECK(blk_is(&t, 0, 10) && blk_is(&t, 2, 12), "blocks 0-2 kept");
	view_close(&u); /* a mapping keeps a store from closing */
	if (reopen(path, &s, &t, "t", 8))
		goto out;
	ok = 1;
	for (uint64_t k = 3; k < 8; k++)
		ok &= blk_is(&t, k, 0);
	CHECK(ok && blk_is(&t, 2, 12), "after reopening too");
	view_close(&t);
	if (view_open(s, "u", 8, &u))
		goto out;

	/* another process changes block 6 of u after our snapshot */
	pid = check_fork();
	if (pid == 0) {
		oc_store_t *c = child_open(path);
		struct view cu;
		int bad = !c || view_open(c, "u", 8, &cu);
		if (!bad) {
			fill(&cu, 6, 66);
			bad = oc_store_commit(c) != 0;
			view_close(&cu);
		}
		oc_store_close(c);
		_exit(bad);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0, "another process writes u's block 6");
	CHECK_EQ(oc_store_truncate(s, "u", 4), 0, "cut u at 4");
	CHECK_EQ(oc_store_commit(s), OC_ECONFLICT, "a changed block past the cut: ECONFLICT");
	CHECK_EQ(oc_store_abort(s), 0, "abort");
	CHECK(blk_is(&u, 6, 66) && blk_is(&u, 5, 25), "u as the other process left it");
	CHECK(!oc_store_truncate(s, "u", 4) && !oc_store_commit(s) &&
	      blk_is(&u, 6, 0) && blk_is(&u, 3, 23), "the cut again, on the new snapshot");
	view_close(&u);
out:
	oc_store_close(s);
}

/* Read-only open of a store the user may not write: a child that runs as
 * nobody (only possible when the test runs as root). */
static void test_unwritable(const char *path)
{
	pid_t pid;
	int status = 0;

	if (geteuid() != 0) {
		printf("# not root: read-only open of an unwritable store not tested\n");
		return;
	}
	chmod(base, 0755);
	pid = check_fork();
	if (pid == 0) {
		oc_store_t *s = NULL;
		struct view a;
		int err;
		if (setgid(65534) || setuid(65534))
			_exit(10);
		ram = tf_ram(BS, 64 * BS, &err);
		if (!ram)
			_exit(11);
		if (oc_store_open(&s, path, 0, ram) != -EACCES)
			_exit(12);
		s = sopen(path, OC_STORE_RDONLY);
		if (!s || view_open(s, "a", 2, &a))
			_exit(13);
		err = !blk_is(&a, 0, 500) || !blk_is(&a, 1, 101);
		view_close(&a);
		oc_store_close(s);
		_exit(err ? 14 : 0);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status),
	      "child as nobody");
	CHECK_EQ(WEXITSTATUS(status), 0,
		 "a store the user cannot write: rw open EACCES, read-only open reads");
	chmod(base, 0700);
}

/* Another thread reads a patched block (a granule written over its
 * mapped extent) while the commit stores it: the commit drops the page,
 * and a load in between used to come from the snapshot the commit
 * replaced, and stay (the next snapshot passes over our own commit).
 * Many blocks of a second array make that window long. */
static volatile char *cr_a;
static volatile int cr_stop;

static void *cr_reader(void *arg)
{
	unsigned long n = 0;
	(void)arg;
	while (!cr_stop)
		n += (unsigned char)cr_a[0];
	return (void *)n;
}

static void test_commit_with_reader(const char *path)
{
	enum { NB = 512 };
	oc_array_meta_t m;
	oc_ram_t *r;
	oc_store_t *s = NULL;
	oc_fileh_t *fa, *fb;
	oc_vma_t *va = NULL, *vb = NULL;
	pthread_t t;
	int err;

	printf("# a thread reads a block while the commit stores it\n");
	r = tf_ram(BS, (uint64_t)2 * NB * BS, &err);
	memset(&m, 0, sizeof m);
	m.ndim = 1;
	m.shape[0] = (uint64_t)NB * BS;
	m.dtype = "|u1";
	m.order = 'C';
	m.blksize = BS;
	err = r ? oc_store_open(&s, path, OC_STORE_CREATE, r) : -ENOMEM;
	if (!err)
		err = oc_store_create(s, "b", &m);
	if (!err)
		err = oc_store_create(s, "a", &m);
	if (!err)
		err = oc_store_array_fileh(s, "a", &fa);
	if (!err)
		err = oc_store_array_fileh(s, "b", &fb);
	if (!err)
		err = oc_fileh_mmap(fa, 0, 1, &va);
	if (!err)
		err = oc_fileh_mmap(fb, 0, NB, &vb);
	CHECK_EQ(err, 0, "a store, arrays a and b mapped");
	if (!err) {
		char *b = oc_vma_addr(vb);
		cr_a = oc_vma_addr(va);
		memset((char *)cr_a, 'o', BS);
		CHECK_EQ(oc_store_commit(s), 0, "commit 'o'");
		oc_fileh_invalidate(fa, 0); /* mapped from its extent next */
		CHECK_EQ(cr_a[0], 'o', "read back");
		cr_a[0] = 'N';              /* a granule over the extent */
		for (int i = 0; i < NB; i++)
			b[(size_t)i * BS] = 1;
		cr_stop = 0;
		if (pthread_create(&t, NULL, cr_reader, NULL) == 0) {
			usleep(10000);
			CHECK_EQ(oc_store_commit(s), 0, "commit 'N' while it reads");
			cr_stop = 1;
			pthread_join(t, NULL);
			CHECK(cr_a[0] == 'N', "after the commit: %c (want N)", cr_a[0]);
		}
	}
	if (va)
		oc_vma_unmap(va);
	if (vb)
		oc_vma_unmap(vb);
	if (s)
		CHECK_EQ(oc_store_close(s), 0, "close");
	if (r)
		oc_ram_close(r);
}

int main(void)
{
	char p[600], c[600];
	int err;

	snprintf(base, sizeof base, "/tmp/oc_test_store.XXXXXX");
	if (!mkdtemp(base))
		check_skip("no temporary directory");
	ram = tf_ram(BS, 64 * BS, &err);
	if (!ram) {
		printf("# ram: %s\n", oc_strerror(err));
		return 1;
	}
	path_of(p, sizeof p, "s1");
	test_roundtrip(p);
	test_two_processes(p);
	path_of(c, sizeof c, "s1copy");
	test_corrupt(p, c);
	path_of(c, sizeof c, "s1scan");
	test_corrupt_scan(p, c);
	test_bad_input(p);
	test_unwritable(p);
	test_lifetimes();
	path_of(p, sizeof p, "truncate");
	test_truncate(p);
	path_of(p, sizeof p, "deltas");
	path_of(c, sizeof c, "deltascopy");
	test_deltas(p, c);
	path_of(p, sizeof p, "dspace");
	path_of(c, sizeof c, "dspacecopy");
	test_delta_space(p, c);
	path_of(p, sizeof p, "handoff");
	test_arena_handoff(p);
	path_of(p, sizeof p, "split");
	test_arena_split(p);
	path_of(p, sizeof p, "partial");
	test_partial(p);
	path_of(p, sizeof p, "reader");
	test_commit_with_reader(p);
	path_of(p, sizeof p, "crash");
	test_crash(p);
	rm_tree(base);
	oc_ram_close(ram);
	return check_done();
}
