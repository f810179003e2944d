"""Giving the memory a large cycle freed back to the system.

A first sync of a large directory builds and drops a few hundred MB of
objects. The C library keeps what was freed in its heaps for later, so the
process's resident size stays at that peak although Python no longer uses
it. glibc's ``malloc_trim`` hands the free pages back; other C libraries
(musl) have no such call, and there this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C library's free heap pages to the system; whether any were returned."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))
