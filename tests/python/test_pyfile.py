# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Python-defined files: exact call counts, exceptions, fatal faults."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy
import pytest

import outcore
from conftest import DictFile, ROOT

PS = 4096
BOTH = outcore.WRITEOUT_STORE | outcore.WRITEOUT_MARKSTORED


def test_exact_counts_through_numpy(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    A = outcore.BigArray((8, 512), numpy.float64, fh)   # one row = one block
    assert f.loads == []
    assert A[...].sum() == 0
    assert f.loads == list(range(8))       # each block loaded once
    A[...].sum()
    assert f.loads == list(range(8))       # nothing reloaded
    A[3, 10] = 1.5                         # write to a loaded page: no load
    assert f.loads == list(range(8))
    assert fh.dirty_pages() == [3]
    A[2:5] += 1                            # read-modify-write of 3 rows
    assert fh.dirty_pages() == [2, 3, 4]
    assert f.stores == []
    fh.dirty_writeout(BOTH)
    assert f.stores == [2, 3, 4]
    fh.dirty_writeout(BOTH)                # nothing dirty: no store
    assert f.stores == [2, 3, 4]
    numpy.copyto(A[6], 7.0)
    fh.dirty_writeout(BOTH)
    assert f.stores == [2, 3, 4, 6]
    assert numpy.frombuffer(f.blocks[6], numpy.float64).tolist() == [7.0] * 512
    assert len(f.loads) == 8


def test_write_to_unloaded_page_loads_once(ram4k):
    f = DictFile()
    f.blocks[1] = numpy.full(PS, 9, numpy.uint8).tobytes()
    fh = f.fileh_open(ram4k)
    A = outcore.BigArray((4 * PS,), numpy.uint8, fh)
    A[PS + 3] = 1
    assert f.loads == [1]
    assert A[PS + 2] == 9 and A[PS + 3] == 1
    assert fh.dirty_pages() == [1]
    st = ram4k.stats()
    assert st["loads"] >= 1 and st["write_faults"] >= 1


def test_buffer_is_exactly_one_block(ram4k):
    seen = []

    class F(outcore.BigFile):
        def loadblk(self, blk, buf):
            seen.append((blk, type(buf), buf.nbytes, buf.readonly))
            buf[:] = bytes([blk]) * len(buf)

        def storeblk(self, blk, buf):
            seen.append((blk, type(buf), buf.nbytes, buf.readonly))
            with pytest.raises(TypeError):
                buf[0] = 1

    fh = F(PS).fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 3), numpy.uint8)
    assert a[2 * PS] == 2
    a[2 * PS] = 5
    fh.dirty_writeout(BOTH)
    assert seen == [(2, memoryview, PS, False), (2, memoryview, PS, True)]


def test_storeblk_exception_out_of_writeout(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 8), numpy.uint8)
    for blk in (0, 2, 5):
        a[blk * PS] = blk + 1
    err = OSError(28, "disk full")

    def fail_on_2(blk, buf):
        if blk == 2:
            raise err

    f.store_hook = fail_on_2
    with pytest.raises(OSError) as e:
        fh.dirty_writeout(BOTH)
    assert e.value is err                   # that very exception
    assert f.stores == [0, 2]
    assert fh.dirty_pages() == [2, 5]       # not stored: still dirty
    assert a[2 * PS] == 3 and a[5 * PS] == 6
    with pytest.raises(OSError):            # retry fails the same way
        fh.dirty_writeout(outcore.WRITEOUT_STORE)
    assert fh.dirty_pages() == [2, 5]
    f.store_hook = None
    fh.dirty_writeout(BOTH)                 # retry works
    assert fh.dirty_pages() == []
    assert f.blocks[2][0] == 3 and f.blocks[5][0] == 6


def test_storeblk_exception_store_phase_only(ram4k):
    f = DictFile()
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 4), numpy.uint8)
    a[0] = a[PS] = a[3 * PS] = 1

    def fail(blk, buf):
        if blk == 1:
            raise KeyError(blk)

    f.store_hook = fail
    with pytest.raises(KeyError):
        fh.dirty_writeout(outcore.WRITEOUT_STORE)
    assert fh.dirty_pages() == [0, 1, 3]
    fh.dirty_discard()
    assert not fh.isdirty()
    assert a[0] == 1 and a[PS] == 0         # 0 was stored, 1 was not


def test_load_exception_raised_from_load_and_prefault(ram4k):
    f = DictFile()
    err = ZeroDivisionError("no block 3")

    def hook(blk, buf):
        if blk == 3:
            raise err

    f.load_hook = hook
    fh = f.fileh_open(ram4k)
    fh.load(0, 3)
    assert f.loads == [0, 1, 2]
    with pytest.raises(ZeroDivisionError) as e:
        fh.load(2, 4)
    assert e.value is err
    v = fh.mmap(0, 6)
    a = numpy.frombuffer(v, numpy.uint8)
    with pytest.raises(ZeroDivisionError):
        outcore.prefault(a[2 * PS:5 * PS])
    with pytest.raises(ZeroDivisionError):
        outcore.prefault(a, write=True)
    f.load_hook = None
    outcore.prefault(a)
    assert a.sum() == 0


def test_exception_state_preserved_across_fault(ram4k):
    f = DictFile()

    def hook(blk, buf):
        # the callee starts with a clean state and may raise and catch
        assert sys.exc_info() == (None, None, None)
        try:
            raise KeyError("inner")
        except KeyError:
            pass

    f.load_hook = hook
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 4), numpy.uint8)
    try:
        raise ValueError("outer")
    except ValueError as outer:
        assert a[0] == 0                    # fault inside an except block
        assert sys.exc_info()[1] is outer
        assert a[2 * PS] == 0
        assert sys.exc_info()[1] is outer
    assert f.loads == [0, 2]


def test_gc_inside_loadblk(ram4k):
    import gc

    f = DictFile()
    other = DictFile()

    def hook(blk, buf):
        gc.collect()                        # may free handles and mappings

    f.load_hook = hook
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 4), numpy.uint8)
    for _ in range(3):
        ofh = other.fileh_open(ram4k)
        cyc = [ofh.mmap(0, 1)]
        cyc.append(cyc)                     # garbage for the collector
        del ofh, cyc
        a.sum()
        fh.invalidate_page(0)
    assert len(f.loads) >= 4


def run_child(code, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def test_loadblk_exception_in_fault_is_fatal():
    r = run_child("""
        import numpy, outcore

        class Bad(outcore.BigFile):
            def loadblk(self, blk, buf):
                raise RuntimeError("cannot read block %d" % blk)

        fh = Bad(4096).fileh_open(outcore.RAM(4096))
        a = numpy.frombuffer(fh.mmap(0, 8), numpy.uint8)
        print("going to fault", flush=True)
        a[5 * 4096]
        print("survived")
        """)
    assert "going to fault" in r.stdout
    assert "survived" not in r.stdout
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr)
    assert "Traceback" in r.stderr
    assert "RuntimeError: cannot read block 5" in r.stderr
    assert "blk=5" in r.stderr or "block 5" in r.stderr


@pytest.mark.parametrize("keep", [
    "numpy.frombuffer(buf, numpy.uint8)",   # a reference + a raw pointer
    "memoryview(buf)[10:20]",               # an export
    "buf",                                  # the view itself
])
def test_loadblk_keeping_its_buffer_aborts(keep):
    r = run_child("""
        import numpy, outcore

        class Leaky(outcore.BigFile):
            def loadblk(self, blk, buf):
                self.keep = KEEP
                outcore.mem.bzero(buf)

        fh = Leaky(4096).fileh_open(outcore.RAM(4096))
        fh.load(0)
        print("survived")
        """.replace("KEEP", keep))
    assert "survived" not in r.stdout
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stderr)
    assert "kept a reference to its buffer" in r.stderr


def test_export_kept_by_traceback_is_cleared(ram4k):
    class F(outcore.BigFile):
        def loadblk(self, blk, buf):
            view = numpy.frombuffer(buf, numpy.uint8)   # noqa: F841
            raise LookupError("with a live view in the frame")

    fh = F(PS).fileh_open(ram4k)
    with pytest.raises(LookupError) as e:
        fh.load(0)
    assert e.value.__traceback__ is not None


def test_fork_child_gets_forked_error(ram4k):
    f = outcore.MemFile(PS)
    fh = f.fileh_open(ram4k)
    a = numpy.frombuffer(fh.mmap(0, 2), numpy.uint8)
    a[0] = 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            try:
                fh.mmap(0, 1)
            except outcore.ForkedError:
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert a[0] == 1


def test_fork_child_opens_anew_on_the_default_ram():
    """After the parent used the default RAM (ram=None), a child opens
    its own handles on a default RAM of its own (it got the parent's
    inherited one, and ForkedError for every open: memmap, stores and
    the arrays a fork Pool unpickles)."""
    fh = outcore.MemFile(PS).fileh_open()           # the default RAM
    a = numpy.frombuffer(fh.mmap(0, 2), numpy.uint8)
    a[0] = 1
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            fh2 = outcore.MemFile(PS).fileh_open()
            b = numpy.frombuffer(fh2.mmap(0, 2), numpy.uint8)
            b[PS] = 5
            code = 0 if b[PS] == 5 and fh2.ram is not fh.ram else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert a[0] == 1
    assert outcore.MemFile(PS).fileh_open().ram is fh.ram   # ours still


def test_faulthandler_enabled_after_the_first_handle():
    """faulthandler.enable() after outcore's handler is installed: page
    faults are still served (every one crashed the process), and a real
    crash still gets faulthandler's traceback."""
    code = """
        import ctypes, faulthandler, sys, numpy, outcore
        fh = outcore.MemFile(4096).fileh_open(outcore.RAM(4096))
        a = numpy.frombuffer(fh.mmap(0, 8), numpy.uint8)
        a[0] = 1
        faulthandler.enable()
        a[5 * 4096] = 2
        print("served", a[0], a[5 * 4096], flush=True)
        if len(sys.argv) > 1:
            ctypes.string_at(16)
        """
    r = run_child(code)
    assert r.returncode == 0 and "served 1 2" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "crash"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert "served 1 2" in r.stdout
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr)
    assert "Segmentation fault" in r.stderr and "string_at" in r.stderr
    # disabled again: its handler returns at once, and a crash looped
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code).replace(
        "faulthandler.enable()", "faulthandler.enable(); "
        "faulthandler.disable()"), "crash"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert "served 1 2" in r.stdout
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr)


def test_transient_loadblk_failure_in_fault_is_retried():
    r = run_child("""
        import numpy, outcore

        class Flaky(outcore.BigFile):
            fails = 2

            def loadblk(self, blk, buf):
                if self.fails:
                    self.fails -= 1
                    raise TimeoutError("slow storage")
                outcore.mem.memset(buf, 7)

        fh = Flaky(4096).fileh_open(outcore.RAM(4096))
        a = numpy.frombuffer(fh.mmap(0, 2), numpy.uint8)
        print("value", a[4096 + 3])
        """)
    assert r.returncode == 0, r.stderr
    assert "value 7" in r.stdout
    assert r.stderr.count("Traceback") == 1
    assert "TimeoutError: slow storage" in r.stderr
    assert "failed again" in r.stderr
