"""Ratings as entity rows: the table a run keeps per rating, and the texts rendered per entity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model.templates import views_from_templates
from training.pairs import PairTable
from training.precompute import render_views

USERS = pd.DataFrame({"user_id": ["7", "8", "9"], "age": [20, 30, 30]})
ITEMS = pd.DataFrame({"item_id": ["a", "b"], "title": ["Up", "Down"]})


def test_ratings_become_entity_rows_and_back():
    frame = pd.DataFrame(
        {
            "user_id": ["9", "7", "9"],
            "item_id": ["b", "b", "a"],
            "rating": [4.0, 2.0, 5.0],
            "timestamp": [3, 1, 2],
        }
    )
    pairs = PairTable.from_frame(frame, pd.Index(USERS["user_id"]), pd.Index(ITEMS["item_id"]))
    assert pairs.user.dtype == pairs.item.dtype == np.int32 and len(pairs) == 3
    np.testing.assert_array_equal(pairs.user, [2, 0, 2])
    np.testing.assert_array_equal(pairs.item, [1, 1, 0])
    both = PairTable.concat([pairs.take(np.array([2])), pairs.take(np.array([0, 1]))])
    np.testing.assert_array_equal(both.timestamp, [2, 3, 1])
    np.testing.assert_array_equal(both.rating, np.float32([5, 4, 2]))


def test_a_rating_of_an_unknown_entity_is_refused_by_name():
    frame = pd.DataFrame({"user_id": ["7", "nobody"], "item_id": ["a", "a"], "rating": [1, 2]})
    frame["timestamp"] = 0
    with pytest.raises(ValueError, match=r"1 rating\(s\) name a user absent .*'nobody'"):
        PairTable.from_frame(frame, pd.Index(USERS["user_id"]), pd.Index(ITEMS["item_id"]))


def test_entity_views_render_one_text_per_entity_that_pairs_name():
    views = views_from_templates(user="user {user_id} aged {age}", item="item {title}")
    user, item = np.array([2, 0, 2, 2]), np.array([1, 1, 0, 1])
    texts, index = render_views(views, USERS, ITEMS, user, item)
    assert texts == [["user 7 aged 20", "user 9 aged 30"], ["item Down", "item Up"]]
    np.testing.assert_array_equal(index, [[1, 0], [0, 0], [1, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"pair user rows must lie in \[0, 3\)"):
        render_views(views, USERS, ITEMS, np.array([3]), np.array([0]))
