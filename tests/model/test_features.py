"""Feature encoding from declared columns: vocabularies fitted on train, reserved id 0,
numeric buckets, multi-hot, user columns before item columns."""

import numpy as np

from model.features import OOV, ColumnDecl, FeatureSpec, fit_feature_spec

USERS = [
    {"user_id": "1", "age": 24.0, "occupation": "Writer", "zip_code": "55105"},
    {"user_id": "2", "age": 61.0, "occupation": "doctor", "zip_code": "02139"},
]
ITEMS = [
    {"item_id": "10", "title": "Kolya (1996)", "genres": ("Comedy",), "year": 1996.0},
    {"item_id": "11", "title": "Heat (1995)", "genres": ("Action", "Crime"), "year": 1995.0},
]
DECLS = (
    ColumnDecl("age", "user", "numeric", edges=(18.0, 25.0, 35.0, 45.0, 50.0, 56.0)),
    ColumnDecl("occupation", "user", "categorical"),
    ColumnDecl("zip_code", "user", "categorical", prefix=3),
    ColumnDecl("title", "item", "text"),
    ColumnDecl("genres", "item", "multi_categorical"),
    ColumnDecl("year", "item", "numeric", quantiles=2),
)


def test_columns_are_ordered_ids_first_and_user_before_item():
    spec = fit_feature_spec(DECLS, USERS, ITEMS)
    assert [c.name for c in spec.categorical] == [
        "user_id",
        "age",
        "occupation",
        "zip_code",
        "item_id",
        "year",
    ]
    assert (spec.id_column("user"), spec.id_column("item")) == (0, 4)
    # text never feeds the MLP; multi_categorical goes to the multi-hot input
    assert spec.n_multi_hot == 3
    assert [c.name for c in spec.fields_of("item")] == ["title", "genres", "year"]


def test_numeric_buckets_follow_the_edges_and_missing_is_zero():
    spec = fit_feature_spec(DECLS, USERS, ITEMS)
    age = spec.categorical[1]
    assert age.size == 8  # 7 buckets + the reserved 0
    ids = [age.encode_one(a) for a in (7, 18, 24, 25, 49, 50, 56, 90, None, float("nan"), "x")]
    assert ids == [1, 2, 2, 3, 5, 6, 7, 7, OOV, OOV, OOV]
    year = spec.categorical[5]
    assert year.edges == (1995.5,)  # fitted: the train median


def test_known_values_get_ids_and_unknown_values_map_to_oov():
    spec = fit_feature_spec(DECLS, USERS, ITEMS)
    known = spec.encode([USERS[0]], [ITEMS[1]])["ids"]
    assert (known > OOV).all()
    stranger = {"user_id": "999", "age": 24, "occupation": "pilot", "zip_code": "551"}
    cold = spec.encode([stranger], [{"item_id": "404"}])["ids"][0]
    # id and occupation unseen -> OOV; the age bucket and zip prefix were seen in train.
    assert cold[0] == OOV and cold[2] == OOV and cold[4] == OOV and cold[5] == OOV
    assert cold[1] == known[0, 1] and cold[3] == known[0, 3]


def test_values_are_normalised_before_lookup():
    spec = fit_feature_spec(DECLS, USERS, ITEMS)
    a = spec.encode_entity("user", [{"user_id": " 1 ", "occupation": "WRITER", "zip_code": 55105}])
    b = spec.encode_entity("user", [{"user_id": "1", "occupation": "writer", "zip_code": "551"}])
    np.testing.assert_array_equal(a, b)


def test_multi_hot_and_json_round_trip():
    spec = fit_feature_spec(DECLS, USERS, ITEMS)
    hot = spec.encode_multi_hot("item", ITEMS + [{"item_id": "x", "genres": ("Western",)}])
    np.testing.assert_array_equal(hot, [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_multi_valued_cells_drop_missing_elements_and_read_numbers_like_tables():
    from model.features import as_values, clean_category

    assert as_values(["fiction", None, float("nan"), 1.0, " "]) == ("fiction", "1")
    assert as_values(np.array([2.0, 2.5])) == ("2", "2.5")
    assert as_values("a|b||c", "|") == ("a", "b", "c") and as_values("a|b") == ("a|b",)
    assert clean_category(3.0) == clean_category(3) == clean_category("3 ") == "3"


def test_min_count_and_max_size_cap_the_vocabulary():
    users = [{"user_id": str(i), "city": c} for i, c in enumerate("aaabbc")]
    decls = (ColumnDecl("city", "user", "categorical", min_count=2),)
    (col,) = [c for c in fit_feature_spec(decls, users, []).columns if c.name == "city"]
    assert col.vocab == ("a", "b")
    decls = (ColumnDecl("city", "user", "categorical", max_size=1),)
    (col,) = [c for c in fit_feature_spec(decls, users, []).columns if c.name == "city"]
    assert col.vocab == ("a",)


def test_features_of_an_artifact_before_the_spec_are_refused_with_retrain():
    import pytest

    with pytest.raises(ValueError, match="retrain"):
        FeatureSpec.from_json({"categorical": [{"name": "user_id", "vocab": ["1"]}]})
