# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
# outcore: build, test, install.
#
#   make               liboutcore.a, liboutcore.so.0, outcore.pc, examples
#   make test          deps, build everything, C tests plain / ASan+UBSan /
#                      valgrind / TSan, then the Python tests (exit != 0 on
#                      any failure); WERROR=1 adds -Werror (CI sets it)
#   make test-plain    one mode only (also test-asan, test-valgrind, test-tsan)
#   make demo          build and run `outcore demo` (bin/outcore)
#   make bench         build and run every bench/bench_*.c and the Python
#                      benchmarks (bench-pg: PostgreSQL store vs bulk COPY)
#   make install       PREFIX=/usr/local, DESTDIR= for staging
#   make clean | dist
#
# Layout of build/: obj/, obj-asan/, obj-tsan/ (library objects per flavour),
# tests/{plain,asan,tsan}/ (test programs), examples/, bench/.
#
# C tests: each tests/test_*.c is a standalone program linked statically with
# the library objects, so it can reach the _oc_* internals of src/internal.h.
# It is built plain and with ASan+UBSan; also with TSan when its source holds
# the marker comment /* TSAN */.  tests/probe_*.c are built and run plain only.
# tests/run-c-tests.sh runs them; see there for the markers it reads.

VERSION   = 0.1.0
SOVERSION = 0

CC       ?= cc
AR       ?= ar
PYTHON   ?= /usr/bin/python3
# Set to ':' to skip the package check (scripts/deps.sh needs root to install).
DEPS     ?= sh scripts/deps.sh

PREFIX       ?= /usr/local
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR      ?=

# libpq-fe.h (Debian: /usr/include/postgresql).
PG_INCLUDEDIR ?= $(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)

# CFLAGS is the user's knob; what the code needs is in OC_CFLAGS.
CFLAGS   ?= -O2 -g
LDFLAGS  ?=
# Libraries liboutcore needs (storage engines add theirs here: -llmdb ...).
LIBS      = -lpthread -llmdb -lxxhash -lpq

WARNINGS  = -Wall -Wextra $(if $(filter 1,$(WERROR)),-Werror)
OC_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARNINGS) -fPIC -fvisibility=hidden \
            -Iinclude -I$(PG_INCLUDEDIR) -DOUTCORE_VERSION='"$(VERSION)"'
ALL_CFLAGS  = $(OC_CFLAGS) $(CPPFLAGS) $(CFLAGS)
TEST_CFLAGS = $(ALL_CFLAGS) -Isrc -Itests
ASAN_FLAGS  = -fsanitize=address,undefined -fno-omit-frame-pointer
TSAN_FLAGS  = -fsanitize=thread

# Tests: modes run by `make test`, and how many test programs run at once.
TEST_MODES ?= plain asan valgrind tsan
TEST_JOBS  ?= 2

SHELL := /bin/bash
.DELETE_ON_ERROR:

# ---- sources ---------------------------------------------------------------

SRCS      := $(wildcard src/*.c)
OBJS      := $(SRCS:src/%.c=build/obj/%.o)
ASAN_OBJS := $(SRCS:src/%.c=build/obj-asan/%.o)
TSAN_OBJS := $(SRCS:src/%.c=build/obj-tsan/%.o)

TEST_SRCS := $(wildcard tests/test_*.c)
TESTS     := $(TEST_SRCS:tests/%.c=%)
PROBES    := $(patsubst tests/%.c,%,$(wildcard tests/probe_*.c))
# grep gets /dev/null so that it never reads stdin when there are no tests.
TSAN_TESTS := $(patsubst tests/%.c,%,$(shell grep -lE '/\*[[:space:]]*TSAN[[:space:]]*\*/' $(TEST_SRCS) /dev/null))

# Only reached through pattern rules: keep make from deleting them.
.SECONDARY: $(ASAN_OBJS) $(TSAN_OBJS)

PLAIN_BINS := $(addprefix build/tests/plain/,$(TESTS) $(PROBES))
ASAN_BINS  := $(addprefix build/tests/asan/,$(TESTS))
TSAN_BINS  := $(addprefix build/tests/tsan/,$(TSAN_TESTS))

EXAMPLES   := $(patsubst examples/%.c,build/examples/%,$(wildcard examples/*.c))
BENCHES    := $(patsubst bench/%.c,build/bench/%,$(wildcard bench/bench_*.c))

LIB_A  = build/liboutcore.a
LIB_SO = build/liboutcore.so.$(SOVERSION)
PC     = build/outcore.pc

# ---- library ---------------------------------------------------------------

.PHONY: all lib
all: lib $(PC) $(EXAMPLES) $(PYEXT)
lib: $(LIB_A) $(LIB_SO) build/liboutcore.so

build/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

build/obj-asan/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) -MMD -MP -c -o $@ $<

build/obj-tsan/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(TSAN_FLAGS) -MMD -MP -c -o $@ $<

$(LIB_A): $(OBJS)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

$(LIB_SO): $(OBJS) src/liboutcore.map
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,liboutcore.so.$(SOVERSION) \
		-Wl,--version-script=src/liboutcore.map -Wl,-z,defs \
		$(CFLAGS) $(LDFLAGS) -o $@ $(OBJS) $(LIBS)

build/liboutcore.so: $(LIB_SO)
	ln -sf $(notdir $<) $@

# Remade every time, since it records PREFIX which `make install PREFIX=...`
# may change; replaced only when its text changes.
.PHONY: $(PC)
$(PC): outcore.pc.in
	@mkdir -p $(@D)
	@sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS@|$(LIBS)|g' $< > $@.tmp
	@if cmp -s $@.tmp $@; then rm $@.tmp; else mv $@.tmp $@; echo "GEN $@ (PREFIX=$(PREFIX))"; fi

# The shared library exports oc_* and nothing else.
.PHONY: check-exports
check-exports: $(LIB_SO)
	@bad=$$(nm -D --defined-only $(LIB_SO) | awk '$$3 !~ /^oc_/ && $$3 !~ /^OUTCORE_/ {print $$3}'); \
	if [ -n "$$bad" ]; then echo "check-exports: FAIL: exported non-oc_ symbols:" $$bad; exit 1; fi; \
	echo "check-exports: ok ($$(nm -D --defined-only $(LIB_SO) | grep -c ' oc_') oc_* symbols)"

# ---- test, example and bench programs --------------------------------------
# One compile+link step each; -MF keeps the header dependencies.

build/tests/plain/%: tests/%.c $(OBJS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -MMD -MP -MT $@ -MF $@.d -o $@ $< $(OBJS) $(LDFLAGS) $(LIBS)

build/tests/asan/%: tests/%.c $(ASAN_OBJS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $(ASAN_FLAGS) -MMD -MP -MT $@ -MF $@.d -o $@ $< $(ASAN_OBJS) $(LDFLAGS) $(LIBS)

build/tests/tsan/%: tests/%.c $(TSAN_OBJS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) $(TSAN_FLAGS) -MMD -MP -MT $@ -MF $@.d -o $@ $< $(TSAN_OBJS) $(LDFLAGS) $(LIBS)

# Examples use the public API only, through the shared library: this also
# checks that the export list is complete.
build/examples/%: examples/%.c $(LIB_SO) build/liboutcore.so
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -MT $@ -MF $@.d -o $@ $< \
		-Lbuild -Wl,-rpath,'$$ORIGIN/..' $(LDFLAGS) -loutcore $(LIBS)

build/bench/%: bench/%.c $(OBJS)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -O2 -MMD -MP -MT $@ -MF $@.d -o $@ $< $(OBJS) $(LDFLAGS) $(LIBS)

# bench/bench_store.py's floor for a verified scan: a helper program (on
# the library's objects for its XXH3, by the rule above), not a benchmark
# that bench-c runs (it is not a bench_*).
SCAN_FLOOR = build/bench/scan_floor

# bench/bench_pg.py's baseline, the server's bulk COPY through libpq: a
# helper program (libpq only), not a benchmark that bench-c runs.
PG_COPY = build/bench/pg_copy
$(PG_COPY): bench/pg_copy.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -D_GNU_SOURCE $(WARNINGS) -I$(PG_INCLUDEDIR) $(CPPFLAGS) $(CFLAGS) -O2 \
		-MMD -MP -MT $@ -MF $@.d -o $@ $< $(LDFLAGS) -lpq

.PHONY: tests tests-plain tests-asan tests-tsan examples benches
tests: tests-plain tests-asan tests-tsan
tests-plain: $(PLAIN_BINS)
tests-asan: $(ASAN_BINS)
tests-tsan: $(TSAN_BINS)
examples: $(EXAMPLES)
benches: $(BENCHES)

# ---- make test -------------------------------------------------------------
# Runs every mode even after a failure, then prints the totals; the exit
# status is non-zero if anything failed.

.PHONY: deps test test-build test-plain test-asan test-valgrind test-tsan
deps:
	@$(DEPS)

test-build: all tests benches $(SCAN_FLOOR)

test:
	@$(DEPS)
	@$(MAKE) --no-print-directory test-build
	@rm -f build/tests/*.summary build/tests/python.log build/tests/python.rc
	@st=0; \
	$(MAKE) --no-print-directory check-exports || st=1; \
	for m in $(TEST_MODES); do \
		bash tests/run-c-tests.sh -j $(TEST_JOBS) $$m || st=1; \
	done; \
	$(MAKE) --no-print-directory pytest || st=1; \
	bash tests/run-c-tests.sh summary || st=1; \
	exit $$st

test-plain test-valgrind: tests-plain
test-asan: tests-asan
test-tsan: tests-tsan
test-plain test-asan test-valgrind test-tsan:
	bash tests/run-c-tests.sh -j $(TEST_JOBS) $(@:test-%=%)

# ---- Python ----------------------------------------------------------------
# PYEXT: the CPython extension outcore._core, built in place by setuptools
# (setup.py compiles binding/_core.c with every src/*.c), so that
# `import outcore` works from the repository root after `make`.
PYEXT_SUFFIX := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)
PYEXT      = outcore/_core$(PYEXT_SUFFIX)
$(PYEXT): binding/_core.c $(SRCS) $(wildcard src/*.h include/outcore/*.h) setup.py pyproject.toml
	WERROR=$(WERROR) $(PYTHON) setup.py -q build_ext --inplace --force
	@touch $@

# `make` builds the extension too (PYEXT is only known from here on).
all: $(PYEXT)

PYTEST_DIR = tests/python

.PHONY: pyext pytest
pyext: $(PYEXT)

pytest: $(PYEXT)
	@mkdir -p build/tests
	@if [ ! -d $(PYTEST_DIR) ] || [ -z "$(PYEXT)" ]; then \
		echo "pytest: skipped: no $(PYTEST_DIR)/ or no extension yet (PYEXT)"; \
	else \
		$(PYTHON) -m pytest -q $(PYTEST_DIR) 2>&1 | tee build/tests/python.log; \
		rc=$${PIPESTATUS[0]}; echo $$rc > build/tests/python.rc; exit $$rc; \
	fi

# ---- demo, bench -----------------------------------------------------------

.PHONY: demo bench bench-c bench-python bench-pg
demo:
	@$(DEPS)
	@$(MAKE) --no-print-directory all pyext
	$(PYTHON) bin/outcore demo

bench:
	@$(DEPS) bench
	@$(MAKE) --no-print-directory all benches $(PG_COPY) $(SCAN_FLOOR)
	@$(MAKE) --no-print-directory bench-c bench-python bench-pg

# The core benchmark's huge-page section needs 600 free huge pages: reserved
# for the run (as root) and given back after it.
bench-c: $(BENCHES)
	@st=0; for b in $(BENCHES); do echo "=== $$b"; \
		sh scripts/with-hugepages.sh 640 $$b || { echo "=== $$b: FAIL"; st=1; }; \
	done; exit $$st

bench-python: $(PYEXT) $(SCAN_FLOOR)
	$(PYTHON) bench/bench_memmap.py
	$(PYTHON) bench/bench_store.py

# The PostgreSQL store against the LMDB store and the server's bulk COPY
# (starts its own server: tests/python/pg_server.py).
bench-pg: $(PYEXT) $(PG_COPY)
	$(PYTHON) bench/bench_pg.py

# ---- install, dist, clean --------------------------------------------------

.PHONY: install uninstall dist clean
# The Python package goes where $(PYTHON) looks for site packages under
# $(PREFIX) (Debian: $(PREFIX)/lib/python3.X/dist-packages), and the command
# to $(PREFIX)/bin/outcore.
PYSITE ?= $(shell $(PYTHON) -c 'import sys; print("$(PREFIX)/lib/python%d.%d/dist-packages" % sys.version_info[:2])')

install: lib $(PC) $(PYEXT)
	install -d $(DESTDIR)$(PYSITE)/outcore $(DESTDIR)$(PREFIX)/bin
	install -m 644 outcore/*.py outcore/*.pyi outcore/py.typed $(DESTDIR)$(PYSITE)/outcore/
	install -m 755 $(PYEXT) $(DESTDIR)$(PYSITE)/outcore/
	printf '#!%s\nfrom outcore.cli import main\nraise SystemExit(main())\n' '$(PYTHON)' \
		> $(DESTDIR)$(PREFIX)/bin/outcore
	chmod 755 $(DESTDIR)$(PREFIX)/bin/outcore
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/outcore $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/liboutcore.so.$(VERSION)
	ln -sf liboutcore.so.$(VERSION) $(DESTDIR)$(LIBDIR)/liboutcore.so.$(SOVERSION)
	ln -sf liboutcore.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/liboutcore.so
	install -m 644 include/outcore/*.h $(DESTDIR)$(INCLUDEDIR)/outcore/
	install -m 644 $(PC) $(DESTDIR)$(PKGCONFIGDIR)/outcore.pc

uninstall:
	rm -rf $(DESTDIR)$(PYSITE)/outcore $(DESTDIR)$(PREFIX)/bin/outcore
	rm -f $(DESTDIR)$(LIBDIR)/liboutcore.a $(DESTDIR)$(LIBDIR)/liboutcore.so*
	rm -rf $(DESTDIR)$(INCLUDEDIR)/outcore
	rm -f $(DESTDIR)$(PKGCONFIGDIR)/outcore.pc

dist:
	@mkdir -p build
	git archive --format=tar.gz --prefix=outcore-$(VERSION)/ \
		-o build/outcore-$(VERSION).tar.gz HEAD
	@echo "dist: build/outcore-$(VERSION).tar.gz"

clean:
	rm -rf build outcore/_core*.so

-include $(OBJS:.o=.d) $(ASAN_OBJS:.o=.d) $(TSAN_OBJS:.o=.d)
-include $(addsuffix .d,$(PLAIN_BINS) $(ASAN_BINS) $(TSAN_BINS) $(EXAMPLES) $(BENCHES) $(PG_COPY) $(SCAN_FLOOR))
