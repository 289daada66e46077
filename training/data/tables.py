"""A dataset spec's tables: read the files as they are, then type every column as declared.

Files are read with pyarrow (Parquet, CSV, TSV, JSON lines, optionally gzip'd), with the
id, categorical and text columns read as strings (a zip code "02139" keeps its zero). Then
:func:`apply_spec` renames the role columns to ``user_id, item_id, rating, timestamp`` and
checks each declared column, so a bad value fails at load time with its file, row and column,
not deep in training.

Missing values: categorical / text -> None (OOV slot; "unknown" in texts), numeric -> NaN
(bucket 0), multi_categorical -> () . Rated ids that have no row in the users / items table
get a row of missing values (cold entities with only an id).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from model.features import as_values
from model.timestamps import column_seconds
from training.data.dataset import RatingsDataset, _sorted, _text
from training.spec import DatasetSpec, EntitySpec, SpecError

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


# pyarrow would turn date strings into its own timestamps (with its own rules for offsets
# and ranges); they are read as text and converted by model.timestamps. A strptime format
# that no cell matches turns its inference off ([] would mean its default parser).
NO_TIMESTAMPS = ["%Y-%m-%d (dates are read as text)"]


class DataError(ValueError):
    """A table does not fit its spec; the message names the file, row and column."""


def file_format(path: Path, declared: str | None = None) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``jsonl`` from ``declared`` or the file name."""
    if declared:
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zst")]
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    raise DataError(
        f"{path}: cannot tell the format from the name; expected one of "
        f'{", ".join(sorted(FORMATS))} (optionally .gz), or set format = "csv" etc. in the spec'
    )


def read_file(path: Path, fmt: str | None = None, strings: Sequence[str] = ()) -> pd.DataFrame:
    """One table file as a DataFrame.

    Args:
        path: a Parquet, CSV, TSV or JSON-lines file (gzip detected from the name).
        fmt: the format, when the name does not tell it.
        strings: CSV/TSV columns to read as text whatever they look like.

    Raises:
        DataError: the file is missing or cannot be parsed (pyarrow's reason included).
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist (paths in a spec are relative to the spec file)")
    kind = file_format(path, fmt)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif kind in ("csv", "tsv"):
            from pyarrow import csv

            with pa.input_stream(path, compression="detect") as stream:
                table = csv.read_csv(
                    stream,
                    parse_options=csv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
                    convert_options=csv.ConvertOptions(
                        column_types={c: pa.string() for c in strings},
                        strings_can_be_null=True,
                        timestamp_parsers=NO_TIMESTAMPS,
                    ),
                )
        else:
            from pyarrow import json

            with pa.input_stream(path, compression="detect") as stream:
                table = json.read_json(stream)
            dated = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
            if dated:  # read again with those as the strings they are
                schema = pa.schema([(name, pa.string()) for name in dated])
                with pa.input_stream(path, compression="detect") as stream:
                    table = json.read_json(
                        stream, parse_options=json.ParseOptions(explicit_schema=schema)
                    )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise DataError(f"{path}: could not read it as {kind}: {e}") from None
    return table.to_pandas(types_mapper=None)


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: no column {', '.join(repr(c) for c in missing)} ({what}); the file has "
            f"{list(frame.columns)}"
        )


def _row(index: int) -> str:
    return f"row {index + 1}"


def _ids(values: pd.Series, where: str, column: str) -> pd.Series:
    out = _text(values.reset_index(drop=True))
    blank = np.flatnonzero(out.eq("").to_numpy())
    if len(blank):
        raise DataError(
            f"{where}: {_row(int(blank[0]))}, column {column!r}: the id is empty "
            f"({len(blank)} such row(s)); every row needs an id"
        )
    return out


def _ratings(
    frame: pd.DataFrame, spec: DatasetSpec, where: str, text_cells: bool = False
) -> pd.DataFrame:
    r = spec.ratings
    roles = [r.user, r.item, r.rating] + ([r.timestamp] if r.timestamp else [])
    _require(frame, roles, where, "a role column named in [ratings]")
    frame = frame.reset_index(drop=True)
    raw = frame[r.rating]
    rating = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(rating.isna().to_numpy())
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"{where}: {_row(k)}, column {r.rating!r}: rating {raw.iloc[k]!r} is not a number "
            f"({len(bad)} such row(s))"
        )
    lo, hi = spec.rating_scale.min, spec.rating_scale.max
    outside = np.flatnonzero(((rating < lo) | (rating > hi)).to_numpy())
    if len(outside):
        k = int(outside[0])
        raise DataError(
            f"{where}: {_row(k)}, column {r.rating!r}: rating {rating.iloc[k]:g} is outside "
            f"rating_scale [{lo:g}, {hi:g}] ({len(outside)} such row(s)); fix the data or the "
            "spec's [rating_scale]"
        )
    out = pd.DataFrame(
        {
            "user_id": _ids(frame[r.user], where, r.user),
            "item_id": _ids(frame[r.item], where, r.item),
            "rating": rating.to_numpy(np.float32),
            "timestamp": (
                _seconds(frame[r.timestamp], where, r.timestamp, text_cells)
                if r.timestamp
                else np.zeros(len(frame), np.int64)
            ),
        }
    )
    return _sorted(out, ("user_id", "item_id"), ("timestamp",))


def _seconds(values: pd.Series, where: str, column: str, text_cells: bool) -> np.ndarray:
    """int64 seconds since the epoch, each cell valid by ``model.timestamps`` (numbers are
    seconds, strings ISO 8601, within [1970-01-01, 2262-04-11)); ``text_cells``: a CSV/TSV
    column, where a cell of digits is a number."""
    seconds, bad = column_seconds(values, text_numbers=text_cells)
    if bad is not None:
        raise DataError(
            f"{where}: {_row(bad.first)}, column {column!r}: {bad.error} ({bad.count:,} such "
            "row(s)); fix or drop those rows, or leave ratings.timestamp out of the spec if "
            "the column is not a time"
        )
    return seconds


def _typed_column(values: pd.Series, kind: str, sep: str | None, where: str, name: str):
    values = values.reset_index(drop=True)
    if kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce")
        given = values.notna() & values.astype(str).str.strip().ne("")
        bad = np.flatnonzero((numbers.isna() & given).to_numpy())
        if len(bad):
            k = int(bad[0])
            raise DataError(
                f"{where}: {_row(k)}, column {name!r}: {values.iloc[k]!r} is not a number (the "
                "spec declares it numeric; declare it categorical or text if it is a label)"
            )
        return numbers.astype(np.float64)
    if kind == "multi_categorical":
        return pd.Series([as_values(v, sep) for v in values], dtype=object)
    lists = np.flatnonzero([isinstance(v, list | tuple | np.ndarray) for v in values])
    if len(lists):
        raise DataError(
            f"{where}: {_row(int(lists[0]))}, column {name!r}: holds a list "
            f"({values.iloc[int(lists[0])]!r}); declare it multi_categorical"
        )
    text = _text(values)
    return text.where(text.ne(""), None).astype(object)


def _entity(
    frame: pd.DataFrame | None,
    table: EntitySpec,
    key: str,
    id_name: str,
    rated: pd.Series,
    where: str,
) -> pd.DataFrame:
    """The typed users or items table: ``id_name`` + the declared columns."""
    columns = table.columns
    if frame is None:
        out = pd.DataFrame({id_name: pd.Series(sorted(set(rated)), dtype=object)})
    else:
        _require(frame, [key], where, "the key column")
        _require(frame, list(columns), where, "a column declared in the spec")
        frame = frame.reset_index(drop=True)
        ids = _ids(frame[key], where, key)
        dup = ids[ids.duplicated()]
        if len(dup):
            raise DataError(
                f"{where}: column {key!r} must be unique, but {len(dup)} id(s) repeat, e.g. "
                f"{dup.iloc[:3].tolist()} ({_row(int(dup.index[0]))})"
            )
        out = pd.DataFrame({id_name: ids})
        for name, col in columns.items():
            out[name] = _typed_column(frame[name], col.type, col.sep, where, name)
        absent = sorted(set(rated) - set(ids))
        if absent:  # rated but no row: an entity with only its id
            out = pd.concat([out, pd.DataFrame({id_name: absent})], ignore_index=True)
    for name, col in columns.items():
        if name not in out:
            out[name] = None
        if col.type == "multi_categorical":
            out[name] = [v if isinstance(v, tuple) else () for v in out[name]]
        elif col.type == "numeric":
            out[name] = pd.to_numeric(out[name], errors="coerce").astype(np.float64)
    return _sorted(out[[id_name, *columns]], (id_name,))


def typed_entities(spec: DatasetSpec, entity: str, rows: list[dict], where: str) -> pd.DataFrame:
    """Typed rows of new users or items (``entity``: "users" / "items") from records holding
    the id (``user_id`` / ``item_id``) and any of the declared columns, as ``apply_spec``
    types a table; undeclared fields are dropped, missing ones are empty.

    Raises:
        DataError: a value that does not fit its declared column.
    """
    table: EntitySpec = getattr(spec, entity)
    id_name = "user_id" if entity == "users" else "item_id"
    key = spec.key(entity)
    frame = pd.DataFrame(
        {key: [r[id_name] for r in rows]}
        | {name: [r.get(name) for r in rows] for name in table.columns}
    )
    return _entity(frame, table, key, id_name, pd.Series([], dtype=object), where)


def apply_spec(
    spec: DatasetSpec,
    ratings: pd.DataFrame,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    *,
    origin: dict[str, str] | None = None,
    text_ratings: bool = False,
) -> RatingsDataset:
    """Typed, checked tables from raw ones (role and key columns named as in the spec).

    Args:
        origin: table name -> where it came from (file name), for messages.
        text_ratings: the ratings were read from CSV/TSV, where every cell is text (a
            timestamp cell of digits is a number of seconds).

    Raises:
        DataError: naming the file, row and column of the first bad value.
    """
    origin = origin or {}
    rated = _ratings(ratings, spec, origin.get("ratings", "ratings"), text_ratings)
    users_t = _entity(
        users,
        spec.users,
        spec.key("users"),
        "user_id",
        rated["user_id"],
        origin.get("users", "users"),
    )
    items_t = _entity(
        items,
        spec.items,
        spec.key("items"),
        "item_id",
        rated["item_id"],
        origin.get("items", "items"),
    )
    return RatingsDataset(spec.name, rated, users_t, items_t).validate()


def read_spec_files(spec: DatasetSpec, data_path: Path | None = None) -> RatingsDataset:
    """The ``files`` reader: the spec's ratings, users and items files, typed.

    Args:
        data_path: replaces ``ratings.path`` (``--data-path``).

    Raises:
        DataError, SpecError.
    """
    path = data_path or spec.path_of(spec.ratings)
    if path is None:
        raise SpecError(f"{spec.source or spec.name}: ratings.path: no ratings file named")
    r = spec.ratings
    ratings = read_file(Path(path), r.format, [r.user, r.item])
    frames: dict[str, pd.DataFrame | None] = {"users": None, "items": None}
    origin = {"ratings": str(path)}
    for entity in ("users", "items"):
        table: EntitySpec = getattr(spec, entity)
        file = spec.path_of(table)
        if file is None:
            continue
        strings = [spec.key(entity)] + [
            n for n, c in table.columns.items() if c.type in ("categorical", "text")
        ]
        frames[entity] = read_file(file, table.format, strings)
        origin[entity] = str(file)
    text = file_format(Path(path), r.format) in ("csv", "tsv")
    return apply_spec(
        spec, ratings, frames["users"], frames["items"], origin=origin, text_ratings=text
    )
