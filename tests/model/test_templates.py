"""Text views from templates: factored (user text + item text) and one pair sentence."""

import pytest

from model.templates import ViewSet, views_from_templates

USER = {"user_id": "196", "age": 49.0, "occupation": "writer", "zip_code": "55105"}
ITEM = {"item_id": "242", "title": "Kolya (1996)", "genres": ("Comedy", "Drama")}
FACTORED = views_from_templates(
    user="user id {user_id}, age {age}, occupation {occupation}, zip code {zip_code}",
    item="movie id {item_id}, title {title}, genres {genres}",
)


def test_factored_renders_one_text_per_entity():
    assert [v.entity for v in FACTORED.views] == ["user", "item"]
    user_text, item_text = FACTORED.render(USER, ITEM)
    assert user_text == "user id 196, age 49, occupation writer, zip code 55105"  # 49.0 -> 49
    assert item_text == "movie id 242, title Kolya (1996), genres Comedy, Drama"
    # The user text does not depend on the item: it is encoded once per user.
    assert FACTORED.render(USER, {"item_id": "1"})[0] == user_text


def test_pair_reads_both_records():
    views = views_from_templates(pair="user {user_id} aged {age} rates {title}?")
    assert views.render(USER, ITEM) == ["user 196 aged 49 rates Kolya (1996)?"]


def test_missing_fields_render_as_unknown():
    user_text, item_text = FACTORED.render(
        {"user_id": "1", "age": float("nan")}, {"item_id": "9", "genres": ()}
    )
    assert item_text == "movie id 9, title unknown, genres unknown"
    assert "age unknown" in user_text and "occupation unknown" in user_text


def test_json_round_trip_and_one_style_only():
    assert ViewSet.from_json(FACTORED.to_json()) == FACTORED
    with pytest.raises(ValueError, match="user and item templates, or one pair"):
        views_from_templates(user="{user_id}", pair="{user_id}")
    with pytest.raises(ValueError, match="user and item templates, or one pair"):
        views_from_templates(user="{user_id}")
