/* outcore: out-of-core arrays on a userspace virtual memory manager.
 * Copyright (C) 2026 the outcore developers.
 * SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
 *
 * outcore.h: the whole public C API.  Include this one header.
 *
 *   common.h   error codes, oc_strerror, oc_parse_size
 *   pagemap.h  uint64 -> pointer radix tree
 *   ram.h      RAM: pages, budget, reclaim, statistics
 *   file.h     the file interface (loadblk/storeblk/mapblk) and the
 *              backends that come with the library (in-RAM, plain file)
 *   virtmem.h  file handles, mappings, page faults, writeout, prefault
 *   store.h    transactional stores of named arrays (commit, abort)
 */
#ifndef OUTCORE_OUTCORE_H
#define OUTCORE_OUTCORE_H

#include <outcore/common.h>
#include <outcore/pagemap.h>
#include <outcore/ram.h>
#include <outcore/file.h>
#include <outcore/virtmem.h>
#include <outcore/store.h>

#endif
