"""Users and items registered in the service's catalog, added to a data set for retraining.

``python -m training --config SPEC --catalog DIR`` reads every ``catalog-*.jsonl`` under
``DIR`` (``model/catalog_format.py``; the service's ``LEVI_CATALOG_DIR``, or copies of several
replicas' directories) and keeps, per entity, its newest record (by ``(version, writer)``:
copies, replays and the order of the files change nothing), so each entity is counted once. A
registered entity the data set does not have gets a row from its record's fields (typed as
the spec declares them); one it has gets the record's fields over its row, field by field
(the record wins, as when serving), so the retrained model knows registered entities by id
and with their latest fields. A deleted entity's record is not used (the data set's own row,
if any, stays). Records of another data set are left out and counted; the partial last line
a crash can leave is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from model.catalog_format import PREFIX, SUFFIX, latest, read_records
from training.data.dataset import RatingsDataset, _sorted
from training.data.tables import DataError, typed_entities
from training.spec import DatasetSpec

SIDES = (("user", "users", "user_id"), ("item", "items", "item_id"))


@dataclass(frozen=True)
class CatalogSummary:
    """What ``add_catalog`` did (for the log line)."""

    files: int
    records: int
    entities: int
    superseded: int
    deleted: int
    other_dataset: int
    partial_lines: int
    new_users: int
    updated_users: int
    new_items: int
    updated_items: int

    def __str__(self) -> str:
        return (
            f"catalog: {self.entities:,} entities from {self.records:,} records in "
            f"{self.files} file(s) ({self.superseded:,} older or repeated records, "
            f"{self.deleted:,} deleted, {self.other_dataset:,} of another data set, "
            f"{self.partial_lines} partial line(s) left out); {self.new_users:,} new and "
            f"{self.updated_users:,} updated users, {self.new_items:,} new and "
            f"{self.updated_items:,} updated items"
        )


def read_catalog_dir(directory: Path) -> tuple[list[dict[str, Any]], int, int]:
    """Every record of every catalog log file under ``directory``.

    Returns:
        ``(records, files, partial lines)``.

    Raises:
        DataError: the directory is missing, or a line is not a record. A directory without
            catalog files (a service that registered nothing yet) gives no records.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--catalog {directory}: not a directory")
    paths = sorted(directory.rglob(f"{PREFIX}*{SUFFIX}"))
    records, partial = [], 0
    for path in paths:
        try:
            got, skipped = read_records(path)
        except ValueError as e:
            raise DataError(str(e)) from None
        records += got
        partial += skipped
    return records, len(paths), partial


def _apply(
    spec: DatasetSpec, table: pd.DataFrame, section: str, id_name: str, records: list
) -> tuple[pd.DataFrame, int, int]:
    """``table`` with the records' entities added or updated; ``(table, new, updated)``."""
    if not records:
        return table, 0, 0
    rows = [{id_name: r["id"], **r["fields"]} for r in records]
    typed = typed_entities(spec, section, rows, f"catalog log ({section})").set_index(id_name)
    ids = [str(r["id"]) for r in records]
    known = table[id_name].astype(str).isin(set(ids))
    old = table[known].set_index(id_name).to_dict("index")
    out = []
    for r, entity in zip(records, ids, strict=True):
        fresh = typed.loc[entity].to_dict()
        if entity in old:  # the record's fields over the data set's row
            row = {**old[entity], **{k: fresh[k] for k in r["fields"] if k in fresh}}
        else:
            row = fresh
        out.append({id_name: entity, **row})
    added = pd.DataFrame(out).reindex(columns=table.columns)
    merged = _sorted(pd.concat([table[~known], added], ignore_index=True), (id_name,))
    return merged, len(ids) - len(old), len(old)


def add_catalog(
    dataset: RatingsDataset, spec: DatasetSpec, directory: Path
) -> tuple[RatingsDataset, CatalogSummary]:
    """``dataset`` with the registered users and items of ``directory`` in its tables.

    Raises:
        DataError: see :func:`read_catalog_dir`; a field that does not fit its column.
    """
    records, files, partial = read_catalog_dir(directory)
    newest = latest(records)
    ours = {k: r for k, r in newest.items() if k[0] == spec.name}
    live = [r for r in ours.values() if not r.get("deleted")]
    tables, counts = {}, {}
    for side, section, id_name in SIDES:
        of_side = sorted((r for r in live if r["kind"] == side), key=lambda r: str(r["id"]))
        table = dataset.users if side == "user" else dataset.items
        tables[side], *counts[side] = _apply(spec, table, section, id_name, of_side)
    out = RatingsDataset(dataset.name, dataset.ratings, tables["user"], tables["item"]).validate()
    summary = CatalogSummary(
        files=files,
        records=len(records),
        entities=len(live),
        superseded=len(records) - len(newest),
        deleted=len(ours) - len(live),
        other_dataset=len(newest) - len(ours),
        partial_lines=partial,
        new_users=counts["user"][0],
        updated_users=counts["user"][1],
        new_items=counts["item"][0],
        updated_items=counts["item"][1],
    )
    return out, summary
