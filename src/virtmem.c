/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * virtmem.c: file handles, mappings, the fault logic, writeout, discard,
 * invalidate, prefault, and fork handling.
 *
 * The fault logic (fault_page) runs with the core lock held and returns
 * HANDLED, RETRY or an error.  Whenever it has to drop the lock (to run a
 * file op, or to wait for another thread's load) it returns RETRY, and the
 * caller looks everything up again, since mappings and pages may have
 * changed meanwhile.  Each access therefore ends in HANDLED after at most a
 * few rounds: load (RETRY), map (HANDLED).
 *
 * Cost per read fault of an unloaded block on the RAM path: one SIGSEGV,
 * loadblk into the slot (warm) or into a per-thread bounce buffer followed
 * by one pwrite into the memory file (cold), and one mmap(MAP_POPULATE) of
 * the slot at the faulting address: one hardware fault per block.  On the
 * base-layer path: mapblk and one mmap(MAP_POPULATE) of the file range.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RETRY 1
#define HANDLED 0

static pthread_mutex_t core_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t core_cond = PTHREAD_COND_INITIALIZER;
unsigned _oc_gen = 1;
__thread oc_fileh_t *_oc_in_op;
oc_lock_hooks_t _oc_hooks;

static uint64_t fault_clock;

/* The mapping registry: every live vma, sorted by start address. */
static struct oc_vma **reg;
static size_t nreg, capreg;

/* Address ranges inherited from the parent (in a fork child only). */
struct range {
	uintptr_t start, stop;
};
static struct range *inherited;
static size_t ninherited;

/* Sequential reads of base-layer blocks map up to this many bytes of
 * following blocks with the same fault (one mmap, one signal). */
#define READAHEAD_BYTES ((uint64_t)16 << 20)

/* The bound on our mappings (each costs up to two kernel mappings). */
static uint64_t nmaps, map_limit;
/* Our mappings and address reservations (nreg: one kernel mapping each)
 * together stay under this: the kernel's limit less room for the rest of
 * the program.  map_limit alone left the reservations out, and a program
 * with tens of thousands of small mappings reached the kernel's limit. */
static uint64_t total_limit;

/* ---- lock -------------------------------------------------------------- */

void _oc_lock(void)
{
	void *token;

	if (pthread_mutex_trylock(&core_lock) == 0)
		return;
	token = _oc_hooks.release ? _oc_hooks.release() : NULL;
	pthread_mutex_lock(&core_lock);
	if (token)
		_oc_hooks.reacquire(token);
}

void _oc_unlock(void)
{
	pthread_mutex_unlock(&core_lock);
}

void _oc_wait(void)
{
	void *token = _oc_hooks.release ? _oc_hooks.release() : NULL;
	pthread_cond_wait(&core_cond, &core_lock);
	if (token) {
		/* Retake the binding's lock without holding ours, so that a
		 * thread holding the binding's lock and waiting for ours can
		 * go on. */
		pthread_mutex_unlock(&core_lock);
		_oc_hooks.reacquire(token);
		_oc_lock();
	}
}

void _oc_broadcast(void)
{
	pthread_cond_broadcast(&core_cond);
}

static int nfileh_open; /* handles open in this process */
static struct oc_list all_fh = {&all_fh, &all_fh}; /* their links */

int oc_set_lock_hooks(const oc_lock_hooks_t *hooks)
{
	if (hooks && !hooks->release != !hooks->reacquire)
		return -EINVAL; /* one without the other would hang */
	_oc_lock();
	if (nfileh_open) {
		_oc_unlock();
		return -EBUSY;
	}
	if (hooks)
		_oc_hooks = *hooks;
	else
		memset(&_oc_hooks, 0, sizeof _oc_hooks);
	_oc_unlock();
	return 0;
}

/* ---- per-thread bounce buffer ----------------------------------------- */

static __thread char *bounce;
static __thread size_t bounce_len;
static __thread int bounce_busy;
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_free(void *p)
{
	if (p)
		munmap(p, bounce_len);
}

static void bounce_init(void)
{
	pthread_key_create(&bounce_key, bounce_free);
}

static void *anon_buffer(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	/* Non-zero: this VM special-cases zero-filled pages. */
	memset(p, 0x5a, len);
	return p;
}

/* A buffer of len bytes for the current thread; *tmp says it must be
 * released with put_bounce (it is a nested use). */
static void *get_bounce(size_t len, bool *tmp)
{
	int saved = errno;
	void *p;

	*tmp = false;
	if (bounce_busy) {
		*tmp = true;
		p = anon_buffer(len);
		errno = saved;
		return p;
	}
	if (bounce_len < len) {
		pthread_once(&bounce_once, bounce_init);
		if (bounce)
			munmap(bounce, bounce_len);
		bounce = anon_buffer(len);
		bounce_len = bounce ? len : 0;
		pthread_setspecific(bounce_key, bounce);
	}
	errno = saved;
	if (bounce)
		bounce_busy = 1;
	return bounce;
}

static void put_bounce(void *p, size_t len, bool tmp)
{
	if (!p)
		return;
	if (tmp)
		munmap(p, len);
	else
		bounce_busy = 0;
}

/* ---- registry ---------------------------------------------------------- */

static struct oc_vma *lookup_locked(uintptr_t addr)
{
	size_t lo = 0, hi = nreg;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (reg[mid]->start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	if (addr < reg[lo - 1]->stop)
		return reg[lo - 1];
	return NULL;
}

static int reg_insert(struct oc_vma *v)
{
	size_t i = 0, j;

	if (nreg == capreg) {
		size_t cap = capreg ? capreg * 2 : 64;
		struct oc_vma **r = realloc(reg, cap * sizeof *r);
		if (!r)
			return -ENOMEM;
		reg = r;
		capreg = cap;
	}
	while (i < nreg && reg[i]->start < v->start)
		i++;
	memmove(reg + i + 1, reg + i, (nreg - i) * sizeof *reg);
	reg[i] = v;
	nreg++;
	/* A fresh range may reuse addresses a parent had: forget those. */
	for (j = 0; j < ninherited;) {
		if (inherited[j].start < v->stop && v->start < inherited[j].stop)
			inherited[j] = inherited[--ninherited];
		else
			j++;
	}
	return 0;
}

static void reg_remove(struct oc_vma *v)
{
	size_t i;

	for (i = 0; i < nreg; i++)
		if (reg[i] == v)
			break;
	OC_BUG_ON(i == nreg);
	memmove(reg + i, reg + i + 1, (nreg - i - 1) * sizeof *reg);
	nreg--;
}

oc_vma_t *oc_vma_lookup(const void *addr)
{
	struct oc_vma *v;

	_oc_lock();
	v = lookup_locked((uintptr_t)addr);
	_oc_unlock();
	return v;
}

bool _oc_addr_inherited(uintptr_t addr)
{
	size_t i;

	for (i = 0; i < ninherited; i++)
		if (inherited[i].start <= addr && addr < inherited[i].stop)
			return true;
	return false;
}

/* ---- mapping pages ----------------------------------------------------- */

static inline void *page_addr(const struct oc_vma *v, uint64_t blk)
{
	return (void *)(v->start + ((blk - v->pgoffset) << v->fh->ram->pageshift));
}

static void lru_touch(struct page *p)
{
	oc_ram_t *ram = p->fh->ram;

	p->stamp = ++fault_clock;
	if (oc_list_linked(&p->lru))
		oc_list_del(&p->lru);
	if (p->state == PAGE_DIRTY) {
		if (p->nmaps)
			oc_list_add_tail(p->patched ? &ram->lru_patched
						    : &ram->lru_dirty, &p->lru);
	} else {
		oc_list_add_tail(&ram->lru_clean, &p->lru);
	}
}

static void unmap_rec(struct maprec *r, bool syscall)
{
	struct oc_vma *v = r->vma;
	struct page *p = r->page;
	struct maprec **pp;

	if (syscall)
		_oc_os_unmap_to_reserve(page_addr(v, p->blk), v->fh->ram->pagesize);
	oc_pagemap_del(&v->maps, p->blk - v->pgoffset);
	for (pp = &p->maps; *pp != r; pp = &(*pp)->next)
		;
	*pp = r->next;
	p->nmaps--;
	nmaps -= r->cost;
	if (p->state == PAGE_DIRTY && p->nmaps == 0) {
		if (oc_list_linked(&p->lru))
			oc_list_del(&p->lru);
		if (p->patched)
			v->fh->ram->base_blocks--; /* its base is shown nowhere */
	}
	free(r);
}

void _oc_page_unmap_all(struct page *p)
{
	while (p->maps)
		unmap_rec(p->maps, true);
}

void *_oc_page_park(struct page *p)
{
	oc_ram_t *ram = p->fh->ram;
	struct maprec *r = p->maps;
	void *park;
	int err;

	if (p->park && !p->nmaps) {
		/* loaded for a fault that did not map it: parked already */
		park = p->park;
		p->park = NULL;
		return park;
	}
	if (p->state != PAGE_CLEAN || p->nmaps != 1 || r->cost != 1 ||
	    r->prot != PROT_READ || !(park = _oc_ram_get_park(ram)))
		return NULL;
	err = _oc_os_move(page_addr(r->vma, p->blk), ram->pagesize, park);
	if (err) {
		if (err == -EINVAL)
			ram->can_park = false; /* the kernel cannot: stop trying */
		_oc_ram_put_park(ram, park, false);
		return NULL;
	}
	/* The old address keeps a mapping without page tables until it is
	 * reserved again (next): a read there meanwhile refaults the slot,
	 * which still holds p's data. */
	unmap_rec(r, true);
	return park;
}

/* The base block after q in the LRU list if it is mapped once, in q's
 * mapping, step bytes after q (NULL otherwise): the next of a run. */
static struct page *run_next(struct page *q, intptr_t step)
{
	struct page *n;

	if (q->lru.next == &q->fh->ram->lru_clean)
		return NULL;
	n = oc_container_of(q->lru.next, struct page, lru);
	if (n->state != PAGE_BASE || n->nmaps != 1 || n->maps->cost != 1 ||
	    n->maps->vma != q->maps->vma ||
	    (uintptr_t)page_addr(n->maps->vma, n->blk) !=
		    (uintptr_t)page_addr(q->maps->vma, q->blk) + (uintptr_t)step)
		return NULL;
	return n;
}

unsigned _oc_page_run(struct page *p, unsigned max, uintptr_t *lo)
{
	intptr_t step = (intptr_t)p->fh->ram->pagesize;
	struct page *n;
	unsigned k = 1;

	if (p->state != PAGE_BASE || p->nmaps != 1 || p->maps->cost != 1)
		return 0;
	/* a scan's read-ahead puts runs on the list in either order */
	if (!(n = run_next(p, step)) && (n = run_next(p, -step)))
		step = -step;
	for (; n && k < max; k++)
		n = run_next(n, step);
	*lo = (uintptr_t)page_addr(p->maps->vma, p->blk);
	if (step < 0)
		*lo -= (uintptr_t)(k - 1) * (uintptr_t)-step;
	return k;
}

void _oc_page_drop_run(struct page *p, unsigned n, uintptr_t lo)
{
	struct page *q, *next;

	_oc_os_unmap_to_reserve((void *)lo, n * p->fh->ram->pagesize);
	for (q = p; n--; q = next) {
		next = n ? oc_container_of(q->lru.next, struct page, lru) : NULL;
		unmap_rec(q->maps, false);
		_oc_page_drop(q, false);
	}
}

int64_t _oc_page_drop(struct page *p, bool keep_slot)
{
	oc_fileh_t *fh = p->fh;
	oc_ram_t *ram = fh->ram;
	int64_t slot = p->slot;

	OC_BUG_ON(p->busy);
	_oc_page_unmap_all(p);
	if (p->park)
		_oc_ram_put_park(ram, p->park, true);
	if (oc_list_linked(&p->lru))
		oc_list_del(&p->lru);
	if (p->state == PAGE_DIRTY) {
		oc_pagemap_del(&fh->dirty, p->blk);
		ram->dirty_pages--;
	}
	if (p->state == PAGE_BASE)
		ram->base_blocks--;
	if (oc_pagemap_get(&fh->pages, p->blk) == p)
		oc_pagemap_del(&fh->pages, p->blk);
	if (p->patched) {
		ram->sub_bytes -= (uint64_t)__builtin_popcount(p->sub)
				  << ram->granshift;
		ram->patched_pages--;
		OC_BUG_ON(keep_slot); /* never on lru_clean */
	} else if (slot >= 0) {
		ram->ram_pages--;
	}
	if (slot >= 0 && !keep_slot)
		_oc_ram_put_slot(ram, (uint64_t)slot);
	free(p);
	return keep_slot ? slot : -1;
}

/* Keep our mappings under the kernel's limit: drop the least recently
 * faulted clean pages, or unmap (never drop) dirty ones. */
static void bound_maps(void)
{
	/* below the limits by a margin, so that the next faults do not come
	 * straight back (oc_fileh_mmap leaves page mappings 2048 of room) */
	uint64_t target = map_limit * 3 / 4,
		 total = total_limit > 2048 ? total_limit - 1024 : total_limit / 2;

	while (nmaps > target || (nmaps && nmaps + nreg > total)) {
		struct page *best = NULL;
		struct oc_list *e;
		for (e = _oc_rams.next; e != &_oc_rams; e = e->next) {
			oc_ram_t *ram = oc_container_of(e, oc_ram_t, link);
			struct oc_list *lists[3] = {&ram->lru_clean,
						    &ram->lru_dirty,
						    &ram->lru_patched};
			for (int i = 0; i < 3; i++) {
				struct page *c;
				if (oc_list_empty(lists[i]))
					continue;
				c = oc_container_of(lists[i]->next, struct page, lru);
				if (!best || c->stamp < best->stamp)
					best = c;
			}
		}
		if (!best)
			return;
		best->fh->ram->st.map_reclaims++;
		if (best->state == PAGE_DIRTY)
			_oc_page_unmap_all(best); /* leaves its LRU list */
		else
			_oc_page_drop(best, false);
	}
}

/* Record that page p is mapped in v with prot by r, at the price of cost
 * kernel mappings. */
static void link_rec(struct maprec *r, struct oc_vma *v, struct page *p,
		     int prot, unsigned cost)
{
	r->vma = v;
	r->page = p;
	r->prot = prot;
	r->cost = cost;
	r->next = p->maps;
	p->maps = r;
	p->nmaps++;
	nmaps += cost;
}

/* Map pages run[0..n) (consecutive blocks, none mapped in v yet, all
 * showing consecutive ranges of one descriptor, none patched) into v with
 * prot, with one mmap, filling the page tables when populate is set. */
/* The kernel refused a mapping (ENOMEM at vm.max_map_count, which also
 * counts the program's own mappings and our address reservations, that
 * map_limit leaves out): lower map_limit to what was reached and make
 * room under it.  Returns whether a mapping went (then try again). */
static bool maps_refused(void)
{
	uint64_t before = nmaps;

	if (nmaps * 3 / 4 < map_limit)
		map_limit = nmaps * 3 / 4 > 16 ? nmaps * 3 / 4 : 16;
	bound_maps();
	return nmaps < before;
}

/* bound_maps (after a refusal: maps_refused) with the n pages of run,
 * about to be mapped, out of its reach: it would drop them under the
 * caller.  Returns whether a mapping went. */
static bool make_room_but(struct page **run, uint64_t n, bool refused)
{
	bool off[64], went;
	uint64_t i, before = nmaps;

	for (i = 0; i < n; i++)
		if ((off[i] = oc_list_linked(&run[i]->lru)))
			oc_list_del(&run[i]->lru);
	if (refused)
		(void)maps_refused();
	else
		bound_maps();
	went = nmaps < before;
	for (i = 0; i < n; i++)
		if (off[i])
			lru_touch(run[i]);
	return went;
}

static int map_run(struct oc_vma *v, struct page **run, uint64_t n, int prot,
		   bool populate)
{
	oc_ram_t *ram = v->fh->ram;
	struct page *p = run[0];
	struct maprec *recs[64];
	uint64_t i;
	int fd, err = 0;
	uint64_t off;
	void *park = p->park;

	OC_BUG_ON(n == 0 || n > 64);
	if (nmaps + n > map_limit || nmaps + nreg + n > total_limit)
		make_room_but(run, n, false);
	for (i = 0; i < n; i++) {
		recs[i] = malloc(sizeof *recs[i]);
		if (!recs[i] ||
		    oc_pagemap_set(&v->maps, run[i]->blk - v->pgoffset, recs[i])) {
			free(recs[i]);
			err = -ENOMEM;
			goto undo;
		}
	}
	if (park) {
		/* A read mapping of a page loaded into a reclaimed page's
		 * slot: move that page's mapping here, page tables filled. */
		p->park = NULL;
		if (n == 1 && prot == PROT_READ &&
		    !_oc_os_move(park, ram->pagesize, page_addr(v, p->blk))) {
			_oc_ram_put_park(ram, park, false);
			ram->st.table_moves++;
			goto linked;
		}
		_oc_ram_put_park(ram, park, true);
	}
	if (p->state == PAGE_BASE) {
		fd = p->base_fd;
		off = p->base_off;
	} else {
		fd = ram->fd;
		off = (uint64_t)p->slot << ram->pageshift;
	}
	/* A base run is populated after advice for large folios. */
	err = _oc_os_map_fixed(page_addr(v, p->blk), n << ram->pageshift, prot,
			       fd, off, populate && p->state != PAGE_BASE);
	if (err == -ENOMEM && make_room_but(run, n, true))
		err = _oc_os_map_fixed(page_addr(v, p->blk), n << ram->pageshift,
				       prot, fd, off,
				       populate && p->state != PAGE_BASE);
	if (err) {
		err = err == -ENOMEM ? OC_EMAPLIMIT : err;
		goto undo;
	}
	if (populate && p->state == PAGE_BASE) {
		_oc_os_advise_huge(page_addr(v, p->blk), n << ram->pageshift);
		(void)_oc_os_populate(page_addr(v, p->blk),
				      n << ram->pageshift);
	}
linked:
	for (i = 0; i < n; i++)
		link_rec(recs[i], v, run[i], prot, 1);
	return 0;
undo:
	while (i-- > 0)
		free(oc_pagemap_del(&v->maps, run[i]->blk - v->pgoffset));
	return err;
}

/* Map page p (not mapped in v yet) into v with prot. */
static int map_page(struct oc_vma *v, struct page *p, int prot)
{
	return map_run(v, &p, 1, prot, true);
}

/* Make an existing mapping of a RAM page writable.  mprotect of the one
 * kernel mapping that shows the page: measured here it is ~2.5x cheaper
 * than mapping the page again (which refills every page-table entry). */
static int make_writable(struct maprec *r)
{
	struct page *p = r->page;
	int err = _oc_os_protect(page_addr(r->vma, p->blk),
				 p->fh->ram->pagesize, PROT_READ | PROT_WRITE);
	if (err)
		return err;
	r->prot = PROT_READ | PROT_WRITE;
	return 0;
}

static int make_dirty(struct page *p)
{
	oc_fileh_t *fh = p->fh;
	int err = oc_pagemap_set(&fh->dirty, p->blk, p);

	if (err)
		return err;
	p->state = PAGE_DIRTY;
	p->dirty_gen = fh->writeout_gen;
	fh->ram->dirty_pages++;
	return 0;
}

static void mark_clean(struct page *p)
{
	oc_fileh_t *fh = p->fh;
	struct maprec *r;

	if (p->patched) {
		/* Stored: the file now gives its content.  Dropped rather than
		 * kept, since a clean patched page would be one more state. */
		_oc_page_drop(p, false);
		return;
	}
	oc_pagemap_del(&fh->dirty, p->blk);
	fh->ram->dirty_pages--;
	p->state = PAGE_CLEAN;
	for (r = p->maps; r; r = r->next) {
		if (r->prot & PROT_WRITE) {
			if (_oc_os_protect(page_addr(r->vma, p->blk),
					   fh->ram->pagesize, PROT_READ) == 0)
				r->prot = PROT_READ;
		}
	}
	/* Any mapping left writable (mprotect failed) must go: a write
	 * through it would not be seen. */
	for (r = p->maps; r;) {
		struct maprec *next = r->next;
		if (r->prot & PROT_WRITE)
			unmap_rec(r, true);
		r = next;
	}
	if (oc_list_linked(&p->lru))
		oc_list_del(&p->lru);
	oc_list_add_tail(&fh->ram->lru_clean, &p->lru);
}

/* ---- loading ----------------------------------------------------------- */

static int normalize(int r)
{
	return r > 0 ? -EIO : r;
}

static int load_patched(oc_fileh_t *fh, struct page *p, bool *whole);

/* Load block blk of fh (absent from its pages), for a write if write,
 * for a fault that maps it next if fault.  Returns RETRY or an error.  The
 * lock is dropped while the file op runs. */
static int load_page(oc_fileh_t *fh, uint64_t blk, uint64_t ahead, bool write,
		     bool fault)
{
	oc_ram_t *ram = fh->ram;
	oc_file_t *file = fh->file;
	struct page *p;
	uint64_t slot, off = 0, nahead = 0;
	bool warm, zero, tmp = false;
	void *buf = NULL;
	int r = OC_NOMAP, fd = -1;

	p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->state = PAGE_LOADING;
	p->fh = fh;
	p->blk = blk;
	p->slot = -1;
	oc_list_init(&p->lru);
	r = oc_pagemap_set(&fh->pages, blk, p);
	if (r) {
		free(p);
		return r;
	}
	fh->nbusy++;

	r = OC_NOMAP;
	if (file->ops->mapblk) {
		uint64_t gen = fh->inval_gen;
		_oc_unlock();
		_oc_in_op = fh;
		r = file->ops->mapblk(file, blk, &fd, &off);
		/* Sequential access: ask for the following blocks too, as long
		 * as they continue the same range of the same descriptor. */
		for (nahead = 0; r == 0 && nahead < ahead; nahead++) {
			int fd2;
			uint64_t off2;
			if (file->ops->mapblk(file, blk + 1 + nahead, &fd2, &off2) ||
			    fd2 != fd || off2 != off + ((nahead + 1) << ram->pageshift))
				break;
		}
		_oc_in_op = NULL;
		_oc_lock();
		if (p->state == PAGE_LOADING_INVAL) {
			r = RETRY;
			goto drop;
		}
		if (r == 0) {
			uint64_t i;
			/* A block invalidated meanwhile (not in the map yet, so
			 * nothing marked it) may have been read ahead before:
			 * then none is kept. */
			if (fh->inval_gen != gen)
				nahead = 0;
			for (i = 1; i <= nahead; i++) {
				struct page *q;
				if (oc_pagemap_get(&fh->pages, blk + i))
					break;
				q = calloc(1, sizeof *q);
				if (!q || oc_pagemap_set(&fh->pages, blk + i, q)) {
					free(q);
					break;
				}
				_oc_ram_make_room(ram, ram->pagesize);
				q->state = PAGE_BASE;
				q->fh = fh;
				q->blk = blk + i;
				q->slot = -1;
				q->base_fd = fd;
				q->base_off = off + (i << ram->pageshift);
				oc_list_init(&q->lru);
				ram->base_blocks++;
				ram->st.base_maps++;
				lru_touch(q);
			}
			_oc_ram_make_room(ram, ram->pagesize);
			p->state = PAGE_BASE;
			p->base_fd = fd;
			p->base_off = off;
			ram->base_blocks++;
			ram->st.base_maps++;
			_oc_ram_note_used(ram);
			goto loaded;
		}
		if (r != OC_NOMAP && r != OC_ZEROBLK) {
			r = normalize(r);
			goto drop;
		}
	}
	if (r == OC_NOMAP && write && ram->ngran && file->ops->version >= 3 &&
	    file->ops->mapblk_patched) {
		bool whole = false;
		r = load_patched(fh, p, &whole);
		if (r)
			goto drop;
		if (!whole)
			goto loaded;
		r = OC_NOMAP;
	}

	{
		int want = r;
		/* A read fault maps the page next: it may take over the
		 * page tables of the page whose slot it reuses. */
		r = _oc_ram_get_slot(ram, false, &slot, &warm, &zero,
				     fault && !write ? &p->park : NULL);
		if (r)
			goto drop;
		p->slot = (int64_t)slot;
		if (want == OC_ZEROBLK) {
			/* A hole: a new or punched slot already reads as
			 * zeros; a recycled one is zeroed. */
			if (!zero) {
				r = _oc_ram_zero_slot(ram, slot);
				if (r)
					goto drop;
			}
			ram->st.zero_fills++;
			p->state = PAGE_CLEAN;
			goto loaded;
		}
	}
	if (!warm && file->ops->loadblk_fd) {
		/* The file writes the block into the memory file itself:
		 * one copy, no buffer. */
		_oc_unlock();
		_oc_in_op = fh;
		r = file->ops->loadblk_fd(file, blk, ram->fd,
					  slot << ram->pageshift);
		_oc_in_op = NULL;
		_oc_lock();
		if (r != OC_NOMAP) {
			r = normalize(r);
			goto loaded_slot;
		}
	}
	buf = warm ? _oc_ram_slot_addr(ram, slot) : get_bounce(ram->pagesize, &tmp);
	if (!buf) {
		r = -ENOMEM;
		goto drop;
	}
	_oc_unlock();
	_oc_in_op = fh;
	r = normalize(file->ops->loadblk(file, blk, buf));
	_oc_in_op = NULL;
	if (r == 0 && !warm)
		r = _oc_os_pwrite_all(ram->fd, buf, ram->pagesize,
				      slot << ram->pageshift);
	if (!warm)
		put_bounce(buf, ram->pagesize, tmp);
	_oc_lock();
loaded_slot:
	if (p->state == PAGE_LOADING_INVAL) {
		r = RETRY;
		goto drop;
	}
	if (r) {
		ram->st.load_errors++;
		goto drop;
	}
	ram->st.loads++;
	p->state = PAGE_CLEAN;
loaded:
	lru_touch(p);
	fh->nbusy--;
	_oc_broadcast();
	return RETRY;

drop:
	/* The page was never visible: remove it (an invalidated one is no
	 * longer in the page map). */
	fh->nbusy--;
	if (oc_pagemap_get(&fh->pages, blk) == p)
		oc_pagemap_del(&fh->pages, blk);
	if (p->slot >= 0) {
		ram->ram_pages--;
		_oc_ram_put_slot(ram, (uint64_t)p->slot);
	}
	if (p->park)
		_oc_ram_put_park(ram, p->park, true);
	free(p);
	_oc_broadcast();
	return r;
}

/* Copy-on-write of a base-layer block: give it a RAM slot holding the
 * same bytes, dirty, and map it writable in v.  Other mappings of the base
 * block are removed (they fault again and see the RAM page).  The copy is
 * made by the kernel (pwrite from the read-only mapping of the block, or
 * pread + pwrite through the bounce buffer when v does not map it). */
static int cow_page(struct oc_vma *v, struct page *p, struct maprec *rec)
{
	oc_ram_t *ram = v->fh->ram;
	uint64_t slot;
	bool warm, zero, tmp = false;
	const void *src = rec ? page_addr(v, p->blk) : NULL;
	void *bbuf = NULL;
	int r;

	/* Keep p out of reach of the reclaim get_slot may do, and stop
	 * counting it as a base block: its slot replaces it in the budget. */
	oc_list_del(&p->lru);
	ram->base_blocks--;
	r = _oc_ram_get_slot(ram, false, &slot, &warm, &zero, NULL);
	if (r)
		goto fail;
	if (!src) {
		bbuf = warm ? _oc_ram_slot_addr(ram, slot)
			    : get_bounce(ram->pagesize, &tmp);
		if (!bbuf) {
			r = -ENOMEM;
			goto fail_slot;
		}
		r = _oc_os_pread_all(p->base_fd, bbuf, ram->pagesize, p->base_off);
		if (r)
			goto fail_buf;
		src = bbuf;
	}
	if (warm) {
		if (src != _oc_ram_slot_addr(ram, slot))
			memcpy(_oc_ram_slot_addr(ram, slot), src, ram->pagesize);
	} else {
		r = _oc_os_pwrite_all(ram->fd, src, ram->pagesize,
				      slot << ram->pageshift);
		if (r)
			goto fail_buf;
	}
	if (bbuf && !warm)
		put_bounce(bbuf, ram->pagesize, tmp);
	_oc_page_unmap_all(p);
	p->slot = (int64_t)slot;
	p->state = PAGE_CLEAN;
	r = make_dirty(p);
	if (r) {
		lru_touch(p);
		return r;
	}
	ram->st.cow_copies++;
	r = map_page(v, p, PROT_READ | PROT_WRITE);
	lru_touch(p);
	return r;

fail_buf:
	if (bbuf && !warm)
		put_bounce(bbuf, ram->pagesize, tmp);
fail_slot:
	ram->ram_pages--;
	_oc_ram_put_slot(ram, slot);
fail:
	ram->base_blocks++;
	lru_touch(p);
	return r;
}

/* ---- partial copy-on-write ------------------------------------------ */

/* A write to a base-layer block copies only the granule it hits (1/32 of
 * the block, at least an OS page) into the block's RAM slot and maps that
 * granule read-write over the read-only base: the block becomes "patched".
 * A program that writes 64 KiB here and there in big blocks keeps 64 KiB
 * per change in RAM, not whole blocks, and writeout tells the file which
 * granules may have changed (storeblk_part).  A patched page that gets a
 * quarter of its granules is promoted to a whole RAM page, which bounds
 * the kernel mappings it takes.  The slot of a patched page holds nothing
 * but its granules (the rest stays a hole).  Its base is counted in the
 * budget while it is mapped somewhere; reclaim may unmap it (never drop
 * it: it is dirty). */

#define PROMOTE_GRANULES(ram) ((ram)->ngran / 4)

/* The next run [*a, *b) of set bits of m (n bits) at or after *i. */
static bool next_run(uint32_t m, unsigned n, unsigned *i, unsigned *a,
		     unsigned *b)
{
	while (*i < n && !((m >> *i) & 1))
		(*i)++;
	if (*i >= n)
		return false;
	*a = *i;
	while (*i < n && ((m >> *i) & 1))
		(*i)++;
	*b = *i;
	return true;
}

static unsigned count_runs(uint32_t m, unsigned n)
{
	unsigned i = 0, a, b, runs = 0;

	while (next_run(m, n, &i, &a, &b))
		runs++;
	return runs;
}

/* Map granules [a, b) of patched page p's slot with prot at addr (the
 * block's address in some mapping). */
static int map_granules(oc_ram_t *ram, struct page *p, char *addr,
			unsigned a, unsigned b, int prot)
{
	uint64_t off = ((uint64_t)p->slot << ram->pageshift) +
		       ((uint64_t)a << ram->granshift);

	return _oc_os_map_fixed(addr + ((size_t)a << ram->granshift),
				(size_t)(b - a) << ram->granshift, prot,
				ram->fd, off, true);
}

/* Copy the granules of mask from src (a whole block's bytes) into the
 * same granules of slot, with the kernel (pwrite). */
static int put_granules(oc_ram_t *ram, uint64_t slot, const char *src,
			uint32_t mask)
{
	unsigned i = 0, a, b;
	int err = 0;

	while (!err && next_run(mask, ram->ngran, &i, &a, &b))
		err = _oc_os_pwrite_all(ram->fd, src + ((size_t)a << ram->granshift),
					(size_t)(b - a) << ram->granshift,
					(slot << ram->pageshift) +
						((uint64_t)a << ram->granshift));
	return err;
}

/* Count n more granules of patched pages in the budget, making room for
 * them first. */
static void add_granules(oc_ram_t *ram, unsigned n)
{
	_oc_ram_make_room(ram, (uint64_t)n << ram->granshift);
	ram->sub_bytes += (uint64_t)n << ram->granshift;
	_oc_ram_note_used(ram);
}

/* Map granules [a, b) of patched page p's base at addr, read-only (not
 * populated: only what is touched costs). */
static int map_base_part(oc_ram_t *ram, struct page *p, char *addr,
			 unsigned a, unsigned b)
{
	return _oc_os_map_fixed(addr + ((size_t)a << ram->granshift),
				(size_t)(b - a) << ram->granshift, PROT_READ,
				p->base_fd,
				p->base_off + ((uint64_t)a << ram->granshift), false);
}

/* Show patched page p at addr (not showing it now) with its granules
 * mapped with gprot and its base in the gaps between them.  The granules
 * go first and the base never covers them, even for an instant: another
 * thread reading there meanwhile would have read the file's old bytes
 * (and a read-modify-write lost an update); it faults instead, and waits
 * for this. */
static int show_patched(oc_ram_t *ram, struct page *p, char *addr, int gprot)
{
	unsigned i = 0, a, b, at = 0;
	int err = 0;

	while (!err && next_run(p->sub, ram->ngran, &i, &a, &b)) {
		err = map_granules(ram, p, addr, a, b, gprot);
		if (!err && a > at)
			err = map_base_part(ram, p, addr, at, a);
		at = b;
	}
	if (!err && at < ram->ngran)
		err = map_base_part(ram, p, addr, at, ram->ngran);
	return err;
}

/* Map patched page p (not mapped in v yet) into v. */
static int map_patched(struct oc_vma *v, struct page *p)
{
	oc_ram_t *ram = v->fh->ram;
	unsigned cost = 1 + 2 * count_runs(p->sub, ram->ngran);
	struct maprec *r;
	int err;

	if (oc_list_linked(&p->lru))
		oc_list_del(&p->lru); /* out of reach of what follows */
	if (nmaps + cost > map_limit || nmaps + nreg + cost > total_limit)
		bound_maps();
	if (p->nmaps == 0)
		_oc_ram_make_room(ram, ram->pagesize); /* for its base */
	r = malloc(sizeof *r);
	if (!r || oc_pagemap_set(&v->maps, p->blk - v->pgoffset, r)) {
		free(r);
		err = -ENOMEM;
		goto out;
	}
	err = show_patched(ram, p, page_addr(v, p->blk), PROT_READ | PROT_WRITE);
	if (err == -ENOMEM && maps_refused())
		err = show_patched(ram, p, page_addr(v, p->blk),
				   PROT_READ | PROT_WRITE);
	if (err) {
		_oc_os_unmap_to_reserve(page_addr(v, p->blk), ram->pagesize);
		free(oc_pagemap_del(&v->maps, p->blk - v->pgoffset));
		err = err == -ENOMEM ? OC_EMAPLIMIT : err;
		goto out;
	}
	/* PROT_READ: of the base, where a fault is a write */
	link_rec(r, v, p, PROT_READ, cost);
	if (p->nmaps == 1) {
		ram->base_blocks++;
		_oc_ram_note_used(ram);
	}
out:
	lru_touch(p);
	return err;
}

/* Turn patched page p, mapped in v, into a whole dirty RAM page: copy the
 * rest of its base into its slot and map the slot read-write in v. */
static int promote_page(struct oc_vma *v, struct page *p)
{
	oc_ram_t *ram = v->fh->ram;
	int err = put_granules(ram, (uint64_t)p->slot, page_addr(v, p->blk),
			       ~p->sub);

	if (err)
		return err;
	_oc_page_unmap_all(p); /* also stops counting its base */
	ram->sub_bytes -= (uint64_t)__builtin_popcount(p->sub) << ram->granshift;
	ram->patched_pages--;
	p->patched = false;
	p->sub = 0;
	ram->ram_pages++;
	_oc_ram_note_used(ram);
	ram->st.cow_copies++;
	p->dirty_gen = v->fh->writeout_gen;
	err = map_page(v, p, PROT_READ | PROT_WRITE);
	lru_touch(p);
	return err;
}

/* A write at addr to base block or patched page p, whose base v shows
 * there: copy that granule into p's slot (making p patched, and dirty, if
 * it was a base block) and map it read-write in every mapping of p. */
static int patch_page(struct oc_vma *v, struct page *p, uintptr_t addr)
{
	oc_fileh_t *fh = v->fh;
	oc_ram_t *ram = fh->ram;
	char *blkaddr = page_addr(v, p->blk);
	unsigned g = (unsigned)((addr - (uintptr_t)blkaddr) >> ram->granshift);
	uint64_t slot;
	bool fresh = !p->patched, warm, zero;
	struct maprec *r, *next;
	int err;

	if (!fresh && ((p->sub >> g) & 1))
		return HANDLED; /* another thread did it meanwhile */
	if (!fresh && (unsigned)__builtin_popcount(p->sub) >= PROMOTE_GRANULES(ram))
		return promote_page(v, p);
	/* Keep p out of reach of the reclaim and map bounding below. */
	if (oc_list_linked(&p->lru))
		oc_list_del(&p->lru);
	if (nmaps + 2 * p->nmaps > map_limit ||
	    nmaps + nreg + 2 * p->nmaps > total_limit)
		bound_maps();
	if (fresh) {
		err = _oc_ram_get_slot(ram, true, &slot, &warm, &zero, NULL);
		if (err)
			goto out;
	} else {
		add_granules(ram, 1);
		slot = (uint64_t)p->slot;
	}
	/* The kernel copies from v's read-only base mapping. */
	err = put_granules(ram, slot, blkaddr, (uint32_t)1 << g);
	if (!err && fresh)
		err = make_dirty(p);
	if (err) {
		ram->sub_bytes -= ram->granule;
		if (fresh)
			_oc_ram_put_slot(ram, slot);
		goto out;
	}
	if (fresh) {
		/* Its base stays counted in base_blocks: it is mapped. */
		p->patched = true;
		p->slot = (int64_t)slot;
		p->sub = 0;
		ram->patched_pages++;
	}
	p->sub |= (uint32_t)1 << g;
	p->dirty_gen = fh->writeout_gen;
	ram->st.granule_copies++;
	for (r = p->maps; r; r = next) {
		next = r->next;
		if (map_granules(ram, p, page_addr(r->vma, p->blk), g, g + 1,
				 PROT_READ | PROT_WRITE) == 0) {
			r->cost += 2;
			nmaps += 2;
		} else {
			/* It must not show the stale base: it faults again. */
			unmap_rec(r, true);
			err = RETRY;
		}
	}
out:
	lru_touch(p);
	return err;
}

/* A write to loading page p of a block that the file stores as a base
 * plus changed granules (mapblk_patched): make p a patched page holding
 * just those granules, dirty and mapped nowhere yet; the write then
 * patches the granule it hits as for any base block.  Returns 0 (with
 * *whole set: load the whole block instead, because the file says so or
 * too many granules changed), RETRY (p was invalidated meanwhile) or an
 * error (lock held; dropped while the file op runs). */
static int load_patched(oc_fileh_t *fh, struct page *p, bool *whole)
{
	oc_ram_t *ram = fh->ram;
	oc_file_t *file = fh->file;
	uint32_t changed = 0;
	unsigned n;
	uint64_t off = 0, slot;
	bool tmp, warm, zero;
	int fd = -1, r;
	char *buf = get_bounce(ram->pagesize, &tmp);

	if (!buf)
		return -ENOMEM;
	_oc_unlock();
	_oc_in_op = fh;
	r = file->ops->mapblk_patched(file, p->blk, &fd, &off, buf, &changed,
				      ram->granule);
	_oc_in_op = NULL;
	_oc_lock();
	n = (unsigned)__builtin_popcount(changed);
	if (p->state == PAGE_LOADING_INVAL) {
		r = RETRY;
	} else if (r == OC_NOMAP || r == OC_ZEROBLK ||
		   (r == 0 && (!n || n >= PROMOTE_GRANULES(ram) ||
			       (ram->ngran < 32 && changed >> ram->ngran)))) {
		/* nothing to gain, or not granules of ours */
		*whole = true;
		r = 0;
	} else {
		r = normalize(r);
	}
	if (r || *whole)
		goto out;
	r = _oc_ram_get_slot(ram, true, &slot, &warm, &zero, NULL); /* 1 granule */
	if (r)
		goto out;
	add_granules(ram, n - 1);
	r = put_granules(ram, slot, buf, changed);
	if (!r)
		r = make_dirty(p);
	if (r) {
		ram->sub_bytes -= (uint64_t)n << ram->granshift;
		_oc_ram_put_slot(ram, slot);
		goto out;
	}
	p->slot = (int64_t)slot;
	p->base_fd = fd;
	p->base_off = off;
	p->patched = true;
	p->sub = changed;
	ram->patched_pages++;
	ram->st.granule_copies += n;
	ram->st.patch_loads++;
out:
	put_bounce(buf, ram->pagesize, tmp);
	return r;
}

/* Serve an access at addr in v.  write: 0 known read, 1 known write,
 * 2 unknown (a fault on a read-only mapping is then a write).  Returns
 * HANDLED, RETRY, or an error (-EDEADLK for a fault from inside an op of
 * the same handle). */
static int fault_page(struct oc_vma *v, uintptr_t addr, int write,
		      struct oc_fault_info *fi)
{
	oc_fileh_t *fh = v->fh;
	oc_ram_t *ram = fh->ram;
	uint64_t idx = (addr - v->start) >> ram->pageshift;
	uint64_t blk = v->pgoffset + idx;
	struct maprec *rec = oc_pagemap_get(&v->maps, idx);
	struct page *p = oc_pagemap_get(&fh->pages, blk);
	int err;

	fi->blk = blk;
	fi->file = fh->file->name;
	if (_oc_in_op == fh && (!p || p->state == PAGE_LOADING))
		return -EDEADLK;
	if (!p) {
		/* Read ahead on the base layer when the previous block is
		 * mapped here: a sequential scan.  (write 2, unknown, is
		 * most likely a read: a write faults again.) */
		uint64_t ahead = 0, rest = v->pglen - idx - 1;
		if (write != 1 && idx > 0 && fh->file->ops->mapblk &&
		    oc_pagemap_get(&v->maps, idx - 1)) {
			ahead = READAHEAD_BYTES >> ram->pageshift;
			if (ahead > 63)
				ahead = 63;
			if (ahead > (ram->budget >> ram->pageshift) / 4)
				ahead = (ram->budget >> ram->pageshift) / 4;
		} else if (write != 1 && fh->file->ops->mapblk) {
			/* A random read with room in the budget: map the
			 * blocks that follow too (without filling page
			 * tables: they cost only when touched), so that a
			 * working set that fits takes a signal per 64
			 * blocks, not per block. */
			uint64_t used = _oc_ram_used(ram) >> ram->pageshift,
				 room = ram->budget >> ram->pageshift;
			room = room > used + 1 ? room - used - 1 : 0;
			ahead = room < 63 ? room : 63;
		}
		if (ahead > rest)
			ahead = rest;
		return load_page(fh, blk, ahead, write == 1, true);
	}
	if (p->state == PAGE_LOADING) {
		_oc_wait();
		return RETRY;
	}
	if (rec) {
		if (rec->prot & PROT_WRITE)
			return HANDLED; /* another thread mapped it meanwhile */
		if (write == 0)
			return HANDLED;
		write = 1;
	} else if (write == 2) {
		write = 0;
	}

	ram->st.faults++;
	if (write) {
		ram->st.write_faults++;
		if (p->state == PAGE_BASE && !ram->ngran)
			return cow_page(v, p, rec);
		if (p->state == PAGE_BASE || p->patched) {
			/* Show the block here first, then patch the granule
			 * written (a partial copy-on-write). */
			if (rec)
				return patch_page(v, p, addr);
			err = p->patched ? map_patched(v, p)
					 : map_run(v, &p, 1, PROT_READ, false);
			lru_touch(p);
			return err ? err : RETRY;
		}
		if (p->state == PAGE_CLEAN) {
			err = make_dirty(p);
			if (err)
				return err;
		}
		err = rec ? make_writable(rec)
			  : map_page(v, p, PROT_READ | PROT_WRITE);
	} else if (p->patched) {
		err = map_patched(v, p);
	} else if (p->state == PAGE_BASE) {
		/* Map the run of following base blocks that continue this
		 * one's range (read ahead) with the same mmap.  A sequential
		 * read gets its page tables filled; a random one pays only
		 * for the pages it touches. */
		struct page *run[64];
		uint64_t n = 1, i;
		bool seq = idx > 0 && oc_pagemap_get(&v->maps, idx - 1);
		run[0] = p;
		while (n < 64 && idx + n < v->pglen) {
			struct page *q = oc_pagemap_get(&fh->pages, blk + n);
			if (!q || q->state != PAGE_BASE || q->base_fd != p->base_fd ||
			    q->base_off != p->base_off + (n << ram->pageshift) ||
			    oc_pagemap_get(&v->maps, idx + n))
				break;
			run[n++] = q;
		}
		err = map_run(v, run, n, PROT_READ, seq);
		for (i = n; i-- > 1;)
			lru_touch(run[i]);
	} else {
		err = map_page(v, p, p->state == PAGE_DIRTY
					     ? PROT_READ | PROT_WRITE
					     : PROT_READ);
	}
	lru_touch(p);
	return err;
}

/* An instruction that needs two pages at once faults on one, then on
 * the other.  When the budget has room for one of them only, loading the
 * second reclaims the first, the instruction restarts and faults on the
 * first again, for ever.  So the page of this thread's last fault is kept
 * (off its LRU list, out of reclaim's reach) while the next one is
 * served, when they are one instruction's: within SPAN_MAX bytes of each
 * other (an unaligned load across a block boundary), or at the same
 * instruction, which faults again on the block it faulted on before the
 * last (a string instruction between two blocks far apart: the second
 * round keeps both).  The budget is exceeded by that page when nothing
 * else can go.  A scan's faults are a block apart, never on one it left
 * two faults ago: it keeps nothing.  Pages are found again from their
 * addresses (they may be gone: nothing dangles). */
#define SPAN_MAX 256
static __thread struct {
	uintptr_t addr, ip;    /* this thread's last fault */
	uintptr_t before;      /* the one before it */
} last;

/* The page of the block shown at addr in v, or at addr (lock held), or
 * NULL. */
static struct page *page_in(const struct oc_vma *v, uintptr_t addr)
{
	return oc_pagemap_get(&v->fh->pages,
			      v->pgoffset + ((addr - v->start) >>
					     v->fh->ram->pageshift));
}

static struct page *page_at(uintptr_t addr)
{
	struct oc_vma *v = lookup_locked(addr);

	return v ? page_in(v, addr) : NULL;
}

/* Whether the fault at addr, in v, at instruction ip, is the same
 * instruction's as this thread's last one (see SPAN_MAX). */
static bool same_instruction(const struct oc_vma *v, uintptr_t addr,
			     uintptr_t ip)
{
	uintptr_t prev = last.addr, b = last.before;
	unsigned shift = v->fh->ram->pageshift;

	if ((addr > prev ? addr - prev : prev - addr) < SPAN_MAX)
		return true;
	return ip && ip == last.ip && b >= v->start && b < v->stop &&
	       (addr - v->start) >> shift == (b - v->start) >> shift;
}

int _oc_serve(uintptr_t addr, int write, struct oc_fault_info *fi)
{
	uintptr_t prev = last.addr;
	struct page *keep = NULL;
	struct oc_vma *v;
	int r;

	_oc_lock();
	v = lookup_locked(addr);
	if (v && prev && same_instruction(v, addr, fi->ip) &&
	    (keep = page_at(prev)) != NULL) {
		/* on an LRU list: reclaim's (or bound_maps') to take */
		if (keep != page_in(v, addr) && oc_list_linked(&keep->lru))
			oc_list_del(&keep->lru);
		else
			keep = NULL;
	}
	for (;;) {
		if (!v) {
			r = 1;
			break;
		}
		r = fault_page(v, addr, write, fi);
		if (r != RETRY)
			break;
		v = lookup_locked(addr); /* the lock may have been dropped */
	}
	/* Back on its list.  The lock may have been dropped meanwhile, and
	 * the page dropped by another thread: only the page still there. */
	if (keep && page_at(prev) == keep && keep->state != PAGE_LOADING &&
	    !oc_list_linked(&keep->lru))
		lru_touch(keep);
	last.before = prev;
	last.addr = addr;
	last.ip = fi->ip;
	_oc_unlock();
	return r;
}

/* ---- handles ----------------------------------------------------------- */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void fork_prepare(void);
static void fork_parent(void);
static void fork_child(void);

static void core_init(void)
{
	long m = _oc_os_max_map_count();
	/* Each of our mappings may cost two kernel mappings; keep half of
	 * the kernel's limit for the rest of the program. */
	map_limit = m / 4 > 1024 ? (uint64_t)(m / 4) : 1024;
	total_limit = m > 16384 ? (uint64_t)m - 8192 : (uint64_t)m / 2;
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int oc_fileh_open(oc_fileh_t **out, oc_file_t *file, oc_ram_t *ram)
{
	oc_fileh_t *fh;
	int err;

	if (!out || !file || !file->ops)
		return -EINVAL;
	pthread_once(&init_once, core_init);
	err = oc_pagefault_install();
	if (err)
		return err;
	if (!ram) {
		err = oc_ram_default(file->blksize, &ram);
		if (err)
			return err;
	}
	if (ram->gen != _oc_gen)
		return OC_EFORKED;
	if (file->blksize != ram->pagesize)
		return OC_EBLKSIZE;
	fh = calloc(1, sizeof *fh);
	if (!fh)
		return -ENOMEM;
	oc_pagemap_init(&fh->pages);
	oc_pagemap_init(&fh->dirty);
	oc_list_init(&fh->vmas);
	fh->file = file;
	fh->ram = ram;
	fh->gen = _oc_gen;
	fh->writeout_gen = 1;
	oc_file_get(file);
	_oc_lock();
	_oc_ram_ref(ram);
	nfileh_open++;
	oc_list_add_tail(&all_fh, &fh->link);
	_oc_unlock();
	*out = fh;
	return 0;
}

int _oc_file_cut(oc_file_t *file, uint64_t blk, uint64_t *size,
		 uint64_t new_size)
{
	struct oc_list *e;
	struct page *p;
	uint64_t k;
	int pass, err = 0;

	_oc_lock();
	/* Pass 0 looks, pass 1 drops: all or nothing.  The new size is
	 * published in between, so that a refused cut never showed it to a
	 * load, and no load after the cut maps past it. */
	for (pass = 0; pass < 2 && !err; pass++) {
		if (pass == 1)
			__atomic_store_n(size, new_size, __ATOMIC_RELEASE);
		for (e = all_fh.next; e != &all_fh && !err; e = e->next) {
			oc_fileh_t *fh = oc_container_of(e, oc_fileh_t, link);
			if (fh->file != file || fh->gen != _oc_gen)
				continue;
			if (pass == 0 && (fh->writeout || fh->nbusy))
				err = -EBUSY;
			if (pass == 1)
				fh->inval_gen++; /* read ahead in flight: keep none */
			for (k = blk; !err && (p = oc_pagemap_next(&fh->pages, &k));
			     k++) {
				if (pass == 0 && (p->state == PAGE_DIRTY ||
						  p->state == PAGE_LOADING ||
						  p->state == PAGE_LOADING_INVAL ||
						  p->busy))
					err = -EBUSY;
				else if (pass == 1)
					_oc_page_drop(p, false);
				if (k == UINT64_MAX)
					break;
			}
		}
	}
	_oc_unlock();
	return err;
}

bool _oc_fileh_busy(const oc_fileh_t *fh)
{
	return fh->gen == _oc_gen && (fh->nvmas || fh->writeout || fh->nbusy);
}

int oc_fileh_close(oc_fileh_t *fh)
{
	uint64_t k;
	struct page *p;
	oc_file_t *file;

	if (!fh)
		return 0;
	_oc_lock();
	if (fh->gen != _oc_gen) {
		_oc_unlock();
		return 0; /* inherited across fork: forget it */
	}
	if (_oc_fileh_busy(fh)) {
		_oc_unlock();
		return -EBUSY;
	}
	for (k = 0; (p = oc_pagemap_next(&fh->pages, &k)); k++) {
		_oc_page_drop(p, false);
		if (k == UINT64_MAX)
			break;
	}
	oc_pagemap_clear(&fh->pages);
	oc_pagemap_clear(&fh->dirty);
	_oc_ram_unref(fh->ram);
	nfileh_open--;
	oc_list_del(&fh->link);
	file = fh->file;
	_oc_unlock();
	free(fh);
	oc_file_put(file);
	return 0;
}

oc_file_t *oc_fileh_file(const oc_fileh_t *fh)
{
	return fh ? fh->file : NULL;
}

oc_ram_t *oc_fileh_ram(const oc_fileh_t *fh)
{
	return fh ? fh->ram : NULL;
}

/* ---- mappings ---------------------------------------------------------- */

int oc_fileh_mmap(oc_fileh_t *fh, uint64_t pgoffset, uint64_t pglen,
		  oc_vma_t **out)
{
	struct oc_vma *v;
	unsigned shift;
	size_t len, align;
	void *addr;
	int err;

	if (!fh || !out || pglen == 0)
		return -EINVAL;
	if (fh->gen != _oc_gen)
		return OC_EFORKED;
	shift = fh->ram->pageshift;
	if (pgoffset + pglen < pgoffset ||
	    pgoffset + pglen > ((uint64_t)1 << 63) >> shift)
		return -EINVAL;
	if (pglen > (SIZE_MAX >> shift) / 2)
		return -ENOMEM;
	len = (size_t)pglen << shift;
	align = fh->ram->pagesize;
	if (len >= ((size_t)2 << 20) && align < ((size_t)2 << 20))
		align = (size_t)2 << 20;
	/* room for the reservation and two thousand page mappings */
	_oc_lock();
	err = nreg + 1 + 2048 > total_limit ? OC_EMAPLIMIT : 0;
	_oc_unlock();
	if (err)
		return err;
	err = _oc_os_reserve(len, align, &addr);
	if (err)
		return err;
	v = calloc(1, sizeof *v);
	if (!v) {
		_oc_os_release(addr, len);
		return -ENOMEM;
	}
	v->start = (uintptr_t)addr;
	v->stop = v->start + len;
	v->pgoffset = pgoffset;
	v->pglen = pglen;
	v->fh = fh;
	v->gen = fh->gen;
	v->reserved_addr = addr;
	v->reserved_len = len;
	oc_pagemap_init(&v->maps);
	_oc_lock();
	err = reg_insert(v);
	if (!err) {
		oc_list_add_tail(&fh->vmas, &v->fh_link);
		fh->nvmas++;
	}
	_oc_unlock();
	if (err) {
		_oc_os_release(addr, len);
		free(v);
		return err;
	}
	*out = v;
	return 0;
}

int oc_vma_unmap(oc_vma_t *v)
{
	struct maprec *r;
	uint64_t k;

	if (!v)
		return 0;
	_oc_lock();
	if (v->gen != _oc_gen) {
		_oc_unlock();
		return 0; /* inherited across fork: forget it */
	}
	reg_remove(v);
	for (k = 0; (r = oc_pagemap_next(&v->maps, &k)); k++) {
		struct page *p = r->page;
		unmap_rec(r, false);
		/* A base block shown nowhere costs nothing to reload. */
		if (p->state == PAGE_BASE && p->nmaps == 0)
			_oc_page_drop(p, false);
		if (k == UINT64_MAX)
			break;
	}
	oc_pagemap_clear(&v->maps);
	oc_list_del(&v->fh_link);
	v->fh->nvmas--;
	_oc_unlock();
	_oc_os_release(v->reserved_addr, v->reserved_len);
	free(v);
	return 0;
}

void *oc_vma_addr(const oc_vma_t *v)
{
	return v ? (void *)v->start : NULL;
}

size_t oc_vma_len(const oc_vma_t *v)
{
	return v ? v->stop - v->start : 0;
}

uint64_t oc_vma_pgoffset(const oc_vma_t *v)
{
	return v ? v->pgoffset : 0;
}

oc_fileh_t *oc_vma_fileh(const oc_vma_t *v)
{
	return v ? v->fh : NULL;
}

void oc_vma_set_user(oc_vma_t *v, void *user)
{
	v->user = user;
}

void *oc_vma_user(const oc_vma_t *v)
{
	return v ? v->user : NULL;
}

/* ---- writeout, discard, invalidate ------------------------------------- */

/* Take the lock for a call that needs the handle alive in this process
 * and not being written out.  Returns 0, OC_EFORKED or -EBUSY; the lock is
 * held in every case. */
static int lock_idle(oc_fileh_t *fh)
{
	_oc_lock();
	if (fh->gen != _oc_gen)
		return OC_EFORKED;
	if (fh->writeout)
		return -EBUSY;
	return 0;
}

/* Store patched page p (lock held; dropped while the file op runs): show
 * it read-only at a scratch address of our own (*scratch, reserved on
 * first use) and give the file that, with the granules that changed. */
static int store_patched(oc_fileh_t *fh, struct page *p, void **scratch)
{
	oc_ram_t *ram = fh->ram;
	oc_file_t *file = fh->file;
	uint32_t changed = p->sub;
	int err = 0;

	if (!*scratch) {
		err = _oc_os_reserve(ram->pagesize, ram->pagesize, scratch);
		if (err) {
			*scratch = NULL;
			return err;
		}
	}
	err = show_patched(ram, p, *scratch, PROT_READ);
	if (err)
		goto out;
	p->busy++;
	_oc_unlock();
	_oc_in_op = fh;
	if (file->ops->version >= 2 && file->ops->storeblk_part)
		err = file->ops->storeblk_part(file, p->blk, *scratch, changed,
					       ram->granule);
	else
		err = file->ops->storeblk(file, p->blk, *scratch);
	err = normalize(err);
	_oc_in_op = NULL;
	_oc_lock();
	p->busy--;
out:
	_oc_os_unmap_to_reserve(*scratch, ram->pagesize);
	if (err)
		ram->st.store_errors++;
	else
		ram->st.stores++;
	return err;
}

int oc_fileh_writeout(oc_fileh_t *fh, int flags)
{
	oc_file_t *file;
	oc_ram_t *ram;
	struct page *p;
	uint64_t k, store_gen;
	void *scratch = NULL;
	int err = 0;

	if (!fh || !flags || (flags & ~(OC_WRITEOUT_STORE | OC_WRITEOUT_MARKSTORED)))
		return -EINVAL;
	if (fh->owned_writeout && !fh->owner_writing)
		return -EPERM; /* a store's: only its commit writes out */
	file = fh->file;
	ram = fh->ram;
	err = lock_idle(fh);
	if (err)
		goto out;
	if ((flags & OC_WRITEOUT_STORE) && !file->ops->storeblk) {
		err = -EROFS;
		goto out;
	}
	/* Pages dirtied from here on carry a later generation: they are
	 * neither stored nor marked by this writeout. */
	store_gen = fh->writeout_gen;
	if (flags & OC_WRITEOUT_STORE) {
		fh->store_gen = store_gen;
		fh->store_pending = true;
	} else if (fh->store_pending) {
		store_gen = fh->store_gen;
	}
	fh->writeout_gen++;
	fh->writeout = true;

	for (k = 0; (p = oc_pagemap_next(&fh->dirty, &k)); k++) {
		if (p->dirty_gen > store_gen)
			goto next;
		if ((flags & OC_WRITEOUT_STORE) && p->patched) {
			err = store_patched(fh, p, &scratch);
			if (err)
				break;
		} else if (flags & OC_WRITEOUT_STORE) {
			bool warm = ram->warm[p->slot] != 0, tmp = false;
			void *buf = warm ? _oc_ram_slot_addr(ram, (uint64_t)p->slot)
					 : get_bounce(ram->pagesize, &tmp);
			uint64_t slot = (uint64_t)p->slot;
			if (!buf) {
				err = -ENOMEM;
				break;
			}
			p->busy++;
			_oc_unlock();
			if (!warm)
				err = _oc_os_pread_all(ram->fd, buf, ram->pagesize,
						       slot << ram->pageshift);
			if (!err) {
				_oc_in_op = fh;
				err = normalize(file->ops->storeblk(file, p->blk, buf));
				_oc_in_op = NULL;
			}
			if (!warm)
				put_bounce(buf, ram->pagesize, tmp);
			_oc_lock();
			p->busy--;
			if (err) {
				ram->st.store_errors++;
				break;
			}
			ram->st.stores++;
		}
		if (flags & OC_WRITEOUT_MARKSTORED)
			mark_clean(p);
next:
		if (k == UINT64_MAX)
			break;
	}
	if (!err && (flags & OC_WRITEOUT_MARKSTORED))
		fh->store_pending = false;
	fh->writeout = false;
	if (scratch)
		_oc_os_release(scratch, ram->pagesize);
out:
	_oc_unlock();
	return err;
}

int oc_fileh_discard(oc_fileh_t *fh)
{
	struct page *p;
	uint64_t k;
	int err = 0;

	if (!fh)
		return -EINVAL;
	err = lock_idle(fh);
	if (err)
		goto out;
	for (k = 0; (p = oc_pagemap_next(&fh->dirty, &k)); k++) {
		_oc_page_drop(p, false);
		if (k == UINT64_MAX)
			break;
	}
	fh->store_pending = false;
out:
	_oc_unlock();
	return err;
}

int oc_fileh_invalidate(oc_fileh_t *fh, uint64_t blk)
{
	struct page *p;
	int err = 0;

	if (!fh)
		return -EINVAL;
	err = lock_idle(fh);
	if (err)
		goto out;
	fh->inval_gen++;
	p = oc_pagemap_get(&fh->pages, blk);
	if (!p)
		goto out;
	if (p->state == PAGE_LOADING) {
		/* The loader throws its result away and the faulting access
		 * retries with a fresh load. */
		p->state = PAGE_LOADING_INVAL;
		oc_pagemap_del(&fh->pages, blk);
		goto out;
	}
	_oc_page_drop(p, false);
out:
	_oc_unlock();
	return err;
}

int oc_fileh_isdirty(oc_fileh_t *fh)
{
	int d;

	if (!fh)
		return -EINVAL;
	_oc_lock();
	if (fh->gen != _oc_gen) {
		_oc_unlock();
		return OC_EFORKED;
	}
	d = fh->dirty.count != 0;
	_oc_unlock();
	return d;
}

int64_t oc_fileh_dirty_blocks(oc_fileh_t *fh, uint64_t *blks, uint64_t max)
{
	uint64_t k = 0, n = 0, got[64];
	unsigned m;
	struct page *p;
	bool more = true;

	if (!fh || (max && !blks))
		return -EINVAL;
	/* In batches, written to blks with the lock released: blks may be
	 * managed memory not loaded yet, whose fault needs the lock. */
	while (more) {
		m = 0;
		_oc_lock();
		if (fh->gen != _oc_gen) {
			_oc_unlock();
			return OC_EFORKED;
		}
		more = false;
		for (; (p = oc_pagemap_next(&fh->dirty, &k)); k++) {
			if (n + m < max) {
				if (m == sizeof got / sizeof got[0]) {
					more = true;
					break;
				}
				got[m] = k;
			}
			m++;
			if (k == UINT64_MAX)
				break;
		}
		_oc_unlock();
		for (unsigned i = 0; i < m && n + i < max; i++)
			blks[n + i] = got[i];
		n += m;
	}
	return (int64_t)n;
}

/* ---- explicit loading ------------------------------------------------- */

int oc_fileh_load(oc_fileh_t *fh, uint64_t blk, uint64_t n)
{
	uint64_t b;
	int r = 0;

	if (!fh || blk + n < blk)
		return -EINVAL;
	if (fh->gen != _oc_gen)
		return OC_EFORKED;
	_oc_lock();
	for (b = blk; b < blk + n; b++) {
		for (;;) {
			struct page *p = oc_pagemap_get(&fh->pages, b);
			if (!p) {
				if (_oc_in_op == fh) {
					r = -EDEADLK;
					goto out;
				}
				r = load_page(fh, b, 0, false, false);
				if (r == RETRY)
					continue;
				goto out;
			}
			if (p->state == PAGE_LOADING) {
				if (_oc_in_op == fh) {
					r = -EDEADLK;
					goto out;
				}
				_oc_wait();
				continue;
			}
			lru_touch(p);
			break;
		}
	}
	r = 0;
out:
	_oc_unlock();
	return r;
}

int oc_prefault(void *addr, size_t len, int flags)
{
	uintptr_t a = (uintptr_t)addr, end = a + len;
	struct oc_fault_info fi = {0, 0, NULL};
	int r;

	if (flags & ~OC_PREFAULT_WRITE)
		return -EINVAL;
	if (end < a)
		return -EINVAL;
	while (a < end) {
		struct oc_vma *v;
		uintptr_t ps, next;
		bool inh;
		_oc_lock();
		v = lookup_locked(a);
		inh = !v && _oc_addr_inherited(a);
		_oc_unlock();
		if (inh)
			return OC_EFORKED;
		if (!v) {
			a = (a | 4095) + 1;
			continue;
		}
		if (v->gen != _oc_gen)
			return OC_EFORKED;
		ps = v->fh->ram->pagesize;
		next = (a & ~(ps - 1)) + ps;
		r = _oc_serve(a, (flags & OC_PREFAULT_WRITE) ? 1 : 0, &fi);
		if (r < 0)
			return r;
		/* A known read on a page already mapped is done. */
		a = next;
	}
	return 0;
}

/* ---- fork -------------------------------------------------------------- */

static void fork_prepare(void)
{
	struct oc_list *e;
	size_t i;

	_oc_lock();
	/* Keep managed memory out of the child: it must never write into
	 * our RAM pages through inherited shared mappings. */
	for (i = 0; i < nreg; i++)
		madvise(reg[i]->reserved_addr, reg[i]->reserved_len, MADV_DONTFORK);
	for (e = _oc_rams.next; e != &_oc_rams; e = e->next) {
		oc_ram_t *ram = oc_container_of(e, oc_ram_t, link);
		uint64_t c;
		for (c = 0; c < ram->nchunks; c++)
			if (ram->chunks[c])
				madvise(ram->chunks[c],
					ram->chunk_slots * ram->pagesize,
					MADV_DONTFORK);
		/* a park may map the RAM's file (read-only) */
		for (c = 0; c < ram->nparks_made; c++)
			madvise(ram->parks_made[c], ram->pagesize,
				MADV_DONTFORK);
	}
}

static void fork_parent(void)
{
	_oc_unlock();
}

static void fork_child(void)
{
	size_t i;

	_oc_gen++;
	/* Remember the inherited ranges (for a clear message when the child
	 * touches one) and forget the mappings. */
	free(inherited);
	inherited = nreg ? malloc(nreg * sizeof *inherited) : NULL;
	ninherited = 0;
	for (i = 0; inherited && i < nreg; i++) {
		inherited[i].start = reg[i]->start;
		inherited[i].stop = reg[i]->stop;
		ninherited++;
	}
	nreg = 0;
	nmaps = 0;
	nfileh_open = 0;
	oc_list_init(&all_fh); /* inherited handles are forgotten */
	_oc_ram_forget_in_child();
	pthread_mutex_init(&core_lock, NULL);
	pthread_cond_init(&core_cond, NULL);
}
