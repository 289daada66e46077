"""A numeric column's declared ``range``: the spec checks it, data outside is refused, the
fitted column keeps it (and what training saw), requests outside are a 422 naming the field."""

from __future__ import annotations

import tomllib

import pandas as pd
import pytest
from fastapi.exceptions import RequestValidationError

from model.features import ColumnDecl, FeatureSpec, fit_feature_spec
from service.entity_fields import check_fields, request_models
from training.data import load_spec_dataset
from training.data.tables import DataError
from training.spec import SpecError, load_spec, parse_spec

SPEC = """
name = "ranged"
[ratings]
path = "{ratings}"
[rating_scale]
min = 1
max = 5
[users]
path = "{users}"
key = "user_id"
[users.columns]
age = {{ type = "numeric", buckets = [18, 30], range = [0, 120] }}
[text]
user = "user {{user_id}} aged {{age}}"
item = "item {{item_id}}"
"""


def _files(tmp_path, ages):
    ratings = tmp_path / "ratings.csv"
    users = tmp_path / "users.csv"
    pd.DataFrame(
        {"user_id": ["1", "2"], "item_id": ["a", "b"], "rating": [4, 3], "timestamp": [1, 2]}
    ).to_csv(ratings, index=False)
    pd.DataFrame({"user_id": ["1", "2"], "age": ages}).to_csv(users, index=False)
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(ratings=ratings, users=users))
    return path


def _spec(text: str):
    return parse_spec(tomllib.loads(text.format(ratings="r.csv", users="u.csv")))


def test_the_spec_checks_the_range():
    assert _spec(SPEC).users.columns["age"].range == (0.0, 120.0)
    with pytest.raises(SpecError, match=r"range \[5.0, 5.0\]"):
        _spec(SPEC.replace("[0, 120]", "[5, 5]"))
    with pytest.raises(SpecError, match="range does not apply to a categorical column"):
        _spec(SPEC.replace('type = "numeric", buckets = [18, 30]', 'type = "categorical"'))


def test_data_outside_the_range_is_refused_naming_the_column(tmp_path):
    with pytest.raises(DataError, match=r"column 'age': 150 is outside its range \[0, 120\]"):
        load_spec_dataset(load_spec(_files(tmp_path, [34, 150])))
    assert (
        len(load_spec_dataset(load_spec(_files(tmp_path, [34, None]))).users) == 2
    )  # missing passes


def _features(valid_range):
    decls = (ColumnDecl("age", "user", "numeric", edges=(18.0, 30.0), valid_range=valid_range),)
    users = [{"user_id": "1", "age": 20}, {"user_id": "2", "age": 60}]
    return fit_feature_spec(decls, users, [{"item_id": "a"}])


def test_the_fitted_column_keeps_the_range_and_what_training_saw():
    features = _features((0.0, 120.0))
    (age,) = [c for c in features.columns if c.name == "age"]
    assert age.valid_range == (0.0, 120.0) and age.seen_range == (20.0, 60.0)
    again = FeatureSpec.from_json(features.to_json())
    assert [c for c in again.columns if c.name == "age"][0] == age


def test_a_request_outside_the_declared_range_is_a_422_naming_the_field():
    models = request_models(_features((0.0, 120.0)))
    check_fields(models, [(("body",), {"age": 120}, None)])
    with pytest.raises(RequestValidationError) as e:
        check_fields(models, [(("body",), {"age": 400}, None)])
    (error,) = e.value.errors()
    assert error["loc"] == ("body", "user", "age") and "120" in error["msg"]


def test_without_a_declared_range_a_far_value_warns_not_refuses():
    features = _features(None)
    (age,) = [c for c in features.columns if c.name == "age"]
    check_fields(request_models(features), [(("body",), {"age": 400}, None)])  # accepted
    assert age.far_outside(70) is None and age.far_outside(-5) is None  # within a span
    assert age.far_outside(400) == "user.age 400 lies far outside the values training saw [20, 60]"
