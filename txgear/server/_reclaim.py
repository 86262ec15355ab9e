# -*- test-case-name: tests.test_reclaim -*-
"""
Giving memory back to the system once peers have left.

Python frees a closed connection's buffers and a forgotten job at once, but
that does not by itself shrink the process: glibc's malloc keeps freed
blocks for reuse, and raises the size above which it maps large blocks
separately (and unmaps them when freed) each time such a block is freed, so
after a burst of large packets later large buffers come from the heap and
stay. PyPy's collector only runs when its heap has grown well past its last
size, and what it frees goes back to glibc's malloc, not to the system (its
small objects live in arenas taken from malloc): after a drain of a
million jobs, a PyPy process holding the server's state stayed at 540 MiB
from 98 until C{malloc_trim}.
Both are tuned here, once, by the server process (C{twistd gearman});
library users of the server keep their process's own settings.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
from typing import Any, Callable, Optional

#: Blocks at least this large are mapped on their own and unmapped when freed.
MMAP_THRESHOLD = 128 * 1024

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> Optional[Any]:
    """glibc, through ctypes (CPython and PyPy), or C{None} elsewhere."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


def tuneAllocator() -> bool:
    """
    Map large blocks (packet bodies, output pieces) on their own at a fixed
    threshold, so freeing them returns their memory at once, and trim the
    heap's free top above 1 MiB. Returns whether the allocator was tuned.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024))


def reclaimer() -> Optional[Callable[[], None]]:
    """
    What to call when much of the server's state was just freed (a large
    queue drained, most of a large function table forgotten): on PyPy a full
    collection, then C{malloc_trim} with glibc (the collection gives the
    memory to malloc only); C{malloc_trim} on CPython with glibc; C{None}
    where neither applies.
    """
    libc = _libc()
    if platform.python_implementation() == "PyPy":
        pypyTrim = libc.malloc_trim if libc is not None else None

        def collect() -> None:
            gc.collect()
            if pypyTrim is not None:
                pypyTrim(0)

        return collect
    if libc is None:
        return None
    trim = libc.malloc_trim

    def trimHeap() -> None:
        trim(0)

    return trimHeap


__all__ = ["MMAP_THRESHOLD", "reclaimer", "tuneAllocator"]
