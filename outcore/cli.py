# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""The ``outcore`` command: a demo, and tools for the arrays of a store.

::

    outcore demo                          # 4 GiB through a 256 MiB budget
    outcore import data.oc temps t.npy    # streamed: files bigger than RAM
    outcore ls data.oc
    outcore info data.oc temps
    outcore export data.oc temps t2.npy
    outcore check data.oc                 # verifies every block checksum
    outcore rm data.oc temps

Run as ``outcore`` (installed by ``pip install .``), ``python3 -m outcore``
or ``bin/outcore`` from the source tree.  Exit status: 0 on success, 1 on
an error (one line on stderr, ``outcore: <message>``), 2 on a usage error.
"""
import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import stat
import sys
import tempfile
import textwrap
import time
import warnings

import numpy
import numpy.lib.format as _npformat

__all__ = ["main"]

PROG = "outcore"
# The files an embedded store is made of (store_lmdb.c)
STORE_FILES = ("data", "index.mdb", "index.mdb-lock")


class CLIError(Exception):
    """An error to report as one line and exit status 1."""


class UsageError(Exception):
    """A usage error: one line and exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so that the
    same clean-up runs (an import takes its half-made array back)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def oneline(text):
    """text for a one-line message: control characters (a newline, an
    escape sequence in a name) written as escapes, not passed to the
    terminal."""
    return "".join(c if c.isprintable() else
                   ascii(c)[1:-1] if c != "\n" else " " for c in str(text))


# ---- output -----------------------------------------------------------------

class Out:
    """Where messages go: results on stdout, progress on stderr (only on a
    terminal), details with --verbose."""

    def __init__(self, quiet=False, verbose=False):
        self.quiet = quiet
        self.verbose = verbose
        self.tty = sys.stderr.isatty() and not quiet

    def say(self, msg=""):
        if not self.quiet:
            print(msg, flush=True)

    def result(self, msg):
        print(msg, flush=True)        # asked-for output: even with --quiet

    def debug(self, msg):
        if self.verbose:
            print("outcore: " + msg, file=sys.stderr, flush=True)

    def progress(self, total, label):
        return Progress(total, label, self.tty)


class Progress:
    """A one-line progress bar on stderr: bytes, rate, ETA (a no-op when
    stderr is not a terminal)."""

    def __init__(self, total, label, enabled):
        self.total = max(int(total), 0)
        self.label = label
        self.enabled = enabled
        self.done = 0
        self.t0 = time.monotonic()
        self.shown = 0.0

    def update(self, n):
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.shown < 0.2 and self.done < self.total:
            return
        self.shown = now
        dt = max(now - self.t0, 1e-9)
        rate = self.done / dt
        frac = self.done / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        sys.stderr.write("\r%s [%s] %s/%s %s/s ETA %s\x1b[K" % (
            self.label, bar, fmt_bytes(self.done), fmt_bytes(self.total),
            fmt_bytes(rate), fmt_secs(eta)))
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fmt_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else \
                "%.1f %s" % (n, unit)
        n /= 1024
    return "%d B" % n


def fmt_secs(s):
    if s < 60:
        return "%.0fs" % s
    return "%dm%02ds" % (s // 60, s % 60)


def peak_rss():
    """The peak resident set size of this process, in bytes.

    VmHWM of /proc/self/status: the high-water mark of this program's own
    address space.  getrusage()'s ru_maxrss (the fallback) is not that on
    Linux: it survives exec, so a command started by a big process (a test
    runner, an IDE) would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- arguments --------------------------------------------------------------

def size_arg(text):
    """A byte count such as 4GiB, 256MiB, 1000000 (argparse type)."""
    import outcore
    try:
        n = outcore.parse_size(text)
    except (outcore.Error, ValueError, TypeError, OverflowError):
        raise argparse.ArgumentTypeError(
            "bad size %r (examples: 4GiB, 256MiB, 1048576)" % (text,))
    if n <= 0:
        raise argparse.ArgumentTypeError("size %r must be > 0" % (text,))
    return n


def shape_arg(text):
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",")
                      if x.strip())
    except ValueError:
        shape = None
    if not shape or any(n < 0 for n in shape):
        raise argparse.ArgumentTypeError(
            "bad shape %r (example: 1000,1000)" % (text,))
    return shape


def dtype_arg(text):
    try:
        return numpy.dtype(text)
    except TypeError:
        raise argparse.ArgumentTypeError(
            "bad dtype %r (examples: float64, <f4, uint8)" % (text,))


class Parser(argparse.ArgumentParser):
    """argparse with errors as one line: ``outcore: <message>``, exit 2."""

    def error(self, message):
        raise UsageError("%s (see '%s --help')" % (message, self.prog))


def add_common(p):
    p.add_argument("-q", "--quiet", action="store_true",
                   default=argparse.SUPPRESS,
                   help="print only what was asked for (no steps, no "
                   "progress bar)")
    p.add_argument("-v", "--verbose", action="store_true",
                   default=argparse.SUPPRESS,
                   help="more detail; on an error, also the traceback")


def build_parser():
    fmt = argparse.RawDescriptionHelpFormatter
    p = Parser(prog=PROG, formatter_class=fmt,
               description="Out-of-core NumPy arrays: a demo, and tools "
               "for the arrays of an outcore store (a directory).",
               epilog="examples:\n"
               "  outcore demo --size 1GiB --ram 128MiB\n"
               "  outcore import data.oc temps temps.npy\n"
               "  outcore ls data.oc\n\n"
               "'outcore COMMAND --help' tells more about each command.")
    p.add_argument("--version", action="store_true",
                   help="print the version and exit")
    add_common(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           parser_class=Parser)

    def cmd(name, helptext, example, description=None):
        s = sub.add_parser(name, help=helptext, formatter_class=fmt,
                           description=textwrap.fill(description or
                                                     helptext, 78),
                           epilog="example:\n" + example)
        add_common(s)
        return s

    s = cmd("demo", "create, fill, reduce, abort and commit an array "
            "bigger than its RAM budget",
            "  outcore demo                       # 4 GiB, 256 MiB of RAM, "
            "temporary store\n"
            "  outcore demo /var/tmp/demo.oc --size 1GiB --ram 64MiB",
            description="Create (or reuse) a store and an array SIZE large "
            "under a RAM budget of RAM; fill it block by block, commit, "
            "compute mean/min/max/std with NumPy, change a slice and abort "
            "(the old data is back), change it again and commit.  Each step "
            "prints its time, throughput and the process's peak RSS.")
    s.add_argument("store", nargs="?", metavar="STORE",
                   help="the store to use (default: a temporary directory, "
                   "removed after)")
    s.add_argument("--size", type=size_arg, default=size_arg("4GiB"),
                   help="the array's size (default 4GiB)")
    s.add_argument("--ram", type=size_arg, default=size_arg("256MiB"),
                   help="the RAM budget (default 256MiB)")
    s.set_defaults(func=cmd_demo)

    s = cmd("ls", "list the arrays of a store",
            "  outcore ls data.oc",
            description="List the arrays of STORE: name, shape, dtype, "
            "order, stored size and logical size.  The stored size is the "
            "number of blocks the store holds times the block size (blocks "
            "never written or all zeros are holes and take no space); "
            "finding it probes every block (--no-sizes skips that).")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--no-sizes", action="store_true",
                   help="do not probe the blocks (stored size shown as -)")
    s.set_defaults(func=cmd_ls)

    s = cmd("info", "show an array's metadata, attrs and blocks",
            "  outcore info data.oc temps")
    s.add_argument("store", metavar="STORE")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=cmd_info)

    s = cmd("import", "import a .npy (or raw binary) file as a new array",
            "  outcore import data.oc temps temps.npy\n"
            "  outcore import data.oc img img.raw --dtype uint16 "
            "--shape 4096,4096",
            description="Create array NAME in STORE from FILE, streamed in "
            "block-aligned chunks (committed as it goes), so FILE may be "
            "bigger than RAM.  FILE is a .npy file, or raw binary when "
            "--dtype is given (then --shape defaults to 1-D).  An import "
            "that fails or is interrupted (Ctrl-C, SIGTERM) takes NAME back, "
            "and a store it made; one killed outright (SIGKILL, a crash) "
            "leaves NAME partly filled: 'outcore rm' it.")
    s.add_argument("store", metavar="STORE")
    s.add_argument("name", metavar="NAME")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--dtype", type=dtype_arg,
                   help="raw binary of this dtype (e.g. float64, <i4)")
    s.add_argument("--shape", type=shape_arg,
                   help="raw binary: the shape, e.g. 1000,1000")
    s.add_argument("--order", choices=("C", "F"),
                   help="raw binary: the order of the data (default C)")
    s.add_argument("--ram", type=size_arg, default=size_arg("256MiB"),
                   help="RAM budget (default 256MiB)")
    s.set_defaults(func=cmd_import)

    s = cmd("export", "write an array to a .npy (or raw binary) file",
            "  outcore export data.oc temps temps.npy\n"
            "  outcore export data.oc img img.raw --raw",
            description="Write array NAME of STORE to FILE (a .npy file, or "
            "its bytes in the array's order with --raw), streamed in "
            "chunks, so the array may be bigger than RAM.")
    s.add_argument("store", metavar="STORE")
    s.add_argument("name", metavar="NAME")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--raw", action="store_true",
                   help="raw binary: no .npy header")
    s.add_argument("--ram", type=size_arg, default=size_arg("256MiB"),
                   help="RAM budget (default 256MiB)")
    s.set_defaults(func=cmd_export)

    s = cmd("rm", "delete an array (committed at once)",
            "  outcore rm data.oc temps")
    s.add_argument("store", metavar="STORE")
    s.add_argument("name", metavar="NAME", nargs="+")
    s.set_defaults(func=cmd_rm)

    s = cmd("check", "verify the metadata and every block checksum",
            "  outcore check data.oc && echo healthy",
            description="Read the metadata of every array and every stored "
            "block of STORE, verifying each block's checksum.  Exit 0 when "
            "all is well; otherwise print one line per problem (naming the "
            "array and block) and exit 1.")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--ram", type=size_arg, default=size_arg("256MiB"),
                   help="RAM budget (default 256MiB)")
    s.set_defaults(func=cmd_check)
    return p


# ---- store helpers ----------------------------------------------------------

def open_store(path, ram=None, readonly=True, verify=True, create=False):
    """Open an existing store (or create it: create=True, for import and
    demo) with clear errors for paths that are not stores."""
    import outcore
    from outcore.store import _is_url
    if _is_url(path):
        pass                   # a PostgreSQL server: it says what is wrong
    elif not os.path.exists(path):
        if not create:
            raise CLIError("%s: no such store" % (path,))
    elif not os.path.isdir(path):
        raise CLIError("%s: not a store (not a directory)" % (path,))
    elif not create and not readonly and \
            not os.path.exists(os.path.join(path, "index.mdb")):
        # outcore.open would make one in an empty directory
        raise CLIError("%s: not an outcore store" % (path,))
    try:
        return outcore.open(path, ram=ram, readonly=readonly and not create,
                            verify=verify)
    except outcore.Error as e:
        raise CLIError("%s: %s" % (path, e)) from e


def remove_store(path, rmdir):
    """Remove the store a failed command made at path: its files, and
    with rmdir the directory (made too) if that leaves it empty; nothing
    else is touched."""
    for f in STORE_FILES:
        try:
            os.unlink(os.path.join(path, f))
        except OSError:
            pass
    if rmdir:
        try:
            os.rmdir(path)
        except OSError:
            pass


def check_name(name):
    """A NAME argument the store can hold, or a CLIError: a name from
    the command line may carry bytes that are not UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise CLIError("array name %s is not valid UTF-8" % (
            ascii(name),)) from None
    return name


def get_array(db, name):
    import outcore
    try:
        return db[name]
    except outcore.NotFoundError:
        raise CLIError("%s: no array %r (the arrays: %s)" % (
            db.path, name, ", ".join(db.names()) or "none")) from None


def nblocks(a):
    bs = a.fileh.blksize
    return -(-a.nbytes // bs)


class CoreMessages:
    """Catch what the C core writes on file descriptor 2 during a call
    (``with msgs: ...``), so that a corrupt block is reported once, by us,
    naming the array and block; :meth:`flush` passes anything else on."""

    _CORRUPT = re.compile(r"^outcore: store: (array '.*' block \d+: .*)$")

    def __init__(self):
        self.f = tempfile.TemporaryFile()
        self.saved = None
        self.corrupt = []      # the core's corrupt-block messages

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.saved = None
        self.f.seek(0)
        text = self.f.read().decode("utf-8", "replace")
        self.f.seek(0)
        self.f.truncate()
        for line in text.splitlines():
            m = self._CORRUPT.match(line)
            if m:
                self.corrupt.append(m.group(1))
            elif line:
                print(line, file=sys.stderr)

    def close(self):
        self.f.close()


def probe_blocks(db, a, progress=None):
    """Load every block of array a: the list of holes (blocks the store
    does not hold), and the corrupt blocks [(blk, error)].  The store
    counts holes it serves (stats()['holes']), which tells a stored block
    from a hole.  Pages are dropped after each load (read-only store)."""
    import outcore
    fh = a.fileh
    holes, corrupt = [], []
    msgs = CoreMessages()
    for blk in range(nblocks(a)):
        h0 = db.stats()["holes"]
        try:
            with msgs:
                fh.load(blk)
        except outcore.StoreError as e:
            corrupt.append((blk, e))
        else:
            if db.stats()["holes"] != h0:
                holes.append(blk)
        fh.invalidate_page(blk)
        if progress:
            progress.update(min(fh.blksize, a.nbytes - blk * fh.blksize))
    msgs.close()
    return holes, corrupt


def ranges(blks):
    """[1,2,3,7] -> '1-3, 7'."""
    out = []
    i = 0
    while i < len(blks):
        j = i
        while j + 1 < len(blks) and blks[j + 1] == blks[j] + 1:
            j += 1
        out.append(str(blks[i]) if i == j else "%d-%d" % (blks[i], blks[j]))
        i = j + 1
    return ", ".join(out)


def block_pieces(b, bs):
    """The pieces of the flat byte view b that lie in one block each (a
    store maps its arrays' blocks at addresses aligned to the block size).
    A system call such as read or write needs the pages of its buffer
    loaded (see prefault): a piece needs one block, which any budget
    holds, where a chunk may span two."""
    addr = b.__array_interface__["data"][0]
    i = 0
    while i < b.size:
        n = min(b.size - i, bs - (addr + i) % bs)
        yield b[i:i + n]
        i += n


def dtype_text(dt):
    return dt.str if dt.fields is None else str(dt.descr)


def flat_bytes(view):
    """The bytes of a contiguous ndarray view, in memory order, as a 1-D
    uint8 ndarray aliasing it."""
    flat = view.reshape(-1, order="A")
    if not numpy.shares_memory(flat, view) and view.size:
        raise AssertionError("chunk is not contiguous")
    return flat.view(numpy.uint8)


# ---- demo -------------------------------------------------------------------

def cmd_demo(args, out):
    size, ram = args.size, args.ram
    tmp = None
    path = args.store
    if path is None:
        tmp = tempfile.mkdtemp(prefix="outcore-demo-",
                               dir=os.environ.get("TMPDIR") or "/var/tmp")
        path = os.path.join(tmp, "demo.oc")
    try:
        return demo(path, size, ram, out, temporary=tmp is not None)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def demo(path, size, ram, out, temporary):
    import outcore
    db = open_store(path, ram=ram, readonly=False, create=True)
    with db:
        bs = db.ram.pagesize
        n = -(-size // 8)
        n = -(-n // 1024) * 1024                  # whole patterns
        nbytes = n * 8
        out.say("outcore %s demo: a %s array of float64 through a %s RAM "
                "budget (store %s%s)" % (outcore.__version__,
                                         fmt_bytes(nbytes), fmt_bytes(ram),
                                         path, ", temporary" if temporary
                                         else ""))
        name, mark = "demo", {"made_by": "outcore demo"}
        if name in db:
            # the demo's own array from an earlier run is replaced; a
            # user's array of that name is not the demo's to delete
            if db[name].attrs.get("made_by") != mark["made_by"]:
                raise CLIError("%s: holds an array 'demo' that the demo did "
                               "not make: give the demo another store" % (
                                   path,))
            del db[name]
            db.commit()
        A = db.create(name, (n,), numpy.float64, attrs=mark)
        rows = []

        def step(what, t0, nb):
            dt = time.monotonic() - t0
            rss = peak_rss()
            rows.append((what, dt, nb))
            out.say("%-34s %7.2f s  %9s/s   peak RSS %s (budget %s)" % (
                what, dt, fmt_bytes(nb / dt if dt > 0 else 0),
                fmt_bytes(rss), fmt_bytes(ram)))

        # values i % 1024: known mean, min, max, std to check against
        pattern = numpy.arange(1024, dtype=numpy.float64)
        chunk = max(bs, min(ram // 8, 32 << 20))
        every = max(bs, ram // 2)          # dirty bytes between commits
        t0 = time.monotonic()
        dirty = 0
        with out.progress(nbytes, "fill") as pr:
            for sl, v in A.chunks(chunk):
                v.reshape(-1, 1024)[...] = pattern
                dirty += v.nbytes
                pr.update(v.nbytes)
                if dirty >= every:
                    db.commit()
                    dirty = 0
            db.commit()
        step("fill + commit (every %s)" % fmt_bytes(every), t0, nbytes)

        t0 = time.monotonic()
        cnt, mean, m2 = 0, 0.0, 0.0
        lo, hi = math.inf, -math.inf
        with out.progress(nbytes, "reduce") as pr:
            for sl, v in A.chunks(chunk):
                k = v.size
                # sum and sum of squares without temporaries (BLAS dot),
                # combined across chunks (Chan et al.)
                cs = float(v.sum())
                cm = cs / k
                cm2 = max(float(numpy.dot(v, v)) - cs * cm, 0.0)
                lo = min(lo, float(v.min()))
                hi = max(hi, float(v.max()))
                d = cm - mean
                tot = cnt + k
                mean += d * k / tot
                m2 += cm2 + d * d * cnt * k / tot
                cnt = tot
                pr.update(v.nbytes)
        std = math.sqrt(m2 / cnt)
        step("mean/min/max/std (numpy, chunks)", t0, nbytes)
        out.say("  mean %.4f  min %g  max %g  std %.4f   (expected %.4f, 0, "
                "1023, %.4f)" % (mean, lo, hi, std, 511.5,
                                 math.sqrt((1024 ** 2 - 1) / 12)))

        k = min(n, (ram // 4) // 8)               # a slice of a quarter budget
        k = max(1024, k - k % 1024)
        k = min(k, n)
        s0 = n // 2 - k // 2
        s0 -= s0 % 1024
        sl = slice(s0, s0 + k)
        t0 = time.monotonic()
        A[sl] = -1.0
        changed = float(A[s0])
        db.abort()
        back = float(A[s0])
        step("change %s, abort" % fmt_bytes(k * 8), t0, k * 8)
        out.say("  A[%d] was %g after the change, %g after abort" % (
            s0, changed, back))
        if back != float(s0 % 1024):
            raise CLIError("demo: abort did not restore the data "
                           "(A[%d] == %g)" % (s0, back))

        t0 = time.monotonic()
        A[sl] *= 2.0
        db.commit()
        step("change %s again, commit" % fmt_bytes(k * 8), t0, k * 8)
        out.say("  A[%d] is now %g (committed)" % (s0 + 1, float(A[s0 + 1])))

        total = sum(r[1] for r in rows)
        out.say("total %.2f s; peak RSS %s for a %s array with a %s budget"
                % (total, fmt_bytes(peak_rss()), fmt_bytes(nbytes),
                   fmt_bytes(ram)))
        st = db.stats()
        out.debug("store stats: %s" % json.dumps(st))
        del A
    return 0


# ---- ls, info ---------------------------------------------------------------

def cmd_ls(args, out):
    db = open_store(args.store, ram="64MiB", verify=False)
    with db:
        names = db.names()
        rows = [("NAME", "SHAPE", "DTYPE", "ORDER", "STORED", "SIZE")]
        tot_stored = tot_size = 0
        for name in names:
            a = get_array(db, name)
            if args.no_sizes:
                stored = "-"
            else:
                with out.progress(a.nbytes, name) as pr:
                    holes, _ = probe_blocks(db, a, pr)
                sb = (nblocks(a) - len(holes)) * a.fileh.blksize
                tot_stored += sb
                stored = fmt_bytes(sb)
            tot_size += a.nbytes
            rows.append((name, "x".join(map(str, a.shape)) or "()",
                         dtype_text(a.dtype), a.order, stored,
                         fmt_bytes(a.nbytes)))
            del a
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            out.result("  ".join(c.ljust(w) for c, w in zip(r, widths))
                       .rstrip())
        out.say("%d array%s, %s stored, %s logical; data file %s in use" % (
            len(names), "" if len(names) == 1 else "s",
            "-" if args.no_sizes else fmt_bytes(tot_stored),
            fmt_bytes(tot_size), fmt_bytes(db.stats()["data_size"])))
    return 0


def cmd_info(args, out):
    db = open_store(args.store, ram="64MiB", verify=False)
    with db:
        a = get_array(db, args.name)
        bs = a.fileh.blksize
        nb = nblocks(a)
        with out.progress(a.nbytes, args.name) as pr:
            holes, _ = probe_blocks(db, a, pr)
        attrs = a.attrs.asdict()
        lines = [
            ("name", a.name),
            ("store", db.path),
            ("shape", str(a.shape)),
            ("dtype", dtype_text(a.dtype)),
            ("order", a.order),
            ("block size", "%s (%d bytes)" % (fmt_bytes(bs), bs)),
            ("size", "%s (%d bytes)" % (fmt_bytes(a.nbytes), a.nbytes)),
            ("blocks", str(nb)),
            ("blocks stored", "%d (%s)" % (nb - len(holes),
                                           fmt_bytes((nb - len(holes)) * bs))),
            ("holes", "%d%s" % (len(holes), " (blocks %s)" % ranges(holes)
                                if holes else "")),
            ("attrs", json.dumps(attrs, ensure_ascii=False, sort_keys=True)),
        ]
        for k, v in lines:
            out.result("%-14s %s" % (k + ":", v))
        del a
    return 0


def prefault(b, store, name, write=False):
    """Load the pages of b (system calls such as read/write need loaded
    pages); a corrupt block becomes a CLIError naming the array and
    block."""
    import outcore
    msgs = CoreMessages()
    try:
        with msgs:
            outcore.prefault(b, write=write)
    except outcore.StoreError as e:
        if msgs.corrupt:
            raise CLIError("%s: %s" % (store, msgs.corrupt[0])) from None
        raise CLIError("%s: array %r: %s" % (store, name, e)) from None
    finally:
        msgs.close()


# ---- import, export ---------------------------------------------------------

def read_npy_header(f, path):
    try:
        version = _npformat.read_magic(f)
    except ValueError:
        raise CLIError("%s: not a .npy file (for raw binary give --dtype "
                       "and --shape)" % (path,)) from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = _npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = _npformat.read_array_header_2_0(f)
        else:
            hdr = getattr(_npformat, "_read_array_header")
            shape, fortran, dtype = hdr(f, version)
    except ValueError as e:
        raise CLIError("%s: bad .npy header: %s" % (path, e)) from None
    if dtype.hasobject:
        raise CLIError("%s: holds Python objects: cannot be stored" % (path,))
    return shape, ("F" if fortran and len(shape) > 1 else "C"), dtype


def cmd_import(args, out):
    from outcore.store import _is_url
    path = args.file
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CLIError("%s: %s" % (path, e.strerror or e)) from None
    with f:
        fsize = os.fstat(f.fileno()).st_size
        if args.dtype is not None:
            dtype, order = args.dtype, args.order or "C"
            if dtype.itemsize == 0:
                raise CLIError("--dtype %s has no size" % (dtype,))
            shape = args.shape
            if shape is None:
                if fsize % dtype.itemsize:
                    raise CLIError("%s: %d bytes is not a whole number of "
                                   "%s items" % (path, fsize, dtype))
                shape = (fsize // dtype.itemsize,)
        else:
            if args.shape is not None or args.order is not None:
                raise UsageError("--%s is for raw binary: give --dtype too "
                                 "(a .npy file says its shape and order)" % (
                                     "shape" if args.shape is not None
                                     else "order"))
            shape, order, dtype = read_npy_header(f, path)
        want = math.prod(shape) * dtype.itemsize
        have = fsize - f.tell()
        if have < want:
            raise CLIError("%s: %d bytes of data, %d needed for shape %s of "
                           "%s" % (path, have, want, shape, dtype))
        if have > want and args.dtype is not None:
            raise CLIError("%s: %d bytes, more than the %d of shape %s of "
                           "%s" % (path, have, want, shape, dtype))
        name = check_name(args.name)
        # what a failed import made, to be removed: the store, its directory
        made = made_dir = False
        if not _is_url(args.store):
            made_dir = not os.path.exists(args.store)
            made = not os.path.exists(os.path.join(args.store, "index.mdb"))
        db = open_store(args.store, ram=args.ram, readonly=False,
                        create=True)
        done = created = False
        try:
            if name in db:
                raise CLIError("%s: array %r exists (outcore rm first)" % (
                    args.store, name))
            a = db.create(name, shape, dtype, order=order)
            created = True
            copy_in(db, a, f, want, out)
            del a
            done = True
        finally:
            if done:
                db.close()
            else:                  # leave nothing half-imported: of ours
                abandon(db, name if created else None, made and args.store,
                        made_dir)
        out.say("imported %s: %s %s (%s) into %s" % (
            path, "x".join(map(str, shape)) or "()", dtype_text(dtype),
            fmt_bytes(want), name))
    return 0


def abandon(db, name, made, made_dir):
    """After a failed import: take back what it did (abort, and delete
    name, the array it created, if a commit of the import holds it; None:
    it created none, and an array of that name is someone else's), close
    the store, and remove it if the import made it (made: its path;
    made_dir: its directory too) and it holds no array.  SIGINT and
    SIGTERM wait until that is done."""
    import outcore
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        empty = False
        try:
            db.abort()
            if name is not None and name in db:
                del db[name]
                db.commit()
        except outcore.Error:     # a name the store refused, say
            pass
        try:
            empty = not db.names()
        except outcore.Error:
            pass
        db.close()
        if made and empty:
            remove_store(made, made_dir)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def copy_in(db, a, f, nbytes, out):
    """Stream nbytes of f into array a in block-aligned chunks, committing
    every half budget (at least every block) so that the dirty data stays
    within it."""
    if a.nbytes == 0 or not a.shape:
        if not a.shape:          # 0-d
            a[()] = numpy.frombuffer(f.read(a.dtype.itemsize), a.dtype)[0]
        db.commit()
        return
    bs = a.fileh.blksize
    every = max(1, db.ram.budget // 2 // bs)      # dirty blocks at most
    chunk = max(bs, min(db.ram.budget // 8, 32 << 20))
    dirty = 0
    with out.progress(nbytes, "import") as pr:
        for _, v in a.chunks(chunk):
            for b in block_pieces(flat_bytes(v), bs):
                if dirty == every:                 # a piece dirties a block
                    db.commit()
                    dirty = 0
                prefault(b, db.path, a.name, write=True)
                got = f.readinto(b)
                if got != b.size:
                    raise CLIError("%s: file ended early" % (f.name,))
                dirty += 1
                pr.update(b.size)
        db.commit()


def export_target(path, store):
    """Where export writes path: (the file to write, whether it is new
    data for a temporary file to be renamed over it at the end).

    A regular file, or a new one: written to a temporary file next to it
    (a symbolic link's target), renamed over it when complete, so that an
    export that fails leaves the old file.  A device or a FIFO (/dev/null,
    /dev/stdout, a pipe): written in place, as any program writes to it.
    A directory, or a file of the store being read: a CLIError."""
    from outcore.store import _is_url
    if not path:
        raise CLIError("the file name is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CLIError("%s: %s" % (path, e.strerror or e)) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise CLIError("%s: is a directory" % (path,))
    if st is not None and not stat.S_ISREG(st.st_mode):
        return path, False
    real = os.path.realpath(path)
    if not _is_url(store):
        home = os.path.realpath(store)
        inside = os.path.commonpath([home, real]) == home
        if not inside and st is not None:      # a hard link to a store file
            for f in STORE_FILES:
                try:
                    inside = inside or os.path.samefile(
                        path, os.path.join(home, f))
                except OSError:
                    pass
        if inside:
            raise CLIError("%s: is in the store %s: writing it would "
                           "destroy the store" % (path, store))
    return real, True


def cmd_export(args, out):
    db = open_store(args.store, ram=args.ram)
    with db:
        a = get_array(db, args.name)
        dest, renamed = export_target(args.file, args.store)
        tmp = None
        try:
            if renamed:
                fd, tmp = tempfile.mkstemp(
                    dir=os.path.dirname(dest), suffix=".part",
                    prefix="." + os.path.basename(dest) + ".")
                # as open() would make it, or as the file it replaces was
                try:
                    mode = stat.S_IMODE(os.stat(dest).st_mode)
                except OSError:
                    umask = os.umask(0)
                    os.umask(umask)
                    mode = 0o666 & ~umask
                os.fchmod(fd, mode)
                f = os.fdopen(fd, "wb")
            else:
                f = open(dest, "wb")
            with f:
                write_array(f, a, args, out)
            if tmp:
                os.replace(tmp, dest)
                tmp = None
        except OSError as e:
            raise CLIError("%s: %s" % (args.file, e.strerror or e)) from None
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        out.say("exported %s: %s %s (%s) to %s" % (
            args.name, "x".join(map(str, a.shape)) or "()",
            dtype_text(a.dtype), fmt_bytes(a.nbytes), args.file))
        del a
    return 0


def write_array(f, a, args, out):
    """Write array a to the open file f: a .npy header (unless --raw),
    then its bytes in its order, a block at a time."""
    if not args.raw:
        d = {"descr": _npformat.dtype_to_descr(a.dtype),
             "fortran_order": a.order == "F" and a.ndim > 1,
             "shape": a.shape}
        # the oldest version that can say it (3.0, for UTF-8 field names,
        # warns that old NumPy cannot read it: that is what it is for)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            _npformat._write_array_header(f, d, None)
    if a.ndim == 0:
        f.write(numpy.asarray(a[()], a.dtype).tobytes())
    elif a.nbytes:
        with out.progress(a.nbytes, "export") as pr:
            for _, v in a.chunks():
                for b in block_pieces(flat_bytes(v), a.fileh.blksize):
                    prefault(b, args.store, args.name)
                    f.write(b)
                    pr.update(b.size)


# ---- rm, check --------------------------------------------------------------

def cmd_rm(args, out):
    db = open_store(args.store, ram="64MiB", readonly=False)
    with db:
        for name in args.name:
            if name not in db:
                get_array(db, name)       # the error, naming the arrays
            del db[name]
        db.commit()
        for name in args.name:
            out.say("removed %s" % (name,))
    return 0


def cmd_check(args, out):
    """Every array's metadata, every block: loaded in a fresh process
    (checksums are verified on a block's first use in a process)."""
    import outcore
    db = open_store(args.store, ram=args.ram, verify=True)
    problems = []
    with db:
        try:
            names = db.names()
        except outcore.Error as e:
            raise CLIError("%s: cannot list the arrays: %s" % (
                args.store, e)) from None
        nbad = total = 0
        for name in names:
            try:
                a = db[name]
                a.attrs.asdict()
            except (outcore.Error, ValueError, TypeError) as e:
                problems.append("array %r: unreadable metadata: %s" % (
                    name, e))
                continue
            with out.progress(a.nbytes, name) as pr:
                holes, corrupt = probe_blocks(db, a, pr)
            for blk, e in corrupt:
                # "FileH.load(0, 1): array 'x' block 0: why": the error
                # names the array and block when the store did
                msg = str(e).split(": ", 1)[-1]
                if not msg.startswith("array "):
                    msg = "array %r block %d: %s" % (name, blk, msg)
                problems.append(msg)
            nb = nblocks(a)
            nbad += len(corrupt)
            total += nb - len(holes)
            out.debug("%s: %d blocks, %d stored, %d corrupt" % (
                name, nb, nb - len(holes), len(corrupt)))
            del a
    for p in problems:
        print("outcore: %s" % oneline("%s: %s" % (args.store, p)),
              file=sys.stderr)
    if problems:
        print("outcore: %s: %d problem%s found" % (
            args.store, len(problems), "" if len(problems) == 1 else "s"),
            file=sys.stderr)
        return 1
    out.say("%s: ok (%d arrays, %d stored blocks verified)" % (
        args.store, len(names), total))
    return 0


# ---- main -------------------------------------------------------------------

def main(argv=None):
    """Run the outcore command with argv (default sys.argv[1:]); returns
    the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "-v" in argv or "--verbose" in argv
    # bin/outcore ignores SIGINT's default while Python starts: here it
    # becomes KeyboardInterrupt again, and SIGTERM the same, so that the
    # commands clean up after themselves (in the main thread only: a
    # caller's thread keeps its caller's handlers)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        pass
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            import outcore
            print("outcore %s" % outcore.__version__)
            return 0
        if not args.command:
            parser.print_help(sys.stderr)
            return 2
        out = Out(quiet=getattr(args, "quiet", False),
                  verbose=getattr(args, "verbose", False))
        rc = args.func(args, out)
        out.debug("peak RSS %d bytes" % peak_rss())
        return rc
    except UsageError as e:
        print("%s: %s" % (PROG, oneline(e)), file=sys.stderr)
        return 2
    except Terminated:
        print("%s: terminated" % PROG, file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("%s: interrupted" % PROG, file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        try:
            sys.stdout = None
        except Exception:
            pass
        return 1
    except SystemExit:
        raise
    except BaseException as e:          # noqa: B902: one line, never a trace
        if verbose:
            import traceback
            traceback.print_exc()
        print("%s: %s" % (PROG, oneline(describe(e))), file=sys.stderr)
        return 1


def describe(e):
    """What an exception says (oneline() makes it one line)."""
    if isinstance(e, CLIError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        where = e.filename
        return "%s: %s" % (where, e.strerror) if where else e.strerror
    if isinstance(e, MemoryError):
        return "out of memory: %s (try a smaller --ram or size)" % (e,)
    return str(e) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
