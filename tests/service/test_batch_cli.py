"""Batch scoring: equal to the HTTP answers, in order, sharded, resumable, strict on input."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest
from support.servers import ROOT

from service import batch
from service.metrics import Metrics
from service.scorer_setup import build_scorer
from service.settings import Settings

ROWS = [
    {"user_id": "1", "item_id": "10", "age": None, "title": None, "genres": None},
    {"user_id": "2", "item_id": "12", "age": "45", "title": None, "genres": None},
    {
        "user_id": "3",
        "item_id": "555",
        "age": None,
        "title": "Space Oddity (2040)",
        "genres": "Sci-Fi|Comedy",
    },
    {"user_id": "99", "item_id": "11", "age": "19", "title": None, "genres": None},
    {"user_id": "4", "item_id": "10", "age": None, "title": None, "genres": None},
]


def _http_body(row: dict) -> dict:
    body = {"user_id": row["user_id"], "item_id": row["item_id"]}
    if row["age"]:
        body["user"] = {"age": int(row["age"])}
    if row["title"]:
        body["item"] = {"title": row["title"], "genres": row["genres"].split("|")}
    return body


@pytest.fixture
def scorer(artifacts, redis_url, key_prefix):
    from service.scorer_setup import make_redis_tier

    settings = Settings(redis_url=redis_url, cache_key_prefix=key_prefix, max_batch=4)
    metrics = Metrics()
    art = artifacts.loader(artifacts.v1)
    return build_scorer(
        art, settings, metrics, redis=make_redis_tier(settings, metrics), warm=False
    )


@pytest.mark.redis
@pytest.mark.e2e
def test_batch_cli_output_equals_the_http_answers(
    server, artifacts, redis_url, key_prefix, compile_cache, tmp_path
):
    """``python -m service.batch`` as its own process, over the real artifact and Redis."""
    source = tmp_path / "pairs.csv"
    pd.DataFrame(ROWS).to_csv(source, index=False)
    out = tmp_path / "scored.parquet"
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        LEVI_CACHE_KEY_PREFIX=key_prefix,
        LEVI_COMPILATION_CACHE_DIR=str(compile_cache),
        LEVI_MAX_BATCH="4",
        PYTHONPATH=str(ROOT),
    )
    env.pop("LEVI_REDIS_URL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.batch",
            "--model",
            str(artifacts.v1),
            "--input",
            str(source),
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(ROWS)} rows to {out}" in proc.stderr
    written = pd.read_parquet(out)
    assert list(written["user_id"]) == [r["user_id"] for r in ROWS]  # input order
    assert len(list((tmp_path / "scored.parquet.parts").rglob("rows-*.parquet"))) == 3
    answers = httpx.post(
        f"{server.base}/predict-rating/batch",
        json={"requests": [_http_body(r) for r in ROWS]},
        timeout=60,
    ).json()["predictions"]
    assert {a["model_version"] for a in answers} == {"tiny-v1"}
    np.testing.assert_allclose(written["rating"], [a["rating"] for a in answers], atol=1e-5)
    np.testing.assert_allclose(written["ood_score"], [a["ood_score"] for a in answers], atol=1e-5)
    layers = [a["layer"] for a in answers[0]["adapters"]]
    assert [c for c in written.columns if c.startswith("adapter_")] == [
        f"adapter_{lay}" for lay in layers
    ]
    for j, layer in enumerate(layers):
        got = written[f"adapter_{layer}"]
        np.testing.assert_allclose(got, [a["adapters"][j]["rating"] for a in answers], atol=1e-5)


def test_unloadable_model_exits_1_with_the_loaders_reason(tmp_path, capsys):
    source = tmp_path / "ok.csv"
    pd.DataFrame(ROWS[:1]).to_csv(source, index=False)
    code = batch.main(
        [
            "--model",
            str(tmp_path / "missing"),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o.csv"),
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "manifest.json does not exist" in err


@pytest.mark.redis
def test_shards_cover_the_input_and_parts_are_reused(scorer, tmp_path):
    frame = pd.DataFrame(ROWS * 3)
    full = batch.run(scorer, frame, tmp_path / "all.parquet", batch_size=4, progress=False)
    shards = [
        batch.run(scorer, frame, tmp_path / f"s{i}.csv", shard=(i, 3), batch_size=2, progress=False)
        for i in range(3)
    ]
    assert [len(s) for s in shards] == [5, 5, 5]
    joined = pd.concat(shards, ignore_index=True)
    np.testing.assert_allclose(joined["rating"], full["rating"], atol=1e-6)
    # Resume: an existing part is kept as is, not recomputed.
    part = sorted((tmp_path / "all.parquet.parts").rglob("rows-*.parquet"))[0]
    marked = pd.read_parquet(part).assign(rating=-1.0)
    marked.to_parquet(part, index=False)
    again = batch.run(scorer, frame, tmp_path / "all.parquet", batch_size=4, progress=False)
    assert (again["rating"][: len(marked)] == -1.0).all()
    assert (again["rating"][len(marked) :] > 0).all()


@pytest.mark.redis
def test_resume_redoes_a_truncated_or_missing_part(scorer, tmp_path, caplog):
    frame = pd.DataFrame(ROWS * 4)  # 20 rows, 5 parts of 4
    out = tmp_path / "all.parquet"
    full = batch.run(scorer, frame, out, batch_size=4, progress=False)
    parts = sorted((tmp_path / "all.parquet.parts").rglob("rows-*.parquet"))
    assert len(parts) == 5
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[: len(data) // 2])  # a part cut short (a copy interrupted)
    parts[3].unlink()  # and one missing
    with caplog.at_level("WARNING", logger="service.batch"):
        again = batch.run(scorer, frame, out, batch_size=4, progress=False)
    assert any(str(parts[1]) in r.getMessage() for r in caplog.records)  # named, redone
    assert parts[3].exists()
    pd.testing.assert_frame_equal(again, full)


@pytest.mark.redis
def test_on_error_skip_scores_the_rest_and_lists_the_rejects(scorer, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["user_id"] = "  "  # a blank id
    rows[3]["age"] = "old"  # a wrong type
    frame = pd.DataFrame(rows)
    out = tmp_path / "scored.parquet"
    with pytest.raises(batch.InputError, match=r"row 1 .*column 'user_id': the id is empty"):
        batch.run(scorer, frame, out, batch_size=2, progress=False)
    result = batch.run(scorer, frame, out, batch_size=2, progress=False, on_error="skip")
    assert list(result["user_id"]) == [rows[k]["user_id"] for k in (0, 2, 4)]  # order kept
    rejects = pd.read_parquet(tmp_path / "scored.parquet.rejects.parquet")
    assert rejects["row"].tolist() == [1, 3]
    assert rejects["column"].tolist() == ["user_id", "age"]
    assert "empty" in rejects["reason"][0] and "old" in rejects["reason"][1]
    single = batch.run(scorer, pd.DataFrame([ROWS[2]]), tmp_path / "one.parquet", progress=False)
    assert result["rating"][1] == pytest.approx(single["rating"][0], abs=1e-6)


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"user_id": "1", "item_id": "10", "age": "old"}],
            "row 0 (0-based, header excluded), column 'age'",
        ),
        (
            [{"user_id": "1", "item_id": "10"}, {"user_id": "", "item_id": "3"}],
            "row 1 (0-based, header excluded), column 'user_id'",
        ),
        ([{"user_id": "1", "item_id": "10", "title": "x" * 20_001}], "column 'title'"),
        ([{"user": "1", "item_id": "10"}], "lacks column(s) ['user_id']"),
    ],
)
def test_malformed_input_exits_2_naming_row_and_column(
    tmp_path, capsys, monkeypatch, artifacts, rows, message
):
    # The rows are checked against the model's fields before anything is scored.
    monkeypatch.delenv("REDIS_URL", raising=False)
    source = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    code = batch.main(
        ["--model", str(artifacts.v1), "--input", str(source), "--output", str(tmp_path / "o.csv")]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_shard_argument_is_refused():
    with pytest.raises(SystemExit):
        batch.main(["--input", "x.csv", "--output", "y.csv", "--shard", "3/3"])


@pytest.mark.redis
def test_every_shard_output_has_the_full_schema_empty_or_not(scorer, tmp_path):
    """An empty shard writes the score columns too, so the shards read as one data set."""
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    frame = pd.DataFrame(ROWS[:2]).assign(score=[7, 8])  # 2 rows, 4 shards: 2 are empty
    outs = [tmp_path / f"part-{i}.parquet" for i in range(4)]
    sizes = [
        len(batch.run(scorer, frame, out, shard=(i, 4), batch_size=2, progress=False))
        for i, out in enumerate(outs)
    ]
    assert sizes == [0, 1, 0, 1]
    schemas = [pq.read_schema(p).remove_metadata() for p in outs]
    assert all(s.equals(schemas[0]) for s in schemas)
    scores = ["rating", *(f"adapter_{lay}" for lay in scorer.layers), "ood_score"]
    assert schemas[0].names == [*frame.columns, *scores]
    assert {str(schemas[0].field(c).type) for c in scores} == {"float"}
    assert schemas[0].field("score").type == "int64"
    whole = pds.dataset([str(p) for p in outs], format="parquet").to_table().to_pandas()
    assert list(whole.columns) == [*frame.columns, *scores] and len(whole) == 2
    full = batch.run(scorer, frame, tmp_path / "all.parquet", progress=False)
    np.testing.assert_allclose(whole["rating"], full["rating"], atol=1e-6)
    empty_csv = tmp_path / "empty.csv"
    batch.run(scorer, frame, empty_csv, shard=(0, 4), progress=False)
    assert pd.read_csv(empty_csv).columns.tolist() == [*frame.columns, *scores]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_empty_input_writes_every_column(tmp_path, capsys, monkeypatch, artifacts, suffix):
    monkeypatch.delenv("REDIS_URL", raising=False)
    source = tmp_path / f"empty{suffix}"
    empty = pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": [], "n": []})
    empty = empty.astype({"item_id": str, "n": "int64"})
    if suffix == ".csv":
        empty.to_csv(source, index=False)
    else:
        empty.to_parquet(source, index=False)
    out = tmp_path / "scored.parquet"
    code = batch.main(
        ["--model", str(artifacts.v1), "--input", str(source), "--output", str(out)]
        + ["--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    import pyarrow.parquet as pq

    schema = pq.read_schema(out)
    adapters = [c for c in schema.names if c.startswith("adapter_")]
    assert adapters and schema.names == [
        "user_id",
        "item_id",
        "n",
        "rating",
        *adapters,
        "ood_score",
    ]
    assert str(schema.field("n").type) == ("int64" if suffix == ".parquet" else "large_string")
    assert str(schema.field("rating").type) == "float"
