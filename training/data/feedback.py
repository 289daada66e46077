"""Ratings the service logged from ``POST /feedback``, added to a data set for retraining.

``python -m training --config SPEC --feedback DIR`` reads every ``*.jsonl`` under ``DIR``
(``model/feedback_format.py``; the service's ``LEVI_FEEDBACK_DIR``, or copies of several
replicas' directories; the catalog's ``catalog-*.jsonl`` are ``--catalog``'s), keeps each
event once by its ``event_id`` (a file copied twice, or collected from two places, counts
once), and appends the events to the ratings; a user's latest rating of an item replaces the
earlier ones (the data set's and earlier events'), so no pair is counted twice or lands in
both training and test. Users and items the data set does not have get a row from the fields
their latest event sent (typed as the spec declares them); known ones (registered in the
service's catalog included, with ``--catalog``) keep their row. Events logged by a model of
another data set (the event's ``dataset``), with a rating outside the spec's scale, or with a
timestamp that is not valid (``model/timestamps.py``: a log of an older service could hold
one) are left out and counted. The partial last line a crash can leave is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.catalog_format import is_catalog_file
from model.feedback_format import SUFFIX, read_events
from model.timestamps import TimestampError, to_seconds
from training.data.dataset import RatingsDataset, _sorted
from training.data.tables import DataError, typed_entities
from training.spec import DatasetSpec


@dataclass(frozen=True)
class FeedbackSummary:
    """What ``add_feedback`` did (for the log line and the report)."""

    files: int
    added: int
    duplicates: int
    other_dataset: int
    out_of_scale: int
    partial_lines: int
    new_users: int
    new_items: int
    replaced: int = 0
    bad_timestamp: int = 0

    def __str__(self) -> str:
        return (
            f"feedback: {self.added:,} events added from {self.files} file(s) "
            f"({self.duplicates:,} duplicate ids, {self.replaced:,} earlier ratings of the same "
            f"user and item replaced, {self.other_dataset:,} of another data set, "
            f"{self.out_of_scale:,} outside the rating scale, {self.bad_timestamp:,} with an "
            f"invalid timestamp, {self.partial_lines} partial "
            f"line(s) left out); {self.new_users:,} new users, {self.new_items:,} new items"
        )


def read_feedback_dir(directory: Path) -> tuple[list[dict], int, int, int]:
    """Distinct events of every log file under ``directory``, in file then line order.

    Returns:
        ``(events, files, duplicates, partial lines)``.

    Raises:
        DataError: the directory is missing, or a line is not an event. A directory without
            log files (a service that got no feedback yet) gives no events.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--feedback {directory}: not a directory")
    # the catalog's logs may share the directory (python -m training --catalog reads them)
    paths = sorted(p for p in directory.rglob(f"*{SUFFIX}") if not is_catalog_file(p))
    seen: set[str] = set()
    events, duplicates, partial = [], 0, 0
    for path in paths:
        try:
            got, skipped = read_events(path)
        except ValueError as e:
            raise DataError(str(e)) from None
        partial += skipped
        for event in got:
            if event["event_id"] in seen:
                duplicates += 1
                continue
            seen.add(event["event_id"])
            events.append(event)
    return events, len(paths), duplicates, partial


def _new_entities(spec, dataset, events, side: str) -> pd.DataFrame:
    table = dataset.users if side == "users" else dataset.items
    id_name, field = ("user_id", "user") if side == "users" else ("item_id", "item")
    known = set(table[id_name])
    latest: dict[str, dict] = {}
    in_time = sorted(events, key=lambda e: e.get("received_at") or e["timestamp"])
    for e in in_time:  # fields of later events override earlier ones
        entity = str(e[id_name])
        if entity not in known:
            fields = e.get(field) or {}
            latest[entity] = {**latest.get(entity, {}), **fields, id_name: entity}
    if not latest:
        return table.iloc[:0]
    return typed_entities(spec, side, list(latest.values()), f"feedback log ({side})")


def add_feedback(
    dataset: RatingsDataset, spec: DatasetSpec, directory: Path
) -> tuple[RatingsDataset, FeedbackSummary]:
    """``dataset`` with the logged feedback events of ``directory`` added to its ratings.

    Raises:
        DataError: see :func:`read_feedback_dir`; a field that does not fit its column.
    """
    events, files, duplicates, partial = read_feedback_dir(directory)
    lo, hi = spec.rating_scale.bounds
    ours = [e for e in events if e.get("dataset") in (None, "", spec.name)]
    in_scale, times = [], []
    for e in ours:
        if not lo <= float(e["rating"]) <= hi:
            continue
        try:
            times.append(to_seconds(e["timestamp"]))
        except TimestampError:
            continue
        in_scale.append(e)
    scaled = sum(lo <= float(e["rating"]) <= hi for e in ours)
    new_users = _new_entities(spec, dataset, in_scale, "users")
    new_items = _new_entities(spec, dataset, in_scale, "items")
    ratings = pd.DataFrame(
        {
            "user_id": pd.Series([str(e["user_id"]) for e in in_scale], dtype=object),
            "item_id": pd.Series([str(e["item_id"]) for e in in_scale], dtype=object),
            "rating": np.array([e["rating"] for e in in_scale], np.float32),
            "timestamp": np.array(times, np.int64),
        }
    )
    latest = ratings.sort_values("timestamp", kind="stable").drop_duplicates(
        ["user_id", "item_id"], keep="last"
    )
    pairs = pd.MultiIndex.from_frame(latest[["user_id", "item_id"]])
    known = pd.MultiIndex.from_frame(dataset.ratings[["user_id", "item_id"]])
    superseded = known.isin(pairs)
    replaced = int(superseded.sum()) + len(ratings) - len(latest)
    base = dataset.ratings[~superseded]

    def joined(old: pd.DataFrame, new: pd.DataFrame, ids: tuple, extra=()) -> pd.DataFrame:
        if not len(new):
            return old
        # reindex: columns the events lack (a data shard's) stay empty
        return _sorted(
            pd.concat([old, new.reindex(columns=old.columns)], ignore_index=True), ids, extra
        )

    out = RatingsDataset(
        dataset.name,
        joined(base, latest, ("user_id", "item_id"), ("timestamp",)),
        joined(dataset.users, new_users, ("user_id",)),
        joined(dataset.items, new_items, ("item_id",)),
    ).validate()
    summary = FeedbackSummary(
        files=files,
        added=len(in_scale),
        duplicates=duplicates,
        other_dataset=len(events) - len(ours),
        out_of_scale=len(ours) - scaled,
        bad_timestamp=scaled - len(in_scale),
        partial_lines=partial,
        new_users=len(new_users),
        new_items=len(new_items),
        replaced=replaced,
    )
    return out, summary
