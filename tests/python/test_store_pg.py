# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""The store round trip against the PostgreSQL engine, on a server of our
own (pg_server.py): one server for the module, one database per test."""
import itertools

import numpy
import pytest

import outcore
import pg_server
from test_store import Peer, outcome  # noqa: F401  (the peer processes)

BS = 2 << 20
F8_PER_BLK = BS // 8

_why = pg_server.missing()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")
_n = itertools.count()


@pytest.fixture(scope="module")
def server():
    with pg_server.PGServer() as srv:
        yield srv


@pytest.fixture
def url(server):
    return server.createdb("t%d" % next(_n))


@pytest.fixture
def peers():
    made = []

    def make():
        made.append(Peer())
        return made[-1]
    yield make
    for p in made:
        p.close()


def store(url, **kw):
    kw.setdefault("ram", "64MiB")
    return outcore.open(url, **kw)


def test_round_trip_commit_reopen_abort(url, server):
    name = "it's; DROP TABLE outcore_blocks; -- \u00fc\u2603"
    data = numpy.arange(3 * F8_PER_BLK, dtype="<f8")
    with store(url) as db:
        assert server.password not in repr(db)
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


def test_bad_server_is_a_store_error_without_password(server):
    bad = "postgresql://%s:%s@127.0.0.1:%d/nosuchdb" % (
        server.user, server.password, server.port)
    with pytest.raises(outcore.StoreError) as e:
        outcore.open(bad)
    assert server.password not in str(e.value)
    assert "postgresql://***@127.0.0.1" in str(e.value)


def test_two_processes_same_block_exactly_one_conflict(url, peers):
    with store(url) as db:
        db.create("a", (2 * F8_PER_BLK,), "<f8")
        db.commit()
    ps = [peers(), peers()]
    for p in ps:
        p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
    for k, p in enumerate(ps, 1):
        p(f"A[10] = {k}")
    for p in ps:
        p.send("db.commit()")
    assert sorted(outcome(p) for p in ps) == ["ConflictError", "ok"]
    with store(url) as db:
        assert db["a"][10] in (1, 2)


def test_two_processes_disjoint_blocks_both_commit(url, peers):
    with store(url) as db:
        db.create("a", (4 * F8_PER_BLK,), "<f8")
        db.commit()
    p1, p2 = peers(), peers()
    for p in (p1, p2):
        p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
    p1(f"A[0:{F8_PER_BLK}] = 1")
    p2(f"A[{2 * F8_PER_BLK}:{3 * F8_PER_BLK}] = 2")
    p1.send("db.commit()")
    p2.send("db.commit()")
    assert (outcome(p1), outcome(p2)) == ("ok", "ok")
    with store(url) as db:
        A = db["a"][...]
        assert (A[:F8_PER_BLK] == 1).all()
        assert (A[F8_PER_BLK:2 * F8_PER_BLK] == 0).all()
        assert (A[2 * F8_PER_BLK:3 * F8_PER_BLK] == 2).all()
        assert (A[3 * F8_PER_BLK:] == 0).all()


def test_invalidation_at_next_transaction(url, peers):
    nblk = 4
    with store(url) as db:
        A = db.create("a", (nblk * F8_PER_BLK,), "<f8")
        A[:] = 1.0
        db.commit()
    db = store(url)
    try:
        v = db["a"][...]
        assert v.sum() == nblk * F8_PER_BLK
        loads0 = db.stats()["loads"]
        p = peers()
        p(f"db = outcore.open({url!r}, ram='64MiB'); A = db['a']")
        p(f"A[{2 * F8_PER_BLK + 7}] = 42; db.commit()")
        assert v[2 * F8_PER_BLK + 7] == 1.0          # our snapshot
        db.commit()                                   # next transaction
        assert v[2 * F8_PER_BLK + 7] == 42.0
        assert v.sum() == nblk * F8_PER_BLK + 41
        st = db.stats()
        assert st["loads"] - loads0 == 1              # only that block
        assert st["invalidated"] == 1
    finally:
        db.close()
