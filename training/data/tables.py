"""A dataset spec's tables: read the files as they are, then type every column as declared.

Files are read by ``model.table_files`` (Parquet, CSV, TSV, JSON lines, optionally
compressed; encodings, delimiters, decimal marks and missing-value texts as the spec's table
options and ``na_values`` say), with the id, categorical and text columns read as strings (a
zip code "02139" keeps its zero; an id "NA" is an id). Then :func:`apply_spec` renames the
role columns to ``user_id, item_id, rating, timestamp`` and checks each declared column, so a
bad value fails at load time with its file, row and column, not deep in training.

Missing values (a null, or a cell whose text is one of the spec's ``na_values``, default
only the empty cell): categorical / text -> None (OOV slot; "unknown" in texts), numeric ->
NaN (bucket 0), multi_categorical -> () . Rated ids that have no row in the users / items
table get a row of missing values (cold entities with only an id).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from model.features import as_values
from model.table_files import (
    DEFAULT_NA_VALUES,
    TableFileError,
    TableOptions,
    read_table_file,
    table_format,
)
from model.timestamps import column_seconds
from training.data.dataset import RATING_COLUMNS, RatingsDataset, _sorted, _text
from training.data.shards import (
    ROW_COLUMN,
    SHARD_COLUMN,
    SHARD_COLUMNS,
    ShardSpec,
    keep_shards,
    parquet_row_groups,
)
from training.spec import DatasetSpec, EntitySpec, SpecError

_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d*,\d+\s*")


class DataError(ValueError):
    """A table does not fit its spec; the message names the file, row and column."""


def spec_hint(section: str | None) -> Callable[[str, str], str]:
    """How a message says to set a table option: under ``[section]`` of the spec."""
    where = f"under [{section}] in the dataset spec" if section else "in the dataset spec"
    return lambda option, value: f'set {option} = "{value}" {where}'


def file_format(path: Path, declared: str | None = None) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``jsonl`` from ``declared`` or the file name.

    Raises:
        DataError: the name does not tell (the message lists the suffixes).
    """
    try:
        return table_format(path, declared)
    except TableFileError as e:
        raise DataError(str(e)) from None


def read_file(
    path: Path,
    options: TableOptions | None = None,
    *,
    ids: Collection[str] = (),
    text: Collection[str] = (),
    section: str | None = None,
    row_groups: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One table file as a DataFrame (``model.table_files.read_table_file``).

    Args:
        path: a Parquet, CSV, TSV or JSON-lines file (compression detected from the name).
        options: the table's format, encoding, delimiter, decimal mark and missing-value
            texts (:meth:`DatasetSpec.table_options`).
        ids: id columns: text, never missing because of their spelling.
        text: other CSV/TSV columns to read as text whatever they look like.
        section: the spec's section of the table (``ratings``, ``users``, ``items``), for
            messages that say which option to set.
        row_groups: only these row groups of a Parquet file (``training.data.shards``).

    Raises:
        DataError: the file is missing or cannot be read; the message says what to change.
    """
    if not Path(path).is_file():
        raise DataError(f"{path} does not exist (paths in a spec are relative to the spec file)")
    try:
        return read_table_file(
            Path(path), options, ids=ids, text=text, hint=spec_hint(section), row_groups=row_groups
        )
    except TableFileError as e:
        raise DataError(str(e)) from None


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: no column {', '.join(repr(c) for c in missing)} ({what}); the file has "
            f"{list(frame.columns)}"
        )


def _row(index: int) -> str:
    return f"row {index + 1}"


def _number_hint(value: object, spec: DatasetSpec | None, section: str) -> str:
    """What to change when a cell that should be a number is not one."""
    if isinstance(value, str) and _DECIMAL_COMMA.fullmatch(value):
        return f"; it looks like a decimal comma: {spec_hint(section)('decimal', ',')}"
    na = list(spec.na_values) if spec is not None else list(DEFAULT_NA_VALUES)
    return (
        f"; if {value!r} means a missing value, list it in na_values at the top of the spec "
        f"(now {na})"
    )


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
        value = raw.iloc[k]
        what = (
            "the rating is missing (an empty cell or one of na_values); drop the row"
            if pd.isna(value)
            else f"rating {value!r} is not a number{_number_hint(value, spec, 'ratings')}"
        )
        raise DataError(f"{where}: {_row(k)}, column {r.rating!r}: {what} ({len(bad)} such row(s))")
    lo, hi = spec.rating_scale.bounds
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
            **{c: frame[c].to_numpy() for c in SHARD_COLUMNS if c in frame},  # a process's shard
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
    out = out[[*RATING_COLUMNS, *(c for c in SHARD_COLUMNS if c in out)]]
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


def _typed_column(
    values: pd.Series,
    kind: str,
    sep: str | None,
    where: str,
    name: str,
    spec: DatasetSpec | None = None,
    section: str = "",
):
    values = values.reset_index(drop=True)
    if kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce")
        given = values.notna() & values.astype(str).str.strip().ne("")
        bad = np.flatnonzero((numbers.isna() & given).to_numpy())
        if len(bad):
            k = int(bad[0])
            value = values.iloc[k]
            raise DataError(
                f"{where}: {_row(k)}, column {name!r}: {value!r} is not a number (the spec "
                "declares it numeric; declare it categorical or text if it is a label"
                f"{_number_hint(value, spec, section)}; {len(bad)} such row(s))"
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


def _within(
    numbers: pd.Series, valid: tuple[float, float], where: str, name: str, section: str
) -> None:
    """Refuse numeric values outside the spec's declared ``range`` (missing ones pass)."""
    lo, hi = valid
    outside = np.flatnonzero(((numbers < lo) | (numbers > hi)).to_numpy())
    if len(outside):
        k = int(outside[0])
        raise DataError(
            f"{where}: {_row(k)}, column {name!r}: {numbers.iloc[k]:g} is outside its range "
            f"[{lo:g}, {hi:g}] ({len(outside)} such row(s)); fix the data or the spec's "
            f"{section}.columns.{name}.range"
        )


def _entity(
    frame: pd.DataFrame | None,
    table: EntitySpec,
    key: str,
    id_name: str,
    rated: pd.Series,
    where: str,
    spec: DatasetSpec | None = None,
) -> pd.DataFrame:
    """The typed users or items table: ``id_name`` + the declared columns."""
    section = "users" if id_name == "user_id" else "items"
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
            out[name] = _typed_column(frame[name], col.type, col.sep, where, name, spec, section)
            if col.type == "numeric" and col.range is not None:
                _within(out[name], col.range, where, name, section)
        absent = sorted(set(rated) - set(ids))
        if absent:  # rated but no row: an entity with only its id
            out = pd.concat([out, pd.DataFrame({id_name: absent})], ignore_index=True)
    return _complete(out, columns, id_name)


def _complete(out: pd.DataFrame, columns: dict, id_name: str) -> pd.DataFrame:
    """The declared columns typed (a missing one empty) and the rows in id order."""
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
    return _entity(frame, table, key, id_name, pd.Series([], dtype=object), where, spec)


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
        spec,
    )
    items_t = _entity(
        items,
        spec.items,
        spec.key("items"),
        "item_id",
        rated["item_id"],
        origin.get("items", "items"),
        spec,
    )
    return RatingsDataset(spec.name, rated, users_t, items_t).validate()


def add_entities(table: pd.DataFrame, spec: DatasetSpec, entity: str, ids) -> pd.DataFrame:
    """``table`` (typed users or items) with a row of only its id for each of ``ids`` it
    lacks, as the reader adds a rated entity without a row; in id order."""
    id_name = "user_id" if entity == "users" else "item_id"
    absent = sorted(set(ids) - set(table[id_name]))
    if not absent:
        return table
    out = pd.concat([table, pd.DataFrame({id_name: absent})], ignore_index=True)
    return _complete(out, getattr(spec, entity).columns, id_name)


def read_spec_files(
    spec: DatasetSpec, data_path: Path | None = None, shards: ShardSpec | None = None
) -> RatingsDataset:
    """The ``files`` reader: the spec's ratings, users and items files, typed.

    Args:
        data_path: replaces ``ratings.path`` (``--data-path``).
        shards: read only these data shards of the ratings (``training.data.shards``): their
            row groups of a Parquet file cut by row group, else every row, cut later by
            user; None or one shard: every rating, no shard columns.

    Raises:
        DataError, SpecError.
    """
    path = data_path or spec.path_of(spec.ratings)
    if path is None:
        raise SpecError(f"{spec.source or spec.name}: ratings.path: no ratings file named")
    r = spec.ratings
    layout = None
    if shards is not None and shards.count > 1:
        layout = parquet_row_groups(Path(path), shards)
    ratings = read_file(
        Path(path),
        spec.table_options(r),
        ids=[r.user, r.item],
        section="ratings",
        row_groups=None if layout is None else layout.groups,
    )
    if shards is not None and shards.count > 1:
        ratings = ratings.reset_index(drop=True)
        if layout is None:  # read whole; cut by user once the ids are typed
            ratings[ROW_COLUMN] = np.arange(len(ratings), dtype=np.int64)
        else:
            ratings[ROW_COLUMN], ratings[SHARD_COLUMN] = layout.file_rows, layout.shard
    frames: dict[str, pd.DataFrame | None] = {"users": None, "items": None}
    origin = {"ratings": str(path)}
    for entity in ("users", "items"):
        table: EntitySpec = getattr(spec, entity)
        file = spec.path_of(table)
        if file is None:
            continue
        # Read as written: codes keep their leading zeros, a multi-valued cell "1,2" is not
        # a decimal number (decimal = ","), whatever the other rows hold.
        text = [
            n
            for n, c in table.columns.items()
            if c.type in ("categorical", "text", "multi_categorical")
        ]
        frames[entity] = read_file(
            file, spec.table_options(table), ids=[spec.key(entity)], text=text, section=entity
        )
        origin[entity] = str(file)
    text = file_format(Path(path), r.format) in ("csv", "tsv")
    ds = apply_spec(
        spec, ratings, frames["users"], frames["items"], origin=origin, text_ratings=text
    )
    return ds if shards is None else keep_shards(ds, shards)
