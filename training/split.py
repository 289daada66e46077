"""In-distribution / out-of-distribution splits, as the dataset spec's ``[split]`` declares.

``make_split(dataset, spec.split)``; the kinds (``training.spec.SplitSpec``):

* ``random``: every rating is ID (shuffled into train/val/test); no OOD test set;
* ``time``: ratings at or after a cutoff date (or the latest ``ood_fraction``) are OOD, one
  global cutoff (a per-user cutoff leaks the future); OOD groups are calendar months;
* ``item_attribute``: an item is ID when its column has ANY of the ``in_distribution``
  values; OOD groups are the column's values (the paper's MovieLens genre shift: ID genres
  Action, Comedy, Drama, Romance, Thriller; Sec. 5, D.1);
* ``cold_items``: a seeded share of the items, with all their ratings, is OOD (cold start);
  one OOD group, ``all``.

ID ratings are shuffled with ``default_rng(seed)`` and cut into train / val / test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from model.timestamps import TimestampError, to_seconds
from training.data.dataset import RatingsDataset
from training.spec import SplitSpec


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no truth value to compare by
class Split:
    """ID train/val/test and OOD test ratings (columns of the canonical ratings table).

    Attributes:
        ood_groups: for each OOD group (genre, category) with at least ``min_group`` ratings,
            the int64 row positions in ``ood`` of its ratings; groups may overlap.
    """

    name: str
    seed: int
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    ood: pd.DataFrame
    ood_groups: dict[str, np.ndarray]

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"Split(name={self.name!r}, seed={self.seed}, train={s['train']:,}, "
            f"val={s['val']:,}, test={s['test']:,}, ood={s['ood']:,}, "
            f"ood_groups={list(self.ood_groups)})"
        )

    def summary(self) -> dict:
        """Counts: ratings per part, distinct ID / OOD items, and ratings per OOD group."""
        id_parts = (self.train, self.val, self.test)
        return {
            "name": self.name,
            "seed": self.seed,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "ood": len(self.ood),
            "id_ratings": sum(len(p) for p in id_parts),
            "ood_ratings": len(self.ood),
            "id_items": int(pd.concat([p["item_id"] for p in id_parts]).nunique()),
            "ood_items": int(self.ood["item_id"].nunique()),
            "ood_groups": {g: len(rows) for g, rows in self.ood_groups.items()},
        }


def _partition(
    ratings: pd.DataFrame, seed: int, val_frac: float, test_frac: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle with ``default_rng(seed)``; the first share is train, then val, then test."""
    if min(val_frac, test_frac) < 0 or val_frac + test_frac >= 1:
        raise ValueError(
            f"val_frac={val_frac} and test_frac={test_frac}: expected non-negative fractions "
            "summing to less than 1 (the rest is train)"
        )
    n = len(ratings)
    n_val, n_test = round(n * val_frac), round(n * test_frac)
    n_train = n - n_val - n_test
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n_train, n_train + n_val])
    return tuple(ratings.iloc[p].reset_index(drop=True) for p in parts)  # type: ignore[return-value]


def _groups(
    ood: pd.DataFrame,
    item_groups: pd.Series,
    min_group: int,
    order: Callable[[str], object] = str,
) -> dict[str, np.ndarray]:
    """Row positions in ``ood`` per group (``item_groups``: item_id -> tuple of groups)."""
    per_row = ood["item_id"].map(item_groups).reset_index(drop=True)
    exploded = per_row.explode().dropna()
    counts = exploded.value_counts()
    kept = sorted((g for g, n in counts.items() if n >= min_group), key=order)
    return {str(g): exploded.index[exploded == g].to_numpy(dtype=np.int64) for g in kept}


def _make_split(
    name: str,
    seed: int,
    ratings: pd.DataFrame,
    is_id: np.ndarray,
    is_ood: np.ndarray,
    item_groups: pd.Series,
    val_frac: float,
    test_frac: float,
    min_group: int,
    order: Callable[[str], object] = str,
) -> Split:
    if not is_id.any() or (name != "random" and not is_ood.any()):
        raise ValueError(
            f"split {name}: the rule gives {int(is_id.sum()):,} ID and {int(is_ood.sum()):,} "
            "OOD ratings; both must be non-empty (check the spec's [split] values)"
        )
    train, val, test = _partition(ratings[is_id], seed, val_frac, test_frac)
    if not len(train) or not len(val):
        raise ValueError(
            f"split {name}: {int(is_id.sum()):,} ID ratings give {len(train)} training and "
            f"{len(val)} validation ratings; both must be non-empty (early stopping reads the "
            "validation set): raise split.valid_fraction or use more data"
        )
    ood = ratings[is_ood].reset_index(drop=True)
    return Split(name, seed, train, val, test, ood, _groups(ood, item_groups, min_group, order))


def _item_values(ds: RatingsDataset, column: str) -> pd.Series:
    """item_id -> tuple of the column's values (a single value for a categorical column)."""
    values = ds.items[column].to_numpy()
    as_tuple = [
        tuple(str(x) for x in v)
        if isinstance(v, tuple | list | np.ndarray)
        else (() if v is None or (isinstance(v, float) and v != v) else (str(v),))
        for v in values
    ]
    return pd.Series(as_tuple, index=ds.items["item_id"].to_numpy(), dtype=object)


def _fold(value: str) -> str:
    return value.strip().casefold()


def _item_attribute(ds: RatingsDataset, spec: SplitSpec, ratings: pd.DataFrame):
    item_values = _item_values(ds, spec.column)
    wanted = {_fold(v) for v in spec.in_distribution}
    known = {_fold(v) for vs in item_values for v in vs}
    absent = sorted(v for v in spec.in_distribution if _fold(v) not in known)
    sample = sorted({v for vs in item_values for v in vs})[:20]
    if len(absent) == len(spec.in_distribution):
        raise ValueError(
            f"split.in_distribution: {absent} is no value of items.{spec.column}; values "
            f"present: {sample}"
        )
    if absent:  # a misspelling, or values this data happens not to have
        warnings.warn(
            f"split.in_distribution: {absent} is no value of items.{spec.column} (values "
            f"present: {sample})",
            stacklevel=3,
        )
    id_items = item_values.index[item_values.map(lambda vs: any(_fold(v) in wanted for v in vs))]
    is_id = ratings["item_id"].isin(id_items).to_numpy()
    return is_id, ~is_id, item_values


def _cutoff_seconds(text: str) -> int:
    try:
        return to_seconds(text)
    except TimestampError as e:
        raise ValueError(f"split.cutoff: {e}") from None


def _month(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").strftime("%Y-%m")


def make_split(ds: RatingsDataset, spec: SplitSpec, seed: int | None = None) -> Split:
    """The spec's split of a dataset.

    Args:
        ds: typed tables (``training.data.load_spec_dataset``).
        spec: the spec's ``[split]``.
        seed: replaces ``spec.seed`` (the ID shuffle).

    Returns:
        A :class:`Split`; ``ood_groups`` hold row positions in ``ood`` per group with at
        least ``spec.min_group`` ratings.

    Raises:
        ValueError: a value of the spec absent from the data, an empty ID or OOD side, or
            counts that differ from ``spec.expect``.
    """
    seed = spec.seed if seed is None else seed
    ratings = ds.ratings
    if spec.within is not None:
        values = _item_values(ds, spec.within.column)
        keep = {_fold(v) for v in spec.within.values}
        inside = values.index[values.map(lambda vs: any(_fold(v) in keep for v in vs))]
        ratings = ratings[ratings["item_id"].isin(inside)].reset_index(drop=True)
        if ratings.empty:
            raise ValueError(
                f"split.within: no rating of an item with {spec.within.column} in "
                f"{spec.within.values}"
            )
    n = len(ratings)
    everything = pd.Series([("all",)] * len(ds.items), index=ds.items["item_id"].to_numpy())
    if spec.kind == "random":
        is_id, is_ood, groups = np.ones(n, bool), np.zeros(n, bool), everything
    elif spec.kind == "item_attribute":
        is_id, is_ood, groups = _item_attribute(ds, spec, ratings)
    elif spec.kind == "cold_items":
        items = np.array(sorted(ratings["item_id"].unique()), dtype=object)
        order = np.random.default_rng(seed).permutation(len(items))
        n_ood = max(1, round(len(items) * spec.ood_fraction))
        is_ood = ratings["item_id"].isin(set(items[order[:n_ood]])).to_numpy()
        is_id, groups = ~is_ood, everything
    else:  # time
        ts = ratings["timestamp"].to_numpy()
        if spec.cutoff is not None:
            cutoff = _cutoff_seconds(spec.cutoff)
        else:
            cutoff = int(np.sort(ts)[min(n - 1, int(round(n * (1 - spec.ood_fraction))))])
        is_ood = ts >= cutoff
        is_id = ~is_ood
        groups = None
    split = _make_split(
        spec.kind,
        seed,
        ratings,
        is_id,
        is_ood,
        groups if groups is not None else everything,
        spec.valid_fraction,
        spec.test_fraction,
        spec.min_group,
    )
    if spec.kind == "time":  # groups by month of the rating, not by item
        months = split.ood["timestamp"].map(_month)
        counts = months.value_counts()
        kept = sorted(m for m, c in counts.items() if c >= spec.min_group)
        split = Split(
            split.name,
            split.seed,
            split.train,
            split.val,
            split.test,
            split.ood,
            {m: np.flatnonzero(months.to_numpy() == m).astype(np.int64) for m in kept},
        )
    if spec.expect:
        check_counts(split, spec.expect)
    return split


def check_counts(split: Split, expect: dict[str, int]) -> None:
    """Raise unless the split has the expected counts (keys of :meth:`Split.summary`;
    ``ood_groups`` counts the groups).

    Raises:
        ValueError: listing each count expected and found.
    """
    s = split.summary()
    got = {**s, "ood_groups": len(s["ood_groups"])}
    unknown = sorted(set(expect) - set(got))
    if unknown:
        raise ValueError(f"split.expect: unknown count(s) {unknown}; known: {sorted(got)}")
    wrong = {k: (v, got[k]) for k, v in expect.items() if got[k] != v}
    if wrong:
        detail = "; ".join(f"{k}: expected {e:,}, got {g:,}" for k, (e, g) in wrong.items())
        raise ValueError(
            f"split {split.name} does not have the counts the spec expects: {detail}. The data "
            "differ from what the spec was written for (a truncated download, other value "
            "spellings); fix the data or the spec's split.expect."
        )
