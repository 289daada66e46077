"""``python -m training --catalog DIR``: registered users and items join the entity tables,
each once, with its newest record."""

from __future__ import annotations

import shutil

import pytest

from model.catalog_format import encode_records
from model.feedback_format import encode_events
from training.__main__ import config_from_args, parse_args
from training.config import TrainConfig
from training.data.tables import DataError
from training.pipeline import prepare_data


def record(kind: str, entity: str, version: int, fields: dict | None, **extra) -> dict:
    return {
        "dataset": "tiny-synthetic",
        "kind": kind,
        "id": entity,
        "fields": fields,
        "deleted": fields is None,
        "version": version,
        "writer": "catalog-host-1",
        "updated_at": version / 1e6,
        "origin": "put",
    } | extra


FIRST = [
    record("item", "book-1", 10, {"title": "plain movie 1 (1995)", "genres": ["Action"]}),
    record("item", "5", 11, {"title": "great movie 9 (1995)"}),  # a known item, retitled
    record("user", "31", 12, {"age": 30, "occupation": "artist"}),
    record("user", "1", 13, {"age": 50}),
    record("item", "book-2", 14, {"title": "awful movie 2 (1995)"}),
    record("item", "book-3", 15, {"title": "x"}, dataset="another-catalog"),
]
SECOND = [
    record("item", "book-2", 20, None, origin="delete"),  # deleted after it was registered
    record("item", "book-1", 21, {"title": "great movie 1 (1995)", "genres": ["Comedy"]}),
    record("item", "book-1", 5, {"title": "an older record read later"}),
]


@pytest.fixture
def catalog_dir(tmp_path):
    directory = tmp_path / "catalog"
    (directory / "replica-a").mkdir(parents=True)
    first = directory / "replica-a" / "catalog-a-1-0001.jsonl"
    first.write_bytes(encode_records(FIRST))
    shutil.copy(first, directory / "catalog-copied-twice.jsonl")  # the same records again
    cut = b'{"dataset": "tiny-synthetic", "kind": "item", "id": "book-9"'
    (directory / "catalog-b-2-0001.jsonl").write_bytes(encode_records(SECOND) + cut)
    return directory


def test_each_registered_entity_joins_once_with_its_newest_record(tiny_spec, catalog_dir, capsys):
    base = prepare_data(TrainConfig.tiny().replace(dataset=str(tiny_spec)))
    prep = prepare_data(
        TrainConfig.tiny().replace(dataset=str(tiny_spec), catalog=str(catalog_dir))
    )
    items = prep.items.set_index("item_id")
    users = prep.users.set_index("user_id")
    assert len(items) == len(base.items) + 1  # book-1 once; book-2 deleted
    assert list(prep.items["item_id"]).count("book-1") == 1
    assert items.loc["book-1", "title"] == "great movie 1 (1995)"
    assert items.loc["book-1", "genres"] == ("Comedy",)
    assert "book-2" not in items.index and "book-3" not in items.index
    old = base.items.set_index("item_id")
    assert items.loc["5", "title"] == "great movie 9 (1995)"  # the record wins ...
    assert items.loc["5", "genres"] == old.loc["5", "genres"]  # ... field by field
    assert users.loc["31", "occupation"] == "artist" and users.loc["31", "age"] == 30
    assert users.loc["1", "age"] == 50
    assert users.loc["1", "occupation"] == base.users.set_index("user_id").loc["1", "occupation"]
    assert len(prep.pairs) == len(base.pairs)  # records add entities, not ratings
    out = capsys.readouterr().out
    assert "catalog: 4 entities from 15 records in 3 file(s)" in out
    assert "9 older or repeated records, 1 deleted, 1 of another data set" in out
    assert "1 partial line(s)" in out
    assert "1 new and 1 updated users, 1 new and 1 updated items" in out


def test_catalog_and_feedback_logs_may_share_a_directory(tiny_spec, catalog_dir, capsys):
    event = {
        "event_id": "e1",
        "received_at": 990_000_001.5,
        "model_version": "v1",
        "dataset": "tiny-synthetic",
        "user_id": "31",
        "item_id": "book-1",
        "rating": 5.0,
        "timestamp": 990_000_001,
        "model_rating": 3.0,
        "served_rating": 3.0,
        "user": {"occupation": "doctor"},
        "item": {"title": "a title from feedback"},
    }
    (catalog_dir / "feedback-a-1-0001.jsonl").write_bytes(encode_events([event]))
    cfg = TrainConfig.tiny().replace(
        dataset=str(tiny_spec), catalog=str(catalog_dir), feedback=str(catalog_dir)
    )
    prep = prepare_data(cfg)
    items = prep.items.set_index("item_id")
    assert items.loc["book-1", "title"] == "great movie 1 (1995)"  # the catalog's record wins
    assert prep.users.set_index("user_id").loc["31", "occupation"] == "artist"
    user_row = list(prep.users["user_id"]).index("31")
    item_row = list(prep.items["item_id"]).index("book-1")
    pairs = prep.pairs  # entity rows (training/pairs.py)
    rated = pairs.rating[(pairs.user == user_row) & (pairs.item == item_row)]
    assert rated.tolist() == [5.0]
    assert "feedback: 1 events added from 1 file(s)" in capsys.readouterr().out


def test_a_missing_directory_or_a_bad_line_is_an_error(tiny_spec, tmp_path):
    cfg = TrainConfig.tiny().replace(dataset=str(tiny_spec), catalog=str(tmp_path / "none"))
    with pytest.raises(DataError, match="not a directory"):
        prepare_data(cfg)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "catalog-x.jsonl").write_text('{"kind": "item"}\n')
    with pytest.raises(DataError, match=r"catalog-x.jsonl, line 1: not a catalog record"):
        prepare_data(cfg.replace(catalog=str(tmp_path / "cat")))


def test_a_field_that_does_not_fit_its_column_names_it(tiny_spec, tmp_path):
    (tmp_path / "cat").mkdir()
    bad = record("user", "77", 1, {"age": "very old"})
    (tmp_path / "cat" / "catalog-x.jsonl").write_bytes(encode_records([bad]))
    cfg = TrainConfig.tiny().replace(dataset=str(tiny_spec), catalog=str(tmp_path / "cat"))
    with pytest.raises(DataError, match="age"):
        prepare_data(cfg)


def test_the_cli_flag():
    assert config_from_args(parse_args(["--catalog", "cat/"])).catalog == "cat/"
