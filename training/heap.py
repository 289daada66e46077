"""Give freed heap memory back to the operating system between the stages of a run.

glibc's allocator keeps memory a stage freed (the data stage's frames, the encode stage's
token batches, evaluation's score arrays) in its arenas, so the process's resident size stays
at the largest stage's peak even when the next stage needs far less; the next stage's own
allocations then come on top of pages nobody uses. ``malloc_trim(0)`` (glibc >= 2.8) releases
every free page of every arena. Elsewhere (macOS, musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_heap() -> bool:
    """Return the allocator's free pages to the OS; True when glibc's ``malloc_trim`` ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
