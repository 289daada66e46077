"""In-distribution / out-of-distribution splits (paper Sec. 5 and D.1).

* ``genre_shift_split``: MovieLens-100K genre shift. A movie is ID when it has any of
  ``ID_GENRES``; ID ratings are shuffled and split 80/10/10; OOD = every rating of the other
  movies (cold-start items), reported per genre for genres with >= 200 OOD ratings.
* ``amazon_time_split``: Books reviews of the first 4 years are ID, of the last year OOD.
* ``amazon_product_split``: Books reviews are ID, other categories OOD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.data.amazon import BOOKS
from training.data.dataset import RatingsDataset
from training.data.genres import MOVIELENS_GENRES
from training.data.movielens import is_ml100k

ID_GENRES: tuple[str, ...] = ("Action", "Comedy", "Drama", "Romance", "Thriller")
YEAR_SECONDS = 365 * 24 * 3600 + 6 * 3600  # a Julian year, 365.25 days

# The paper's numbers for the genre shift of the full MovieLens-100K (DESIGN.md).
ML100K_GENRE_SHIFT = {
    "id_items": 1_461,
    "id_ratings": 91_142,
    "ood_items": 221,
    "ood_ratings": 8_858,
    "ood_groups": (
        "Adventure", "Animation", "Children's", "Crime", "Documentary", "Film-Noir", "Horror",
        "Musical", "Mystery", "Sci-Fi", "War", "Western",
    ),
}  # fmt: skip


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
    if not is_id.any() or not is_ood.any():
        raise ValueError(
            f"{name}: the rule gives {int(is_id.sum()):,} ID and {int(is_ood.sum()):,} OOD "
            "ratings; both must be non-empty (check the genres/category/years passed)"
        )
    train, val, test = _partition(ratings[is_id], seed, val_frac, test_frac)
    ood = ratings[is_ood].reset_index(drop=True)
    return Split(name, seed, train, val, test, ood, _groups(ood, item_groups, min_group, order))


def _genre_order(genre: str) -> tuple[int, str]:
    """GroupLens order for MovieLens genres, then any other names alphabetically."""
    known = {g: i for i, g in enumerate(MOVIELENS_GENRES)}
    return (known.get(genre, len(known)), genre)


def check_ml100k_genre_shift(split: Split) -> None:
    """Raise unless ``split`` has the paper's counts for the full MovieLens-100K.

    Raises:
        ValueError: listing each count expected and found.
    """
    s = split.summary()
    got = {k: s[k] for k in ML100K_GENRE_SHIFT if k != "ood_groups"}
    got["ood_groups"] = tuple(s["ood_groups"])
    wrong = {k: (v, got[k]) for k, v in ML100K_GENRE_SHIFT.items() if got[k] != v}
    if wrong:
        detail = "; ".join(f"{k}: expected {e}, got {g}" for k, (e, g) in wrong.items())
        raise ValueError(
            f"genre shift of the full MovieLens-100K does not match the paper: {detail}. The "
            "items' genres are probably not canonical (see training/data/genres.py: every "
            "spelling must map to the 19 GroupLens names, 'unknown' included, and an "
            "'unknown'-only movie is OOD)."
        )


def genre_shift_split(
    ds: RatingsDataset,
    seed: int = 0,
    id_genres: Sequence[str] = ID_GENRES,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    min_group: int = 200,
) -> Split:
    """The MovieLens genre-shift split.

    Args:
        ds: a dataset whose items carry canonical ``genres``.
        seed: seed of the ID shuffle (``np.random.default_rng``).
        id_genres: a movie with any of these genres is ID; all other movies are OOD.
        val_frac, test_frac: shares of the ID ratings for validation and test.
        min_group: an OOD genre becomes a group of ``ood_groups`` with at least this many
            OOD ratings.

    Raises:
        ValueError: the split is degenerate, or ``ds`` is the full MovieLens-100K and the
            counts differ from the paper's (1,461 / 91,142 ID; 221 / 8,858 OOD; 12 groups).
    """
    wanted = set(id_genres)
    unknown = wanted - set(MOVIELENS_GENRES)
    known_in_data = set(ds.items["genres"].explode().dropna())
    if unknown - known_in_data:
        raise ValueError(
            f"id_genres {sorted(unknown - known_in_data)} name no genre of the items; "
            f"expected names such as {', '.join(MOVIELENS_GENRES)}"
        )
    item_genres = pd.Series(ds.items["genres"].to_numpy(), index=ds.items["item_id"])
    id_items = item_genres.index[item_genres.map(lambda gs: not wanted.isdisjoint(gs))]
    is_id = ds.ratings["item_id"].isin(id_items).to_numpy()
    split = _make_split(
        "genre_shift", seed, ds.ratings, is_id, ~is_id, item_genres,
        val_frac, test_frac, min_group, _genre_order,
    )  # fmt: skip
    if is_ml100k(ds) and tuple(id_genres) == ID_GENRES and min_group == 200:
        check_ml100k_genre_shift(split)
    return split


def _categories(ds: RatingsDataset) -> pd.Series:
    if "category" not in ds.items.columns:
        raise ValueError(
            f"dataset {ds.name!r} has no items.category column; the Amazon splits need one "
            "(load the data with training.data.load_amazon)"
        )
    return pd.Series(ds.items["category"].to_numpy(), index=ds.items["item_id"])


def amazon_time_split(
    ds: RatingsDataset,
    seed: int = 0,
    category: str = BOOKS,
    id_years: float = 4,
    ood_years: float = 1,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    min_group: int = 200,
) -> Split:
    """Time shift within one category: its first ``id_years`` are ID, its last ``ood_years``
    OOD, years in between unused.

    Years count from the category's first and last review (365.25 days each); ID stops
    where the OOD window starts if the data are shorter than ``id_years + ood_years``.
    ``ood_groups`` has the category itself (when it has ``min_group`` OOD ratings).
    """
    cats = _categories(ds)
    in_cat = (ds.ratings["item_id"].map(cats) == category).to_numpy()
    if not in_cat.any():
        raise ValueError(
            f"no rating of category {category!r}; categories present: {sorted(set(cats))[:10]}"
        )
    ts = ds.ratings["timestamp"].to_numpy()
    first, last = ts[in_cat].min(), ts[in_cat].max()
    ood_start = last - int(ood_years * YEAR_SECONDS)
    id_end = min(first + int(id_years * YEAR_SECONDS), ood_start)
    is_id = in_cat & (ts < id_end)
    is_ood = in_cat & (ts >= ood_start)
    groups = cats.map(lambda c: (c,))
    return _make_split(
        "amazon_time_shift", seed, ds.ratings, is_id, is_ood, groups,
        val_frac, test_frac, min_group,
    )  # fmt: skip


def amazon_product_split(
    ds: RatingsDataset,
    seed: int = 0,
    id_categories: Iterable[str] = (BOOKS,),
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    min_group: int = 200,
) -> Split:
    """Product shift: reviews of ``id_categories`` (Books) are ID, all others OOD; each OOD
    category with ``min_group`` ratings is a group."""
    cats = _categories(ds)
    wanted = set(id_categories)
    is_id = ds.ratings["item_id"].map(cats).isin(wanted).to_numpy()
    groups = cats.map(lambda c: (c,) if c else ())
    return _make_split(
        "amazon_product_shift", seed, ds.ratings, is_id, ~is_id, groups,
        val_frac, test_frac, min_group,
    )  # fmt: skip
