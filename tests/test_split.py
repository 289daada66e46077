"""ID / OOD splits: the genre-shift rule, its 80/10/10 partition, OOD groups, Amazon shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import (
    RatingsDataset,
    canonical_items,
    canonical_ratings,
    canonical_users,
    load_packaged,
)
from training.split import (
    ID_GENRES,
    ML100K_GENRE_SHIFT,
    YEAR_SECONDS,
    Split,
    amazon_product_split,
    amazon_time_split,
    check_ml100k_genre_shift,
    genre_shift_split,
)

# item_id -> (genres, number of ratings)
TINY = {
    "1": (("Action",), 30),
    "2": (("Comedy", "Horror"), 30),  # any ID genre makes the movie ID
    "3": (("Horror",), 8),
    "4": (("Horror", "Sci-Fi"), 5),
    "5": (("unknown",), 2),  # no ID genre: OOD
    "6": (("Western",), 3),
    "7": (("Drama",), 40),
}
ID_ITEMS, OOD_ITEMS = {"1", "2", "7"}, {"3", "4", "5", "6"}


def make_dataset(
    items: dict[str, tuple[tuple[str, ...], int]], name: str = "tiny"
) -> RatingsDataset:
    item_ids = [i for i, (_, n) in items.items() for _ in range(n)]
    ratings = pd.DataFrame(
        {
            "user_id": [str(k % 10) for k in range(len(item_ids))],
            "item_id": item_ids,
            "rating": [float(1 + k % 5) for k in range(len(item_ids))],
            "timestamp": np.arange(len(item_ids)) + 1_000,
        }
    )
    users = pd.DataFrame({"user_id": [str(u) for u in range(10)], "age": 30})
    table = pd.DataFrame(
        {"item_id": list(items), "title": list(items), "genres": [g for g, _ in items.values()]}
    )
    return RatingsDataset(
        name, canonical_ratings(ratings), canonical_users(users), canonical_items(table)
    ).validate()


def rows(frame: pd.DataFrame) -> list[tuple]:
    return sorted(frame.itertuples(index=False, name=None))


@pytest.fixture
def tiny() -> RatingsDataset:
    return make_dataset(TINY)


def test_genre_shift_rule_and_partition(tiny: RatingsDataset) -> None:
    split = genre_shift_split(tiny, seed=3, min_group=5)
    ratings = tiny.ratings
    id_ratings = ratings[ratings["item_id"].isin(ID_ITEMS)]
    # Train, val and test are exactly the ID ratings, each once; OOD is every other rating.
    together = pd.concat([split.train, split.val, split.test])
    assert rows(together) == rows(id_ratings)
    assert rows(split.ood) == rows(ratings[ratings["item_id"].isin(OOD_ITEMS)])
    assert (len(split.train), len(split.val), len(split.test), len(split.ood)) == (80, 10, 10, 18)
    for part in (split.train, split.val, split.test, split.ood):
        assert list(part.columns) == list(ratings.columns)
        assert part.index.equals(pd.RangeIndex(len(part)))
    assert split.summary() == {
        "name": "genre_shift", "seed": 3, "train": 80, "val": 10, "test": 10, "ood": 18,
        "id_ratings": 100, "ood_ratings": 18, "id_items": 3, "ood_items": 4,
        "ood_groups": {"Horror": 13, "Sci-Fi": 5},
    }  # fmt: skip


def test_ood_groups_are_row_positions_of_each_genre(tiny: RatingsDataset) -> None:
    split = genre_shift_split(tiny, min_group=5)
    assert list(split.ood_groups) == ["Horror", "Sci-Fi"]  # GroupLens order; < 5 left out
    horror = split.ood_groups["Horror"]
    assert horror.dtype == np.int64
    assert sorted(split.ood["item_id"].iloc[horror]) == ["3"] * 8 + ["4"] * 5
    assert set(split.ood["item_id"].iloc[split.ood_groups["Sci-Fi"]]) == {"4"}
    assert list(genre_shift_split(tiny, min_group=6).ood_groups) == ["Horror"]
    assert list(genre_shift_split(tiny, min_group=2).ood_groups) == [
        "unknown", "Horror", "Sci-Fi", "Western"
    ]  # fmt: skip


def test_split_is_a_function_of_the_seed(tiny: RatingsDataset) -> None:
    a, b, c = (genre_shift_split(tiny, seed=s) for s in (0, 0, 1))
    for part in ("train", "val", "test", "ood"):
        pd.testing.assert_frame_equal(getattr(a, part), getattr(b, part))
    assert not a.test.equals(c.test)
    assert rows(a.ood) == rows(c.ood)


def test_genre_shift_errors(tiny: RatingsDataset) -> None:
    with pytest.raises(ValueError, match=r"id_genres \['SciFi'\] name no genre"):
        genre_shift_split(tiny, id_genres=("SciFi",))
    with pytest.raises(ValueError, match="summing to less than 1"):
        genre_shift_split(tiny, val_frac=0.5, test_frac=0.5)
    everything = ("Action", "Comedy", "Drama", "Horror", "Western", "unknown")
    with pytest.raises(ValueError, match="115 ID and 0 OOD"):
        genre_shift_split(make_dataset({k: v for k, v in TINY.items() if k != "6"}),
                          id_genres=everything)  # fmt: skip


def test_paper_counts_are_enforced_on_full_size_movielens() -> None:
    with pytest.raises(ValueError, match="id_items: expected 1461, got 3"):
        check_ml100k_genre_shift(genre_shift_split(make_dataset(TINY)))
    # 100,000 ratings of 1,682 movies is taken for ml-100k: wrong genres must not pass silently.
    items = {str(i): (("Action",) if i < 1_600 else ("Horror",), 0) for i in range(1, 1_683)}
    items = {k: (g, 59 + (int(k) > 920)) for k, (g, _) in items.items()}  # 100,000
    ds = make_dataset(items, name="looks-like-ml-100k")
    assert (len(ds.ratings), len(ds.items)) == (100_000, 1_682)
    with pytest.raises(ValueError, match="does not match the paper.*ood_items: expected 221"):
        genre_shift_split(ds)


def test_split_type() -> None:
    assert ID_GENRES == ("Action", "Comedy", "Drama", "Romance", "Thriller")
    assert "Split(name='genre_shift'" in repr(genre_shift_split(make_dataset(TINY)))
    assert isinstance(genre_shift_split(make_dataset(TINY)), Split)


# --- Amazon -----------------------------------------------------------------------------------


def amazon_dataset(reviews: list[tuple[str, float]]) -> RatingsDataset:
    """reviews: (item_id, years after the first review) -> a dataset with categories."""
    categories = {"B1": "Books", "B2": "Books", "E1": "Electronics", "T1": "Toys"}
    ratings = pd.DataFrame(
        {
            "user_id": [f"U{k}" for k in range(len(reviews))],
            "item_id": [i for i, _ in reviews],
            "rating": 4.0,
            "timestamp": [int(1e9 + y * YEAR_SECONDS) for _, y in reviews],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": list(categories),
            "title": list(categories),
            "genres": [(c,) for c in categories.values()],
            "category": list(categories.values()),
        }
    )
    users = pd.DataFrame({"user_id": ratings["user_id"]})
    return RatingsDataset(
        "amazon", canonical_ratings(ratings), canonical_users(users), canonical_items(items)
    ).validate()


def test_amazon_time_split() -> None:
    book_years = [0.0, 1.0, 2.0, 3.0, 3.9, 4.1, 5.0, 5.6, 6.0, 6.5]  # span 6.5 years
    reviews = [("B1" if k % 2 else "B2", y) for k, y in enumerate(book_years)]
    reviews += [("E1", 0.5), ("E1", 6.2)]  # other categories take no part
    split = amazon_time_split(amazon_dataset(reviews), val_frac=0.2, test_frac=0.2, min_group=3)

    def years(frame: pd.DataFrame) -> list[float]:
        return sorted(round((t - 1e9) / YEAR_SECONDS, 1) for t in frame["timestamp"])

    assert years(pd.concat([split.train, split.val, split.test])) == [0.0, 1.0, 2.0, 3.0, 3.9]
    assert years(split.ood) == [5.6, 6.0, 6.5]  # the last year; 4.1 and 5.0 are unused
    assert (len(split.train), len(split.val), len(split.test)) == (3, 1, 1)
    assert split.ood_groups.keys() == {"Books"}
    assert split.ood_groups["Books"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="no rating of category 'Music'"):
        amazon_time_split(amazon_dataset(reviews), category="Music")


def test_amazon_product_split() -> None:
    reviews = [("B1", 0.0)] * 10 + [("B2", 1.0)] * 10 + [("E1", 2.0)] * 4 + [("T1", 3.0)] * 2
    split = amazon_product_split(amazon_dataset(reviews), min_group=3)
    together = pd.concat([split.train, split.val, split.test])
    assert set(together["item_id"]) == {"B1", "B2"} and len(together) == 20
    assert sorted(split.ood["item_id"]) == ["E1"] * 4 + ["T1"] * 2
    assert split.ood_groups.keys() == {"Electronics"}  # Toys has 2 < 3 ratings
    assert set(split.ood["item_id"].iloc[split.ood_groups["Electronics"]]) == {"E1"}


def test_amazon_splits_need_categories(tiny: RatingsDataset) -> None:
    with pytest.raises(ValueError, match="no items.category column"):
        amazon_product_split(tiny)


# --- the real MovieLens-100K ------------------------------------------------------------------


@pytest.mark.slow
def test_genre_shift_on_movielens_100k_matches_the_paper() -> None:
    ds = load_packaged()
    split = genre_shift_split(ds, seed=0)
    s = split.summary()
    assert (s["id_items"], s["id_ratings"]) == (1_461, 91_142)
    assert (s["ood_items"], s["ood_ratings"]) == (221, 8_858)
    assert tuple(s["ood_groups"]) == ML100K_GENRE_SHIFT["ood_groups"]
    assert (s["train"], s["val"], s["test"]) == (72_914, 9_114, 9_114)
    genres = ds.items.set_index("item_id")["genres"]
    ood_genres = split.ood["item_id"].map(genres)
    assert not any(set(g) & set(ID_GENRES) for g in ood_genres)
    for genre, positions in split.ood_groups.items():
        assert len(positions) >= 200
        has = ood_genres.map(lambda gs, genre=genre: genre in gs).to_numpy()
        np.testing.assert_array_equal(positions, np.flatnonzero(has))
