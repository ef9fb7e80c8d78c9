# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Shared fixtures of the Python tests.

Run from the repository root after an in-place build:
    /usr/bin/python3 -m pytest -q tests/python
"""
import itertools
import os
import sys
import threading

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import outcore  # noqa: E402
import pg_server  # noqa: E402

try:
    from hypothesis import settings

    settings.register_profile("outcore", deadline=None, max_examples=60,
                              derandomize=False, print_blob=True)
    settings.register_profile("ci", deadline=None, max_examples=60,
                              derandomize=True, print_blob=True)
    settings.load_profile("ci" if os.environ.get("CI") else "outcore")
except ImportError:  # pragma: no cover
    pass


class DictFile(outcore.BigFile):
    """A Python-defined file that keeps blocks in a dict and counts calls."""

    def __init__(self, blksize=4096):
        super().__init__(blksize)
        self.blocks = {}
        self.loads = []
        self.stores = []
        self.lock = threading.Lock()
        self.load_hook = None
        self.store_hook = None

    def loadblk(self, blk, buf):
        with self.lock:
            self.loads.append(blk)
        if self.load_hook:
            self.load_hook(blk, buf)
        data = self.blocks.get(blk)
        if data is None:
            outcore.mem.bzero(buf)
        else:
            buf[:] = data

    def storeblk(self, blk, buf):
        with self.lock:
            self.stores.append(blk)
        if self.store_hook:
            self.store_hook(blk, buf)
        self.blocks[blk] = bytes(buf)


# ---- PostgreSQL: one server for the session, one database per test ----------

PG_MISSING = pg_server.missing()
_dbno = itertools.count()


@pytest.fixture(scope="session")
def pgsrv():
    """The session's PostgreSQL server (pg_server.PGServer), started on
    first use and stopped at the end whatever happened; skips with the
    reason when no server can be run here."""
    if PG_MISSING:
        pytest.skip(PG_MISSING)
    with pg_server.PGServer() as srv:
        yield srv


def new_database(srv, password=True):
    """A fresh database on srv: its URL (see PGServer.url)."""
    return srv.createdb("t%d_%d" % (os.getpid(), next(_dbno)), password)


@pytest.fixture
def ram4k():
    """A private RAM of 4 KiB pages with a budget large enough for tests."""
    return outcore.RAM(4096, budget="256MiB")


@pytest.fixture
def dictfile():
    return DictFile(4096)


def rss_bytes():
    """Resident set size of this process (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def make_array(shape, dtype, order="C", ram=None, blksize=4096, file=None):
    """A BigArray over a fresh MemFile (or file) and its handle."""
    f = file if file is not None else outcore.MemFile(blksize)
    fh = f.fileh_open(ram)
    return outcore.BigArray(shape, dtype, fh, order=order)


__all__ = ["DictFile", "rss_bytes", "make_array", "numpy", "new_database",
           "PG_MISSING"]
