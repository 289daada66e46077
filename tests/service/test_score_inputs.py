"""The pairs' entity keys and field sources (service/score_inputs.py): the fast paths for
pairs without fields give what the pair-by-pair definition gives."""

from __future__ import annotations

import numpy as np

from service.entity_store import freeze
from service.results import SOURCE_CODE
from service.score_inputs import ScoreInput, entity_keys, sources

MIXED = [
    ScoreInput("u1", "i1"),
    ScoreInput("u1", "i2", item={"title": "T", "genres": ["a", "b"]}),
    ScoreInput("u2", "i3", item={"title": "C"}, item_from="catalog"),
    ScoreInput("u3", "i1", user={"age": 3}, user_from="request"),
    ScoreInput("u4", "i4", item_from="request"),
]
PLAIN = [ScoreInput(f"u{k}", f"i{k}") for k in range(5)]


def _keys(side, inputs):
    if side == "user":
        return [(r.user_id, freeze(r.user)) for r in inputs]
    return [(r.item_id, freeze(r.item)) for r in inputs]


def test_entity_keys_are_id_and_frozen_fields_with_and_without_fields():
    for inputs in (MIXED, PLAIN):
        for side in ("user", "item"):
            assert entity_keys(side, inputs) == _keys(side, inputs)
    assert entity_keys("item", MIXED)[1] == ("i2", (("genres", ("a", "b")), ("title", "T")))


def test_sources_name_request_catalog_model_and_unknown():
    cold = np.array([False, False, False, True, True])
    model, unknown = SOURCE_CODE["model"], SOURCE_CODE["unknown"]
    request, catalog = SOURCE_CODE["request"], SOURCE_CODE["catalog"]
    assert sources(MIXED, "item", cold).tolist() == [model, request, catalog, unknown, request]
    assert sources(MIXED, "user", cold).tolist() == [model, model, model, request, unknown]
    assert sources(PLAIN, "item", cold).tolist() == [model, model, model, unknown, unknown]
    assert sources(PLAIN, "item", cold).dtype == np.int8
