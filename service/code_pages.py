"""The XLA compiler's code pages, handed back once a warm-up has compiled every shape.

jaxlib's shared library holds XLA's compiler (its passes, LLVM, MLIR) next to its runtime.
Compiling or loading an executable reads about 100 MiB of that code into the process, and
the pages stay mapped after the last compile although serving runs only the runtime's part
(about 15 MiB). They are clean pages of a file, so the kernel can drop them at any time and
read them again if a later compile needs them; :func:`release_compiler_code` asks it to do so
now (``madvise(MADV_PAGEOUT)`` over jaxlib's read-only file mappings), after the background
warm-up (service/warmup.py). The service then holds what it reads: 110 -> 15 MiB of jaxlib
after the memory benchmark's traffic (docs/PROFILING.md, "Sixth pass"). Pages another
process maps too (the other ``--workers``) stay until the last one releases them. A no-op
(0) where the kernel or C library lacks ``MADV_PAGEOUT`` (Linux before 5.4, other systems).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # linux/mman.h (Linux 5.4)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "madvise") else None


def library_mappings(directory: Path, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """``(start, length)`` of this process's read-only mappings of files under ``directory``
    (code and constants; written pages of a library are private copies, not its file's).
    Empty where ``maps`` cannot be read."""
    prefix = str(directory.resolve()) + "/"
    out = []
    try:
        with open(maps) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or not parts[5].startswith(prefix) or "w" in parts[1]:
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end - start))
    except OSError:
        return []
    return out


def release_compiler_code() -> int:
    """Page out jaxlib's code pages from this process; bytes advised (0 if unsupported).

    Safe at any time: a page read again is read back from the file (a compile after this
    costs a few milliseconds more)."""
    import jaxlib

    libc = _libc()
    if libc is None:
        return 0
    advised = 0
    for start, length in library_mappings(Path(jaxlib.__file__).parent):
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_PAGEOUT) != 0:
            log.debug("madvise(MADV_PAGEOUT) refused (errno %d)", ctypes.get_errno())
            return advised
        advised += length
    return advised
