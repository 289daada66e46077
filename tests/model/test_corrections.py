"""Online corrections' arithmetic: the vectorised replay equals a plain sequential loop."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from model.corrections import (
    Shrinkage,
    fit_oov_item,
    fit_shrinkage,
    progressive_rmse,
    replay,
)


def sequential(
    events, k_item, k_user, user_state=None, item_state=None, oov_items=(), k_item_oov=None
):
    """The definition, one event at a time: predict with the state before, then update
    (items in ``oov_items`` shrink with ``k_item_oov``)."""
    n_i, s_i = defaultdict(float), defaultdict(float)
    n_u, s_u = defaultdict(float), defaultdict(float)
    for key, (n, s) in (item_state or {}).items():
        n_i[key], s_i[key] = n, s
    for key, (n, s) in (user_state or {}).items():
        n_u[key], s_u[key] = n, s
    out = []
    for u, i, m, r in events:
        ci = s_i[i] / (n_i[i] + (k_item_oov if i in oov_items else k_item))
        cu = s_u[u] / (n_u[u] + k_user)
        out.append((ci, cu, r - m, r - m - ci))
        n_i[i] += 1
        s_i[i] += r - m
        n_u[u] += 1
        s_u[u] += r - m - ci
    return np.array(out)


def offsets_now(events, user, item, shrinkage, oov_items=()):
    """``(item offset, user offset)`` a pair answers with after ``events`` (the reference:
    one more, ignored, event of that pair)."""
    row = sequential(
        [*events, (user, item, 3.0, 3.0)],
        shrinkage.k_item,
        shrinkage.k_user,
        oov_items=oov_items,
        k_item_oov=shrinkage.k_item_oov,
    )[-1]
    return row[0], row[1]


def random_events(n=400, seed=0):
    rng = np.random.default_rng(seed)
    users = [f"u{j}" for j in rng.integers(0, 12, n)]
    items = [f"i{j}" for j in rng.integers(0, 30, n)]
    model = rng.uniform(1, 5, n)
    rating = rng.integers(1, 6, n).astype(float)
    return users, items, model, rating


@pytest.mark.parametrize(("k_item", "k_user"), [(1.0, 1.0), (5.0, 20.0), (0.5, 1e4)])
def test_replay_equals_the_sequential_definition(k_item, k_user):
    users, items, model, rating = random_events()
    got = replay(model, rating, users, items, Shrinkage(k_item, k_user))
    want = sequential(zip(users, items, model, rating, strict=True), k_item, k_user)
    np.testing.assert_allclose(got.item_offset, want[:, 0], atol=1e-12)
    np.testing.assert_allclose(got.user_offset, want[:, 1], atol=1e-12)
    np.testing.assert_allclose(got.item_residual, want[:, 2], atol=1e-12)
    np.testing.assert_allclose(got.user_residual, want[:, 3], atol=1e-12)


def test_oov_items_use_their_own_k():
    users, items, model, rating = random_events(300, seed=4)
    oov_items = {"i1", "i5", "i17"}
    oov = np.array([i in oov_items for i in items])
    got = replay(model, rating, users, items, Shrinkage(8.0, 6.0, 1.5), item_oov=oov)
    want = sequential(
        zip(users, items, model, rating, strict=True),
        8.0,
        6.0,
        oov_items=oov_items,
        k_item_oov=1.5,
    )
    np.testing.assert_allclose(got.correction, want[:, 0] + want[:, 1], atol=1e-12)
    plain = replay(model, rating, users, items, Shrinkage(8.0, 6.0))
    assert not np.allclose(plain.correction, got.correction)  # the flag changes answers
    assert Shrinkage.from_json(Shrinkage(8.0, 6.0, 1.5).to_json()) == Shrinkage(8.0, 6.0, 1.5)


def test_fit_oov_item_trusts_feedback_more_when_the_model_knows_less():
    rng = np.random.default_rng(5)
    n = 3000
    items = [f"i{j}" for j in rng.integers(0, 30, n)]
    users = [f"u{j}" for j in rng.integers(0, 80, n)]
    bias = rng.normal(0, 1.0, 30)
    rating = np.clip(3.0 + bias[[int(i[1:]) for i in items]] + rng.normal(0, 0.4, n), 1, 5)
    known_model = rating - rng.normal(0, 0.4, n)  # knows each item: little left to correct
    blind = np.full(n, 3.0)  # ids hidden: the model knows nothing of the items
    base, _ = fit_shrinkage(known_model, rating, users, items, (1.0, 5.0))
    fitted, table = fit_oov_item(blind, rating, users, items, base, (1.0, 5.0))
    assert fitted.k_item_oov < base.k_item
    assert min(table.values()) == table[f"k_item_oov={fitted.k_item_oov:g}"]


def test_replay_continues_from_a_stored_state():
    users, items, model, rating = random_events(200, seed=1)
    item_state = {"i3": (4.0, 2.5), "i7": (1.0, -1.0)}
    user_state = {"u2": (10.0, -3.0)}
    got = replay(
        model,
        rating,
        users,
        items,
        Shrinkage(3.0, 7.0),
        user_state=(
            np.array([user_state.get(u, (0, 0))[0] for u in users]),
            np.array([user_state.get(u, (0, 0))[1] for u in users]),
        ),
        item_state=(
            np.array([item_state.get(i, (0, 0))[0] for i in items]),
            np.array([item_state.get(i, (0, 0))[1] for i in items]),
        ),
    )
    want = sequential(
        zip(users, items, model, rating, strict=True), 3.0, 7.0, user_state, item_state
    )
    np.testing.assert_allclose(got.correction, want[:, 0] + want[:, 1], atol=1e-12)


def test_a_batch_split_in_two_equals_one_replay():
    users, items, model, rating = random_events(300, seed=2)
    s = Shrinkage(4.0, 9.0)
    whole = replay(model, rating, users, items, s)
    first = replay(model[:120], rating[:120], users[:120], items[:120], s)
    state = {}
    for side, ids, residual in (
        ("user", users[:120], first.user_residual),
        ("item", items[:120], first.item_residual),
    ):
        acc = defaultdict(lambda: [0.0, 0.0])
        for key, value in zip(ids, residual, strict=True):
            acc[key][0] += 1
            acc[key][1] += value
        state[side] = acc
    rest = slice(120, None)

    def base(side, ids):
        return (
            np.array([state[side][k][0] if k in state[side] else 0 for k in ids]),
            np.array([state[side][k][1] if k in state[side] else 0 for k in ids]),
        )

    second = replay(
        model[rest],
        rating[rest],
        users[rest],
        items[rest],
        s,
        user_state=base("user", users[rest]),
        item_state=base("item", items[rest]),
    )
    np.testing.assert_allclose(second.correction, whole.correction[rest], atol=1e-12)


def test_fit_picks_the_best_of_the_grid_and_helps_a_biased_item():
    rng = np.random.default_rng(3)
    n = 2000
    items = [f"i{j}" for j in rng.integers(0, 20, n)]
    users = [f"u{j}" for j in rng.integers(0, 50, n)]
    bias = {f"i{j}": b for j, b in enumerate(rng.normal(0, 1.0, 20))}
    model = np.full(n, 3.0)
    rating = np.clip(3.0 + np.array([bias[i] for i in items]) + rng.normal(0, 0.5, n), 1, 5)
    best, table = fit_shrinkage(model, rating, users, items, (1.0, 5.0), grid=(1.0, 10.0, 1e4))
    assert min(table.values()) == table[f"k_item={best.k_item:g},k_user={best.k_user:g}"]
    assert best.k_item < 1e4  # the item offsets are real: feedback must be trusted
    alone = float(np.sqrt(np.mean((model - rating) ** 2)))
    assert progressive_rmse(model, rating, users, items, best, (1.0, 5.0)) < alone - 0.3


def test_shrinkage_refuses_non_positive_values():
    with pytest.raises(ValueError, match="k_item"):
        Shrinkage(0.0, 1.0)
    with pytest.raises(ValueError, match="k_item and k_user"):
        Shrinkage.from_json({"k_user": 2})


@pytest.mark.parametrize("kind", ["str", "int", "tuple"])
def test_running_counts_and_sums_without_pandas_equal_pandas(kind):
    """The service's numpy path of ``_before`` (no pandas in the serving process) against the
    trainer's pandas path."""
    import pandas as pd  # loaded: _before takes pandas' path

    from model.corrections import _before, _before_numpy

    rng = np.random.default_rng(7)
    raw = rng.integers(0, 40, 2_000)
    keys = {
        "str": [f"u{k}" for k in raw],
        "int": raw.astype(np.int32),
        "tuple": [("item", int(k)) for k in raw],
    }[kind]
    values = rng.normal(size=len(raw))
    assert "pandas" in __import__("sys").modules and pd is not None
    want_count, want_total = _before(keys, values)
    got_count, got_total = _before_numpy(keys, values)
    np.testing.assert_array_equal(got_count, want_count)
    np.testing.assert_allclose(got_total, want_total, rtol=0, atol=1e-10)
    assert [len(a) for a in _before_numpy([], np.zeros(0))] == [0, 0]
