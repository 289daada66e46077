"""A tiny synthetic ratings data set (with a genre shift), its spec files and a tiny random
text backbone over its words: what the training tests and the multi-process runs build on."""

from __future__ import annotations

import numpy as np
import pandas as pd

ID_GENRES = ("Action", "Comedy", "Drama", "Romance", "Thriller")
OOD_GENRES = ("Horror", "Sci-Fi", "Western")
QUALITY_WORDS = {-1: "awful", 0: "plain", 1: "great"}


def make_tiny_dataset(n_users: int = 30, n_items: int = 40, n_ratings: int = 600, seed: int = 0):
    """A synthetic MovieLens-like data set whose ratings follow user and item biases.

    An item's quality (-1, 0, 1) is also a word of its title, so the item text carries the
    signal for cold-start (OOD) items. Items 0..29 have ID genres, 30..39 only OOD genres.
    """
    from training.data.dataset import RatingsDataset

    rng = np.random.default_rng(seed)
    quality = rng.integers(-1, 2, n_items)
    user_bias = rng.normal(0, 0.6, n_users)
    n_id = int(n_items * 0.75)
    items = pd.DataFrame(
        {
            "item_id": [str(i + 1) for i in range(n_items)],
            "title": [f"{QUALITY_WORDS[q]} movie {i % 7} (1995)" for i, q in enumerate(quality)],
            "genres": [
                (ID_GENRES[i % 5], OOD_GENRES[i % 3]) if i < n_id else (OOD_GENRES[i % 3],)
                for i in range(n_items)
            ],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [str(u + 1) for u in range(n_users)],
            "age": rng.integers(15, 60, n_users).astype(np.int64),
            "gender": rng.choice(["M", "F"], n_users),
            "occupation": rng.choice(["doctor", "student", "artist"], n_users),
            "zip_code": [f"{rng.integers(10000, 99999)}" for _ in range(n_users)],
        }
    )
    pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    u, i = pairs // n_items, pairs % n_items
    raw = 3.4 + user_bias[u] + 0.9 * quality[i] + rng.normal(0, 0.3, n_ratings)
    ratings = pd.DataFrame(
        {
            "user_id": [str(x + 1) for x in u],
            "item_id": [str(x + 1) for x in i],
            "rating": np.clip(np.round(raw), 1, 5).astype(np.float32),
            "timestamp": (880_000_000 + np.arange(n_ratings)).astype(np.int64),
        }
    )
    return RatingsDataset("tiny-synthetic", ratings, users, items).validate()


TINY_SPEC = """
name = "tiny-synthetic"
[ratings]
path = "ratings.parquet"
timestamp = "timestamp"
[rating_scale]
min = 1
max = 5
[users]
path = "users.csv"
[users.columns]
age = { type = "numeric", buckets = [18, 25, 35, 45, 50, 56] }
occupation = "categorical"
zip_code = { type = "categorical", prefix = 3 }
[items]
path = "items.jsonl"
[items.columns]
title = "text"
genres = { type = "multi_categorical", mlp = false }
[text]
user = "user id {user_id}, age {age}, occupation {occupation}, zip code {zip_code}"
item = "movie id {item_id}, title {title}"
[split]
kind = "item_attribute"
column = "genres"
in_distribution = ["Action", "Comedy", "Drama", "Romance", "Thriller"]
min_group = 5
"""


def write_tiny_catalog(directory, spec_text: str = TINY_SPEC):
    """The tiny data set as the files a user has (Parquet ratings, CSV users, JSON-lines
    items) and a spec over them; returns the spec's path."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ds = make_tiny_dataset()
    ds.ratings.to_parquet(directory / "ratings.parquet", index=False)
    ds.users.to_csv(directory / "users.csv", index=False)
    items = ds.items.assign(genres=ds.items["genres"].map(list))
    items.to_json(directory / "items.jsonl", orient="records", lines=True)
    (directory / "spec.toml").write_text(spec_text)
    return directory / "spec.toml"


def make_tiny_backbone(tmp_path):
    """A 2-layer, 32-wide random BERT with a word-level tokenizer over the synthetic texts."""
    from support.tiny_assets import tiny_bert, write_word_tokenizer

    words = {"user", "id", "age", "occupation", "zip", "code", "movie", "title", "unknown"}
    words |= {"doctor", "student", "artist", "awful", "plain", "great", "(", ")", ",", "1995"}
    words |= {str(i) for i in range(100)}
    return tiny_bert(write_word_tokenizer(tmp_path / "tokenizer.json", sorted(words)))
