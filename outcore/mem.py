# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""Memory helpers for writing backends: fill and copy buffers at memory speed.

Each takes any object with the buffer protocol (bytearray, memoryview,
contiguous NumPy arrays, a VMA) and runs in C, releasing the GIL for large
buffers.  They touch managed memory like any other code: pages load (and
dirty) on first touch.
"""
from ._core import bzero, memcpy, memset

__all__ = ["bzero", "memset", "memcpy"]
