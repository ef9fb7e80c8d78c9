/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * pg_copy.c: the PostgreSQL server's own best path for the bytes of the
 * store benchmark, the baseline of bench/bench_pg.py (a helper it runs,
 * not a benchmark of its own: `make bench-c` does not run it).
 *
 *     OC_BENCH_PG_URL=postgresql://... pg_copy prep|in|out NBLOCKS [BLKSIZE]
 *
 * prep: (re)creates the empty table oc_copy (id bigint PRIMARY KEY, data
 *      bytea NOT NULL, data STORAGE EXTERNAL: uncompressed and out of
 *      line, as outcore_blocks of src/store_pg.c), committed before `in`
 *      runs, so that `in` writes WAL as an existing table needs.
 * in:  timed: BEGIN, COPY oc_copy FROM STDIN (FORMAT binary) of NBLOCKS rows
 *      (id, BLKSIZE bytes: the float64 data of bench_store.py's fill_chunk,
 *      made row by row as the store benchmark's fill does), COMMIT (with
 *      the server's default synchronous_commit).
 * out: timed: COPY oc_copy TO STDOUT (FORMAT binary), every row received
 *      (PQgetCopyData) and its id and length checked.
 *
 * One connection, the same libpq connection string as outcore's (TCP
 * loopback in the benchmark; libpq's PG* variables and PGPASSFILE work).
 * in and out print one JSON line: seconds (of the timed part), peak RSS,
 * round trips (exchanges in which the client waits for the server: BEGIN,
 * COPY start, COPY end, COMMIT for in; the COPY for out), bytes, rows.
 * Exits 0, or 1 with a message on stderr.
 */
#include <libpq-fe.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static int round_trips;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(PGconn *c, const char *what)
{
	fprintf(stderr, "pg_copy: %s: %s", what, c ? PQerrorMessage(c) : "failed\n");
	exit(1);
}

/* Run sql; expect status want. */
static void run(PGconn *c, const char *sql, ExecStatusType want)
{
	PGresult *r = PQexec(c, sql);

	round_trips++;
	if (PQresultStatus(r) != want)
		die(c, sql);
	PQclear(r);
}

static void put_be16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

static void put_be32(unsigned char *p, uint32_t v)
{
	for (int i = 3; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void put(PGconn *c, const void *buf, size_t n)
{
	if (PQputCopyData(c, buf, (int)n) != 1)
		die(c, "PQputCopyData");
}

static void prep(PGconn *c)
{
	run(c, "DROP TABLE IF EXISTS oc_copy", PGRES_COMMAND_OK);
	run(c, "CREATE TABLE oc_copy (id bigint PRIMARY KEY, data bytea NOT NULL)",
	    PGRES_COMMAND_OK);
	run(c, "ALTER TABLE oc_copy ALTER COLUMN data SET STORAGE EXTERNAL",
	    PGRES_COMMAND_OK);
}

static void copy_in(PGconn *c, uint64_t nblocks, size_t blksize)
{
	static const char header[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0";
	static const unsigned char trailer[2] = {0xff, 0xff};
	size_t n = blksize / sizeof(double);
	double *buf = malloc(blksize);
	unsigned char t[2 + 12 + 4];
	PGresult *r;

	if (!buf)
		die(NULL, "malloc");
	double t0 = now();
	run(c, "BEGIN", PGRES_COMMAND_OK);
	run(c, "COPY oc_copy FROM STDIN (FORMAT binary)", PGRES_COPY_IN);
	put(c, header, sizeof header);
	for (uint64_t i = 0; i < nblocks; i++) {
		for (size_t k = 0; k < n; k++) /* bench_store.fill_chunk */
			buf[k] = (double)(i * n + k) * 0.5 + 1.0;
		put_be16(t, 2);
		put_be32(t + 2, 8);
		put_be64(t + 6, i);
		put_be32(t + 14, (uint32_t)blksize);
		put(c, t, sizeof t);
		put(c, buf, blksize);
	}
	put(c, trailer, sizeof trailer);
	if (PQputCopyEnd(c, NULL) != 1)
		die(c, "PQputCopyEnd");
	round_trips++;
	while ((r = PQgetResult(c))) {
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			die(c, "COPY FROM");
		PQclear(r);
	}
	run(c, "COMMIT", PGRES_COMMAND_OK);
	double dt = now() - t0;

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"s\": %.6f, \"rss\": %ld, \"round_trips\": %d, \"bytes\": %" PRIu64
	       ", \"rows\": %" PRIu64 "}\n", dt, ru.ru_maxrss * 1024L, round_trips,
	       nblocks * (uint64_t)blksize, nblocks);
	free(buf);
}

static void copy_out(PGconn *c, uint64_t nblocks, size_t blksize)
{
	uint64_t rows = 0, bytes = 0;
	int first = 1, len;
	char *msg;
	PGresult *r;

	round_trips = 0;
	double t0 = now();
	run(c, "COPY oc_copy TO STDOUT (FORMAT binary)", PGRES_COPY_OUT);
	while ((len = PQgetCopyData(c, &msg, 0)) > 0) {
		const unsigned char *p = (const unsigned char *)msg;
		const unsigned char *end = p + len;
		if (first) { /* the header comes with the first row */
			if (len < 19 || memcmp(p, "PGCOPY\n\377\r\n\0", 11))
				die(NULL, "COPY header");
			p += 19 + get_be32(p + 15);
			first = 0;
		}
		if (end - p == 2 && p[0] == 0xff && p[1] == 0xff) { /* trailer */
			PQfreemem(msg);
			continue;
		}
		if (end - p != 2 + 12 + 4 + (long)blksize ||
		    p[0] != 0 || p[1] != 2 || get_be32(p + 2) != 8 ||
		    get_be32(p + 14) != blksize)
			die(NULL, "unexpected row");
		if (get_be64(p + 6) != rows)
			die(NULL, "rows out of order");
		rows++;
		bytes += blksize;
		PQfreemem(msg);
	}
	if (len == -2)
		die(c, "PQgetCopyData");
	while ((r = PQgetResult(c))) {
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			die(c, "COPY TO");
		PQclear(r);
	}
	double dt = now() - t0;

	if (rows != nblocks) {
		fprintf(stderr, "pg_copy: %" PRIu64 " rows, expected %" PRIu64 "\n",
			rows, nblocks);
		exit(1);
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"s\": %.6f, \"rss\": %ld, \"round_trips\": %d, \"bytes\": %" PRIu64
	       ", \"rows\": %" PRIu64 "}\n", dt, ru.ru_maxrss * 1024L, round_trips,
	       bytes, rows);
}

int main(int argc, char **argv)
{
	const char *url = getenv("OC_BENCH_PG_URL");
	uint64_t nblocks;
	size_t blksize = 2 << 20;
	PGconn *c;

	if (argc < 3 || argc > 4 || !url || (strcmp(argv[1], "prep") &&
	    strcmp(argv[1], "in") && strcmp(argv[1], "out"))) {
		fprintf(stderr, "usage: OC_BENCH_PG_URL=postgresql://... "
				"pg_copy prep|in|out NBLOCKS [BLKSIZE]\n");
		return 1;
	}
	nblocks = strtoull(argv[2], NULL, 0);
	if (argc == 4)
		blksize = strtoull(argv[3], NULL, 0);
	if (!blksize || blksize % sizeof(double) || blksize > (1u << 30))
		die(NULL, "BLKSIZE");
	c = PQconnectdb(url);
	if (PQstatus(c) != CONNECTION_OK)
		die(c, "connect");
	if (!strcmp(argv[1], "prep"))
		prep(c);
	else if (!strcmp(argv[1], "in"))
		copy_in(c, nblocks, blksize);
	else
		copy_out(c, nblocks, blksize);
	PQfinish(c);
	return 0;
}
