# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Build outcore: the pure-Python package plus the extension outcore._core.

The extension is compiled from binding/_core.c together with every src/*.c
file of the C core (no separate liboutcore to install), with the flags the
Makefile uses for the library.  Metadata lives in pyproject.toml.

    /usr/bin/python3 setup.py build_ext --inplace   # build in place (make)
    WERROR=1 ... build_ext --inplace                # warnings are errors
    pip install .                                   # install (offline)
"""
import glob
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    """The library version, read from the Makefile (VERSION = x.y.z)."""
    try:
        with open(os.path.join(HERE, "Makefile")) as f:
            for line in f:
                if line.split("=")[0].strip() == "VERSION":
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "0.1.0"


VERSION = _version()
# WERROR=1 (as the Makefile and CI set it) turns warnings into errors.
WERROR = ["-Werror"] if os.environ.get("WERROR") == "1" else []
SOURCES = ["binding/_core.c"] + sorted(
    os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "src", "*.c")))

core = Extension(
    "outcore._core",
    sources=SOURCES,
    include_dirs=["include", "src", "/usr/include/postgresql"],
    define_macros=[("_GNU_SOURCE", None),
                   ("OUTCORE_VERSION", '"%s"' % VERSION)],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden",
                        "-Wno-missing-field-initializers"] + WERROR,
    libraries=["pthread", "lmdb", "xxhash", "pq"],
    depends=sorted(glob.glob(os.path.join(HERE, "include", "outcore", "*.h"))
                   + glob.glob(os.path.join(HERE, "src", "*.h"))),
)

setup(version=VERSION, ext_modules=[core])
