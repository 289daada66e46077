"""``python -m training init``: drafts that parse as specs and load their data, and refusals
that name the columns and say what to pass."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pandas as pd
import pytest

from training.data import load_spec_dataset
from training.init_spec import main
from training.spec import load_spec, parse_spec
from training.spec_guess import guess_column

N_READERS, N_BOOKS, N_RATINGS = 40, 30, 400
SUBJECTS = ("fantasy", "history", "science", "romance", "poetry")


@pytest.fixture
def books(tmp_path):
    """A Book-Crossing-like data set: Parquet ratings (reader, isbn, score 0..10, ts), CSV
    users (reader, country, age, area codes with leading zeros), JSON-lines items (isbn, title,
    author, subjects list, year, blurb long text)."""
    rng = np.random.default_rng(0)
    readers = [f"r{u:03d}" for u in range(N_READERS)]
    isbns = [f"{i:010d}" for i in range(N_BOOKS)]
    score = rng.integers(0, 11, N_RATINGS)
    score[:2] = (0, 10)  # the scale's ends occur
    pd.DataFrame(
        {
            "reader": rng.choice(readers, N_RATINGS),
            "isbn": rng.choice(isbns, N_RATINGS),
            "score": score,
            "ts": rng.integers(1_500_000_000, 1_600_000_000, N_RATINGS),
        }
    ).to_parquet(tmp_path / "ratings.parquet")
    data = tmp_path / "tables"
    data.mkdir()
    pd.DataFrame(
        {
            "reader": readers,
            "country": rng.choice(["fr", "de", "us", "jp", "br"], N_READERS),
            "age": rng.integers(15, 70, N_READERS),
            "area": [f"0{rng.integers(1000, 9999)}" for _ in readers],
        }
    ).to_csv(data / "users.csv", index=False)
    with open(data / "books.jsonl", "w") as f:
        for k, isbn in enumerate(isbns):
            row = {
                "isbn": isbn,
                "title": f"The {k} book of things",
                "author": f"Author {k % 6}",
                "subjects": [SUBJECTS[k % 5], SUBJECTS[(k + 2) % 5]][: k % 3],
                "year": 1900 + 3 * k,
                "blurb": f"A long description of book {k}, a story about many, many things.",
            }
            f.write(json.dumps(row) + "\n")
    return tmp_path


def _init(books, *extra: str) -> int:
    return main(
        [
            "--ratings",
            str(books / "ratings.parquet"),
            "--users",
            str(books / "tables" / "users.csv"),
            "--items",
            str(books / "tables" / "books.jsonl"),
            *extra,
        ]
    )


def test_books_draft_guesses_roles_types_and_loads_the_data(books, capsys):
    out = books / "specs" / "books.toml"
    assert _init(books, "--output", str(out), "--name", "books") == 0
    assert f"python -m training --config {out}" in capsys.readouterr().out

    spec = load_spec(out)
    assert spec.name == "books"
    r = spec.ratings
    assert (r.user, r.item, r.rating, r.timestamp) == ("reader", "isbn", "score", "ts")
    # relative to the spec's directory
    assert (r.path, spec.users.path) == ("../ratings.parquet", "../tables/users.csv")
    assert (spec.rating_scale.min, spec.rating_scale.max) == (0, 10)
    assert (spec.key("users"), spec.key("items")) == ("reader", "isbn")
    users = {name: col.type for name, col in spec.users.columns.items()}
    assert users == {"country": "categorical", "age": "numeric", "area": "categorical"}
    assert spec.users.columns["age"].buckets == "quantile:5"
    items = {name: col.type for name, col in spec.items.columns.items()}
    assert items == {
        "title": "text",
        "author": "categorical",
        "subjects": "multi_categorical",
        "year": "numeric",
        "blurb": "text",
    }
    assert spec.split.kind == "time" and spec.split.ood_fraction == 0.2
    assert spec.text.item.startswith("isbn {item_id}, title {title}, blurb {blurb}")

    lines = out.read_text().splitlines()
    assert "draft" in lines[0].lower()
    blurb = lines.index('blurb = "text"')
    assert lines[blurb - 1].startswith("# 'blurb': 30 distinct values of 30 rows, mean length")

    ds = load_spec_dataset(spec)
    assert (len(ds.ratings), len(ds.users), len(ds.items)) == (N_RATINGS, N_READERS, N_BOOKS)
    assert ds.users["area"].str.startswith("0").all()  # codes keep their zero
    assert ds.items.set_index("item_id").loc["0000000002", "subjects"] == ("science", "poetry")


def test_pipe_separated_genres_and_a_key_found_by_its_values(tmp_path):
    pd.DataFrame(
        {
            "userId": [1, 1, 2, 3, 3, 4],
            "movieId": [10, 20, 10, 30, 20, 40],
            "rating": [4.5, 3, 5, 0.5, 2, 4],
            "timestamp": [964982703 + k for k in range(6)],
        }
    ).to_csv(tmp_path / "ratings.csv", index=False)
    pd.DataFrame(
        {
            "id": [10, 20, 30, 40, 50],
            "title": ["Toy Story (1995)", "Heat (1995)", "Jumanji (1995)", "Casino", "Babe"],
            "genres": ["Animation|Comedy", "Action|Crime|Thriller", "Adventure", "Drama", "X|Y"],
        }
    ).to_csv(tmp_path / "movies.csv", index=False)
    out = tmp_path / "ml.toml"
    argv = ["--ratings", str(tmp_path / "ratings.csv"), "--items", str(tmp_path / "movies.csv")]
    assert main([*argv, "-o", str(out)]) == 0

    spec = load_spec(out)
    assert (spec.ratings.user, spec.ratings.item) == ("userId", "movieId")
    assert spec.items.key == "id"
    genres = spec.items.columns["genres"]
    assert (genres.type, genres.sep) == ("multi_categorical", "|")
    assert spec.items.columns["title"].type == "text"
    assert (spec.rating_scale.min, spec.rating_scale.max) == (0.5, 5)
    ds = load_spec_dataset(spec)
    assert ds.items.set_index("item_id").loc["20", "genres"] == ("Action", "Crime", "Thriller")
    assert len(ds.items) == 5 and len(ds.users) == 4


def test_without_output_prints_a_cold_items_spec_with_paths_from_the_working_directory(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    pd.DataFrame(
        {"user_id": ["a", "b", "c", "a"], "item_id": ["x", "y", "x", "z"], "stars": [1, 2, 5, 4]}
    ).to_csv("r.csv", index=False)
    assert main(["--ratings", "r.csv"]) == 0
    printed = capsys.readouterr()
    spec = parse_spec(tomllib.loads(printed.out), tmp_path / "spec.toml")
    assert spec.ratings.path == "r.csv" and spec.ratings.rating == "stars"
    assert spec.ratings.timestamp is None
    assert spec.split.kind == "cold_items" and spec.split.ood_fraction == 0.2
    assert "python -m training --config" in printed.err  # stdout holds only the TOML


def test_no_rating_column_exits_2_naming_the_columns(tmp_path, capsys):
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "comment": ["good", "bad"]}).to_csv(
        tmp_path / "r.csv", index=False
    )
    out = tmp_path / "spec.toml"
    assert main(["--ratings", str(tmp_path / "r.csv"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no rating column" in err and "--rating COLUMN" in err
    assert all(name in err for name in ("'user_id'", "'item_id'", "'comment'"))
    assert "Traceback" not in err and not out.exists()


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["--ratings", str(tmp_path / "nope.csv")]) == 2
    assert "--ratings" in capsys.readouterr().err


def test_refuses_to_overwrite_output_unless_forced(books, capsys):
    out = books / "spec.toml"
    out.write_text("# mine\n")
    assert _init(books, "--output", str(out)) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"
    assert _init(books, "--output", str(out), "--force") == 0
    assert load_spec(out).ratings.item == "isbn"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Comedy, Drama", "Drama", "Comedy, Horror", "Drama, Horror"] * 5, "multi_categorical"),
        (["Smith, John", "Doe, Jane", "Roe, Rick", "Poe, Edgar"], "categorical"),  # not lists
        ([True, False, True], "categorical"),
        ([1, 2, 3, 1, 2], "categorical"),  # few values
        (["2021-03-04", "2020-01-02"], "text"),  # no date type
        ([None, None], None),  # empty: left out
        ([" ", ""], None),
    ],
)
def test_guess_column(values, expected):
    value = guess_column("c", pd.Series(values)).value
    kind = value["type"] if isinstance(value, dict) else value
    assert kind == expected
