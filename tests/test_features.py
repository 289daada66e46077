"""Feature vocabularies: fitted on train, OOV slot 0, user features before item features."""

import numpy as np
import pytest

from model.features import OOV, FeatureSpec, age_bucket, fit_feature_spec

USERS = [
    {"user_id": "1", "age": 24, "gender": "M", "occupation": "Writer", "zip_code": "55105"},
    {"user_id": "2", "age": 61, "gender": "F", "occupation": "doctor", "zip_code": "02139"},
]
ITEMS = [
    {"item_id": "10", "title": "Kolya (1996)", "genres": ("Comedy",)},
    {"item_id": "11", "title": "Heat (1995)", "genres": ("Action", "Crime")},
]


def test_age_buckets_follow_movielens_groups():
    assert [age_bucket(a) for a in (7, 18, 24, 25, 49, 50, 56, 90)] == [
        "<18", "18-24", "18-24", "25-34", "45-49", "50-55", "56+", "56+",
    ]  # fmt: skip
    assert age_bucket(-1) is None and age_bucket(None) is None and age_bucket("x") is None


def test_known_values_get_ids_and_unknown_values_map_to_oov():
    spec = fit_feature_spec(USERS, ITEMS)
    assert [f.name for f in spec.categorical] == [
        "user_id", "age_bucket", "occupation", "zip_prefix", "item_id",
    ]  # fmt: skip
    known = spec.encode([USERS[0]], [ITEMS[1]])["ids"]
    assert (known > OOV).all()
    stranger = {"user_id": "999", "age": 24, "occupation": "pilot", "zip_code": "551"}
    cold = spec.encode([stranger], [{"item_id": "404"}])["ids"][0]
    # id and occupation unseen -> OOV; age bucket and zip prefix were seen in train.
    assert cold.tolist()[0] == OOV and cold[2] == OOV and cold[4] == OOV
    assert cold[1] == known[0, 1] and cold[3] == known[0, 3]


def test_values_are_normalised_before_lookup():
    spec = fit_feature_spec(USERS, ITEMS)
    a = spec.encode_entity("user", [{"user_id": " 1 ", "occupation": "WRITER"}])
    b = spec.encode_entity("user", [{"user_id": "1", "occupation": "writer"}])
    np.testing.assert_array_equal(a, b)


def test_genres_multi_hot_and_json_round_trip():
    spec = fit_feature_spec(USERS, ITEMS, gender=True, genres=("Action", "Comedy", "Crime"))
    assert "gender" in [f.name for f in spec.features_of("user")]
    hot = spec.encode_genres(ITEMS + [{"item_id": "x", "genres": ("Western",)}])
    np.testing.assert_array_equal(hot, [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_unknown_feature_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown feature.*'shoe_size'"):
        fit_feature_spec(USERS, ITEMS, names=("user_id", "shoe_size"))
