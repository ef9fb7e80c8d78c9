#!/bin/sh
# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
# outcore: install the Debian packages that building and testing need.
#
# Run as root on Debian 12.  Idempotent and quiet when everything is there:
# it asks dpkg first and runs `apt-get update` + `apt-get install` only for
# what is missing.  As a non-root user with something missing it prints the
# command to run and exits 1.
#
# python3-dask and python3-distributed: the test that runs a Dask
# LocalCluster over a PostgreSQL store.
#
# `deps.sh bench` also installs what the benchmarks compare against
# (python3-zarr, python3-h5py).
#
# The sanitizer runtimes (libasan8, libubsan1, libtsan2) come with gcc-12
# through libgcc-12-dev; they are listed anyway so that `-fsanitize=thread`
# and `-fsanitize=address,undefined` are known to work whatever pulled gcc in.
set -eu

PACKAGES="
build-essential gcc make pkg-config git
libasan8 libubsan1 libtsan2
valgrind
python3 python3-dev python3-numpy python3-pytest python3-hypothesis
python3-setuptools python3-psutil python3-dask python3-distributed
liblmdb-dev libxxhash-dev libpq-dev postgresql
"
if [ "${1:-}" = bench ]; then
	PACKAGES="$PACKAGES python3-zarr python3-h5py"
fi

missing=
for p in $PACKAGES; do
	st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
	case "$st" in
	ii*) ;;
	*) missing="$missing $p" ;;
	esac
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing Debian packages:$missing" >&2
	echo "deps.sh: as root, run: apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi

echo "deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # word splitting of the list is intended
apt-get install -y -q --no-install-recommends $missing
