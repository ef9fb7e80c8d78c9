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
 * Commit.  txn_begin opens a READ COMMITTED transaction and increments seq
 * with UPDATE ... RETURNING: the row lock serialises committers (it is the
 * writer lock, held to COMMIT), so seq order is commit order, and the
 * change log read right after holds every commit since our snapshot: a
 * block or metadata we write that is in it is a conflict (OC_ECONFLICT),
 * as are PostgreSQL's serialization failures and deadlocks (40001, 40P01).
 * Blocks are streamed with COPY ... FROM STDIN (FORMAT binary) into a temp
 * table (all-zero blocks as NULL data: deleted), then merged into
 * outcore_blocks with one DELETE and one INSERT ... ON CONFLICT, and logged
 * with one INSERT ... SELECT: a constant number of round trips per commit.
 * COMMIT is the one commit point (durable with the server's default
 * synchronous_commit).
 *
 * Errors.  Connection and server errors give OC_ESTOREIO with the SQLSTATE
 * and the server's primary message as the thread's error detail (never the
 * connection string).  A lost write connection is reset at the next
 * txn_begin, a lost read connection at the next snapshot_renew: a
 * snapshot cannot survive its connection, so loads fail until then.
 *
 * Not done in this first cut: page deltas (blocks are always written
 * whole), pruning of outcore_log, bounded retries with reconnection for
 * loads inside page faults, verified-once tracking (every load is
 * verified), read-only server-side enforcement.
 */
#include "internal.h"
#include "store_engine.h"

#include <errno.h>
#include <libpq-fe.h>
#include <string.h>
#include <xxhash.h>

#define FORMAT_VERSION 1
#define MAGIC "outcore-store"

struct pg_eng {
	PGconn *rc;             /* read connection: the snapshot */
	PGconn *wc;             /* write connection */
	int flags;

	pthread_mutex_t mu;     /* guards rc and snap_id */
	uint64_t snap_id;

	bool in_w, copying, any_blocks;
	uint64_t w_id, next_id;
	struct oc_se_blkref *changed; /* sorted: changed by others since snap */
	size_t nchanged;
	uint64_t last_commit;

	uint64_t n_stored, n_zeroed, n_bytes, n_loads, n_holes, n_verified,
		n_corrupt;
};

#define CNT(e, f) __atomic_add_fetch(&(e)->f, 1, __ATOMIC_RELAXED)

/* ---- encoding ------------------------------------------------------------ */

/* ---- libpq helpers ------------------------------------------------------- */

static void no_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
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
	if (PQstatus(c) != CONNECTION_OK)
		oc_set_error_detail("postgresql: connection to %s:%s lost",
				    PQhost(c) ? PQhost(c) : "?",
				    PQport(c) ? PQport(c) : "?");
	else
		oc_set_error_detail("postgresql: %s%s%s", state ? state : "",
				    state ? ": " : "", msg ? msg : "query failed");
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

static int pg_connect(PGconn **out, const char *conninfo)
{
	PGconn *c = PQconnectdb(conninfo);

	if (!c)
		return -ENOMEM;
	if (PQstatus(c) != CONNECTION_OK) {
		/* libpq's message names host and port, never the password. */
		const char *m = PQerrorMessage(c);
		oc_set_error_detail("postgresql: cannot connect: %.*s",
				    (int)strcspn(m, "\n"), m);
		PQfinish(c);
		return OC_ESTOREIO;
	}
	PQsetNoticeProcessor(c, no_notice, NULL);
	*out = c;
	return 0;
}

/* Reset a connection that was lost. */
static int revive(PGconn *c)
{
	if (PQstatus(c) == CONNECTION_OK)
		return 0;
	PQreset(c);
	if (PQstatus(c) != CONNECTION_OK)
		return pg_err(c, NULL);
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
	if (!err)
		err = exec0(c, "COMMIT");
	else
		PQclear(PQexec(c, "ROLLBACK"));
	return err;
}

static int check_format(PGconn *c)
{
	int err = 0;
	PGresult *r = q(c, "SELECT magic, format FROM outcore_meta WHERE id = 1",
			0, NULL, NULL, &err);

	if (!r)
		return err;
	if (PQntuples(r) != 1 || PQgetlength(r, 0, 0) != (int)strlen(MAGIC) ||
	    memcmp(PQgetvalue(r, 0, 0), MAGIC, strlen(MAGIC)) ||
	    PQgetlength(r, 0, 1) != 4)
		err = OC_ENOTSTORE;
	else {
		const unsigned char *v = (const unsigned char *)PQgetvalue(r, 0, 1);
		uint32_t f = (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 |
			     (uint32_t)v[2] << 8 | v[3];
		if (f > FORMAT_VERSION)
			err = OC_EVERSION;
	}
	PQclear(r);
	return err;
}

/* Begin a snapshot on the read connection (mu held or not yet shared). */
static int snap_begin(struct pg_eng *e, uint64_t *id)
{
	int err = exec0(e->rc, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
	PGresult *r;

	if (err)
		return err;
	r = q(e->rc, "SELECT seq FROM outcore_meta WHERE id = 1", 0, NULL, NULL,
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
	free(e->changed);
	free(e);
}

static int eng_open(void **out, const char *path, int flags)
{
	struct pg_eng *e = calloc(1, sizeof *e);
	bool yes = false;
	PGresult *r;
	int err;

	if (!e)
		return -ENOMEM;
	pthread_mutex_init(&e->mu, NULL);
	e->flags = flags;
	err = pg_connect(&e->wc, path);
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
		err = pg_connect(&e->rc, path);
	if (err)
		goto fail;
	r = PQprepare(e->rc, "oc_blk",
		      "SELECT hash, data FROM outcore_blocks"
		      " WHERE array_id = $1::int8 AND blk = $2::int8", 2, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		err = pg_err(e->rc, r);
	PQclear(r);
	if (!err)
		err = snap_begin(e, &e->snap_id);
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

	pthread_mutex_lock(&e->mu);
	r = q(e->rc, "SELECT id, meta FROM outcore_arrays WHERE name = $1::bytea",
	      1, vals, lens, &err);
	pthread_mutex_unlock(&e->mu);
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
	pthread_mutex_lock(&e->mu);
	r = q(e->rc, "SELECT name FROM outcore_arrays WHERE id = $1::int8", 1,
	      vals, lens, &err);
	pthread_mutex_unlock(&e->mu);
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

	pthread_mutex_lock(&e->mu);
	r = q(e->rc, "SELECT name FROM outcore_arrays ORDER BY name", 0, NULL,
	      NULL, &err);
	pthread_mutex_unlock(&e->mu);
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

static int eng_blk_map(void *p, uint64_t id, uint64_t blk, size_t blksize,
		       int do_verify, int *fd, uint64_t *off)
{
	(void)p, (void)id, (void)blk, (void)blksize, (void)do_verify;
	(void)fd, (void)off;
	return OC_NOMAP; /* nothing to map: blk_load copies */
}

static int eng_blk_load(void *p, uint64_t id, uint64_t blk, size_t blksize,
			int do_verify, void *buf)
{
	struct pg_eng *e = p;
	unsigned char b[16];
	const char *vals[2] = {(char *)b, (char *)b + 8};
	int lens[2] = {8, 8}, fmts[2] = {1, 1}, err = 0;
	PGresult *r;

	_oc_put_be64(b, id);
	_oc_put_be64(b + 8, blk);
	pthread_mutex_lock(&e->mu);
	r = PQexecPrepared(e->rc, "oc_blk", 2, vals, lens, fmts, 1);
	pthread_mutex_unlock(&e->mu);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		err = pg_err(e->rc, r);
		PQclear(r);
		return err;
	}
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
	for (size_t i = 0; i < e->nchanged; i++)
		if (e->changed[i].id == id)
			return true;
	return false;
}

static void eng_txn_abort(void *p)
{
	struct pg_eng *e = p;
	PGresult *r;

	if (e->copying) {
		PQputCopyEnd(e->wc, "aborted");
		while ((r = PQgetResult(e->wc)))
			PQclear(r);
		e->copying = false;
	}
	if (e->in_w && PQstatus(e->wc) == CONNECTION_OK)
		PQclear(PQexec(e->wc, "ROLLBACK"));
	e->in_w = false;
	e->any_blocks = false;
	free(e->changed);
	e->changed = NULL;
	e->nchanged = 0;
}

static int eng_txn_begin(void *p)
{
	struct pg_eng *e = p;
	unsigned char b[8];
	const char *vals[1] = {(char *)b};
	int lens[1] = {8}, err;
	PGresult *r;

	if (e->flags & OC_STORE_RDONLY)
		return OC_EREADONLY;
	OC_BUG_ON(e->in_w);
	err = revive(e->wc);
	if (err)
		return err;
	err = exec0(e->wc, "BEGIN ISOLATION LEVEL READ COMMITTED");
	if (err)
		return err;
	e->in_w = true;
	/* The writer lock: held to COMMIT. */
	r = q(e->wc, "UPDATE outcore_meta SET seq = seq + 1 WHERE id = 1"
		     " RETURNING seq, next_id, format", 0, NULL, NULL, &err);
	if (!r)
		goto fail;
	if (PQntuples(r) != 1) {
		PQclear(r);
		err = OC_ENOTSTORE;
		goto fail;
	}
	e->w_id = val64(r, 0, 0);
	e->next_id = val64(r, 0, 1);
	PQclear(r);

	_oc_put_be64(b, e->snap_id);
	r = q(e->wc, "SELECT array_id, blk FROM outcore_log WHERE seq > $1::int8",
	      1, vals, lens, &err);
	if (!r)
		goto fail;
	if (PQntuples(r)) {
		e->changed = malloc((size_t)PQntuples(r) * sizeof *e->changed);
		if (!e->changed) {
			PQclear(r);
			err = -ENOMEM;
			goto fail;
		}
		for (int i = 0; i < PQntuples(r); i++) {
			e->changed[i].id = val64(r, i, 0);
			e->changed[i].blk = val64(r, i, 1);
		}
		e->nchanged = (size_t)PQntuples(r);
		qsort(e->changed, e->nchanged, sizeof *e->changed, _oc_se_change_cmp);
	}
	PQclear(r);
	err = exec0(e->wc, "CREATE TEMP TABLE IF NOT EXISTS outcore_tmp ("
			   " array_id bigint, blk bigint, hash bigint, data bytea)"
			   " ON COMMIT DELETE ROWS");
	if (err)
		goto fail;
	return 0;
fail:
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
	unsigned char t[2 + 3 * 12 + 4], *w = t;
	bool zero;
	int err;

	OC_BUG_ON(!e->in_w);
	if (changed_by_others(e, id, blk))
		return OC_ECONFLICT;
	if (changed_by_others(e, id, OC_SE_META)) {
		/* Deleted (or recreated) meanwhile? */
		err = w_exists(e, id);
		if (err)
			return err == OC_ENOTFOUND ? OC_ECONFLICT : err;
	}
	if (blksize > INT32_MAX)
		return -EINVAL;
	if (!e->copying) {
		PGresult *r = PQexec(e->wc, "COPY outcore_tmp FROM STDIN"
					    " (FORMAT binary)");
		if (PQresultStatus(r) != PGRES_COPY_IN) {
			err = pg_err(e->wc, r);
			PQclear(r);
			return err;
		}
		PQclear(r);
		e->copying = true;
		err = put_copy(e, header, sizeof header);
		if (err)
			return err;
	}
	zero = _oc_all_zero(buf, blksize);
	w[0] = 0, w[1] = 4, w += 2; /* 4 fields */
	_oc_put_be32(w, 8), _oc_put_be64(w + 4, id), w += 12;
	_oc_put_be32(w, 8), _oc_put_be64(w + 4, blk), w += 12;
	_oc_put_be32(w, 8), _oc_put_be64(w + 4, zero ? 0 : XXH64(buf, blksize, 0)), w += 12;
	_oc_put_be32(w, zero ? UINT32_MAX : (uint32_t)blksize), w += 4; /* -1: NULL */
	err = put_copy(e, t, (size_t)(w - t));
	if (!err && !zero)
		err = put_copy(e, buf, blksize);
	if (err)
		return err;
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

	e->copying = false;
	err = put_copy(e, trailer, sizeof trailer);
	if (!err && PQputCopyEnd(e->wc, NULL) != 1)
		err = pg_err(e->wc, NULL);
	while ((r = PQgetResult(e->wc))) {
		if (!err && PQresultStatus(r) != PGRES_COMMAND_OK)
			err = pg_err(e->wc, r);
		PQclear(r);
	}
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
	if (!err)
		err = cmd(e->wc, "UPDATE outcore_meta SET next_id = $1::int8"
				 " WHERE id = 1", 1, vals + 1, lens + 1);
	if (err) {
		eng_txn_abort(e);
		return err;
	}
	r = PQexec(e->wc, "COMMIT");
	if (PQresultStatus(r) != PGRES_COMMAND_OK ||
	    strcmp(PQcmdStatus(r), "COMMIT"))
		err = pg_err(e->wc, r);
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
	 * new one is taken first, then the blocks that changed in between are
	 * reported (pages loaded meanwhile came from either snapshot and are
	 * dropped). */
	pthread_mutex_lock(&e->mu);
	err = revive(e->rc);
	if (!err)
		PQclear(PQexec(e->rc, "COMMIT"));
	if (!err)
		err = snap_begin(e, &new_id);
	if (!err) {
		_oc_put_be64(b, old);
		_oc_put_be64(b + 8, new_id);
		r = q(e->rc, "SELECT seq, array_id, blk FROM outcore_log"
			     " WHERE seq > $1::int8 AND seq <= $2::int8",
		      2, vals, lens, &err);
	}
	if (!err)
		e->snap_id = new_id;
	pthread_mutex_unlock(&e->mu);
	if (err) {
		/* The old snapshot is gone with the connection's transaction:
		 * every cached page may be stale. */
		return err;
	}
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
#undef GET
	s->snapshot = e->snap_id;
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
};
