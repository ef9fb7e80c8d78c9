#!/usr/bin/env bash
# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
# outcore: run the C test programs of one build mode.
#
#   tests/run-c-tests.sh [-j N] MODE [NAME...]
#   tests/run-c-tests.sh summary
#
# MODE is plain, asan, valgrind or tsan.  Which programs run comes from the
# sources, not from what happens to lie in build/:
#   plain     build/tests/plain/test_* and probe_*  (tests/test_*.c, probe_*.c)
#   asan      build/tests/asan/test_*               (ASan + UBSan)
#   valgrind  build/tests/plain/test_* under memcheck, OC_TEST_SCALE=16
#   tsan      build/tests/tsan/test_* whose source holds /* TSAN */
# NAMEs (e.g. test_pagemap) restrict the run to those programs.
#
# Markers in a test's source:
#   /* TSAN */                 also build and run it under ThreadSanitizer
#   /* NOVALGRIND: reason */   skip it under valgrind, printing the reason
#
# A program passes when it exits 0 and (for test_*) printed its closing
# "N passed, N failed" line with no failure; exit 77 is a skip (its "SKIP:"
# line is printed); anything else fails: another exit code, a signal, a
# timeout (300 s, 900 s under valgrind, or $OC_TEST_TIMEOUT seconds), a
# sanitizer or valgrind error.
# Output: a header line per program, its output (the last 40 lines if it
# failed) and a result line; then a summary and the closing line
# "N passed, N failed" over the CHECK lines of all programs, where each
# failing program that reported no failed check counts as one failure.
# The counts are also written to build/tests/MODE.summary for `summary`,
# which adds them up over the modes (and pytest's) for `make test`.
#
# Exit status: 0 if nothing failed, 1 otherwise, 2 on a usage error.

set -u

self=$(realpath "$0")
cd "$(dirname "$self")/.." || exit 2

BUILD=build
OUT=$BUILD/tests
TAIL_LINES=40

usage() {
	echo "usage: $0 [-j N] plain|asan|valgrind|tsan [NAME...]" >&2
	echo "       $0 summary" >&2
	exit 2
}

# ---- one program (run by xargs, possibly in parallel) ----------------------

# run_one MODE NAME: run the program, leave RES/NAME.res ("STATUS NPASS NFAIL
# why") and print its block of output in one piece.
run_one() {
	local mode=$1 name=$2
	local res=$RESDIR/$name.res log=$RESDIR/$name.log blk=$RESDIR/$name.blk
	local bin src=tests/$name.c limit=${OC_TEST_TIMEOUT:-300} rc=0 status why='' np=0 nf=0 line
	local -a pre=()

	case $mode in
	plain | valgrind) bin=$OUT/plain/$name ;;
	*) bin=$OUT/$mode/$name ;;
	esac
	if [ "$mode" = valgrind ]; then
		limit=${OC_TEST_TIMEOUT:-900}
		# Precise register state at every memory access: outcore's
		# SIGSEGV handler returns to the faulting instruction, which
		# valgrind can only restart with this.
		pre=(valgrind --error-exitcode=99 --leak-check=full
		     --errors-for-leak-kinds=definite --track-fds=no -q
		     --vex-iropt-register-updates=allregs-at-mem-access)
	fi

	local t0 t1
	t0=$(date +%s%N)
	: >"$log"
	if [ "$mode" = valgrind ] && why=$(novalgrind_reason "$src"); then
		status=SKIP
		why="NOVALGRIND: $why"
	elif [ ! -x "$bin" ]; then
		status=FAIL
		why="$bin not built"
	else
		# The braces keep bash's own "Segmentation fault" notice quiet.
		{ (ulimit -c 0; exec timeout -k 10 "$limit" "${pre[@]}" "./$bin") \
			>"$log" 2>&1 </dev/null; } 2>/dev/null
		rc=$?
		line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
		if [ -n "$line" ]; then
			np=${line%% passed*}
			nf=${line#*passed, }
			nf=${nf%% failed*}
		fi
		if [ $rc -eq 0 ] && [ "$nf" -eq 0 ]; then
			status=PASS
			if [ -z "$line" ] && [[ $name == test_* ]]; then
				status=FAIL
				why="exit 0 without the closing 'N passed, N failed' line"
			fi
		elif [ $rc -eq 77 ] && [ "$nf" -eq 0 ]; then
			status=SKIP
			why=$(grep -m 1 '^SKIP' "$log")
			[ -n "$why" ] || why="exit 77 (no SKIP: line printed)"
		else
			status=FAIL
			if [ $rc -eq 124 ]; then
				why="timed out after ${limit}s"
			elif [ $rc -eq 99 ] && [ "$mode" = valgrind ]; then
				why="valgrind reported errors"
			elif [ $rc -gt 128 ]; then
				why="killed by signal $((rc - 128)) (SIG$(kill -l $((rc - 128)) 2>/dev/null))"
			elif [ $rc -eq 0 ] || [ $rc -eq 77 ]; then
				why="exit $rc but $nf checks failed"
			else
				why="exit $rc"
			fi
			# Name the sanitizer report, if any, in the result line.
			line=$(grep -m 1 -E '^SUMMARY: [A-Za-z]+Sanitizer|: runtime error: ' "$log")
			[ -n "$line" ] && why="$why: ${line#SUMMARY: }"
		fi
	fi
	t1=$(date +%s%N)
	local secs
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

	echo "$status $np $nf $why" >"$res"
	{
		case $status in
		PASS)
			echo "=== $mode/$name"
			cat "$log"
			echo "=== $mode/$name: PASS (${secs}s)"
			;;
		SKIP)
			echo "=== $mode/$name: SKIP: ${why#SKIP: }"
			;;
		FAIL)
			echo "=== $mode/$name (last $TAIL_LINES lines of output)"
			tail -n "$TAIL_LINES" "$log"
			echo "=== $mode/$name: FAIL: $why (${secs}s)"
			;;
		esac
	} >"$blk"
	flock "$RESDIR/.lock" cat "$blk"
	return 0
}

# The reason of a /* NOVALGRIND: reason */ marker; fails if there is none.
novalgrind_reason() {
	local r
	r=$(sed -n 's|.*/\*[[:space:]]*NOVALGRIND:[[:space:]]*\(.*[^[:space:]]\)[[:space:]]*\*/.*|\1|p' "$1" 2>/dev/null | head -n 1)
	[ -n "$r" ] && echo "$r"
}

# ---- summary over the modes, for make test ---------------------------------

summary() {
	local f mode np nf nprog tp=0 tf=0
	echo "==== summary"
	for mode in plain asan valgrind tsan; do
		f=$OUT/$mode.summary
		[ -f "$f" ] || continue
		read -r np nf nprog <"$f"
		printf '%-9s %s passed, %s failed (%s programs)\n' "$mode:" "$np" "$nf" "$nprog"
		tp=$((tp + np))
		tf=$((tf + nf))
	done
	if [ -f "$OUT/python.rc" ]; then
		# pytest -q's last line: "3 failed, 40 passed, 1 skipped in 2.1s"
		local last rc
		last=$(grep -E '^[0-9]+ [a-z]+.* in [0-9.]+s' "$OUT/python.log" | tail -n 1)
		read -r rc <"$OUT/python.rc"
		np=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || echo 0)
		nf=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$last" | awk '{ s += $1 } END { print s + 0 }')
		[ "$rc" -ne 0 ] && [ "$nf" -eq 0 ] && nf=1
		printf '%-9s %s passed, %s failed (pytest exit %s)\n' "python:" "$np" "$nf" "$rc"
		tp=$((tp + np))
		tf=$((tf + nf))
	fi
	echo "$tp passed, $tf failed"
	[ "$tf" -eq 0 ]
}

# ---- main ------------------------------------------------------------------

if [ "${1-}" = --one ]; then
	run_one "$2" "$3"
	exit 0
fi

jobs=1
while [ $# -gt 0 ]; do
	case $1 in
	-j) [ $# -ge 2 ] || usage; jobs=$2; shift 2 ;;
	-j*) jobs=${1#-j}; shift ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || usage
mode=$1
shift

if [ "$mode" = summary ]; then
	summary
	exit
fi

shopt -s nullglob
names=()
case $mode in
plain)
	for s in tests/test_*.c tests/probe_*.c; do names+=("$(basename "$s" .c)"); done
	;;
asan | valgrind)
	for s in tests/test_*.c; do names+=("$(basename "$s" .c)"); done
	;;
tsan)
	for s in tests/test_*.c; do
		grep -qE '/\*[[:space:]]*TSAN[[:space:]]*\*/' "$s" && names+=("$(basename "$s" .c)")
	done
	;;
*) usage ;;
esac
if [ $# -gt 0 ]; then
	names=("$@")
fi

case $mode in
asan)
	export ASAN_OPTIONS=${ASAN_OPTIONS-allow_user_segv_handler=1:detect_leaks=1:handle_segv=0:abort_on_error=0}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS-print_stacktrace=1:halt_on_error=1}
	;;
valgrind)
	export OC_TEST_SCALE=16
	;;
tsan)
	# history_size=7: TSan keeps enough of each thread's past to restore
	# the stack of an old write, so that the suppressions of test_thread
	# (mmap over a page another thread touched earlier) can match it; with
	# the default a report with "failed to restore the stack" came about
	# once in 12 runs and could not be suppressed.
	export TSAN_OPTIONS=${TSAN_OPTIONS-report_signal_unsafe=0:halt_on_error=1:handle_segv=0:history_size=7}
	;;
esac

RESDIR=$OUT/results/$mode
export RESDIR OUT BUILD TAIL_LINES
rm -rf "$RESDIR"
mkdir -p "$RESDIR"

echo "==== $mode: ${#names[@]} programs, $jobs at a time"
if [ ${#names[@]} -gt 0 ]; then
	printf '%s\n' "${names[@]}" | xargs -P "$jobs" -I{} bash "$self" --one "$mode" {}
fi

# Add up the results.
tp=0 tf=0 nok=0 nskip=0 nfail=0
fails=() skips=()
for name in "${names[@]}"; do
	if [ -f "$RESDIR/$name.res" ]; then
		read -r status np nf why <"$RESDIR/$name.res"
	else
		status=FAIL np=0 nf=0 why="no result (driver error)"
	fi
	tp=$((tp + np))
	tf=$((tf + nf))
	case $status in
	PASS) nok=$((nok + 1)) ;;
	SKIP) nskip=$((nskip + 1)); skips+=("$name: ${why#SKIP: }") ;;
	*)
		nfail=$((nfail + 1)); fails+=("$name: $why")
		[ "$nf" -eq 0 ] && tf=$((tf + 1))
		;;
	esac
done

echo "==== $mode summary: ${#names[@]} programs: $nok ok, $nskip skipped, $nfail failed"
for s in "${skips[@]}"; do echo "  SKIP $s"; done
for s in "${fails[@]}"; do echo "  FAIL $s"; done
echo "$tp $tf ${#names[@]}" >"$OUT/$mode.summary"
echo "$tp passed, $tf failed"
[ "$tf" -eq 0 ]
