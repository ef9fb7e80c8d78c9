# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Dask workers sharing arrays through a PostgreSQL store: a
distributed.LocalCluster of two worker processes maps a function over the
blocks of one array, each task writing its result block to a second array
and committing; the result is checked against NumPy.

The arrays reach the workers as references (pickled: store URL + name), so
each worker opens the store itself.  The URL holds no password: the workers
get it from the password file (PGPASSFILE), as deployments should, and the
pickles show none.

The Dask client runs in a child process of its own (DASK_CLIENT), with a
deadline: a cluster that does not come up or close cannot hang the test
run, it fails the test with the stacks of the child.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy
import pytest

import outcore
from conftest import PG_MISSING, new_database

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (Debian: "
    "python3-dask python3-distributed, which scripts/deps.sh installs)")

pytestmark = pytest.mark.skipif(PG_MISSING is not None,
                                reason=PG_MISSING or "")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BS = 2 << 20
F8_PER_BLK = BS // 8
NBLK = 8


def f(x):
    """What the workers compute, block by block."""
    return numpy.sqrt(x) * 2.0 + numpy.sin(x)


def process_block(blk, src, dst):
    """One task, in a worker process: src and dst arrive as references and
    open the store there (once per process)."""
    lo, hi = blk * F8_PER_BLK, (blk + 1) * F8_PER_BLK
    dst[lo:hi] = f(src[lo:hi])
    dst.store.commit()
    return os.getpid(), blk


DASK_CLIENT = textwrap.dedent(r"""
    import faulthandler, json, os, sys, warnings
    faulthandler.dump_traceback_later(%d, exit=True)
    sys.path[:0] = [%r, %r]
    warnings.simplefilter("ignore", DeprecationWarning)
    import distributed, outcore
    from test_store_dask import NBLK, process_block
    db = outcore.open(sys.argv[1], ram="64MiB")
    A, B = db["src"], db["dst"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                  processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        futures = client.map(process_block, range(NBLK), src=A, dst=B)
        distributed.wait(futures, timeout=120)
        done = client.gather(futures)
        workers = len(client.scheduler_info()["workers"])
    print(json.dumps({"done": done, "workers": workers, "pid": os.getpid()}),
          flush=True)
""")

DEADLINE = 150


def test_dask_workers_map_a_function_over_the_blocks(pgsrv, monkeypatch):
    monkeypatch.setenv("PGPASSFILE", pgsrv.passfile)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = new_database(pgsrv, password=False)
    data = numpy.random.default_rng(6).random(NBLK * F8_PER_BLK) * 100
    with outcore.open(url, ram="64MiB") as db:
        A = db.create("src", data.shape, "<f8")
        A[:] = data
        B = db.create("dst", data.shape, "<f8")
        db.commit()
        for x in (A, B, db):
            blob = pickle.dumps(x)
            assert len(blob) < 500                      # a reference
            assert pgsrv.password.encode() not in blob

        p = subprocess.Popen(
            [sys.executable, "-c", DASK_CLIENT % (DEADLINE, ROOT, HERE), url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            out, err = p.communicate(timeout=DEADLINE + 30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        assert p.returncode == 0, err[-4000:]
        r = json.loads(out)
        assert r["workers"] == 2
        assert sorted(blk for _, blk in r["done"]) == list(range(NBLK))
        pids = {pid for pid, _ in r["done"]}
        assert not pids & {os.getpid(), r["pid"]}       # done in the workers
        assert (B[...] == 0).all()                      # our snapshot
        db.abort()                                      # a new one
        numpy.testing.assert_array_equal(B[...], f(data))
        assert (A[...] == data).all()
