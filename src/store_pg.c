/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * store_pg.c: the PostgreSQL storage engine (see store_engine.h), over
 * libpq.  oc_store_open() selects it for a path that starts with
 * "postgresql://" or "postgres://": the path is a libpq connection URI
 * (so TLS, password and PG* environment variables work as users know
 * them).  The URI may hold a password: it is never printed.
 *
 * Schema (created on first use, under an advisory lock):
 *   outcore_meta    one row: magic, format version, seq (the number of the
 *                   last commit), next array id
 *   outcore_arrays  name (bytea: byte order, any bytes) -> id, version (the
 *                   seq that last changed it), metadata (the encoding of
 *                   store_lmdb.c: id, version, ndim, order, blksize, shape,
 *                   dtype, attrs)
 *   outcore_blocks  (array id, blk) -> xxh64 of the data, version (seq),
 *                   data (bytea, stored uncompressed: STORAGE EXTERNAL)
 *   outcore_log     (seq, array id, blk): what each commit changed (blk -1,
 *                   i.e. OC_SE_META, for metadata)
 * Unsigned 64-bit values (ids, blocks, hashes) are stored bit-cast as
 * bigint.
 *
 * Two connections.  The read connection holds the snapshot: a REPEATABLE
 * READ READ ONLY transaction per outcore transaction, whose first statement
 * reads seq (snap_id).  Blocks are read through it with one prepared
 * statement with binary parameters and results: one round trip per block,
 * copied into the page by blk_load (blk_map always says OC_NOMAP: nothing
 * can be mapped; a block absent from the snapshot is a hole and reads as
 * zeros).  The write connection runs commits.
 *
 * Read-ahead.  A load that is the third in a row of consecutive blocks of
 * one array puts rc in pipeline mode with requests for that block and the
 * next ones in flight (RA_MAX, fewer for blocks over RA_BYTES /
 * RA_MAX), each with a sync point of its own; the next loads are served
 * from the queue in order, each sending the request for one more block, so
 * the server sends while the client copies and verifies.  Memory: the
 * answers in flight are at most that many blocks (RA_BYTES, 16 MiB, for 2 MiB
 * blocks) held by the kernel's socket buffers and libpq's input buffer,
 * outside the RAM budget, plus the one result being copied.  Any other use
 * of rc drops the queue (its answers are read and thrown away, pipeline
 * mode is left): a load of another block or array, a metadata read,
 * snapshot_renew (so no block of an old snapshot is served after it), an
 * error or a lost connection (the load then goes the plain way, which
 * reconnects).  Everything on rc runs under mu, so loads of several
 * threads stay correct; threads scanning at once mostly read one by one.
 * Blocks past the end of an array are asked for and answered as holes.
 *
 * Holes.  blk_map answers whether a block exists from a window of
 * WIN_BLKS blocks of its array, read with one index-only query on rc when
 * blk_load first meets a hole in the window in a snapshot (so reads of
 * stored blocks never pay for it; NWIN windows kept, 512 bytes in all): a
 * hole is OC_ZEROBLK (the core maps zeros, no load, no round trip: the
 * first write of each new block after a commit faults), an existing block
 * or one of no window OC_NOMAP (blk_load reads it).  The windows are
 * dropped by snapshot_renew and when rc's snapshot moved after a lost
 * connection (then nothing is answered from windows until the next
 * snapshot); no window is read while read-ahead runs on the array, and
 * the block at the head of its queue is left to the queue, hole or not.
 *
 * Round trips (stats round_trips): the exchanges in which the engine waits
 * for the server with nothing else of its own in flight; the start of a
 * read-ahead pipeline counts one, the answers served from it none.
 *
 * Commit.  txn_begin opens a READ COMMITTED transaction and increments seq
 * with UPDATE ... RETURNING: the row lock serialises committers (it is the
 * writer lock, held to COMMIT), so seq order is commit order, and the
 * change log read right after holds every commit since our snapshot: a
 * block or metadata we write that is in it is a conflict (OC_ECONFLICT),
 * as are PostgreSQL's serialization failures and deadlocks (40001, 40P01).
 * Blocks are streamed with COPY ... FROM STDIN (FORMAT binary).  A block
 * known to be absent from the snapshot (of an array this transaction
 * creates, or a hole in a window of blk_map: see "Holes") goes straight
 * into outcore_blocks: nobody else can have stored it since (the change log
 * would say so, and the writer lock is held); a unique violation would be
 * a conflict all the same.  These blocks are logged with one INSERT of two
 * arrays at commit.  The others (overwrites, all-zero blocks, blocks not
 * known) go to a temp table (made once per session, outside the
 * transactions, uncompressed; all-zero blocks as NULL data: deleted), then
 * are merged into outcore_blocks with one DELETE and one INSERT ... ON
 * CONFLICT (so written twice), and logged with one INSERT ... SELECT.  The
 * two COPY streams take turns as the blocks come (a turn costs two round
 * trips; writeout goes in block order, so turns are few): a constant
 * number of round trips per commit and per turn.
 * COMMIT is the one commit point (durable with the server's default
 * synchronous_commit).
 *
 * Errors.  Connection and server errors give OC_ESTOREIO with the SQLSTATE
 * and the server's primary message as the thread's error detail (never the
 * connection string: the server is named by host, port and database).
 *
 * Lost connections (a server restart, a network failure).  The engine
 * notices a loss when a call fails on a connection that libpq then reports
 * CONNECTION_BAD (or with SQLSTATE class 08 / 57P0x); the next call on that
 * connection reconnects (PQreset, same parameters), RECONNECT_TRIES times
 * at most with growing pauses, and gives OC_ESTOREIO if that fails.
 *   Writes.  The call that meets the loss fails (txn_begin, txn_array,
 *   txn_block, txn_commit: the commit fails, nothing is committed, the
 *   store layer keeps the dirty pages); a retry reconnects.  The retry
 *   checks conflicts against the transaction's own snapshot (snap_id is
 *   kept until snapshot_renew), from the change log, which holds every
 *   commit since.  A loss during COMMIT itself leaves the outcome unknown:
 *   the transaction's xid is kept, and the retry, holding the writer lock
 *   (so the old transaction has ended), asks txid_status(): aborted, the
 *   retry goes on; committed, every retry fails saying so until the next
 *   snapshot (abort shows the data), so a change is never applied twice.
 *   Reads.  The snapshot lived in the lost connection's transaction.  The
 *   read that meets the loss reconnects and begins a snapshot again; if
 *   nobody committed since snap_id it is the same snapshot and reads go on
 *   as before.  Otherwise blocks that others changed since snap_id (the
 *   change log tells which: `stale`) cannot be read any more and fail,
 *   other blocks read the same bytes as before, and metadata reads fail
 *   (a name's absence cannot be checked against the old snapshot) until
 *   the next snapshot_renew.  A read that cannot reconnect fails and
 *   prints one line naming the server (once until reconnected): inside a
 *   page fault the core retries and then stops the process naming the
 *   array and block.  (A load in a page fault taken on a program's small
 *   signal stack runs on a stack of the core's: see pagefault.c.)
 *
 * Not done in this first cut: page deltas (blocks are always written
 * whole), pruning of outcore_log, verified-once tracking (every load is
 * verified), read-only server-side enforcement.
 */
#include "internal.h"
#include "store_engine.h"

#include <errno.h>
#include <stdarg.h>
#include <libpq-events.h>
#include <libpq-fe.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define FORMAT_VERSION 1
#define MAGIC "outcore-store"
/* Connection attempts per call after a loss, and the first pause between
 * them (doubled each time). */
#define RECONNECT_TRIES 3
#define RECONNECT_PAUSE_MS 100
/* Read-ahead of sequential loads: at most RA_MAX requests in flight and at
 * most RA_BYTES of blocks (see "Read-ahead" above). */
#define RA_MAX 8
#define RA_BYTES (16u << 20)
/* Which blocks exist: windows of WIN_BLKS blocks, NWIN of them (see
 * "Holes" above). */
#define WIN_BLKS 1024
#define NWIN 4

struct pg_eng {
	PGconn *rc;             /* read connection: the snapshot */
	PGconn *wc;             /* write connection */
	int flags;

	/* mu guards rc and the fields up to warned. */
	pthread_mutex_t mu;
	uint64_t snap_id;       /* the transaction's snapshot (the seq it saw) */
	bool rc_bad;            /* rc holds no usable snapshot transaction */
	bool rc_moved;          /* rc's snapshot is newer than snap_id */
	struct oc_se_blkref *stale; /* sorted: changed in (snap_id, rc's] */
	size_t nstale;
	bool warned;            /* the loss of rc was printed */
	/* Read-ahead: rc is in pipeline mode with ra_n requests for blocks
	 * ra_head, ra_head + 1, ... of array ra_id in flight (ra_n 0: not in
	 * pipeline mode); seq_*: the block after the last load, and how many
	 * loads in a row were sequential. */
	uint64_t ra_id, ra_head, seq_id, seq_next;
	unsigned ra_n, seq_run;
	/* Holes: which blocks lo .. lo + WIN_BLKS - 1 of array id exist in
	 * the snapshot snap_id (id 0: unused); win_next: the one replaced
	 * next. */
	struct pg_win {
		uint64_t id, lo;
		uint64_t bits[WIN_BLKS / 64];
	} win[NWIN];
	unsigned win_next;

	bool in_w, any_blocks;
	enum copy_to { COPY_NONE, COPY_TMP, COPY_DIRECT } copying; /* wc's */
	bool have_tmp;          /* wc's session has outcore_tmp */
	uint64_t w_id, w_xid, next_id;
	uint64_t w_first_id;    /* ids from here on are created by this txn */
	uint64_t w_exists_id;   /* array found still there in this txn (0) */
	struct oc_se_blkref *direct; /* blocks copied into outcore_blocks */
	size_t ndirect, cap_direct;
	struct oc_se_blkref *changed; /* sorted: changed by others since snap */
	size_t nchanged;
	uint64_t last_commit;
	/* A COMMIT whose connection was lost: outcome unknown (xid uk_xid)
	 * until checked; uk_made: checked, it was made. */
	bool uk, uk_made;
	uint64_t uk_xid;

	uint64_t n_stored, n_zeroed, n_bytes, n_loads, n_holes, n_verified,
		n_corrupt;
	uint64_t n_trips;       /* round trips, both connections (trip()) */
};

#define CNT(e, f) __atomic_add_fetch(&(e)->f, 1, __ATOMIC_RELAXED)

/* ---- libpq helpers ------------------------------------------------------- */

static void no_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

/* Round trips.  Each connection's instance data (of the event procedure
 * ev_proc, which does nothing else) points to its engine's counter: the
 * helpers that only get a connection count with trip(c). */
static int ev_proc(PGEventId evt, void *info, void *pass)
{
	(void)evt, (void)info, (void)pass;
	return 1;
}

/* One exchange in which the caller waits for the server's answer with no
 * other request of its own in flight. */
static void trip(PGconn *c)
{
	uint64_t *n = PQinstanceData(c, ev_proc);

	if (n)
		__atomic_add_fetch(n, 1, __ATOMIC_RELAXED);
}

/* The server of c for messages: host:port/database (no credentials). */
static const char *server(PGconn *c, char *buf, size_t n)
{
	const char *h = PQhost(c), *p = PQport(c), *d = PQdb(c);

	snprintf(buf, n, "%s:%s/%s", h && *h ? h : "?", p && *p ? p : "?",
		 d && *d ? d : "?");
	return buf;
}

/* Set the error detail to "postgresql server HOST:PORT/DB: " and fmt. */
static void srv_detail(PGconn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void srv_detail(PGconn *c, const char *fmt, ...)
{
	char where[160], what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	oc_set_error_detail("postgresql server %s: %s",
			    server(c, where, sizeof where), what);
}

/* The first line of a libpq message (for details of one line). */
static int line_len(const char *m)
{
	return m ? (int)strcspn(m, "\n") : 0;
}

/* Whether a failure (r may be NULL) means that the connection is gone:
 * closed by the server (shutdown, restart, terminated) or unreachable. */
static bool conn_lost(PGconn *c, PGresult *r)
{
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

	if (PQstatus(c) != CONNECTION_OK)
		return true;
	return state && (!strncmp(state, "08", 2) || !strncmp(state, "57P0", 4));
}

/* The error of a failed result (r may be NULL: a connection failure), as
 * an outcore code, with a detail that names no credential. */
static int pg_err(PGconn *c, PGresult *r)
{
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;

	if (state && (!strcmp(state, "40001") || !strcmp(state, "40P01"))) {
		oc_set_error_detail("postgresql: serialization failure (%s)", state);
		return OC_ECONFLICT;
	}
	if (state && !strcmp(state, "23505")) {
		/* A row another writer made: a block of a new array, a name. */
		oc_set_error_detail("postgresql: written meanwhile by another (%s)",
				    state);
		return OC_ECONFLICT;
	}
	if (conn_lost(c, r)) {
		if (!msg)
			msg = PQerrorMessage(c);
		srv_detail(c, "connection lost (%.*s)", line_len(msg), msg);
	} else {
		oc_set_error_detail("postgresql: %s%s%s", state ? state : "",
				    state ? ": " : "", msg ? msg : "query failed");
	}
	return OC_ESTOREIO;
}

/* Run sql with n binary parameters; results binary.  Returns the result
 * (the caller clears it) or NULL with *err set. */
static PGresult *q(PGconn *c, const char *sql, int n, const char *const *vals,
		   const int *lens, int *err)
{
	int fmts[8] = {1, 1, 1, 1, 1, 1, 1, 1};
	PGresult *r = PQexecParams(c, sql, n, NULL, vals, lens, fmts, 1);
	ExecStatusType s = PQresultStatus(r);

	OC_BUG_ON(n > 8);
	trip(c);
	if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK)
		return r;
	*err = pg_err(c, r);
	PQclear(r);
	return NULL;
}

/* A statement without result rows. */
static int cmd(PGconn *c, const char *sql, int n, const char *const *vals,
	       const int *lens)
{
	int err = 0;
	PGresult *r = q(c, sql, n, vals, lens, &err);

	PQclear(r);
	return err;
}

/* Plain text statement(s) with no parameters. */
static int exec0(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType s = PQresultStatus(r);
	int err = 0;

	trip(c);
	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
		err = pg_err(c, r);
	PQclear(r);
	return err;
}

static uint64_t val64(PGresult *r, int row, int col)
{
	if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
		return 0;
	return _oc_get_be64((const unsigned char *)PQgetvalue(r, row, col));
}

/* Connect; the connection counts its round trips in *trips. */
static int pg_connect(PGconn **out, const char *conninfo, uint64_t *trips)
{
	PGconn *c = PQconnectdb(conninfo);

	if (!c)
		return -ENOMEM;
	if (PQstatus(c) != CONNECTION_OK) {
		/* libpq's message names host and port, never the password. */
		const char *m = PQerrorMessage(c);
		oc_set_error_detail("postgresql: cannot connect: %.*s",
				    line_len(m), m);
		PQfinish(c);
		return OC_ESTOREIO;
	}
	PQsetNoticeProcessor(c, no_notice, NULL);
	if (!PQregisterEventProc(c, ev_proc, "outcore", NULL) ||
	    !PQsetInstanceData(c, ev_proc, trips)) {
		PQfinish(c);
		return -ENOMEM;
	}
	*out = c;
	return 0;
}

/* Connect c again after a loss (PQreset: the same parameters; the notice
 * processor stays): RECONNECT_TRIES attempts with growing pauses.  Returns
 * 0 or OC_ESTOREIO with the detail. */
static int reconnect(PGconn *c)
{
	const char *m;

	for (int i = 0; i < RECONNECT_TRIES; i++) {
		if (i) {
			long ms = (long)RECONNECT_PAUSE_MS << (i - 1);
			struct timespec ts = {ms / 1000, ms % 1000 * 1000000L};
			nanosleep(&ts, NULL);
		}
		PQreset(c);
		if (PQstatus(c) == CONNECTION_OK)
			return 0;
	}
	m = PQerrorMessage(c);
	srv_detail(c, "connection lost; %d attempts "
		   "to reconnect failed (%.*s)", RECONNECT_TRIES,
		   line_len(m), m);
	return OC_ESTOREIO;
}

/* A sorted set of what the change log says commits (after, upto] changed
 * (*set malloc'd, NULL when empty). */
static int log_read(PGconn *c, uint64_t after, uint64_t upto,
		    struct oc_se_blkref **set, size_t *n)
{
	unsigned char b[16];
	const char *vals[2] = {(char *)b, (char *)b + 8};
	int lens[2] = {8, 8}, err = 0;
	PGresult *r;

	*set = NULL;
	*n = 0;
	_oc_put_be64(b, after);
	_oc_put_be64(b + 8, upto);
	r = q(c, "SELECT array_id, blk FROM outcore_log"
		 " WHERE seq > $1::int8 AND seq <= $2::int8", 2, vals, lens, &err);
	if (!r)
		return err;
	if (PQntuples(r)) {
		*set = malloc((size_t)PQntuples(r) * sizeof **set);
		if (!*set) {
			PQclear(r);
			return -ENOMEM;
		}
		for (int i = 0; i < PQntuples(r); i++) {
			(*set)[i].id = val64(r, i, 0);
			(*set)[i].blk = val64(r, i, 1);
		}
		*n = (size_t)PQntuples(r);
		qsort(*set, *n, sizeof **set, _oc_se_change_cmp);
	}
	PQclear(r);
	return 0;
}

/* ---- open / close ---------------------------------------------------------- */

static const char SCHEMA[] =
	"CREATE TABLE IF NOT EXISTS outcore_meta ("
	" id int PRIMARY KEY CHECK (id = 1), magic text NOT NULL,"
	" format int NOT NULL, seq bigint NOT NULL, next_id bigint NOT NULL);"
	"CREATE TABLE IF NOT EXISTS outcore_arrays ("
	" name bytea PRIMARY KEY, id bigint UNIQUE NOT NULL,"
	" version bigint NOT NULL, meta bytea NOT NULL);"
	"CREATE TABLE IF NOT EXISTS outcore_blocks ("
	" array_id bigint NOT NULL, blk bigint NOT NULL, hash bigint NOT NULL,"
	" version bigint NOT NULL, data bytea NOT NULL,"
	" PRIMARY KEY (array_id, blk));"
	"ALTER TABLE outcore_blocks ALTER COLUMN data SET STORAGE EXTERNAL;"
	"CREATE TABLE IF NOT EXISTS outcore_log ("
	" seq bigint NOT NULL, array_id bigint NOT NULL, blk bigint NOT NULL);"
	"CREATE INDEX IF NOT EXISTS outcore_log_seq ON outcore_log (seq);"
	"INSERT INTO outcore_meta VALUES (1, 'outcore-store', 1, 0, 1)"
	" ON CONFLICT DO NOTHING;";

static int has_schema(PGconn *c, bool *yes)
{
	int err = 0;
	PGresult *r = q(c, "SELECT to_regclass('outcore_meta') IS NOT NULL", 0,
			NULL, NULL, &err);

	if (!r)
		return err;
	*yes = PQntuples(r) == 1 && PQgetlength(r, 0, 0) == 1 &&
	       PQgetvalue(r, 0, 0)[0];
	PQclear(r);
	return 0;
}

static int create_schema(PGconn *c)
{
	bool yes = false;
	int err = exec0(c, "BEGIN; SELECT pg_advisory_xact_lock(7956000171)");

	if (!err)
		err = has_schema(c, &yes);
	if (!err && !yes)
		err = exec0(c, SCHEMA);
	if (!err) {
		err = exec0(c, "COMMIT");
	} else {
		PQclear(PQexec(c, "ROLLBACK"));
		trip(c);
	}
	return err;
}

static int check_format(PGconn *c)
{
	PGresult *r = PQexecParams(c, "SELECT magic, format FROM outcore_meta"
				      " WHERE id = 1", 0, NULL, NULL, NULL, NULL, 1);
	const char *state;
	int err = 0;

	trip(c);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		/* A table of that name that is not ours (other columns). */
		state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		if (state && (!strcmp(state, "42703") || !strcmp(state, "42883") ||
			      !strcmp(state, "42P01")))
			err = OC_ENOTSTORE;
		else
			err = pg_err(c, r);
	} else if (PQntuples(r) != 1 ||
		   PQgetlength(r, 0, 0) != (int)strlen(MAGIC) ||
		   memcmp(PQgetvalue(r, 0, 0), MAGIC, strlen(MAGIC)) ||
		   PQgetlength(r, 0, 1) != 4) {
		err = OC_ENOTSTORE;
	} else {
		uint32_t f = _oc_get_be32((const unsigned char *)PQgetvalue(r, 0, 1));
		if (f > FORMAT_VERSION)
			err = OC_EVERSION;
	}
	PQclear(r);
	return err;
}

static int rc_prepare(PGconn *c)
{
	PGresult *r = PQprepare(c, "oc_blk",
				"SELECT hash, data FROM outcore_blocks"
				" WHERE array_id = $1::int8 AND blk = $2::int8",
				2, NULL);
	int err = 0;

	trip(c);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		err = pg_err(c, r);
	PQclear(r);
	return err;
}

/* Begin a snapshot on read connection c; *id: the seq it sees. */
static int snap_begin(PGconn *c, uint64_t *id)
{
	int err = exec0(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
	PGresult *r;

	if (err)
		return err;
	r = q(c, "SELECT seq FROM outcore_meta WHERE id = 1", 0, NULL, NULL,
	      &err);
	if (!r)
		return err;
	if (PQntuples(r) != 1)
		err = OC_ENOTSTORE;
	else
		*id = val64(r, 0, 0);
	PQclear(r);
	return err;
}

/* Under mu: print once per loss that rc cannot reconnect (inside a page
 * fault the load's error cannot say it). */
static void rc_warn(struct pg_eng *e)
{
	char where[160], line[160];
	const char *m = PQerrorMessage(e->rc);

	if (e->warned)
		return;
	snprintf(line, sizeof line, "%.*s", line_len(m), m);
	_oc_msg("outcore: postgresql server %s: connection lost; %d attempts to "
		"reconnect failed: %s\n", server(e->rc, where, sizeof where),
		RECONNECT_TRIES, line);
	e->warned = true;
}

/* ---- read-ahead (see "Read-ahead" above) ---- */

/* Under mu: send the request for block blk of array id in pipeline mode,
 * with a sync point of its own (so each answer ends by itself and an error
 * does not abort the requests after it).  PQpipelineSync flushes. */
static bool ra_send(struct pg_eng *e, uint64_t id, uint64_t blk)
{
	static const int fmts[2] = {1, 1};
	unsigned char b[16];
	const char *vals[2] = {(char *)b, (char *)b + 8};
	int lens[2] = {8, 8};

	_oc_put_be64(b, id);
	_oc_put_be64(b + 8, blk);
	return PQsendQueryPrepared(e->rc, "oc_blk", 2, vals, lens, fmts, 1) &&
	       PQpipelineSync(e->rc);
}

/* Under mu: read and throw away what is in flight (ra_n sync points)
 * and leave pipeline mode.  rc is left usable, or marked rc_bad (rc_reopen
 * then connects it again if it is still in pipeline mode). */
static void ra_drop(struct pg_eng *e)
{
	PGresult *r;

	if (PQpipelineStatus(e->rc) == PQ_PIPELINE_OFF)
		return;
	/* Each request is answered by its result, NULL and its sync point;
	 * two NULLs in a row: nothing more will come (a lost connection). */
	while (e->ra_n) {
		int nulls = 0;
		bool synced = false;

		while (!synced && nulls < 2) {
			r = PQgetResult(e->rc);
			nulls = r ? 0 : nulls + 1;
			synced = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
			if (r && !synced && PQresultStatus(r) != PGRES_TUPLES_OK)
				e->rc_bad = true; /* the snapshot is unusable */
			PQclear(r);
		}
		if (!synced) {
			e->rc_bad = true;
			break;
		}
		e->ra_n--;
	}
	e->ra_n = 0;
	if (!PQexitPipelineMode(e->rc))
		e->rc_bad = true;
}

/* Under mu: start read-ahead at block blk of array id: RA_MAX requests
 * (fewer for large blocks) in flight (one round trip for all of them).  Nothing happens on failure: the
 * load goes the plain way. */
static void ra_start(struct pg_eng *e, uint64_t id, uint64_t blk,
		     size_t blksize)
{
	unsigned k = blksize >= RA_BYTES / 2 ? 2 : (unsigned)(RA_BYTES / blksize);

	if (k > RA_MAX)
		k = RA_MAX;
	if (!PQenterPipelineMode(e->rc))
		return;
	e->ra_id = id;
	e->ra_head = blk;
	for (e->ra_n = 0; e->ra_n < k; e->ra_n++) {
		if (!ra_send(e, id, blk + e->ra_n)) {
			ra_drop(e);
			return;
		}
	}
	trip(e->rc);
}

/* Under mu: the answer for block ra_head (PGRES_TUPLES_OK), and the
 * request for the next block not yet asked for, so as many stay in flight.
 * NULL with *err on failure: read-ahead is dropped and rc_bad set; *lost
 * when the connection went (the caller retries the plain way, which
 * reconnects). */
static PGresult *ra_take(struct pg_eng *e, int *err, bool *lost)
{
	PGresult *r = PQgetResult(e->rc), *x = NULL;
	bool ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;

	if (ok && (x = PQgetResult(e->rc)))
		ok = false; /* a second result: not the answer of oc_blk */
	if (ok) {
		x = PQgetResult(e->rc);
		ok = PQresultStatus(x) == PGRES_PIPELINE_SYNC;
		if (ok)
			e->ra_n--; /* this request is answered */
	}
	if (!ok && PQresultStatus(x) == PGRES_PIPELINE_SYNC)
		e->ra_n--;
	PQclear(x);
	if (!ok) {
		*lost = conn_lost(e->rc, r);
		*err = pg_err(e->rc, r);
		PQclear(r);
		ra_drop(e);
		e->rc_bad = true;
		return NULL;
	}
	e->ra_head++;
	if (ra_send(e, e->ra_id, e->ra_head + e->ra_n))
		e->ra_n++;
	else
		ra_drop(e);
	return r;
}

/* Under mu: end rc's snapshot transaction (if any) and begin a new one,
 * reconnecting rc if it was lost, also if that shows only now.  *id: the
 * seq the new snapshot sees.  On error rc_bad stays set. */
static int rc_reopen(struct pg_eng *e, uint64_t *id)
{
	int err = 0;

	ra_drop(e);
	e->rc_bad = true;
	for (int pass = 0; pass < 2; pass++) {
		bool fresh = false;

		err = 0;
		/* Still in pipeline mode: read-ahead could not be ended,
		 * the session is connected again. */
		bool stuck = PQpipelineStatus(e->rc) != PQ_PIPELINE_OFF;

		if (!stuck && PQstatus(e->rc) == CONNECTION_OK &&
		    PQtransactionStatus(e->rc) != PQTRANS_IDLE)
			err = exec0(e->rc, "ROLLBACK");
		if (stuck || PQstatus(e->rc) != CONNECTION_OK) {
			err = reconnect(e->rc);
			if (err) {
				rc_warn(e);
				return err;
			}
			e->warned = false;
			fresh = true;
			err = rc_prepare(e->rc);
		}
		if (!err)
			err = snap_begin(e->rc, id);
		if (!err) {
			e->rc_bad = false;
			return 0;
		}
		if (fresh || PQstatus(e->rc) == CONNECTION_OK)
			break; /* not a loss that a reconnection mends */
	}
	return err;
}

/* Under mu: give rc a snapshot again after it lost the transaction's one
 * (see "Lost connections" above): the same if nobody committed since
 * snap_id; else a newer one (rc_moved) with what changed since in
 * stale. */
static int rc_recover(struct pg_eng *e)
{
	struct oc_se_blkref *set = NULL;
	uint64_t id = 0;
	size_t n = 0;
	int err = rc_reopen(e, &id);

	if (!err && id != e->snap_id)
		err = log_read(e->rc, e->snap_id, id, &set, &n);
	if (err) {
		e->rc_bad = true;
		return err;
	}
	free(e->stale);
	e->stale = set;
	e->nstale = n;
	e->rc_moved = id != e->snap_id;
	if (e->rc_moved)
		memset(e->win, 0, sizeof e->win);
	return 0;
}

/* Under mu: a snapshot read on rc (the prepared statement stmt, or sql),
 * recovering rc first if it lost its snapshot, and once more if the
 * connection turns out lost now.  Returns the result (PGRES_TUPLES_OK) or
 * NULL with *err. */
static PGresult *rc_query(struct pg_eng *e, const char *stmt, const char *sql,
			  int n, const char *const *vals, const int *lens,
			  int *err)
{
	static const int fmts[3] = {1, 1, 1};
	PGresult *r;
	bool lost;

	OC_BUG_ON(n > 3);
	ra_drop(e);
	for (int attempt = 0;; attempt++) {
		if (e->rc_bad && (*err = rc_recover(e)))
			return NULL;
		r = stmt ? PQexecPrepared(e->rc, stmt, n, vals, lens, fmts, 1)
			 : PQexecParams(e->rc, sql, n, NULL, vals, lens, fmts, 1);
		trip(e->rc);
		if (PQresultStatus(r) == PGRES_TUPLES_OK) {
			if (attempt)
				oc_set_error_detail(NULL); /* recovered */
			return r;
		}
		lost = conn_lost(e->rc, r);
		*err = pg_err(e->rc, r);
		PQclear(r);
		/* The snapshot transaction is unusable after any error. */
		e->rc_bad = true;
		if (!lost || attempt)
			return NULL;
	}
}

/* Under mu: metadata can be read only from the transaction's snapshot. */
static int rc_meta_ok(struct pg_eng *e)
{

	if (!e->rc_moved)
		return 0;
	srv_detail(e->rc, "this transaction's snapshot "
		   "was lost with the connection and others committed "
		   "since: commit or abort to continue");
	return OC_ESTOREIO;
}

/* A metadata query from the snapshot (takes mu): the result, or NULL and
 * *err. */
static PGresult *meta_query(struct pg_eng *e, const char *sql, int n,
			    const char *const *vals, const int *lens, int *err)
{
	PGresult *r;

	pthread_mutex_lock(&e->mu);
	r = rc_query(e, NULL, sql, n, vals, lens, err);
	if (r && (*err = rc_meta_ok(e))) {
		PQclear(r);
		r = NULL;
	}
	pthread_mutex_unlock(&e->mu);
	return r;
}

static void eng_close(void *p)
{
	struct pg_eng *e = p;

	if (!e)
		return;
	if (e->wc)
		PQfinish(e->wc);
	if (e->rc)
		PQfinish(e->rc);
	pthread_mutex_destroy(&e->mu);
	free(e->stale);
	free(e->changed);
	free(e->direct);
	free(e);
}

static int eng_open(void **out, const char *path, int flags)
{
	struct pg_eng *e = calloc(1, sizeof *e);
	bool yes = false;
	int err;

	if (!e)
		return -ENOMEM;
	pthread_mutex_init(&e->mu, NULL);
	e->flags = flags;
	err = pg_connect(&e->wc, path, &e->n_trips);
	if (!err)
		err = has_schema(e->wc, &yes);
	if (!err && !yes) {
		if (!(flags & OC_STORE_CREATE))
			err = OC_ENOTSTORE;
		else
			err = create_schema(e->wc);
	}
	if (!err)
		err = check_format(e->wc);
	if (!err)
		err = pg_connect(&e->rc, path, &e->n_trips);
	if (!err)
		err = rc_prepare(e->rc);
	if (!err)
		err = snap_begin(e->rc, &e->snap_id);
	if (err)
		goto fail;
	*out = e;
	return 0;
fail:
	eng_close(e);
	return err;
}

/* ---- snapshot reads ------------------------------------------------------ */

static int eng_array_get(void *p, const char *name, uint64_t *id,
			 oc_array_meta_t *meta)
{
	struct pg_eng *e = p;
	const char *vals[1] = {name};
	int lens[1] = {(int)strlen(name)}, err = 0;
	PGresult *r;

	r = meta_query(e, "SELECT id, meta FROM outcore_arrays"
			  " WHERE name = $1::bytea", 1, vals, lens, &err);
	if (!r)
		return err;
	if (PQntuples(r) != 1)
		err = OC_ENOTFOUND;
	else {
		*id = val64(r, 0, 0);
		if (meta)
			err = _oc_se_meta_decode(PQgetvalue(r, 0, 1),
						 (size_t)PQgetlength(r, 0, 1),
						 NULL, NULL, meta);
	}
	PQclear(r);
	return err;
}

static int eng_array_name(void *p, uint64_t id, char **name)
{
	struct pg_eng *e = p;
	unsigned char b[8];
	const char *vals[1] = {(char *)b};
	int lens[1] = {8}, err = 0;
	PGresult *r;

	_oc_put_be64(b, id);
	r = meta_query(e, "SELECT name FROM outcore_arrays WHERE id = $1::int8",
		       1, vals, lens, &err);
	if (!r)
		return err;
	if (PQntuples(r) != 1)
		err = OC_ENOTFOUND;
	else if (!(*name = strndup(PQgetvalue(r, 0, 0),
				   (size_t)PQgetlength(r, 0, 0))))
		err = -ENOMEM;
	PQclear(r);
	return err;
}

static int eng_array_list(void *p, int (*cb)(const char *, void *), void *arg)
{
	struct pg_eng *e = p;
	PGresult *r;
	int err = 0;

	r = meta_query(e, "SELECT name FROM outcore_arrays ORDER BY name", 0,
		       NULL, NULL, &err);
	if (!r)
		return err;
	for (int i = 0; i < PQntuples(r) && !err; i++) {
		char *n = strndup(PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0));
		if (!n) {
			err = -ENOMEM;
			break;
		}
		err = cb(n, arg);
		free(n);
	}
	PQclear(r);
	return err;
}

/* The window of block (id, blk) already fetched, or NULL (mu held). */
static struct pg_win *win_find(struct pg_eng *e, uint64_t id, uint64_t blk)
{
	uint64_t lo = blk & ~(uint64_t)(WIN_BLKS - 1);

	for (struct pg_win *w = e->win; w < e->win + NWIN; w++)
		if (w->id == id && w->lo == lo)
			return w;
	return NULL;
}

/* Whether window w (of blk) says that block blk exists. */
static bool win_has(const struct pg_win *w, uint64_t blk)
{
	uint64_t k = blk - w->lo;

	return w->bits[k / 64] >> (k % 64) & 1;
}

/* Under mu: the window of block blk of array id, read if need be and
 * fetch; NULL (with *err if a read failed): none. */
static struct pg_win *win_get(struct pg_eng *e, uint64_t id, uint64_t blk,
			      bool fetch, int *err)
{
	uint64_t lo = blk & ~(uint64_t)(WIN_BLKS - 1);
	unsigned char b[24];
	const char *vals[3] = {(char *)b, (char *)b + 8, (char *)b + 16};
	int lens[3] = {8, 8, 8};
	struct pg_win *w;
	PGresult *r;

	*err = 0;
	/* The head of read-ahead is answered by its queue, hole or not: a
	 * load of anything else would drop the queue. */
	if (e->ra_n && e->ra_id == id && e->ra_head == blk)
		return NULL;
	if ((w = win_find(e, id, blk)))
		return w;
	/* Not while read-ahead runs on the array (it would be dropped), nor
	 * from a snapshot other than snap_id, nor for block numbers that do
	 * not compare as bigint. */
	if (!fetch || (e->ra_n && e->ra_id == id) || e->rc_moved ||
	    lo >= INT64_MAX - WIN_BLKS)
		return NULL;
	_oc_put_be64(b, id);
	_oc_put_be64(b + 8, lo);
	_oc_put_be64(b + 16, lo + WIN_BLKS);
	r = rc_query(e, NULL, "SELECT blk FROM outcore_blocks WHERE array_id ="
			      " $1::int8 AND blk >= $2::int8 AND blk < $3::int8",
		     3, vals, lens, err);
	if (!r || e->rc_moved) {
		PQclear(r);
		return NULL; /* the load will say what is wrong */
	}
	w = &e->win[e->win_next++ % NWIN];
	memset(w, 0, sizeof *w);
	w->id = id;
	w->lo = lo;
	for (int i = 0; i < PQntuples(r); i++) {
		uint64_t k = val64(r, i, 0) - lo;
		if (k < WIN_BLKS)
			w->bits[k / 64] |= 1ull << (k % 64);
	}
	PQclear(r);
	return w;
}

static int eng_blk_map(void *p, uint64_t id, uint64_t blk, size_t blksize,
		       int do_verify, int *fd, uint64_t *off)
{
	struct pg_eng *e = p;
	struct pg_win *w;
	int err;

	(void)blksize, (void)do_verify, (void)fd, (void)off;
	pthread_mutex_lock(&e->mu);
	w = win_get(e, id, blk, false, &err);
	err = w && !win_has(w, blk) ? OC_ZEROBLK : OC_NOMAP;
	pthread_mutex_unlock(&e->mu);
	/* Nothing is ever mapped: blk_load copies existing blocks. */
	if (err == OC_ZEROBLK)
		CNT(e, n_holes);
	return err;
}

static int eng_blk_load(void *p, uint64_t id, uint64_t blk, size_t blksize,
			int do_verify, void *buf)
{
	struct pg_eng *e = p;
	unsigned char b[16];
	const char *vals[2] = {(char *)b, (char *)b + 8};
	int lens[2] = {8, 8}, err = 0;
	PGresult *r = NULL;
	bool lost = false;

	_oc_put_be64(b, id);
	_oc_put_be64(b + 8, blk);
	pthread_mutex_lock(&e->mu);
	/* Read-ahead: served from the queue when this load is its head;
	 * started on the third load in a row of consecutive blocks. */
	if (e->ra_n && (id != e->ra_id || blk != e->ra_head))
		ra_drop(e);
	e->seq_run = id == e->seq_id && blk == e->seq_next ? e->seq_run + 1 : 0;
	e->seq_id = id;
	e->seq_next = blk + 1;
	if (!e->ra_n && e->seq_run >= 2 && !e->rc_bad)
		ra_start(e, id, blk, blksize);
	if (e->ra_n)
		r = ra_take(e, &err, &lost);
	if (!r && (!err || lost)) {
		err = 0; /* a lost connection: retried the plain way */
		r = rc_query(e, "oc_blk", NULL, 2, vals, lens, &err);
		if (r && lost)
			oc_set_error_detail(NULL); /* recovered */
	}
	if (r && _oc_se_changed(e->stale, e->nstale, id, blk)) {
		/* This snapshot's version of the block is gone. */
		PQclear(r);
		r = NULL;
		err = OC_ESTOREIO;
		srv_detail(e->rc, "the block changed since "
			   "this transaction's snapshot, which was lost "
			   "with the connection: commit or abort to see "
			   "it");
	}
	if (r && !PQntuples(r) && !e->ra_n) {
		/* A hole: the holes around it are answered by blk_map from
		 * now on (a failed read only leaves them to blk_load). */
		int werr;
		win_get(e, id, blk, true, &werr);
		oc_set_error_detail(NULL);
	}
	pthread_mutex_unlock(&e->mu);
	if (!r)
		return err;
	if (PQntuples(r) == 0) {
		PQclear(r);
		memset(buf, 0, blksize);
		CNT(e, n_holes);
		return 0;
	}
	if (PQgetlength(r, 0, 1) != (int)blksize) {
		err = OC_ECORRUPT;
		CNT(e, n_corrupt);
	} else {
		memcpy(buf, PQgetvalue(r, 0, 1), blksize);
		if (do_verify) {
			CNT(e, n_verified);
			if (XXH64(buf, blksize, 0) != val64(r, 0, 0)) {
				CNT(e, n_corrupt);
				err = OC_ECORRUPT;
			}
		}
	}
	PQclear(r);
	if (!err)
		CNT(e, n_loads);
	return err;
}

/* ---- write transaction ----------------------------------------------------- */

static bool changed_by_others(struct pg_eng *e, uint64_t id, uint64_t blk)
{
	return _oc_se_changed(e->changed, e->nchanged, id, blk);
}

static bool array_changed_by_others(struct pg_eng *e, uint64_t id)
{
	return _oc_se_changed_from(e->changed, e->nchanged, id, 0, true);
}

/* The detail for a commit that failed because wc was lost before COMMIT. */
static void lost_before_commit(struct pg_eng *e)
{
	const char *m = PQerrorMessage(e->wc);

	srv_detail(e->wc, "connection lost (%.*s): "
		   "nothing was committed%s; the changes are kept: "
		   "commit again to retry, or abort", line_len(m), m,
		   e->uk ? " now (whether the commit before was is "
			   "checked at the retry)" : "");
}

static void eng_txn_abort(void *p)
{
	struct pg_eng *e = p;
	PGresult *r;

	if (e->copying) {
		PQputCopyEnd(e->wc, "aborted");
		while ((r = PQgetResult(e->wc)))
			PQclear(r);
		e->copying = COPY_NONE;
	}
	if (e->in_w && PQstatus(e->wc) == CONNECTION_OK) {
		PQclear(PQexec(e->wc, "ROLLBACK"));
		trip(e->wc);
	}
	e->in_w = false;
	e->any_blocks = false;
	free(e->direct);
	e->direct = NULL;
	e->ndirect = e->cap_direct = 0;
	free(e->changed);
	e->changed = NULL;
	e->nchanged = 0;
}

/* A commit of an earlier attempt lost its acknowledgement (uk): with the
 * writer lock held (so that transaction has ended), ask the server what
 * became of it.  0: it was not made, go on; OC_ESTOREIO: it was made (or
 * cannot be told), so this attempt must not apply the changes again. */
static int check_unknown(struct pg_eng *e)
{
	unsigned char b[8];
	const char *vals[1] = {(char *)b};
	int lens[1] = {8}, err = 0;
	PGresult *r;

	_oc_put_be64(b, e->uk_xid);
	r = q(e->wc, "SELECT txid_status($1::int8)", 1, vals, lens, &err);
	if (!r)
		return err;
	/* NULL: the server no longer keeps that transaction's status, so
	 * it cannot say (not "aborted": a retry could commit twice). */
	if (!PQgetisnull(r, 0, 0) && !strcmp(PQgetvalue(r, 0, 0), "aborted")) {
		e->uk = false;
	} else if (!PQgetisnull(r, 0, 0) &&
		   !strcmp(PQgetvalue(r, 0, 0), "committed")) {
		e->uk = false;
		e->uk_made = true;
		err = OC_ESTOREIO;
	} else {
		err = OC_ESTOREIO;
		srv_detail(e->wc, "cannot tell whether the "
			   "commit whose connection was lost was made "
			   "(txid_status: %s): abort to continue",
			   PQgetisnull(r, 0, 0) ? "no longer known"
						: PQgetvalue(r, 0, 0));
	}
	PQclear(r);
	return err;
}

static void made_detail(struct pg_eng *e)
{

	srv_detail(e->wc, "the previous commit, whose "
		   "acknowledgement was lost with the connection, was "
		   "made after all: abort to continue from it");
}

static int eng_txn_begin(void *p)
{
	struct pg_eng *e = p;
	int err;
	PGresult *r;

	if (e->flags & OC_STORE_RDONLY)
		return OC_EREADONLY;
	OC_BUG_ON(e->in_w);
	if (e->uk_made) {
		made_detail(e);
		return OC_ESTOREIO;
	}
	if (PQstatus(e->wc) != CONNECTION_OK) {
		err = reconnect(e->wc);
		if (err)
			return err;
		e->have_tmp = false; /* a new session */
	}
	if (!e->have_tmp) {
		/* The session's staging table, made outside the transaction
		 * (a rollback would drop it).  Blocks are not compressed:
		 * pglz is slower than the network and gains little on
		 * numbers. */
		err = exec0(e->wc, "CREATE TEMP TABLE IF NOT EXISTS outcore_tmp ("
				   " array_id bigint, blk bigint, hash bigint,"
				   " data bytea) ON COMMIT DELETE ROWS;"
				   "ALTER TABLE outcore_tmp ALTER COLUMN data"
				   " SET STORAGE EXTERNAL");
		if (err)
			goto fail;
		e->have_tmp = true;
	}
	err = exec0(e->wc, "BEGIN ISOLATION LEVEL READ COMMITTED");
	if (err)
		goto fail;
	e->in_w = true;
	/* The writer lock: held to COMMIT. */
	r = q(e->wc, "UPDATE outcore_meta SET seq = seq + 1 WHERE id = 1"
		     " RETURNING seq, next_id, txid_current(), format",
	      0, NULL, NULL, &err);
	if (!r)
		goto fail;
	if (PQntuples(r) != 1 || PQgetlength(r, 0, 3) != 4) {
		PQclear(r);
		err = OC_ENOTSTORE;
		goto fail;
	}
	if (_oc_get_be32((const unsigned char *)PQgetvalue(r, 0, 3)) >
	    FORMAT_VERSION) {
		PQclear(r);
		err = OC_EVERSION; /* upgraded by a newer library meanwhile */
		goto fail;
	}
	e->w_id = val64(r, 0, 0);
	e->w_exists_id = 0;
	e->next_id = e->w_first_id = val64(r, 0, 1);
	e->w_xid = val64(r, 0, 2);
	PQclear(r);
	if (e->uk) {
		err = check_unknown(e);
		if (err) {
			if (e->uk_made)
				made_detail(e);
			goto fail;
		}
	}
	/* Conflicts are checked against the transaction's snapshot, also on
	 * a retry after a lost connection: the log has every commit since. */
	err = log_read(e->wc, e->snap_id, INT64_MAX, &e->changed, &e->nchanged);
	if (err)
		goto fail;
	return 0;
fail:
	if (err == OC_ESTOREIO && PQstatus(e->wc) != CONNECTION_OK)
		lost_before_commit(e);
	eng_txn_abort(e);
	return err;
}

static int log_put(struct pg_eng *e, uint64_t id, uint64_t blk)
{
	unsigned char b[24];
	const char *vals[3] = {(char *)b, (char *)b + 8, (char *)b + 16};
	int lens[3] = {8, 8, 8};

	_oc_put_be64(b, e->w_id);
	_oc_put_be64(b + 8, id);
	_oc_put_be64(b + 16, blk);
	return cmd(e->wc, "INSERT INTO outcore_log VALUES ($1::int8, $2::int8,"
			  " $3::int8)", 3, vals, lens);
}

/* Does array id exist in the write transaction?  0 yes, OC_ENOTFOUND. */
static int w_exists(struct pg_eng *e, uint64_t id)
{
	unsigned char b[8];
	const char *vals[1] = {(char *)b};
	int lens[1] = {8}, err = 0;
	PGresult *r;

	_oc_put_be64(b, id);
	r = q(e->wc, "SELECT 1 FROM outcore_arrays WHERE id = $1::int8", 1, vals,
	      lens, &err);
	if (!r)
		return err;
	err = PQntuples(r) ? 0 : OC_ENOTFOUND;
	PQclear(r);
	return err;
}

static int eng_txn_array(void *p, enum oc_se_change what, uint64_t id,
			 const char *name, const oc_array_meta_t *meta,
			 uint64_t *new_id)
{
	struct pg_eng *e = p;
	unsigned char b[24], *rec = NULL;
	const char *vals[4];
	int lens[4], err = 0;
	size_t len;
	PGresult *r;

	OC_BUG_ON(!e->in_w);
	switch (what) {
	case OC_SE_CREATE:
		vals[0] = name;
		lens[0] = (int)strlen(name);
		r = q(e->wc, "SELECT 1 FROM outcore_arrays WHERE name = $1::bytea",
		      1, vals, lens, &err);
		if (!r)
			return err;
		if (PQntuples(r)) {
			PQclear(r);
			return OC_ECONFLICT; /* created meanwhile by another */
		}
		PQclear(r);
		id = e->next_id++;
		err = _oc_se_meta_encode(id, e->w_id, meta, &rec, &len);
		if (err)
			return err;
		_oc_put_be64(b, id);
		_oc_put_be64(b + 8, e->w_id);
		vals[1] = (char *)b;
		lens[1] = 8;
		vals[2] = (char *)b + 8;
		lens[2] = 8;
		vals[3] = (char *)rec;
		lens[3] = (int)len;
		err = cmd(e->wc, "INSERT INTO outcore_arrays (name, id, version, meta)"
				 " VALUES ($1::bytea, $2::int8, $3::int8, $4::bytea)",
			  4, vals, lens);
		free(rec);
		if (!err)
			err = log_put(e, id, OC_SE_META);
		if (!err)
			*new_id = id;
		return err;
	case OC_SE_DELETE:
	case OC_SE_SET:
		if (changed_by_others(e, id, OC_SE_META) ||
		    (what == OC_SE_DELETE && array_changed_by_others(e, id)))
			return OC_ECONFLICT;
		err = w_exists(e, id);
		if (err)
			return err == OC_ENOTFOUND ? OC_ECONFLICT : err;
		_oc_put_be64(b, id);
		_oc_put_be64(b + 8, e->w_id);
		vals[0] = (char *)b;
		lens[0] = 8;
		vals[1] = (char *)b + 8;
		lens[1] = 8;
		if (what == OC_SE_DELETE) {
			err = cmd(e->wc, "DELETE FROM outcore_arrays WHERE id = $1::int8",
				  1, vals, lens);
			if (!err)
				err = cmd(e->wc, "INSERT INTO outcore_log"
						 " SELECT $2::int8, array_id, blk"
						 " FROM outcore_blocks"
						 " WHERE array_id = $1::int8",
					  2, vals, lens);
			if (!err)
				err = cmd(e->wc, "DELETE FROM outcore_blocks"
						 " WHERE array_id = $1::int8",
					  1, vals, lens);
		} else {
			err = _oc_se_meta_encode(id, e->w_id, meta, &rec, &len);
			if (err)
				return err;
			vals[2] = (char *)rec;
			lens[2] = (int)len;
			err = cmd(e->wc, "UPDATE outcore_arrays SET version = $2::int8,"
					 " meta = $3::bytea WHERE id = $1::int8",
				  3, vals, lens);
			free(rec);
		}
		if (!err)
			err = log_put(e, id, OC_SE_META);
		return err;
	}
	return -EINVAL;
}

/* Is block blk of array id absent from the snapshot, as far as is known
 * without asking: an array this transaction creates, or a hole in a
 * window blk_map read. */
static bool known_absent(struct pg_eng *e, uint64_t id, uint64_t blk)
{
	struct pg_win *w;
	bool absent;

	if (id >= e->w_first_id)
		return true;
	pthread_mutex_lock(&e->mu);
	w = win_find(e, id, blk);
	absent = w && !win_has(w, blk);
	pthread_mutex_unlock(&e->mu);
	return absent;
}

static int copy_end(struct pg_eng *e);

/* Whether array id still exists, if its metadata changed since our
 * snapshot (deleted, or created again under a new id, meanwhile?): asked
 * once per array (its blocks come together; the writer lock keeps the
 * answer), after ending a COPY in progress (the connection runs one
 * command at a time).  0, OC_ECONFLICT, or an error. */
static int still_there(struct pg_eng *e, uint64_t id)
{
	int err;

	if (!changed_by_others(e, id, OC_SE_META) || e->w_exists_id == id)
		return 0;
	if (e->copying && (err = copy_end(e)))
		return err;
	err = w_exists(e, id);
	if (err)
		return err == OC_ENOTFOUND ? OC_ECONFLICT : err;
	e->w_exists_id = id;
	return 0;
}

static int put_copy(struct pg_eng *e, const void *buf, size_t n)
{
	if (PQputCopyData(e->wc, buf, (int)n) != 1)
		return pg_err(e->wc, NULL);
	return 0;
}

static int eng_txn_block(void *p, uint64_t id, uint64_t blk, size_t blksize,
			 const void *buf)
{
	/* COPY BINARY header: signature, flags, header extension length. */
	static const char header[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0";
	struct pg_eng *e = p;
	unsigned char t[2 + 4 * 12 + 4], *w = t;
	enum copy_to want;
	bool zero, direct;
	int err;

	OC_BUG_ON(!e->in_w);
	if (changed_by_others(e, id, blk))
		return OC_ECONFLICT;
	err = still_there(e, id);
	if (err)
		return err;
	if (blksize > INT32_MAX)
		return -EINVAL;
	zero = _oc_all_zero(buf, blksize);
	/* A block absent from the snapshot (and so now: nobody changed it
	 * since, and we hold the writer lock) goes straight into
	 * outcore_blocks; the others through outcore_tmp. */
	direct = !zero && known_absent(e, id, blk);
	want = direct ? COPY_DIRECT : COPY_TMP;
	if (e->copying && e->copying != want && (err = copy_end(e)))
		return err;
	if (direct && e->ndirect == e->cap_direct) {
		size_t n = e->cap_direct ? 2 * e->cap_direct : 64;
		struct oc_se_blkref *d = realloc(e->direct, n * sizeof *d);
		if (!d)
			return -ENOMEM;
		e->direct = d;
		e->cap_direct = n;
	}
	if (!e->copying) {
		PGresult *r = PQexec(e->wc, direct ? "COPY outcore_blocks FROM STDIN"
						     " (FORMAT binary)"
						   : "COPY outcore_tmp FROM STDIN"
						     " (FORMAT binary)");
		trip(e->wc);
		if (PQresultStatus(r) != PGRES_COPY_IN) {
			err = pg_err(e->wc, r);
			PQclear(r);
			return err;
		}
		PQclear(r);
		e->copying = want;
		err = put_copy(e, header, sizeof header);
		if (err)
			return err;
	}
	/* Rows: outcore_tmp (array_id, blk, hash, data: NULL for zeros),
	 * outcore_blocks (array_id, blk, hash, version, data). */
	w[0] = 0, w[1] = direct ? 5 : 4, w += 2;
	_oc_put_be32(w, 8), _oc_put_be64(w + 4, id), w += 12;
	_oc_put_be32(w, 8), _oc_put_be64(w + 4, blk), w += 12;
	_oc_put_be32(w, 8), _oc_put_be64(w + 4, zero ? 0 : XXH64(buf, blksize, 0)), w += 12;
	if (direct)
		_oc_put_be32(w, 8), _oc_put_be64(w + 4, e->w_id), w += 12;
	_oc_put_be32(w, zero ? UINT32_MAX : (uint32_t)blksize), w += 4; /* -1: NULL */
	err = put_copy(e, t, (size_t)(w - t));
	if (!err && !zero)
		err = put_copy(e, buf, blksize);
	if (err)
		return err;
	if (direct)
		e->direct[e->ndirect++] = (struct oc_se_blkref){id, blk};
	else
		e->any_blocks = true;
	if (zero) {
		CNT(e, n_zeroed);
	} else {
		CNT(e, n_stored);
		__atomic_add_fetch(&e->n_bytes, blksize, __ATOMIC_RELAXED);
	}
	return 0;
}

static int copy_end(struct pg_eng *e)
{
	static const char trailer[2] = {'\377', '\377'};
	PGresult *r;
	int err;

	e->copying = COPY_NONE;
	err = put_copy(e, trailer, sizeof trailer);
	if (!err && PQputCopyEnd(e->wc, NULL) != 1)
		err = pg_err(e->wc, NULL);
	trip(e->wc);
	while ((r = PQgetResult(e->wc))) {
		if (!err && PQresultStatus(r) != PGRES_COMMAND_OK)
			err = pg_err(e->wc, r);
		PQclear(r);
	}
	return err;
}

/* Log the blocks copied straight into outcore_blocks: one INSERT of two
 * arrays (text: "{id,...}", "{blk,...}"). */
static int log_direct(struct pg_eng *e)
{
	size_t cap = e->ndirect * 21 + 3;
	char *ids = malloc(cap), *blks = malloc(cap), *pi = ids, *pb = blks;
	unsigned char b[8];
	const char *vals[3] = {(char *)b, ids, blks};
	int lens[3] = {8, 0, 0}, fmts[3] = {1, 0, 0}, err = 0;
	PGresult *r;

	if (!ids || !blks) {
		free(ids);
		free(blks);
		return -ENOMEM;
	}
	*pi++ = '{', *pb++ = '{';
	for (size_t i = 0; i < e->ndirect; i++) {
		/* As stored: bit-cast to bigint. */
		pi += sprintf(pi, "%s%lld", i ? "," : "", (long long)e->direct[i].id);
		pb += sprintf(pb, "%s%lld", i ? "," : "", (long long)e->direct[i].blk);
	}
	strcpy(pi, "}");
	strcpy(pb, "}");
	_oc_put_be64(b, e->w_id);
	r = PQexecParams(e->wc, "INSERT INTO outcore_log SELECT $1::int8,"
				" unnest($2::int8[]), unnest($3::int8[])",
			 3, NULL, vals, lens, fmts, 1);
	trip(e->wc);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		err = pg_err(e->wc, r);
	PQclear(r);
	free(ids);
	free(blks);
	return err;
}

static int eng_txn_commit(void *p)
{
	struct pg_eng *e = p;
	unsigned char b[16];
	const char *vals[2] = {(char *)b, (char *)b + 8};
	int lens[2] = {8, 8}, err = 0;
	PGresult *r;

	OC_BUG_ON(!e->in_w);
	_oc_put_be64(b, e->w_id);
	_oc_put_be64(b + 8, e->next_id);
	if (e->copying)
		err = copy_end(e);
	if (!err && e->any_blocks)
		err = exec0(e->wc, "DELETE FROM outcore_blocks b USING outcore_tmp t"
				   " WHERE b.array_id = t.array_id AND b.blk = t.blk"
				   " AND t.data IS NULL");
	if (!err && e->any_blocks)
		err = cmd(e->wc, "INSERT INTO outcore_blocks"
				 " SELECT array_id, blk, hash, $1::int8, data"
				 " FROM outcore_tmp WHERE data IS NOT NULL"
				 " ON CONFLICT (array_id, blk) DO UPDATE SET"
				 " hash = EXCLUDED.hash, version = EXCLUDED.version,"
				 " data = EXCLUDED.data", 1, vals, lens);
	if (!err && e->any_blocks)
		err = cmd(e->wc, "INSERT INTO outcore_log"
				 " SELECT $1::int8, array_id, blk FROM outcore_tmp",
			  1, vals, lens);
	if (!err && e->ndirect)
		err = log_direct(e);
	if (!err && e->next_id != e->w_first_id) /* arrays were created */
		err = cmd(e->wc, "UPDATE outcore_meta SET next_id = $1::int8"
				 " WHERE id = 1", 1, vals + 1, lens + 1);
	if (err) {
		if (err == OC_ESTOREIO && PQstatus(e->wc) != CONNECTION_OK)
			lost_before_commit(e);
		eng_txn_abort(e);
		return err;
	}
	r = PQexec(e->wc, "COMMIT");
	trip(e->wc);
	if (PQresultStatus(r) != PGRES_COMMAND_OK ||
	    strcmp(PQcmdStatus(r), "COMMIT")) {
		bool lost = conn_lost(e->wc, r);
		err = pg_err(e->wc, r);
		if (lost) {
			/* Made or not: the server may have committed before
			 * the connection went.  The retry finds out. */
			e->uk = true;
			e->uk_xid = e->w_xid;
			srv_detail(e->wc, "connection lost "
				   "during COMMIT: the changes are kept; "
				   "commit again (it first checks whether "
				   "this one was made), or abort");
		}
	}
	PQclear(r);
	e->in_w = false; /* committed or rolled back by the server */
	if (err) {
		eng_txn_abort(e);
		return err;
	}
	e->last_commit = e->w_id;
	eng_txn_abort(e); /* frees the change set */
	return 0;
}

/* ---- snapshot renewal ------------------------------------------------------ */

static int eng_snapshot_renew(void *p,
			      void (*changed)(void *arg, uint64_t id, uint64_t blk),
			      void *arg)
{
	struct pg_eng *e = p;
	unsigned char b[16];
	const char *vals[2] = {(char *)b, (char *)b + 8};
	int lens[2] = {8, 8}, err;
	uint64_t old = e->snap_id, new_id = 0;
	PGresult *r = NULL;

	/* A PostgreSQL snapshot lives in its connection's transaction: the
	 * new one is taken first (reconnecting if the connection was lost:
	 * nothing is lost with it now), then the blocks that changed in
	 * between are reported (pages loaded meanwhile came from either
	 * snapshot and are dropped). */
	pthread_mutex_lock(&e->mu);
	err = rc_reopen(e, &new_id);
	if (!err) {
		_oc_put_be64(b, old);
		_oc_put_be64(b + 8, new_id);
		r = q(e->rc, "SELECT seq, array_id, blk FROM outcore_log"
			     " WHERE seq > $1::int8 AND seq <= $2::int8",
		      2, vals, lens, &err);
	}
	memset(e->win, 0, sizeof e->win);
	if (!err) {
		e->snap_id = new_id;
		e->rc_moved = false;
		free(e->stale);
		e->stale = NULL;
		e->nstale = 0;
		/* A commit whose outcome was unknown is in the new
		 * snapshot, or, if still in flight, a conflict for the next
		 * commit that touches what it changed. */
		e->uk = e->uk_made = false;
	} else {
		e->rc_bad = true;
	}
	pthread_mutex_unlock(&e->mu);
	if (err)
		return err;
	for (int i = 0; i < PQntuples(r); i++)
		if (val64(r, i, 0) != e->last_commit)
			changed(arg, val64(r, i, 1), val64(r, i, 2));
	PQclear(r);
	return 0;
}

static void eng_stats(void *p, oc_store_stats_t *s)
{
	struct pg_eng *e = p;

#define GET(f) __atomic_load_n(&e->f, __ATOMIC_RELAXED)
	s->blocks_stored = GET(n_stored);
	s->blocks_zeroed = GET(n_zeroed);
	s->bytes_written = GET(n_bytes);
	s->loads = GET(n_loads);
	s->holes = GET(n_holes);
	s->verified = GET(n_verified);
	s->corrupt = GET(n_corrupt);
	s->round_trips = GET(n_trips);
#undef GET
	s->snapshot = e->snap_id;
}

static int eng_txn_truncate(void *p, uint64_t id, uint64_t nblk,
			    size_t blksize)
{
	struct pg_eng *e = p;
	unsigned char b[24];
	const char *vals[3] = {(char *)b, (char *)b + 8, (char *)b + 16};
	const int lens[3] = {8, 8, 8};
	int err;

	(void)blksize;
	OC_BUG_ON(!e->in_w);
	/* any change from nblk on, deletes included, as for txn_block */
	if (_oc_se_changed_from(e->changed, e->nchanged, id, nblk, false))
		return OC_ECONFLICT;
	if ((err = still_there(e, id)))
		return err;
	if (nblk > INT64_MAX)
		return 0; /* no block is stored that far */
	/* the connection runs one command at a time */
	if (e->copying && (err = copy_end(e)))
		return err;
	_oc_put_be64(b, id);
	_oc_put_be64(b + 8, e->w_id);
	_oc_put_be64(b + 16, nblk);
	err = cmd(e->wc, "INSERT INTO outcore_log SELECT $2::int8, array_id, blk"
			 " FROM outcore_blocks"
			 " WHERE array_id = $1::int8 AND blk >= $3::int8",
		  3, vals, lens);
	if (!err) {
		const char *v2[2] = {vals[0], vals[2]};
		err = cmd(e->wc, "DELETE FROM outcore_blocks"
				 " WHERE array_id = $1::int8 AND blk >= $2::int8",
			  2, v2, lens);
	}
	return err;
}

const oc_store_engine_ops_t _oc_store_pg = {
	.version = OC_STORE_ENGINE_VERSION,
	.name = "postgresql",
	.open = eng_open,
	.close = eng_close,
	.array_get = eng_array_get,
	.array_name = eng_array_name,
	.array_list = eng_array_list,
	.blk_map = eng_blk_map,
	.blk_load = eng_blk_load,
	.txn_begin = eng_txn_begin,
	.txn_array = eng_txn_array,
	.txn_block = eng_txn_block,
	.txn_commit = eng_txn_commit,
	.txn_abort = eng_txn_abort,
	.snapshot_renew = eng_snapshot_renew,
	.stats = eng_stats,
	.txn_truncate = eng_txn_truncate,
};
