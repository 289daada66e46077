"""Amazon reviews (Ni, Li and McAuley 2019 JSON-lines format) from user-supplied files.

Reviews files (e.g. ``Books.json.gz``, ``Books_5.json``) hold one JSON object per line with
``reviewerID``, ``asin``, ``overall`` and ``unixReviewTime``; metadata files (``meta_*``) hold
``asin``, ``title``, ``main_cat`` and ``category`` (a list, most general first). Either may be
gzip'd. Only those fields are read, line by line, so large files do not need much memory.

Items get ``category`` = the main category (``main_cat``, else the first ``category``) and
``genres`` = ``(category,)``; users have only their id (features empty / -1).
"""

from __future__ import annotations

import gzip
import html
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from training.data.dataset import (
    RatingsDataset,
    canonical_items,
    canonical_ratings,
    canonical_users,
)

NAME = "amazon"
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_IMG_ALT = re.compile(r'alt="([^"]*)"')


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{number}: not a JSON object ({e.msg}); expected one JSON object "
                    "per line as in the Ni et al. 2019 files (the 2014 files are Python "
                    "literals: convert them to JSON first)"
                ) from None


def _paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths).expanduser()]
    return [Path(p).expanduser() for p in paths]


def main_category(record: dict) -> str:
    """The product's main category: ``main_cat`` (an HTML ``<img alt=...>`` is unwrapped),
    else the first entry of ``category``, else ""."""
    main = str(record.get("main_cat") or "").strip()
    if main.startswith("<"):
        found = _IMG_ALT.search(main)
        main = found.group(1).strip() if found else ""
    if not main:
        categories = record.get("category") or []
        main = str(categories[0]).strip() if categories else ""
    return html.unescape(main)


def read_reviews(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """The canonical ratings table of one or more reviews files (exact repeats dropped).

    Raises:
        ValueError: a line is not JSON or lacks one of ``REVIEW_FIELDS`` (file:line named).
    """
    rows: dict[str, list] = {f: [] for f in REVIEW_FIELDS}
    for path in _paths(paths):
        for number, rec in _lines(path):
            missing = [f for f in REVIEW_FIELDS if rec.get(f) is None]
            if missing:
                raise ValueError(
                    f"{path}:{number}: review lacks {missing}; expected the fields "
                    f"{list(REVIEW_FIELDS)} (Ni et al. 2019 reviews format)"
                )
            for f in REVIEW_FIELDS:
                rows[f].append(rec[f])
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(rows["reviewerID"], dtype=object),
            "item_id": pd.Series(rows["asin"], dtype=object),
            "rating": pd.Series(rows["overall"], dtype="float32"),
            "timestamp": pd.Series(rows["unixReviewTime"], dtype="int64"),
        }
    )
    return canonical_ratings(frame).drop_duplicates(ignore_index=True)


def read_metadata(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """The canonical items table (with ``category``) of one or more metadata files.

    The first record of an ``asin`` wins (the published files repeat some products).
    """
    seen: dict[str, tuple[str, str]] = {}
    for path in _paths(paths):
        for number, rec in _lines(path):
            asin = rec.get("asin")
            if not asin:
                raise ValueError(f"{path}:{number}: metadata record has no 'asin'")
            if asin not in seen:
                seen[asin] = (html.unescape(str(rec.get("title") or "")), main_category(rec))
    frame = pd.DataFrame(
        {
            "item_id": pd.Series(list(seen), dtype=object),
            "title": pd.Series([t for t, _ in seen.values()], dtype=object),
            "genres": pd.Series([(c,) if c else () for _, c in seen.values()], dtype=object),
            "category": pd.Series([c for _, c in seen.values()], dtype=object),
        }
    )
    return canonical_items(frame)


def load_amazon(
    reviews: str | Path | Iterable[str | Path],
    metadata: str | Path | Iterable[str | Path],
) -> RatingsDataset:
    """An Amazon reviews dataset; reviews of products absent from the metadata are dropped.

    Args:
        reviews: reviews file(s); metadata: metadata file(s) (JSON lines, optionally .gz).

    Raises:
        ValueError: a malformed line, or no review left after joining with the metadata.
    """
    ratings = read_reviews(reviews)
    items = read_metadata(metadata)
    ratings = ratings[ratings["item_id"].isin(items["item_id"])].reset_index(drop=True)
    if ratings.empty:
        raise ValueError(
            f"no review of {_paths(reviews)} names a product of {_paths(metadata)}: pass the "
            "metadata file(s) (meta_*.json.gz) that match the reviews file(s)"
        )
    items = items[items["item_id"].isin(ratings["item_id"])].reset_index(drop=True)
    users = canonical_users(pd.DataFrame({"user_id": ratings["user_id"].unique()}))
    return RatingsDataset(NAME, ratings, users, items).validate()


def load_amazon_directory(directory: str | Path) -> RatingsDataset:
    """``load_amazon`` on every JSON-lines file of ``directory``: ``meta_*`` are metadata,
    the rest reviews.

    Raises:
        FileNotFoundError: the directory has no reviews or no metadata file.
    """
    root = Path(directory).expanduser()
    files = sorted(p for p in root.glob("*") if p.name.endswith(_SUFFIXES))
    meta = [p for p in files if p.name.startswith("meta_")]
    reviews = [p for p in files if not p.name.startswith("meta_")]
    if not meta or not reviews:
        raise FileNotFoundError(
            f"Amazon directory {root}: expected reviews files (e.g. Books.json.gz) and metadata "
            f"files named meta_* (e.g. meta_Books.json.gz) ending in {', '.join(_SUFFIXES)}; "
            f"found {len(reviews)} reviews and {len(meta)} metadata file(s). Download them from "
            "https://nijianmo.github.io/amazon/ (Ni et al. 2019)."
        )
    return load_amazon(reviews, meta)
