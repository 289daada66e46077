"""Stages 1-2 of a run: the data (read, feedback added, split, features fitted on ID train)
and the text views' activations with the head's tables (``Prepared``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.features import FeatureSpec, fit_feature_spec
from model.templates import ViewSet
from training.config import TrainConfig
from training.precompute import ViewActivations, precompute
from training.spec import DatasetSpec, SpecError, load_spec
from training.train import (
    TrainTables,
)

PARTS = ("train", "val", "test", "ood")


@dataclass(frozen=True)
class Prepared:
    """Data, features and activations, aligned on one table of pairs.

    Attributes:
        pairs: ``user_id, item_id, rating, timestamp`` of train, val, test and OOD,
            concatenated (timestamp 0 when the spec declares none).
        rows: part name -> int32 row positions in ``pairs``.
        ood_groups: OOD group (a value of the split column, a month, ...) -> row positions
            in ``pairs`` (OOD rows of that group).
    """

    spec: DatasetSpec
    dataset: Any
    pairs: pd.DataFrame
    rows: dict[str, np.ndarray]
    ood_groups: dict[str, np.ndarray]
    features: FeatureSpec
    views: ViewSet
    tables: TrainTables | None = None
    activations: ViewActivations | None = None

    @property
    def users(self) -> pd.DataFrame:
        """The users table (``user_id`` and the spec's user columns)."""
        return self.dataset.users

    @property
    def items(self) -> pd.DataFrame:
        """The items table (``item_id`` and the spec's item columns)."""
        return self.dataset.items

    def pair_ids(self, entity: str, rows) -> np.ndarray:
        """The ``entity`` (``user`` or ``item``) id strings of pair ``rows``."""
        return self.pairs[f"{entity}_id"].to_numpy()[np.asarray(rows)]


def prepare_data(
    cfg: TrainConfig,
    dataset=None,
    spec: DatasetSpec | None = None,
    log: Callable[[str], None] = print,
) -> Prepared:
    """Read the spec and the data (unless given), add the logged feedback (``cfg.feedback``),
    split, and fit the features on ID train."""
    spec = spec or load_spec(cfg.dataset)
    if dataset is None:
        from training.data import load_spec_dataset

        dataset = load_spec_dataset(spec, cfg.data_path, cfg.reader)
    split_spec = spec.split
    if cfg.feedback:
        from training.data.feedback import add_feedback

        dataset, summary = add_feedback(dataset, spec, Path(cfg.feedback))
        log(str(summary))
        if split_spec.expect and summary.added:  # the data set's own counts no longer hold
            log("split.expect not checked: the feedback events changed the counts")
            split_spec = split_spec.model_copy(update={"expect": None})
    from training.split import make_split

    try:
        split = make_split(dataset, split_spec, cfg.split_seed)
    except ValueError as e:  # the data do not fit the spec's [split]: name the file
        raise SpecError(f"{spec.source or spec.name}: [split]: {e}") from None
    parts = [getattr(split, p) for p in PARTS]
    pairs = pd.concat(parts, ignore_index=True)[["user_id", "item_id", "rating", "timestamp"]]
    pairs = pairs.astype({"user_id": str, "item_id": str})
    offsets = np.cumsum([0] + [len(p) for p in parts])
    rows = {p: np.arange(offsets[k], offsets[k + 1], dtype=np.int32) for k, p in enumerate(PARTS)}
    ood_groups = {
        g: (offsets[3] + np.asarray(r, dtype=np.int64)).astype(np.int32)
        for g, r in split.ood_groups.items()
    }
    train = split.train
    users = dataset.users[dataset.users["user_id"].astype(str).isin(set(train["user_id"]))]
    items = dataset.items[dataset.items["item_id"].astype(str).isin(set(train["item_id"]))]
    features = fit_feature_spec(
        spec.column_decls(), users.to_dict("records"), items.to_dict("records")
    )
    return Prepared(spec, dataset, pairs, rows, ood_groups, features, spec.views())


def encode_views(
    prep: Prepared, backbone, cfg: TrainConfig, *, cache: Path | None, progress: bool
) -> Prepared:
    """Activations of every view (cached) and the head's tables."""
    ds = prep.dataset
    acts = precompute(
        backbone,
        prep.views,
        ds.users,
        ds.items,
        prep.pairs[["user_id", "item_id"]],
        cache=cache,
        batch_size=cfg.encode_batch_size,
        progress=progress,
    )
    user_pos = pd.Index(ds.users["user_id"].astype(str))
    item_pos = pd.Index(ds.items["item_id"].astype(str))
    user_records, item_records = ds.users.to_dict("records"), ds.items.to_dict("records")
    tables = TrainTables(
        user_ids=prep.features.encode_entity("user", user_records),
        item_ids=prep.features.encode_entity("item", item_records),
        user_multi_hot=prep.features.encode_multi_hot("user", user_records),
        multi_hot=prep.features.encode_multi_hot("item", item_records),
        views=acts.matrices,
        pair_user=user_pos.get_indexer(prep.pairs["user_id"]).astype(np.int32),
        pair_item=item_pos.get_indexer(prep.pairs["item_id"]).astype(np.int32),
        pair_text=acts.index,
        rating=prep.pairs["rating"].to_numpy(np.float32),
    )
    return dataclasses.replace(prep, tables=tables, activations=acts)
