/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * ram.h: the memory outcore pages live in, its budget and its reclaim.
 *
 * A RAM hands out pages of one power-of-two size (at least 4 KiB, default
 * 2 MiB) carved from one shared-memory file: a memfd (default), a hugetlb
 * memfd (2 MiB huge pages; needs vm.nr_hugepages reserved), or an unlinked
 * file in a tmpfs directory.  Because pages are file pages, one page can be
 * mapped at several addresses at once: every mapping of a file handle that
 * shows a block shows the same memory.
 *
 * Blocks reach a page through the file: pwrite after loadblk (or the
 * file's loadblk_fd op writes it there itself), pread before storeblk, so
 * the process's RSS counts only what its mappings show.  hugetlb memory,
 * which has no pwrite, is instead kept mapped read-write in a private
 * "window" of the RAM's own.  A page that is freed is hole-punched out of
 * the file at once, so RSS and Shmem really shrink.
 *
 * Budget.  A RAM has a byte budget: the most memory its handles may keep
 * resident, counting pages in RAM and blocks mapped from a file's base layer
 * (see file.h).  When a page is needed and the budget is reached, the least
 * recently faulted clean page of any handle of this RAM is reclaimed:
 * unmapped from every mapping and returned to the OS; touching it again
 * reloads it.  (A page reclaimed to make room for a read fault's load
 * gives the new block its memory, and, when it was mapped once, its page
 * tables too: they are moved to the new address with mremap rather than
 * torn down and filled again, which on small page tables costs more than
 * the copy itself; counted in oc_ram_stats_t.table_moves.)  Dirty pages are never dropped: when only dirty pages are
 * left the budget is exceeded rather than losing data; each such page
 * allocation is counted (oc_ram_stats_t.overbudget) and the first one per
 * RAM prints a one-line warning on stderr.
 *
 * The default budget is taken from the environment variable OUTCORE_RAM
 * (for example "512MiB"); when it is unset or invalid, it is one quarter of
 * the machine's physical memory, at least 64 MiB.
 *
 * Threads: every function here takes the core lock itself; none may be
 * called from a loadblk/storeblk callback of a handle of the same RAM while
 * that handle is being faulted on by the same thread (it would not deadlock,
 * but see fileh.h for what such callbacks may do).  None is async-signal-safe.
 */
#ifndef OUTCORE_RAM_H
#define OUTCORE_RAM_H

#include <outcore/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct oc_ram oc_ram_t;

typedef enum oc_ram_kind {
	OC_RAM_MEMFD = 0,   /* memfd_create(): the default */
	OC_RAM_HUGETLB = 1, /* memfd_create(MFD_HUGETLB): 2 MiB huge pages */
	OC_RAM_TMPFS = 2,   /* an unlinked file in opts.dir (a tmpfs) */
} oc_ram_kind_t;

#define OC_RAM_OPTS_VERSION 1
#define OC_PAGESIZE_DEFAULT ((size_t)2 << 20)

/* Options for oc_ram_new().  Zero-initialise, set version, then what you
 * need; zero fields take their defaults. */
typedef struct oc_ram_opts {
	unsigned version;   /* OC_RAM_OPTS_VERSION */
	oc_ram_kind_t kind; /* default OC_RAM_MEMFD */
	size_t pagesize;    /* power of two >= 4096; default 2 MiB */
	uint64_t budget;    /* bytes; 0: OUTCORE_RAM or the default */
	const char *dir;    /* OC_RAM_TMPFS: the directory; else ignored */
} oc_ram_opts_t;

/* Create a RAM.  opts may be NULL (all defaults).
 * Returns 0 and *out, or:
 *   -EINVAL      pagesize not a power of two or < 4096, unknown kind,
 *                a NULL dir for OC_RAM_TMPFS, or a version mismatch;
 *   OC_ENOHUGE   OC_RAM_HUGETLB but the system has no huge pages reserved,
 *                or pagesize is not a multiple of the huge page size;
 *   -errno       from memfd_create/open (for example -ENOENT for dir).
 * The caller owns the RAM and closes it with oc_ram_close(). */
OC_API int oc_ram_new(oc_ram_t **out, const oc_ram_opts_t *opts);

/* Close a RAM.  Returns 0, or -EBUSY while file handles still use it (the
 * RAM stays valid).  NULL is accepted and ignored. */
OC_API int oc_ram_close(oc_ram_t *ram);

/* The shared default RAM for a page size (created on first use with the
 * default budget; lives until the process exits).  Returns 0 and *out, or
 * the errors of oc_ram_new(). */
OC_API int oc_ram_default(size_t pagesize, oc_ram_t **out);

/* The page size (0 for NULL) and kind of a RAM. */
OC_API size_t oc_ram_pagesize(const oc_ram_t *ram);
OC_API oc_ram_kind_t oc_ram_kind(const oc_ram_t *ram);

/* Get or set the byte budget.  Setting a budget below what is in use
 * reclaims clean pages at once, down to the new budget when it can.
 * oc_ram_budget returns it (0 for NULL); oc_ram_set_budget returns 0 or
 * -EINVAL (budget smaller than one page, NULL). */
OC_API uint64_t oc_ram_budget(const oc_ram_t *ram);
OC_API int oc_ram_set_budget(oc_ram_t *ram, uint64_t budget);

/* Counters and gauges of one RAM.  Counters only grow. */
typedef struct oc_ram_stats {
	uint64_t budget;       /* bytes */
	uint64_t pagesize;     /* bytes */
	uint64_t used;         /* bytes resident: RAM pages + base-mapped blocks */
	uint64_t used_max;     /* high-water mark of used */
	uint64_t ram_pages;    /* pages holding data in RAM (loading, clean, dirty) */
	uint64_t dirty_pages;  /* of those, dirty */
	uint64_t base_blocks;  /* blocks mapped from a file's base layer */
	uint64_t loads;        /* loadblk calls that succeeded */
	uint64_t load_errors;  /* loadblk calls that failed */
	uint64_t stores;       /* storeblk calls that succeeded */
	uint64_t store_errors; /* storeblk calls that failed */
	uint64_t base_maps;    /* blocks mapped from a base layer */
	uint64_t cow_copies;   /* base-layer blocks copied to RAM on first write */
	uint64_t zero_fills;   /* blocks served as zeros without a load (holes) */
	uint64_t faults;       /* page faults served (read and write) */
	uint64_t write_faults; /* of which write faults */
	uint64_t reclaims;     /* pages or base blocks reclaimed for the budget */
	uint64_t map_reclaims; /* mappings dropped to bound the kernel map count */
	uint64_t overbudget;   /* allocations made over the budget (only dirty left) */
	uint64_t patched_pages;  /* dirty base-layer blocks kept as the base plus
				    their written granules (partial copy-on-write) */
	uint64_t patch_bytes;    /* bytes of the granules those hold */
	uint64_t granule_copies; /* granules copied to RAM on first write */
	uint64_t patch_unmaps;   /* patched blocks unmapped for the budget */
	uint64_t patch_loads;    /* blocks stored as a base plus changes (a
				    store's page deltas) loaded for a write
				    as patched pages: their changed granules
				    only (file op mapblk_patched) */
	uint64_t table_moves;    /* blocks loaded into the slot of a reclaimed
				    page and mapped by moving that page's
				    page tables instead of refilling them */
	uint64_t reclaim_runs;   /* reclaims of a run of base blocks (a
				    scan's) with one unmapping for all */
} oc_ram_stats_t;

/* Fill *st.  Returns 0, -EINVAL (NULL), OC_EFORKED (in a fork child). */
OC_API int oc_ram_stats(oc_ram_t *ram, oc_ram_stats_t *st);

/* Reclaim up to max_pages clean pages (and base-mapped blocks), least
 * recently faulted first, regardless of the budget.  Returns how many were
 * reclaimed (>= 0).  Dirty pages are never reclaimed. */
OC_API int64_t oc_ram_reclaim(oc_ram_t *ram, uint64_t max_pages);

/* The budget the environment asks for: OUTCORE_RAM parsed, else the
 * default described above. */
OC_API uint64_t oc_ram_budget_default(void);

#ifdef __cplusplus
}
#endif
#endif
