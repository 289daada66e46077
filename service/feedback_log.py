"""The durable feedback log: every accepted event, on disk before the request is answered.

One file per process (``feedback-<host>-<pid>-<start>-<n>.jsonl`` under ``LEVI_FEEDBACK_DIR``),
so replicas and workers never share a file; the format is ``model/feedback_format.py``. A
batch of events is written with one ``write`` to a file opened for appending, then
``fsync``-ed (and the directory too when the file is new), so an answered event survives a
``kill -9`` or a power cut. Files are rotated by size and age; ``python -m training
--feedback DIR`` reads them all.

A write that fails (full disk, read-only or vanished directory) raises
:class:`FeedbackLogError`: the request gets a 503 with the reason, nothing is half-accepted
(a partial write is cut off again), and the next request opens a fresh file.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.feedback_format import SUFFIX, encode_events
from service.errors import FeedbackLogError

log = logging.getLogger(__name__)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"


class FeedbackLog:
    """Appends events to this process's current log file.

    Args:
        directory: created if missing.
        rotate_bytes: a new file once the current one holds this many bytes.
        rotate_s: a new file once the current one is this old (seconds).
    """

    def __init__(self, directory: Path, *, rotate_bytes: int, rotate_s: float):
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._sequence = 0
        # host, pid, start time and a random token: never another process's (or start's) name
        started = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        self._stem = f"feedback-{_host()}-{os.getpid()}-{started}-{os.urandom(3).hex()}"

    @property
    def path(self) -> Path | None:
        """The file being appended to (None before the first event or after an error)."""
        return self._path

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        path = self.directory / f"{self._stem}-{self._sequence:04d}{SUFFIX}"
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
        log.info("feedback log: writing %s", path)

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._path = None, None

    def append(self, events: Sequence[Mapping[str, Any]]) -> Path:
        """Write ``events`` and sync them to disk; returns the file they are in.

        Raises:
            FeedbackLogError: the directory or the disk refused them (the reason is given).
        """
        data = encode_events(events)
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
                raise FeedbackLogError(
                    f"feedback log {where} not writable: {reason} (LEVI_FEEDBACK_DIR)"
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
            # cut a partial batch off, so the file holds only whole, answered events
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._size = start + len(data)

    def close(self) -> None:
        with self._lock:
            self._close()
