"""Batch scoring: ``python -m service.batch --model DIR --input FILE --output FILE``.

Reads Parquet, CSV, TSV or JSON lines (``model/table_files.py``: as training reads its files:
byte-order marks, ``--encoding``, ``--delimiter``; ids kept as written, so ``NA`` is an id;
a cell is missing when empty or one of the model's ``na_values``) with columns ``user_id,
item_id`` and optionally the model's user and item fields (its dataset spec's columns, ``GET
/v1/model``), named as the field or as ``user.<field>`` / ``item.<field>``; multi-valued
fields as a list or a ``|``-separated string (or the column's own ``sep``). Other columns
pass through (times are not read). Writes the input columns plus ``rating``,
``adapter_<layer>`` (1-based encoder layer) and ``ood_score``, in input order; every output,
an empty one included, has the same columns and types.

The same scorer and activation cache as the service (``REDIS_URL`` is honoured, so a batch
job warms the cache for the online replicas and reuses theirs). ``--shard i/N`` scores the
i-th of N contiguous row ranges, so a Kubernetes Indexed Job runs it on many pods
(``--shard $JOB_COMPLETION_INDEX/N``). Work is written as part files per chunk under
``<output>.parts/``; a rerun skips the parts that exist, then concatenates them.

Exit status: 0 done, 2 malformed input or arguments (the message names the row and column),
1 the model could not be loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from tqdm.auto import tqdm

from model.features import Column, FeatureSpec
from model.table_files import (
    DEFAULT_NA_VALUES,
    TableFileError,
    TableOptions,
    check_options,
    mark_missing,
    read_table_file,
)
from service.entity_fields import cell_value, check_fields, plain_value, request_models
from service.metrics import Metrics
from service.schemas import MAX_ID_LENGTH
from service.scorer import ScoreInput, Scorer
from service.settings import Settings, describe_settings_error

log = logging.getLogger("service.batch")

REQUIRED = ("user_id", "item_id")
REJECT_COLUMNS = ("row", "column", "reason")


class InputError(ValueError):
    """The input file cannot be scored; the message names the row and column."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def read_table(
    path: Path, encoding: str | None = None, delimiter: str | None = None
) -> pd.DataFrame:
    """The input rows, read by ``model.table_files`` as training reads its files.

    CSV/TSV cells are all read as text (the model's fields convert them, as the HTTP API
    does); ids are kept as written (``NA``, ``null``, ``None`` are ids); a cell is missing
    when it is empty (:func:`apply_na_values` adds the model's ``na_values``). UTF-8 unless
    a byte-order mark says otherwise (UTF-16 spreadsheet exports), or ``encoding``; the
    delimiter from the header line unless given.

    Raises:
        InputError: the file is missing or unreadable (the message says which flag to pass),
            or lacks ``user_id`` / ``item_id``.
    """
    try:
        frame = read_table_file(
            path,
            TableOptions(encoding=encoding, delimiter=delimiter),
            ids=REQUIRED,
            all_text=True,
            hint=lambda option, value: f"pass --{option} {value}",
        )
    except TableFileError as e:
        raise InputError(str(e).removeprefix(f"{path}: ")) from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(
            f"input file {path} lacks column(s) {missing}; it has {list(frame.columns)} "
            f"(required: {list(REQUIRED)}; optional: the model's user and item fields, see "
            "GET /v1/model)"
        )
    return frame


def apply_na_values(frame: pd.DataFrame, dataset: dict[str, Any]) -> pd.DataFrame:
    """``frame`` with the cells the model's dataset spec declares missing (its
    ``na_values``, recorded in the manifest; default only the empty cell) set missing, ids
    excepted: the batch CLI reads a file as training read the model's files."""
    return mark_missing(frame, dataset.get("na_values") or DEFAULT_NA_VALUES, keep=REQUIRED)


def input_schema(path: Path) -> pa.Schema | None:
    """The Arrow schema of a Parquet input (exact even for an empty file); None for CSV,
    whose cells are all read as text."""
    if ".parquet" in "".join(path.suffixes).lower() or path.suffix.lower() == ".pq":
        return pq.read_schema(path)
    return None


def _id(v: Any) -> Any:
    v = plain_value(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v) if isinstance(v, int) else v


def field_columns(frame_columns: Sequence[str], features: FeatureSpec) -> dict[str, Column]:
    """Input column -> the model's field it fills: ``<field>`` or ``user.<field>`` /
    ``item.<field>`` (needed when users and items both have the field). Other columns pass
    through to the output untouched.

    Raises:
        InputError: a bare column name that is a field of both users and items.
    """
    out: dict[str, Column] = {}
    for entity in ("user", "item"):
        for col in features.fields_of(entity):
            if f"{entity}.{col.name}" in frame_columns:
                out[f"{entity}.{col.name}"] = col
    bare: dict[str, list[Column]] = {}
    for col in (*features.fields_of("user"), *features.fields_of("item")):
        if col.name in frame_columns:
            bare.setdefault(col.name, []).append(col)
    for name, cols in bare.items():
        if len(cols) > 1:
            raise InputError(
                f"column {name!r} is a field of both users and items: name it user.{name} or "
                f"item.{name}"
            )
        out[name] = cols[0]
    return out


def row_request(row: dict[str, Any], columns: dict[str, Column]) -> dict[str, Any]:
    """A PredictRequest body from one input row (absent / empty cells are left out)."""
    body: dict[str, Any] = {"user_id": _id(row["user_id"]), "item_id": _id(row["item_id"])}
    for name, col in columns.items():
        value = cell_value(row.get(name), col.kind, col.sep)
        if value is not None:
            body.setdefault(col.entity, {})[col.name] = value
    return body


@dataclass(frozen=True)
class Checked:
    """A shard's rows after validation.

    Attributes:
        inputs: scorer inputs of the accepted rows, in order.
        kept: int64 positions (in the shard's frame) of the accepted rows.
        rejects: ``row`` (0-based in the input), ``column``, ``reason`` of refused rows.
    """

    inputs: list[ScoreInput]
    kept: np.ndarray
    rejects: pd.DataFrame


def _id_column(values: pd.Series) -> pd.Series:
    """Ids as stripped strings ("" when missing); whole floats lose their ".0"."""
    if pd.api.types.is_float_dtype(values) and values.dropna().mod(1).eq(0).all():
        values = values.astype("Int64")
    text = values.astype(str).where(values.notna(), "")
    return text.str.strip()


def to_inputs(
    frame: pd.DataFrame,
    first_row: int,
    scorer_fields: tuple[FeatureSpec, dict],
    *,
    on_error: str = "fail",
) -> Checked:
    """Validated scorer inputs of ``frame`` (rows numbered from ``first_row``, 0-based).

    Ids are checked column-wise; only rows that carry feature cells go through the model's
    field models (the same as the HTTP API's).

    Args:
        scorer_fields: the model's ``(FeatureSpec, request models)``.
        on_error: ``"fail"`` raises on the first bad row; ``"skip"`` leaves bad rows out and
            lists them in :attr:`Checked.rejects`.

    Raises:
        InputError: (``fail``) naming the row and column of the first bad cell.
    """
    features, models = scorer_fields
    columns = field_columns(list(frame.columns), features)
    by_field = {(c.entity, c.name): name for name, c in columns.items()}
    frame = frame.reset_index(drop=True)
    ids = {c: _id_column(frame[c]) for c in REQUIRED}
    bad_id: dict[int, tuple[str, str]] = {}
    for c in reversed(REQUIRED):
        text = ids[c]
        for k in np.flatnonzero((text.eq("") | (text.str.len() > MAX_ID_LENGTH)).to_numpy()):
            reason = "the id is empty" if not text.iloc[k] else f"longer than {MAX_ID_LENGTH}"
            bad_id[int(k)] = (c, reason)
    has_fields = (
        frame[list(columns)].notna().any(axis=1).to_numpy()
        if columns
        else np.zeros(len(frame), bool)
    )
    users, items = ids["user_id"].tolist(), ids["item_id"].tolist()
    plain = ~has_fields
    if bad_id:
        plain[list(bad_id)] = False
    # Rows with only ids: no per-row validation (their ids were checked column-wise).
    inputs: list[ScoreInput | None] = [
        ScoreInput(u, i) if ok else None
        for u, i, ok in zip(users, items, plain.tolist(), strict=True)
    ]
    rejects = []
    records = frame[list(columns)].to_dict("records") if columns else None
    for k in sorted(set(np.flatnonzero(~plain).tolist())):
        problem = bad_id.get(k)
        if problem is None:
            body = row_request({"user_id": users[k], "item_id": items[k], **records[k]}, columns)
            try:
                ((user, item),) = check_fields(models, [((), body.get("user"), body.get("item"))])
                inputs[k] = ScoreInput(users[k], items[k], user, item)
                continue
            except RequestValidationError as e:
                err = e.errors()[0]
                column = by_field.get(tuple(err["loc"][:2]), ".".join(map(str, err["loc"][:2])))
                problem = (column, f"{err['msg']} (value {err.get('input')!r})")
        column, reason = problem
        if on_error == "fail":
            raise InputError(
                f"row {first_row + k} (0-based, header excluded), column {column!r}: {reason}"
            )
        rejects.append({"row": first_row + k, "column": column, "reason": reason})
    kept = [k for k, r in enumerate(inputs) if r is not None]
    inputs = [inputs[k] for k in kept] if rejects else inputs
    return Checked(
        inputs,  # type: ignore[arg-type]  (no None left)
        np.asarray(kept, np.int64),
        pd.DataFrame(rejects, columns=REJECT_COLUMNS),
    )


def score_columns(layers: Sequence[int]) -> list[str]:
    """The columns scoring adds, in order: ``rating``, ``adapter_<layer>`` per adapter
    (1-based encoder layer), ``ood_score``."""
    return ["rating", *(f"adapter_{layer}" for layer in layers), "ood_score"]


def output_schema(
    frame: pd.DataFrame, layers: Sequence[int], input_schema: pa.Schema | None = None
) -> pa.Schema:
    """The Arrow schema of every output of ``frame``, whichever rows a shard holds.

    The input's columns (types from ``input_schema``, the file's own, when given; else
    inferred from the whole input, not from one shard) then the score columns as float32.
    Every part file and every shard's output is written with it, so an empty shard's output
    has the score columns too and all shards read together as one data set.

    Args:
        frame: the whole input (every shard reads the whole file, so every shard gets the
            same schema).
        layers: the model's 1-based adapter layers.
        input_schema: the input file's schema, exact for Parquet (an empty file included).
    """
    scores = score_columns(layers)
    fields = []
    for name in frame.columns:
        if name in scores:
            continue  # replaced by the score (see score_rows)
        if input_schema is not None and name in input_schema.names:
            fields.append(input_schema.field(name))
            continue
        try:
            kind = pa.array(frame[name], from_pandas=True).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # values of several types: kept as text
            kind = pa.string()
        fields.append(pa.field(str(name), kind))
    return pa.schema(fields + [pa.field(c, pa.float32()) for c in scores])


def score_rows(scorer: Scorer, frame: pd.DataFrame, inputs: list[ScoreInput]) -> pd.DataFrame:
    """``frame`` with ``rating``, ``adapter_<layer>`` and ``ood_score`` columns added (an input
    column of one of those names is replaced); an empty ``frame`` gets them too."""
    scores = score_columns(scorer.layers)
    out = frame.reset_index(drop=True).drop(columns=[c for c in scores if c in frame.columns])
    batch = scorer.score(inputs) if inputs else None  # None: no row here, or all refused
    empty = np.zeros(0, np.float32)
    out["rating"] = batch.rating if batch else empty
    adapters = batch.adapters if batch else np.zeros((0, len(scorer.layers)), np.float32)
    for j, layer in enumerate(scorer.layers):
        out[f"adapter_{layer}"] = adapters[:, j]
    out["ood_score"] = batch.ood_score if batch else empty
    return out


def shard_range(n_rows: int, shard: tuple[int, int]) -> tuple[int, int]:
    """``[start, stop)`` rows of shard ``i`` of ``N`` (contiguous, sizes differ by <= 1)."""
    i, n = shard
    return n_rows * i // n, n_rows * (i + 1) // n


def write_table(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    """Write atomically (temp file, then rename) as CSV or Parquet by suffix.

    Args:
        schema: the Parquet file's schema (see :func:`output_schema`); None: inferred from
            ``frame``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix.lower() == ".csv":
        frame.to_csv(tmp, index=False)
    elif schema is None:
        frame.to_parquet(tmp, index=False)
    else:
        pq.write_table(_arrow_table(frame, schema), tmp)
    os.replace(tmp, path)


def _arrow_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of mixed values: written as text
        fixed = frame.copy()
        for f in schema:
            if f.type == pa.string() and fixed[f.name].dtype == object:
                fixed[f.name] = [None if plain_value(v) is None else str(v) for v in fixed[f.name]]
        return pa.Table.from_pandas(fixed, schema=schema, preserve_index=False)


def part_ok(part: Path, rows: int) -> bool:
    """Whether a part file from an earlier run is whole: a readable Parquet file holding
    ``rows`` rows (a run killed while writing leaves at most a temporary file, but a copied
    or damaged folder can hold anything)."""
    try:
        return pq.ParquetFile(part).metadata.num_rows == rows
    except (OSError, pa.ArrowException) as e:
        log.warning("part file %s is damaged (%s): scoring its rows again", part, e)
        return False


def run(
    scorer: Scorer,
    frame: pd.DataFrame,
    output: Path,
    *,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 16_384,
    parts_dir: Path | None = None,
    progress: bool = True,
    checked: Checked | None = None,
    on_error: str = "fail",
    input_schema: pa.Schema | None = None,
) -> pd.DataFrame:
    """Score this shard's rows chunk by chunk into part files, then write ``output``.

    A rerun keeps the finished parts whose row count checks out and redoes the others.
    Every output has the same columns and types (:func:`output_schema`), an empty shard's or
    an empty input's included.

    Args:
        frame: the whole input; the shard's rows are taken from it.
        checked: the shard's validated rows (from :func:`to_inputs`); validated here if None.
        on_error: ``fail`` or ``skip`` (refused rows go to ``<output>.rejects.parquet``).
        input_schema: the input file's Arrow schema (:func:`read_table`), for the types of the
            columns passed through; None: inferred from ``frame``.
    """
    i, n = shard
    start, stop = shard_range(len(frame), shard)
    shard_frame = frame.iloc[start:stop].reset_index(drop=True)
    if checked is None:
        checked = to_inputs(
            shard_frame, start, (scorer.features, scorer.request_models), on_error=on_error
        )
    parts_dir = parts_dir or output.with_name(output.name + ".parts")
    shard_dir = parts_dir / f"shard-{i:05d}-of-{n:05d}"
    schema = output_schema(frame, scorer.layers, input_schema)
    parts = []
    position = np.searchsorted(checked.kept, np.arange(0, len(shard_frame) + 1))
    with tqdm(total=stop - start, unit="row", desc="score", disable=not progress) as bar:
        for lo in range(0, len(shard_frame), batch_size):
            hi = min(lo + batch_size, len(shard_frame))
            a, b = int(position[lo]), int(position[hi])  # accepted rows in [lo, hi)
            part = shard_dir / f"rows-{start + lo:012d}-{start + hi:012d}.parquet"
            if not (part.exists() and part_ok(part, b - a)):  # resumable: whole parts kept
                rows = shard_frame.iloc[checked.kept[a:b]]
                write_table(score_rows(scorer, rows, checked.inputs[a:b]), part, schema)
            parts.append(part)
            bar.update(hi - lo)
    if parts:
        result = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    else:  # an empty shard or input: no rows, every column
        result = score_rows(scorer, shard_frame, [])
    if list(result.columns) != schema.names:
        raise InputError(
            f"part files under {shard_dir} were written from an input with other columns; "
            "delete that folder and rerun"
        )
    write_table(result, output, schema)
    rejects_path = output.with_name(output.name + ".rejects.parquet")
    if len(checked.rejects):
        write_table(checked.rejects, rejects_path)
        log.warning("%d row(s) refused, listed in %s", len(checked.rejects), rejects_path)
    else:  # not one of an earlier run's
        rejects_path.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.batch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, help="artifact directory (LEVI_MODEL_DIR)")
    parser.add_argument(
        "--input", type=Path, required=True, help=".parquet, .csv, .tsv or .jsonl (optionally .gz)"
    )
    parser.add_argument("--output", type=Path, required=True, help=".csv or .parquet")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/N (default 0/1)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16_384,
        help="rows per part file: scored in one call, and what a rerun redoes at most",
    )
    parser.add_argument("--parts-dir", type=Path, help="default: <output>.parts")
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="fail (default): stop at the first bad row, naming it; skip: score the rest and "
        "write the refused rows with the reason to <output>.rejects.parquet",
    )
    parser.add_argument(
        "--encoding",
        help="CSV/TSV/JSON text encoding, e.g. cp1252 (default: UTF-8, or what a byte-order "
        "mark says)",
    )
    parser.add_argument(
        "--delimiter", help="CSV/TSV delimiter (default: ',' or tab, or the header line's)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        settings = Settings(**({"model_dir": args.model} if args.model else {}))
    except ValidationError as e:
        print(f"error: {describe_settings_error(e)}", file=sys.stderr)
        return 2
    try:
        check_options(args.encoding, args.delimiter, ".")
    except ValueError as e:
        parser.error(str(e))
    try:
        frame = read_table(args.input, args.encoding, args.delimiter)
    except InputError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2

    from model.artifact import load_artifact
    from model.compilation_cache import enable_compilation_cache
    from service.scorer_setup import build_scorer, make_redis_tier

    if (cache_dir := settings.compilation_cache_path()) is not None:  # on by default
        enable_compilation_cache(cache_dir)
    metrics = Metrics()
    try:
        artifact = load_artifact(settings.model_dir)
    except Exception as e:  # the loader's message says what is wrong with which file
        print(f"error: cannot load the model {settings.model_dir}: {e}", file=sys.stderr)
        return 1
    frame = apply_na_values(frame, artifact.dataset)
    try:  # every row is checked against the model's fields before anything is scored
        start, stop = shard_range(len(frame), args.shard)
        checked = to_inputs(
            frame.iloc[start:stop],
            start,
            (artifact.features, request_models(artifact.features)),
            on_error=args.on_error,
        )
    except InputError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2
    redis = make_redis_tier(settings, metrics)
    scorer = build_scorer(artifact, settings, metrics, redis=redis, warm=False)
    try:
        result = run(
            scorer,
            frame,
            args.output,
            shard=args.shard,
            batch_size=args.batch_size,
            parts_dir=args.parts_dir,
            progress=not args.no_progress,
            checked=checked,
            input_schema=input_schema(args.input),
        )
    except InputError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2
    finally:
        if redis is not None:
            redis.close()
    refused = (
        f" ({len(checked.rejects)} refused: see the .rejects.parquet)"
        if len(checked.rejects)
        else ""
    )
    print(f"wrote {len(result)} rows to {args.output}{refused}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
