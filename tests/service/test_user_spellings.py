"""Ids spelled like missing values and files as users save them, over HTTP and through the
batch CLI: ``NA``, ``null``, ``None``, ``n/a`` are ids (and ``NA`` a value) everywhere; an
input file in any encoding, delimiter or line end a spreadsheet writes reads the same."""

from __future__ import annotations

import codecs

import numpy as np
import pandas as pd
import pytest
from support.servers import loaded_client

from model.feedback_format import read_events
from service import batch

NA_IDS = ["NA", "null", "None", "n/a"]
ROWS = [  # occupation "NA" is a value (a category), not a missing one
    {"user_id": u, "item_id": i, "occupation": o, "title": t}
    for u, i, o, t in zip(
        NA_IDS,
        ["10", "null", "NA", "11"],
        ["NA", "", "doctor", "None"],
        ["", "Heat (1995)", "NA", ""],
        strict=True,
    )
]


def _body(row: dict) -> dict:
    body = {"user_id": row["user_id"], "item_id": row["item_id"]}
    if row["occupation"]:
        body["user"] = {"occupation": row["occupation"]}
    if row["title"]:
        body["item"] = {"title": row["title"]}
    return body


@pytest.fixture
def client(artifacts, compile_cache, tmp_path):
    with loaded_client(artifacts.v1, compile_cache, feedback_dir=tmp_path / "fb") as c:
        c.feedback_dir = tmp_path / "fb"
        yield c


def test_http_and_the_batch_cli_score_na_ids_alike(client, artifacts, tmp_path, monkeypatch):
    for row in ROWS:
        r = client.post("/predict-rating", json=_body(row))
        assert r.status_code == 200, r.text
    answers = client.post(
        "/predict-rating/batch", json={"requests": [_body(r) for r in ROWS]}
    ).json()["predictions"]
    assert [a["cold_start"]["user"] for a in answers] == [True] * 4
    events = [{**_body(r), "rating": 4} for r in ROWS]
    assert client.post("/feedback", json={"events": events}).status_code == 200
    (log,) = client.feedback_dir.glob("*.jsonl")
    assert [e["user_id"] for e in read_events(log)[0]] == NA_IDS

    monkeypatch.delenv("REDIS_URL", raising=False)
    source = tmp_path / "pairs.csv"
    pd.DataFrame(ROWS).to_csv(source, index=False)
    out = tmp_path / "scored.parquet"
    code = batch.main(
        ["--model", str(artifacts.v1), "--input", str(source), "--output", str(out)]
        + ["--no-progress"]
    )
    assert code == 0
    scored = pd.read_parquet(out)
    assert scored["user_id"].tolist() == NA_IDS
    assert scored["item_id"].tolist() == [r["item_id"] for r in ROWS]
    np.testing.assert_allclose(scored["rating"], [a["rating"] for a in answers], atol=1e-5)


def test_the_model_na_values_apply_to_batch_input_but_never_to_ids():
    frame = pd.DataFrame(ROWS)
    kept = batch.apply_na_values(frame, {})  # a model trained with the default
    assert kept["occupation"].tolist()[0] == "NA" and pd.isna(kept["occupation"][1])
    listed = batch.apply_na_values(frame, {"na_values": ["", "NA", "None"]})
    assert listed["user_id"].tolist() == NA_IDS and listed["item_id"].tolist()[2] == "NA"
    assert listed["occupation"].isna().tolist() == [True, True, False, True]
    assert listed["title"].isna().tolist() == [True, False, True, True]


def _plain() -> pd.DataFrame:
    return pd.DataFrame(ROWS).assign(title=["Kolya (1996)", "Heat (1995)", "Café Society", ""])


def _csv(frame: pd.DataFrame, sep: str = ",", newline: str = "\n") -> str:
    return frame.to_csv(index=False, sep=sep, lineterminator=newline)


VARIANTS = {
    "utf-8": lambda f: _csv(f).encode(),
    "utf-8 BOM, CRLF (Excel 'CSV UTF-8')": lambda f: (
        codecs.BOM_UTF8 + _csv(f, newline="\r\n").encode()
    ),
    "utf-16 tab-separated (Excel 'Unicode Text')": lambda f: _csv(f, "\t", "\r\n").encode("utf-16"),
    "semicolons (a decimal-comma locale)": lambda f: _csv(f, ";").encode(),
    "CR line ends": lambda f: _csv(f, newline="\r").encode(),
    "trailing empty columns": lambda f: _csv(f.assign(**{"": "", " ": ""})).encode(),
    "gzip": None,  # (written below)
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_input_files_as_spreadsheets_save_them(tmp_path, variant):
    frame = _plain()
    path = tmp_path / "pairs.csv"
    if variant == "gzip":
        import gzip

        path = tmp_path / "pairs.csv.gz"
        path.write_bytes(gzip.compress(codecs.BOM_UTF8 + _csv(frame).encode()))
    else:
        path.write_bytes(VARIANTS[variant](frame))
    got = batch.read_table(path)
    assert list(got.columns) == list(frame.columns)
    assert got["user_id"].tolist() == NA_IDS
    assert got["title"].tolist()[:3] == ["Kolya (1996)", "Heat (1995)", "Café Society"]
    assert pd.isna(got["title"][3]) and got["occupation"][0] == "NA"


def test_batch_input_in_another_encoding_says_which_flag_to_pass(tmp_path, capsys, artifacts):
    path = tmp_path / "pairs.csv"
    path.write_bytes(_csv(_plain()).encode("cp1252"))
    with pytest.raises(batch.InputError) as e:
        batch.read_table(path)
    message = str(e.value)
    assert "line 4 holds bytes b'\\xe9' that are not utf-8" in message
    assert "pass --encoding cp1252" in message and "Café Society" in message
    got = batch.read_table(path, encoding="cp1252")
    assert got["title"][2] == "Café Society"
    out = tmp_path / "o.parquet"
    argv = ["--model", str(artifacts.v1), "--input", str(path), "--output", str(out)]
    assert batch.main(argv) == 2
    assert "pass --encoding cp1252" in capsys.readouterr().err


def test_batch_json_lines_with_a_field_whose_type_varies_by_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"user_id": "NA", "item_id": 10, "zip_code": 2139}\n'
        '{"user_id": "null", "item_id": "11", "zip_code": "02139-1234"}\n'
    )
    got = batch.read_table(path)
    assert got["user_id"].tolist() == ["NA", "null"]
    assert got["zip_code"].tolist() == [2139, "02139-1234"]
