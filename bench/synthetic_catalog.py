"""A generated ratings catalog of any size, as a user's files and a dataset spec over them.

    .venv/bin/python -m bench.synthetic_catalog --users 20000 --items 8000 --out /tmp/cat

Users (age, occupation, zip code), items (a title of random words, genres) and ratings that
follow user and item biases; a fifth of the items carry only genres outside the spec's ID
genres, so the ``item_attribute`` split has an OOD set of cold-start items, as MovieLens'
genre shift has. Each user rates about ``ratings_per_user`` items drawn by popularity (a
Zipf-like law). Ratings go to a Parquet file in row groups of ``row_group`` rows (the unit a
training process reads when a run is spread over processes), users to CSV, items to JSON lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ID_GENRES = ("Action", "Comedy", "Drama", "Romance", "Thriller")
OOD_GENRES = ("Horror", "Sci-Fi", "Western", "Documentary", "Animation")
OCCUPATIONS = ("doctor", "student", "artist", "engineer", "writer", "lawyer", "retired", "other")
WORDS = (
    "night",
    "day",
    "river",
    "stone",
    "city",
    "garden",
    "winter",
    "summer",
    "shadow",
    "light",
    "road",
    "house",
    "king",
    "queen",
    "storm",
    "fire",
    "ocean",
    "mountain",
    "letter",
    "dream",
    "story",
    "secret",
    "return",
    "last",
    "first",
    "lost",
    "golden",
    "silent",
)

SPEC = """
name = "generated-{n_users}x{n_items}"
[ratings]
path = "ratings.parquet"
timestamp = "timestamp"
[rating_scale]
min = 1
max = 5
[users]
path = "users.csv"
[users.columns]
age = {{ type = "numeric", buckets = [18, 25, 35, 45, 50, 56] }}
occupation = "categorical"
zip_code = {{ type = "categorical", prefix = 3 }}
[items]
path = "items.jsonl"
[items.columns]
title = "text"
genres = {{ type = "multi_categorical", mlp = false }}
[text]
user = "user id {{user_id}}, age {{age}}, occupation {{occupation}}, zip code {{zip_code}}"
item = "movie id {{item_id}}, title {{title}}"
[split]
kind = "item_attribute"
column = "genres"
in_distribution = {id_genres}
min_group = 20
"""


def write_catalog(
    directory: Path,
    n_users: int,
    n_items: int,
    ratings_per_user: float = 28.45,
    *,
    seed: int = 0,
    row_group: int = 65_536,
) -> Path:
    """Write ``ratings.parquet``, ``users.csv``, ``items.jsonl`` and ``spec.toml``.

    Returns:
        The spec's path. About ``n_users * ratings_per_user`` ratings (distinct user-item
        pairs; a user rates at least one item and at most half of the catalog).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    quality = rng.normal(0, 0.6, n_items)
    bias = rng.normal(0, 0.5, n_users)
    genres = [
        sorted(set(rng.choice(OOD_GENRES, 1 + (i % 2)).tolist()))
        if i % 5 == 4
        else sorted(set(rng.choice(ID_GENRES, 1 + (i % 3)).tolist()))
        for i in range(n_items)
    ]
    words = np.array(WORDS)
    titles = [
        " ".join(words[rng.integers(0, len(words), 3)]) + f" {i % 97} ({1950 + i % 70})"
        for i in range(n_items)
    ]
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": titles, "genres": genres})
    items.to_json(directory / "items.jsonl", orient="records", lines=True)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "age": rng.integers(14, 70, n_users),
            "occupation": rng.choice(OCCUPATIONS, n_users),
            "zip_code": [f"{z:05d}" for z in rng.integers(1000, 99999, n_users)],
        }
    )
    users.to_csv(directory / "users.csv", index=False)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    counts = np.clip(rng.poisson(ratings_per_user, n_users), 1, max(1, n_items // 2))
    u = np.repeat(np.arange(n_users), counts)
    i = rng.choice(n_items, size=len(u), p=popularity)
    # a user rates an item once: repeated draws are dropped (a few percent of the draws)
    keys = np.unique(u.astype(np.int64) * n_items + i)
    u, i = keys // n_items, keys % n_items
    raw = 3.5 + bias[u] + quality[i] + rng.normal(0, 0.8, len(u))
    ratings = pd.DataFrame(
        {
            "user_id": u + 1,
            "item_id": i + 1,
            "rating": np.clip(np.round(raw), 1, 5).astype(np.float32),
            "timestamp": 880_000_000 + rng.integers(0, 200_000_000, len(u)),
        }
    )
    ratings.to_parquet(directory / "ratings.parquet", index=False, row_group_size=row_group)
    spec = SPEC.format(n_users=n_users, n_items=n_items, id_genres=list(ID_GENRES))
    (directory / "spec.toml").write_text(spec.replace("'", '"'))
    return directory / "spec.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--ratings-per-user", type=float, default=28.45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = write_catalog(args.out, args.users, args.items, args.ratings_per_user, seed=args.seed)
    n = pd.read_parquet(args.out / "ratings.parquet", columns=["rating"]).shape[0]
    print(f"{spec}: {n:,} ratings, {args.users:,} users, {args.items:,} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
