"""Stages 1-2 of a run: the data (read, feedback added, split, features fitted on ID train)
and the text views' activations with the head's tables (``Prepared``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.features import FeatureSpec, fit_feature_spec
from model.templates import ViewSet
from training import distributed
from training.config import TrainConfig
from training.data.dataset import RatingsDataset
from training.data.shards import (
    ROW_COLUMN,
    SHARD_COLUMN,
    ShardSpec,
    keep_shards,
    user_shards,
)
from training.feed import ShardLayout
from training.pairs import PairTable
from training.precompute import ViewActivations, precompute
from training.spec import DatasetSpec, SpecError, load_spec
from training.train import (
    TrainTables,
)

PARTS = ("train", "val", "test", "ood")


@dataclass(frozen=True)
class Prepared:
    """Data, features and activations, aligned on one table of pairs.

    Memory grows with the entities, not the ratings: the pairs are entity rows
    (:class:`~training.pairs.PairTable`, 20 bytes a rating); ids, features and texts live
    once per entity, activations once per distinct text.

    Attributes:
        source: what was read (the data set's name and table sizes), for the log.
        users, items: the entity tables (``user_id`` / ``item_id`` and the spec's columns).
        pairs: train, val, test and OOD ratings, concatenated, as rows of ``users`` and
            ``items`` (timestamp 0 when the spec declares none).
        rows: part name -> int32 row positions in ``pairs``.
        ood_groups: OOD group (a value of the split column, a month, ...) -> row positions
            in ``pairs`` (OOD rows of that group).
        layout: the pairs' data shards and this process's (``training.feed``).
    """

    spec: DatasetSpec
    source: str
    users: pd.DataFrame
    items: pd.DataFrame
    pairs: PairTable
    rows: dict[str, np.ndarray]
    ood_groups: dict[str, np.ndarray]
    features: FeatureSpec
    views: ViewSet
    layout: ShardLayout | None = None
    tables: TrainTables | None = None
    activations: ViewActivations | None = None

    def pair_ids(self, entity: str, rows) -> np.ndarray:
        """The ``entity`` (``user`` or ``item``) id strings of pair ``rows``."""
        table, key = (self.users, "user_id") if entity == "user" else (self.items, "item_id")
        at = getattr(self.pairs, entity)[np.asarray(rows)]
        return table[key].astype(str).to_numpy()[at]


def prepare_data(
    cfg: TrainConfig,
    dataset=None,
    spec: DatasetSpec | None = None,
    log: Callable[[str], None] = print,
) -> Prepared:
    """Read the spec and the data (unless given), add the registered users and items
    (``cfg.catalog``) and the logged feedback (``cfg.feedback``), split, and fit the features
    on ID train.

    With several processes (``training.distributed``) each reads its own data shards, the
    shards are exchanged (``training.shard_merge``), and every process splits and fits the
    same data, so the split and the vocabularies are the same everywhere. With more than one
    data shard (``cfg.data_shards``) every pair keeps its shard (``Prepared.layout``).
    """
    spec = spec or load_spec(cfg.dataset)
    procs = distributed.process_count()
    count = cfg.data_shards or procs
    shards = None
    if count > 1:
        shards = ShardSpec.of_process(count, distributed.process_index(), procs)
    if dataset is None:
        from training.data import load_spec_dataset

        dataset = load_spec_dataset(spec, cfg.data_path, cfg.reader, shards)
    elif shards is not None:
        dataset = keep_shards(dataset, shards)
    if shards is not None:
        log(
            f"process {distributed.process_index()} of {procs}: {len(dataset.ratings):,} ratings "
            f"of data shards {list(shards.mine)} of {count}"
        )
    if procs > 1:
        from training.shard_merge import merge_shards

        dataset = merge_shards(dataset, spec)
    split_spec = spec.split
    if cfg.catalog:  # first: a registered entity's record wins over its feedback's fields
        from training.data.catalog import add_catalog

        dataset, catalog_summary = add_catalog(dataset, spec, Path(cfg.catalog))
        log(str(catalog_summary))
    if cfg.feedback:
        from training.data.feedback import add_feedback

        dataset, summary = add_feedback(dataset, spec, Path(cfg.feedback))
        if shards is not None:  # the events are in no file: they go to their user's shard
            dataset = with_user_shards(dataset, count)
        log(str(summary))
        if split_spec.expect and summary.added:  # the data set's own counts no longer hold
            log("split.expect not checked: the feedback events changed the counts")
            split_spec = split_spec.model_copy(update={"expect": None})
    from training.split import make_split

    try:
        split = make_split(dataset, split_spec, cfg.split_seed)
    except ValueError as e:  # the data do not fit the spec's [split]: name the file
        raise SpecError(f"{spec.source or spec.name}: [split]: {e}") from None
    source = repr(dataset)
    user_index = pd.Index(dataset.users["user_id"].astype(str))
    item_index = pd.Index(dataset.items["item_id"].astype(str))
    parts = [PairTable.from_frame(getattr(split, p), user_index, item_index) for p in PARTS]
    pairs = PairTable.concat(parts)
    pair_shard = np.zeros(len(pairs), np.int16)
    if shards is not None:
        pair_shard = np.concatenate([getattr(split, p)[SHARD_COLUMN] for p in PARTS])
    offsets = np.cumsum([0] + [len(p) for p in parts])
    rows = {p: np.arange(offsets[k], offsets[k + 1], dtype=np.int32) for k, p in enumerate(PARTS)}
    ood_groups = {
        g: (offsets[3] + np.asarray(r, dtype=np.int64)).astype(np.int32)
        for g, r in split.ood_groups.items()
    }
    del split  # its frames hold the id strings of every rating
    # Features are fitted on the entities of ID train only.
    train = pairs.take(rows["train"])
    users = dataset.users.iloc[np.unique(train.user)]
    items = dataset.items.iloc[np.unique(train.item)]
    features = fit_feature_spec(
        spec.column_decls(), users.to_dict("records"), items.to_dict("records")
    )
    return Prepared(
        spec,
        source,
        dataset.users,
        dataset.items,
        pairs,
        rows,
        ood_groups,
        features,
        spec.views(),
        ShardLayout.of_process(pair_shard, count),
    )


def with_user_shards(dataset: RatingsDataset, count: int) -> RatingsDataset:
    """Ratings without a shard (the feedback events) in their user's shard."""
    ratings = dataset.ratings
    missing = ratings[SHARD_COLUMN].isna().to_numpy()
    shard = ratings[SHARD_COLUMN].to_numpy(np.float64)
    shard[missing] = user_shards(ratings["user_id"][missing], count)
    row = ratings[ROW_COLUMN].fillna(-1).to_numpy(np.int64)
    ratings = ratings.assign(**{SHARD_COLUMN: shard.astype(np.int16), ROW_COLUMN: row})
    return RatingsDataset(dataset.name, ratings, dataset.users, dataset.items)


def encode_views(
    prep: Prepared, backbone, cfg: TrainConfig, *, cache: Path | None, progress: bool
) -> Prepared:
    """Activations of every view (cached) and the head's tables."""
    acts = precompute(
        backbone,
        prep.views,
        prep.users,
        prep.items,
        prep.pairs.user,
        prep.pairs.item,
        cache=cache,
        batch_size=cfg.encode_batch_size,
        progress=progress,
    )
    user_records, item_records = prep.users.to_dict("records"), prep.items.to_dict("records")
    tables = TrainTables(
        user_ids=prep.features.encode_entity("user", user_records),
        item_ids=prep.features.encode_entity("item", item_records),
        user_multi_hot=prep.features.encode_multi_hot("user", user_records),
        multi_hot=prep.features.encode_multi_hot("item", item_records),
        views=acts.matrices,
        pair_user=prep.pairs.user,  # shared with prep.pairs, not copied
        pair_item=prep.pairs.item,
        pair_text=acts.index,
        rating=prep.pairs.rating,
    )
    return dataclasses.replace(prep, tables=tables, activations=acts)
