# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""The outcore command, run for real in a subprocess (bin/outcore)."""
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
MiB = 1 << 20


def run(*args, ok=True, timeout=120):
    p = subprocess.run([sys.executable, os.path.join("bin", "outcore")] +
                       [str(a) for a in args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def assert_one_line_error(p, code=None):
    assert p.returncode != 0, (p.stdout, p.stderr)
    if code is not None:
        assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("outcore: "), p.stderr


def peak_rss(stderr):
    m = re.search(r"peak RSS (\d+) bytes", stderr)
    assert m, stderr
    return int(m.group(1))


@pytest.fixture
def store(tmp_path):
    return tmp_path / "s.oc"


def test_import_export_npy_bigger_than_ram(tmp_path, store):
    # 96 MiB of data (+ a partial block) through a 32 MiB budget
    n = 96 * MiB // 8 + 5
    src = tmp_path / "big.npy"
    a = numpy.lib.format.open_memmap(src, mode="w+", dtype="<f8", shape=(n,))
    a[:] = numpy.arange(n) * 1.5
    a.flush()
    del a
    p = run("-v", "import", store, "big", src, "--ram", "32MiB")
    assert peak_rss(p.stderr) < 96 * MiB      # not the whole file in RAM
    dst = tmp_path / "out.npy"
    p = run("-v", "export", store, "big", dst, "--ram", "32MiB")
    assert peak_rss(p.stderr) < 96 * MiB
    assert os.path.getsize(src) == os.path.getsize(dst)
    with open(src, "rb") as f, open(dst, "rb") as g:
        while True:
            x, y = f.read(8 * MiB), g.read(8 * MiB)
            assert x == y
            if not x:
                break


def test_import_export_fortran_and_structured(tmp_path, store):
    f = numpy.asfortranarray(numpy.arange(35000, dtype="<i2").reshape(7, 5000))
    s = numpy.zeros(10, dtype=[("a", "<i4"), ("b", "<f8", (2,))])
    s["a"] = numpy.arange(10)
    numpy.save(tmp_path / "f.npy", f)
    numpy.save(tmp_path / "s.npy", s)
    run("import", store, "f", tmp_path / "f.npy")
    run("import", store, "s", tmp_path / "s.npy")
    run("export", store, "f", tmp_path / "f2.npy")
    run("export", store, "s", tmp_path / "s2.npy")
    for x in ("f", "s"):
        assert (tmp_path / (x + ".npy")).read_bytes() == \
            (tmp_path / (x + "2.npy")).read_bytes()
    assert numpy.load(tmp_path / "f2.npy").flags.f_contiguous


def test_import_raw(tmp_path, store):
    raw = tmp_path / "r.raw"
    data = numpy.arange(3 * 4 * 5, dtype=">u4")
    data.tofile(raw)
    run("import", store, "r", raw, "--dtype", ">u4", "--shape", "3,4,5")
    run("import", store, "r1", raw, "--dtype", "uint8")      # 1-D
    run("export", store, "r", tmp_path / "r.npy")
    got = numpy.load(tmp_path / "r.npy")
    assert got.dtype == numpy.dtype(">u4") and got.shape == (3, 4, 5)
    assert (got.ravel() == data).all()
    run("export", store, "r", tmp_path / "r2.raw", "--raw")
    assert (tmp_path / "r2.raw").read_bytes() == raw.read_bytes()
    p = run("info", store, "r1")
    assert "(240,)" in p.stdout
    # a size that does not match
    p = run("import", store, "bad", raw, "--dtype", "<f8", "--shape", "100",
            ok=False)
    assert_one_line_error(p, 1)


def test_ls_info(tmp_path, store):
    # one stored block of three (the rest holes) in array "a"
    a = numpy.zeros(3 * 2 * MiB // 4, dtype="<f4")
    a[-1] = 7
    numpy.save(tmp_path / "a.npy", a)
    numpy.save(tmp_path / "b.npy", numpy.ones((10, 20), dtype="<i8"))
    run("import", store, "a", tmp_path / "a.npy")
    run("import", store, "b", tmp_path / "b.npy")
    p = run("ls", store)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SHAPE", "DTYPE", "ORDER", "STORED",
                                "SIZE"]
    la = [ln for ln in lines if ln.startswith("a ")][0].split()
    lb = [ln for ln in lines if ln.startswith("b ")][0].split()
    assert la[:4] == ["a", "1572864", "<f4", "C"]
    assert " ".join(la[4:]) == "2.0 MiB 6.0 MiB"
    assert lb[:4] == ["b", "10x20", "<i8", "C"]
    assert " ".join(lb[4:]) == "2.0 MiB 1.6 KiB"
    assert "2 arrays" in p.stdout
    p = run("info", store, "a")
    info = dict(re.split(r":\s+", ln, maxsplit=1)
                for ln in p.stdout.splitlines())
    assert info["shape"] == "(1572864,)"
    assert info["dtype"] == "<f4"
    assert info["blocks"] == "3"
    assert info["blocks stored"].startswith("1 ")
    assert info["holes"] == "2 (blocks 0-1)"
    assert info["attrs"] == "{}"
    run("rm", store, "a")
    p = run("ls", store)
    assert "1 array," in p.stdout and "\na " not in p.stdout


def test_check_healthy_and_corrupt(tmp_path, store):
    x = numpy.arange(4 * 2 * MiB // 8, dtype="<f8")          # 4 blocks
    numpy.save(tmp_path / "x.npy", x)
    run("import", store, "x", tmp_path / "x.npy")
    p = run("check", store)
    assert "ok" in p.stdout and p.stderr == ""
    bad = tmp_path / "bad.oc"
    shutil.copytree(store, bad)
    data = bad / "data"
    size = os.path.getsize(data)
    assert size >= 4 * 2 * MiB
    with open(data, "r+b") as f:     # in the middle of a block: the 4
        off = 3 * MiB + 12345        # extents are the first 8 MiB (the file
        # may be longer: space allocated ahead)
        f.seek(off)
        b = f.read(64)
        f.seek(off)
        f.write(bytes(c ^ 0xFF for c in b))
    p = run("check", bad, ok=False)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert re.search(r"array 'x' block \d+: .*corrupt", p.stderr), p.stderr
    # the data itself errs cleanly too
    p = run("export", bad, "x", tmp_path / "y.npy", ok=False)
    assert_one_line_error(p, 1)
    assert re.search(r"array 'x' block \d+", p.stderr)
    assert not (tmp_path / "y.npy").exists()
    # the healthy store is untouched
    run("check", store)


def test_bad_arguments(tmp_path, store):
    numpy.save(tmp_path / "x.npy", numpy.ones(3))
    run("import", store, "x", tmp_path / "x.npy")
    assert_one_line_error(run("ls", tmp_path / "missing.oc", ok=False), 1)
    assert_one_line_error(run("info", store, "nope", ok=False), 1)
    assert_one_line_error(run("export", store, "nope", tmp_path / "n.npy",
                              ok=False), 1)
    assert_one_line_error(run("rm", store, "nope", ok=False), 1)
    assert_one_line_error(run("frobnicate", ok=False), 2)
    assert_one_line_error(run("demo", "--size", "4Gx", ok=False), 2)
    assert_one_line_error(run("demo", "--ram", "lots", ok=False), 2)
    assert_one_line_error(run("import", store, "y", tmp_path / "none.npy",
                              ok=False), 1)
    assert_one_line_error(run("import", store, "x", tmp_path / "x.npy",
                              ok=False), 1)      # exists
    p = run("ls", "--no-sizes", store)            # and is still there (a
    assert "\nx " in p.stdout, p.stdout          # failed import took it)
    (tmp_path / "notnpy").write_bytes(b"hello world")
    assert_one_line_error(run("import", store, "z", tmp_path / "notnpy",
                              ok=False), 1)
    (tmp_path / "plain").write_text("x")
    assert_one_line_error(run("ls", tmp_path / "plain", ok=False), 1)
    assert_one_line_error(run("ls", tmp_path, ok=False), 1)  # not a store
    p = run("info", ok=False)                     # missing argument
    assert_one_line_error(p, 2)


def test_help_has_examples():
    for cmd in ("demo", "ls", "info", "import", "export", "rm", "check"):
        p = run(cmd, "--help")
        assert "example" in p.stdout and "outcore " + cmd in p.stdout


def test_demo_small(tmp_path):
    p = run("demo", "--size", "64MiB", "--ram", "32MiB")
    out = p.stdout
    for what in ("fill", "mean/min/max/std", "abort", "commit"):
        assert what in out, out
    assert "after abort" in out
    m = re.search(r"mean ([\d.]+)\s+min (\S+)\s+max (\S+)\s+std ([\d.]+)", out)
    assert m and float(m.group(1)) == 511.5 and m.group(3) == "1023"
    m = re.search(r"total .*; peak RSS ([\d.]+) MiB", out)
    assert m, out
    assert float(m.group(1)) < 32 + 64, out
    # a given store is kept and can be reused
    st = tmp_path / "demo.oc"
    run("-q", "demo", st, "--size", "8MiB", "--ram", "32MiB")
    run("demo", st, "--size", "8MiB", "--ram", "32MiB")
    assert "demo" in run("ls", st).stdout


def test_export_targets(tmp_path, store):
    """export writes a regular file through a temporary renamed over it,
    writes a device or FIFO in place (it was renamed over, turning
    /dev/null into a file), refuses a directory and the store's own
    files, and leaves a symbolic link and another FILE.part alone."""
    import stat
    import threading
    x = numpy.arange(1000, dtype="<f8")
    numpy.save(tmp_path / "x.npy", x)
    want = (tmp_path / "x.npy").read_bytes()
    run("import", store, "x", tmp_path / "x.npy")

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()),
                              daemon=True)     # a failure must not hang
    reader.start()
    run("export", store, "x", fifo)
    reader.join(30)
    assert got == [want]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    before = {f: (store / f).read_bytes() for f in ("data", "index.mdb")}
    for f in ("data", "index.mdb"):
        p = run("export", store, "x", store / f, ok=False)
        assert_one_line_error(p, 1)
        assert "store" in p.stderr
    os.link(store / "data", tmp_path / "hard")     # the same file, elsewhere
    assert_one_line_error(run("export", store, "x", tmp_path / "hard",
                              ok=False), 1)
    assert {f: (store / f).read_bytes() for f in before} == before
    run("check", store)

    p = run("export", store, "x", tmp_path, ok=False)
    assert_one_line_error(p, 1)
    assert "directory" in p.stderr and ".part" not in p.stderr
    assert_one_line_error(run("export", store, "x", "", ok=False), 1)

    (tmp_path / "target.npy").write_bytes(b"old")
    os.symlink("target.npy", tmp_path / "link")
    (tmp_path / "link.part").write_bytes(b"someone's")
    run("export", store, "x", tmp_path / "link")
    assert os.readlink(tmp_path / "link") == "target.npy"
    assert (tmp_path / "target.npy").read_bytes() == want
    assert (tmp_path / "link.part").read_bytes() == b"someone's"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")
                and f != "link.part"]


def test_one_block_budget_unaligned_rows(tmp_path, store):
    """Rows that do not divide the block: chunks span two blocks, which a
    budget of one block cannot hold loaded at once (export failed with
    'Bad address'); import and export go a block at a time."""
    f = numpy.asfortranarray(
        numpy.arange(1234 * 1111, dtype="<f8").reshape(1234, 1111))
    numpy.save(tmp_path / "f.npy", f)
    p = run("import", "--ram", "2MiB", store, "f", tmp_path / "f.npy")
    assert "exceeded" not in p.stderr, p.stderr
    p = run("export", "--ram", "2MiB", store, "f", tmp_path / "g.npy")
    assert p.stderr == ""
    assert (tmp_path / "f.npy").read_bytes() == \
        (tmp_path / "g.npy").read_bytes()


def test_export_utf8_field_names(tmp_path, store):
    """A .npy of format 3.0 (UTF-8 field names) comes back as one."""
    s = numpy.zeros(4, dtype=[("\u00fc\u65e5", "<f8"), ("b", "<i2")])
    s["b"] = [1, 2, 3, 4]
    with warnings.catch_warnings():   # "format 3.0 needs NumPy >= 1.17"
        warnings.simplefilter("ignore", UserWarning)
        numpy.save(tmp_path / "s.npy", s)
    run("import", store, "s", tmp_path / "s.npy")
    p = run("export", store, "s", tmp_path / "t.npy")
    assert p.stderr == ""
    t = numpy.load(tmp_path / "t.npy")
    assert t.dtype == s.dtype and (t == s).all()


def _wait_for_commit(index, mtime, proc, timeout=60):
    import time
    t0 = time.monotonic()
    while os.stat(index).st_mtime_ns == mtime:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.002)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_import_takes_back(tmp_path, store, sig):
    """An import interrupted after its first commits leaves the store as
    it was (it used to keep a committed, zero-filled array), with one line
    and the signal's exit status."""
    import signal
    signum = getattr(signal, sig)
    numpy.save(tmp_path / "k.npy", numpy.ones(10))
    run("import", store, "keep", tmp_path / "k.npy")
    n = 64 * MiB // 8
    big = numpy.lib.format.open_memmap(tmp_path / "big.npy", mode="w+",
                                       dtype="<f8", shape=(n,))
    big[:] = 1.0
    del big
    index = store / "index.mdb"
    mtime = os.stat(index).st_mtime_ns
    proc = subprocess.Popen(
        [sys.executable, os.path.join("bin", "outcore"), "import", "--ram",
         "4MiB", str(store), "big", str(tmp_path / "big.npy")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_commit(index, mtime, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, (proc.returncode, err)
    assert err.strip() == "outcore: %s" % (
        "interrupted" if sig == "SIGINT" else "terminated"), err
    p = run("ls", "--no-sizes", store)     # a header, the rows, a summary
    assert [ln.split()[0] for ln in p.stdout.splitlines()[1:-1]] == ["keep"]
    run("check", store)


def test_interrupt_while_starting():
    """Ctrl-C before the command has started its work, while NumPy and
    outcore load: no traceback (bin/outcore leaves SIGINT's default until
    main() runs).  A signal that comes while the interpreter itself starts
    (its site module), before bin/outcore runs, is Python's to report: such
    a round does not count."""
    import signal
    import time
    counted = 0
    for delay in (0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.3):
        proc = subprocess.Popen([sys.executable, os.path.join("bin", "outcore"),
                                 "--version"], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if "init_import_site" in err:
            continue
        counted += 1
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert proc.returncode in (0, -signal.SIGINT, 130), (delay, err)
    assert counted >= 4


def test_commands_make_no_store(tmp_path):
    """Only import and demo create a store; a failed import removes the
    store it made (and the directory it made), nothing else."""
    numpy.save(tmp_path / "x.npy", numpy.ones(3))
    missing = tmp_path / "missing.oc"
    for args in (("rm", missing, "x"), ("info", missing, "x"),
                 ("export", missing, "x", tmp_path / "o.npy"),
                 ("ls", missing), ("check", missing)):
        assert_one_line_error(run(*args, ok=False), 1)
        assert not missing.exists(), args
    assert_one_line_error(run("import", missing, "bad\x01name",
                              tmp_path / "x.npy", ok=False), 1)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("import", empty, "", tmp_path / "x.npy",
                              ok=False), 1)
    assert empty.is_dir() and not os.listdir(empty)
    assert_one_line_error(run("rm", empty, "x", ok=False), 1)
    assert not os.listdir(empty)


def test_messages_are_one_line(tmp_path, store):
    """Multi-line texts (NumPy's) and control characters (a name holding an
    escape sequence) come out as one line of printable text; a .npy says
    its own order."""
    numpy.save(tmp_path / "x.npy", numpy.ones((2, 3)))
    run("import", store, "x", tmp_path / "x.npy")
    dt = numpy.dtype([("f%d" % i, "<f8") for i in range(3000)])
    numpy.save(tmp_path / "wide.npy", numpy.zeros(1, dtype=dt))
    p = run("import", store, "w", tmp_path / "wide.npy", ok=False)
    assert_one_line_error(p, 1)
    p = run("info", store, "a\x1b[31mb", ok=False)
    assert_one_line_error(p, 1)
    assert "\x1b" not in p.stderr and "\\x1b" in p.stderr
    assert_one_line_error(run("import", store, "x", tmp_path / "x.npy",
                              "--order", "F", ok=False), 2)
    p = run("import", store, b"\xff".decode("utf-8", "surrogateescape"),
            tmp_path / "x.npy", ok=False)
    assert_one_line_error(p, 1)
    assert "UTF-8" in p.stderr


def test_demo_keeps_a_users_array(tmp_path):
    """demo STORE replaces its own array 'demo' only, not a user's."""
    st = tmp_path / "d.oc"
    numpy.save(tmp_path / "x.npy", numpy.arange(5.0))
    run("import", st, "demo", tmp_path / "x.npy")
    p = run("demo", st, "--size", "4MiB", "--ram", "8MiB", ok=False)
    assert_one_line_error(p, 1)
    run("export", st, "demo", tmp_path / "y.npy")
    assert (numpy.load(tmp_path / "y.npy") == numpy.arange(5.0)).all()


def test_progress_of_small_arrays(tmp_path, store):
    """On a terminal, the bar of an array smaller than a block stays one
    bar (it counted whole blocks: megabytes of '#')."""
    import pty
    numpy.save(tmp_path / "x.npy", numpy.ones(1000))
    run("import", store, "x", tmp_path / "x.npy")
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, os.path.join("bin", "outcore"),
                          "ls", str(store)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=slave)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:       # EIO: the other end closed
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    assert len(err) < 4096, len(err)
    assert "#" * 25 not in err.decode()
