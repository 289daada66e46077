"""Online evaluation (service/online_eval.py): the join of feedback with logged predictions
against a numpy reference, the cluster-robust interval, the gate's verdict, and Redis
outages (evaluation goes on in process)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from service.cache import RedisTier
from service.metrics import Metrics
from service.online_eval import OnlineEvaluation
from service.online_stats import (
    compare,
    decision,
    look_confidence,
    ratio_variance,
    t_quantile,
)
from service.prediction_log import PredictionLog
from service.results import ScoreBatch
from service.routing import N_CLUSTERS, canary_position, cluster_of, in_canary


def _batch(model_rating, rating, cold, ood, version) -> ScoreBatch:
    n = len(rating)
    b = ScoreBatch.of_model(
        np.asarray(model_rating, np.float32),
        np.zeros((n, 2), np.float32),
        np.asarray(ood, np.float32),
        np.zeros(n, bool),
        np.asarray(cold, bool),
        ((),) * n,
        (1, 2),
        version,
    )
    return b.corrected(
        np.asarray(rating, np.float32) - b.model_rating, np.zeros(n, np.float32), (1.0, 5.0)
    )


def _evaluation(metrics, redis_tier=None, prefix="levi:test-online"):
    log = PredictionLog(
        metrics,
        redis_tier=redis_tier,
        ttl_s=3600,
        max_pairs=100_000,
        queue_pairs=100_000,
        key_prefix=prefix,
    )
    return OnlineEvaluation(log, metrics, redis_tier=redis_tier, ttl_s=3600, key_prefix=prefix)


def _replay(online, rng, n_users=400, n_items=50, n=3000):
    """Log predictions of versions A (worse) and B (better) for random pairs, then send the
    ratings of those pairs; the numpy reference of everything the join must find."""
    users = [f"u{k}" for k in rng.integers(0, n_users, n)]
    items = [f"i{k}" for k in rng.integers(0, n_items, n)]
    truth = rng.integers(1, 6, n).astype(np.float64)
    user_bias = {u: rng.normal(0, 0.5) for u in set(users)}  # errors correlated per user
    noise_a = np.array([user_bias[u] for u in users]) + rng.normal(0, 1.0, n)
    noise_b = np.array([user_bias[u] for u in users]) + rng.normal(0, 0.7, n)
    ref = {}
    cold = rng.random(n) < 0.3
    ood = rng.uniform(0.2, 2.0, n)
    for name, noise in (("A", noise_a), ("B", noise_b)):
        model = np.clip(truth + noise, 1, 5).astype(np.float32)
        served = np.clip(model + 0.1, 1, 5).astype(np.float32)
        # one logged prediction per distinct pair: the last one written wins
        online.log.record(name, users, items, _batch(model, served, cold, ood, name))
        ref[name] = (model.astype(np.float64), served.astype(np.float64))
    assert online.log.flush(5)
    # Feedback for the distinct pairs (each once), in a few requests.
    last = {key: j for j, key in enumerate(zip(users, items, strict=True))}
    rows = sorted(last.values())
    for chunk in np.array_split(np.array(rows), 4):
        online.join(
            [users[j] for j in chunk],
            [items[j] for j in chunk],
            [float(truth[j]) for j in chunk],
            ("A", "B", "trial-1"),
        )
    return users, items, truth, ref, np.array(rows), cold, ood


def test_join_equals_a_numpy_reference_and_the_interval_is_cluster_robust():
    rng = np.random.default_rng(0)
    online = _evaluation(Metrics())
    users, _, truth, ref, rows, cold, ood = _replay(online, rng)
    y = truth[rows]
    per, comparison, source = online.report(
        ["A", "B"], ("A", "B", "trial-1"), rating="model", confidence=0.95
    )
    assert source == "process"
    for name in ("A", "B"):
        model, served = ref[name][0][rows], ref[name][1][rows]
        got = per[name]
        assert got["n"] == len(rows)
        assert got["rmse"] == pytest.approx(math.sqrt(np.mean((served - y) ** 2)), rel=1e-4)
        assert got["mae"] == pytest.approx(np.mean(np.abs(served - y)), rel=1e-4)
        assert got["model"]["rmse"] == pytest.approx(math.sqrt(np.mean((model - y) ** 2)), rel=1e-4)
        c = cold[rows]
        assert got["slices"]["cold_item"]["n"] == int(c.sum())
        assert got["slices"]["cold_item"]["rmse"] == pytest.approx(
            math.sqrt(np.mean((served[c] - y[c]) ** 2)), rel=1e-4
        )
        high = ood[rows] > 1.0
        assert got["slices"]["ood_high"]["n"] == int(high.sum())
        assert got["slices"]["ood_low"]["mae"] == pytest.approx(
            np.mean(np.abs(served[~high] - y[~high])), rel=1e-4
        )
    # The paired difference and its interval, recomputed: clusters of users, t with G - 1 dof.
    d = (ref["B"][0][rows] - y) ** 2 - (ref["A"][0][rows] - y) ** 2
    g = np.array([cluster_of(users[j]) for j in rows])
    n_g = np.bincount(g, minlength=N_CLUSTERS).astype(float)
    d_g = np.bincount(g, weights=d, minlength=N_CLUSTERS)
    mean = d.mean()
    used = int((n_g > 0).sum())
    var = used / (used - 1) * np.sum((d_g - mean * n_g) ** 2) / len(d) ** 2
    half = stats.t.ppf(0.975, used - 1) * math.sqrt(var)
    assert comparison["kind"] == "paired" and comparison["n"] == len(rows)
    assert comparison["mean_diff"] == pytest.approx(mean, rel=1e-6)
    assert comparison["ci"] == pytest.approx([mean - half, mean + half], rel=1e-6)
    # B errs less, clearly: the gate promotes it once enough events are joined.
    assert comparison["ci"][1] < 0
    assert decision(comparison, min_events=len(rows)) == "promote"
    assert decision(comparison, min_events=len(rows) + 1) is None
    # Another trial of the same two versions starts from nothing.
    _, fresh, _ = online.report(["A"], ("A", "B", "trial-2"), rating="model", confidence=0.95)
    assert fresh["kind"] == "none" and fresh["n"] == 0 and fresh["ci"] is None


def test_repeated_looks_spend_the_error_rate():
    assert look_confidence(99, 100, 0.95) is None
    assert look_confidence(100, 100, 0.95) == (0, pytest.approx(0.975))
    assert look_confidence(399, 100, 0.95) == (1, pytest.approx(0.9875))
    assert look_confidence(400, 100, 0.95)[0] == 2
    # The looks' error rates sum to at most 1 - confidence, however many there are.
    assert sum(1 - look_confidence(100 * 2**k, 100, 0.95)[1] for k in range(40)) <= 0.05


@pytest.mark.parametrize("dof", [1, 2, 3, 7, 30, 63, 1000])
def test_t_quantile_is_scipys_without_scipy(dof):
    # The serving image leaves scipy out: the interval's quantile is computed in pure Python.
    for confidence in (0.01, 0.5, 0.9, 0.95, 0.975, 0.999, 1 - 1e-6, 1 - 2.0**-30):
        expected = stats.t.ppf(0.5 + confidence / 2, dof)
        assert t_quantile(confidence, dof) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError):
        t_quantile(0.95, 0)


def test_online_statistics_do_not_import_scipy():
    code = "import sys, service.online_stats, service.gate; assert 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unpaired_comparison_without_shadow_and_no_interval_with_few_clusters():
    # Two versions on disjoint users (a canary without shadow): the difference of MSEs.
    a = {"all:n": 4.0, "c0:n": 2.0, "c0:se:model": 2.0, "c1:n": 2.0, "c1:se:model": 4.0}
    b = {"all:n": 2.0, "c2:n": 2.0, "c2:se:model": 1.0}
    out = compare(a, b, {}, rating="model", confidence=0.95)
    assert out["kind"] == "unpaired" and out["mean_diff"] == pytest.approx(0.5 - 1.5)
    assert out["ci"] is None  # fewer than MIN_CLUSTERS user clusters: no verdict
    assert decision(out, min_events=1) is None
    mean, var, used = ratio_variance(np.array([2.0, 2.0]), np.array([2.0, 4.0]))
    assert (mean, used) == (1.5, 2) and var == pytest.approx(2 / 1 * (1 + 1) / 16)


def test_canary_buckets_are_sticky_agree_across_processes_and_hold_the_share():
    users = [f"user-{k}" for k in range(20_000)]
    share = np.mean([in_canary(u, 0.3) for u in users])
    assert abs(share - 0.3) < 0.015  # binomial sd 0.0032: within ~4.5 sd
    # Growing the share keeps everyone who was in; 0 and 1 are exact.
    assert all(in_canary(u, 0.5) for u in users[:2000] if in_canary(u, 0.3))
    assert not any(in_canary(u, 0.0) for u in users[:500])
    assert all(in_canary(u, 1.0) for u in users[:500])
    # Another process (another replica) computes the same positions: no per-process seed.
    code = (
        "from service.routing import canary_position as p;"
        "print(','.join(repr(p(f'user-{k}')) for k in range(50)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == ",".join(repr(canary_position(f"user-{k}")) for k in range(50))
    # Clusters cut across the canary split.
    inside = {cluster_of(u) for u in users[:5000] if in_canary(u, 0.3)}
    assert len(inside) == N_CLUSTERS


@pytest.mark.redis
def test_redis_shares_the_figures_and_an_outage_leaves_them_in_process(redis_url, key_prefix):
    """Two processes' evaluations (replicas) sharing Redis see one set of sums; with Redis
    down the join goes on in process and nothing raises."""
    metrics = Metrics()
    tier = RedisTier(redis_url, metrics, ttl_s=60, timeout_s=0.5, backoff_s=0.5, backoff_max_s=5)
    prefix = f"{key_prefix}:online"
    one, two = _evaluation(metrics, tier, prefix), _evaluation(Metrics(), tier, prefix)
    rng = np.random.default_rng(1)
    _replay(one, rng, n=400)
    per_one, _, source = one.report(["A"], None, rating="model", confidence=0.95)
    per_two, _, _ = two.report(["A"], None, rating="model", confidence=0.95)
    assert source == "redis" and per_one == per_two and per_one["A"]["n"] > 0
    # Another replica joins feedback of pairs the first one predicted (from Redis).
    two.log.record("A", ["shared-u"], ["shared-i"], _batch([3.0], [3.0], [False], [0.5], "A"))
    assert two.log.flush(5)
    assert one.join(["shared-u"], ["shared-i"], [5.0], None) == {"A": 1}
    # Redis gone (nothing listens on this port): the join still counts, in process.
    dead = RedisTier(
        "redis://127.0.0.1:1/0", Metrics(), ttl_s=60, timeout_s=0.05, backoff_s=0.5, backoff_max_s=5
    )
    offline = _evaluation(Metrics(), dead, prefix)
    offline.log.record("A", ["u"], ["i"], _batch([4.0], [4.5], [True], [2.0], "A"))
    assert offline.log.flush(5)
    assert offline.join(["u"], ["i"], [5.0], None) == {"A": 1}
    per, _, source = offline.report(["A"], None, rating="served", confidence=0.95)
    assert source == "process" and per["A"]["n"] == 1 and per["A"]["rmse"] == pytest.approx(0.5)
    for e in (one, two, offline):
        e.close()
