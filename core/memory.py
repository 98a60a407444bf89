"""Giving the C allocator's freed memory back to the system after a burst.

glibc's malloc keeps what a thread frees in that thread's arena (one per thread, up to 8 a
core), for the thread's next allocations; it returns only a free top of the main heap by itself.
A burst of large allocations (a mesh catch-up: a few thousand entries of ~4 KB parsed, checked
and stored per transaction, on a pool's threads) leaves every arena it touched at its high-water
mark, free inside and still resident: an outside tester's node sat at 326 MB after receiving a
42 MB corpus, 74 MB once restarted, and `malloc_trim(0)` in it gave back all but ~54 MB.
`give_back()` asks for that memory to be returned (every arena: free pages inside one too,
glibc >= 2.8); elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # no C library to load, or not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def give_back() -> bool:
    """Return the allocator's free memory to the system; whether anything was (False where
    the C library cannot). Takes ~1 ms per 100 MB held: for after a burst, not per call."""
    fn = _trim()
    return bool(fn(0)) if fn is not None else False
