"""Readers behind one interface: ``load_spec_dataset(spec) -> RatingsDataset``.

A spec's ``reader`` names where its tables come from: ``files`` (the spec's own Parquet /
CSV / JSON-lines files, the default) or one of the readers of the shipped presets, which
produce the same tables from a packaged or published format. Whatever the reader, the tables
then go through the spec (``training.data.tables.apply_spec``): role columns, declared
columns and their types, the rating scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.data.amazon import load_amazon_directory
from training.data.dataset import RatingsDataset
from training.data.movielens import load_grouplens, load_packaged, load_tfds
from training.data.shards import ShardSpec, keep_shards
from training.data.tables import apply_spec, read_spec_files
from training.spec import READERS, DatasetSpec, SpecError


def _need_path(reader: str, path: Path | None) -> Path:
    if path is None:
        raise SpecError(
            f"the {reader!r} reader reads a directory: set ratings.path in the spec or pass "
            "--data-path DIR"
        )
    return path


# reader name -> (spec data path or None) -> the reader's canonical tables
TABLE_READERS: dict[str, Callable[[Path | None], RatingsDataset]] = {
    "movielens-packaged": lambda path: load_packaged(path),
    "movielens-grouplens": lambda path: load_grouplens(_need_path("movielens-grouplens", path)),
    "movielens-tfds": lambda path: load_tfds(path),
    "amazon": lambda path: load_amazon_directory(_need_path("amazon", path)),
}
assert set(TABLE_READERS) | {"files"} == set(READERS)


def load_spec_dataset(
    spec: DatasetSpec,
    data_path: str | Path | None = None,
    reader: str | None = None,
    shards: ShardSpec | None = None,
) -> RatingsDataset:
    """The typed tables of a spec.

    Args:
        spec: the dataset spec.
        data_path: replaces ``ratings.path`` (a file for ``files``; the cache directory for
            ``movielens-packaged``; the data directory for ``movielens-grouplens`` and
            ``amazon``; the TFDS ``data_dir`` for ``movielens-tfds``).
        reader: replaces the spec's ``reader``.
        shards: only the ratings of these data shards (``training.data.shards``), each with
            its ``shard`` and ``file_row``; None: every rating, as always.

    Raises:
        SpecError: an unknown reader or a missing path; DataError: a value that does not fit
            its declared column (file, row and column named); the readers' own errors.
    """
    name = reader or spec.reader
    path = Path(data_path).expanduser() if data_path else spec.path_of(spec.ratings)
    if name == "files":
        return read_spec_files(spec, path, shards)
    if name not in TABLE_READERS:
        raise SpecError(f"unknown reader {name!r}: expected one of {', '.join(READERS)}")
    raw = TABLE_READERS[name](path)
    ds = apply_spec(
        spec,
        raw.ratings,
        raw.users,
        raw.items,
        origin={"ratings": f"{name} ratings", "users": f"{name} users", "items": f"{name} items"},
    )
    return ds if shards is None else keep_shards(ds, shards)
