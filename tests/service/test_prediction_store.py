"""The prediction log's in-process store (service/prediction_store.py): the same answers as a
dict of pairs in write order, under random writes, rewrites, expiries and evictions; and its
size per pair."""

from __future__ import annotations

import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

from service.prediction_store import Prediction, PredictionStore


class _Reference:
    """The store's definition: (user, item) -> (written at, version -> prediction), least
    recently written first out, the other versions kept when still fresh (the dict of named
    tuples the store replaced)."""

    def __init__(self, max_pairs: int, ttl_s: float):
        self.max_pairs, self.ttl_s = max_pairs, ttl_s
        self.pairs: OrderedDict = OrderedDict()

    def put(self, version, pairs, model, rating, cold, ood, now):
        # A pair twice in one write: its last prediction, in that one's place. The oldest
        # pairs go after each max_pairs written (a pair rewritten keeps its other versions
        # even when it was among the oldest).
        last = sorted({pair: j for j, pair in enumerate(pairs)}.values())
        rows = [(pairs[j], model[j], rating[j], cold[j], ood[j]) for j in last]
        for start in range(0, len(rows), self.max_pairs):
            for pair, m, r, c, o in rows[start : start + self.max_pairs]:
                entry = self.pairs.pop(pair, None)
                fresh = entry is not None and now - entry[0] < self.ttl_s
                versions = entry[1] if fresh else {}
                versions[version] = Prediction(float(m), float(r), bool(c), bool(o))
                self.pairs[pair] = (now, versions)
            while len(self.pairs) > self.max_pairs:
                self.pairs.popitem(last=False)

    def get(self, pairs, now):
        out = []
        for pair in pairs:
            entry = self.pairs.get(pair)
            out.append(dict(entry[1]) if entry is not None and now - entry[0] < self.ttl_s else {})
        return out


@pytest.mark.parametrize("max_pairs", [1, 7, 40])
def test_answers_as_a_dict_of_pairs_in_write_order(max_pairs):
    rng = np.random.default_rng(max_pairs)
    ttl = 5.0
    store, ref = PredictionStore(max_pairs, ttl), _Reference(max_pairs, ttl)
    universe = [(f"u{u}", f"i{i}") for u in range(6) for i in range(8)]
    now = 0.0
    for step in range(400):
        now += float(rng.choice([0.0, 0.1, 1.0, 3.0, 6.0], p=[0.4, 0.3, 0.2, 0.07, 0.03]))
        n = int(rng.integers(1, 3 * max_pairs + 3))
        pairs = [universe[k] for k in rng.integers(0, len(universe), n)]  # repeats included
        version = str(rng.choice(["A", "B", "C"]))
        model = rng.uniform(1, 5, n).astype(np.float32)
        rating = rng.uniform(1, 5, n).astype(np.float32)
        cold, ood = rng.random(n) < 0.3, rng.random(n) < 0.2
        users, items = [p[0] for p in pairs], [p[1] for p in pairs]
        store.put(version, PredictionStore.keys(users, items), model, rating, cold, ood, now)
        ref.put(version, pairs, model, rating, cold, ood, now)
        asked = universe if step % 10 == 0 else pairs
        got = store.get(PredictionStore.keys([p[0] for p in asked], [p[1] for p in asked]), now)
        assert got == ref.get(asked, now), f"step {step}"
        assert len(store) == len(ref.pairs)


def test_a_pair_keeps_its_other_versions_and_expires_with_its_last_write():
    store = PredictionStore(10, ttl_s=5)
    keys = PredictionStore.keys(["u1"], ["i1"])
    one, no = np.ones(1, np.float32), np.zeros(1, bool)
    store.put("A", keys, one * 2, one * 2.5, no, ~no, now=0)
    store.put("B", keys, one * 3, one * 3.5, ~no, no, now=4)
    assert store.get(keys, now=8) == [
        {"A": Prediction(2.0, 2.5, False, True), "B": Prediction(3.0, 3.5, True, False)}
    ]
    assert store.get(keys, now=9) == [{}]  # 5 s after the last write
    store.put("B", keys, one, one, no, no, now=20)  # A's prediction expired: not carried
    assert store.get(keys, now=20) == [{"B": Prediction(1.0, 1.0, False, False)}]


def test_holds_a_pair_in_a_third_of_a_dict_of_named_tuples():
    n = 20_000
    users = [f"user-{k % 3000}" for k in range(n)]
    items = [f"item-{k}" for k in range(n)]
    rng = np.random.default_rng(0)
    model = rng.uniform(1, 5, n).astype(np.float32)
    flags = rng.random(n) < 0.5
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = PredictionStore(n, ttl_s=3600)
        for version in ("champion", "challenger"):
            store.put(version, PredictionStore.keys(users, items), model, model, flags, flags, 1.0)
        per_pair = (tracemalloc.get_traced_memory()[0] - before) / n
        assert len(store) == n
        ref = _Reference(n, 3600)
        ids = list(zip([u + "" for u in users], [i + "" for i in items], strict=True))
        start = tracemalloc.get_traced_memory()[0]
        for version in ("champion", "challenger"):
            ref.put(version, ids, model, model, flags, flags, 1.0)
        ref_per_pair = (tracemalloc.get_traced_memory()[0] - start) / n
    finally:
        tracemalloc.stop()
    assert per_pair < 200, per_pair  # 167 measured with two versions
    assert per_pair * 3 < ref_per_pair, (per_pair, ref_per_pair)
