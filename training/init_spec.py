"""``python -m training init``: draft a dataset spec from the data files.

    python -m training init --ratings ratings.parquet --users users.csv --items books.jsonl \\
        --output books.toml
    python -m training --config books.toml

Each file is read as the training run will read it (``training.data.tables.read_file``). The
first 100,000 rows decide the column types; the rating scale and the table keys use every row.
The draft names the ratings' role columns (by name, then by dtype), the key of the users and
items tables, a type for every other column, text templates and a split, with a comment above
each guess saying why: a user reviews guesses instead of writing a spec from nothing. Before
success is reported the draft must parse as a spec (``training.spec.load_spec``) and load the
data (``training.data.load_spec_dataset``; ``--no-check`` skips the load for huge files).

Exit status: 0, a checked draft; 2, bad input (a missing file, a role column not found, an
existing ``--output`` without ``--force``, a draft that does not load), message on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.data.dataset import _text
from training.data.tables import DataError, file_format, read_file
from training.spec import SpecError, load_spec, parse_spec

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
        "user", "userid", "uid", "users", "reader", "readerid", "customer", "customerid",
        "reviewer", "reviewerid", "member", "memberid", "account", "accountid", "visitor",
        "visitorid", "client", "clientid", "person", "personid", "profile", "profileid",
        "player", "playerid", "viewer", "viewerid", "buyer", "buyerid",
    ),
    "item": (
        "item", "itemid", "iid", "items", "movie", "movieid", "mid", "asin", "parentasin",
        "isbn", "product", "productid", "book", "bookid", "track", "trackid", "song", "songid",
        "article", "articleid", "business", "businessid", "recipe", "recipeid", "anime",
        "animeid", "game", "gameid", "sku", "artist", "artistid", "show", "showid",
    ),
    "rating": (
        "rating", "ratings", "score", "stars", "star", "overall", "rate", "grade",
        "bookrating", "reviewscore", "ratingvalue", "userrating",
    ),
    "timestamp": (
        "timestamp", "ts", "time", "date", "datetime", "unixreviewtime", "unixtime",
        "createdat", "created", "ratedat", "epoch", "reviewdate", "ratingdate",
    ),
}  # fmt: skip
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
    """A users or items table in the draft."""

    path: str
    key: Guess
    columns: tuple[Guess, ...]


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
    """UTC datetimes, parsed as the loader parses a timestamp column; None if any fails."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    if not all(isinstance(v, str) for v in values) or not values.str.match(r"\d{4}-\d\d").all():
        return None
    dates = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    return None if dates.isna().any() else dates


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
        numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
        if len(present) < len(values):
            return f"has {len(values) - len(present):,} empty cells"
        if not numeric and _dates(present) is None:
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
    if role == "timestamp":
        dates = _dates(present)
        if dates is None:  # numbers: seconds since the epoch
            lo, hi = present.min(), present.max()
            facts = f"numbers {lo:,.0f} to {hi:,.0f}"
            if present.median() > 1e11:
                return facts + (
                    ": these look like milliseconds, but the loader reads seconds since the "
                    "epoch; convert the column, or the time split's months will be wrong"
                )
            if present.median() < 1e8:
                return facts + (
                    ": small for seconds since the epoch (1973 or later); the time split "
                    "still orders ratings by them, but its months are meaningless"
                )
            span = pd.to_datetime(pd.Series([lo, hi]), unit="s").dt.date
            return facts + f", as seconds since the epoch {span.iloc[0]} to {span.iloc[1]}"
        return f"dates {dates.min().date()} to {dates.max().date()}"
    return f"{present.nunique():,} distinct values"


def guess_roles(
    frame: pd.DataFrame, where: str, given: dict[str, str | None]
) -> dict[str, Guess | None]:
    """The ratings' role columns: ``given`` ones, then by name, then by dtype.

    Args:
        frame: a sample of the ratings table.
        where: the file, for messages.
        given: role -> column named on the command line (None: guess it).

    Raises:
        InitError: a given column is absent, or no user, item or rating column fits.
    """
    columns = [str(c) for c in frame.columns]
    out: dict[str, Guess | None] = dict.fromkeys(ROLES)
    notes: list[str] = []

    def take(role: str, column: str, how: str) -> None:
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
            if pd.api.types.is_datetime64_any_dtype(values) and values.notna().all():
                take("timestamp", c, "by dtype: dates")
                break
            if pd.api.types.is_integer_dtype(values) and len(values) and values.min() >= 1e8:
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


def draft_entity(
    path: Path, base_dir: Path, role: str, column: str, rated: set[str]
) -> EntityDraft:
    """The users (``role="user"``) or items table: its key and typed columns."""
    frame = read_file(path)
    raw = None
    if file_format(path) in ("csv", "tsv"):  # as strings too, as the loader reads ids and codes
        raw = read_file(path, None, [str(c) for c in frame.columns])
    key = guess_key(frame if raw is None else raw, role, column, rated, str(path))
    sample = frame.head(SAMPLE_ROWS)
    raw = None if raw is None else raw.head(SAMPLE_ROWS)
    columns = []
    for c in map(str, frame.columns):
        if c == key.value:
            continue
        if c in ("user_id", "item_id"):
            columns.append(Guess(c, None, f"{c!r} is reserved for the ids: left out (rename it)"))
            continue
        columns.append(guess_column(c, sample[c], None if raw is None else raw[c]))
    return EntityDraft(_spec_path(path, base_dir), key, tuple(columns))


# -- the draft ------------------------------------------------------------------------------


def _spec_path(path: Path, base_dir: Path) -> str:
    """``path`` as the spec writes it: relative to the spec's directory when they share more
    than the file system's root."""
    path, base_dir = path.resolve(), base_dir.resolve()
    try:
        if os.path.commonpath([path, base_dir]) != path.anchor:
            return Path(os.path.relpath(path, base_dir)).as_posix()
    except ValueError:  # another drive
        pass
    return path.as_posix()


def _default_name(ratings: Path) -> str:
    stem = ratings.name.split(".")[0]
    if stem.lower() in GENERIC_STEMS and ratings.resolve().parent.name:
        return ratings.resolve().parent.name
    return stem or "dataset"


def _label(name: str, fallback: str) -> str:
    """A column's words in a template: ``movie_id`` -> ``movie``, ``userId`` -> ``user``."""
    words = re.sub(r"([_\-\s](id|Id|ID)|(?<=[a-z])(Id|ID))$", "", name).replace("_", " ")
    words = words.strip()
    return words or fallback


def _template(noun: str, id_name: str, columns: tuple[Guess, ...], text_first: bool) -> str:
    usable = [g for g in columns if g.value is not None and g.name.isidentifier()]
    if text_first:  # titles, then other text, then the rest
        usable.sort(key=lambda g: (g.value != "text", not re.search("title|name", g.name, re.I)))
    parts = [f"{noun} {{{id_name}}}"]
    parts += [f"{_label(g.name, g.name)} {{{g.name}}}" for g in usable[:TEMPLATE_COLUMNS]]
    return ", ".join(parts)


def draft_spec(
    ratings: Path,
    users: Path | None = None,
    items: Path | None = None,
    *,
    output: Path | None = None,
    name: str | None = None,
    given: dict[str, str | None] | None = None,
) -> str:
    """The commented TOML draft of a spec for the files.

    Args:
        ratings, users, items: the data files.
        output: where the spec will be written (paths are written relative to its
            directory; None: the working directory).
        name: the data set's name (default: from the ratings file).
        given: role -> column fixed on the command line.

    Raises:
        InitError: a role column or a key not found; DataError: a file missing or unreadable.
    """
    base_dir = output.parent if output is not None else Path.cwd()
    for flag, path in (("--ratings", ratings), ("--users", users), ("--items", items)):
        if path is None:
            continue
        if not path.is_file():
            raise InitError(
                f"{flag} {path}: no such file; expected a Parquet, CSV, TSV or JSON-lines file"
            )
        try:
            file_format(path)
        except DataError:
            raise InitError(
                f"{flag} {path}: cannot tell the format from the name; name the file "
                ".parquet, .csv, .tsv or .jsonl (optionally .gz)"
            ) from None
    frame = read_file(ratings)
    total = len(frame)
    if total == 0:
        raise InitError(f"{ratings}: no rows; a spec needs ratings to guess from")
    sample = frame.head(SAMPLE_ROWS)
    roles = guess_roles(sample, str(ratings), given or {})
    rating_col = roles["rating"].value  # type: ignore[union-attr]
    scores = pd.to_numeric(frame[rating_col], errors="coerce")
    lo, hi = float(scores.min()), float(scores.max())
    scale_why = (
        f"the lowest and highest {rating_col!r} of all {total:,} ratings; widen it to the "
        "scale's true ends if the data does not reach them (e.g. 1 to 5 stars)"
    )
    if not lo < hi:
        hi, scale_why = lo + 1, f"every rating is {lo:g}; set the scale's true ends"
    ids = [roles[r].value for r in ("user", "item")]  # type: ignore[union-attr]
    if (users or items) and file_format(ratings) in ("csv", "tsv"):
        frame = read_file(ratings, None, ids)  # ids as the loader reads them ("007" keeps 00)
    entities: dict[str, EntityDraft] = {}
    for role, path, column in (("user", users, ids[0]), ("item", items, ids[1])):
        if path is not None:
            rated = set(_text(frame[column]))
            entities[role] = draft_entity(path, base_dir, role, column, rated)

    files = ", ".join(p.name for p in (ratings, users, items) if p is not None)
    lines = [
        *_comment(
            f"DRAFT dataset spec, written by `python -m training init` from {files}. Every "
            "guess has a comment saying why: review them, fix what is wrong, then train:"
        ),
        f"#   python -m training --config {output or 'SPEC'}",
        "# Column types: categorical, multi_categorical (sep), numeric (buckets), text (read",
        "# by the templates only); all keys are described in training/spec.py.",
        f"name = {_value(name or _default_name(ratings))}",
        "",
        "[ratings]",
        f"path = {_value(_spec_path(ratings, base_dir))}",
    ]
    for role in ROLES:
        guess = roles[role]
        if guess is None:
            lines += _comment(f"no {ROLE_LABEL[role]} column found: no time split")
            continue
        lines += _comment(f"{guess.value!r}: {guess.why}") + [f"{role} = {_value(guess.value)}"]
    lines += ["", "[rating_scale]", *_comment(scale_why), f"min = {_value(lo)}"]
    lines += [f"max = {_value(hi)}"]
    for role, table in entities.items():
        lines += ["", f"[{role}s]", f"path = {_value(table.path)}"]
        lines += _comment(f"{table.key.value!r}: {table.key.why}")
        lines += [f"key = {_value(table.key.value)}"]
        if any(g.value is not None for g in table.columns):
            lines += ["", f"[{role}s.columns]"]
        for guess in table.columns:
            lines += _comment(f"{guess.name!r}: {guess.why}")
            if guess.value is not None:
                lines.append(f"{_key(guess.name)} = {_value(guess.value)}")
    lines += _text_section(roles, entities)
    lines += _split_section(total, roles["timestamp"] is not None)
    return "\n".join(lines) + "\n"


def _text_section(roles: dict[str, Guess | None], entities: dict[str, EntityDraft]) -> list[str]:
    out = ["", "[text]"]
    out += _comment(
        "what the text encoder reads for each user and item: {column} placeholders name a "
        "declared column, {user_id} / {item_id} the ids; missing values read 'unknown'"
    )
    for role, text_first in (("user", False), ("item", True)):
        noun = _label(roles[role].value, role)  # type: ignore[union-attr]
        table = entities.get(role)
        columns = table.columns if table else ()
        unnamed = [g.name for g in columns if g.value is not None and not g.name.isidentifier()]
        if unnamed:
            out += _comment(
                f"not in the {role} template: {', '.join(map(repr, unnamed))} (a placeholder "
                "must be a Python identifier such as {book_title}; rename the column in the file)"
            )
        out.append(f"{role} = {_value(_template(noun, f'{role}_id', columns, text_first))}")
    return out


def _split_section(total: int, timed: bool) -> list[str]:
    out = ["", "[split]"]
    if timed:
        out += _comment(
            f"a time column exists: the latest {OOD_FRACTION:.0%} of ratings are the "
            "out-of-distribution (OOD) test set, reported per month"
        )
        out += ['kind = "time"']
    else:
        out += _comment(
            f"no time column: a seeded {OOD_FRACTION:.0%} of the items, with all their "
            "ratings, are the out-of-distribution (OOD) test set (cold start)"
        )
        out += ['kind = "cold_items"']
    out += [f"ood_fraction = {OOD_FRACTION}", "valid_fraction = 0.1", "test_fraction = 0.1"]
    min_group = min(200, max(5, total // 500))
    group = "a month of OOD ratings" if timed else "the OOD set"
    out += _comment(
        f"{group} with fewer ratings gets no row in the report; sized for {total:,} ratings"
    )
    out += [f"min_group = {min_group}"]
    return out


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 96, break_on_hyphens=False)]


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _value(name)


def _value(value: Any) -> str:
    """A TOML value: a JSON string is a TOML basic string once DEL is escaped as well."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training init",
        description="Draft a dataset spec (TOML) from the ratings file and optional users and "
        "items files: role columns, keys, column types, templates and split are guessed, each "
        "with a comment saying why. Review the draft, then `python -m training --config SPEC`.",
    )
    p.add_argument("--ratings", type=Path, required=True, metavar="FILE", help="one row a rating")
    p.add_argument("--users", type=Path, metavar="FILE", help="one row a user")
    p.add_argument("--items", type=Path, metavar="FILE", help="one row an item")
    p.add_argument("--output", "-o", type=Path, metavar="SPEC", help="default: print to stdout")
    p.add_argument("--name", help="the data set's name (default: from the ratings file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.add_argument("--no-check", action="store_true", help="do not load the data with the draft")
    roles = p.add_argument_group("role columns of the ratings file (default: guessed)")
    for role in ROLES:
        roles.add_argument(f"--{role}", metavar="COLUMN", help=f"the {ROLE_LABEL[role]} column")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m training init ...`` (``argv`` without ``init``); returns the exit status."""
    args = parse_args(sys.argv[2:] if argv is None else argv)
    out: Path | None = args.output
    if out is not None and out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    given = {role: getattr(args, role) for role in ROLES}
    try:
        text = draft_spec(
            args.ratings, args.users, args.items, output=out, name=args.name, given=given
        )
    except (InitError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(text)
        where, log = "the spec printed above (save it, or pass --output)", sys.stderr
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        where, log = str(out), sys.stdout
    try:  # a bug here is ours, but the draft stays for the user to fix
        if out is None:
            spec = parse_spec(tomllib.loads(text), Path.cwd() / "spec.toml")
        else:
            spec = load_spec(out)
    except (SpecError, tomllib.TOMLDecodeError) as e:
        print(f"error: {where} is not a valid spec; edit it:\n{e}", file=sys.stderr)
        return 2
    summary = ""
    if not args.no_check:
        from training.data import load_spec_dataset

        try:
            ds = load_spec_dataset(spec)
        except ValueError as e:  # DataError, SpecError and the dataset's own checks
            print(
                f"error: {where} is a valid spec, but the data does not load with it; edit "
                "the draft or fix the data (`python -m training --config SPEC` checks the "
                f"data before it trains):\n{e}",
                file=sys.stderr,
            )
            return 2
        summary = (
            f": {len(ds.ratings):,} ratings, {len(ds.users):,} users, {len(ds.items):,} items "
            "load with it"
        )
    print(f"drafted {where}{summary}. Review the guesses (comments) first.", file=log)
    print(f"next: python -m training --config {out or 'SPEC'}", file=log)
    return 0
