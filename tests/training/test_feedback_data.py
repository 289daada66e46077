"""``python -m training --feedback DIR``: logged events join the ratings exactly once."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from model.feedback_format import encode_events
from training.__main__ import config_from_args, parse_args
from training.config import TrainConfig
from training.data.tables import DataError
from training.prepare import prepare_data


def event(event_id: str, user_id: str, item_id: str, rating: float, ts: int, **extra) -> dict:
    return {
        "event_id": event_id,
        "received_at": ts + 0.5,
        "model_version": "v1",
        "dataset": "tiny-synthetic",
        "user_id": user_id,
        "item_id": item_id,
        "rating": rating,
        "timestamp": ts,
        "model_rating": 3.0,
        "served_rating": 3.1,
        "user": None,
        "item": None,
    } | extra


EVENTS = [
    event("e1", "1", "2", 5.0, 990_000_001),
    event(
        "e2",
        "31",
        "book-9",
        4.0,
        990_000_002,
        user={"age": 30, "occupation": "artist"},
        item={"title": "great movie 3 (1995)", "genres": ["Action", "Comedy"]},
    ),
    event("e3", "31", "book-9", 2.0, 990_000_003),  # re-rated: replaces e2
    event("e5", "10", "24", 5.0, 990_000_007),  # a pair of the data set (2.0 there): replaced
    event("x1", "1", "2", 1.0, 990_000_004, dataset="another-catalog"),
    event("x2", "1", "2", 9.0, 990_000_005),
]


@pytest.fixture
def feedback_dir(tmp_path):
    directory = tmp_path / "feedback"
    (directory / "replica-a").mkdir(parents=True)
    first = directory / "replica-a" / "feedback-a-1-0001.jsonl"
    first.write_bytes(encode_events(EVENTS))
    shutil.copy(first, directory / "copied-twice.jsonl")  # the same events again
    partial = encode_events([event("e4", "2", "3", 3.0, 990_000_006)])
    (directory / "feedback-b-2-0001.jsonl").write_bytes(partial + b'{"event_id": "cut')
    return directory


def test_logged_events_join_the_ratings_once(tiny_spec, feedback_dir, capsys):
    base = prepare_data(TrainConfig.tiny().replace(dataset=str(tiny_spec)))
    cfg = TrainConfig.tiny().replace(dataset=str(tiny_spec), feedback=str(feedback_dir))
    prep = prepare_data(cfg)
    # e1, e3 (e2 replaced), e4 new; e5 replaces a rating; x1, x2 and the cut line left out
    assert len(prep.pairs) == len(base.pairs) + 3
    stamps = prep.pairs.timestamp
    assert sorted(stamps[stamps >= 990_000_000]) == [
        990_000_001,
        990_000_003,
        990_000_006,
        990_000_007,
    ]
    rows = np.arange(len(prep.pairs))
    pair = (prep.pair_ids("user", rows) == "10") & (prep.pair_ids("item", rows) == "24")
    assert prep.pairs.rating[pair].tolist() == [5.0]
    items = prep.items.set_index("item_id")
    assert items.loc["book-9", "title"] == "great movie 3 (1995)"
    assert items.loc["book-9", "genres"] == ("Action", "Comedy")
    users = prep.users.set_index("user_id")
    assert users.loc["31", "occupation"] == "artist" and users.loc["31", "age"] == 30
    out = capsys.readouterr().out
    assert "5 events added from 3 file(s)" in out and "2 earlier ratings" in out
    assert "6 duplicate ids" in out and "1 of another data set" in out
    assert "1 outside the rating scale" in out and "1 partial line(s)" in out


def test_a_missing_directory_is_an_error_an_empty_one_adds_nothing(tiny_spec, tmp_path, capsys):
    cfg = TrainConfig.tiny().replace(dataset=str(tiny_spec), feedback=str(tmp_path / "none"))
    with pytest.raises(DataError, match="not a directory"):
        prepare_data(cfg)
    (tmp_path / "empty").mkdir()
    base = prepare_data(cfg.replace(feedback=None))
    prep = prepare_data(cfg.replace(feedback=str(tmp_path / "empty")))
    assert len(prep.pairs) == len(base.pairs)
    assert "feedback: 0 events added from 0 file(s)" in capsys.readouterr().out


def test_a_line_that_is_not_an_event_names_the_file(tiny_spec, tmp_path):
    (tmp_path / "fb").mkdir()
    (tmp_path / "fb" / "bad.jsonl").write_text('{"event_id": "a"}\n')
    cfg = TrainConfig.tiny().replace(dataset=str(tiny_spec), feedback=str(tmp_path / "fb"))
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: not a feedback event \(missing"):
        prepare_data(cfg)


def test_the_cli_flag():
    assert config_from_args(parse_args(["--feedback", "logs/"])).feedback == "logs/"
