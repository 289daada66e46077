"""Text views: factored (user text + item text) and the paper's pair sentence."""

import pytest

from model.templates import ViewSet, make_views

USER = {"user_id": "196", "age": 49, "gender": "M", "occupation": "writer", "zip_code": "55105"}
ITEM = {"item_id": "242", "title": "Kolya (1996)", "genres": ("Comedy",)}


def test_factored_renders_one_text_per_entity():
    views = make_views("factored")
    assert [v.entity for v in views.views] == ["user", "item"]
    user_text, item_text = views.render(USER, ITEM)
    assert user_text == "user id 196, age 49, occupation writer, zip code 55105"
    assert item_text == "movie id 242, title Kolya (1996)"
    # The user text does not depend on the item: it is encoded once per user.
    assert views.render(USER, {"item_id": "1"})[0] == user_text


def test_pair_is_the_lift_style_sentence_and_switches_add_fields():
    (text,) = make_views("pair").render(USER, ITEM)
    assert text.startswith("When the user id is 196, the user age is 49")
    assert text.endswith(
        "the movie title is Kolya (1996), what can be the user rating on this movie?"
    )
    (full,) = make_views("pair", genres=True, gender=True).render(USER, ITEM)
    assert "the user gender is M" in full and "the movie genres are Comedy" in full


def test_missing_fields_render_as_unknown():
    _, item_text = make_views("factored").render({"user_id": "1", "age": -1}, {"item_id": "9"})
    assert item_text == "movie id 9, title unknown"
    user_text, _ = make_views("factored").render({"user_id": "1", "age": -1}, {})
    assert "age unknown" in user_text


def test_json_round_trip_and_unknown_view_name():
    views = make_views("factored", genres=True)
    assert ViewSet.from_json(views.to_json()) == views
    with pytest.raises(ValueError, match="'factored' or 'pair'"):
        make_views("triple")
