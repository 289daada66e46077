"""A process's native heap: fewer glibc malloc arenas, and freed memory handed back.

Every thread that allocates (uvicorn's loop, the scorer, the anyio workers, XLA's compile and
Eigen threads) may get a glibc arena of its own, up to 8 per core, and memory freed in one
(a compile's or a large backbone call's temporaries) is reused only by that arena and stays
resident. Two arenas serve this process's threads (little is allocated on the request path),
and :func:`release_free_heap` returns free heap pages after a warm-up or a large call
(docs/PROFILING.md, "Ranking at the floor, half the memory"). The trainer returns it after
each stage: glibc otherwise keeps what a stage freed (the data stage's frames, the encode's
token batches, evaluation's scores), and the next stage's allocations come on top of pages
nobody uses. Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
DEFAULT_ARENAS = 2


@functools.cache
def c_library() -> ctypes.CDLL | None:
    """The process's C library, looked up once (``find_library`` runs ``ldconfig -p`` as a
    child process: a trim must not pay for that each time), with ``errno`` kept for its
    callers (``ctypes.get_errno``); None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _glibc() -> ctypes.CDLL | None:
    """:func:`c_library` where it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    libc = c_library()
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``MALLOC_ARENA_MAX`` when the environment sets it, else at
    ``arenas``, for this process (threads created from now on: call it before they start)
    and for the processes it starts (the variable is set for them, e.g. uvicorn's workers).
    Returns whether this process's cap was applied."""
    chosen = os.environ.get("MALLOC_ARENA_MAX") or str(int(arenas))
    os.environ["MALLOC_ARENA_MAX"] = chosen
    libc = _glibc()
    try:
        return bool(libc is not None and libc.mallopt(M_ARENA_MAX, int(chosen)) == 1)
    except ValueError:  # not a number: glibc ignores it too
        return False


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system (``malloc_trim(0)``): after a
    warm-up, the compiles' temporaries. Returns whether anything was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
