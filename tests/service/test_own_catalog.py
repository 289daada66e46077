"""A user's own catalog, end to end: files + one spec -> train -> export -> HTTP -> batch CLI.

The generated "books" catalog is unlike MovieLens on purpose: the role columns have other
names (reader, isbn, score, ts as ISO dates), ratings run 0-10, users have a country and a
numeric age (some missing), items a title, an author, a multi-valued subject list, a year
(quantile buckets) and a long blurb. The split is by subject; OOD groups are subjects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, start_server

pytestmark = [pytest.mark.e2e]

SUBJECTS = ("fiction", "romance", "history", "science", "poetry")
COUNTRIES = ("fr", "de", "jp", "br")
SPEC = """
name = "books"

[ratings]
path = "ratings.parquet"
user = "reader"
item = "isbn"
rating = "score"
timestamp = "ts"

[rating_scale]
min = 0
max = 10

[users]
path = "readers.csv"
key = "reader"
[users.columns]
country = "categorical"
age = { type = "numeric", buckets = [18, 25, 35, 50, 65] }

[items]
path = "books.jsonl"
key = "isbn"
[items.columns]
title = "text"
author = "categorical"
subjects = { type = "multi_categorical", sep = "|" }  # lists in the file; "a|b" at serving
year = { type = "numeric", buckets = "quantile:4" }
blurb = "text"

[text]
user = "reader from {country}, age {age}"
item = "{title} by {author} ({year}). Subjects: {subjects}. {blurb}"

[split]
kind = "item_attribute"
column = "subjects"
in_distribution = ["fiction", "romance"]
valid_fraction = 0.1
test_fraction = 0.1
seed = 0
min_group = 10
"""


def write_books(directory: Path, n_readers: int = 40, n_books: int = 60, n_ratings: int = 900):
    """The catalog's three files and its spec; returns the spec path."""
    rng = np.random.default_rng(7)
    directory.mkdir(parents=True, exist_ok=True)
    readers = pd.DataFrame(
        {
            "reader": [f"r{k:03d}" for k in range(n_readers)],
            "country": rng.choice(COUNTRIES, n_readers),
            "age": [
                None if k % 9 == 0 else int(a)
                for k, a in enumerate(rng.integers(15, 80, n_readers))
            ],
        }
    )
    readers.to_csv(directory / "readers.csv", index=False)
    quality = rng.normal(0, 1.5, n_books)
    books = []
    for k in range(n_books):
        main = SUBJECTS[k % len(SUBJECTS)]
        subjects = [main] + ([SUBJECTS[(k + 1) % 5]] if k % 3 == 0 and main != "poetry" else [])
        books.append(
            {
                "isbn": f"978{k:07d}",
                "title": f"{'great' if quality[k] > 0 else 'plain'} book {k}",
                "author": f"author {k % 7}",
                "subjects": subjects,
                "year": int(1950 + 70 * rng.random()),
                "blurb": " ".join(["a long description of the book"] * 40),  # > 128 tokens
            }
        )
    with open(directory / "books.jsonl", "w") as f:
        f.writelines(json.dumps(b) + "\n" for b in books)
    pairs = rng.choice(n_readers * n_books, n_ratings, replace=False)
    u, i = pairs // n_books, pairs % n_books
    score = np.clip(np.round(6 + quality[i] + rng.normal(0, 1, n_ratings)), 0, 10)
    days = rng.integers(0, 700, n_ratings)
    ratings = pd.DataFrame(
        {
            "reader": [f"r{x:03d}" for x in u],
            "isbn": [f"978{x:07d}" for x in i],
            "score": score,
            "ts": [str(pd.Timestamp("2023-01-01") + pd.Timedelta(days=int(d))) for d in days],
        }
    )
    ratings.to_parquet(directory / "ratings.parquet", index=False)
    (directory / "books.toml").write_text(SPEC)
    return directory / "books.toml"


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """``(spec path, artifact path)``: the catalog trained with a tiny backbone."""
    from conftest import _tiny_backbone, _write_tokenizer

    from training.config import TrainConfig
    from training.pipeline import run_pipeline

    work = tmp_path_factory.mktemp("books")
    spec = write_books(work / "data")
    backbone = _tiny_backbone(_write_tokenizer(work / "tokenizer.json"), 0)
    cfg = TrainConfig.tiny().replace(
        dataset=str(spec),
        seeds=(0,),
        lrs=(1e-2,),
        max_epochs=2,
        methods=("global_mean", "biases", "mlp", "levi"),
        batch_size=1000,  # more than the catalog's training pairs: one batch is all of them
    )
    result = run_pipeline(
        cfg,
        output_dir=work / "artifacts",
        backbone=backbone,
        cache=work / "cache",
        progress=False,
        log=lambda _: None,
    )
    return spec, result


def test_the_report_speaks_the_catalogs_terms(books):
    _, result = books
    doc = result.report
    assert doc["dataset"] == "books"
    assert doc["split"]["name"] == "item_attribute" and doc["split"]["column"] == "subjects"
    # OOD groups are the subjects outside fiction/romance
    assert set(doc["split"]["ood_groups"]) <= {"history", "science", "poetry"}
    assert doc["split"]["ood_groups"], doc["split"]
    levi = doc["methods"]["levi"]
    assert set(levi["ood_rmse_by_group"]) == set(doc["split"]["ood_groups"])
    # on a 0-10 scale the global mean is far worse than 1-5 clipping would allow
    assert 0 < doc["methods"]["global_mean"]["id_rmse"]["mean"] < 10


def test_the_artifact_carries_the_resolved_spec(books):
    from model.artifact import load_artifact

    art = load_artifact(books[1].artifact)
    assert art.manifest["rating_range"] == [0.0, 10.0]
    assert art.dataset["columns"]["item"] == {
        "title": "text",
        "author": "categorical",
        "subjects": "multi_categorical",
        "year": "numeric",
        "blurb": "text",
    }
    year = next(c for c in art.features.columns if c.name == "year")
    assert len(year.edges) == 3  # quantile:4 fitted on train
    subjects = next(c for c in art.features.columns if c.name == "subjects")
    assert set(subjects.vocab) <= set(SUBJECTS) and "fiction" in subjects.vocab
    assert art.views.views[1].template.startswith("{title} by {author}")


def test_served_over_http_with_its_own_fields_and_scale(books, compile_cache, tmp_path):
    _, result = books
    log = tmp_path / "server.log"
    with start_server(result.artifact, log, compile_cache) as srv:
        known = httpx.post(
            f"{srv.base}/predict-rating", json={"user_id": "r001", "item_id": "9780000001"}
        )
        assert known.status_code == 200, known.text
        assert 0.0 <= known.json()["rating"] <= 10.0
        # the catalog's ratings average about 6: answers on a 1-5 scale could not get there
        pairs = [
            {"user_id": f"r{u:03d}", "item_id": f"978{i:07d}"} for u in range(5) for i in range(8)
        ]
        many = httpx.post(f"{srv.base}/predict-rating/batch", json={"requests": pairs}).json()
        assert np.mean([p["rating"] for p in many["predictions"]]) > 5.0
        # a delimited string of a column with `sep` reads as the list it stands for
        as_list = {"user_id": "r002", "item_id": "x-1", "item": {"subjects": ["history", "poetry"]}}
        as_text = {"user_id": "r002", "item_id": "x-1", "item": {"subjects": "history|poetry"}}
        a = httpx.post(f"{srv.base}/predict-rating", json=as_list).json()
        b = httpx.post(f"{srv.base}/predict-rating", json=as_text).json()
        assert a["rating"] == b["rating"] and a["adapters"] == b["adapters"]
        cold = {
            "user_id": "r001",
            "item_id": "new-book",
            "item": {
                "title": "great book",
                "author": "author 3",
                "subjects": ["history"],
                "year": 2001,
                "blurb": "a sequel",
            },
        }
        r = httpx.post(f"{srv.base}/predict-rating", json=cold)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cold_start"]["item"] and 0.0 <= body["rating"] <= 10.0
        assert any("request's item fields" in w for w in body["warnings"])
        # a batch keeps its order and equals the single answers
        batch = httpx.post(
            f"{srv.base}/predict-rating/batch",
            json={"requests": [cold, {"user_id": "r001", "item_id": "9780000001"}]},
        ).json()["predictions"]
        expected = [body["rating"], known.json()["rating"]]
        assert [p["rating"] for p in batch] == pytest.approx(expected, abs=1e-5)
        # MovieLens fields are not this model's: 422 naming them
        for bad, loc in (
            ({"item": {"genres": ["Comedy"]}}, ["body", "item", "genres"]),
            ({"user": {"age": "old"}}, ["body", "user", "age"]),
            ({"item": {"subjects": {"a": 1}}}, ["body", "item", "subjects"]),
        ):
            r = httpx.post(
                f"{srv.base}/predict-rating", json={"user_id": "r1", "item_id": "b", **bad}
            )
            assert r.status_code == 422, r.text
            assert loc in [e["loc"][: len(loc)] for e in r.json()["detail"]], r.json()
        info = httpx.get(f"{srv.base}/v1/model").json()
        assert info["rating_range"] == [0.0, 10.0]
        assert [f["name"] for f in info["dataset"]["fields"]["user"]] == ["country", "age"]
        schema = httpx.get(f"{srv.base}/openapi.json").json()["components"]["schemas"]
        assert set(schema["ItemFields"]["properties"]) == {
            "title",
            "author",
            "subjects",
            "year",
            "blurb",
        }


def test_batch_cli_takes_the_catalogs_feature_columns(books, tmp_path):
    _, result = books
    rows = pd.DataFrame(
        {
            "user_id": ["r001", "r002", "stranger"],
            "item_id": ["9780000001", "new-book", "9780000002"],
            "title": [None, "great book", None],
            "subjects": [None, "history|poetry", None],
            "year": [None, "1999", None],
            "note": ["kept", "as", "is"],
        }
    )
    src, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    rows.to_csv(src, index=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "service.batch",
        "--model",
        str(result.artifact),
        "--input",
        str(src),
        "--output",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scored = pd.read_parquet(out)
    assert scored["note"].tolist() == ["kept", "as", "is"]
    assert scored["rating"].between(0, 10).all() and len(scored) == 3
    # a wrong type is refused before anything is scored, naming row and column
    rows.loc[2, "year"] = "nineteen"
    rows.to_csv(src, index=False)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "row 2" in done.stderr and "'year'" in done.stderr, done.stderr


def test_every_split_kind_on_the_catalog(tmp_path):
    from training.data import load_spec_dataset
    from training.spec import SplitSpec, load_spec
    from training.split import make_split

    spec = load_spec(write_books(tmp_path / "data"))
    ds = load_spec_dataset(spec)
    assert ds.ratings["rating"].max() <= 10 and ds.ratings["timestamp"].min() >= 1672531200
    assert ds.users["age"].isna().sum() == 5  # every 9th reader has no age
    kinds = {
        "random": SplitSpec(kind="random"),
        "time": SplitSpec(kind="time", cutoff="2024-06-01", min_group=5),
        "time_fraction": SplitSpec(kind="time", ood_fraction=0.2, min_group=5),
        "item_attribute": spec.split,
        "cold_items": SplitSpec(kind="cold_items", ood_fraction=0.25, min_group=5),
    }
    for name, split_spec in kinds.items():
        split = make_split(ds, split_spec)
        n = sum(len(p) for p in (split.train, split.val, split.test, split.ood))
        assert n == len(ds.ratings), name
    months = make_split(ds, kinds["time"]).ood_groups
    assert months and all(m >= "2024-06" for m in months)


def test_spec_errors_name_the_key(tmp_path):
    from training.spec import SpecError, load_spec

    path = write_books(tmp_path / "data")
    bad = SPEC.replace("Subjects: {subjects}", "Subjects: {genres}")
    path.write_text(bad)
    with pytest.raises(SpecError, match=r"text.item: placeholder \{genres\} is not a declared"):
        load_spec(path)
    path.write_text(SPEC.replace('country = "categorical"', 'country = "categorial"'))
    with pytest.raises(SpecError, match=r"books.toml: users.columns.country.type"):
        load_spec(path)
    path.write_text(SPEC.replace("[rating_scale]\nmin = 0", "[rating_scale]\nminimum = 0"))
    with pytest.raises(SpecError, match=r"rating_scale.minimum: unknown key"):
        load_spec(path)


def test_spec_refuses_what_would_serve_differently_than_it_trained(tmp_path):
    from training.data import DataError, load_spec_dataset
    from training.spec import SpecError, load_spec

    path = write_books(tmp_path / "data")
    # the key declared as a column: it always equals the id in training, never at serving
    path.write_text(SPEC.replace('title = "text"', 'title = "text"\nisbn = "categorical"'))
    with pytest.raises(SpecError, match=r"items.columns: 'isbn' is the table's key"):
        load_spec(path)
    # early stopping needs validation rows
    path.write_text(SPEC.replace("valid_fraction = 0.1", "valid_fraction = 0"))
    with pytest.raises(SpecError, match=r"split.valid_fraction"):
        load_spec(path)
    path.write_text(
        SPEC.replace('kind = "item_attribute"', 'kind = "time"\ncutoff = "soon"')
        .replace('column = "subjects"\n', "")
        .replace('in_distribution = ["fiction", "romance"]\n', "")
    )
    with pytest.raises(SpecError, match=r"cutoff: 'soon' is not an ISO 8601 date"):
        load_spec(path)
    # a list in a column declared categorical
    path.write_text(
        SPEC.replace(
            'subjects = { type = "multi_categorical", sep = "|" }', 'subjects = "categorical"'
        )
    )
    with pytest.raises(DataError, match=r"books.jsonl: row 1, column 'subjects': holds a list"):
        load_spec_dataset(load_spec(path))
