"""Reading the per-worker value files of prometheus-client's multiprocess mode, tolerating
damaged ones: a 0-byte, cut-short or garbage file (what a worker killed while writing leaves)
is skipped, counted (``levi_metrics_damaged_files_total{action}``) and logged, and removed
when its worker is gone, so one bad file never fails every scrape.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import struct
from typing import TYPE_CHECKING

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from service.processes import pid_alive

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)


# prometheus-client's value file names: <type>_<pid>.db, gauges gauge_<mode>_<pid>.db.
_VALUE_FILE = re.compile(r"(?:counter|histogram|summary|gauge_(?:live)?[a-z]+)_(\d+)\.db")


def damage_of(path: str) -> str | None:
    """Why prometheus-client could not read the value file ``path``, or None when it can.

    The file is read as :class:`prometheus_client.multiprocess.MultiProcessCollector` reads
    it (``MmapedDict.read_all_values_from_file``), and each entry's key is parsed as it parses
    it; entries must advance through the file (a garbage length could send the reader
    backwards forever). Raises FileNotFoundError when the file is gone.
    """
    name = os.path.basename(path)
    if not _VALUE_FILE.fullmatch(name):
        return "not a prometheus-client value file name (<type>_<pid>.db)"
    size = os.path.getsize(path)
    if size < 8:  # the used-bytes header and its padding
        return f"{size} bytes, shorter than the 8-byte header"
    with open(path, "rb") as f:
        (used,) = struct.unpack_from("i", f.read(4))
    if not 8 <= used <= size:  # a fresh file says 8 (0 only while it is being created)
        return f"its header says {used} bytes are used, of {size}"
    try:
        last = 0
        for key, _value, _timestamp, pos in MmapedDict.read_all_values_from_file(path):
            if pos <= last or pos + 16 > size:
                return f"an entry at byte {last} points outside the file (cut short?)"
            last = pos
            metric, sample, labels, help_text = json.loads(key)
            if not all(isinstance(v, str) for v in (metric, sample, help_text)) or not (
                isinstance(labels, dict)
            ):
                return f"an entry's key is not [metric, sample, labels, help]: {key[:80]!r}"
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, struct.error) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None


_REPORTED: set[tuple[str, int, float]] = set()  # (path, size, mtime) already logged


class TolerantMultiProcessCollector(MultiProcessCollector):
    """prometheus-client's multiprocess collector, less the value files it cannot read.

    A worker killed between creating a value file and sizing it leaves a 0-byte file
    (prometheus/client_python#1199); a full disk or a crash can leave one cut short. The
    stock collector then fails every scrape. This one checks each file first
    (:func:`damage_of`), merges the readable ones as the stock collector does, and for each
    damaged file: counts it in ``levi_metrics_damaged_files_total{action}``, logs it (once per
    file state) and, when its worker is dead, removes it (``removed``; a live worker's file,
    or one being created at this moment, is left in place: ``skipped``).

    Args:
        path: the multiprocess directory.
        damaged: where the damaged files are counted: this worker's
            ``levi_metrics_damaged_files_total`` (its ``action`` label), or None.
    """

    def __init__(self, path: str, damaged: Counter | None = None):
        super().__init__(None, path)
        self.damaged = damaged

    def readable_files(self) -> list[str]:
        """The value files that pass :func:`damage_of`; the others handled as above."""
        readable = []
        for path in sorted(glob.glob(os.path.join(self._path, "*.db"))):
            try:
                damage = damage_of(path)
            except FileNotFoundError:  # a dead worker's live gauge, removed meanwhile
                continue
            if damage is None:
                readable.append(path)
            else:
                self._damaged(path, damage)
        return readable

    def collect(self):
        files = self.readable_files()
        try:
            return self.merge(files, accumulate=True)
        except Exception:  # what damage_of does not check: find the file
            good = []
            for path in files:
                try:
                    self.merge([path], accumulate=True)
                except FileNotFoundError:
                    continue
                except Exception as e:
                    self._damaged(path, f"unreadable ({type(e).__name__}: {e})")
                    continue
                good.append(path)
            return self.merge(good, accumulate=True)

    def _damaged(self, path: str, damage: str) -> None:

        match = _VALUE_FILE.fullmatch(os.path.basename(path))
        dead = match is not None and not pid_alive(int(match.group(1)))
        try:
            stat = os.stat(path)
            state = (path, stat.st_size, stat.st_mtime)
        except FileNotFoundError:
            return
        if dead:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        if self.damaged is not None:
            self.damaged.labels(action="removed" if dead else "skipped").inc()
        if state not in _REPORTED:  # a file that stays damaged is logged once
            if len(_REPORTED) > 10_000:
                _REPORTED.clear()
            _REPORTED.add(state)
            log.warning(
                "metrics file %s left out of the scrape: %s; %s",
                path,
                damage,
                "its worker is gone, so it was removed"
                if dead
                else "left in place (its worker runs, or the name is not a worker's)",
            )


class LiveModelInfo:
    """The tolerant multiprocess collector, less the ``levi_model_info`` series a worker has
    left."""

    def __init__(self, path: str, damaged: Counter | None = None):
        self.collector = TolerantMultiProcessCollector(path, damaged)

    def collect(self):
        for family in self.collector.collect():
            if family.name in ("levi_model_info", "levi_model_version_info"):
                family.samples = [s for s in family.samples if s.value != 0]
            yield family
