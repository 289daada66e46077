"""Reading the catalog log directory as it grows: every ``catalog-*.jsonl`` file, each from
where the previous read stopped.

A process reads the whole directory at start (the records every process of this directory
accepted: a Redis that lost its data is refilled from them), and, without Redis, again every
sync interval, so the workers of ``--workers N`` (one directory, one file each) see each
other's writes. Only whole lines are read: a line being written is read once it is complete,
and the partial last line a crash leaves is never read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from model.catalog_format import PREFIX, SUFFIX, check_record
from model.json_lines import split_lines
from service.catalog_mirror import Record

log = logging.getLogger(__name__)


class LogTail:
    """New records of a catalog log directory since the last :meth:`read`.

    Args:
        directory: ``LEVI_CATALOG_DIR`` (it may not exist yet).
        dataset: records of other data sets are left out.
        skip_prefix: files whose name starts with it (this process's own) are not read.
    """

    def __init__(self, directory: Path, dataset: str, skip_prefix: str | None = None):
        self.directory = Path(directory)
        self.dataset = dataset
        self.skip_prefix = skip_prefix
        self._offsets: dict[Path, int] = {}
        self._lines: dict[Path, int] = {}
        self.bad_lines = 0

    def _paths(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in self.directory.rglob(f"{PREFIX}*{SUFFIX}"):
            if self.skip_prefix and path.name.startswith(self.skip_prefix):
                continue
            out.append(path)
        return sorted(out)

    def read(self) -> list[Record]:
        """The records appended since the last call (all of them the first time).

        A line that is not a record is left out with a warning (counted in ``bad_lines``)
        rather than keeping the service from starting.
        """
        out: list[Record] = []
        for path in self._paths():
            start = self._offsets.get(path, 0)
            try:
                size = os.stat(path).st_size
                if size <= start:
                    continue
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(size - start)
            except OSError as e:  # removed meanwhile, or unreadable: try again next time
                log.warning("catalog log %s not read: %s", path, e)
                continue
            lines, tail = split_lines(data)
            self._offsets[path] = start + len(data) - len(tail)
            first = self._lines.get(path, 0) + 1
            self._lines[path] = first - 1 + len(lines)
            for number, line in enumerate(lines, first):
                if not line.strip():
                    continue
                try:  # a JSON error is a ValueError too
                    record = check_record(orjson.loads(line), f"{path}, line {number}")
                except ValueError as e:
                    self.bad_lines += 1
                    log.warning("catalog log: a line was left out: %s", e)
                    continue
                if record["dataset"] == self.dataset:
                    out.append(Record.from_json(record))
        return out
