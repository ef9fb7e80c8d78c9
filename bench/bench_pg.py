#!/usr/bin/python3
# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""The PostgreSQL store benchmark: outcore on PostgreSQL against the server's bulk COPY and the LMDB store.

The data and workload of the store benchmark (bench_store.py: float64,
2 MiB blocks, fill_chunk's values), 1 GiB by default:

  create   create+commit: fill block by block, commit every 64 blocks and
           at the end (bench_store.Outcore.create);
  warm     a sum over the whole array in a fresh process, after an untimed
           scan in another one (the server's and the OS's caches warm).

Contenders, each phase in its own process, alternating (each round starts
with the next contender); every create goes to a fresh database / LMDB
directory; the figures are medians over the rounds (2 creates, 3 warm scans
by default: this machine's disk and CPUs are noisy), with their spread:

  COPY binary   build/bench/pg_copy (bench/pg_copy.c): the server's own best
                path for the same bytes, one COPY ... FROM STDIN (FORMAT
                binary) of (bigint id, 2 MiB bytea STORAGE EXTERNAL) rows in
                one transaction + COMMIT, and COPY ... TO STDOUT (FORMAT
                binary), through libpq on the same TCP loopback connection
                (its reader checks each row's id and length, nothing more:
                outcore's scan also copies, verifies and sums);
  outcore-pg    outcore.open("postgresql://...") (src/store_pg.c), checksums
                verified as in bench_store.py;
  outcore-pg-nv its warm scan with verify=False;
  outcore-lmdb  outcore.open(directory): the LMDB store of bench_store.py.

The server is started for the run (tests/python/pg_server.py: initdb in a
temporary directory under --dir, next to the LMDB store, on loopback with
scram authentication, the server's default settings otherwise) with
pg_stat_statements loaded.  Round trips per block (committed or read):
trips/block is the engine's own count (Store.stats()["round_trips"]: the
exchanges in which it waited for the server, a pipeline of read-ahead
requests counting one; summed over the stores of the phase as they close);
stmts/block the statements the server executed in the phase (a COPY FROM
counts two: its start and its end; connection setup and PQprepare are not
counted; pg_stat_statements may miss the first execution of a statement
prepared in the process), which counts each pipelined request; -v lists
the statements.  The block reads of
a create are the windows that tell the engine which blocks exist (a
block's first write after a commit faults: a hole is answered from them,
and the engine copies blocks absent from the snapshot straight into
outcore_blocks); a scan's are its read-ahead requests.  An
untimed CHECKPOINT follows every create into PostgreSQL, so no contender
pays for the previous one's dirty pages.

Targets (issue 6): outcore-pg create >= 0.7x and warm scan >= 0.7x of the
bulk COPY rate; the ratio to the LMDB store is printed for the README.  A
benchmark, not a test: exits 0 whether the targets are met or not (1 only
when something fails), and 0 with "skipped" when no server can be run.

Usage: bench_pg.py [--mb 1024] [--ram 256MiB] [--dir /var/tmp]
                   [--create-rounds 2] [--rounds 3] [-v]
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PG_COPY = os.path.join(ROOT, "build", "bench", "pg_copy")
URL_ENV = "OC_BENCH_PG_URL"     # the URL for children (no password in it: PGPASSFILE)
DB = "ocbench"                  # outcore's databases: ocbench0, ocbench1, ...
COPY_DB = "copybench"           # the baseline's
TARGET = 0.7

sys.path.insert(0, HERE)
import bench_store  # noqa: E402  (its workload, contenders and one())


def load(path, name):
    """Import a module by file path."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pg_server = load(os.path.join(ROOT, "tests", "python", "pg_server.py"),
                 "oc_bench_pg_server")


def fstype(path):
    """The file system of path, from /proc/mounts: "ext4 on /dev/vda"."""
    path, best = os.path.realpath(path), ("?", "?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, kind = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                        len(mnt) >= len(best[2]):
                    best = (kind, dev, mnt)
    except OSError:
        pass
    return "%s on %s" % best[:2]


class Server:
    """A PGServer with pg_stat_statements, and psql for the bench's own
    queries (run in the database postgres, so they are not counted)."""

    def __init__(self, srv):
        self.srv = srv
        self.psql_bin = os.path.join(srv.bindir, "psql")
        if not os.access(self.psql_bin, os.X_OK):
            self.psql_bin = shutil.which("psql")
        self.stats = False

    def psql(self, sql, db="postgres", check=True):
        r = subprocess.run([self.psql_bin, "-X", "-q", "-A", "-t", "-F", "\t",
                            "-v", "ON_ERROR_STOP=1", "-d", self.srv.url(db, password=False),
                            "-c", sql], capture_output=True, text=True, timeout=600,
                           env=self.srv.env())
        if check and r.returncode:
            raise RuntimeError("psql: %s: %s" % (sql, r.stderr.strip()))
        return r.stdout if r.returncode == 0 else None

    def enable_stats(self):
        """Load pg_stat_statements (a restart); False if it cannot be."""
        try:
            self.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            self.srv.restart()
            self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.stats = True
        except RuntimeError as e:
            print("(round trips not counted: %s)" % str(e).splitlines()[0])
        return self.stats

    def settings(self):
        out = self.psql("SELECT split_part(current_setting('server_version'), ' ', 1),"
                        " current_setting('shared_buffers'),"
                        " current_setting('synchronous_commit'),"
                        " current_setting('wal_level'), current_setting('max_wal_size')")
        return out.strip().split("\t")

    def reset(self):
        if self.stats:
            self.psql("SELECT pg_stat_statements_reset()")

    def statements(self, db):
        """[(calls, query)] executed in db since reset(), most first."""
        if not self.stats:
            return None
        out = self.psql("SELECT s.calls, regexp_replace(s.query, '\\s+', ' ', 'g')"
                        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                        " WHERE d.datname = '%s' ORDER BY s.calls DESC, s.query" % db)
        rows = []
        for line in out.splitlines():
            if line.strip():
                calls, query = line.split("\t", 1)
                rows.append((int(calls), query))
        return rows


def round_trips(stmts):
    """Client-server exchanges of the statements: a COPY FROM STDIN has two
    (start, end); every other statement one."""
    return sum(c * (2 if q.upper().startswith("COPY") and "FROM STDIN" in q.upper()
                    else 1) for c, q in stmts)


def child(kind, phase, path, nitems, ram):
    """One phase of an outcore contender in this process (bench_store.one),
    its JSON line with "trips" added: the round trips its stores counted
    (Store.stats()["round_trips"], read as each store closes)."""
    import contextlib
    import io
    sys.path.insert(0, ROOT)
    import outcore
    if kind.startswith("outcore-pg"):
        path = os.environ[URL_ENV]
    trips = [0]
    close = outcore.Store.close

    def counted_close(self):
        if not self.closed:
            trips[0] += self.stats()["round_trips"]
        close(self)
    outcore.Store.close = counted_close
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_store.one("outcore-nv" if kind.endswith("-nv") else "outcore",
                        phase, path, nitems, ram)
    r = json.loads(out.getvalue().strip().splitlines()[-1])
    r["trips"] = trips[0]
    print(json.dumps(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=int(os.environ.get("OC_BENCH_MB", 1024)))
    ap.add_argument("--ram", default="256MiB")
    ap.add_argument("--dir", default=os.environ.get("OC_BENCH_DIR", "/var/tmp"))
    ap.add_argument("--create-rounds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of warm scans")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print the statements each PostgreSQL phase executed")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "PHASE"), help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    nblk = (args.mb << 20) // bench_store.CHUNK
    nitems = nblk * (bench_store.CHUNK // 8)
    if args.one:
        child(args.one[0], args.one[1], args.path, nitems, args.ram)
        return 0

    why = pg_server.missing()
    if why:
        print("PostgreSQL store benchmark skipped: %s" % why)
        return 0
    if not os.access(PG_COPY, os.X_OK):
        print("bench_pg: %s missing: run `make %s` first"
              % (PG_COPY, os.path.relpath(PG_COPY, ROOT)))
        return 1

    plan = (("create", max(1, args.create_rounds),
             ("COPY binary", "outcore-pg", "outcore-lmdb")),
            ("warm", max(1, args.rounds),
             ("COPY binary", "outcore-pg", "outcore-pg-nv", "outcore-lmdb")))
    tmp = tempfile.mkdtemp(prefix="oc-bench-pg-", dir=args.dir)
    # PGServer makes its directory with mkdtemp(): under --dir too.
    tempfile.tempdir = args.dir
    res = {}        # (kind, phase) -> [result of each round]
    stmts = {}      # (kind, phase) -> statements of its last timed run
    failed = False
    try:
        with pg_server.PGServer() as srv:
            server = Server(srv)
            server.enable_stats()
            version, sbuf, sync, wal, maxwal = server.settings()
            copy_url = srv.createdb(COPY_DB, password=False)
            print("PostgreSQL store benchmark: %d MiB float64 (%d blocks of 2 MiB), outcore RAM"
                  " budget %s; create x%d, warm scan x%d (medians)"
                  % (args.mb, nblk, args.ram, plan[0][1], plan[1][1]))
            print("  LMDB store in %s (%s); PostgreSQL %s data in %s (%s), 127.0.0.1:%d (TCP)"
                  % (tmp, fstype(tmp), version, os.path.join(srv.dir, "data"),
                     fstype(srv.dir), srv.port))
            print("  server defaults: shared_buffers %s, synchronous_commit %s, wal_level %s,"
                  " max_wal_size %s; %d CPUs" % (sbuf, sync, wal, maxwal, os.cpu_count()))
            where = {}  # the store of the current create round: url, lmdb path, db name

            def run(kind, phase, timed=True):
                env = srv.env()     # PGPASSFILE: no password in a URL, argv or environment
                db = None
                if kind == "COPY binary":
                    env[URL_ENV] = copy_url
                    db = COPY_DB
                    if phase == "create":
                        p = subprocess.run([PG_COPY, "prep", "0"], capture_output=True,
                                           text=True, env=env)
                        if p.returncode != 0:
                            raise RuntimeError("pg_copy prep failed: %s" % p.stderr.strip())
                    cmd = [PG_COPY, "in" if phase == "create" else "out", str(nblk),
                           str(bench_store.CHUNK)]
                else:
                    if kind.startswith("outcore-pg"):
                        env[URL_ENV] = where["url"]
                        db = where["db"]
                    cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, phase,
                           "--path", where["lmdb"], "--mb", str(args.mb), "--ram", args.ram]
                if timed and db:
                    server.reset()
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    raise RuntimeError("%s %s failed: %s" % (
                        kind, phase, (p.stderr.strip().splitlines() or ["?"])[-1]))
                r = json.loads(p.stdout.strip().splitlines()[-1])
                if timed and db:
                    st = server.statements(db)
                    if st is not None:
                        stmts[(kind, phase)] = st
                        r["rt"] = round_trips(st)
                if phase == "create" and db:
                    server.psql("CHECKPOINT")
                return r

            for phase, rounds, kinds in plan:
                for rnd in range(rounds):
                    if phase == "create":
                        # A fresh database and LMDB directory per round; the
                        # previous round's go first (disk space).
                        if where:
                            srv.dropdb(where["db"])
                            shutil.rmtree(where["lmdb"], ignore_errors=True)
                            server.psql("CHECKPOINT")
                        name = "%s%d" % (DB, rnd)
                        where.update(db=name, url=srv.createdb(name, password=False),
                                     lmdb=os.path.join(tmp, "data%d" % rnd))
                    # contenders alternate: each round starts with the next one
                    for k in kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]:
                        try:
                            if phase == "warm":
                                run(k, phase, timed=False)
                            res.setdefault((k, phase), []).append(run(k, phase))
                        except (RuntimeError, ValueError) as e:
                            print("  %s" % e)
                            failed = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {key: statistics.median(r["s"] for r in rs) for key, rs in res.items()}
    gb = nblk * bench_store.CHUNK / 1e9
    print()
    print("%-14s %-7s %8s %7s %7s %8s %8s %9s %11s %11s" % (
        "contender", "phase", "seconds", "spread", "GB/s", "vs COPY", "vs LMDB",
        "peak RSS", "trips/block", "stmts/block"))
    for phase, rounds, kinds in plan:
        base = med.get(("COPY binary", phase))
        lmdb = med.get(("outcore-lmdb", phase))
        for k in kinds:
            rs = res.get((k, phase))
            if not rs:
                continue
            t = med[(k, phase)]
            times = [r["s"] for r in rs]
            spread = "%6.0f%%" % (100 * (max(times) - min(times)) / t) if len(rs) > 1 else "      -"
            vs_copy = "%7.2fx" % (base / t) if base else "    n/a"
            vs_lmdb = "%7.2fx" % (lmdb / t) if lmdb else "    n/a"
            trips = ("%11.3f" % (rs[-1]["trips"] / nblk)
                     if rs[-1].get("trips") is not None and k.startswith("outcore-pg")
                     else "%11s" % "-")
            stm = "%11.3f" % (rs[-1]["rt"] / nblk) if "rt" in rs[-1] else "%11s" % "-"
            print("%-14s %-7s %8.3f %7s %7.3f %8s %8s %5d MiB %s %s" % (
                k, phase, t, spread, gb / t, vs_copy, vs_lmdb,
                max(r["rss"] for r in rs) >> 20, trips, stm))
    print("(seconds: median of the rounds; spread: (max - min) / median; trips/block:"
          " the engine's round trips (Store.stats()[\"round_trips\"]) of the last timed"
          " run / %d blocks; stmts/block: the statements the server executed in it,"
          " pg_stat_statements)" % nblk)

    # The same values from both stores (and the expected sum).
    want = 0.5 * nitems * (nitems - 1) / 2 + nitems
    for k in ("outcore-pg", "outcore-pg-nv", "outcore-lmdb"):
        for r in res.get((k, "warm"), []):
            if abs(r["value"] - want) > 1e-9 * want:
                print("  WRONG: %s scan sum %r, expected %r" % (k, r["value"], want))
                failed = True

    for (k, phase), st in sorted(stmts.items()):
        if k == "outcore-pg" or args.verbose:
            wtx = sum(c for c, q in st if q.startswith("BEGIN ISOLATION LEVEL READ COMMITTED"))
            reads = sum(c for c, q in st if q.startswith("SELECT") and
                        " FROM outcore_blocks WHERE" in q)
            print("%s %s: %s round trips (engine) for %d blocks; the server executed"
                  " %d statements: %d block reads%s%s" % (
                k, phase, res[(k, phase)][-1].get("trips", "?"), nblk,
                round_trips(st), reads,
                ", %d write transactions (open, schema, snapshots included)" % wtx
                if wtx else "", ":" if args.verbose else " (-v: the statements)"))
            if args.verbose:
                for calls, query in st:
                    print("  %6d  %s" % (calls, query[:110]))

    def target(ok, text):
        print("TARGET %s: %s" % ("MET" if ok else "MISSED", text))

    for phase, what in (("create", "create+commit"), ("warm", "warm scan")):
        t, b = med.get(("outcore-pg", phase)), med.get(("COPY binary", phase))
        if t and b:
            target(b / t >= TARGET, "outcore-pg %s %.2fx bulk COPY %s (target >= %.1f)"
                   % (what, b / t, "FROM" if phase == "create" else "TO", TARGET))
    pg = [med.get(("outcore-pg", p)) for p in ("create", "warm")]
    lm = [med.get(("outcore-lmdb", p)) for p in ("create", "warm")]
    if all(pg) and all(lm):
        print("README: the PostgreSQL store (server on TCP loopback) runs create+commit at %.2fx"
              " and a warm scan at %.2fx the speed of the LMDB store (%.2f and %.2f GB/s against"
              " %.2f and %.2f)" % (lm[0] / pg[0], lm[1] / pg[1], gb / pg[0], gb / pg[1],
                                   gb / lm[0], gb / lm[1]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
