"""Memory helpers for writing backends: fill and copy buffers at memory speed.

Each takes any object with the buffer protocol (bytearray, memoryview,
contiguous NumPy arrays, a VMA) and runs in C, releasing the GIL for large
buffers.  They touch managed memory like any other code: pages load (and
dirty) on first touch.
"""
from ._core import bzero, memcpy, memset

__all__ = ["bzero", "memset", "memcpy"]
