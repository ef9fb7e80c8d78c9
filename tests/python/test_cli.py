# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""The outcore command, run for real in a subprocess (bin/outcore)."""
import os
import re
import shutil
import subprocess
import sys

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
