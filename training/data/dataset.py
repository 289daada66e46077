"""The ratings dataset every reader produces: ratings, users and items tables.

After ``training.data.tables.apply_spec`` the tables hold the ids (strings, so MovieLens
"196" and Amazon "B000123" look the same), the ratings' roles and the spec's declared columns.
The readers of the shipped presets first build these canonical tables:

* ratings: ``user_id`` (str), ``item_id`` (str), ``rating`` (float32), ``timestamp`` (int64,
  seconds since the Unix epoch);
* users: ``user_id``, ``age`` (int64, -1 when unknown), ``gender`` ("M", "F" or ""),
  ``occupation``, ``zip_code`` (str, "" when unknown);
* items: ``item_id``, ``title`` (str), ``genres`` (tuple of str, possibly empty), and for
  Amazon an optional ``category`` (str).

Tables are sorted by id (numeric ids in numeric order) with a fresh RangeIndex, so two sources
holding the same data give equal tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

RATING_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "rating", "timestamp")
MISSING_AGE = -1


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no truth value to compare by
class RatingsDataset:
    """Three canonical tables and the name of the source they came from."""

    name: str
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame

    def __repr__(self) -> str:
        return (
            f"RatingsDataset(name={self.name!r}, ratings={len(self.ratings):,}, "
            f"users={len(self.users):,}, items={len(self.items):,})"
        )

    def validate(self) -> RatingsDataset:
        """Check columns, id types, unique entity ids and that every rating names known ids.

        Returns:
            self, so a loader can end with ``return RatingsDataset(...).validate()``.

        Raises:
            ValueError: naming the table and the missing column, or the first offending ids.
        """
        tables = (
            ("ratings", self.ratings, RATING_COLUMNS),
            ("users", self.users, ("user_id",)),
            ("items", self.items, ("item_id",)),
        )
        for table, frame, expected in tables:
            missing = [c for c in expected if c not in frame.columns]
            if missing:
                raise ValueError(
                    f"dataset {self.name!r}: the {table} table has no column "
                    f"{', '.join(repr(c) for c in missing)}; expected {list(expected)}, got "
                    f"{list(frame.columns)}. Build it with "
                    f"training.data.dataset.canonical_{table}()."
                )
            for col in ("user_id", "item_id"):
                if col in expected and not pd.api.types.is_string_dtype(frame[col]):
                    raise ValueError(
                        f"dataset {self.name!r}: {table}.{col} must hold strings, got dtype "
                        f"{frame[col].dtype}; convert ids with .astype(str) (or build the "
                        f"table with canonical_{table}())."
                    )
        entities = (("users", self.users, "user_id"), ("items", self.items, "item_id"))
        for table, frame, col in entities:
            dup = frame[col][frame[col].duplicated()]
            if len(dup):
                raise ValueError(
                    f"dataset {self.name!r}: {table}.{col} must be unique, but "
                    f"{len(dup)} id(s) repeat, e.g. {dup.iloc[:3].tolist()}."
                )
            unknown = self.ratings[col][~self.ratings[col].isin(frame[col])].unique()
            if len(unknown):
                raise ValueError(
                    f"dataset {self.name!r}: ratings name {len(unknown)} {col}(s) absent from "
                    f"the {table} table, e.g. {list(unknown[:3])}; every rated entity needs a "
                    f"row in {table} (with empty features if nothing is known)."
                )
        return self


def _text(values: pd.Series) -> pd.Series:
    """Strings from str, bytes (UTF-8) or numbers; missing values become ""."""
    if values.dtype == object:
        values = values.map(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v)
    if pd.api.types.is_float_dtype(values) and values.dropna().mod(1).eq(0).all():
        values = values.astype("Int64")  # 196.0 -> "196"
    return values.astype(str).where(values.notna(), "").str.strip().astype(str)


def _sorted(frame: pd.DataFrame, id_cols: Iterable[str], extra: Iterable[str] = ()) -> pd.DataFrame:
    """Rows ordered by id (zero-padded, so numeric ids sort numerically), then ``extra``."""
    keys = {}
    for col in id_cols:
        width = int(frame[col].str.len().max()) if len(frame) else 0
        keys[col] = frame[col].str.zfill(width)
    keys.update({col: frame[col] for col in extra})
    order = pd.DataFrame(keys).sort_values(list(keys), kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def canonical_ratings(frame: pd.DataFrame) -> pd.DataFrame:
    """The ratings table in canonical types and order from any frame with the four columns."""
    out = pd.DataFrame(
        {
            "user_id": _text(frame["user_id"]),
            "item_id": _text(frame["item_id"]),
            "rating": frame["rating"].to_numpy(dtype=np.float32),
            "timestamp": frame["timestamp"].to_numpy(dtype=np.int64),
        }
    )
    return _sorted(out, ("user_id", "item_id"), ("timestamp",))


_GENDERS = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "": ""}


def _gender(value: object) -> str:
    if isinstance(value, bool | np.bool_):  # TFDS: True means male
        return "M" if value else "F"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    try:
        return _GENDERS[text.strip().upper()]
    except KeyError:
        raise ValueError(
            f"unknown gender {value!r}: expected 'M', 'F', True (male), False (female) or empty"
        ) from None


def canonical_users(frame: pd.DataFrame) -> pd.DataFrame:
    """The users table in canonical types and order; absent feature columns become unknown."""
    empty = pd.Series("", index=frame.index, dtype=object)
    if "age" in frame:
        age = pd.to_numeric(frame["age"], errors="coerce")
    else:
        age = pd.Series(MISSING_AGE, index=frame.index)
    out = pd.DataFrame(
        {
            "user_id": _text(frame["user_id"]),
            "age": age.fillna(MISSING_AGE).to_numpy(dtype=np.int64),
            "gender": pd.Series(
                [_gender(g) for g in frame.get("gender", empty)], index=frame.index, dtype=str
            ),
            "occupation": _text(frame.get("occupation", empty)),
            "zip_code": _text(frame.get("zip_code", empty)),
        }
    )
    return _sorted(out, ("user_id",))


def canonical_items(frame: pd.DataFrame) -> pd.DataFrame:
    """The items table in canonical types and order.

    ``genres`` values may be any iterable of names (already canonical: MovieLens loaders pass
    them through ``canonical_genres`` first); a missing ``genres`` column means no genres.
    """
    empty = pd.Series("", index=frame.index, dtype=object)
    genres = frame["genres"] if "genres" in frame else pd.Series([()] * len(frame), frame.index)
    out = pd.DataFrame(
        {
            "item_id": _text(frame["item_id"]),
            "title": _text(frame.get("title", empty)),
            "genres": pd.Series(
                [tuple(str(g) for g in gs) for gs in genres], index=frame.index, dtype=object
            ),
        }
    )
    if "category" in frame:
        out["category"] = _text(frame["category"])
    return _sorted(out, ("item_id",))
