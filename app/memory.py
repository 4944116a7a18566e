"""Gives the memory a finished batch freed back to the operating system.

A batch's KV cache and activations are freed when it ends, but glibc keeps freed heap pages in its arenas,
so a long-running server's resident size would stay at the high-water mark of its largest batch and creep
with fragmentation. `malloc_trim(0)` returns every whole free page. Elsewhere (musl, macOS) this is a no-op.
"""
from __future__ import annotations

import ctypes


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """True when the allocator could hand pages back (glibc), False where there is no such call."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
