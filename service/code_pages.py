"""The XLA compiler's code pages, handed back once a warm-up has compiled every shape.

jaxlib's shared library holds XLA's compiler (its passes, LLVM, MLIR) next to its runtime.
Compiling or loading an executable reads about 100 MiB of that code into the process, and
the pages stay mapped after the last compile although serving runs only the runtime's part
(about 15 MiB). They are clean pages of a file, so the kernel can drop them at any time and
read them again if a later compile needs them; :func:`release_compiler_code` asks it to do so
now, after the background warm-up (service/warmup.py): ``madvise(MADV_DONTNEED)`` over
jaxlib's mappings that hold only the file's pages (not writable, nothing copied on write), so
they leave this process's page tables and are read again from the page cache if touched. The
service then holds what it runs: jaxlib 110 -> 15 MiB after the memory benchmark's traffic
(docs/PROFILING.md, "Sixth pass"). ``MADV_DONTNEED`` rather than ``MADV_PAGEOUT``: the kernel
pages out a file's pages only for a process that owns the file or may write it, and the
container's user (uid 10001) does neither for the root-owned venv; unmapped, the pages stay in
the page cache as reclaimable memory until the kernel needs it.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

from model.native_heap import c_library

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # linux/mman.h


@dataclass
class FileMapping:
    """One mapping of a file in ``/proc/PID/smaps``: where, its permissions, and its KiB
    resident and copied on write (None where smaps did not say)."""

    start: int
    length: int
    perms: str
    rss_kib: int = 0
    anonymous_kib: int | None = None

    @property
    def file_pages_only(self) -> bool:
        """Not writable, and no page copied on write: every resident page is the file's."""
        return "w" not in self.perms and self.anonymous_kib == 0


def file_mappings(directory: Path, smaps: str = "/proc/self/smaps") -> list[FileMapping]:
    """This process's mappings of files under ``directory`` (empty where ``smaps`` cannot be
    read)."""
    prefix = str(directory.resolve()) + "/"
    out: list[FileMapping] = []
    current: FileMapping | None = None
    try:
        with open(smaps) as f:
            for line in f:
                head = line.split(maxsplit=5)
                if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                    current = None
                    if len(head) > 5 and head[5].strip().startswith(prefix):
                        start, end = (int(x, 16) for x in head[0].split("-"))
                        current = FileMapping(start, end - start, head[1])
                        out.append(current)
                elif current is not None and head[0] == "Rss:":
                    current.rss_kib = int(head[1])
                elif current is not None and head[0] == "Anonymous:":
                    current.anonymous_kib = int(head[1])
    except OSError:
        return []
    return out


def library_mappings(directory: Path, smaps: str = "/proc/self/smaps") -> list[tuple[int, int]]:
    """``(start, length)`` of this process's mappings of files under ``directory`` that hold
    the files' pages only: not writable, and no page of them copied on write (``Anonymous:
    0 kB``; a library's relocated read-only data has such pages, and they are skipped)."""
    return [(m.start, m.length) for m in file_mappings(directory, smaps) if m.file_pages_only]


def resident_kib(directory: Path, smaps: str = "/proc/self/smaps") -> int:
    """KiB of files under ``directory`` resident in this process's mappings (0 if unknown)."""
    return sum(m.rss_kib for m in file_mappings(directory, smaps))


def release_compiler_code() -> int:
    """Unmap jaxlib's code pages from this process; KiB of jaxlib no longer resident.

    Safe at any time: a page read again is mapped again from the file (a compile after this
    costs a few milliseconds more). Returns 0 where the C library has no ``madvise``."""
    import jaxlib

    libc = c_library()
    directory = Path(jaxlib.__file__).parent
    if not hasattr(libc, "madvise"):  # None too
        return 0
    mappings = file_mappings(directory)
    for m in mappings:
        if not m.file_pages_only:
            continue
        if libc.madvise(ctypes.c_void_p(m.start), ctypes.c_size_t(m.length), MADV_DONTNEED):
            log.debug("madvise(MADV_DONTNEED) refused (errno %d)", ctypes.get_errno())
            break
    return max(0, sum(m.rss_kib for m in mappings) - resident_kib(directory))
