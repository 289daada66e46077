"""Guesses behind ``python -m training init``: which columns hold the ratings' roles, which
column keys the users and items tables, and what type every other column has.

Each guess carries a one-line reason (``Guess.why``) that the drafted spec prints as a
comment above it, so a user reviews guesses instead of writing a spec from nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from model.timestamps import column_seconds
from training.data.dataset import _text

SAMPLE_ROWS = 100_000  # rows that decide the column types
FEW_VALUES = 10  # a numeric column with at most this many distinct values is categorical
QUANTILES = 5
OOD_FRACTION = 0.2
MAX_VOCAB = 10_000  # a larger vocabulary is capped with max_size
TEMPLATE_COLUMNS = 4  # columns named in a text template besides the id

ROLES = ("user", "item", "rating", "timestamp")
ROLE_LABEL = {"user": "user id", "item": "item id", "rating": "rating", "timestamp": "time"}
ARTICLE = {"user": "a", "item": "an", "rating": "a", "timestamp": "a"}
# Names (lower case, letters and digits only) of role columns in public data sets:
# MovieLens, Amazon reviews, Book-Crossing, Goodreads, Yelp, Last.fm, Netflix, ...
ROLE_NAMES = {
    "user": (
        "user",
        "userid",
        "uid",
        "users",
        "reader",
        "readerid",
        "customer",
        "customerid",
        "reviewer",
        "reviewerid",
        "member",
        "memberid",
        "account",
        "accountid",
        "visitor",
        "visitorid",
        "client",
        "clientid",
        "person",
        "personid",
        "profile",
        "profileid",
        "player",
        "playerid",
        "viewer",
        "viewerid",
        "buyer",
        "buyerid",
    ),
    "item": (
        "item",
        "itemid",
        "iid",
        "items",
        "movie",
        "movieid",
        "mid",
        "asin",
        "parentasin",
        "isbn",
        "product",
        "productid",
        "book",
        "bookid",
        "track",
        "trackid",
        "song",
        "songid",
        "article",
        "articleid",
        "business",
        "businessid",
        "recipe",
        "recipeid",
        "anime",
        "animeid",
        "game",
        "gameid",
        "sku",
        "artist",
        "artistid",
        "show",
        "showid",
    ),
    "rating": (
        "rating",
        "ratings",
        "score",
        "stars",
        "star",
        "overall",
        "rate",
        "grade",
        "bookrating",
        "reviewscore",
        "ratingvalue",
        "userrating",
    ),
    "timestamp": (
        "timestamp",
        "ts",
        "time",
        "date",
        "datetime",
        "unixreviewtime",
        "unixtime",
        "createdat",
        "created",
        "ratedat",
        "epoch",
        "reviewdate",
        "ratingdate",
    ),
}
# Words that mark a role inside a longer name ("Book-Rating", "customer_key").
ROLE_WORDS = {
    "user": ("user", "reader", "customer", "reviewer", "member", "client", "visitor"),
    "item": ("item", "movie", "product", "book", "isbn", "asin", "track", "song", "article"),
    "rating": ("rating", "score", "stars"),
    "timestamp": ("timestamp", "time", "date"),
}
TEXT_WORDS = ("title", "name", "description", "summary", "text", "review", "blurb", "overview")
TEXT_WORDS += ("plot", "abstract", "comment", "body", "synopsis", "content", "bio")
CODE_NAME = re.compile(r"(?i:(.*[_\-\s])?(id|code|zip|zipcode|postcode))|.*[a-z](Id|ID)")
SEPARATORS = (("|", 0.05), (";", 0.1), (",", 0.3))  # delimiter, share of cells that hold it
# (a "," list also needs fewer distinct pieces than distinct cells: "Smith, John" is none)
# Cell texts that often mean "unknown" (spreadsheets, R, pandas, SQL exports); init counts
# them so the draft's na_values comment says where they occur. They are values by default.
NA_SPELLINGS = ("NA", "N/A", "n/a", "na", "null", "NULL", "None", "none", "NaN", "nan", "#N/A")
GENERIC_STEMS = {"ratings", "rating", "reviews", "interactions", "train", "data", "events"}


class InitError(ValueError):
    """The files do not give a draft; the message names the file, its columns and what to do."""


@dataclass(frozen=True)
class Guess:
    """One guessed line of the draft: the value (None: left out) and why."""

    name: str
    value: Any
    why: str


@dataclass(frozen=True)
class EntityDraft:
    """A users or items table in the draft.

    Attributes:
        options: reading options that are not the default (``encoding``, ``delimiter``,
            ``decimal``), as guesses with their reasons.
        frame: the table as read (for the draft's ``na_values`` note).
    """

    path: str
    key: Guess
    columns: tuple[Guess, ...]
    options: tuple[Guess, ...] = ()
    frame: pd.DataFrame | None = field(default=None, repr=False, compare=False)


# -- reading --------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _rows(n: int, total: int) -> str:
    return f"{n:,} rows" if n == total else f"the first {n:,} of {total:,} rows"


def _present(values: pd.Series) -> pd.Series:
    """The non-missing cells; strings stripped, blank ones dropped."""
    values = values[values.notna()]
    if values.empty or pd.api.types.is_numeric_dtype(values):
        return values
    if all(isinstance(v, str) for v in values):
        values = values.astype(str).str.strip()
        return values[values.ne("")]
    return values


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _numbers(values: pd.Series) -> pd.Series | None:
    """Numeric values of a column whose present cells are all numbers (or number strings
    without leading zeros, which are codes); None otherwise."""
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values
    if not all(isinstance(v, str) for v in values):
        return None
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any() or values.str.match(r"-?0\d").any():
        return None
    return numbers


def _dates(values: pd.Series) -> pd.Series | None:
    """UTC datetimes of a column of dates (a date-time type, or ISO 8601 strings), each valid
    as the loader reads a timestamp (``model.timestamps``); None if it is no such column or
    a cell is not valid."""
    if not pd.api.types.is_datetime64_any_dtype(values) and not _date_strings(values):
        return None
    seconds, bad = column_seconds(values)
    return None if bad is not None else pd.Series(pd.to_datetime(seconds, unit="s", utc=True))


def _date_strings(values: pd.Series) -> bool:
    """Every cell a string that starts like an ISO 8601 date."""
    return all(isinstance(v, str) for v in values) and bool(values.str.match(r"\d{4}-\d\d").all())


def _is_time(values: pd.Series) -> bool:
    """Numbers (seconds), a date-time type, or strings that each look like an ISO 8601 date
    or a number (a CSV column of both, or numbers in quotes): a time column by its kind,
    valid cells or not."""
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        return True
    if not all(isinstance(v, str) for v in values):
        return False
    return bool(values.str.fullmatch(r"\s*(\d{4}-\d\d.*|[+-]?\d+(\.\d*)?)\s*").all())


def check_times(values: pd.Series, where: str, column: str, text_cells: bool = False) -> None:
    """Refuse a time column with an invalid cell (``model.timestamps``), naming the row.

    Args:
        text_cells: the file is CSV/TSV (a cell of digits is a number).

    Raises:
        InitError: the first invalid cell's row (1-based, header excluded), the value, the
            rule and how many rows are invalid.
    """
    _, bad = column_seconds(values, text_numbers=text_cells)
    if bad is not None:
        raise InitError(
            f"{where}: row {bad.first + 1}, column {column!r}: {bad.error} ({bad.count:,} such "
            "row(s) in the rows read); fix or drop those rows and rerun (or name another time "
            "column with --timestamp, or drop the column to draft without a time split)"
        )


# -- ratings --------------------------------------------------------------------------------


def _unfit(role: str, values: pd.Series) -> str | None:
    """Why ``values`` cannot hold ``role`` (None: it can)."""
    present = _present(values)
    if present.empty:
        return "is empty"
    if role == "rating":
        if _numbers(present) is None:
            return f"holds non-numbers, e.g. {present.iloc[0]!r}"
        if len(present) < len(values):
            return f"has {len(values) - len(present):,} empty cells (drop those rows)"
        return None
    if role == "timestamp":
        if len(present) < len(values):
            return f"has {len(values) - len(present):,} empty cells"
        if not _is_time(present):
            return f"holds neither seconds nor ISO dates, e.g. {present.iloc[0]!r}"
        return None
    if any(_is_list(v) for v in present.iloc[:1000]):
        return "holds lists"
    if pd.api.types.is_float_dtype(present) and not present.mod(1).eq(0).all():
        return "holds fractions"
    return None


def _role_facts(role: str, values: pd.Series) -> str:
    present = _present(values)
    if role == "rating":
        numbers = _numbers(present)
        return f"values {numbers.min():g} to {numbers.max():g}, {numbers.nunique():,} distinct"
    if role == "timestamp":  # (every cell checked by check_times before)
        seconds, _ = column_seconds(present, text_numbers=True)
        span = pd.to_datetime(pd.Series([seconds.min(), seconds.max()]), unit="s").dt.date
        dates = f"{span.iloc[0]} to {span.iloc[1]}"
        if not pd.api.types.is_numeric_dtype(present):
            return f"times {dates}"
        facts = f"numbers {present.min():,.0f} to {present.max():,.0f}"
        if present.median() < 1e8:
            return facts + (
                ": small for seconds since the epoch (1973 or later); the time split "
                "still orders ratings by them, but its months are meaningless"
            )
        return facts + f", as seconds since the epoch {dates}"
    return f"{present.nunique():,} distinct values"


def guess_roles(
    frame: pd.DataFrame, where: str, given: dict[str, str | None], text_cells: bool = False
) -> dict[str, Guess | None]:
    """The ratings' role columns: ``given`` ones, then by name, then by dtype.

    Args:
        frame: a sample of the ratings table.
        where: the file, for messages.
        given: role -> column named on the command line (None: guess it).
        text_cells: the file is CSV/TSV (a time cell of digits is a number).

    Raises:
        InitError: a given column is absent, or no user, item or rating column fits.
    """
    columns = [str(c) for c in frame.columns]
    out: dict[str, Guess | None] = dict.fromkeys(ROLES)
    notes: list[str] = []

    def take(role: str, column: str, how: str) -> None:
        if role == "timestamp":
            check_times(frame[column], where, column, text_cells)  # (no empty cells: _unfit)
        out[role] = Guess(column, column, f"{how}; {_role_facts(role, frame[column])}")

    for role, column in given.items():
        if column is None:
            continue
        if column not in columns:
            raise InitError(f"{where}: --{role} {column!r} is not a column; it has {columns}")
        reason = _unfit(role, frame[column])
        if reason:
            raise InitError(f"{where}: --{role} {column!r} cannot be the {role}: it {reason}")
        take(role, column, f"given with --{role}")
    for how in ("name", "word"):
        for role in ("rating", "timestamp", "user", "item"):  # "user_rating" is a rating
            if out[role] is not None:
                continue
            for column in columns:
                norm = _norm(column)
                if how == "name":
                    named = norm in ROLE_NAMES[role]
                else:
                    named = any(w in norm for w in ROLE_WORDS[role])
                if not named or column in {g.value for g in out.values() if g}:
                    continue
                reason = _unfit(role, frame[column])
                if reason:
                    label = f"{ARTICLE[role]} {ROLE_LABEL[role]}"
                    notes.append(f"{column!r} is named like {label} but {reason}")
                    continue
                take(role, column, f"named like {ARTICLE[role]} {ROLE_LABEL[role]} column")
                break
    _by_dtype(frame, columns, out)
    missing = [r for r in ("user", "item", "rating") if out[r] is None]
    if missing:
        flags = " ".join(f"--{r} COLUMN" for r in missing)
        raise InitError(
            f"{where}: found no {' or '.join(missing)} column among the file's columns "
            f"{columns}{'; ' + '; '.join(notes) if notes else ''}. Name the column(s) with "
            f"{flags} and rerun, then review the draft and edit any wrong guess."
        )
    return out


def _by_dtype(frame: pd.DataFrame, columns: list[str], out: dict[str, Guess | None]) -> None:
    """Fill the roles not found by name from the columns' values (in place)."""
    free = [c for c in columns if c not in {g.value for g in out.values() if g}]

    def take(role: str, column: str, how: str) -> None:
        out[role] = Guess(column, column, f"{how} (check it); {_role_facts(role, frame[column])}")
        free.remove(column)

    if out["rating"] is None:
        few = [
            (frame[c].nunique(), c)
            for c in free
            if _unfit("rating", frame[c]) is None and 2 <= frame[c].nunique() <= 21
        ]
        if few:
            take("rating", min(few)[1], "by dtype: the numeric column with fewest values")
    if out["timestamp"] is None:
        for c in free:
            values = frame[c]
            dated = pd.api.types.is_datetime64_any_dtype(values) and values.notna().all()
            if dated and column_seconds(values)[1] is None:
                take("timestamp", c, "by dtype: dates")
                break
            large = pd.api.types.is_integer_dtype(values) and len(values) and values.min() >= 1e8
            if large and column_seconds(values)[1] is None:
                take("timestamp", c, "by dtype: large integers, like seconds since the epoch")
                break
    for role in ("user", "item"):
        if out[role] is None:
            for c in free:
                values = _present(frame[c])
                long = values.astype(str).str.len().mean() > 40 if len(values) else True
                if _unfit(role, frame[c]) is None and not long:
                    take(role, c, "by position: the first id-like column left")
                    break


# -- users and items ------------------------------------------------------------------------


def guess_key(frame: pd.DataFrame, role: str, column: str, rated: set[str], where: str) -> Guess:
    """The users' or items' key: the ratings' role column's name, else the unique column
    holding the most rated ids.

    Raises:
        InitError: no column holds the rated ids.
    """
    entity = f"{role}s"
    named = [c for c in frame.columns if c == column] or [
        c for c in frame.columns if _norm(str(c)) == _norm(column)
    ]
    candidates = []
    for c in named or list(frame.columns):
        if any(_is_list(v) for v in frame[c].iloc[:1000]):
            continue
        ids = _text(frame[c])
        unique = not ids.duplicated().any() and not ids.eq("").any()
        if named or unique:
            candidates.append((len(rated & set(ids)), unique, str(c)))
    best = max(candidates, default=(0, False, ""))
    if not best[0] and not named:
        raise InitError(
            f"{where}: no column holds the ratings' {role} ids (column {column!r}, e.g. "
            f"{sorted(rated)[:3]}); its columns are {[str(c) for c in frame.columns]}. Give the "
            f"{entity} file a unique id column whose values match the ratings' {column!r}."
        )
    hits, unique, key = best
    how = (
        f"named like the ratings' {role} column"
        if named
        else f"unique values that match the ratings' {column!r}"
    )
    why = f"the key: {how}; {hits:,} of {len(rated):,} rated {entity} have a row"
    if not unique:
        why += " (its values repeat or are empty: the loader refuses that, fix the file)"
    elif hits < len(rated) / 2:
        why += " (the rest get a row with only their id: check that the ids match)"
    return Guess("key", key, why)


def guess_column(name: str, values: pd.Series, raw: pd.Series | None = None) -> Guess:
    """A users/items column's type from a sample of its values.

    Args:
        name: the column name.
        values: the sample as read.
        raw: the same cells read as strings (CSV/TSV), to spot codes such as zip "02139".

    Returns:
        A guess whose value is a spec column (``"text"`` or a dict) or None (left out).
    """
    present = _present(values)
    total = len(values)
    if present.empty:
        return Guess(name, None, f"entirely empty in {_rows(total, total)}: left out")
    rows = f"{len(present):,} rows" + (
        f" ({total - len(present):,} empty)" if total > len(present) else ""
    )
    if pd.api.types.is_bool_dtype(present):
        return Guess(name, "categorical", f"true/false values in {rows}: categorical")
    if pd.api.types.is_datetime64_any_dtype(present) or _dates(present) is not None:
        return Guess(
            name, "text", f"dates in {rows}: text (no date type; derive a year column for the MLP)"
        )
    if any(_is_list(v) for v in present):
        if not all(_is_list(v) for v in present):
            return Guess(name, "text", f"lists mixed with single values in {rows}: text")
        return _multi(name, pd.Series(list(present), dtype=object).explode(), present, None)
    if any(isinstance(v, dict) for v in present):
        return Guess(name, None, "nested records: left out (flatten them into columns)")
    codes = raw is not None and _present(raw).astype(str).str.match(r"-?0\d").any()
    numbers = None if codes else _numbers(present)
    if numbers is not None:
        return _numeric(name, numbers, rows)
    strings = present.astype(str).str.strip()
    distinct, length = strings.nunique(), strings.str.len().mean()
    facts = f"{distinct:,} distinct values of {rows}, mean length {length:.0f}"
    if codes:
        return _categorical(name, distinct, f"{facts}, with leading zeros (codes): categorical")
    for sep, least in SEPARATORS:
        has = strings.str.contains(sep, regex=False)
        if has.mean() < least:
            continue
        pieces = strings.str.split(sep, regex=False).explode().str.strip()
        pieces = pieces[pieces.ne("")]
        if pieces.str.len().mean() > 30 or (sep == "," and pieces.nunique() >= distinct):
            continue
        share = f"{has.mean():.0%} of {rows} hold {sep!r}"
        return _multi(name, pieces, strings, sep, share)
    unique = distinct / len(strings)
    named = any(w in _norm(name) for w in TEXT_WORDS)
    if length > 30 or (unique > 0.5 and length > 15) or (named and unique > 0.5):
        return Guess(name, "text", f"{facts}: text")
    return _categorical(name, distinct, f"{facts}: categorical")


def _categorical(name: str, distinct: int, why: str) -> Guess:
    if distinct > MAX_VOCAB:
        return Guess(
            name,
            {"type": "categorical", "max_size": MAX_VOCAB},
            f"{why}, the {MAX_VOCAB:,} most common kept",
        )
    return Guess(name, "categorical", why)


def _numeric(name: str, numbers: pd.Series, rows: str) -> Guess:
    distinct = numbers.nunique()
    facts = f"{distinct:,} distinct numbers of {rows}, {numbers.min():g} to {numbers.max():g}"
    if CODE_NAME.fullmatch(name):
        return _categorical(name, distinct, f"{facts}, named like an id or code: categorical")
    if distinct <= FEW_VALUES:
        return Guess(name, "categorical", f"{facts}: few values, categorical")
    return Guess(
        name,
        {"type": "numeric", "buckets": f"quantile:{QUANTILES}"},
        f"{facts}: numeric in {QUANTILES} quantile buckets (or give edges, e.g. [18, 25, 35])",
    )


def _multi(
    name: str, pieces: pd.Series, cells: pd.Series, sep: str | None, share: str = ""
) -> Guess:
    pieces = pieces.dropna().astype(str).str.strip()
    pieces = pieces[pieces.ne("")]
    if pieces.empty:
        return Guess(name, None, "only empty lists: left out")
    distinct = pieces.nunique()
    what = share or f"lists in {len(cells):,} rows"
    why = f"{what}, {len(pieces) / len(cells):.1f} values a row, {distinct:,} distinct"
    decl: dict[str, Any] = {"type": "multi_categorical"}
    if sep:
        decl["sep"] = sep
    if distinct > MAX_VOCAB:
        decl["max_size"] = MAX_VOCAB
        why += f", the {MAX_VOCAB:,} most common kept"
    return Guess(name, decl if len(decl) > 1 else "multi_categorical", f"{why}: multi_categorical")
