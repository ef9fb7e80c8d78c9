# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Transactional stores (outcore.open): commit / abort / reopen round trips,
metadata and attrs, bad input, two and four processes (disjoint blocks,
conflicts, invalidation), pickling through a spawned process, an array 16x
the budget, crashes (SIGKILL during commits), corrupt blocks.

Every test runs against both engines (the `engine` parameter): "lmdb", a
store directory under tmp_path, and "pg", a fresh database on the session's
PostgreSQL server (conftest.pgsrv; skipped with the reason when no server
can be run here).  `path` is the store's location: a directory or a URL.
Where a test looks at the stored bytes themselves (snapshot, corruption,
what is not a store) it does so per engine: files, or SQL through psql.
"""
import gc
import json
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy
import pytest

import outcore
import pg_server
from conftest import new_database

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BS = 2 << 20            # the default RAM page size: the arrays' block size
F8_PER_BLK = BS // 8


ENGINES = ["lmdb", "pg"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def path(engine, tmp_path, request):
    """Where the test's store lives: a new directory (lmdb), a new database
    (pg: its URL, password included)."""
    if engine == "lmdb":
        return str(tmp_path / "db")
    return new_database(request.getfixturevalue("pgsrv"))


def is_pg(path):
    return path.startswith("postgresql://")


def store(path, **kw):
    kw.setdefault("ram", "128MiB")
    return outcore.open(path, **kw)


# ---- a peer process driven line by line ----------------------------------------

PEER = textwrap.dedent(r"""
    import json, sys
    sys.path.insert(0, %r)
    import numpy, outcore
    ns = {"numpy": numpy, "outcore": outcore}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["eval"]:
                r = eval(cmd["src"], ns)
                if isinstance(r, numpy.ndarray):
                    r = r.tolist()
                elif isinstance(r, numpy.generic):
                    r = r.item()
            else:
                exec(cmd["src"], ns)
                r = None
            out = {"ok": True, "value": r}
        except BaseException as e:
            out = {"ok": False, "error": type(e).__name__, "msg": str(e)}
        print(json.dumps(out, default=repr), flush=True)
""" % ROOT)


class PeerError(Exception):
    def __init__(self, name, msg):
        super().__init__("%s: %s" % (name, msg))
        self.name = name


class Peer:
    """Another process running the Python lines it is sent, in order."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", PEER],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def send(self, src, ev=False):
        self.p.stdin.write(json.dumps({"src": textwrap.dedent(src),
                                       "eval": ev}) + "\n")
        self.p.stdin.flush()

    def result(self, timeout=60):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert r, "peer did not answer in %d s" % timeout
        line = self.p.stdout.readline()
        assert line, "peer died (exit %s)" % self.p.poll()
        out = json.loads(line)
        if not out["ok"]:
            raise PeerError(out["error"], out["msg"])
        return out["value"]

    def __call__(self, src):
        self.send(src)
        return self.result()

    def eval(self, src):
        self.send(src, ev=True)
        return self.result()

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture
def peers():
    made = []

    def make():
        p = Peer()
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


def outcome(peer):
    """'ok' or the name of the exception of the command in flight."""
    try:
        peer.result()
        return "ok"
    except PeerError as e:
        return e.name


# ---- round trips ------------------------------------------------------------------

SPECS = [
    ("f8", (1000,), "<f8", "C"),
    ("i4-2d", (37, 91), "<i4", "C"),
    ("u1-F", (13, 7, 5), "u1", "F"),
    ("c16", (300,), "<c16", "C"),
    ("be", (1000,), ">i8", "C"),
    ("struct", (50,), [("a", "<i4"), ("b", "<f8", (3,)), ("c", "S5")], "C"),
    ("nested", (9,), [(("t", "x"), "<i2"), ("y", [("p", "u1"), ("q", ">f4")])],
     "C"),
    ("padded", (20,), numpy.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"],
                                   "offsets": [0, 8], "itemsize": 24}), "C"),
    ("U", (11,), "<U7", "C"),
    ("dt", (5,), "<M8[ns]", "C"),
    ("big", (3 * F8_PER_BLK + 5,), "<f8", "C"),   # 4 blocks
    ("empty", (0, 4), "<f4", "C"),
    ("scalar", (), "<f8", "C"),
]


def fill(dtype, shape, seed):
    rng = numpy.random.default_rng(seed)
    n = int(numpy.prod(shape))
    raw = rng.integers(1, 255, n * dtype.itemsize, dtype=numpy.uint8)
    a = raw.view(dtype).reshape(shape) if shape else raw.view(dtype)[0]
    if dtype.kind == "M":
        a = numpy.arange(n).astype(dtype).reshape(shape)
    return numpy.array(a)


def same_bytes(a, b):
    """Equal bit for bit (NaNs included), field by field for structs."""
    a, b = numpy.asarray(a), numpy.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.names:
        return all(same_bytes(a[n], b[n]) for n in a.dtype.names)
    return numpy.ascontiguousarray(a).tobytes() == \
        numpy.ascontiguousarray(b).tobytes()


def test_roundtrip_many_arrays_one_transaction(path):
    ref = {}
    with store(path) as db:
        assert db.names() == []
        for k, (name, shape, dt, order) in enumerate(SPECS):
            dt = numpy.dtype(dt)
            A = db.create(name, shape, dt, order=order,
                          attrs={"k": k, "name": name, "nested": {"l": [1, 2]}})
            assert isinstance(A, outcore.StoreArray)
            assert isinstance(A, outcore.BigArray)
            ref[name] = fill(dt, shape, k)
            A[...] = ref[name]
        db.commit()
    with store(path) as db:
        assert db.names() == sorted(n for n, *_ in SPECS)
        for k, (name, shape, dt, order) in enumerate(SPECS):
            A = db[name]
            assert A.shape == shape and A.dtype == numpy.dtype(dt)
            assert A.order == order
            assert A.attrs == {"k": k, "name": name, "nested": {"l": [1, 2]}}
            assert same_bytes(A[...], ref[name])


def test_rounds_of_scattered_updates(path):
    """Scattered 64 KiB writes into 2 MiB blocks, committed, round after
    round over the same blocks (on LMDB: page deltas upon page deltas).
    Every round commits and the store equals the model; on LMDB a round
    keeps only the granules it needs in RAM, not whole blocks."""
    n = 32 * (2 << 20) // 8
    per = (64 << 10) // 8
    ref = numpy.arange(n, dtype=numpy.float64)
    with store(path, ram="32MiB") as db:
        A = db.create("u", (n,), numpy.float64, blksize=2 << 20)
        A[...] = ref
        db.commit()
    rng = numpy.random.default_rng(5)
    for rnd in range(4):
        with store(path, ram="32MiB") as db:
            A = db["u"]
            starts = list(rng.integers(0, n // per, 24) * per)
            # and a fixed pattern: a block that got deltas last round,
            # then a block without any, whose run of changed granules
            # spans where the first one's delta run starts
            b = n // 32
            starts += [2 * rnd * b + 5 * per, 2 * rnd * b + 6 * per]
            if rnd:
                starts += [(2 * rnd - 2) * b + 5 * per]
                starts += [(2 * rnd - 1) * b + g * per for g in range(4, 8)]
            starts = numpy.array(starts)
            for k, s in enumerate(starts):
                A[s:s + per] = ref[s:s + per] = rnd * 100 + k
            if not is_pg(path):
                ram = db.ram.stats()
                touched = len(set(starts // b))
                # the written granules + at most the deltas' granules (a
                # block whose deltas reach a quarter of it loads whole)
                assert ram["dirty_pages"] == touched, ram
                assert ram["patched_pages"] >= touched - 2, ram
                assert ram["patch_bytes"] <= touched * (2 << 20) // 4, ram
            db.commit()
        with store(path, ram="32MiB") as db:
            assert same_bytes(db["u"][...], ref), rnd


def test_abort_restores_data_metadata_attrs(path):
    db = store(path)
    A = db.create("a", (2 * F8_PER_BLK,), "<f8", attrs={"v": 1})
    A[:] = 1.0
    B = db.create("b", (10, 3), "<i4")
    B[:] = 5
    db.commit()
    view = A[F8_PER_BLK - 2:F8_PER_BLK + 2]          # spans two blocks
    whole_b = B[...]
    # change everything, then abort
    A[:] = 2.0
    A.append(numpy.full(10, 3.0))
    A.attrs["v"] = 2
    A.attrs["w"] = "new"
    B.resize((4, 3))
    del db["b"]
    C = db.create("c", 5, "u1")
    C[:] = 9
    assert (view == 2.0).all()
    assert db.names() == ["a", "c"]
    db.abort()
    assert A.shape == (2 * F8_PER_BLK,)
    assert A.attrs == {"v": 1}
    assert (view == 1.0).all() and (A[...] == 1.0).all()
    assert db.names() == ["a", "b"]
    assert B.shape == (10, 3) and (B[...] == 5).all() and (whole_b == 5).all()
    assert "c" not in db
    with pytest.raises(outcore.NotFoundError, match="deleted"):
        C[0]
    db.close()
    with store(path) as db:
        assert db.names() == ["a", "b"]
        assert db["a"].shape == (2 * F8_PER_BLK,)
        assert (db["a"][...] == 1.0).all()


def test_commit_persists_resize_append_attrs(path):
    with store(path) as db:
        A = db.create("a", (3, 4), "<f4")
        A[:] = 1
        F = db.create("f", (4, 3), "<i2", order="F")
        F[:] = 2
        db.commit()
        A.append(numpy.full((2, 4), 7, "<f4"))
        F.append(numpy.full((4, 2), 8, "<i2"))
        A.attrs.update(units="m", scale=0.5)
        F.attrs = {"replaced": True}
        db.commit()
    with store(path) as db:
        A, F = db["a"], db["f"]
        assert A.shape == (5, 4) and F.shape == (4, 5)
        assert (A[:3] == 1).all() and (A[3:] == 7).all()
        assert (F[:, :3] == 2).all() and (F[:, 3:] == 8).all()
        assert dict(A.attrs) == {"units": "m", "scale": 0.5}
        assert F.attrs == {"replaced": True}
        # shrink, commit: the cut part is gone from the store
        A.resize((1, 4))
        db.commit()
    with store(path) as db:
        A = db["a"]
        assert A.shape == (1, 4)
        A.resize((5, 4))
        assert (A[0] == 1).all() and (A[1:] == 0).all()


def test_writes_past_the_end_through_stale_views_are_not_kept(path):
    """A view taken while the array was longer still writes past its end in
    later transactions: commit keeps none of that (what is inside the end
    stays), whether the array and the view are still referenced or not."""
    n = 3 * F8_PER_BLK
    want = numpy.zeros(n)
    want[3] = 4
    with store(path, ram="64MiB") as db:
        A = db.create("a", (n,), "<f8")
        db.commit()
        w = A[...]
        A.resize((10,))
        db.commit()
        w[3] = 4                         # inside the end: kept
        w[11] = 7                        # the tail of the end's block
        w[F8_PER_BLK + 5] = 8            # a block wholly past the end
        w[-1] = 9
        db.commit()
        A.resize((n,))
        assert (A[...] == want).all()
        db.commit()
        # the handle's only references die before the commit
        w = A[...]
        A.resize((10,))
        db.commit()
        w[-1] = 9
        del w, A
        gc.collect()
        db.commit()
    with store(path, ram="64MiB") as db:
        A = db["a"]
        assert A.shape == (10,)
        A.resize((n,))
        assert (A[...] == want).all()


def test_shrinking_far_past_ram_costs_no_ram(path):
    """Cutting an array 16 times the RAM budget down to a few items loads
    nothing and dirties one block: the blocks past the end are deleted by
    the store (oc_store_truncate), not zeroed in RAM."""
    n = 64 * F8_PER_BLK                  # 128 MiB of 2 MiB blocks
    with store(path, ram="8MiB") as db:
        A = db.create("a", (n,), "<f8")
        for i in range(0, n, F8_PER_BLK):
            A[i:i + F8_PER_BLK] = i + 1.0
            if i % (4 * F8_PER_BLK) == 0:
                db.commit()
        db.commit()
    with store(path, ram="8MiB") as db:
        A = db["a"]
        before = db.stats()
        A.resize((F8_PER_BLK + 10,))     # the end in block 1
        db.commit()
        after = db.stats()
        assert after["loads"] - before["loads"] <= 1   # the end block
        assert after["dirty_bytes"] == 0
        assert after["ram_used"] <= 8 << 20
        A.resize((n,))
        assert A[F8_PER_BLK + 9] == 1.0 + F8_PER_BLK and A[F8_PER_BLK + 10] == 0
        assert not A[2 * F8_PER_BLK:].any()
        db.abort()
    with store(path, ram="8MiB") as db:
        A = db["a"]
        assert A.shape == (F8_PER_BLK + 10,)
        assert A[0] == 1.0 and A[-1] == 1.0 + F8_PER_BLK
        A.resize((n,))
        assert not A[F8_PER_BLK + 10:].any()


def test_arrays_and_views_stay_valid_across_commit_and_abort(path):
    db = store(path)
    A = db.create("a", (3 * F8_PER_BLK,), "<f8")
    assert db["a"] is A
    v = A[::F8_PER_BLK]
    A[:] = numpy.arange(A.shape[0])
    db.commit()
    assert list(v) == [0, F8_PER_BLK, 2 * F8_PER_BLK]
    A[0] = -1
    assert v[0] == -1
    db.abort()
    assert v[0] == 0 and A[0] == 0
    A[1] = 5
    db.commit()
    assert A[1] == 5 and db["a"] is A
    A.append(numpy.ones(3))
    w = A[-3:]
    db.commit()
    assert (w == 1).all() and A.shape == (3 * F8_PER_BLK + 3,)
    db.close()


def test_transaction_context_manager(path):
    db = store(path)
    with db.transaction():
        A = db.create("a", 100, "<i8")
        A[:] = 4
    assert db.stats()["commits"] == 1
    with pytest.raises(RuntimeError, match="boom"):
        with db.transaction():
            A[:] = 5
            db.create("b", 3, "u1")
            A.attrs["x"] = 1
            raise RuntimeError("boom")
    assert (A[...] == 4).all() and "b" not in db and dict(A.attrs) == {}
    db.close()
    with store(path) as db, db.transaction():
        assert (db["a"][...] == 4).all()


def test_names_contains_del(path):
    with store(path) as db:
        for n in ("b", "a", "c"):
            db.create(n, 10, "u1")[:] = ord(n)
        assert db.names() == ["a", "b", "c"] and list(db) == db.names()
        assert len(db) == 3
        assert "a" in db and "z" not in db and 3 not in db and "a\0" not in db
        db.commit()
        old = db["b"]
        v = old[...]
        del db["b"]
        assert "b" not in db and db.names() == ["a", "c"]
        with pytest.raises(outcore.NotFoundError, match="'b' was deleted"):
            old[0]
        with pytest.raises(outcore.NotFoundError):
            db["b"]
        with pytest.raises(outcore.NotFoundError):
            del db["b"]
        # created again in the same transaction: a new, empty array
        new = db.create("b", 4, "<f8")
        assert new is not old and (new[...] == 0).all()
        with pytest.raises(outcore.NotFoundError):
            old.shape
        db.commit()
        assert (v == 0).all()          # the old handle reads zeros now
        assert db["b"] is new and new.shape == (4,)
    with store(path) as db:
        assert db.names() == ["a", "b", "c"]
        assert db["b"].dtype == numpy.dtype("<f8")
        del db["a"]
        db.commit()
    with store(path) as db:
        assert db.names() == ["b", "c"]


ODD_NAMES = ["it's", 'say "hi"', "a; DROP TABLE arrays; --", "x/y\\z",
             "\u00e9t\u00e9 \u2603 \U0001f600", "   ", "-", "..", "%s%n",
             "\u202e", "n" * 255]


def test_odd_names_are_just_names(path):
    with store(path) as db:
        for i, n in enumerate(ODD_NAMES):
            db.create(n, 3, "<i4")[:] = i
        db.commit()
    with store(path) as db:
        assert sorted(db.names()) == sorted(ODD_NAMES)
        for i, n in enumerate(ODD_NAMES):
            assert n in db
            assert (db[n][...] == i).all()


PG_DUMP = """
    SELECT 'meta', magic, format, seq, next_id FROM outcore_meta;
    SELECT 'array', encode(name, 'hex'), id, version, md5(meta)
      FROM outcore_arrays ORDER BY name;
    SELECT 'block', array_id, blk, hash, version, md5(data)
      FROM outcore_blocks ORDER BY array_id, blk;
    SELECT 'log', seq, array_id, blk FROM outcore_log
      ORDER BY seq, array_id, blk;
"""


def snapshot_files(path):
    """Everything a store holds: its files' bytes (lmdb), or a dump of its
    tables with digests of the stored bytes (pg)."""
    if is_pg(path):
        return pg_server.psql(path, PG_DUMP)
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith("-lock"):
            continue
        with open(os.path.join(path, f), "rb") as fh:
            out[f] = fh.read()
    return out


def test_bad_input_changes_nothing(path):
    with store(path) as db:
        A = db.create("a", 10, "<f8", attrs={"ok": 1})
        A[:] = 1
        db.commit()
    before = snapshot_files(path)
    with store(path) as db:
        A = db["a"]
        with pytest.raises(TypeError):
            db.create("x", 3, "no-such-dtype")
        with pytest.raises(TypeError, match="Python objects"):
            db.create("x", 3, object)
        with pytest.raises(TypeError, match="Python objects"):
            db.create("x", 3, [("a", "<i4"), ("o", "O")])
        with pytest.raises(TypeError, match="subarray"):
            db.create("x", 3, ("<f8", (2,)))
        with pytest.raises(ValueError, match="negative"):
            db.create("x", (3, -1), "<f8")
        with pytest.raises(ValueError):
            db.create("x", (2**62, 2**62), "<f8")     # bytes past 2**63
        with pytest.raises(ValueError):
            db.create("x", (2**63,), "u1")
        with pytest.raises((ValueError, OverflowError)):
            db.create("x", (2**64,), "u1")
        with pytest.raises(TypeError):
            db.create("x", (2.5,), "u1")
        with pytest.raises(ValueError):
            db.create("x", 3, "<f8", order="K")
        with pytest.raises(ValueError):
            db.create("x", 3, "<f8", blksize=64 << 10)   # != RAM page size
        with pytest.raises(TypeError, match="JSON"):
            db.create("x", 3, "<f8", attrs={"f": object()})
        with pytest.raises(TypeError, match="JSON"):
            db.create("x", 3, "<f8", attrs={"n": float("nan")})
        with pytest.raises(TypeError):
            db.create("x", 3, "<f8", attrs={1: "int key"})
        with pytest.raises(outcore.InvalidArgument, match="1 MiB"):
            db.create("x", 3, "<f8", attrs={"big": "x" * (1 << 20)})
        with pytest.raises(outcore.InvalidArgument, match="1 MiB"):
            A.attrs["big"] = "x" * (1 << 20)
        for bad, why in (("", "empty"), ("a\nb", "U\\+000A"),
                         ("tab\there", "U\\+0009"), ("n" * 256, "256 bytes"),
                         ("\u00e9" * 128, "256 bytes"),
                         ("nul\0", "U\\+0000"),
                         ("\udcff", "not valid UTF-8")):
            with pytest.raises(outcore.InvalidArgument, match=why):
                db.create(bad, 3, "<f8")
        with pytest.raises(TypeError):
            db.create(b"bytes", 3, "<f8")
        with pytest.raises(outcore.ExistsError):
            db.create("a", 3, "<f8")
        with pytest.raises(TypeError, match="JSON"):
            A.attrs["bad"] = {1, 2}
        with pytest.raises(TypeError, match="JSON"):
            A.attrs = {"bad": b"bytes"}
        assert A.attrs == {"ok": 1}
        with pytest.raises(ValueError):
            A.resize(-1)
        with pytest.raises(outcore.NotFoundError):
            db["nope"]
        assert db.names() == ["a"] and A.shape == (10,)
        db.commit()          # nothing to commit: nothing written
    assert snapshot_files(path) == before


def test_resize_past_2_63_bytes_changes_nothing(path):
    with store(path) as db:
        A = db.create("a", (10,), "<f8")
        A[:] = 1
        B = db.create("b", (2, 3), "<f8", order="F")
        db.commit()
        for arr, shape in ((A, (2**62,)), (A, (2**64,)), (B, (2, 2**61))):
            with pytest.raises(outcore.InvalidArgument,
                               match=r"%s.*past 2\*\*63" % (shape[-1],)) as ei:
                arr.resize(shape)
            assert ei.value.code == -75
        assert A.shape == (10,) and (A[...] == 1).all() and B.shape == (2, 3)
        db.commit()
    with store(path) as db:
        assert db["a"].shape == (10,) and (db["a"][...] == 1).all()
        assert db["b"].shape == (2, 3)
    # a plain BigArray is held to the same limit
    P = outcore.BigArray((10,), "<f8", outcore.MemFile(BS).fileh_open())
    with pytest.raises(outcore.InvalidArgument, match="past 2"):
        P.resize((2**62,))
    assert P.shape == (10,)


def test_opening_what_is_not_a_store(engine, tmp_path, request):
    if engine == "lmdb":
        not_a_store_lmdb(tmp_path)
    else:
        not_a_store_pg(request.getfixturevalue("pgsrv"))


def not_a_store_lmdb(tmp_path):
    junk = tmp_path / "junk"
    data = os.urandom(100000)
    junk.write_bytes(data)
    for ro in (False, True):
        with pytest.raises(outcore.StoreError, match="not an outcore store"):
            outcore.open(junk, readonly=ro)
    assert junk.read_bytes() == data
    d = tmp_path / "dir"
    d.mkdir()
    (d / "index.mdb").write_bytes(data)
    with pytest.raises(outcore.StoreError, match="not an outcore store"):
        outcore.open(d)
    assert (d / "index.mdb").read_bytes() == data
    with pytest.raises(outcore.NotFoundError):
        outcore.open(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()


def not_a_store_pg(srv):
    tables = ("SELECT string_agg(tablename, ',' ORDER BY tablename)"
              " FROM pg_tables WHERE schemaname = 'public'")
    # someone else's table of the name we use, with other columns
    url = new_database(srv)
    pg_server.psql(url, "CREATE TABLE outcore_meta (x int, y text);"
                   " INSERT INTO outcore_meta VALUES (1, 'theirs')")
    for ro in (False, True):
        with pytest.raises(outcore.StoreError, match="not an outcore store"):
            outcore.open(url, readonly=ro)
    assert pg_server.psql(url, "SELECT * FROM outcore_meta") == "1|theirs\n"
    assert pg_server.psql(url, tables) == "outcore_meta\n"
    # our columns, another magic
    url = new_database(srv)
    pg_server.psql(url, "CREATE TABLE outcore_meta (id int, magic text,"
                   " format int, seq bigint, next_id bigint);"
                   " INSERT INTO outcore_meta VALUES (1, 'other', 1, 0, 1)")
    with pytest.raises(outcore.StoreError, match="not an outcore store"):
        outcore.open(url)
    # a store of a newer format
    url = new_database(srv)
    with outcore.open(url, ram="64MiB"):
        pass
    pg_server.psql(url, "UPDATE outcore_meta SET format = 99")
    with pytest.raises(outcore.StoreError, match="unsupported version"):
        outcore.open(url)
    # ... upgraded while open: the next commit refuses to write
    url = new_database(srv)
    with outcore.open(url, ram="64MiB") as db:
        A = db.create("a", 10, "u1")
        db.commit()
        pg_server.psql(url, "UPDATE outcore_meta SET format = 99")
        A[0] = 1
        with pytest.raises(outcore.StoreError, match="unsupported version"):
            db.commit()
        db.abort()
    # a database without a store, opened read-only: refused, left alone
    url = new_database(srv)
    pg_server.psql(url, "CREATE TABLE mine (a int)")
    with pytest.raises(outcore.StoreError, match="not an outcore store"):
        outcore.open(url, readonly=True)
    assert pg_server.psql(url, tables) == "mine\n"
    # no such database: a StoreError that shows no password
    url = srv.url("no_such_database")
    with pytest.raises(outcore.StoreError, match="cannot connect") as ei:
        outcore.open(url)
    assert srv.password not in str(ei.value)


def test_readonly_store_refuses_writes(path):
    with store(path) as db:
        A = db.create("a", (2, F8_PER_BLK), "<f8", attrs={"a": 1})
        A[:] = 3
        db.commit()
    before = snapshot_files(path)
    with store(path, readonly=True) as db:
        assert db.readonly
        A = db["a"]
        assert (A[...] == 3).all()
        with pytest.raises(outcore.ReadOnlyError):
            A[0, 0] = 1
        with pytest.raises(ValueError):
            A[...][0, 0] = 1             # views are read-only too
        v = A[...]
        with pytest.raises(ValueError):
            v.flags.writeable = True     # and stay so: the buffer is
        assert numpy.frombuffer(v.base, numpy.uint8).flags.writeable is False
        with pytest.raises(outcore.ReadOnlyError):
            A.append(numpy.zeros((1, F8_PER_BLK)))
        with pytest.raises(outcore.ReadOnlyError):
            A.resize((1, F8_PER_BLK))
        with pytest.raises(outcore.ReadOnlyError):
            A.attrs["b"] = 2
        with pytest.raises(outcore.ReadOnlyError):
            db.create("b", 1, "u1")
        with pytest.raises(outcore.ReadOnlyError):
            del db["a"]
        assert A.shape == (2, F8_PER_BLK) and A.attrs == {"a": 1}
        db.commit()                      # no changes: a new snapshot
        db.abort()
        assert (A[...] == 3).all()
    assert snapshot_files(path) == before


def test_open_twice_in_one_process_and_close(path):
    db = store(path)
    A = db.create("a", 10, "u1")
    with pytest.raises(outcore.BusyError, match="already open"):
        outcore.open(path)
    v = A[...]
    db.close()
    db.close()
    assert db.closed
    with pytest.raises(ValueError, match="closed"):
        A[0]
    with pytest.raises(ValueError, match="closed"):
        db.names()
    assert (v == 0).all()                # views outlive the store object
    del v, A
    gc.collect()
    with store(path) as db:              # uncommitted create was dropped
        assert db.names() == []


def test_closed_store_refuses_membership_tests(path):
    db = store(path)
    db.create("a", 3, "u1")
    db.close()
    for name in ("a", "z", "a\0"):
        with pytest.raises(outcore.InvalidArgument, match="closed"):
            name in db


def test_open_empty_path_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for p in ("", b""):
        with pytest.raises(outcore.InvalidArgument, match="empty") as ei:
            outcore.open(p)
        assert ei.value.code == -22
    assert os.listdir(tmp_path) == []


def test_reopen_while_views_of_a_closed_store_live(path):
    with store(path) as db:
        A = db.create("a", 10, "<i4")
        A[:] = 1
        db.commit()
        v = A[...]
        A[:] = 2                       # dropped by close
    assert (v == 1).all()               # close dropped the change
    with store(path) as db:            # takes the still-open store over
        assert (db["a"][...] == 1).all() and (v == 1).all()
        db["a"][0] = 5
        assert v[0] == 5               # the old view aliases the array
        db.commit()
    with pytest.raises(outcore.BusyError, match="views"):
        store(path, readonly=True)     # other flags: must wait for v
    del v, A
    gc.collect()
    with store(path, readonly=True) as db:
        assert list(db["a"][:2]) == [5, 1]


def test_reopen_after_close_begins_a_transaction(path, peers):
    """Taking over a store closed with views alive begins a transaction
    as an open does: it sees what others committed since (it kept the
    snapshot of the close, and a commit conflicted), and not what the old
    views wrote after the close (that was committed)."""
    with store(path) as db:
        A = db.create("a", 10, "<i8")
        db.create("b", 10, "<i8")
        A[:] = 1
        db.commit()
        v = A[...]
    v[3] = 5                           # after the close: never stored
    p = peers()
    p(f"db = outcore.open({path!r}); db['a'][0] = 42; db['b'][0] = 43; "
      "db.create('c', 3, '<i4'); db.commit()")
    with store(path) as db:
        assert db.names() == ["a", "b", "c"]
        assert db["a"][0] == 42 and db["a"][3] == 1 and db["b"][0] == 43
        db["b"][1] = 5
        db.commit()                    # no conflict: a fresh snapshot
    with store(path) as db:
        assert list(db["a"][:4]) == [42, 1, 1, 1]
        assert list(db["b"][:2]) == [43, 5]


def test_closed_array_does_not_hold_the_store(path):
    """After close, the store's files close with the last view: a closed
    array object still referenced does not keep them (it did, and an
    open with other flags was refused as if views were alive)."""
    with store(path) as db:
        A = db.create("a", 10, "<i8")
        A[:] = 7
        db.commit()
        v = A[...]
    del v
    gc.collect()
    with store(path, readonly=True) as db:      # other flags
        assert (db["a"][...] == 7).all()
    with pytest.raises(outcore.Error):
        A[0]                           # closed, and says so


def test_failed_commit_keeps_changes_until_abort(path, peers):
    with store(path) as db:
        db.create("a", (2 * F8_PER_BLK,), "<f8")
        db.commit()
        A = db["a"]
        p = peers()
        p(f"db = outcore.open({path!r}); A = db['a']; A[0] = 1")
        A[1] = 2
        p("db.commit()")
        with pytest.raises(outcore.ConflictError):
            db.commit()
        assert A[1] == 2                 # local change kept
        with pytest.raises(outcore.StoreError):
            db.names()                   # failed: abort (or retry) first
        with pytest.raises(outcore.ConflictError):
            db.commit()
        db.abort()
        assert A[0] == 1 and A[1] == 0   # the other commit, not ours
        st = db.stats()
        assert st["conflicts"] == 2 and st["failed_commits"] == 2
        # transaction() aborts after a failed commit
        p("A[5] = 5")
        with pytest.raises(outcore.ConflictError):
            with db.transaction():
                A[5] = 6
                p("db.commit()")
        assert A[5] == 5 and db.names() == ["a"]


def test_failed_commit_refuses_array_changes_until_abort(path, peers):
    with store(path) as db:
        db.create("a", (2 * F8_PER_BLK,), "<f8")
        db.commit()
        A = db["a"]
        p = peers()
        p(f"db = outcore.open({path!r}); A = db['a']; A[0] = 1; db.commit()")
        A[0] = 2
        v = A[...]
        with pytest.raises(outcore.ConflictError):
            db.commit()
        for change in (lambda: A.__setitem__(1, 9),
                       lambda: A.__setitem__(slice(None), 9),
                       lambda: A.append(numpy.ones(3)),
                       lambda: A.resize((5,))):
            with pytest.raises(outcore.StoreError,
                               match="'a'.*abort it first") as ei:
                change()
            assert ei.value.code == outcore._core.OC_EFAILED
            with pytest.raises(outcore.ConflictError):
                db.commit()              # a retry is accepted (and fails)
        assert A[0] == 2 and A[1] == 0
        v[1] = 5                         # a view's memory cannot refuse
        assert A[1] == 5
        del A, change
        gc.collect()
        with pytest.raises(outcore.ConflictError):
            db.commit()                  # a dirty handle without its array
        db.abort()
        A = db["a"]
        assert A[0] == 1 and A[1] == 0
        A[1] = 9                         # accepted again
        db.commit()
        assert A[1] == 9


def test_retry_after_a_failed_commit_keeps_the_cut(path, peers):
    """A shrink whose commit fails (a conflict on another array) is cut at
    the retry too, and the retry is refused only for the conflict."""
    n = 3 * F8_PER_BLK
    with store(path) as db:
        A = db.create("a", (n,), "<f8")
        db.create("b", (10,), "<f8")
        A[:] = 1
        db.commit()
        p = peers()
        p(f"db = outcore.open({path!r}); db['b'][0] = 1; db.commit()")
        A.resize((F8_PER_BLK + 5,))       # the end inside block 1
        db["b"][0] = 2
        for attempt in range(2):
            with pytest.raises(outcore.ConflictError):
                db.commit()
        db.abort()
        assert A.shape == (n,) and (A[...] == 1).all()
        A.resize((F8_PER_BLK + 5,))
        db.commit()
        A.resize((n,))
        assert A[F8_PER_BLK + 4] == 1 and not A[F8_PER_BLK + 5:].any()


def test_a_commit_not_tried_takes_its_cuts_back(path, monkeypatch):
    """A commit interrupted before the C store tried it (no error code)
    takes back the cuts it asked for: growing the array again and writing
    there is then committed, not dropped."""
    n = 3 * F8_PER_BLK
    with store(path) as db:
        A = db.create("a", (n,), "<f8")
        B = db.create("b", (n,), "<f8")
        A[:] = 1
        B[:] = 1
        db.commit()
        A.resize((5,))
        B.resize((5,))

        class Interrupted:               # the C commit, never reached
            def commit(self):
                raise KeyboardInterrupt
        monkeypatch.setattr(outcore.store.Store, "_core",
                            lambda self: Interrupted())
        with pytest.raises(KeyboardInterrupt):
            db.commit()
        monkeypatch.undo()
        B.resize((n,))                    # B back to its size: no cut due
        B[-1] = 7
        A.resize((n,))
        A[-1] = 8
        db.commit()
    with store(path) as db:
        assert db["b"][-1] == 7 and db["a"][-1] == 8


def test_writing_inside_the_end_block_does_not_cut(path, peers):
    """A write inside an array's last (partial) block cuts nothing: blocks
    another process added past it meanwhile are no conflict, and stay."""
    n = 2 * F8_PER_BLK + 10
    with store(path) as db:
        A = db.create("a", (n,), "<f8")
        db.commit()
        p = peers()
        # blocks 3 and 4, not block 2 (which the grown part reads as zeros)
        p(f"""
            db = outcore.open({path!r}); A = db['a']
            A.resize((5 * {F8_PER_BLK},)); A[3 * {F8_PER_BLK}:] = 5.0
            db.commit()
        """)
        A[n - 1] = 3                     # inside block 2, the end block
        db.commit()
        assert A.shape == (5 * F8_PER_BLK,)
        assert A[n - 1] == 3 and not A[n:3 * F8_PER_BLK].any()
        assert (A[3 * F8_PER_BLK:] == 5).all()


# ---- two processes ----------------------------------------------------------------

def test_two_processes_disjoint_blocks_both_commit(path, peers):
    with store(path) as db:
        db.create("a", (4 * F8_PER_BLK,), "<f8")
        db.create("b", (10,), "<i4")
        db.commit()
    p1, p2 = peers(), peers()
    for i, p in enumerate((p1, p2)):
        p(f"db = outcore.open({path!r}, ram='64MiB'); A = db['a']")
    p1(f"A[0:{F8_PER_BLK}] = 1")
    p2(f"A[{2 * F8_PER_BLK}:{3 * F8_PER_BLK}] = 2")
    p1.send("db.commit()")
    p2.send("db.commit()")
    assert (outcome(p1), outcome(p2)) == ("ok", "ok")
    with store(path) as db:
        A = db["a"][...]
        assert (A[:F8_PER_BLK] == 1).all()
        assert (A[F8_PER_BLK:2 * F8_PER_BLK] == 0).all()
        assert (A[2 * F8_PER_BLK:3 * F8_PER_BLK] == 2).all()
        assert (A[3 * F8_PER_BLK:] == 0).all()


def test_four_processes_commit_their_quarters_at_once_fifth_sums(path, peers):
    """Four processes each change their own quarter of one array and commit
    at the same time, a few rounds: nobody conflicts (each sees the others'
    commits at its next transaction), and a fifth process sees them all."""
    nblk, rounds = 8, 3
    n = nblk * F8_PER_BLK
    q = n // 4                                   # two blocks each
    with store(path) as db:
        A = db.create("a", (n,), "<f8")
        A[:] = 1.0
        db.commit()
    ps = [peers() for _ in range(4)]
    for k, p in enumerate(ps):
        p(f"db = outcore.open({path!r}, ram='64MiB'); A = db['a']; "
          f"mine = A[{k * q}:{(k + 1) * q}]")
    for r in range(rounds):
        for k, p in enumerate(ps):
            p(f"mine += {k + 1}")
        for p in ps:                             # all four commit at once
            p.send("db.commit()")
        assert [outcome(p) for p in ps] == ["ok"] * 4, r
    fifth = peers()
    fifth(f"db = outcore.open({path!r}, ram='64MiB'); A = db['a']")
    assert fifth.eval("float(A[...].sum())") == \
        n + rounds * q * (1 + 2 + 3 + 4)
    assert fifth.eval(f"[sorted(set(A[k * {q}:(k + 1) * {q}].tolist()))"
                      f" for k in range(4)]") == \
        [[1.0 + rounds * (k + 1)] for k in range(4)]
    # and the store counted no conflict in any of the four
    for p in ps:
        assert p.eval("db.stats()['conflicts']") == 0


def test_blocks_commit_after_another_process_changed_the_attrs(path, peers):
    """Another process commits a change to the array's attrs (metadata)
    while this one writes several of its blocks: no conflict (different
    things), and the commit checks the array still exists without
    breaking the transfer of the blocks."""
    with store(path) as db:
        db.create("a", (4 * F8_PER_BLK,), "<f8")
        db.create("b", (2 * F8_PER_BLK,), "<f8")
        db.commit()
    p = peers()
    p(f"db = outcore.open({path!r}, ram='64MiB'); A = db['a']")
    with store(path) as db:
        A, B = db["a"], db["b"]
        B[:] = 5.0                       # blocks of another array first
        A[:] = 7.0                       # then new blocks of "a"
        p("A.attrs['by'] = 'peer'; db.commit()")
        db.commit()
    with store(path) as db:
        assert (db["a"][...] == 7.0).all() and (db["b"][...] == 5.0).all()
        assert db["a"].attrs == {"by": "peer"}


@pytest.mark.parametrize("what", ["block", "resize", "attrs", "delete"])
def test_two_processes_same_thing_exactly_one_conflict(path, peers, what):
    with store(path) as db:
        db.create("a", (2 * F8_PER_BLK,), "<f8")
        db.commit()
    change = {
        "block": lambda k: "A[10] = %d" % k,
        "resize": lambda k: "A.append(numpy.full(%d, 1.0))" % k,
        "attrs": lambda k: "A.attrs['who'] = %d" % k,
        "delete": lambda k: "del db['a']" if k == 1 else "A[3] = 3",
    }[what]
    ps = [peers(), peers()]
    for k, p in enumerate(ps, 1):
        p(f"db = outcore.open({path!r}, ram='64MiB'); A = db['a']")
    for k, p in enumerate(ps, 1):
        p(change(k))
    for p in ps:
        p.send("db.commit()")
    results = sorted(outcome(p) for p in ps)
    assert results == ["ConflictError", "ok"]
    with store(path) as db:
        if what == "block":
            assert db["a"][10] in (1, 2)
        elif what == "resize":
            assert db["a"].shape[0] in (2 * F8_PER_BLK + 1, 2 * F8_PER_BLK + 2)
        elif what == "attrs":
            assert db["a"].attrs["who"] in (1, 2)


def test_invalidation_at_next_transaction_keeps_other_pages(path, peers):
    nblk = 8
    with store(path, ram="64MiB") as db:
        A = db.create("a", (nblk * F8_PER_BLK,), "<f8")
        A[:] = 1.0
        db.commit()
    db = store(path, ram="64MiB")
    A = db["a"]
    v = A[...]
    assert v.sum() == nblk * F8_PER_BLK           # every block loaded
    loads0 = db.stats()["loads"]
    assert loads0 >= nblk
    p = peers()
    p(f"db = outcore.open({path!r}, ram='64MiB'); A = db['a']")
    p(f"A[{3 * F8_PER_BLK + 7}] = 42; db.commit()")
    # this transaction's snapshot: the old data
    assert v[3 * F8_PER_BLK + 7] == 1.0 and v.sum() == nblk * F8_PER_BLK
    db.commit()                                     # next transaction
    assert v[3 * F8_PER_BLK + 7] == 42.0
    assert v.sum() == nblk * F8_PER_BLK + 41
    st = db.stats()
    assert st["loads"] - loads0 == 1                # only that block again
    assert st["invalidated"] == 1
    # a foreign resize and attrs show at the next transaction too
    p("A.append(numpy.full(5, 9.0)); A.attrs['x'] = 'y'; db.commit()")
    assert A.shape == (nblk * F8_PER_BLK,)
    db.abort()
    assert A.shape == (nblk * F8_PER_BLK + 5,) and A.attrs == {"x": "y"}
    assert (A[-5:] == 9).all()
    # a foreign delete: a clear error
    p("del db['a']; db.commit()")
    db.commit()
    with pytest.raises(outcore.NotFoundError, match="deleted"):
        A[0]
    assert "a" not in db
    db.close()


# ---- pickling -----------------------------------------------------------------------

def _child_uses_reference(blob, path):
    import outcore  # noqa: F401  (the store is opened by unpickling)
    A = pickle.loads(blob)
    B = pickle.loads(blob)
    assert B is A
    assert A.store.path == path
    total = float(A[...].sum())
    A[F8_PER_BLK:F8_PER_BLK + 3] = 7.0
    A.store.commit()
    return total, A.shape, A.attrs.asdict()


def test_pickle_reference_reopens_in_spawned_process(path):
    with store(path) as db:
        A = db.create("a", (2 * F8_PER_BLK,), "<f8", attrs={"p": 1})
        A[:5] = 2.0
        db.commit()
        blob = pickle.dumps(A)
        assert len(blob) < 500                      # a reference, not data
        assert pickle.loads(blob) is A              # same process: same object
        assert pickle.loads(pickle.dumps(db)) is db
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            total, shape, attrs = pool.apply(_child_uses_reference,
                                              (blob, db.path))
        assert total == 10.0 and tuple(shape) == A.shape and attrs == {"p": 1}
        assert (A[F8_PER_BLK:F8_PER_BLK + 3] == 0).all()   # our snapshot
        db.abort()
        assert (A[F8_PER_BLK:F8_PER_BLK + 3] == 7.0).all()


# ---- low level ------------------------------------------------------------------------

def test_core_store_handles_are_owned_by_the_store(path):
    st = outcore._core.Store(path, outcore._core.STORE_CREATE)
    st.create("a", (10,), "<f8", "C", 0, '{"k": 1}')
    assert st.meta_get("a") == {"shape": (10,), "dtype": "<f8", "order": "C",
                                "blksize": BS, "attrs": '{"k": 1}'}
    fh = st.array_fileh("a")
    assert fh is st.array_fileh("a") and fh.file is st
    fh.close()                           # forgets it, does not close it
    fh2 = st.array_fileh("a")
    assert fh2 is not fh and not fh2.closed
    A = outcore.BigArray((10,), "<f8", fh2)
    A[:] = 3
    del A, fh2
    gc.collect()
    A = outcore.BigArray((10,), "<f8", st.array_fileh("a"))
    assert (A[...] == 3).all()           # dirty pages survived the FileH
    with pytest.raises(outcore.ReadOnlyError):
        st.array_fileh("a").dirty_writeout(outcore.WRITEOUT_STORE)
    st.commit()
    with pytest.raises(outcore.BusyError):
        st.close()                       # A maps it
    del A
    gc.collect()
    fh3 = st.array_fileh("a")
    st.close()
    assert fh3.closed and st.closed
    for flag in ("STORE_RDONLY", "STORE_CREATE", "STORE_NOVERIFY",
                 "STORE_NOMAP"):
        assert isinstance(getattr(outcore._core, flag), int)


def test_stats(path):
    with store(path, ram="64MiB") as db:
        A = db.create("a", (F8_PER_BLK,), "<f8")
        A[:] = 1
        st = db.stats()
        assert st["budget"] == 64 << 20
        assert st["dirty_bytes"] == BS and st["ram_used"] >= BS
        for k in ("loads", "stores", "reclaims", "faults", "commits",
                  "aborts", "conflicts", "bytes_written", "invalidated"):
            assert k in st
        db.commit()
        st = db.stats()
        assert st["dirty_bytes"] == 0 and st["stores"] >= 1
        assert st["commits"] == 1 and st["bytes_written"] >= BS
        if not is_pg(path):                   # no server, no round trip
            assert A[3] == 1 and db.stats()["round_trips"] == 0


# ---- bigger than RAM -----------------------------------------------------------------

BIG = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, %r)
    import numpy, outcore
    path, budget, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def hwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    n = nbytes // 8
    step = budget // 4 // 8
    chunk = numpy.empty(step)
    base = hwm()
    with outcore.open(path, ram=budget) as db:
        A = db.create("big", (n,), "<f8")
        for i in range(0, n, step):
            chunk[:] = numpy.arange(i, i + step) %% 1000
            A[i:i + step] = chunk
            db.commit()
    peak_write = hwm() - base
    try:                                  # reset VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with outcore.open(path, ram=budget) as db:
        A = db["big"]
        total = 0.0
        for _, v in A.chunks():
            total += float(v.sum())
        mean = total / A.size
        st = db.stats()
    print(mean, peak_write, hwm() - base, st["reclaims"], st["loads"])
""" % ROOT)


def test_array_16x_the_budget(path):
    budget, nbytes = 32 << 20, 512 << 20
    r = subprocess.run([sys.executable, "-c", BIG, path, str(budget),
                        str(nbytes)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    mean, peak_write, peak, reclaims, loads = r.stdout.split()
    n = nbytes // 8
    expect = (numpy.arange(n) % 1000).mean()
    assert float(mean) == pytest.approx(expect)
    assert int(loads) >= nbytes // BS
    assert int(reclaims) >= nbytes // BS - budget // BS
    slack = 64 << 20
    assert int(peak_write) <= budget + slack, \
        "writing: RSS grew by %d MiB" % (int(peak_write) >> 20)
    assert int(peak) <= budget + (32 << 20), \
        "RSS grew by %d MiB" % (int(peak) >> 20)


# ---- crash safety under SIGKILL ---------------------------------------------------

# Arrays of the crash test: name -> blocks.  Together 10 blocks (20 MiB).
CRASH_ARRAYS = {"a": 4, "b": 3, "c c": 2, "d": 1}
CRASH_PAGES = (0, 3, 9)    # the 4 KiB pages an odd commit changes in each block


def crash_state(seq, nblk):
    """The content of an array of nblk blocks after commit number seq: even
    commits rewrite every block (whole extents), odd ones change pages 0, 3
    and 9 of each block of the even state before (page deltas).  Every
    block holds seq."""
    a = numpy.full(nblk * F8_PER_BLK, float(seq - seq % 2))
    if seq % 2:
        per = 4096 // 8
        for b in range(nblk):
            for p in CRASH_PAGES:
                s = b * F8_PER_BLK + p * per
                a[s:s + per] = seq
    return a


CRASH_CHILD = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, %r)
    import numpy, outcore
    sys.path.insert(0, %r)
    from test_store import crash_state, CRASH_ARRAYS, F8_PER_BLK, CRASH_PAGES
    path, seq = sys.argv[1], int(sys.argv[2])
    db = outcore.open(path, ram="64MiB")
    arrays = {n: db[n] for n in CRASH_ARRAYS}
    print("ready", flush=True)
    while True:
        seq += 1
        per = 4096 // 8
        for n, A in arrays.items():
            if seq %% 2 == 0:
                A[...] = crash_state(seq, CRASH_ARRAYS[n])
            else:
                for b in range(CRASH_ARRAYS[n]):
                    for p in CRASH_PAGES:
                        s = b * F8_PER_BLK + p * per
                        A[s:s + per] = seq
        db.commit()
        print(seq, flush=True)      # returned: the parent may rely on it
""" % (ROOT, os.path.dirname(os.path.abspath(__file__))))


def crash_check(path, last):
    """Open the store after a kill: it must hold exactly the state of commit
    last or last + 1 (the one in flight), the same one in every array.
    Returns that sequence number."""
    with store(path, ram="64MiB") as db:
        assert sorted(db.names()) == sorted(CRASH_ARRAYS)
        data = {}
        for n, nblk in CRASH_ARRAYS.items():
            A = db[n]
            assert A.shape == (nblk * F8_PER_BLK,)
            outcore.prefault(A)                 # a corrupt block raises here
            data[n] = numpy.array(A[...])
            del A
        found = [s for s in (last, last + 1)
                 if all((data[n] == crash_state(s, nblk)).all()
                        for n, nblk in CRASH_ARRAYS.items())]
        assert found, "after a kill past commit %d: a mix or garbage: %s" % (
            last, {n: numpy.unique(d)[:8].tolist() for n, d in data.items()})
        del data
        gc.collect()
        return found[0]


def wait_quiet(path, timeout=60):
    """pg: wait until no other client is connected to the database of path
    (the backends of a killed client have finished what they were doing,
    so a COMMIT it had sent is either made or not, for good)."""
    if not is_pg(path):
        return
    deadline = time.monotonic() + timeout
    # (client backends only: an autovacuum worker may run for minutes)
    while pg_server.psql(path, "SELECT count(*) FROM pg_stat_activity WHERE"
                         " datname = current_database() AND"
                         " backend_type = 'client backend' AND"
                         " pid <> pg_backend_pid()").strip() != "0":
        assert time.monotonic() < deadline, "killed client's backends linger"
        time.sleep(0.01)


def test_crash_safety_sigkill_during_commits(path):
    """Kill a process that commits in a loop at random instants: the store
    holds the last commit it returned from, or the one in flight, never a
    mix.  (pg: fewer kills, each costs a server round; the commit point is
    the server's COMMIT.)"""
    import random
    kills = int(os.environ.get("OC_CRASH_KILLS", "20" if is_pg(path) else "50"))
    rng = random.Random(os.environ.get("OC_CRASH_SEED", "4"))
    slow = 4 if is_pg(path) else 1
    with store(path) as db:
        for n, nblk in CRASH_ARRAYS.items():
            db.create(n, (nblk * F8_PER_BLK,), "<f8")
        db.commit()                             # state 0: zeros
    state, in_flight, commits = 0, 0, 0
    for i in range(kills):
        p = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, path,
                              str(state)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            # kill at a random instant: within the first commits mostly
            # (whole or delta), sometimes later (a commit through the
            # server takes some 4x longer)
            time.sleep(rng.uniform(0, 0.25 if i % 4 else 0.6) * slow)
            p.kill()
            # through the same buffered reader as "ready" (communicate()
            # would read the pipe beneath it and lose what readline()
            # buffered: a commit printed right after "ready")
            p.wait(timeout=30)
            out, err = p.stdout.read(), p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == -signal.SIGKILL, err
        done = [int(x) for x in out.split()]
        last = done[-1] if done else state
        assert done == list(range(state + 1, last + 1))
        commits += len(done)
        wait_quiet(path)
        got = crash_check(path, last)
        in_flight += got != last
        state = got
    # the kills did interrupt a running child that was committing
    assert commits + in_flight > 0, (kills, commits, in_flight)


# ---- corruption ---------------------------------------------------------------------

CORRUPT_READ = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, %r)
    import numpy, outcore
    db = outcore.open(sys.argv[1], ram="64MiB")
    print(float(numpy.sum(db[sys.argv[2]][...])), flush=True)
""" % ROOT)


def corrupt_copy(path, copy, name):
    """Copy the store at path to copy and flip 3 bytes in the middle of
    block 1 of array name there (the only block stored)."""
    if not is_pg(path):
        # the data file holds that block's extent, at a multiple of the
        # block size (the file may be bigger: room for more)
        import shutil
        shutil.copytree(path, copy)
        block = numpy.full(F8_PER_BLK, 1.5, "<f8").tobytes()
        with open(os.path.join(copy, "data"), "r+b") as f:
            offs = []
            for off in range(0, os.path.getsize(f.name), BS):
                f.seek(off)
                if f.read(BS) == block:
                    offs.append(off)
            assert len(offs) == 1, offs
            f.seek(offs[0] + BS // 2 + 12345)
            b = f.read(3)
            f.seek(offs[0] + BS // 2 + 12345)
            f.write(bytes(x ^ 0x5A for x in b))
        return
    srv_url = path.rsplit("/", 1)[0] + "/postgres"
    pg_server.psql(srv_url, 'CREATE DATABASE "%s" TEMPLATE "%s"' % (
        copy.rsplit("/", 1)[1], path.rsplit("/", 1)[1]))
    assert pg_server.psql(copy, "SELECT blk, length(data) FROM outcore_blocks") \
        == "1|%d\n" % BS
    o = BS // 2 + 12345
    flip = "data"
    for i in range(3):
        flip = "set_byte(%s, %d, get_byte(data, %d) # 90)" % (flip, o + i,
                                                               o + i)
    assert pg_server.psql(copy, "UPDATE outcore_blocks SET data = %s"
                          " WHERE blk = 1 AND array_id = (SELECT id FROM"
                          " outcore_arrays WHERE name = convert_to(%s, 'UTF8'))"
                          " RETURNING blk" % (flip, "'" + name.replace(
                              "'", "''") + "'")) == "1\n"


def test_corrupt_block_is_reported_naming_array_and_block(path, tmp_path,
                                                          capfd):
    # pg: the copy is database <name>_copy on the same server
    copy = path + "_copy" if is_pg(path) else str(tmp_path / "copy")
    with store(path) as db:
        A = db.create("arr 'one'", (3 * F8_PER_BLK,), "<f8")
        A[F8_PER_BLK:2 * F8_PER_BLK] = 1.5      # one stored block: block 1
        db.commit()
        del A
    corrupt_copy(path, copy, "arr 'one'")
    capfd.readouterr()

    # the explicit load path: StoreError, never the data
    db = store(copy)
    A = db["arr 'one'"]
    assert (A[:F8_PER_BLK] == 0).all()          # a hole: nothing to check
    with pytest.raises(outcore.StoreError) as ei:
        outcore.prefault(A)
    assert ei.value.code == outcore._core.OC_ECORRUPT
    assert "corrupt" in str(ei.value)
    assert "array 'arr 'one'' block 1" in str(ei.value), str(ei.value)
    err = capfd.readouterr().err
    assert "array 'arr 'one'' block 1:" in err, err
    with pytest.raises(outcore.StoreError):      # again: still refused
        outcore.prefault(A[F8_PER_BLK:])
    del A, ei
    gc.collect()
    db.close()

    # inside a page fault the process stops (SIGBUS), naming array and block
    r = subprocess.run([sys.executable, "-c", CORRUPT_READ, copy, "arr 'one'"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr)
    assert "array 'arr 'one'' block 1:" in r.stderr, r.stderr
    assert not r.stdout

    # with verification off the flipped bytes are read (the switch works and
    # the flip did land in the block); the original store is intact
    with store(copy, verify=False) as db:
        assert not (db["arr 'one'"][F8_PER_BLK:2 * F8_PER_BLK] == 1.5).all()
    r = subprocess.run([sys.executable, "-c", CORRUPT_READ, path, "arr 'one'"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and float(r.stdout) == 1.5 * F8_PER_BLK, r.stderr


def _resident_pages(fname):
    """Pages of file fname in the page cache (mincore over a mapping)."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(fname)
    vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    fd = os.open(fname, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def _skip_on_tmpfs(where):
    """Page-cache residency means nothing on tmpfs (its files live there)."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(where)],
                        capture_output=True, text=True).stdout.strip()
    if fs == "tmpfs":
        pytest.skip("%s is on tmpfs, whose files are always in the page "
                    "cache" % where)


def test_scan_without_verification_reads_ahead(tmp_path):
    """LMDB: in a sequential scan with verify=False the engine's thread reads
    the following blocks' extents ahead (it verifies them otherwise): with a
    budget of 4 blocks the core maps at most 2 at a time, yet soon after
    reading 3 blocks most of the array is in the page cache."""
    _skip_on_tmpfs(tmp_path)
    path = str(tmp_path / "db")
    n = 48
    with store(path) as db:
        A = db.create("a", (n * F8_PER_BLK,), "f8")
        A[:] = 1.0
        db.commit()
    data = os.path.join(path, "data")
    fd = os.open(data, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    before = _resident_pages(data)
    assert before < 4 * BS // 4096, before  # the kernel dropped the file
    with store(path, ram="8MiB", verify=False) as db:
        A = db["a"]
        for b in range(3):
            assert A[b * F8_PER_BLK:(b + 1) * F8_PER_BLK].sum() == F8_PER_BLK
        deadline = time.monotonic() + 10
        while (_resident_pages(data) < 32 * BS // 4096 and
               time.monotonic() < deadline):
            time.sleep(0.05)
        got = _resident_pages(data)
    assert got >= 32 * BS // 4096, (got * 4096 / BS, "blocks resident")


def test_new_extents_bypass_the_page_cache(tmp_path, peers):
    """LMDB: blocks written to new extents (past the data end) go to the disk
    with O_DIRECT, not through the page cache (whose new pages cost more than
    the write here), and read back right, in this process and another."""
    _skip_on_tmpfs(tmp_path)
    path = str(tmp_path / "db")
    n = 16
    with store(path) as db:
        A = db.create("a", (n * F8_PER_BLK,), "f8")
        A[:] = numpy.arange(n * F8_PER_BLK, dtype="f8")
        db.commit()
        data = os.path.join(path, "data")
        got = _resident_pages(data)
        assert got < 2 * BS // 4096, (got * 4096 / BS, "blocks cached")
        assert (A[::4097] == numpy.arange(0, n * F8_PER_BLK, 4097)).all()
    p = peers()
    p(f"db = outcore.open({path!r}, readonly=True); A = db['a']")
    assert p.eval("bool((A[:] == numpy.arange(A.shape[0])).all())")
