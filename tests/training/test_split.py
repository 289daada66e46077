"""ID / OOD splits of the dataset spec: item_attribute (the genre shift), random, time,
cold_items; partitions, OOD groups, expected counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import (
    RatingsDataset,
    canonical_items,
    canonical_ratings,
    canonical_users,
)
from training.spec import SplitSpec
from training.split import Split, make_split

ID_GENRES = ("Action", "Comedy", "Drama", "Romance", "Thriller")


def genre_shift(ds: RatingsDataset, **changes) -> Split:
    args = {"kind": "item_attribute", "column": "genres", "in_distribution": list(ID_GENRES)}
    return make_split(ds, SplitSpec(**{**args, **changes}))


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


def test_item_attribute_rule_and_partition(tiny: RatingsDataset) -> None:
    split = genre_shift(tiny, seed=3, min_group=5)
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
        "name": "item_attribute",
        "seed": 3,
        "train": 80,
        "val": 10,
        "test": 10,
        "ood": 18,
        "id_ratings": 100,
        "ood_ratings": 18,
        "id_items": 3,
        "ood_items": 4,
        "ood_groups": {"Horror": 13, "Sci-Fi": 5},
    }


def test_ood_groups_are_row_positions_of_each_value(tiny: RatingsDataset) -> None:
    split = genre_shift(tiny, min_group=5)
    assert list(split.ood_groups) == ["Horror", "Sci-Fi"]  # < 5 ratings left out
    horror = split.ood_groups["Horror"]
    assert horror.dtype == np.int64
    assert sorted(split.ood["item_id"].iloc[horror]) == ["3"] * 8 + ["4"] * 5
    assert set(split.ood["item_id"].iloc[split.ood_groups["Sci-Fi"]]) == {"4"}
    assert list(genre_shift(tiny, min_group=6).ood_groups) == ["Horror"]
    assert sorted(genre_shift(tiny, min_group=2).ood_groups) == [
        "Horror",
        "Sci-Fi",
        "Western",
        "unknown",
    ]


def test_split_is_a_function_of_the_seed(tiny: RatingsDataset) -> None:
    a, b, c = (genre_shift(tiny, seed=s) for s in (0, 0, 1))
    for part in ("train", "val", "test", "ood"):
        pd.testing.assert_frame_equal(getattr(a, part), getattr(b, part))
    assert not a.test.equals(c.test)
    assert rows(a.ood) == rows(c.ood)
    # the seed argument replaces the spec's
    assert make_split(tiny, SplitSpec(kind="random"), seed=1).test.equals(
        make_split(tiny, SplitSpec(kind="random", seed=1)).test
    )


def test_item_attribute_errors(tiny: RatingsDataset) -> None:
    with pytest.raises(ValueError, match=r"in_distribution: \['SciFi'\] is no value"):
        genre_shift(tiny, in_distribution=["SciFi"])
    with pytest.warns(UserWarning, match=r"\['Thrillr'\] is no value"):
        genre_shift(tiny, in_distribution=["Action", "Thrillr"])
    everything = ["Action", "Comedy", "Drama", "Horror", "Western", "unknown"]
    with pytest.raises(ValueError, match="115 ID and 0 OOD"):
        genre_shift(
            make_dataset({k: v for k, v in TINY.items() if k != "6"}), in_distribution=everything
        )
    # values match whatever their case
    assert len(genre_shift(tiny, in_distribution=["action", "COMEDY", "drama"]).ood) == 18


def test_expected_counts_are_enforced(tiny: RatingsDataset) -> None:
    genre_shift(tiny, expect={"id_items": 3, "ood_ratings": 18})
    with pytest.raises(ValueError, match="id_items: expected 1,461, got 3"):
        genre_shift(tiny, expect={"id_items": 1461, "ood_ratings": 18})
    with pytest.raises(ValueError, match="unknown count"):
        genre_shift(tiny, expect={"movies": 3})


def test_random_split_has_no_ood_set(tiny: RatingsDataset) -> None:
    split = make_split(tiny, SplitSpec(kind="random", valid_fraction=0.2, test_fraction=0.1))
    assert len(split.ood) == 0 and split.ood_groups == {}
    assert (len(split.train), len(split.val), len(split.test)) == (82, 24, 12)
    assert rows(pd.concat([split.train, split.val, split.test])) == rows(tiny.ratings)


def test_time_split_one_global_cutoff_and_month_groups(tiny: RatingsDataset) -> None:
    # make_dataset: timestamps 1000..1117 (seconds): all in January 1970
    split = make_split(tiny, SplitSpec(kind="time", ood_fraction=0.25, min_group=1))
    assert split.ood["timestamp"].min() > pd.concat([split.train, split.val])["timestamp"].max()
    assert len(split.ood) == 30 and list(split.ood_groups) == ["1970-01"]
    later = make_split(tiny, SplitSpec(kind="time", cutoff="1970-01-01T00:18:00", min_group=1))
    assert (later.ood["timestamp"] >= 1080).all() and len(later.ood) == 1117 - 1080 + 1
    with pytest.raises(ValueError, match="both must be non-empty"):
        make_split(tiny, SplitSpec(kind="time", cutoff="2030-01-01"))


def test_cold_items_hold_out_whole_items(tiny: RatingsDataset) -> None:
    split = make_split(tiny, SplitSpec(kind="cold_items", ood_fraction=0.3, seed=2, min_group=1))
    id_items = set(pd.concat([split.train, split.val, split.test])["item_id"])
    ood_items = set(split.ood["item_id"])
    assert not id_items & ood_items and len(ood_items) == 2  # round(7 * 0.3)
    assert list(split.ood_groups) == ["all"] and len(split.ood_groups["all"]) == len(split.ood)


def test_within_restricts_the_split(tiny: RatingsDataset) -> None:
    split = genre_shift(tiny, within={"column": "genres", "values": ["Horror", "Drama"]})
    together = pd.concat([split.train, split.val, split.test, split.ood])
    assert set(together["item_id"]) == {"2", "3", "4", "7"}


def test_split_type() -> None:
    assert "Split(name='item_attribute'" in repr(genre_shift(make_dataset(TINY)))
    assert isinstance(genre_shift(make_dataset(TINY)), Split)


# --- the real MovieLens-100K ------------------------------------------------------------------


@pytest.mark.slow
def test_movielens_preset_gives_the_papers_genre_shift() -> None:
    from training.data import load_spec_dataset
    from training.spec import load_spec

    spec = load_spec("movielens-100k")
    ds = load_spec_dataset(spec)
    split = make_split(ds, spec.split)  # the preset's `expect` checks the paper's counts too
    s = split.summary()
    assert (s["id_items"], s["id_ratings"]) == (1_461, 91_142)
    assert (s["ood_items"], s["ood_ratings"]) == (221, 8_858)
    assert tuple(s["ood_groups"]) == (
        "Adventure",
        "Animation",
        "Children's",
        "Crime",
        "Documentary",
        "Film-Noir",
        "Horror",
        "Musical",
        "Mystery",
        "Sci-Fi",
        "War",
        "Western",
    )
    assert (s["train"], s["val"], s["test"]) == (72_914, 9_114, 9_114)
    genres = ds.items.set_index("item_id")["genres"]
    ood_genres = split.ood["item_id"].map(genres)
    assert not any(set(g) & set(ID_GENRES) for g in ood_genres)
    for genre, positions in split.ood_groups.items():
        assert len(positions) >= 200
        has = ood_genres.map(lambda gs, genre=genre: genre in gs).to_numpy()
        np.testing.assert_array_equal(positions, np.flatnonzero(has))
