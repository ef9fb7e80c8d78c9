/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * ram.c: RAM: a shared-memory file cut in page-sized slots, its window,
 * the budget and reclaim.
 *
 * Slots.  Slot s is the file range [s*pagesize, (s+1)*pagesize).  Freed
 * slots are hole-punched (the memory goes back to the OS at once) and kept
 * on a stack for reuse.  When the budget is reached, a new page takes the
 * slot of the least recently faulted clean page directly, without punching
 * it, so its memory is reused at once.
 *
 * Getting data in and out.  memfd and tmpfs memory is filled with pwrite
 * from a per-thread buffer that loadblk wrote into, and read with pread
 * for storeblk: the kernel copies into and out of the page cache without
 * any user page-table entry.  On these machines every newly touched 4 KiB
 * entry costs ~1.3 us (more than copying the page), and a page mapped both
 * in a window and in a mapping counts twice in the process's RSS, so the
 * memory is mapped only where the user sees it.  hugetlb memory has no
 * pwrite: it is mapped read-write, in chunks, in a window of our own; a
 * slot is "warm" once its window entry is filled (one entry per huge page),
 * and loadblk then writes straight into it.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define HUGE_SIZE ((size_t)2 << 20)
#define CHUNK_BYTES ((uint64_t)256 << 20)
/* Parking page tables (struct oc_ram) pays from 256 KiB pages on: three
 * system calls (~20 us) against tearing down and refilling 64 entries
 * (~50 us; for 64 KiB, 25 against 20). */
#define PARK_MIN ((size_t)256 << 10)
/* Base blocks reclaimed together when they are a run of one mapping (a
 * sequential scan's): at most this many, and a sixteenth of the budget.
 * One unmapping for all: each one, in a process with another thread
 * running, interrupts that thread's core to flush its TLB. */
#define RECLAIM_RUN 8

struct oc_list _oc_rams = {&_oc_rams, &_oc_rams};
static bool reclaim_one(oc_ram_t *ram, int64_t *reuse, void **park);
static oc_ram_t *defaults[64];

static uint64_t meminfo_value(const char *key)
{
	char buf[4096];
	uint64_t v = 0;
	ssize_t n;
	int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	{
		char *p = strstr(buf, key);
		if (p)
			v = strtoull(p + strlen(key), NULL, 10);
	}
	return v;
}

uint64_t oc_ram_budget_default(void)
{
	const char *s = getenv("OUTCORE_RAM");
	uint64_t v;
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);

	if (s && *s && oc_parse_size(s, &v) == 0 && v >= 4096)
		return v;
	v = (pages > 0 && psz > 0) ? (uint64_t)pages * (uint64_t)psz / 4 : 0;
	if (v < ((uint64_t)64 << 20))
		v = (uint64_t)64 << 20;
	return v;
}

static int open_memory(const oc_ram_opts_t *o, size_t ps, int *fd_out)
{
	int fd;

	switch (o->kind) {
	case OC_RAM_MEMFD:
		fd = memfd_create("outcore-ram", MFD_CLOEXEC);
		break;
	case OC_RAM_HUGETLB:
		if (ps % HUGE_SIZE || meminfo_value("HugePages_Total:") == 0)
			return OC_ENOHUGE;
		fd = memfd_create("outcore-ram-huge",
				  MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
		break;
	case OC_RAM_TMPFS:
		fd = open(o->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR)) {
			char path[4096];
			snprintf(path, sizeof path, "%s/outcore-ram.XXXXXX", o->dir);
			fd = mkostemp(path, O_CLOEXEC);
			if (fd >= 0)
				unlink(path);
		}
		break;
	default:
		return -EINVAL;
	}
	if (fd < 0)
		return -errno;
	*fd_out = fd;
	return 0;
}

int oc_ram_new(oc_ram_t **out, const oc_ram_opts_t *opts)
{
	oc_ram_opts_t o = {OC_RAM_OPTS_VERSION, OC_RAM_MEMFD, 0, 0, NULL};
	oc_ram_t *ram = NULL;
	size_t ps;
	int fd = -1, err;

	if (!out)
		return -EINVAL;
	if (opts) {
		if (opts->version != OC_RAM_OPTS_VERSION)
			return -EINVAL;
		o = *opts;
	}
	ps = o.pagesize ? o.pagesize : OC_PAGESIZE_DEFAULT;
	if (ps < 4096 || (ps & (ps - 1)))
		return -EINVAL;
	if ((unsigned)o.kind > OC_RAM_TMPFS)
		return -EINVAL;
	if (o.kind == OC_RAM_TMPFS && !o.dir)
		return -EINVAL;
	if (o.budget && o.budget < ps)
		return -EINVAL;
	err = open_memory(&o, ps, &fd);
	if (err)
		goto fail;
	ram = calloc(1, sizeof *ram);
	if (!ram) {
		err = -ENOMEM;
		goto fail;
	}
	ram->kind = o.kind;
	ram->pagesize = ps;
	ram->pageshift = (unsigned)__builtin_ctzll(ps);
	ram->fd = fd;
	ram->budget = o.budget ? o.budget : oc_ram_budget_default();
	if (ram->budget < ps)
		ram->budget = ps;
	ram->can_pwrite = o.kind != OC_RAM_HUGETLB;
	ram->use_window = !ram->can_pwrite;
	ram->can_park = o.kind != OC_RAM_HUGETLB && ps >= PARK_MIN;
	ram->chunk_slots = CHUNK_BYTES > ps ? CHUNK_BYTES / ps : 1;
	oc_list_init(&ram->lru_clean);
	oc_list_init(&ram->lru_dirty);
	oc_list_init(&ram->lru_patched);
	if (ram->can_pwrite) {
		size_t g = ps / 32, os = (size_t)sysconf(_SC_PAGESIZE);
		if (g < os)
			g = os;
		if (g < ps) {
			ram->granule = g;
			ram->granshift = (unsigned)__builtin_ctzll(g);
			ram->ngran = (unsigned)(ps / g);
		}
	}
	_oc_lock();
	ram->gen = _oc_gen;
	oc_list_add_tail(&_oc_rams, &ram->link);
	_oc_unlock();
	*out = ram;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	free(ram);
	return err;
}

/* Free everything of a RAM (lock held, no handles). */
static void ram_free(oc_ram_t *ram)
{
	uint64_t c;
	size_t chunk = (size_t)(ram->chunk_slots * ram->pagesize);

	oc_list_del(&ram->link);
	for (c = 0; c < ram->nchunks; c++)
		if (ram->chunks[c])
			_oc_os_release(ram->chunks[c], chunk);
	close(ram->fd);
	free(ram->chunks);
	OC_BUG_ON(ram->nparks != ram->nparks_made); /* no page holds one */
	while (ram->nparks_made)
		_oc_os_release(ram->parks_made[--ram->nparks_made],
			       ram->pagesize);
	free(ram->parks);
	free(ram->parks_made);
	if (ram->zeros)
		_oc_os_release((void *)ram->zeros, ram->pagesize);
	free(ram->freeslots);
	free(ram->warm);
	free(ram);
}

int oc_ram_close(oc_ram_t *ram)
{
	int err = 0;

	if (!ram)
		return 0;
	_oc_lock();
	if (ram->gen != _oc_gen)
		goto out; /* inherited across fork: forget it */
	if (ram->nfileh > 0 || ram->is_default) {
		err = -EBUSY;
		goto out;
	}
	ram_free(ram);
out:
	_oc_unlock();
	return err;
}

void _oc_ram_ref(oc_ram_t *ram)
{
	ram->nfileh++;
}

void _oc_ram_unref(oc_ram_t *ram)
{
	OC_BUG_ON(ram->nfileh <= 0);
	ram->nfileh--;
}

int oc_ram_default(size_t pagesize, oc_ram_t **out)
{
	oc_ram_t *ram = NULL, *other;
	oc_ram_opts_t o = {OC_RAM_OPTS_VERSION, OC_RAM_MEMFD, pagesize, 0, NULL};
	unsigned shift;
	int err;

	if (!out || pagesize < 4096 || (pagesize & (pagesize - 1)))
		return -EINVAL;
	shift = (unsigned)__builtin_ctzll(pagesize);
	_oc_lock();
	ram = defaults[shift];
	if (ram && ram->gen != _oc_gen)
		ram = NULL;
	_oc_unlock();
	if (ram) {
		*out = ram;
		return 0;
	}
	err = oc_ram_new(&ram, &o);
	if (err)
		return err;
	_oc_lock();
	other = defaults[shift];
	if (other && other->gen == _oc_gen) {
		ram_free(ram); /* lost a race: keep the first */
		ram = other;
	} else {
		ram->is_default = true;
		defaults[shift] = ram;
	}
	_oc_unlock();
	*out = ram;
	return 0;
}

size_t oc_ram_pagesize(const oc_ram_t *ram)
{
	return ram ? ram->pagesize : 0;
}

oc_ram_kind_t oc_ram_kind(const oc_ram_t *ram)
{
	return ram ? ram->kind : OC_RAM_MEMFD;
}

uint64_t oc_ram_budget(const oc_ram_t *ram)
{
	return ram ? ram->budget : 0;
}

int oc_ram_set_budget(oc_ram_t *ram, uint64_t budget)
{
	if (!ram || budget < ram->pagesize)
		return -EINVAL;
	_oc_lock();
	if (ram->gen != _oc_gen) {
		_oc_unlock();
		return OC_EFORKED;
	}
	ram->budget = budget;
	while (_oc_ram_used(ram) > budget && reclaim_one(ram, NULL, NULL))
		ram->st.reclaims++;
	_oc_unlock();
	return 0;
}

int oc_ram_stats(oc_ram_t *ram, oc_ram_stats_t *st)
{
	oc_ram_stats_t s;

	if (!ram || !st)
		return -EINVAL;
	_oc_lock();
	if (ram->gen != _oc_gen) {
		_oc_unlock();
		return OC_EFORKED;
	}
	s = ram->st;
	s.budget = ram->budget;
	s.pagesize = ram->pagesize;
	s.used = _oc_ram_used(ram);
	s.ram_pages = ram->ram_pages;
	s.dirty_pages = ram->dirty_pages;
	s.base_blocks = ram->base_blocks;
	s.patched_pages = ram->patched_pages;
	s.patch_bytes = ram->sub_bytes;
	_oc_unlock();
	*st = s; /* st may be managed memory: its fault needs the lock */
	return 0;
}

/* Reclaim one thing (lock held): the least recently faulted clean page
 * or base block, dropped (its slot is put in *reuse when reuse is not
 * NULL and *reuse < 0, instead of being freed, and its mapping parked in
 * *park when park is not NULL; with reuse NULL, the base blocks that
 * follow it on the list go with it when they are a run of one mapping,
 * see RECLAIM_RUN); or else the least recently faulted patched
 * page, unmapped (its granules stay: it is dirty, but its base no longer
 * counts).  Returns false when there is nothing to reclaim. */
static bool reclaim_one(oc_ram_t *ram, int64_t *reuse, void **park)
{
	struct page *p;

	if (!oc_list_empty(&ram->lru_clean)) {
		uint64_t max = (ram->budget >> ram->pageshift) / 16;
		uintptr_t lo;
		unsigned n;
		p = oc_container_of(ram->lru_clean.next, struct page, lru);
		if (!reuse && max > 1 &&
		    (n = _oc_page_run(p, max < RECLAIM_RUN ? (unsigned)max
							    : RECLAIM_RUN, &lo)) > 1) {
			/* base blocks of a scan: several with one unmapping */
			_oc_page_drop_run(p, n, lo);
			ram->st.reclaims += n - 1;
			ram->st.reclaim_runs++;
			return true;
		}
		if (reuse && *reuse < 0 && p->slot >= 0) {
			if (park)
				*park = _oc_page_park(p);
			*reuse = _oc_page_drop(p, true);
		} else {
			_oc_page_drop(p, false);
		}
		return true;
	}
	if (!oc_list_empty(&ram->lru_patched)) {
		p = oc_container_of(ram->lru_patched.next, struct page, lru);
		_oc_page_unmap_all(p); /* takes it off lru_patched */
		ram->st.patch_unmaps++;
		return true;
	}
	return false;
}

int64_t oc_ram_reclaim(oc_ram_t *ram, uint64_t max_pages)
{
	int64_t n = 0;

	if (!ram)
		return -EINVAL;
	_oc_lock();
	if (ram->gen != _oc_gen) {
		_oc_unlock();
		return OC_EFORKED;
	}
	/* clean pages and base blocks only: patched pages stay mapped */
	while ((uint64_t)n < max_pages && !oc_list_empty(&ram->lru_clean)) {
		_oc_page_drop(oc_container_of(ram->lru_clean.next, struct page,
					      lru), false);
		n++;
	}
	ram->st.reclaims += (uint64_t)n;
	_oc_unlock();
	return n;
}

static void note_overbudget(oc_ram_t *ram)
{
	ram->st.overbudget++;
	if (!ram->warned) {
		ram->warned = true;
		_oc_msg("outcore: warning: RAM budget of %lu KiB exceeded: only "
			"dirty pages are left (they are never dropped: write "
			"out (commit) or discard to free them), or pages an "
			"access spanning them needs at once (counted in "
			"oc_ram_stats().overbudget)",
			(unsigned long)(ram->budget >> 10));
	}
}

/* Reclaim until len more bytes fit the budget (see reclaim_one for
 * reuse); past what can be reclaimed the budget is exceeded, and noted. */
static void make_room(oc_ram_t *ram, uint64_t len, int64_t *reuse,
		      void **park)
{
	while (_oc_ram_used(ram) + len > ram->budget) {
		if (!reclaim_one(ram, reuse, park)) {
			note_overbudget(ram);
			return;
		}
		ram->st.reclaims++;
	}
}

void _oc_ram_make_room(oc_ram_t *ram, uint64_t len)
{
	make_room(ram, len, NULL, NULL);
}

void _oc_ram_note_used(oc_ram_t *ram)
{
	if (_oc_ram_used(ram) > ram->st.used_max)
		ram->st.used_max = _oc_ram_used(ram);
}

void *_oc_ram_slot_addr(oc_ram_t *ram, uint64_t slot)
{
	uint64_t c = slot / ram->chunk_slots;
	OC_BUG_ON(c >= ram->nchunks || !ram->chunks[c]);
	return ram->chunks[c] + ((slot % ram->chunk_slots) << ram->pageshift);
}

/* Add a chunk of slots: grow the file and map the new part in the window. */
static int add_chunk(oc_ram_t *ram)
{
	size_t chunk = (size_t)(ram->chunk_slots * ram->pagesize);
	uint64_t newslots = (ram->nchunks + 1) * ram->chunk_slots;
	void *addr = NULL;
	char **chunks;
	uint8_t *warm;
	int err;

	chunks = realloc(ram->chunks, (ram->nchunks + 1) * sizeof *chunks);
	if (!chunks)
		return -ENOMEM;
	ram->chunks = chunks;
	if (newslots > ram->capwarm) {
		uint64_t cap = newslots * 2;
		warm = realloc(ram->warm, cap);
		if (!warm)
			return -ENOMEM;
		memset(warm + ram->capwarm, 0, cap - ram->capwarm);
		ram->warm = warm;
		ram->capwarm = cap;
	}
	if (ftruncate(ram->fd, (off_t)(newslots * ram->pagesize)))
		return -errno;
	if (!ram->use_window) {
		ram->chunks[ram->nchunks++] = NULL;
		return 0;
	}
	err = _oc_os_reserve(chunk, chunk >= HUGE_SIZE ? HUGE_SIZE : ram->pagesize,
			     &addr);
	if (err)
		return err;
	err = _oc_os_map_fixed(addr, chunk, PROT_READ | PROT_WRITE, ram->fd,
			       ram->nchunks * chunk, false);
	if (err) {
		_oc_os_release(addr, chunk);
		return err;
	}
	if (ram->pagesize >= HUGE_SIZE)
		madvise(addr, chunk, MADV_HUGEPAGE);
	ram->chunks[ram->nchunks++] = addr;
	return 0;
}

int _oc_ram_get_slot(oc_ram_t *ram, bool part, uint64_t *slot, bool *warm,
		     bool *zero, void **park)
{
	int64_t reuse = -1;
	int err;

	/* At the budget: reclaim the least recently faulted clean pages and
	 * base blocks until the new page fits, and take the slot of the
	 * first reclaimed page at once (no punch, no new allocation), unless
	 * the slot is for a patched page, which must hold nothing but its
	 * granules. */
	if (park)
		*park = NULL;
	if (part)
		make_room(ram, ram->granule, NULL, NULL);
	else
		make_room(ram, ram->pagesize, &reuse, park);
	if (reuse >= 0) {
		*slot = (uint64_t)reuse;
		/* A recycled slot will be reused again and again: with a
		 * window, fill its page tables once so that loads write
		 * straight into it from now on. */
		if (ram->use_window && !ram->warm[*slot])
			_oc_ram_warm_slot(ram, *slot);
		*warm = ram->warm[*slot] != 0;
		*zero = false;
		goto got;
	}
	*zero = true; /* punched or never used */
	if (ram->nfree) {
		*slot = ram->freeslots[--ram->nfree];
		*warm = ram->warm[*slot] != 0;
		goto got;
	}
	if (ram->nslots == ram->nchunks * ram->chunk_slots) {
		err = add_chunk(ram);
		if (err)
			return err;
	}
	*slot = ram->nslots++;
	*warm = false;
got:
	/* Memory without pwrite (hugetlb) is only reached through the
	 * window: allocate the page and fill its window entry now. */
	if (!*warm && !ram->can_pwrite) {
		err = _oc_ram_warm_slot(ram, *slot);
		if (err) {
			_oc_ram_put_slot(ram, *slot);
			return err;
		}
		*warm = true;
	}
	if (part)
		ram->sub_bytes += ram->granule;
	else
		ram->ram_pages++;
	_oc_ram_note_used(ram);
	return 0;
}

void *_oc_ram_get_park(oc_ram_t *ram)
{
	void *park = NULL, **parks;
	size_t n = ram->nparks_made + 1;

	if (!ram->can_park)
		return NULL;
	if (ram->nparks)
		return ram->parks[--ram->nparks];
	/* Room for every park made in the free list, so that giving one
	 * back cannot fail. */
	parks = realloc(ram->parks, n * sizeof *parks);
	if (!parks)
		return NULL;
	ram->parks = parks;
	parks = realloc(ram->parks_made, n * sizeof *parks);
	if (!parks)
		return NULL;
	ram->parks_made = parks;
	if (_oc_os_reserve(ram->pagesize, ram->pagesize, &park))
		return NULL;
	ram->parks_made[ram->nparks_made++] = park;
	return park;
}

void _oc_ram_put_park(oc_ram_t *ram, void *park, bool clear)
{
	/* A park left by a move has its mapping without page tables: the
	 * next move into it replaces it. */
	if (clear)
		_oc_os_unmap_to_reserve(park, ram->pagesize);
	OC_BUG_ON(ram->nparks >= ram->nparks_made);
	ram->parks[ram->nparks++] = park;
}

void _oc_ram_put_slot(oc_ram_t *ram, uint64_t slot)
{
	if (ram->nfree == ram->capfree) {
		uint64_t cap = ram->capfree ? ram->capfree * 2 : 64;
		uint64_t *f = realloc(ram->freeslots, cap * sizeof *f);
		if (!f) {
			/* Cannot remember it: punch it anyway; the slot is
			 * lost for reuse but its memory is returned. */
			_oc_os_punch(ram->fd, slot << ram->pageshift, ram->pagesize);
			return;
		}
		ram->freeslots = f;
		ram->capfree = cap;
	}
	_oc_os_punch(ram->fd, slot << ram->pageshift, ram->pagesize);
	ram->warm[slot] = 0;
	ram->freeslots[ram->nfree++] = slot;
}

int _oc_ram_zero_slot(oc_ram_t *ram, uint64_t slot)
{
	uint64_t off = slot << ram->pageshift;

	/* Overwritten with zeros rather than punched: a punched page is
	 * allocated and cleared again at its next touch, which here costs
	 * several times the copy (fresh memory of a VM). */
	if (ram->can_pwrite && !ram->zeros) /* left NULL if it fails */
		(void)_oc_os_map_zeros(ram->pagesize, &ram->zeros);
	if (ram->zeros &&
	    !_oc_os_pwrite_all(ram->fd, ram->zeros, ram->pagesize, off))
		return 0;
	_oc_os_punch(ram->fd, off, ram->pagesize);
	ram->warm[slot] = 0;
	/* hugetlb: allocate the punched page again, so that a touch cannot
	 * meet a missing one. */
	return ram->can_pwrite ? 0 : _oc_ram_warm_slot(ram, slot);
}

int _oc_ram_warm_slot(oc_ram_t *ram, uint64_t slot)
{
	void *a = _oc_ram_slot_addr(ram, slot);

	if (ram->kind == OC_RAM_HUGETLB) {
		/* Allocate the huge page now: a failure is an error here,
		 * not a SIGBUS later. */
		if (fallocate(ram->fd, 0, (off_t)(slot << ram->pageshift),
			      (off_t)ram->pagesize))
			return errno == ENOSPC ? OC_ENOHUGE : -errno;
	}
	if (madvise(a, ram->pagesize, MADV_POPULATE_WRITE))
		return errno == EINVAL ? 0 : -errno; /* old kernel: faults do it */
	ram->warm[slot] = 1;
	return 0;
}

void _oc_ram_forget_in_child(void)
{
	struct oc_list *e;

	for (e = _oc_rams.next; e != &_oc_rams; e = e->next) {
		oc_ram_t *ram = oc_container_of(e, oc_ram_t, link);
		if (ram->fd >= 0)
			close(ram->fd);
		ram->fd = -1;
	}
	oc_list_init(&_oc_rams); /* inherited RAMs are forgotten */
	memset(defaults, 0, sizeof defaults);
}
