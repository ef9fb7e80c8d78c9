/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * virtmem.h: file handles, mappings, page faults and writeout.
 *
 * A file handle (oc_fileh_t) is one view of a file with its own local
 * modifications: a snapshot of the file's blocks plus the dirty pages this
 * handle wrote.  A mapping (oc_vma_t) shows a range of a handle's blocks in
 * the address space.  Memory of a mapping starts inaccessible; the first
 * access to each page is served by outcore's SIGSEGV handler:
 *
 *   read of an unloaded page   load the block once (loadblk into a RAM
 *                              page, or map the file's base layer), map
 *                              it read-only;                 -> clean
 *   write to a clean page      mark it dirty, map it writable;  -> dirty
 *                              (a base-layer block: see below)
 *   write to an unloaded page  load, then dirty.
 *
 * Partial copy-on-write.  A write to a block mapped from a file's base
 * layer copies only the granule it hits (1/32 of the block, at least an OS
 * page: 64 KiB of a 2 MiB block) into RAM and maps that granule writable
 * over the read-only base: the block is "patched" (dirty).  Writing 64 KiB
 * at 1,000 places of a big array so keeps 64 MiB in RAM, not 2 GiB of
 * whole blocks, and writeout tells the file which granules changed
 * (storeblk_part in file.h), so that it writes only those.  Once a quarter
 * of its granules are written, a block is copied whole into a RAM page (a
 * bound on the kernel mappings it takes).  A patched block counts its base
 * in the RAM budget while it is mapped; reclaim may unmap it (its data
 * stays: it is dirty).  When marked stored it is dropped: the file gives
 * its new content.  RAM without pwrite (hugetlb) copies whole blocks.
 *
 * Page states, per handle and block:
 *
 *   EMPTY --load--> LOADING --done--> CLEAN --write--> DIRTY
 *                      |                 ^               |
 *                  invalidate            +--markstored---+
 *                      v                 (reclaim, discard, invalidate:
 *                 LOADING_INVALIDATED     back to EMPTY)
 *   EMPTY --mapblk--> BASE (clean, mapped from the file) --write--> DIRTY
 *                                         (patched, or a whole RAM page)
 *
 * Several mappings of one handle may overlap in the file; they then share
 * pages (a write through one is seen through the other).  Unmapping keeps
 * dirty pages: they stay in the handle until written out or discarded.
 *
 * Writeout has two phases, so that a transactional store can call storeblk
 * for every dirty block, commit, and only then mark the pages stored:
 *   OC_WRITEOUT_STORE       storeblk() for every dirty page, ascending block
 *                           order; pages stay dirty;
 *   OC_WRITEOUT_MARKSTORED  every dirty page becomes clean and read-only in
 *                           every mapping, without storing;
 *   both                    one pass: store each page, then mark it.
 * Between a STORE and the MARKSTORED that follows, the caller must not
 * modify the handle's memory: a page that becomes dirty meanwhile (a write
 * to a clean page) stays dirty, but a write to an already dirty page cannot
 * be seen by outcore and would be marked stored.
 *
 * Faults the SIGSEGV handler cannot return errors for.  A loadblk error
 * inside a fault is retried (OC_LOAD_RETRIES times, with a short pause);
 * if it still fails, the process is stopped with SIGBUS after a message on
 * stderr naming the file, the block and the error, which is what the
 * kernel does when a read through a file mapping fails.  Callers who want
 * errors as return codes, and callers that pass mapped memory to system
 * calls (which fail with EFAULT on unloaded pages instead of faulting), load
 * the range first with oc_prefault().
 *
 * fork().  A child process sees nothing of its parent's managed memory:
 * every mapping and the RAM windows are excluded from the child
 * (MADV_DONTFORK), so a child can never write into the parent's RAM pages.
 * A child that touches inherited managed memory dies with SIGSEGV after a
 * message saying so; objects inherited from the parent refuse every call
 * with OC_EFORKED (closing/unmapping them only forgets them).  The child
 * opens what it needs anew.
 *
 * Threads.  All functions are thread-safe.  Several threads may fault at
 * once: the same page loads once (the others wait), different pages load in
 * parallel.  loadblk/storeblk/mapblk never run with the core lock held.
 * None of these functions is async-signal-safe.
 */
#ifndef OUTCORE_VIRTMEM_H
#define OUTCORE_VIRTMEM_H

#include <outcore/common.h>
#include <outcore/file.h>
#include <outcore/ram.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct oc_fileh oc_fileh_t;
typedef struct oc_vma oc_vma_t;

#define OC_WRITEOUT_STORE 0x1
#define OC_WRITEOUT_MARKSTORED 0x2

#define OC_LOAD_RETRIES 3

/* Open a handle of file on ram (NULL: the default RAM for the file's block
 * size, see oc_ram_default).  Installs the fault handler on first use.
 * Returns 0 and *out, or:
 *   OC_EBLKSIZE  the file's block size differs from the RAM's page size;
 *   -EINVAL      NULL file;
 *   -ENOMEM, or the errors of oc_ram_default / oc_pagefault_install.
 * The handle takes a reference to the file and to the RAM. */
OC_API int oc_fileh_open(oc_fileh_t **out, oc_file_t *file, oc_ram_t *ram);

/* Close a handle: drops every page, dirty ones included (their changes are
 * lost: write out first).  Returns 0, or -EBUSY if mappings of the handle
 * remain or a writeout is running (the handle stays open).  NULL is
 * accepted. */
OC_API int oc_fileh_close(oc_fileh_t *fh);

/* A handle's file and RAM (NULL for NULL). */
OC_API oc_file_t *oc_fileh_file(const oc_fileh_t *fh);
OC_API oc_ram_t *oc_fileh_ram(const oc_fileh_t *fh);

/* Map blocks [pgoffset, pgoffset + pglen) into the address space.  The
 * address range is reserved aligned to the page size (and to 2 MiB when it
 * is at least that long) and starts inaccessible; pages appear on first
 * touch.  Dirty pages of the handle appear there too.  Returns 0 and *out,
 * or -EINVAL (pglen 0, or the range reaching past 2^63 bytes of file),
 * -ENOMEM (no address space that large), OC_EMAPLIMIT (so many mappings
 * that the kernel's limit, vm.max_map_count, would leave too little room
 * for their pages), OC_EFORKED. */
OC_API int oc_fileh_mmap(oc_fileh_t *fh, uint64_t pgoffset, uint64_t pglen,
			 oc_vma_t **out);

/* Unmap a mapping and free it.  Dirty pages stay in the handle.
 * Returns 0 (NULL is accepted). */
OC_API int oc_vma_unmap(oc_vma_t *vma);

/* A mapping's address range and file range (NULL or 0 for NULL). */
OC_API void *oc_vma_addr(const oc_vma_t *vma);
OC_API size_t oc_vma_len(const oc_vma_t *vma);
OC_API uint64_t oc_vma_pgoffset(const oc_vma_t *vma);
OC_API oc_fileh_t *oc_vma_fileh(const oc_vma_t *vma);
/* A pointer the user may attach to the mapping (the Python binding keeps
 * its object there). */
OC_API void oc_vma_set_user(oc_vma_t *vma, void *user);
OC_API void *oc_vma_user(const oc_vma_t *vma);

/* The mapping containing addr, or NULL. */
OC_API oc_vma_t *oc_vma_lookup(const void *addr);

/* Write out dirty pages (flags: OC_WRITEOUT_STORE and/or
 * OC_WRITEOUT_MARKSTORED, at least one).  Returns 0, or:
 *   -EINVAL     bad flags;
 *   -EBUSY      another writeout of this handle is running;
 *   -EROFS      the file has no storeblk;
 *   -EPERM      a store's array handle (only oc_store_commit writes it);
 *   the first storeblk error: pages not yet stored stay dirty (with both
 *   flags, the pages stored before the failure are marked stored), nothing
 *   is lost, and the handle stays usable: retry or discard.
 * Must not be called from an op of the same handle. */
OC_API int oc_fileh_writeout(oc_fileh_t *fh, int flags);

/* Drop every dirty page: the next access reloads the stored data.
 * Returns 0, or -EBUSY during a writeout of this handle. */
OC_API int oc_fileh_discard(oc_fileh_t *fh);

/* Forget block blk (the file changed underneath): drop its page, dirty or
 * not, unmapping it everywhere.  If the block is being loaded, that load is
 * thrown away when it completes and the faulting access sees a fresh load.
 * Returns 0 (also when the block is not resident), or -EBUSY during a
 * writeout of this handle.  May be called from an op of another handle, or
 * from another thread while this handle's loadblk runs. */
OC_API int oc_fileh_invalidate(oc_fileh_t *fh, uint64_t blk);

/* Whether the handle has dirty pages (1 or 0), or -EINVAL (NULL),
 * OC_EFORKED. */
OC_API int oc_fileh_isdirty(oc_fileh_t *fh);

/* The dirty blocks in ascending order.  Stores up to max block numbers in
 * blks and returns how many there are in all (which may exceed max: call
 * again with a larger array), or -EINVAL, OC_EFORKED. */
OC_API int64_t oc_fileh_dirty_blocks(oc_fileh_t *fh, uint64_t *blks,
				     uint64_t max);

/* Load blocks [blk, blk + n) of a handle into RAM through the normal
 * return path: loadblk errors come back as return codes (no retries, no
 * SIGBUS).  Base-layer blocks are only checked to be mappable.  Returns 0
 * or the first error. */
OC_API int oc_fileh_load(oc_fileh_t *fh, uint64_t blk, uint64_t n);

#define OC_PREFAULT_WRITE 0x1

/* Make [addr, addr + len) of managed memory accessible without faults:
 * every page in the range is loaded (and dirtied with OC_PREFAULT_WRITE)
 * and mapped, as a touch of each page would do, but errors come back as
 * return codes.  Use before handing mapped memory to read(2)/write(2) and
 * other system calls.  Bytes outside managed memory are ignored.  The
 * pages stay accessible until reclaimed: keep the range within the budget.
 * Returns 0, -EINVAL (bad flags), or the first loadblk error. */
OC_API int oc_prefault(void *addr, size_t len, int flags);

/* Install the SIGSEGV handler (oc_fileh_open does it).  The handler
 * serves faults in managed memory and passes every other fault to the
 * handler installed before it, or, when there was none, restores the
 * default action so that the fault kills the process with a core dump at
 * the faulting instruction.  errno is preserved across a served fault.
 * Called again after another handler replaced ours (a crash reporter
 * installed later, Python's faulthandler.enable()), it puts ours back on
 * top, chaining to that one; otherwise it does nothing.  Not from a signal
 * handler.  Returns 0 or -errno from sigaction. */
OC_API int oc_pagefault_install(void);

/* Hooks a language binding registers so that the core releases the
 * binding's global lock (the Python GIL) while it waits for the core lock
 * or for another thread's load, and retakes it afterwards.  release()
 * returns a token handed back to reacquire(); it must do nothing and return
 * NULL when the calling thread does not hold the global lock.  Set once,
 * before any handle is opened; NULL removes them.  Returns 0, -EINVAL
 * (release without reacquire, or the reverse) or -EBUSY. */
typedef struct oc_lock_hooks {
	void *(*release)(void);
	void (*reacquire)(void *token);
} oc_lock_hooks_t;
OC_API int oc_set_lock_hooks(const oc_lock_hooks_t *hooks);

/* A handler the binding may register to be told, before the process is
 * stopped, that a load inside a page fault failed for good (the Python
 * binding prints the pending traceback there).  Called in the faulting
 * thread inside the signal handler.  NULL removes it. */
typedef void (*oc_fatal_hook_t)(const char *message);
OC_API void oc_set_fatal_hook(oc_fatal_hook_t hook);

#ifdef __cplusplus
}
#endif
#endif
