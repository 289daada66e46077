"""Import a file of users or items into a running deployment's catalog.

    python -m service.catalog_import --url http://127.0.0.1:8000 --kind items --input FILE
        [--id-column item_id] [--batch-size 1000] [--encoding E] [--delimiter D]

Reads Parquet, CSV, TSV or JSON lines as training reads its files (``model/table_files.py``:
byte-order marks, ``--encoding``, ``--delimiter``; ids kept as written; a cell is missing when
empty or one of the served model's ``na_values``) with an id column (``item_id`` /
``user_id``, or ``--id-column``, e.g. the spec's key ``isbn``) and the model's fields (``GET
/v1/model``), named as the field or ``item.<field>`` / ``user.<field>``; multi-valued fields
as a list or a ``|``-separated string (or the column's own ``sep``), numbers from their text
(as ``python -m service.batch`` reads them). Other columns are left out (and named). An id
given twice keeps its later row. The records go in bulk requests (``POST /v1/items``) of
``--batch-size`` (at most the service's ``LEVI_MAX_CATALOG_BULK``), in file order, each one
on disk in the service's catalog log before it is answered; a 503 (overloaded, Redis or the
log busy) is retried after its ``Retry-After``.

Exit status: 0 done; 2 a bad file or a refused row (the message names the row and column;
the rows before it are imported); 1 the service cannot be reached or refused otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from model.table_files import TableFileError, TableOptions, mark_missing, read_table_file
from service.entity_fields import cell_value, plain_value

KINDS = {"items": "item", "users": "user"}
RETRIES = 20  # 503 answers retried per request before giving up


class CatalogImportError(RuntimeError):
    """The import stopped; ``code`` is the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def model_fields(client: httpx.Client, url: str, entity: str) -> tuple[dict[str, dict], dict]:
    """``({field name: description}, dataset summary)`` of the served model.

    Raises:
        CatalogImportError: the service cannot be reached or serves no model yet.
    """
    try:
        r = client.get(f"{url}/v1/model")
    except httpx.HTTPError as e:
        raise CatalogImportError(f"cannot reach {url}: {e}", 1) from None
    if r.status_code != 200:
        raise CatalogImportError(f"GET {url}/v1/model answered {r.status_code}: {r.text[:300]}", 1)
    dataset = r.json()["dataset"]
    return {f["name"]: f for f in dataset["fields"][entity]}, dataset


def field_columns(columns: list[str], entity: str, fields: dict[str, dict]) -> dict[str, str]:
    """File column -> the field it fills (``<field>`` or ``<entity>.<field>``)."""
    out = {}
    for name in fields:
        if f"{entity}.{name}" in columns:
            out[f"{entity}.{name}"] = name
        elif name in columns:
            out[name] = name
    return out


def records_of(
    frame, id_column: str, columns: dict[str, str], fields: dict[str, dict]
) -> tuple[list[tuple[int, str, dict[str, Any]]], int]:
    """``([(row, id, fields)], repeated ids)``: one record per id, its later row kept.

    Raises:
        CatalogImportError: an empty id (names the row).
    """
    by_id: dict[str, tuple[int, str, dict[str, Any]]] = {}
    repeated = 0
    cells = frame[list(columns)].to_dict("records") if columns else [{}] * len(frame)
    for row, (raw, values) in enumerate(zip(frame[id_column].tolist(), cells, strict=True)):
        value = plain_value(raw)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        entity = "" if value is None else str(value).strip()
        if not entity:
            raise CatalogImportError(f"row {row} (0-based, header excluded): the id is empty", 2)
        record = {}
        for column, name in columns.items():
            v = cell_value(values[column], fields[name]["kind"], fields[name].get("sep"))
            if v is not None:
                record[name] = v
        if entity in by_id:
            repeated += 1
            del by_id[entity]  # the later row, at the later place
        by_id[entity] = (row, entity, record)
    return list(by_id.values()), repeated


def send(
    client: httpx.Client,
    url: str,
    kind: str,
    chunk: list,
    column_of: dict[str, str],
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """POST one chunk (retrying 503s); the answer.

    Raises:
        CatalogImportError: a refused record (names its file row and column) or another error.
    """
    entity = KINDS[kind]
    body = {kind: [{f"{entity}_id": i, "fields": f} for _, i, f in chunk]}
    for _ in range(RETRIES):
        try:
            r = client.post(f"{url}/v1/{kind}", json=body)
        except httpx.HTTPError as e:
            raise CatalogImportError(f"POST {url}/v1/{kind} failed: {e}", 1) from None
        if r.status_code == 200:
            return r.json()
        if r.status_code == 503:
            sleep(float(r.headers.get("Retry-After") or 1))
            continue
        if r.status_code == 422:
            message = _refused(r.json().get("detail"), chunk, entity, column_of)
            raise CatalogImportError(message, 2)
        message = f"POST {url}/v1/{kind} answered {r.status_code}: {r.text[:500]}"
        raise CatalogImportError(message, 1)
    message = f"POST {url}/v1/{kind}: still 503 after {RETRIES} tries: {r.text[:500]}"
    raise CatalogImportError(message, 1)


def _refused(detail: Any, chunk: list, entity: str, column_of: dict[str, str]) -> str:
    """The first refused record of a 422, as its file row and column."""
    if isinstance(detail, list) and detail:
        err = detail[0]
        loc = err.get("loc", [])
        if len(loc) >= 4 and isinstance(loc[2], int) and loc[2] < len(chunk):
            row, entity_id, _ = chunk[loc[2]]
            name = loc[4] if len(loc) > 4 and loc[3] == "fields" else loc[3]
            return (
                f"row {row} (0-based, header excluded), {entity} {entity_id!r}, column "
                f"{column_of.get(name, name)!r}: {err.get('msg')} (value {err.get('input')!r})"
            )
    return f"refused: {detail}"


def run(
    client: httpx.Client,
    url: str,
    kind: str,
    path: Path,
    *,
    id_column: str | None = None,
    batch_size: int = 1000,
    encoding: str | None = None,
    delimiter: str | None = None,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Import ``path`` into the catalog at ``url``; a summary.

    Raises:
        CatalogImportError: see the module docstring's exit statuses.
    """
    entity = KINDS[kind]
    id_column = id_column or f"{entity}_id"
    fields, dataset = model_fields(client, url, entity)
    try:
        frame = read_table_file(
            path,
            TableOptions(encoding=encoding, delimiter=delimiter),
            ids=(id_column,),
            all_text=True,
            hint=lambda option, value: f"pass --{option} {value}",
        )
    except TableFileError as e:
        raise CatalogImportError(str(e), 2) from None
    if id_column not in frame.columns:
        raise CatalogImportError(
            f"{path} has no id column {id_column!r} (its columns: {list(frame.columns)}); "
            "name it with --id-column",
            2,
        )
    frame = mark_missing(frame, dataset.get("na_values") or [""], keep=(id_column,))
    columns = field_columns(list(frame.columns), entity, fields)
    left_out = [c for c in frame.columns if c != id_column and c not in columns]
    records, repeated = records_of(frame, id_column, columns, fields)
    column_of = {name: column for column, name in columns.items()} | {f"{entity}_id": id_column}
    t0 = time.perf_counter()
    shared: dict[str, int] = {}
    done = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        try:
            answer = send(client, url, kind, chunk, column_of, sleep)
        except CatalogImportError as e:
            raise CatalogImportError(f"{e} ({done} {kind} imported before it)", e.code) from None
        done += answer["accepted"]
        shared[answer["shared"]] = shared.get(answer["shared"], 0) + answer["accepted"]
    seconds = time.perf_counter() - t0
    summary = {
        "imported": done,
        "repeated": repeated,
        "seconds": seconds,
        "shared": shared,
        "left_out": left_out,
        "dataset": dataset.get("name"),
    }
    say(
        f"imported {done:,} {kind} into the catalog of {dataset.get('name')} in {seconds:.1f}s "
        f"({done / max(seconds, 1e-9):,.0f}/s); shared: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(shared.items()))
        + (f"; {repeated:,} repeated ids (the later row kept)" if repeated else "")
        + (f"; columns that are no {entity} field, left out: {left_out}" if left_out else "")
    )
    return summary


def main(argv: list[str] | None = None, client: httpx.Client | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.catalog_import", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--input", required=True, type=Path, help="Parquet, CSV, TSV, JSONL")
    parser.add_argument("--id-column", help="default: item_id / user_id")
    parser.add_argument("--batch-size", type=int, default=1000, help="records per request")
    parser.add_argument("--encoding", help="the file's encoding (default: UTF-8 or its BOM)")
    parser.add_argument("--delimiter", help="CSV/TSV delimiter (default: from the header)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    own = client is None
    client = client or httpx.Client(timeout=args.timeout)
    try:
        run(
            client,
            args.url.rstrip("/"),
            args.kind,
            args.input,
            id_column=args.id_column,
            batch_size=args.batch_size,
            encoding=args.encoding,
            delimiter=args.delimiter,
        )
    except CatalogImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    finally:
        if own:
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
