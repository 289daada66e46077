"""Data files as users save them, read by the dataset spec's reader and ``python -m training
init``: times (model/timestamps.py), missing values (the spec's ``na_values``), and the
variants spreadsheets and editors write. Each loads, or fails with a message that names the
row or the setting to change."""

from __future__ import annotations

import codecs
import gzip
import json
import re
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


# -- missing values -------------------------------------------------------------------------

NA_IDS = ["NA", "null", "None", "n/a"]
USERS = [
    {"user_id": "NA", "country": "NA", "age": "34"},  # Namibia
    {"user_id": "null", "country": "Côte d'Ivoire", "age": ""},
    {"user_id": "None", "country": "", "age": "45"},
    {"user_id": "n/a", "country": "fr", "age": "n/a"},
]
USERS_SPEC = """
[users]
path = "{users}"
{options}
[users.columns]
country = "categorical"
age = {{ type = "numeric", buckets = [18, 30, 50] }}
"""


def na_ratings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": NA_IDS,
            "item_id": ["null", "NA", "10", "None"],
            "rating": [4, 3, 5, 2],
            "timestamp": [1_700_000_000 + k for k in range(4)],
        }
    )


def users_spec(tmp_path: Path, users: str, options: str = "", top: str = "") -> Path:
    spec = spec_for(tmp_path, "ratings.csv", USERS_SPEC.format(users=users, options=options))
    if top:  # top-level keys come before the first [section]
        spec.write_text(top + "\n" + spec.read_text())
    return spec


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_ids_spelled_like_missing_values_are_ids_and_na_is_a_value(tmp_path, suffix):
    write(na_ratings(), tmp_path / "ratings.csv")
    users = pd.DataFrame(USERS)
    if suffix != ".csv":  # typed formats: the age a number, a missing one a null
        users["age"] = [34.0, None, 45.0, None]
    write(users, tmp_path / f"users{suffix}")
    spec = load_spec(users_spec(tmp_path, f"users{suffix}", top='na_values = ["", "n/a"]'))
    ds = load_spec_dataset(spec)
    assert sorted(ds.ratings["user_id"]) == sorted(NA_IDS)
    assert sorted(ds.ratings["item_id"]) == ["10", "NA", "None", "null"]
    by_id = ds.users.set_index("user_id")
    assert by_id.loc["NA", "country"] == "NA"  # Namibia, not a missing value
    assert by_id.loc["null", "country"] == "Côte d'Ivoire"
    assert pd.isna(by_id.loc["None", "country"])  # the empty cell
    assert by_id.loc["NA", "age"] == 34 and pd.isna(by_id.loc["n/a", "age"])


def test_na_values_default_reads_only_the_empty_cell_as_missing(tmp_path):
    write(na_ratings(), tmp_path / "ratings.csv")
    write(pd.DataFrame(USERS), tmp_path / "users.csv")
    spec = load_spec(users_spec(tmp_path, "users.csv"))
    assert spec.na_values == [""]
    with pytest.raises(DataError) as e:  # "n/a" in a numeric column: what to change
        load_spec_dataset(spec)
    assert "users.csv: row 4, column 'age': 'n/a' is not a number" in str(e.value)
    assert "list it in na_values at the top of the spec (now [''])" in str(e.value)
    listed = users_spec(tmp_path, "users.csv", top='na_values = ["", "n/a", "NA"]')
    ds = load_spec_dataset(load_spec(listed))
    by_id = ds.users.set_index("user_id")
    assert pd.isna(by_id.loc["NA", "country"])  # listed: missing in values, never in ids
    assert sorted(ds.ratings["user_id"]) == sorted(NA_IDS)


def test_an_empty_id_is_still_refused(tmp_path):
    write(na_ratings().assign(user_id=["1", " ", "2", "3"]), tmp_path / "ratings.csv")
    with pytest.raises(DataError, match=r"row 2, column 'user_id': the id is empty"):
        load_spec_dataset(load_spec(spec_for(tmp_path, "ratings.csv")))


def test_the_manifest_records_na_values_for_the_batch_cli(tmp_path):
    write(na_ratings(), tmp_path / "ratings.csv")
    spec = load_spec(spec_for(tmp_path, "ratings.csv"))
    assert spec.summary()["na_values"] == [""]
    spec = parse_spec({**spec.model_dump(exclude={"source"}), "na_values": ["", "NA"]})
    assert spec.summary()["na_values"] == ["", "NA"]


# -- files as users save them ---------------------------------------------------------------

PLAIN_USERS = pd.DataFrame(
    {
        "user_id": NA_IDS,
        "country": ["NA", "Côte d'Ivoire", "", "fr"],
        "zip": ["02139", "2139", "75001", "02139-1234"],  # codes, one with a suffix
        "age": ["34", "", "45", "61"],
    }
)
VARIANT_SPEC = """
[users]
path = "{users}"
{options}
[users.columns]
country = "categorical"
zip = "categorical"
age = {{ type = "numeric", buckets = [18, 30, 50] }}
"""


def _csv_bytes(frame: pd.DataFrame, sep: str = ",", newline: str = "\n") -> str:
    return frame.to_csv(index=False, sep=sep, lineterminator=newline)


def _jsonl(frame: pd.DataFrame, newline: str = "\n") -> str:
    rows = frame.to_dict("records")
    for row in rows:
        row["age"] = int(row["age"]) if row["age"] else None
    rows[1]["zip"] = 2139  # a JSON number here, a string in the other rows
    return "".join(json.dumps(r, ensure_ascii=False) + newline for r in rows)


FILE_VARIANTS = {  # name: (file name, bytes)
    "csv utf-8": ("users.csv", lambda f: _csv_bytes(f).encode()),
    "csv utf-8 BOM + CRLF (Excel 'CSV UTF-8')": (
        "users.csv",
        lambda f: codecs.BOM_UTF8 + _csv_bytes(f, newline="\r\n").encode(),
    ),
    "tsv utf-16 (Excel 'Unicode Text')": (
        "users.tsv",
        lambda f: _csv_bytes(f, "\t", "\r\n").encode("utf-16"),
    ),
    "csv utf-16": ("users.csv", lambda f: _csv_bytes(f).encode("utf-16")),
    "csv with semicolons": ("users.csv", lambda f: _csv_bytes(f, ";").encode()),
    "csv with CR line ends": ("users.csv", lambda f: _csv_bytes(f, newline="\r").encode()),
    "csv with trailing empty columns": (
        "users.csv",
        lambda f: _csv_bytes(f.assign(**{"": "", " ": ""})).encode(),
    ),
    "csv with spaces around header names": (
        "users.csv",
        lambda f: _csv_bytes(f.rename(columns=lambda c: f" {c} ")).encode(),
    ),
    "csv with a line break inside a quoted cell": (
        "users.csv",
        lambda f: _csv_bytes(f.assign(extra=["a", "two\nlines", "b", "c"])).encode(),
    ),
    "csv gzip'd with a BOM": (
        "users.csv.gz",
        lambda f: gzip.compress(codecs.BOM_UTF8 + _csv_bytes(f).encode()),
    ),
    "jsonl with a key whose type varies by row": ("users.jsonl", lambda f: _jsonl(f).encode()),
    "jsonl utf-16 (PowerShell 5 '>')": ("users.jsonl", lambda f: _jsonl(f).encode("utf-16")),
    "jsonl utf-8 BOM + CRLF": (
        "users.jsonl",
        lambda f: codecs.BOM_UTF8 + _jsonl(f, "\r\n").encode(),
    ),
    "json array": (
        "users.json",
        lambda f: json.dumps(json.loads("[" + ",".join(_jsonl(f).split("\n")[:-1]) + "]")).encode(),
    ),
}


def _write_variant(tmp_path: Path, variant: str, options: str = "") -> Path:
    name, content = FILE_VARIANTS[variant]
    (tmp_path / name).write_bytes(content(PLAIN_USERS))
    write(na_ratings(), tmp_path / "ratings.csv")
    return spec_for(tmp_path, "ratings.csv", VARIANT_SPEC.format(users=name, options=options))


def _check_users(ds) -> None:
    by_id = ds.users.set_index("user_id")
    assert sorted(by_id.index) == sorted(NA_IDS)
    assert by_id.loc["NA", "country"] == "NA" and by_id.loc["null", "country"] == "Côte d'Ivoire"
    assert pd.isna(by_id.loc["None", "country"])
    assert by_id.loc["NA", "zip"] == "02139" and by_id.loc["n/a", "zip"] == "02139-1234"
    assert by_id.loc["null", "zip"] == "2139"
    assert by_id.loc["None", "age"] == 45 and pd.isna(by_id.loc["null", "age"])


@pytest.mark.parametrize("variant", list(FILE_VARIANTS))
def test_the_spec_reader_loads_files_as_users_save_them(tmp_path, variant):
    _check_users(load_spec_dataset(load_spec(_write_variant(tmp_path, variant))))


@pytest.mark.parametrize("variant", list(FILE_VARIANTS))
def test_init_drafts_a_spec_that_loads_files_as_users_save_them(tmp_path, variant, capsys):
    _write_variant(tmp_path, variant)
    name = FILE_VARIANTS[variant][0]
    out = tmp_path / "draft.toml"
    argv = ["--ratings", str(tmp_path / "ratings.csv"), "--users", str(tmp_path / name)]
    assert init_main([*argv, "--output", str(out)]) == 0, capsys.readouterr().err
    assert "4 ratings, 4 users" in capsys.readouterr().out
    draft = load_spec(out)
    assert draft.users.key == "user_id" and draft.na_values == [""]
    if "semicolons" in variant:
        assert draft.users.delimiter == ";"


def test_a_file_in_another_encoding_names_the_line_and_the_setting(tmp_path, capsys):
    (tmp_path / "users.csv").write_bytes(_csv_bytes(PLAIN_USERS).encode("cp1252"))
    write(na_ratings(), tmp_path / "ratings.csv")
    spec = spec_for(tmp_path, "ratings.csv", VARIANT_SPEC.format(users="users.csv", options=""))
    with pytest.raises(DataError) as e:
        load_spec_dataset(load_spec(spec))
    message = str(e.value)
    assert "users.csv: line 3 holds bytes b'\\xf4' that are not utf-8" in message
    assert 'read as cp1252 the line is "null,Côte d\'Ivoire,2139,"' in message
    assert 'set encoding = "cp1252" under [users] in the dataset spec' in message
    fixed = spec_for(
        tmp_path,
        "ratings.csv",
        VARIANT_SPEC.format(users="users.csv", options='encoding = "cp1252"'),
    )
    _check_users(load_spec_dataset(load_spec(fixed)))
    # init finds it and says so in the draft
    out = tmp_path / "draft.toml"
    argv = ["--ratings", str(tmp_path / "ratings.csv"), "--users", str(tmp_path / "users.csv")]
    assert init_main([*argv, "--output", str(out)]) == 0, capsys.readouterr().err
    assert load_spec(out).users.encoding == "cp1252"
    assert "# encoding: the file is not UTF-8; read as cp1252" in out.read_text()


def test_decimal_commas_name_the_setting_and_init_finds_them(tmp_path, capsys):
    ratings = na_ratings().assign(rating=["4", "3,5", "5", "2,5"])
    (tmp_path / "ratings.csv").write_text(_csv_bytes(ratings, ";"))
    spec = spec_for(tmp_path, "ratings.csv")
    with pytest.raises(DataError) as e:
        load_spec_dataset(load_spec(spec))
    assert "row 2, column 'rating': rating '3,5' is not a number; it looks like a decimal " in (
        str(e.value)
    )
    assert 'set decimal = "," under [ratings] in the dataset spec' in str(e.value)
    spec.write_text(
        spec.read_text().replace(
            'timestamp = "timestamp"', 'decimal = ","\ntimestamp = "timestamp"'
        )
    )
    ds = load_spec_dataset(load_spec(spec))
    assert sorted(ds.ratings["rating"]) == [2.5, 3.5, 4, 5]
    out = tmp_path / "draft.toml"
    assert init_main(["--ratings", str(tmp_path / "ratings.csv"), "-o", str(out)]) == 0
    draft = load_spec(out)
    assert (draft.ratings.delimiter, draft.ratings.decimal) == (";", ",")
    assert draft.rating_scale.min == 2.5


@pytest.mark.parametrize(
    "content, message",
    [
        (",user_id,country\n0,NA,fr\n1,null,de\n", "column 1 has no name in the header but holds"),
        ("user_id,country,country\nNA,fr,de\n", "names column 'country' twice (columns 2 and 3)"),
        (
            "user_id,country\nNA,fr\nnull,de,extra\n",
            "a row has more or fewer cells than the header",
        ),
        ("\x00u\x00s\x00e\x00r", 'UTF-16 or UTF-32 text without its mark; set encoding = "utf-16-'),
    ],
)
def test_headers_and_rows_that_cannot_be_read_say_what_to_change(tmp_path, content, message):
    (tmp_path / "users.csv").write_bytes(content.encode())
    write(na_ratings(), tmp_path / "ratings.csv")
    spec = spec_for(tmp_path, "ratings.csv", '[users]\npath = "users.csv"\n')
    with pytest.raises(DataError, match=re.escape(message)):
        load_spec_dataset(load_spec(spec))


def test_a_column_whose_type_varies_by_row_in_a_csv(tmp_path):
    """Text where the spec says text; a numeric column names the cell it cannot read."""
    users = PLAIN_USERS.assign(age=["34", "thirty", "45", "61"])
    (tmp_path / "users.csv").write_text(_csv_bytes(users))
    write(na_ratings(), tmp_path / "ratings.csv")
    spec = spec_for(tmp_path, "ratings.csv", VARIANT_SPEC.format(users="users.csv", options=""))
    with pytest.raises(DataError, match=r"row 2, column 'age': 'thirty' is not a number"):
        load_spec_dataset(load_spec(spec))


@pytest.mark.parametrize(
    "encode", [lambda t: codecs.BOM_UTF8 + t.encode(), lambda t: t.encode("utf-16")]
)
def test_a_spec_file_saved_with_a_byte_order_mark_loads(tmp_path, encode):
    write(na_ratings(), tmp_path / "ratings.csv")
    spec = spec_for(tmp_path, "ratings.csv")
    spec.write_bytes(encode(spec.read_text().replace("\n", "\r\n")))
    assert load_spec(spec).ratings.timestamp == "timestamp"


def test_a_spec_file_that_is_not_utf8_names_the_line(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_bytes('name = "x"\n# café\n'.encode("cp1252"))
    with pytest.raises(SpecError, match=r"line 2 is not UTF-8 text .*save it as UTF-8"):
        load_spec(spec)


@pytest.mark.parametrize(
    "options, message",
    [
        ('encoding = "klingon"', "encoding 'klingon' is not a known encoding"),
        ('delimiter = ";;"', "delimiter ';;': expected one character"),
        ('decimal = ";"', "decimal"),
    ],
)
def test_reading_options_are_checked_with_the_spec(tmp_path, options, message):
    spec = spec_for(tmp_path, "ratings.csv", f'[users]\npath = "u.csv"\n{options}\n')
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(spec)


def test_ids_keep_their_zeros_under_a_header_with_spaces(tmp_path):
    ratings = na_ratings().assign(user_id=["007", "008", "009", "010"])
    (tmp_path / "ratings.csv").write_text(
        _csv_bytes(ratings.rename(columns={"user_id": " user_id "}))
    )
    ds = load_spec_dataset(load_spec(spec_for(tmp_path, "ratings.csv")))
    assert sorted(ds.ratings["user_id"]) == ["007", "008", "009", "010"]
