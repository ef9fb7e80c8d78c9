# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""outcore's PEP 517 build backend: setuptools.build_meta, offline.

pip builds in an isolated environment into which it would download the
build requirements; this project has no network access to a package index,
so it declares none.  If setuptools is not importable in the isolated
environment, the site-packages directories of the interpreter running the
build (where Debian's python3-setuptools and python3-wheel live) are put
back on sys.path.  Everything else is setuptools.build_meta unchanged,
except that the hooks asking for extra requirements answer "none".
"""
import sys

try:
    import setuptools.build_meta as _sbm
except ImportError:  # isolated build environment without setuptools
    import site

    for _d in site.getsitepackages() + ["/usr/lib/python3/dist-packages"]:
        if _d not in sys.path:
            sys.path.append(_d)
    import setuptools.build_meta as _sbm

build_wheel = _sbm.build_wheel
build_sdist = _sbm.build_sdist
prepare_metadata_for_build_wheel = _sbm.prepare_metadata_for_build_wheel
if hasattr(_sbm, "build_editable"):
    build_editable = _sbm.build_editable
    prepare_metadata_for_build_editable = _sbm.prepare_metadata_for_build_editable


def get_requires_for_build_wheel(config_settings=None):
    """No extra requirements: setuptools and wheel come with the system."""
    return []


def get_requires_for_build_sdist(config_settings=None):
    """No extra requirements."""
    return []


def get_requires_for_build_editable(config_settings=None):
    """No extra requirements."""
    return []
