#!/bin/sh
# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
#
# with-hugepages.sh N CMD...: run CMD with at least N free 2 MiB huge pages
# reserved, then give back what this script reserved.  Used by `make bench`
# so that the core benchmark's huge-page section (h) runs on a fresh
# machine.  Without root, or when the kernel cannot find the memory, CMD
# runs anyway (the benchmark then says why it skips that section).
set -u
want=$1
shift
f=/proc/sys/vm/nr_hugepages
free_now=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
orig=$(cat "$f" 2>/dev/null || echo "")
raised=
if [ -n "$orig" ] && [ "${free_now:-0}" -lt "$want" ] && [ -w "$f" ]; then
	echo $((orig + want - free_now)) > "$f" 2>/dev/null && raised=1
	echo "with-hugepages: reserved huge pages for the run ($(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo) free)"
fi
"$@"
st=$?
if [ -n "$raised" ]; then
	echo "$orig" > "$f"
fi
exit $st
