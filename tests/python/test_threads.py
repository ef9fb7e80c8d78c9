# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Threads and the GIL: parallel loads, one load per page, no deadlocks."""
import threading
import time

import numpy
import pytest

import outcore
from conftest import DictFile

PS = 4096
TIMEOUT = 20


def run_threads(*targets):
    """Run targets in threads; fail (instead of hanging) after TIMEOUT."""
    errors = []

    def wrap(t):
        try:
            t()
        except BaseException as e:  # noqa: B902
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(t,), daemon=True)
          for t in targets]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
        assert not t.is_alive(), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]


def test_threads_on_different_pages_progress_in_parallel(ram4k):
    # loadblk of block 0 waits until block 1 has been loaded by the other
    # thread: this completes only if two loads can run at once.
    f = DictFile()
    one_loaded = threading.Event()

    def hook(blk, buf):
        if blk == 0:
            assert one_loaded.wait(TIMEOUT), "block 1 never loaded"
        elif blk == 1:
            one_loaded.set()

    f.load_hook = hook
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 2), numpy.uint8)
    out = {}

    def t0():
        out[0] = int(a[0])

    def t1():
        time.sleep(0.05)           # let t0 start its load first
        out[1] = int(a[PS])

    run_threads(t0, t1)
    assert out == {0: 0, 1: 0}
    assert sorted(f.loads) == [0, 1]


def test_same_page_loads_once(ram4k):
    f = DictFile()
    started = threading.Event()

    def hook(blk, buf):
        started.set()
        time.sleep(0.2)            # others fault meanwhile and wait

    f.load_hook = hook
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 1), numpy.uint8)
    seen = []

    def reader():
        seen.append(int(a[100]))

    def late_reader():
        started.wait(TIMEOUT)
        seen.append(int(a[200]))

    run_threads(reader, late_reader, late_reader, late_reader)
    assert seen == [0, 0, 0, 0]
    assert f.loads == [0]


def test_loadblk_vs_invalidate_lock_crossing(ram4k):
    # Thread A faults; its loadblk takes the backend lock L, which thread B
    # holds while calling invalidate_page.  No deadlock; the load that was
    # invalidated while running is thrown away and redone.
    f = DictFile()
    L = threading.Lock()
    in_load = threading.Event()
    b_has_lock = threading.Event()

    def hook(blk, buf):
        in_load.set()
        if len(f.loads) == 1:
            assert b_has_lock.wait(TIMEOUT)
        with L:
            pass

    f.load_hook = hook
    f.blocks[0] = b"\x01" * PS
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 1), numpy.uint8)
    out = []

    def thread_a():
        out.append(int(a[0]))

    def thread_b():
        assert in_load.wait(TIMEOUT)
        with L:
            b_has_lock.set()
            f.blocks[0] = b"\x02" * PS
            fh.invalidate_page(0)

    run_threads(thread_a, thread_b)
    assert out == [2]
    assert f.loads == [0, 0]


def test_storeblk_vs_invalidate_lock_crossing(ram4k):
    f = DictFile()
    L = threading.Lock()
    in_store = threading.Event()
    b_has_lock = threading.Event()

    def hook(blk, buf):
        in_store.set()
        assert b_has_lock.wait(TIMEOUT)
        with L:
            pass

    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 2), numpy.uint8)
    a[0] = 1
    a[PS] = 1
    f.store_hook = hook
    other = DictFile().fileh_open(ram4k)

    def writer():
        fh.dirty_writeout(outcore.WRITEOUT_STORE | outcore.WRITEOUT_MARKSTORED)

    def invalidator():
        assert in_store.wait(TIMEOUT)
        with L:
            b_has_lock.set()
            other.invalidate_page(0)   # the core lock is free meanwhile

    run_threads(writer, invalidator)
    assert f.stores == [0, 1]


def test_gil_released_during_writeout_and_load(ram4k):
    # A Python thread keeps running while another is in a long storeblk /
    # loadblk that does not hold the GIL (time.sleep releases it).
    f = DictFile()
    f.store_hook = lambda blk, buf: time.sleep(0.3)
    f.load_hook = lambda blk, buf: time.sleep(0.3)
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 1), numpy.uint8)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.01)

    t = threading.Thread(target=ticker, daemon=True)
    t.start()
    try:
        fh.load(0)
        n = len(ticks)
        assert n >= 5
        a[0] = 1
        fh.dirty_writeout(outcore.WRITEOUT_STORE)
        assert len(ticks) - n >= 5
    finally:
        stop.set()
        t.join(TIMEOUT)


def test_many_threads_many_pages(ram4k):
    f = DictFile()
    for blk in range(64):
        f.blocks[blk] = bytes([blk]) * PS
    fh = f.fileh_open(ram4k)
    A = outcore.BigArray((64, PS), numpy.uint8, fh)
    results = {}

    def worker(k):
        def run():
            s = 0
            for blk in range(k, 64, 4):
                s += int(A[blk].sum())
                A[blk, 0] = 255
            results[k] = s
        return run

    run_threads(*[worker(k) for k in range(4)])
    for k in range(4):
        assert results[k] == sum(blk * PS for blk in range(k, 64, 4))
    assert sorted(f.loads) == list(range(64))
    assert fh.dirty_pages() == list(range(64))


@pytest.mark.parametrize("budget_pages", [4])
def test_threads_under_a_tiny_budget(budget_pages):
    ram = outcore.RAM(PS, budget=budget_pages * PS)
    f = DictFile()
    for blk in range(32):
        f.blocks[blk] = bytes([blk]) * PS
    fh = f.fileh_open(ram)
    A = outcore.BigArray((32, PS), numpy.uint8, fh)

    def reader():
        for _ in range(3):
            for blk in range(32):
                assert A[blk, 7] == blk

    run_threads(reader, reader)
    assert ram.stats()["reclaims"] > 0
