"""Ratings sources behind one interface: ``load_dataset(source, path) -> RatingsDataset``."""

from training.data.amazon import load_amazon, load_amazon_directory, main_category
from training.data.dataset import (
    ITEM_COLUMNS,
    RATING_COLUMNS,
    USER_COLUMNS,
    RatingsDataset,
    canonical_items,
    canonical_ratings,
    canonical_users,
)
from training.data.genres import MOVIELENS_GENRES, canonical_genre, canonical_genres
from training.data.movielens import (
    check_ml100k,
    from_grouplens_files,
    from_tfds_records,
    from_widedeep_frames,
    from_widedeep_parquet,
    is_ml100k,
    load_grouplens,
    load_packaged,
    load_tfds,
)
from training.data.sources import SOURCES, load_dataset

__all__ = [
    "ITEM_COLUMNS",
    "MOVIELENS_GENRES",
    "RATING_COLUMNS",
    "SOURCES",
    "USER_COLUMNS",
    "RatingsDataset",
    "canonical_genre",
    "canonical_genres",
    "canonical_items",
    "canonical_ratings",
    "canonical_users",
    "check_ml100k",
    "from_grouplens_files",
    "from_tfds_records",
    "from_widedeep_frames",
    "from_widedeep_parquet",
    "is_ml100k",
    "load_amazon",
    "load_amazon_directory",
    "load_dataset",
    "load_grouplens",
    "load_packaged",
    "load_tfds",
    "main_category",
]
