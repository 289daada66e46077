"""What a valid timestamp is: the one definition the ratings loader, ``python -m training
init``, ``POST /feedback`` and the feedback log's reader apply.

A timestamp is either

* a number: seconds since 1970-01-01T00:00:00Z (the Unix epoch), an integer or a finite
  float (a fraction of a second is dropped: rounded down); or
* a string in ISO 8601: a date, optionally with a time and a UTC offset
  (``2024-05-01``, ``2024-05-01T10:30:00``, ``2024-05-01 10:30:00.250+02:00``,
  ``2024-05-01T08:30:00Z``). Without an offset the time is UTC; an offset must be within
  ±18:00 (the widest offset ISO 8601 profiles allow, RFC 3339 / java.time; real zones span
  -12:00 to +14:00). A string of digits alone (``"1714557600"``, ``"20240501"``) is
  refused: it could be seconds or a compact date, so send seconds as a number and dates
  with their dashes. (In CSV and TSV files every cell is text: there a cell of digits is a
  number, see :func:`column_seconds`);
* (files) a date-time value of the file's own type (a Parquet or Arrow timestamp, a pandas
  or numpy datetime), naive meaning UTC;

and it lies in [1970-01-01T00:00:00Z, 2262-04-11T00:00:00Z): not before the epoch (a rating
has no earlier time; a negative number is a wrong unit or a placeholder) and before the end
of the range every tool that reads the data back can hold (pandas and Arrow timestamps in
nanoseconds end on 2262-04-11). So seconds lie in ``[0, 9_223_286_400)``; milliseconds
(1,714,557,600,000 for 2024) are refused with a hint instead of being read as the year 56303,
and nothing is guessed from a number's size.

Stored as int64 seconds since the epoch (``RatingsDataset.ratings.timestamp``, the feedback
log's ``timestamp``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EARLIEST = EPOCH
LATEST = dt.datetime(2262, 4, 11, tzinfo=dt.UTC)  # exclusive
MIN_SECONDS = 0
MAX_SECONDS = int((LATEST - EPOCH).total_seconds())  # exclusive: 9_223_286_400
MAX_OFFSET = dt.timedelta(hours=18)
RULE = (
    "seconds since 1970-01-01T00:00:00Z as a number, or an ISO 8601 date or date-time "
    "(2024-05-01, 2024-05-01T10:30:00+02:00; no offset means UTC; offsets within ±18:00), "
    "from 1970-01-01 up to (not including) 2262-04-11"
)
_DIGITS = re.compile(r"[+-]?\d+(\.\d*)?")
_SCALES = ((1_000, "milliseconds"), (1_000_000, "microseconds"), (1_000_000_000, "nanoseconds"))
_RECENT = 946_684_800  # 2000-01-01: a number that is one of these units of a recent time


class TimestampError(ValueError):
    """A value is not a valid timestamp; the message says what came, what is expected
    (:data:`RULE`) and what to change."""


def _out_of_range(seconds: float, shown: str) -> TimestampError:
    hint = ""
    if seconds >= MAX_SECONDS:
        for scale, unit in _SCALES:
            if _RECENT * scale <= seconds < MAX_SECONDS * scale:  # (no float of a huge int)
                hint = f"; it looks like {unit}: divide by {scale:,} to get seconds"
                break
    side = "before 1970-01-01" if seconds < MIN_SECONDS else "on or after 2262-04-11"
    return TimestampError(f"{shown} is {side}, outside the valid range{hint} (expected {RULE})")


def _in_range(seconds: int, shown: str) -> int:
    if not MIN_SECONDS <= seconds < MAX_SECONDS:
        raise _out_of_range(seconds, shown)
    return seconds


def _from_datetime(when: dt.datetime, shown: str) -> int:
    offset = when.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:
        raise TimestampError(
            f"{shown}: the UTC offset {_offset(offset)} is beyond ±18:00 (expected {RULE})"
        )
    if not 1969 <= when.year <= 2262:  # before any arithmetic: years 1 and 9999+ overflow
        side = "before 1970-01-01" if when.year < 1969 else "on or after 2262-04-11"
        raise TimestampError(f"{shown} is {side}, outside the valid range (expected {RULE})")
    if offset is None:  # naive: UTC
        when = when.replace(tzinfo=dt.UTC)
    delta = when - EPOCH
    return _in_range(delta.days * 86_400 + delta.seconds, shown)


def _offset(offset: dt.timedelta) -> str:
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = int(abs(offset).total_seconds()) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def to_seconds(value: Any) -> int:
    """Seconds since the epoch of one timestamp (see the module docstring for what is valid).

    Args:
        value: a number (int or float seconds), an ISO 8601 string, or a datetime
            (``datetime.datetime``, ``pandas.Timestamp``, ``numpy.datetime64``).

    Returns:
        int seconds in ``[MIN_SECONDS, MAX_SECONDS)``, a fraction rounded down.

    Raises:
        TimestampError: missing, of another kind, not ISO 8601, an offset beyond ±18:00, or
            outside the range; the message quotes the value.
    """
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64):
        value = value.item()  # numpy scalars as Python's (and shown as such)
    shown = repr(value) if isinstance(value, str) else str(value)
    missing = type(value).__name__ in ("NAType", "NaTType")  # pandas.NA, pandas.NaT
    if missing or value is None or (isinstance(value, float) and math.isnan(value)):
        raise TimestampError(f"the timestamp is missing (expected {RULE})")
    if isinstance(value, bool):
        raise TimestampError(f"{shown} is a boolean, not a time (expected {RULE})")
    if isinstance(value, int):
        return _in_range(value, shown)
    if isinstance(value, float):
        number = float(value)
        if not math.isfinite(number):
            raise TimestampError(f"{shown} is not a finite number (expected {RULE})")
        if not MIN_SECONDS <= number < MAX_SECONDS:
            raise _out_of_range(number, shown)
        return int(math.floor(number))
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise TimestampError(f"the timestamp is missing (expected {RULE})")
        value = value.astype("datetime64[us]").astype(object)  # a datetime, or int if too far
        if not isinstance(value, dt.datetime):
            raise TimestampError(f"{shown} is outside the valid range (expected {RULE})")
    if isinstance(value, dt.datetime):
        return _from_datetime(value, shown)
    if isinstance(value, dt.date):
        return _from_datetime(dt.datetime(value.year, value.month, value.day), shown)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise TimestampError(f"{shown} ({type(value).__name__}) is not a time (expected {RULE})")
    text = value.strip()
    if not text:
        raise TimestampError(f"the timestamp is empty (expected {RULE})")
    if _DIGITS.fullmatch(text):
        raise TimestampError(
            f"{shown} is a number written as text: it could be seconds or a compact date; "
            "give seconds since the epoch as a number (not quoted) and dates with dashes "
            f"(2024-05-01) (expected {RULE})"
        )
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as e:
        reason = str(e).removeprefix("Invalid isoformat string: ")
        detail = "" if reason.startswith("'") else f" ({reason})"
        raise TimestampError(
            f"{shown} is not an ISO 8601 date{detail}; write dates as 2024-05-01 or "
            "2024-05-01T10:30:00+02:00 (in a spreadsheet: format the column as "
            f"yyyy-mm-dd hh:mm:ss before saving) (expected {RULE})"
        ) from None
    return _from_datetime(when, shown)


@dataclass(frozen=True)
class BadTimestamps:
    """The invalid cells of a column (see :func:`column_seconds`).

    Attributes:
        first: position (0-based) of the first invalid cell.
        count: how many cells are invalid.
        error: why the first one is (its message quotes the value).
    """

    first: int
    count: int
    error: TimestampError


def column_seconds(
    values: Sequence[Any] | np.ndarray, *, text_numbers: bool = False
) -> tuple[np.ndarray, BadTimestamps | None]:
    """int64 seconds of every cell of a column, by :func:`to_seconds`'s definition.

    Numbers and datetime columns are checked at once (numpy); other columns (strings, or
    values of several kinds) cell by cell, each distinct value once.

    Args:
        values: a pandas Series, numpy array or sequence.
        text_numbers: the cells come from a text format (CSV, TSV), where every cell is
            text and a number is written in digits: a cell that is a plain decimal number
            is that number (seconds). In typed formats (JSON, Parquet, HTTP) a number in
            quotes stays refused.

    Returns:
        ``(seconds, bad)``: ``seconds`` int64 (0 where invalid); ``bad`` None when every cell
        is valid.
    """
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=None)
    series = series.reset_index(drop=True)
    n = len(series)
    seconds = np.zeros(n, np.int64)
    if pd.api.types.is_datetime64_any_dtype(series):
        utc = series.dt.tz_convert("UTC") if series.dt.tz is not None else series
        missing = utc.isna().to_numpy()
        raw = utc.dt.as_unit("s").astype("int64").to_numpy()  # NaT: int64 min
        ok = ~missing & (raw >= MIN_SECONDS) & (raw < MAX_SECONDS)
        seconds = np.where(ok, raw, 0)
    elif pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        number = series.to_numpy(np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(number) & (number >= MIN_SECONDS) & (number < MAX_SECONDS)
        if pd.api.types.is_integer_dtype(series):
            seconds = np.where(ok, series.to_numpy(np.int64, na_value=0), 0)
        else:
            seconds = np.where(ok, np.floor(np.where(ok, number, 0)), 0).astype(np.int64)
    else:
        cache: dict[Any, int | TimestampError] = {}
        ok = np.ones(n, bool)
        for k, value in enumerate(series.tolist()):
            key = (type(value), value) if _hashable(value) else None
            got = cache.get(key) if key is not None else None
            if got is None:
                try:
                    got = to_seconds(_text_number(value) if text_numbers else value)
                except TimestampError as e:
                    got = e
                if key is not None:
                    cache[key] = got
            if isinstance(got, TimestampError):
                ok[k] = False
            else:
                seconds[k] = got
    bad = np.flatnonzero(~ok)
    if not len(bad):
        return seconds, None
    first = int(bad[0])
    value = _text_number(series.iloc[first]) if text_numbers else series.iloc[first]
    try:
        to_seconds(value)
        error = TimestampError(f"{value!r} is not a valid timestamp ({RULE})")
    except TimestampError as e:
        error = e
    return seconds, BadTimestamps(first, len(bad), error)


def _text_number(value: Any) -> Any:
    """A CSV cell that is a plain decimal number as that number; anything else as it is."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return float(value) if "." in value else int(value)
    return value


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return value == value  # NaN / NaT are never found again in a dict
