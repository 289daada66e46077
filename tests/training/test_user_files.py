"""Data files as users save them, read by the dataset spec's reader and ``python -m training
init``: times (model/timestamps.py), missing values (the spec's ``na_values``), and the
variants spreadsheets and editors write. Each loads, or fails with a message that names the
row or the setting to change."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from training.data import load_spec_dataset
from training.data.feedback import add_feedback
from training.data.tables import DataError
from training.init_spec import main as init_main
from training.spec import SpecError, load_spec, parse_spec

SPEC = """
name = "user-files"
[ratings]
path = "{ratings}"
timestamp = "timestamp"
[rating_scale]
min = 1
max = 5
[text]
user = "user {{user_id}}"
item = "item {{item_id}}"
"""
RATINGS = [
    {"user_id": "1", "item_id": "10", "rating": 4, "timestamp": 880_000_000},
    {"user_id": "2", "item_id": "11", "rating": 3, "timestamp": 99_999_999_999_999},
    {"user_id": "3", "item_id": "10", "rating": 5, "timestamp": 880_000_100},
]


def write(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as the file its suffix names (CSV, Parquet or JSON lines)."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def spec_for(directory: Path, ratings: str, extra: str = "") -> Path:
    path = directory / "spec.toml"
    path.write_text(SPEC.format(ratings=ratings) + extra)
    return path


# -- times --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_an_out_of_range_timestamp_names_its_row(tmp_path, suffix):
    write(pd.DataFrame(RATINGS), tmp_path / f"ratings{suffix}")
    spec = load_spec(spec_for(tmp_path, f"ratings{suffix}"))
    with pytest.raises(DataError) as e:
        load_spec_dataset(spec)
    message = str(e.value)
    assert f"ratings{suffix}: row 2, column 'timestamp': 99999999999999 is on or after " in message
    assert "2262-04-11" in message and "(1 such row(s))" in message


@pytest.mark.parametrize(
    "cells, reason",
    [
        (["2023-11-14T22:13:20Z", "9999-12-31T23:59:59-23:59"], "offset -23:59 is beyond"),
        (["2023-11-14", "14/11/2023"], "not an ISO 8601 date"),
        (["2023-11-14", None], "missing"),
    ],
)
def test_date_strings_follow_the_same_definition(tmp_path, cells, reason):
    frame = pd.DataFrame(RATINGS[:2]).assign(timestamp=cells)
    write(frame, tmp_path / "ratings.jsonl")
    with pytest.raises(DataError, match=f"row 2, column 'timestamp': .*{reason}"):
        load_spec_dataset(load_spec(spec_for(tmp_path, "ratings.jsonl")))


def test_dates_with_offsets_load_as_utc_seconds(tmp_path):
    frame = pd.DataFrame(RATINGS[:2]).assign(
        timestamp=["2023-11-14T22:13:20Z", "2023-11-15T00:13:21+02:00"]
    )
    write(frame, tmp_path / "ratings.csv")
    ds = load_spec_dataset(load_spec(spec_for(tmp_path, "ratings.csv")))
    assert sorted(ds.ratings["timestamp"]) == [1_700_000_000, 1_700_000_001]


def test_init_refuses_an_out_of_range_timestamp_naming_the_row(tmp_path, capsys):
    source = write(pd.DataFrame(RATINGS), tmp_path / "ratings.csv")
    assert init_main(["--ratings", str(source), "--output", str(tmp_path / "s.toml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "OutOfBounds" not in err
    assert "ratings.csv: row 2, column 'timestamp': 99999999999999 is on or after" in err
    assert not (tmp_path / "s.toml").exists()


def test_init_says_milliseconds_when_they_look_like_it(tmp_path, capsys):
    frame = pd.DataFrame(RATINGS).assign(timestamp=[1_700_000_000_000 + k for k in range(3)])
    source = write(frame, tmp_path / "ratings.parquet")
    assert init_main(["--ratings", str(source)]) == 2
    assert "row 1, column 'timestamp'" in (err := capsys.readouterr().err)
    assert "looks like milliseconds: divide by 1,000" in err


def test_a_split_cutoff_follows_the_definition(tmp_path):
    data = {
        "name": "x",
        "ratings": {"path": "r.csv", "timestamp": "t"},
        "rating_scale": {"min": 1, "max": 5},
        "text": {"user": "u", "item": "i"},
    }
    for cutoff, reason in (("2024-13-01", "not an ISO 8601 date"), ("9999-01-01", "2262-04-11")):
        split = {"kind": "time", "cutoff": cutoff}
        with pytest.raises(SpecError, match=f"split: cutoff: .*{reason}"):
            parse_spec({**data, "split": split})
    parse_spec({**data, "split": {"kind": "time", "cutoff": "2024-05-01T00:00:00+02:00"}})


def test_feedback_events_with_an_invalid_timestamp_are_left_out_and_counted(tmp_path):
    """A log written before the definition (an older service) can hold year 10000."""
    write(pd.DataFrame(RATINGS).assign(timestamp=880_000_000), tmp_path / "ratings.csv")
    spec = load_spec(spec_for(tmp_path, "ratings.csv"))
    logs = tmp_path / "feedback"
    logs.mkdir()
    base = {"user_id": "1", "item_id": "11", "rating": 2.0, "dataset": "user-files"}
    lines = [
        {**base, "event_id": "a", "timestamp": 253_402_300_799 + 86_400},  # year 10000
        {**base, "event_id": "b", "timestamp": 1_700_000_000},
    ]
    (logs / "x.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    out, summary = add_feedback(load_spec_dataset(spec), spec, logs)
    assert (summary.added, summary.bad_timestamp) == (1, 1)
    assert "1 with an invalid timestamp" in str(summary)
    assert 1_700_000_000 in set(out.ratings["timestamp"])


def test_a_csv_time_column_of_seconds_and_dates_reads_each_cell(tmp_path):
    """In a CSV every cell is text: a cell of digits is seconds, a date is ISO 8601, each by
    itself (a hand-edited column); pyarrow's own date parsing is off, so its wider offsets
    do not slip through."""
    frame = pd.DataFrame(RATINGS).assign(
        timestamp=["1700000000", "2023-11-14T22:13:21Z", "2023-11-15 00:13:22+02:00"]
    )
    write(frame, tmp_path / "ratings.csv")
    ds = load_spec_dataset(load_spec(spec_for(tmp_path, "ratings.csv")))
    assert sorted(ds.ratings["timestamp"]) == [1_700_000_000, 1_700_000_001, 1_700_000_002]
    write(frame.assign(timestamp="2023-11-14T22:13:20+20:00"), tmp_path / "ratings.csv")
    with pytest.raises(DataError, match=r"row 1, column 'timestamp': .*\+20:00 is beyond"):
        load_spec_dataset(load_spec(spec_for(tmp_path, "ratings.csv")))
