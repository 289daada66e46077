"""Readers behind one interface: ``load_spec_dataset(spec) -> RatingsDataset``."""

from training.data.amazon import load_amazon, load_amazon_directory, main_category
from training.data.dataset import (
    RATING_COLUMNS,
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
from training.data.sources import TABLE_READERS, load_spec_dataset
from training.data.tables import DataError, apply_spec, read_file, read_spec_files

__all__ = [
    "DataError",
    "MOVIELENS_GENRES",
    "RATING_COLUMNS",
    "TABLE_READERS",
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
    "apply_spec",
    "load_spec_dataset",
    "read_file",
    "read_spec_files",
    "load_grouplens",
    "load_packaged",
    "load_tfds",
    "main_category",
]
