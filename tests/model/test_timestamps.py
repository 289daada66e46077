"""The one definition of a valid timestamp (model/timestamps.py): numbers are seconds, strings
ISO 8601 with an offset within ±18:00, times in [1970-01-01, 2262-04-11); a column is read as
its cells are."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from model.timestamps import MAX_SECONDS, TimestampError, column_seconds, to_seconds

VALID = [
    (0, 0),
    (880_000_000, 880_000_000),
    (1_700_000_000.9, 1_700_000_000),  # a fraction is dropped
    (np.int64(1_700_000_000), 1_700_000_000),
    (MAX_SECONDS - 1, MAX_SECONDS - 1),
    ("2023-11-14", 1_699_920_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000),
    ("2023-11-14 22:13:20", 1_700_000_000),  # naive: UTC
    ("2023-11-15T00:13:20+02:00", 1_700_000_000),
    ("2023-11-14T04:13:20-18:00", 1_700_000_000),  # the widest offset
    (" 2023-11-14T22:13:20.999999Z ", 1_700_000_000),
    (dt.datetime(2023, 11, 14, 22, 13, 20), 1_700_000_000),
    (pd.Timestamp("2023-11-14T23:13:20", tz="Europe/Paris"), 1_700_000_000),
    (np.datetime64("2023-11-14T22:13:20"), 1_700_000_000),
    (dt.date(2023, 11, 14), 1_699_920_000),
]
INVALID = [
    (99_999_999_999_999, "on or after 2262-04-11"),
    (25_000_000_000, "on or after 2262-04-11"),  # seconds, never read as milliseconds
    (1_700_000_000_000, "looks like milliseconds: divide by 1,000"),
    (-1, "before 1970-01-01"),
    (10**400, "on or after 2262-04-11"),  # JSON integers have no size limit
    (float("inf"), "not a finite number"),
    (float("nan"), "missing"),
    (None, "missing"),
    (pd.NaT, "missing"),
    (True, "boolean"),
    ("", "empty"),
    ("9999-12-31T23:59:59-23:59", "offset -23:59 is beyond ±18:00"),
    ("9999-12-31T23:59:59Z", "on or after 2262-04-11"),
    ("2262-04-11", "on or after 2262-04-11"),
    ("1969-12-31T23:59:59Z", "before 1970-01-01"),
    ("2023-11-14T22:13:20+18:01", "beyond ±18:00"),
    ("1700000000", "a number written as text"),
    ("20231114", "a number written as text"),
    ("11/14/2023", "not an ISO 8601 date"),
    ("yesterday", "not an ISO 8601 date"),
    (np.datetime64("9999-01-01"), "on or after 2262-04-11"),
    ([1_700_000_000], "is not a time"),
]


@pytest.mark.parametrize("value, seconds", VALID)
def test_valid_timestamps(value, seconds):
    assert to_seconds(value) == seconds


@pytest.mark.parametrize("value, reason", INVALID)
def test_invalid_timestamps_say_why_and_what_is_expected(value, reason):
    with pytest.raises(TimestampError, match="expected seconds since 1970") as e:
        to_seconds(value)
    assert reason in str(e.value)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([0, 880_000_000, 99_999_999_999_999, MAX_SECONDS - 1, -5], dtype="int64"),
        pd.Series([0.5, 1e9, np.nan, 99_999_999_999_999.0, -3.0]),
        pd.Series([1, None, 99_999_999_999_999], dtype="Int64"),
        pd.Series([v for v, _ in VALID if isinstance(v, str)] + ["9999-12-31", "x", "1700"]),
        pd.Series([v for v, _ in VALID] + [v for v, _ in INVALID], dtype=object),
        pd.Series(pd.to_datetime(["2023-11-14T22:13:20.5", None, "1960-01-01T00:00:00.0"])),
        pd.Series(pd.to_datetime(["2023-11-14", "9999-01-01"], format="ISO8601")),
        pd.Series(pd.to_datetime(["2023-11-15T00:13:20+02:00"], utc=True)),
        pd.Series([True, False]),
    ],
)
def test_a_column_reads_as_its_cells_one_by_one(column):
    """The vectorised paths (numbers, datetimes) agree with the definition cell by cell."""
    seconds, bad = column_seconds(column)
    want, invalid = [], []
    for k, value in enumerate(column.tolist()):
        try:
            want.append(to_seconds(value))
        except TimestampError:
            want.append(0)
            invalid.append(k)
    assert seconds.dtype == np.int64 and seconds.tolist() == want
    if not invalid:
        assert bad is None
    else:
        assert (bad.first, bad.count) == (invalid[0], len(invalid))
        with pytest.raises(TimestampError) as e:
            to_seconds(column.iloc[invalid[0]])
        assert str(bad.error) == str(e.value)
