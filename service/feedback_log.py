"""The durable feedback log: every accepted event, on disk before the request is answered.

One file per process (``feedback-<host>-<pid>-<start>-<n>.jsonl`` under ``LEVI_FEEDBACK_DIR``),
so replicas and workers never share a file; the format is ``model/feedback_format.py``. The
writing (one ``write`` per batch, ``fsync`` of the file and of the directory for a new file,
rotation by size and age) is ``service/durable_log.py``'s, so an answered event survives a
``kill -9`` or a power cut. ``python -m training --feedback DIR`` reads them all.

A write that fails (full disk, read-only or vanished directory) raises
:class:`FeedbackLogError`: the request gets a 503 with the reason, nothing is half-accepted
(a partial write is cut off again), and the next request opens a fresh file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.feedback_format import encode_events
from service.durable_log import DurableLog
from service.errors import FeedbackLogError


class FeedbackLog(DurableLog):
    """Appends events to this process's current feedback log file.

    Args:
        directory: created if missing.
        rotate_bytes: a new file once the current one holds this many bytes.
        rotate_s: a new file once the current one is this old (seconds).
    """

    def __init__(self, directory: Path, *, rotate_bytes: int, rotate_s: float):
        super().__init__(
            directory,
            kind="feedback",
            setting="LEVI_FEEDBACK_DIR",
            rotate_bytes=rotate_bytes,
            rotate_s=rotate_s,
            error=FeedbackLogError,
        )

    def append(self, events: Sequence[Mapping[str, Any]]) -> Path:
        """Write ``events`` and sync them to disk; returns the file they are in.

        Raises:
            FeedbackLogError: the directory or the disk refused them (the reason is given).
        """
        return self.append_bytes(encode_events(events))
