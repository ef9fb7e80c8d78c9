# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""What only the PostgreSQL engine has: a server to lose.  (Everything the
store does is tested against both engines in test_store.py.)

Servers: the session's (conftest.pgsrv) for the tests that leave it alone,
and one of this module's own for the tests that stop and restart it.  The
connection is lost three ways: a server restart (every connection goes), a
server stopped for good (reconnecting fails), and a proxy that cuts the
connection at a COMMIT (pg_proxy.py: the commit made or not, the client
cannot tell).
"""
import signal
import subprocess
import sys
import textwrap

import numpy
import pytest

import outcore
import pg_proxy
import pg_server
from conftest import PG_MISSING, new_database
from test_store import BS, F8_PER_BLK, ROOT, PeerError, peers  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(PG_MISSING is not None,
                                reason=PG_MISSING or "")


@pytest.fixture
def url(pgsrv):
    return new_database(pgsrv)


@pytest.fixture(scope="module")
def own():
    """A server of this module's own: its tests stop and restart it."""
    with pg_server.PGServer() as srv:
        yield srv


def store(url, **kw):
    kw.setdefault("ram", "64MiB")
    return outcore.open(url, **kw)


def test_round_trip_commit_reopen_abort(url, pgsrv):
    name = "it's; DROP TABLE outcore_blocks; -- \u00fc\u2603"
    data = numpy.arange(3 * F8_PER_BLK, dtype="<f8")
    with store(url) as db:
        assert pgsrv.password not in repr(db)
        A = db.create(name, data.shape, "<f8", attrs={"k": [1, 2]})
        B = db.create("b", (10,), "<i4")
        A[:] = data
        A[F8_PER_BLK:2 * F8_PER_BLK] = 0          # a hole: not stored
        B[3] = 7
        db.commit()
        st = db.stats()
        assert st["blocks_stored"] == 3 and st["blocks_zeroed"] == 1
    with store(url) as db:
        assert db.names() == sorted(["b", name])
        A = db[name]
        assert A.attrs == {"k": [1, 2]}
        v = A[...]
        assert (v[:F8_PER_BLK] == data[:F8_PER_BLK]).all()
        assert (v[F8_PER_BLK:2 * F8_PER_BLK] == 0).all()
        assert (v[2 * F8_PER_BLK:] == data[2 * F8_PER_BLK:]).all()
        assert db["b"][3] == 7
        # abort drops data and metadata changes
        A[0] = -1
        db.create("c", (5,), "<f8")
        del db["b"]
        db.abort()
        assert A[0] == 0 and db.names() == sorted(["b", name])
        # delete commits
        del db["b"]
        db.commit()
    with store(url) as db:
        assert db.names() == [name]


def test_one_open_per_process_whatever_the_scheme(url):
    """postgres:// names the same store as postgresql://: a second open in
    the process is refused as for a directory (it opened the store twice,
    two transactions of one process on one store)."""
    assert url.startswith("postgresql://")
    other = "postgres://" + url[len("postgresql://"):]
    with store(url):
        with pytest.raises(outcore.BusyError):
            store(other)
    with store(other) as db:
        assert db.names() == []


def test_bad_server_is_a_store_error_without_password(pgsrv):
    bad = "postgresql://%s:%s@127.0.0.1:%d/nosuchdb" % (
        pgsrv.user, pgsrv.password, pgsrv.port)
    with pytest.raises(outcore.StoreError) as e:
        outcore.open(bad)
    assert pgsrv.password not in str(e.value)
    assert "postgresql://***@127.0.0.1" in str(e.value)


def test_url_without_password_uses_the_password_file(pgsrv, monkeypatch,
                                                     tmp_path):
    url = new_database(pgsrv, password=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-file"))
    with pytest.raises(outcore.StoreError, match="cannot connect"):
        outcore.open(url)
    monkeypatch.setenv("PGPASSFILE", pgsrv.passfile)
    with store(url) as db:
        db.create("a", 3, "<i4")[:] = 3
        db.commit()
    with store(url) as db:
        assert (db["a"][...] == 3).all()


# ---- a server restart ----------------------------------------------------------

def filled(url, nblk=4):
    with store(url) as db:
        A = db.create("a", (nblk * F8_PER_BLK,), "<f8")
        A[:] = 1.0
        db.commit()


@pytest.mark.parametrize("load_first", [True, False],
                         ids=["load-then-commit", "commit-at-once"])
def test_server_restart_mid_transaction_commit_fails_retry_succeeds(
        own, load_first):
    url = new_database(own)
    filled(url)
    db = store(url)
    try:
        A = db["a"]
        A[:F8_PER_BLK] = 2.0                       # block 0 dirty
        A[3 * F8_PER_BLK] = 4.0                    # block 3 dirty
        own.restart()                              # every connection lost
        if load_first:
            # a page fault after the restart loads: the engine reconnects
            # and, nobody having committed, has the same snapshot again
            assert (A[F8_PER_BLK:2 * F8_PER_BLK] == 1.0).all()
        with pytest.raises(outcore.StoreError) as ei:
            db.commit()
        msg = str(ei.value)
        assert ei.value.code == outcore._core.OC_ESTOREIO
        assert "connection lost" in msg and "nothing was committed" in msg, msg
        assert "127.0.0.1:%d" % own.port in msg, msg
        assert own.password not in msg and own.user + ":" not in msg
        # the changes are kept, in dirty pages
        assert (A[:F8_PER_BLK] == 2.0).all() and A[3 * F8_PER_BLK] == 4.0
        assert db.stats()["dirty_bytes"] == 2 * BS
        db.commit()                                # the retry reconnects
        assert db.stats()["dirty_bytes"] == 0
        # and loads go on after it (in a new snapshot)
        assert (A[2 * F8_PER_BLK:3 * F8_PER_BLK] == 1.0).all()
        A[F8_PER_BLK] = 3.0
        db.commit()
    finally:
        db.close()
    expect = numpy.ones(4 * F8_PER_BLK)
    expect[:F8_PER_BLK] = 2.0
    expect[F8_PER_BLK] = 3.0
    expect[3 * F8_PER_BLK] = 4.0
    with store(url) as db:
        assert (db["a"][...] == expect).all()      # nothing lost


def test_server_restart_retry_checks_conflicts_against_its_snapshot(
        own, peers):
    url = new_database(own)
    filled(url)
    db = store(url)
    try:
        A = db["a"]
        A[5] = 7.0                                 # block 0 dirty
        assert A[3 * F8_PER_BLK] == 1.0            # block 3 loaded
        own.restart()
        p = peers()
        p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
        p(f"A[6] = 8.0; A[{F8_PER_BLK}] = 9.0; db.commit()")   # blocks 0, 1
        # this transaction's snapshot went with the connection: a block
        # changed since cannot be read any more, an unchanged one can
        with pytest.raises(outcore.StoreError,
                           match="changed since this transaction's snapshot"):
            outcore.prefault(A[F8_PER_BLK:2 * F8_PER_BLK])
        assert (A[2 * F8_PER_BLK:3 * F8_PER_BLK] == 1.0).all()
        assert A[3 * F8_PER_BLK] == 1.0 and A[5] == 7.0
        with pytest.raises(outcore.StoreError, match="connection lost"):
            db.commit()
        # the retry checks conflicts against the snapshot the transaction
        # had, not a new one: block 0 was changed by the peer since
        with pytest.raises(outcore.ConflictError):
            db.commit()
        db.abort()
        assert A[5] == 1.0 and A[6] == 8.0 and A[F8_PER_BLK] == 9.0
    finally:
        db.close()


FAULT_CHILD = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, %r)
    import outcore
    db = outcore.open(sys.argv[1], ram="64MiB")
    A = db["arr 'x'"]
    print(float(A[:10].sum()), flush=True)             # block 0 loaded
    sys.stdin.readline()                               # the server is down
    print(float(A[%d:%d].sum()), flush=True)           # block 1: a fault
""" % (ROOT, F8_PER_BLK, F8_PER_BLK + 10))


def test_page_fault_with_the_server_gone_stops_naming_server_array_block(own):
    url = new_database(own)
    with store(url) as db:
        A = db.create("arr 'x'", (2 * F8_PER_BLK,), "<f8")
        A[:] = 1.0
        db.commit()
    p = subprocess.Popen([sys.executable, "-c", FAULT_CHILD, url],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "10.0", p.stderr.read()
        own.halt()
        try:
            out, err = p.communicate("go\n", timeout=60)
        finally:
            own.resume()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGBUS, (p.returncode, err)
    assert not out
    assert "127.0.0.1:%d" % own.port in err, err          # the server
    assert "block 1 of file 'arr 'x''" in err, err         # array and block
    assert "reconnect" in err, err
    assert own.password not in err


# ---- a connection lost during COMMIT -------------------------------------------------

@pytest.mark.parametrize("cut", ["before", "after"])
def test_connection_lost_during_commit_retry_never_applies_twice(pgsrv, cut):
    """The proxy cuts the connection at COMMIT, before it reaches the server
    (not made) or after the server made it (made, unacknowledged): the
    commit fails either way; the retry finds out which, and commits (not
    made) or refuses until abort (made), so the change is made once."""
    direct = new_database(pgsrv)
    dbname = direct.rsplit("/", 1)[1]
    with pg_proxy.CommitCutter(pgsrv.port) as px:
        url = ("postgresql://%s:%s@127.0.0.1:%d/%s?sslmode=disable"
               "&gssencmode=disable" % (pgsrv.user, pgsrv.password, px.port,
                                        dbname))
        db = store(url)
        try:
            A = db.create("a", (2 * F8_PER_BLK,), "<f8")
            A[:] = 1.0
            db.commit()
            A[0] += 1.0                            # not idempotent
            px.arm(cut)
            with pytest.raises(outcore.StoreError,
                               match="connection lost during COMMIT") as ei:
                db.commit()
            assert px.tripped()
            assert pgsrv.password not in str(ei.value)
            assert A[0] == 2.0                     # kept
            if cut == "before":
                db.commit()
            else:
                for _ in range(2):                 # until abort
                    with pytest.raises(outcore.StoreError,
                                       match="was made after all"):
                        db.commit()
                db.abort()
            assert A[0] == 2.0
            A[F8_PER_BLK] = 3.0                    # and commits go on
            db.commit()
        finally:
            db.close()
    # block 0 changed by exactly two commits: the creation and ours
    assert pg_server.psql(direct, "SELECT count(*) FROM outcore_log"
                          " WHERE blk = 0") == "2\n"
    with store(direct) as db:
        assert db["a"][0] == 2.0 and db["a"][F8_PER_BLK] == 3.0


# ---- read-ahead and round trips ------------------------------------------------------

def blocks_of(nblk):
    """nblk blocks of float64, block b holding b + 1 everywhere."""
    return numpy.repeat(numpy.arange(1, nblk + 1, dtype="<f8"), F8_PER_BLK)


def test_sequential_scan_reads_ahead_few_round_trips(url):
    nblk = 24
    with store(url) as db:
        db.create("a", (nblk * F8_PER_BLK,), "<f8")[:] = blocks_of(nblk)
        db.commit()
    with store(url, ram="16MiB") as db:       # fewer pages than blocks
        A = db["a"]
        t0 = db.stats()["round_trips"]
        for b in range(nblk):                 # page faults, block by block
            assert (A[b * F8_PER_BLK:(b + 1) * F8_PER_BLK] == b + 1).all(), b
        st = db.stats()
        trips = st["round_trips"] - t0
        assert st["store_loads"] >= nblk
        # without read-ahead a load is a round trip: here only the first
        # two loads and the start of the pipeline are
        assert trips <= nblk // 4, trips
        # a jump back (not sequential) drops what is in flight and reads
        # the right block; a scan again reads ahead again
        assert (A[3 * F8_PER_BLK:4 * F8_PER_BLK] == 4).all()
        assert float(A[...].sum()) == float(blocks_of(nblk).sum())


def test_read_ahead_serves_the_new_snapshot_after_foreign_commit(url, peers):
    """Blocks requested ahead from the old snapshot are never served after
    the snapshot is renewed: a peer's commits to a block read before and to
    a block in flight (never read) both show."""
    nblk = 16
    with store(url) as db:
        db.create("a", (nblk * F8_PER_BLK,), "<f8")[:] = blocks_of(nblk)
        db.commit()
    db = store(url, ram="32MiB")
    try:
        A = db["a"]
        for b in range(4):                    # loads 0..3: 4.. in flight
            assert A[b * F8_PER_BLK] == b + 1
        p = peers()
        p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
        p(f"A[5 * {F8_PER_BLK}:6 * {F8_PER_BLK}] = -5.0; "
          f"A[7 * {F8_PER_BLK}:8 * {F8_PER_BLK}] = -7.0; db.commit()")
        # the same snapshot still: block 5 is the old one
        assert A[4 * F8_PER_BLK] == 5 and A[5 * F8_PER_BLK + 1] == 6
        db.abort()                            # a new snapshot
        for b in range(6, 9):
            assert A[b * F8_PER_BLK] == (-7 if b == 7 else b + 1), b
        for b in range(4):
            assert A[b * F8_PER_BLK] == b + 1
        assert (A[5 * F8_PER_BLK:6 * F8_PER_BLK] == -5.0).all()
        expect = blocks_of(nblk)
        expect[5 * F8_PER_BLK:6 * F8_PER_BLK] = -5.0
        expect[7 * F8_PER_BLK:8 * F8_PER_BLK] = -7.0
        assert (A[...] == expect).all()
    finally:
        db.close()


def test_read_ahead_across_a_server_restart(own):
    """A restart with requests in flight: the scan reconnects and goes on
    with the same snapshot (nobody committed)."""
    url = new_database(own)
    nblk = 12
    with store(url) as db:
        db.create("a", (nblk * F8_PER_BLK,), "<f8")[:] = blocks_of(nblk)
        db.commit()
    with store(url, ram="16MiB") as db:
        A = db["a"]
        for b in range(4):
            assert A[b * F8_PER_BLK] == b + 1
        own.restart()
        for b in range(4, nblk):
            assert (A[b * F8_PER_BLK:(b + 1) * F8_PER_BLK] == b + 1).all(), b


def test_holes_are_answered_without_round_trips(url):
    nblk = 300
    with store(url) as db:
        A = db.create("a", (nblk * F8_PER_BLK,), "<f8")
        A[0] = 1.0
        A[150 * F8_PER_BLK] = 2.0
        db.commit()
        t0 = db.stats()["round_trips"]
        # after a commit, each new block's first write faults: no block
        # read asks the server whether it exists
        for b in range(1, 40):
            A[b * F8_PER_BLK] = b
        st = db.stats()
        assert st["round_trips"] - t0 <= 3, st["round_trips"] - t0
        assert st["store_loads"] == 0
        db.commit()
    with store(url, ram="16MiB") as db:
        A = db["a"]
        h0, t0 = db.stats()["holes"], db.stats()["round_trips"]
        for b in range(160, 120, -1):          # backwards: no read-ahead
            assert A[b * F8_PER_BLK + 1] == 0
        assert A[150 * F8_PER_BLK] == 2.0
        st = db.stats()
        # the first hole is a load, then its window is read; block 150 is
        # read (and read again after a reclaim)
        assert st["holes"] - h0 == 39 and st["round_trips"] - t0 <= 4, st
        v = A[...]
        assert v[0] == 1 and v[150 * F8_PER_BLK] == 2 and v[39 * F8_PER_BLK] == 39
        assert float(v.sum()) == 1 + 2 + sum(range(1, 40))


def test_holes_after_a_foreign_commit_and_renew(url, peers):
    with store(url) as db:
        db.create("a", (8 * F8_PER_BLK,), "<f8")[0] = 1.0
        db.commit()
    db = store(url)
    try:
        A = db["a"]
        assert A[3 * F8_PER_BLK] == 0          # block 3: a hole, window read
        p = peers()
        p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
        p(f"A[4 * {F8_PER_BLK}] = 4.0; db.commit()")
        assert A[4 * F8_PER_BLK] == 0          # this snapshot: still a hole
        db.abort()
        assert A[4 * F8_PER_BLK] == 4.0       # the new one: stored
        p(f"A[5 * {F8_PER_BLK}] = 5.0; db.commit()")
        A[6 * F8_PER_BLK] = 6.0                # hole, written here
        db.commit()                            # renews: sees block 5
        assert A[5 * F8_PER_BLK] == 5.0 and A[6 * F8_PER_BLK] == 6.0
    finally:
        db.close()


# ---- commit: blocks absent from the snapshot copied straight in ----------------------

def test_commit_mixes_new_blocks_overwrites_and_zeros(url, peers):
    nblk = 12
    with store(url) as db:
        A = db.create("a", (nblk * F8_PER_BLK,), "<f8")
        A[:6 * F8_PER_BLK] = blocks_of(6)        # new array: straight in
        db.commit()
    p = peers()
    p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
    assert p.eval(f"float(A[{7 * F8_PER_BLK}])") == 0.0   # a hole it holds
    assert p.eval(f"float(A[{F8_PER_BLK}])") == 2.0
    with store(url) as db:
        A = db["a"]
        # holes 6..9 (straight in), 1 and 3 overwritten, 2 zeroed (deleted),
        # interleaved in block order: the COPY streams take turns
        for b in (1, 3, 6, 7, 8, 9):
            A[b * F8_PER_BLK:(b + 1) * F8_PER_BLK] = 10.0 * b
        A[2 * F8_PER_BLK:3 * F8_PER_BLK] = 0
        B = db.create("b", (2 * F8_PER_BLK,), "<f8")
        B[:] = 5.0
        db.commit()
        st = db.stats()
        assert st["blocks_stored"] == 6 + 2 and st["blocks_zeroed"] == 1
    # the peer's pages of changed blocks are invalidated: the log has them
    p("db.abort()")
    assert p.eval(f"float(A[{7 * F8_PER_BLK}])") == 70.0
    assert p.eval(f"float(A[{F8_PER_BLK}])") == 10.0
    expect = numpy.zeros(nblk * F8_PER_BLK)
    expect[:6 * F8_PER_BLK] = blocks_of(6)
    for b in (1, 3, 6, 7, 8, 9):
        expect[b * F8_PER_BLK:(b + 1) * F8_PER_BLK] = 10.0 * b
    expect[2 * F8_PER_BLK:3 * F8_PER_BLK] = 0
    with store(url) as db:
        assert (db["a"][...] == expect).all()
        assert (db["b"][...] == 5.0).all()
    assert pg_server.psql(url, "SELECT count(*) FROM outcore_blocks") == "11\n"
    assert pg_server.psql(url, "SELECT count(*) FROM outcore_log WHERE"
                          " blk >= 0 AND seq = (SELECT max(seq) FROM"
                          " outcore_log)") == "9\n"


def test_two_writers_of_the_same_new_block_one_conflict(url, peers):
    with store(url) as db:
        db.create("a", (4 * F8_PER_BLK,), "<f8")[0] = 1.0
        db.commit()
    p, q = peers(), peers()
    for x in (p, q):
        x(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
        x(f"A[{2 * F8_PER_BLK}] = 2.0")          # a hole in both snapshots
    p("db.commit()")
    with pytest.raises(PeerError) as ei:
        q("db.commit()")
    assert ei.value.name == "ConflictError"
    with store(url) as db:
        assert db["a"][2 * F8_PER_BLK] == 2.0


def test_threads_scanning_at_once_read_the_right_blocks(url):
    """Loads of several threads share the read connection (and its
    read-ahead queue): each scan gets its own array's blocks, also with
    holes and a jump back in between."""
    import threading
    nblk = 16
    with store(url) as db:
        for k in range(3):
            A = db.create("a%d" % k, (nblk * F8_PER_BLK,), "<f8")
            A[:] = blocks_of(nblk) * (k + 1)
            A[5 * F8_PER_BLK:6 * F8_PER_BLK] = 0           # a hole
        db.commit()
    expect = {}
    for k in range(3):
        x = blocks_of(nblk) * (k + 1)
        x[5 * F8_PER_BLK:6 * F8_PER_BLK] = 0
        expect[k] = float(x.sum())
    errors = []
    with store(url, ram="24MiB") as db:               # pages are reclaimed
        arrays = [db["a%d" % k] for k in range(3)]

        def scan(k):
            try:
                for _ in range(3):
                    s = float(numpy.add.reduce(arrays[k][...]))
                    if s != expect[k]:
                        errors.append((k, s))
                    if arrays[k][2 * F8_PER_BLK] != 3 * (k + 1):
                        errors.append((k, "jump"))
            except Exception as e:                      # noqa: BLE001
                errors.append((k, repr(e)))
        ts = [threading.Thread(target=scan, args=(k,)) for k in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors, errors
