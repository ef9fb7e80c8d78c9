#!/usr/bin/python3
# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Benchmark: outcore.memmap against numpy.memmap on the same file.

    /usr/bin/python3 bench/bench_memmap.py [--size 4GiB] [--budget 256MiB]
        [--blksize 2MiB] [--rounds 3] [--reads 100000] [--dir /var/tmp]

One float64 file (created once in a temporary directory, removed at the
end) is read, with the page cache warm, by both contenders:

  scan     numpy.add.reduce over the whole array (a sequential sum);
  random   100,000 reads of random elements (one fancy-index gather).

Every measurement runs in a fresh subprocess (so each contender pays for
mapping the data, and its peak RSS, from getrusage ru_maxrss, is its own).
Contenders alternate within each round; the figures are medians over the
rounds.  Ratios are numpy.memmap's time divided by outcore's (above 1:
outcore is faster).  Targets (issue "Python"): scan >= 0.9x, random >=
0.8x, outcore's peak RSS <= budget + 64 MiB.  A benchmark, not a test: it
exits 0 whether the targets are met or not (1 only if something fails).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MiB = 1 << 20


def parse_size(s):
    """'4GiB' -> bytes (binary units, like outcore.parse_size)."""
    s = str(s).strip().lower().rstrip("b").rstrip("i")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


# ---- child: one measurement ------------------------------------------------

def child(args):
    """Run one measurement in this process and print a JSON line."""
    import numpy

    n = os.path.getsize(args.path) // 8
    t_open = time.perf_counter()
    if args.contender == "outcore":
        sys.path.insert(0, ROOT)
        import outcore

        m = outcore.memmap(args.path, "<f8", "r", ram=args.budget,
                           blksize=args.blksize)
        v = m[...]
    else:
        m = numpy.memmap(args.path, "<f8", "r")
        v = numpy.asarray(m)
    t0 = time.perf_counter()
    if args.what == "scan":
        result = float(numpy.add.reduce(v))
    else:
        idx = numpy.random.default_rng(12345).integers(0, n, args.reads)
        result = float(v[idx].sum())
    t1 = time.perf_counter()
    again = None
    if args.what == "scan":
        t2 = time.perf_counter()
        numpy.add.reduce(v)
        again = time.perf_counter() - t2
    extra = {}
    if args.contender == "outcore":
        st = m.ram.stats()
        extra = {"faults": st["faults"], "reclaims": st["reclaims"],
                 "used_max": st["used_max"], "base_maps": st["base_maps"]}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "time": t1 - t0, "open": t0 - t_open, "again": again,
        "result": result, "maxrss": ru.ru_maxrss * 1024,
        "minflt": ru.ru_minflt, "majflt": ru.ru_majflt, **extra}))
    return 0


# ---- parent -----------------------------------------------------------------

def create(path, size):
    """Write size bytes of float64 values 0, 1, 2, ... to path."""
    import numpy

    chunk = 8 << 20   # elements (64 MiB)
    n = size // 8
    with open(path, "wb") as f:
        for start in range(0, n, chunk):
            numpy.arange(start, min(n, start + chunk), dtype="<f8").tofile(f)


def warm(path):
    """Read the whole file so that it sits in the page cache."""
    buf = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def measure(args, contender, what, budget=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", contender,
           "--what", what, "--path", args.path,
           "--budget", budget or args.budget,
           "--blksize", args.blksize, "--reads", str(args.reads)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       timeout=1800)
    if r.returncode != 0:
        raise RuntimeError("%s %s failed (rc %d):\n%s" % (
            contender, what, r.returncode, r.stderr[-4000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default=os.environ.get("OUTCORE_BENCH_SIZE",
                                                     "4GiB"))
    ap.add_argument("--budget", default="256MiB")
    ap.add_argument("--blksize", default="2MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reads", type=int, default=100000)
    ap.add_argument("--dir", default=os.environ.get("OUTCORE_BENCH_DIR",
                                                    "/var/tmp"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the data file (path printed)")
    ap.add_argument("--child", choices=["outcore", "numpy"],
                    dest="contender", help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=["scan", "random"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contender:
        return child(args)

    size = parse_size(args.size)
    budget = parse_size(args.budget)
    tmp = tempfile.mkdtemp(prefix="outcore-bench-", dir=args.dir)
    args.path = os.path.join(tmp, "data.f8")
    try:
        t = time.perf_counter()
        create(args.path, size)
        warm(args.path)
        print("bench_memmap: %.1f GiB float64 file in %s (made and read in "
              "%.1f s); outcore.memmap budget %s, blksize %s; %d rounds, "
              "medians; each figure from a fresh process"
              % (size / (1 << 30), args.dir, time.perf_counter() - t,
                 args.budget, args.blksize, args.rounds))
        res = {(c, w): [] for c in ("outcore", "numpy")
               for w in ("scan", "random")}
        full = []   # random reads with a budget that holds the whole file
        full_budget = "%dMiB" % ((size >> 20) + 64)
        for r in range(args.rounds):
            order = ("outcore", "numpy") if r % 2 == 0 else \
                ("numpy", "outcore")
            for what in ("scan", "random"):
                for c in order:
                    res[c, what].append(measure(args, c, what))
            full.append(measure(args, "outcore", "random", full_budget))
        ok = True
        for what in ("scan", "random"):
            o = res["outcore", what]
            n = res["numpy", what]
            if len({x["result"] for x in o + n}) != 1:
                print("  %s: RESULTS DIFFER: %s" % (
                    what, sorted({x["result"] for x in o + n})))
                ok = False
            to = statistics.median(x["time"] for x in o)
            tn = statistics.median(x["time"] for x in n)
            target = 0.9 if what == "scan" else 0.8
            ratio = tn / to
            if what == "scan":
                rate = "%.2f / %.2f GB/s" % (size / to / 1e9, size / tn / 1e9)
                extra = "; second pass in the same process: outcore " \
                    "%.3f s, numpy.memmap %.3f s" % (
                        statistics.median(x["again"] for x in o),
                        statistics.median(x["again"] for x in n))
            else:
                rate = "%.1f / %.1f us per read" % (
                    to / args.reads * 1e6, tn / args.reads * 1e6)
                extra = ""
            print("%-7s outcore %.3f s, numpy.memmap %.3f s (%s): ratio "
                  "%.2fx (target >= %.1fx: %s)%s" % (
                      what, to, tn, rate, ratio, target,
                      "met" if ratio >= target else "MISSED", extra))
            print("        outcore faults %d, reclaims %d, used_max %d MiB; "
                  "minor faults: outcore %d, numpy.memmap %d" % (
                      statistics.median(x["faults"] for x in o),
                      statistics.median(x["reclaims"] for x in o),
                      max(x["used_max"] for x in o) // MiB,
                      statistics.median(x["minflt"] for x in o),
                      statistics.median(x["minflt"] for x in n)))
        tf = statistics.median(x["time"] for x in full)
        tn = statistics.median(x["time"] for x in res["numpy", "random"])
        print("random  with a budget that holds the file (%s): outcore "
              "%.3f s (%.1f us per read, %d faults): ratio %.2fx "
              "(informational)" % (full_budget, tf, tf / args.reads * 1e6,
                                   statistics.median(x["faults"]
                                                     for x in full),
                                   tn / tf))
        rss_o = max(x["maxrss"] for w in ("scan", "random")
                    for x in res["outcore", w])
        rss_n = max(x["maxrss"] for w in ("scan", "random")
                    for x in res["numpy", w])
        print("peak RSS: outcore %d MiB (budget %d MiB + %d MiB; target <= "
              "budget + 64 MiB: %s), numpy.memmap %d MiB" % (
                  rss_o // MiB, budget // MiB, (rss_o - budget) // MiB,
                  "met" if rss_o <= budget + 64 * MiB else "MISSED",
                  rss_n // MiB))
        return 0 if ok else 1
    finally:
        if args.keep:
            print("data kept in", args.path)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
