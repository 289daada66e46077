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
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from model.table_files import TableFileError, TableOptions, decodes, resolve_options
from training.data.dataset import _text
from training.data.tables import DataError, file_format, read_file, spec_hint
from training.spec import SpecError, load_spec, parse_spec
from training.spec_guess import (
    GENERIC_STEMS,
    NA_SPELLINGS,
    OOD_FRACTION,
    ROLE_LABEL,
    ROLES,
    SAMPLE_ROWS,
    TEMPLATE_COLUMNS,
    EntityDraft,
    Guess,
    InitError,
    guess_column,
    guess_key,
    guess_roles,
)


def file_options(path: Path, section: str) -> tuple[TableOptions, tuple[Guess, ...]]:
    """How to read a file, and the draft's lines for the options that are not the default:
    an encoding other than UTF-8 (no byte-order mark, not valid UTF-8: cp1252, else
    latin-1), a delimiter the header line shows, a decimal comma in ``;``-separated files.

    Raises:
        InitError: the encoding cannot be told (UTF-16 without its mark).
    """
    try:
        opts = resolve_options(path, None, spec_hint(section))
    except TableFileError as e:
        raise InitError(str(e)) from None
    if opts.format == "parquet":
        return opts, ()
    notes = []
    if opts.encoding == "utf-8" and not decodes(path, "utf-8"):
        encoding = "cp1252" if decodes(path, "cp1252") else "latin-1"
        opts = resolve_options(path, replace(opts, encoding=encoding, delimiter=None))
        notes.append(
            Guess(
                "encoding",
                encoding,
                f"the file is not UTF-8; read as {encoding} (Windows Western European: what "
                'Excel\'s "CSV" writes on Windows): check accented letters in the data, or '
                "save the file as UTF-8 and remove this line",
            )
        )
    default = "\t" if opts.format == "tsv" else ","
    if opts.format in ("csv", "tsv") and opts.delimiter != default:
        shown = "tab" if opts.delimiter == "\t" else repr(opts.delimiter)
        notes.append(Guess("delimiter", opts.delimiter, f"the header line is separated by {shown}"))
    if opts.delimiter == ";":
        sample = read_file(path, opts, section=section).head(SAMPLE_ROWS)
        commas = [c for c in sample.columns if _decimal_commas(sample[c])]
        if commas:
            opts = replace(opts, decimal=",")
            notes.append(
                Guess(
                    "decimal",
                    ",",
                    f"';'-separated, with decimal commas in {', '.join(map(repr, commas))}",
                )
            )
    return opts, tuple(notes)


def _decimal_commas(values: pd.Series) -> bool:
    """Text cells that all read as numbers once ',' is the decimal mark, some with one."""
    present = values.dropna()
    if present.empty or not all(isinstance(v, str) for v in present):
        return False
    text = present.astype(str).str.strip()
    return bool(text.str.fullmatch(r"[+-]?\d+(,\d+)?").all() and text.str.contains(",").any())


def draft_entity(
    path: Path, base_dir: Path, role: str, column: str, rated: set[str]
) -> EntityDraft:
    """The users (``role="user"``) or items table: its key and typed columns."""
    opts, notes = file_options(path, f"{role}s")
    frame = read_file(path, opts, section=f"{role}s")
    raw = None
    if opts.format in ("csv", "tsv"):  # as strings too, as the loader reads ids and codes
        raw = read_file(path, opts, text=[str(c) for c in frame.columns], section=f"{role}s")
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
    return EntityDraft(_spec_path(path, base_dir), key, tuple(columns), notes, frame)


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
    opts, notes = file_options(ratings, "ratings")
    frame = read_file(ratings, opts, section="ratings")
    total = len(frame)
    if total == 0:
        raise InitError(f"{ratings}: no rows; a spec needs ratings to guess from")
    sample = frame.head(SAMPLE_ROWS)
    roles = guess_roles(sample, str(ratings), given or {}, opts.format in ("csv", "tsv"))
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
    if (users or items) and opts.format in ("csv", "tsv"):
        # ids as the loader reads them ("007" keeps its zeros)
        frame = read_file(ratings, opts, ids=ids, section="ratings")
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
        *_na_values_lines(
            [(ratings, frame, set(ids))]
            + [(t.path, t.frame, {t.key.value}) for t in entities.values()]
        ),
        "",
        "[ratings]",
        f"path = {_value(_spec_path(ratings, base_dir))}",
        *_option_lines(notes),
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
        lines += ["", f"[{role}s]", f"path = {_value(table.path)}", *_option_lines(table.options)]
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


def _option_lines(notes: tuple[Guess, ...]) -> list[str]:
    out = []
    for guess in notes:
        out += _comment(f"{guess.name}: {guess.why}") + [f"{guess.name} = {_value(guess.value)}"]
    return out


def _na_values_lines(tables: list[tuple[object, pd.DataFrame, set[str]]]) -> list[str]:
    """The draft's ``na_values``: the default, with the cells that read as values but often
    mean missing counted, so the user decides."""
    found: dict[str, list[str]] = {}
    for name, frame, ids in tables:
        for c in frame.columns:
            if c in ids or frame[c].dtype.kind in "biufcmM":
                continue
            cells = frame[c].map(lambda v: v.strip() if isinstance(v, str) else None)
            counts = cells[cells.isin(NA_SPELLINGS)].value_counts()
            for value, n in counts.items():
                where = f"{n:,} in {Path(str(name)).name} {c!r}"
                found.setdefault(str(value), []).append(where)
    why = (
        "cell texts that mean a missing value in every table (ids never are); by default only "
        "an empty cell, so NA, null, None, n/a are values"
    )
    if found:
        listed = "; ".join(f"{v!r} ({', '.join(w)})" for v, w in sorted(found.items()))
        why += (
            f". Read as values here: {listed}; add those that mean 'unknown' in your data to "
            "the list"
        )
    return _comment(why) + ['na_values = [""]']


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
