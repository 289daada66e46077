"""Reading the service's JSON-lines logs (feedback, catalog): whole lines only.

A process appends whole lines and syncs them before it answers, so a crash can leave at most
one partial last line, of something that was never answered; readers skip it. Shared by
``model/feedback_format.py``, ``model/catalog_format.py`` and the service's log tailer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """``(whole lines, the partial tail)`` of ``data`` (the tail is b"" when it ends with a
    newline)."""
    body, newline, tail = data.rpartition(b"\n")
    return (body.split(b"\n") if newline else []), tail


def parse_lines(lines: list[bytes], where: str, first_line: int = 1) -> list[tuple[int, Any]]:
    """``(line number, JSON value)`` of the non-blank ``lines``.

    Raises:
        ValueError: a line that is not JSON (names ``where`` and the line).
    """
    out = []
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            out.append((number, orjson.loads(line)))
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{where}, line {number}: not JSON ({e})") from None
    return out


def read_json_lines(path: Path) -> tuple[list[tuple[int, Any]], int]:
    """The JSON values of one file's whole lines, with their line numbers.

    Returns:
        ``(values, skipped)``: ``skipped`` is 1 when the file ends with a partial line (an
        interrupted write), else 0.

    Raises:
        ValueError: a complete line that is not JSON (names the file and the line).
    """
    lines, tail = split_lines(Path(path).read_bytes())
    return parse_lines(lines, str(path)), 1 if tail.strip() else 0
