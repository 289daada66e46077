"""An append-only JSON-lines log that is on disk before a request is answered.

Shared by the feedback log (``service/feedback_log.py``) and the catalog log
(``service/catalog.py``). One file per process (``<kind>-<host>-<pid>-<start>-<token>-<n>.jsonl``
under the log's directory), so replicas and workers never share a file. A batch of lines is
written with one ``write`` to a file opened for appending, then ``fsync``-ed (and the
directory too when the file is new), so an answered line survives a ``kill -9`` or a power
cut. Files are rotated by size and age.

A write that fails (full disk, read-only or vanished directory) raises :class:`LogWriteError`
naming the directory's setting: the request gets a 503 with the reason, nothing is
half-written (a partial write is cut off again), and the next write opens a fresh file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

from service.errors import LogWriteError

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"


class DurableLog:
    """Appends lines to this process's current file of one log.

    Args:
        directory: created if missing.
        kind: the first part of every file name (``feedback``, ``catalog``).
        setting: the setting that names ``directory``, for error messages
            (``LEVI_FEEDBACK_DIR``).
        rotate_bytes: a new file once the current one holds this many bytes.
        rotate_s: a new file once the current one is this old (seconds).
        error: the exception class raised when a write fails (a :class:`LogWriteError`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        kind: str,
        setting: str,
        rotate_bytes: int = 64 << 20,
        rotate_s: float = 3600,
        error: type[LogWriteError] = LogWriteError,
    ):
        self.directory = Path(directory)
        self.kind = kind
        self.setting = setting
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.error = error
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._sequence = 0
        # host, pid, start time and a random token: never another process's (or start's) name
        started = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        self.stem = f"{kind}-{_host()}-{os.getpid()}-{started}-{os.urandom(3).hex()}"

    @property
    def path(self) -> Path | None:
        """The file being appended to (None before the first write or after an error)."""
        return self._path

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        path = self.directory / f"{self.stem}-{self._sequence:04d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)  # the new file's entry survives a crash too
            except OSError as e:
                if e.errno != errno.EINVAL:  # some network filesystems cannot sync a directory
                    raise
            finally:
                os.close(directory)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path = fd, path
        self._size = os.fstat(fd).st_size
        self._opened = time.monotonic()
        log.info("%s log: writing %s", self.kind, path)

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._path = None, None

    def append_bytes(self, data: bytes) -> Path:
        """Write ``data`` (whole lines) and sync it to disk; returns the file it is in.

        Raises:
            LogWriteError: (``error``) the directory or the disk refused it (the reason is
                given).
        """
        with self._lock:
            try:
                if self._fd is not None and (
                    self._size >= self.rotate_bytes
                    or time.monotonic() - self._opened >= self.rotate_s
                ):
                    self._close()
                if self._fd is None:
                    self._open()
                assert self._fd is not None and self._path is not None
                self._write(data)
                return self._path
            except OSError as e:
                where = self._path or self.directory
                self._close()
                reason = e.strerror or type(e).__name__
                raise self.error(
                    f"{self.kind} log {where} not writable: {reason} ({self.setting})"
                ) from e

    def _write(self, data: bytes) -> None:
        fd = self._fd
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # cut a partial batch off, so the file holds only whole, answered lines
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._size = start + len(data)

    def close(self) -> None:
        with self._lock:
            self._close()
