/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * internal.h: what the core's files share and nobody else sees.
 *
 * Locking.  One core lock (_oc_lock/_oc_unlock) protects every RAM, handle,
 * page and mapping, and the mapping registry.  One condition variable is
 * broadcast whenever a page leaves the LOADING state; waiters re-check.
 * The lock is never held while a file op (loadblk/storeblk/mapblk) runs.
 * While waiting for the lock or the condition, the binding's lock hooks
 * release its global lock (the GIL).
 *
 * Objects:
 *   oc_ram     one shared-memory file cut in slots of pagesize (hugetlb:
 *              and a window that maps it read-write), LRU lists of
 *              resident pages (clean + base-mapped; dirty; patched), the
 *              budget, parks (page tables kept for a recycled slot).
 *   oc_fileh   a file + a RAM + pages (blk -> page) + dirty pages (blk ->
 *              page, ordered) + its mappings.
 *   oc_vma     an address range showing blocks [pgoffset, pgoffset+pglen)
 *              of a handle; maps (index -> maprec) says which are mapped.
 *   page       one block of one handle that is resident in some way.
 *   maprec     one page mapped in one vma (on the page's list and in the
 *              vma's map); each costs at most two kernel mappings.
 */
#ifndef OUTCORE_INTERNAL_H
#define OUTCORE_INTERNAL_H

#include <outcore/outcore.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

/* ---- assertions ------------------------------------------------------ */

/* Always on, safe in the fault handler (no allocation). */
#define OC_BUG_ON(cond)                                                   \
	do {                                                              \
		if (__builtin_expect(!!(cond), 0))                        \
			_oc_bug(__FILE__, __LINE__, #cond);               \
	} while (0)
__attribute__((noreturn)) void _oc_bug(const char *file, int line,
				       const char *what);

/* Whether len bytes (a multiple of 8, 8-aligned) are all zero. */
bool _oc_all_zero(const void *buf, size_t len);

/* XXH3 (64 bits) of n bytes at p, through the fastest implementation the
 * CPU has (hash.c): the block checksum of the stores.  Safe anywhere,
 * also in the fault handler. */
uint64_t _oc_xxh3(const void *p, size_t n);
/* Which implementation _oc_xxh3 uses ("avx2" or "libxxhash"), and the
 * library's, for the tests that compare them. */
const char *_oc_xxh3_impl(void);
uint64_t _oc_xxh3_lib(const void *p, size_t n);
/* Defined where hash.c builds an AVX2 copy of XXH3: GCC on x86-64, whose
 * target pragma also defines __AVX2__ for xxhash.h (clang's does not). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OC_XXH3_AVX2 1
#endif

/* Print a message to stderr with write(2) only (safe in a signal handler). */
void _oc_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- intrusive list ---------------------------------------------------- */

struct oc_list {
	struct oc_list *prev, *next;
};

static inline void oc_list_init(struct oc_list *h) { h->prev = h->next = h; }
static inline bool oc_list_empty(const struct oc_list *h) { return h->next == h; }
static inline bool oc_list_linked(const struct oc_list *e) { return e->next != NULL && e->next != e; }
static inline void oc_list_add_tail(struct oc_list *h, struct oc_list *e)
{
	e->prev = h->prev;
	e->next = h;
	h->prev->next = e;
	h->prev = e;
}
static inline void oc_list_del(struct oc_list *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	e->prev = e->next = e;
}
#define oc_container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ---- OS primitives (os.c) ---------------------------------------------- */
/* Each returns 0 or -errno unless said otherwise and never touches the
 * caller's errno.  They tell memory checkers about pages that appear and
 * vanish on purpose. */

/* Reserve len bytes of inaccessible address space aligned to align (a power
 * of two); *out gets the address.  -ENOMEM when there is no such range. */
int _oc_os_reserve(size_t len, size_t align, void **out);
/* Return [addr, addr+len) to the OS (munmap). */
int _oc_os_release(void *addr, size_t len);
/* Make [addr, addr+len) inaccessible again, keeping it reserved (an
 * anonymous PROT_NONE mapping over it, so no page tables are freed). */
int _oc_os_unmap_to_reserve(void *addr, size_t len);
/* Map fd at off over [addr, addr+len) with prot (MAP_SHARED|MAP_FIXED),
 * populating the page tables when populate is set. */
int _oc_os_map_fixed(void *addr, size_t len, int prot, int fd, uint64_t off,
		     bool populate);
/* Advise a file mapping so that what its reads bring into the page cache
 * comes in large folios (MADV_HUGEPAGE: otherwise readahead that meets
 * other reads of the file falls back to 4 KiB pages, and every later
 * mapping of them then fills 512 entries per 2 MiB instead of one). */
void _oc_os_advise_huge(void *addr, size_t len);
/* Fill the page tables of a read-only file mapping, reading what is not
 * cached (advise it first).  -EINVAL before Linux 5.14: nothing is
 * filled. */
int _oc_os_populate(void *addr, size_t len);
/* Move the mapping of [from, from+len) with its page tables to to
 * (mremap MREMAP_DONTUNMAP: from keeps its mapping, without page tables;
 * whatever was at to is replaced).  No page is refaulted or unmapped: ~8 us
 * here, where unmapping and mapping again 2 MiB of 4 KiB pages costs ~350.
 * -EINVAL from kernels before 5.13 and from valgrind. */
int _oc_os_move(void *from, size_t len, void *to);
/* Map [off, off+len) of regular file fd read-only, anywhere
 * (*out; give it back with _oc_os_release), advised with
 * _oc_os_advise_huge.  -EIO if the
 * file ends before off+len (a mapping past the end would raise SIGBUS
 * when read). */
int _oc_os_map_file_ro(int fd, uint64_t off, size_t len, const void **out);
/* len bytes of zeros to read or copy from, anywhere (*out; give it back
 * with _oc_os_release): a private mapping never written, all of it the
 * kernel's one zero page, so it costs no memory and copies from cache. */
int _oc_os_map_zeros(size_t len, const void **out);
/* mprotect. */
int _oc_os_protect(void *addr, size_t len, int prot);
/* Punch a hole (free the memory) in a shared-memory file. */
int _oc_os_punch(int fd, uint64_t off, size_t len);
/* Tell memory checkers that [addr, addr+len) is addressable and defined
 * although it may be inaccessible to the CPU (faults on it are served). */
void _oc_os_mark_managed(void *addr, size_t len);
/* Whether we run under valgrind. */
bool _oc_os_under_valgrind(void);
/* Full pwrite/pread loops; return 0 or -errno (-EIO on a short count). */
int _oc_os_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
int _oc_os_pread_all(int fd, void *buf, size_t len, uint64_t off);
/* The kernel's vm.max_map_count (65530 when unreadable). */
long _oc_os_max_map_count(void);

/* ---- core lock and global state (virtmem.c) ---------------------------- */

void _oc_lock(void);
void _oc_unlock(void);
/* Wait on the core condition; the lock is held before and after. */
void _oc_wait(void);
void _oc_broadcast(void);
/* The fork generation: objects made in another generation are dead. */
extern unsigned _oc_gen;

/* ---- RAM (ram.c) ------------------------------------------------------ */

struct oc_ram {
	oc_ram_kind_t kind;
	size_t pagesize;
	unsigned pageshift;
	int fd;
	unsigned gen;
	uint64_t budget;
	bool can_pwrite; /* the memory file supports pwrite/pread */
	bool use_window; /* map the file in a window (hugetlb: no pwrite) */

	/* slots: the file is cut in pagesize slots */
	uint64_t nslots;      /* slots the file holds (its size / pagesize) */
	uint64_t *freeslots;  /* stack of free (punched) slots */
	uint64_t nfree, capfree;
	uint8_t *warm;        /* per slot: its window page tables are filled */
	uint64_t capwarm;

	/* window: the file mapped read-write in chunks (NULL: not mapped) */
	char **chunks;
	uint64_t nchunks;
	uint64_t chunk_slots; /* slots per chunk */

	struct oc_list lru_clean; /* clean RAM pages and base blocks, LRU first */
	struct oc_list lru_dirty; /* dirty pages that are mapped somewhere */
	struct oc_list lru_patched; /* patched pages that are mapped somewhere */

	/* Partial copy-on-write: a write to a base-layer block copies only
	 * the granule it hits (pagesize/32, at least the OS page) into the
	 * block's slot; 0 when this RAM cannot (hugetlb, small pages). */
	size_t granule;
	unsigned granshift, ngran;

	/* Use: ram_pages + base_blocks whole pages, plus sub_bytes of the
	 * granules of patched pages (see _oc_ram_used). */
	uint64_t ram_pages, base_blocks, dirty_pages, sub_bytes, patched_pages;
	/* Parks: a clean page reclaimed for its slot (at the budget) keeps
	 * its page tables for the block loaded next into the slot.  Its
	 * mapping is moved, page tables and all, to a park (pagesize of
	 * reserved address space, aligned) and from there to where the new
	 * block is shown once loaded: no page-table entry is torn down or
	 * filled.  Only for pages of 256 KiB and more on small page tables
	 * (not hugetlb), where that saves ~350 us per 2 MiB here. */
	bool can_park;
	void **parks;           /* free parks */
	void **parks_made;      /* every park (fork keeps them from children) */
	unsigned nparks, nparks_made;
	const void *zeros; /* pagesize of zeros (_oc_os_map_zeros), or NULL */

	oc_ram_stats_t st;
	bool warned;
	int nfileh;
	bool is_default;
	struct oc_list link; /* in the global list of RAMs */
};

/* Bytes in use: whole RAM pages, base-mapped blocks, granules. */
static inline uint64_t _oc_ram_used(const oc_ram_t *ram)
{
	return ((ram->ram_pages + ram->base_blocks) << ram->pageshift) +
	       ram->sub_bytes;
}
/* Under the lock: get a slot for a new page, reclaiming a clean page of
 * this RAM when the budget is reached (its slot is then reused at once).
 * *warm says whether the slot's window page tables are filled (always, for
 * memory without pwrite), *zero whether it holds zeros (a punched or new
 * slot).  The slot is counted in ram_pages.  part: the slot is for a
 * patched page instead: room is made for one granule, which is counted in
 * sub_bytes, and the slot always reads as zeros (*zero is set).  park
 * (may be NULL): *park gets a park holding the reclaimed page's mapping of
 * the slot, when one could be kept, else NULL.  Returns 0, -errno or
 * OC_ENOHUGE. */
int _oc_ram_get_slot(oc_ram_t *ram, bool part, uint64_t *slot, bool *warm,
		     bool *zero, void **park);
/* Under the lock: make a slot in use read as zeros.  Returns 0, or for
 * hugetlb -errno/OC_ENOHUGE (the page could not be allocated again). */
int _oc_ram_zero_slot(oc_ram_t *ram, uint64_t slot);
/* Under the lock: release a slot, punching its memory out. */
void _oc_ram_put_slot(oc_ram_t *ram, uint64_t slot);
/* Under the lock: make room in the budget for len more bytes (a
 * base-layer block, a granule). */
void _oc_ram_make_room(oc_ram_t *ram, uint64_t len);
/* Update the high-water mark of use. */
void _oc_ram_note_used(oc_ram_t *ram);
/* Under the lock: a free park of this RAM (see struct oc_ram), or NULL
 * (parking is off or no address space is left). */
void *_oc_ram_get_park(oc_ram_t *ram);
/* Under the lock: give back a park; clear: its mapping may still have
 * page tables (they are dropped). */
void _oc_ram_put_park(oc_ram_t *ram, void *park, bool clear);
/* The window address of a slot. */
void *_oc_ram_slot_addr(oc_ram_t *ram, uint64_t slot);
/* Fill a slot's window page tables for writing (after which it is warm). */
int _oc_ram_warm_slot(oc_ram_t *ram, uint64_t slot);
/* Every RAM (for fork handling and the map-count bound). */
extern struct oc_list _oc_rams;
/* Take / drop a ref for a handle or a store that uses the RAM: oc_ram_close
 * refuses while any is held (lock held). */
void _oc_ram_ref(oc_ram_t *ram);
void _oc_ram_unref(oc_ram_t *ram);
void _oc_ram_forget_in_child(void);

/* ---- pages, handles, mappings (virtmem.c) ------------------------------ */

enum page_state {
	PAGE_LOADING = 1,     /* loadblk/mapblk running, lock released */
	PAGE_LOADING_INVAL,   /* invalidated while loading: thrown away after */
	PAGE_CLEAN,           /* in a RAM slot, equal to the stored data */
	PAGE_DIRTY,           /* in a RAM slot, modified (or patched, below) */
	PAGE_BASE,            /* mapped from the file's base layer, no slot */
};

struct maprec;

struct page {
	enum page_state state;
	oc_fileh_t *fh;
	uint64_t blk;
	int64_t slot;          /* RAM slot, or -1 */
	int base_fd;           /* PAGE_BASE: where the block is mapped from */
	uint64_t base_off;
	struct maprec *maps;   /* mappings showing this page */
	unsigned nmaps;
	struct oc_list lru;    /* in ram->lru_clean or ram->lru_dirty */
	uint64_t stamp;        /* fault clock at the last fault */
	uint64_t dirty_gen;    /* writeout generation when it last changed */
	int busy;              /* being copied/stored with the lock released */
	void *park;            /* PAGE_LOADING/CLEAN: a park (see struct
				  oc_ram) holding a mapping of its slot, page
				  tables filled, for its first read mapping */
	/* Patched (always PAGE_DIRTY): the block is its base (base_fd,
	 * base_off) with the granules of bitmap sub replaced by those of the
	 * slot, which holds nothing else.  It is mapped as the base,
	 * read-only, with the slot's granules mapped read-write over it. */
	bool patched;
	uint32_t sub;
};

struct maprec {
	struct oc_vma *vma;
	struct page *page;
	struct maprec *next; /* next mapping of the same page */
	int prot;
	unsigned cost;       /* kernel mappings it may take (counted in nmaps) */
};

struct oc_fileh {
	oc_file_t *file;
	oc_ram_t *ram;
	unsigned gen;
	oc_pagemap_t pages; /* blk -> struct page */
	oc_pagemap_t dirty; /* blk -> struct page, dirty only */
	struct oc_list vmas;
	int nvmas;
	bool writeout; /* a writeout is running */
	uint64_t writeout_gen; /* generation given to pages dirtied now */
	uint64_t store_gen;    /* generation of the last STORE pass */
	bool store_pending;    /* a STORE was not yet followed by MARKSTORED */
	int nbusy;     /* pages busy with the lock released */
	uint64_t inval_gen; /* bumped by every invalidation: read ahead done
			     * with the lock released keeps nothing if it moved */
	/* A store's handle: written out only by oc_store_commit, which sets
	 * owner_writing meanwhile; a writeout by hand gets -EPERM. */
	bool owned_writeout;
	bool owner_writing;
	struct oc_list link; /* in the list of every open handle */
};

/* A file is cut short to blk blocks (plainfile.c, before its ftruncate):
 * publish new_size in *size (read by its ops) and drop the cached blocks
 * from blk on in every handle of it, whose base mappings would raise
 * SIGBUS past the file's end.  Returns 0, or -EBUSY when a handle has a
 * dirty or busy page there, or a writeout running (nothing changed). */
int _oc_file_cut(oc_file_t *file, uint64_t blk, uint64_t *size,
		 uint64_t new_size);

/* Whether oc_fileh_close would refuse fh now (-EBUSY: mappings, a
 * writeout, pages busy; lock held). */
bool _oc_fileh_busy(const oc_fileh_t *fh);

struct oc_vma {
	uintptr_t start, stop;
	uint64_t pgoffset, pglen;
	oc_fileh_t *fh;
	unsigned gen;
	oc_pagemap_t maps; /* page index in vma -> struct maprec */
	struct oc_list fh_link;
	void *user;
	size_t reserved_len; /* the reservation (>= stop - start) */
	void *reserved_addr;
};

/* Under the lock: drop a page entirely: unmap it everywhere, free its slot
 * (punching it unless keep_slot), take it off every list and free it.
 * Returns the slot when keep_slot (the caller reuses it), else -1. */
int64_t _oc_page_drop(struct page *p, bool keep_slot);
/* Under the lock, before _oc_page_drop(p, true): move the only mapping of
 * clean page p, page tables and all, to a park, and return the park (or
 * NULL when p is not mapped exactly once, read-only, or parking is off). */
void *_oc_page_park(struct page *p);
/* Under the lock: unmap a page from every mapping. */
void _oc_page_unmap_all(struct page *p);
/* Under the lock: how many clean pages of the LRU list from p on (p first,
 * at most max) are base blocks mapped once each, at consecutive addresses
 * of one mapping (in either order), and (when that is one or more) in *lo
 * the lowest address.  Such a run is dropped with one unmapping by
 * _oc_page_drop_run. */
unsigned _oc_page_run(struct page *p, unsigned max, uintptr_t *lo);
/* Under the lock: drop the n pages of such a run (see _oc_page_run). */
void _oc_page_drop_run(struct page *p, unsigned n, uintptr_t lo);

/* Fault service.  write: 0 a read, 1 a write, 2 unknown (then a fault
 * on a read-only mapping is taken as a write).  Serves one access at addr
 * (lock not held) and returns 0, 1 (not managed memory) or a negative
 * error: -EDEADLK for a fault from inside an op of the same handle, else a
 * load error.  *fi tells which file and block. */
struct oc_fault_info {
	uintptr_t ip;      /* in: the faulting instruction, or 0 */
	uint64_t blk;      /* out: the block, and its file, for messages */
	const char *file;
};
int _oc_serve(uintptr_t addr, int write, struct oc_fault_info *fi);
/* Whether addr belongs to a mapping made before a fork (in a child). */
bool _oc_addr_inherited(uintptr_t addr);

/* The handle whose op the current thread is running (NULL if none). */
extern __thread oc_fileh_t *_oc_in_op;

/* Lock hooks (pagefault.c). */
extern oc_lock_hooks_t _oc_hooks;
extern oc_fatal_hook_t _oc_fatal_hook;

/* Stop the process with sig after the message (never returns). */
__attribute__((noreturn)) void _oc_die(int sig);

#endif
