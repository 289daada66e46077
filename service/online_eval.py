"""Online evaluation: each version judged by the ratings users send back (``POST /feedback``).

Two parts:

* :class:`PredictionLog`: what each version predicted for each ``(user, item)`` pair it
  answered or shadowed, kept ``ttl_s``. With Redis: one hash per pair,
  ``<prefix>:pred:<hash of user, item>``, one field per model version (model rating, served
  rating, cold-start item, OOD flag), so one ``HGETALL`` joins an event with every version's
  prediction, on any replica. Always also in process (bounded LRU): the state without Redis,
  the fallback while it is down. Writes happen on a background thread from a bounded queue
  (dropped and counted when full), never on the request path.
* :class:`OnlineEvaluation`: the join. Per version and slice (all; cold-start vs known
  items; ``ood_score`` above vs at-or-below its training median, 1.0): counts and sums of
  squared and absolute errors, of the served (corrected) rating and the model's own. Per
  (champion, challenger): on the pairs both predicted, the difference of squared errors
  ``d = e_challenger^2 - e_champion^2``. Both also per user cluster
  (:func:`service.routing.cluster_of`, 64 clusters), for the intervals below. Sums live in
  Redis hashes (``<prefix>:eval:{<version>}``, ``<prefix>:cmp:{<a>}:{<b>}``, shared by
  replicas, ``HINCRBYFLOAT``) and in process, and are Prometheus counters (RMSE in PromQL:
  ``sqrt(rate(squared) / rate(count))``).

**The interval.** Events of one user are not independent (a user who rates harshly is
harsh for both versions, and for many items), so a plain paired t-interval over events is
too narrow. The mean difference is a ratio ``D / N`` over user clusters ``g`` (users hashed
into 64 groups; every user's events fall in one group, so groups are independent), and its
variance is the cluster-robust (sandwich) estimate
``G / (G - 1) * sum_g (D_g - dbar * N_g)^2 / N^2`` with ``G`` non-empty clusters; the
interval uses Student's t with ``G - 1`` degrees of freedom. Without paired events (a canary
without shadow: each user sees one version) the two versions' mean squared errors are
compared on their own, disjoint, users: the difference with the sum of both cluster-robust
variances.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from service.cache import RedisTier
from service.metrics import Metrics
from service.results import ScoreBatch
from service.routing import N_CLUSTERS, cluster_of

log = logging.getLogger(__name__)

SLICES = ("all", "cold_item", "known_item", "ood_high", "ood_low")
RATINGS = ("served", "model")  # the answer (with online corrections), the model alone
OOD_MEDIAN = 1.0  # ood_score is the adapters' spread over its training median
MIN_CLUSTERS = 8  # fewer non-empty clusters: no interval (too few independent groups)


@dataclass(frozen=True)
class Prediction:
    """What one version answered for one pair."""

    model_rating: float
    rating: float
    cold_item: bool
    ood_high: bool

    def encode(self) -> str:
        return (
            f"{self.model_rating:.5f},{self.rating:.5f},{int(self.cold_item)},{int(self.ood_high)}"
        )

    @staticmethod
    def decode(raw: bytes | str) -> Prediction | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            m, r, c, o = text.split(",")
            return Prediction(float(m), float(r), c == "1", o == "1")
        except ValueError:
            return None


def pair_key(user_id: str, item_id: str) -> str:
    """A fixed-size key of one (user, item) pair (ids may be long or contain anything)."""
    raw = f"{user_id}\x1f{item_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class PredictionLog:
    """Predictions per pair and version, for ``ttl_s`` (module docstring).

    Args:
        redis_tier: the shared Redis, or None (in process only).
        ttl_s: how long a prediction can be joined with feedback.
        max_pairs: pairs kept in process (least recently written first out).
        queue_pairs: predictions waiting for the writer thread; beyond, new ones are dropped
            and counted (``levi_prediction_log_total{result="dropped"}``).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None,
        ttl_s: int,
        max_pairs: int,
        queue_pairs: int,
        key_prefix: str,
    ):
        self.metrics = metrics
        self.redis = redis_tier
        self.ttl_s = ttl_s
        self.max_pairs = max_pairs
        self.queue_pairs = queue_pairs
        self.key_prefix = key_prefix
        # (user, item) -> (written at, version -> prediction)
        self._local: OrderedDict[tuple[str, str], tuple[float, dict[str, Prediction]]] = (
            OrderedDict()
        )
        self._queue: deque[tuple[str, list[str], list[str], list[Prediction]]] = deque()
        self._queued = 0
        self._lock = threading.Lock()  # the queue (held briefly: record() runs on the loop)
        self._store = threading.Lock()  # the in-process pairs (writer thread vs lookups)
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="levi-prediction-log", daemon=True)
        self._thread.start()

    def redis_key(self, key: str) -> str:
        return f"{self.key_prefix}:pred:{key}"

    # -- writing --------------------------------------------------------------------------

    def record(
        self,
        model_version: str,
        users: Sequence[str],
        items: Sequence[str],
        batch: ScoreBatch,
    ) -> bool:
        """Queue ``batch``'s predictions for their pairs (non-blocking); False when dropped."""
        n = len(batch)
        if n == 0:
            return True
        if self._stopped or self._queued + n > self.queue_pairs:
            self.metrics.prediction_log.labels(result="dropped").inc(n)
            return False
        # The arrays as they are (sliced views): made into predictions on the writer thread.
        entry = (model_version, list(users), list(items), batch)
        with self._lock:
            self._queue.append(entry)
            self._queued += n
            self._wake.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._busy = False
                    self._idle.notify_all()
                    self._wake.wait()
                if self._stopped and not self._queue:
                    self._busy = False
                    self._idle.notify_all()
                    return
                work = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._write(work)
            except Exception:  # never let the writer die: predictions are best effort
                log.exception("writing predictions for the online evaluation failed")
            with self._lock:
                self._queued -= sum(len(w[1]) for w in work)

    def _write(self, work: list[tuple[str, list[str], list[str], ScoreBatch]]) -> None:
        now = time.monotonic()
        rows: list[tuple[tuple[str, str], str, Prediction]] = []  # ((user, item), version, p)
        for version, users, items, batch in work:  # no lock: the costly part
            preds = (
                Prediction(m, r, c, o > OOD_MEDIAN)
                for m, r, c, o in zip(
                    batch.model_rating.tolist(),
                    batch.rating.tolist(),
                    batch.cold_item.tolist(),
                    batch.ood_score.tolist(),
                    strict=True,
                )
            )
            for u, i, p in zip(users, items, preds, strict=True):
                rows.append(((u, i), version, p))
        for start in range(0, len(rows), 2048):  # short holds: lookups wait at most a chunk
            with self._store:
                for key, version, p in rows[start : start + 2048]:
                    entry = self._local.pop(key, None)
                    versions = entry[1] if entry is not None and now - entry[0] < self.ttl_s else {}
                    versions[version] = p
                    self._local[key] = (now, versions)
                while len(self._local) > self.max_pairs:
                    self._local.popitem(last=False)
        self.metrics.prediction_log.labels(result="stored").inc(len(rows))
        if self.redis is None or not rows:
            return

        def write(client: redis.Redis) -> bool:
            with client.pipeline(transaction=False) as pipe:
                for (u, i), version, p in rows:
                    name = self.redis_key(pair_key(u, i))  # fixed-size keys in Redis
                    pipe.hset(name, version, p.encode())
                    pipe.expire(name, self.ttl_s)
                pipe.execute()
            return True

        if self.redis.call("set", write) is None:
            self.metrics.prediction_log.labels(result="redis_error").inc(len(rows))

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until every prediction queued so far is written; False on timeout."""
        until = time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._busy:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)

    # -- reading --------------------------------------------------------------------------

    def lookup(self, users: Sequence[str], items: Sequence[str]) -> list[dict[str, Prediction]]:
        """Every version's prediction of each pair (``{}`` for a pair never predicted or
        expired): Redis when it answers, merged with this process's own."""
        keys = list(zip(users, items, strict=True))
        now = time.monotonic()
        with self._store:
            out = []
            for k in keys:
                entry = self._local.get(k)
                fresh = entry is not None and now - entry[0] < self.ttl_s
                out.append(dict(entry[1]) if fresh else {})
        if self.redis is None or not keys:
            return out

        def read(client: redis.Redis) -> list:
            with client.pipeline(transaction=False) as pipe:
                for u, i in keys:
                    pipe.hgetall(self.redis_key(pair_key(u, i)))
                return pipe.execute()

        shared = self.redis.call("get", read)
        if shared is None:
            return out
        for mine, theirs in zip(out, shared, strict=True):
            for version, raw in theirs.items():
                p = Prediction.decode(raw)
                name = version.decode() if isinstance(version, bytes) else version
                if p is not None and name not in mine:
                    mine[name] = p
        return out


# -- the sums -----------------------------------------------------------------------------


def _add(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def error_increments(
    preds: Sequence[Prediction], ratings: Sequence[float], users: Sequence[str]
) -> dict[str, float]:
    """The sums one version's joined events add (fields of its ``eval`` hash).

    Fields: ``<slice>:n``, ``<slice>:se:<rating>``, ``<slice>:ae:<rating>`` for every slice
    the event belongs to, and per user cluster ``c<k>:n``, ``c<k>:se:<rating>``.
    """
    out: dict[str, float] = {}
    for p, y, u in zip(preds, ratings, users, strict=True):
        slices = (
            "all",
            "cold_item" if p.cold_item else "known_item",
            "ood_high" if p.ood_high else "ood_low",
        )
        errors = {"served": p.rating - y, "model": p.model_rating - y}
        cluster = f"c{cluster_of(u)}"
        _add(out, f"{cluster}:n", 1.0)
        for s in slices:
            _add(out, f"{s}:n", 1.0)
        for kind, e in errors.items():
            _add(out, f"{cluster}:se:{kind}", e * e)
            for s in slices:
                _add(out, f"{s}:se:{kind}", e * e)
                _add(out, f"{s}:ae:{kind}", abs(e))
    return out


def paired_increments(
    champion: Sequence[Prediction],
    challenger: Sequence[Prediction],
    ratings: Sequence[float],
    users: Sequence[str],
) -> dict[str, float]:
    """The sums of ``d = e_challenger^2 - e_champion^2`` on pairs both predicted: ``n``,
    ``d:<rating>``, ``se_champion:<rating>``, ``se_challenger:<rating>`` and per user cluster
    ``c<k>:n``, ``c<k>:d:<rating>``."""
    out: dict[str, float] = {}
    for a, b, y, u in zip(champion, challenger, ratings, users, strict=True):
        cluster = f"c{cluster_of(u)}"
        _add(out, "n", 1.0)
        _add(out, f"{cluster}:n", 1.0)
        for kind, (ea, eb) in {
            "served": (a.rating - y, b.rating - y),
            "model": (a.model_rating - y, b.model_rating - y),
        }.items():
            d = eb * eb - ea * ea
            _add(out, f"d:{kind}", d)
            _add(out, f"{cluster}:d:{kind}", d)
            _add(out, f"se_champion:{kind}", ea * ea)
            _add(out, f"se_challenger:{kind}", eb * eb)
    return out


def look_confidence(evidence: int, min_events: int, confidence: float) -> tuple[int, float] | None:
    """The gate's looks: at ``min_events`` joined events, then each doubling (look ``k`` at
    ``min_events * 2**k``), look ``k`` at confidence ``1 - (1 - confidence) / 2**(k + 1)``.
    The error rates of the looks sum to at most ``1 - confidence`` (Bonferroni over the
    looks), so deciding "as soon as the interval excludes 0" stays at the configured
    confidence however long the trial runs. ``(k, confidence of look k)``, None before the
    first look."""
    if evidence < min_events:
        return None
    k = int(math.floor(math.log2(evidence / min_events)))
    return k, 1.0 - (1.0 - confidence) / 2 ** (k + 1)


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, dof))


def _clusters(sums: dict[str, float], value: str) -> tuple[np.ndarray, np.ndarray]:
    n = np.array([sums.get(f"c{g}:n", 0.0) for g in range(N_CLUSTERS)])
    v = np.array([sums.get(f"c{g}:{value}", 0.0) for g in range(N_CLUSTERS)])
    return n, v


def ratio_variance(n: np.ndarray, v: np.ndarray) -> tuple[float, float, int]:
    """``(mean, cluster-robust variance of the mean, non-empty clusters)`` of ``sum v / sum n``
    over clusters (module docstring); variance ``nan`` with fewer than 2 clusters."""
    total = float(n.sum())
    used = int((n > 0).sum())
    if total <= 0:
        return math.nan, math.nan, used
    mean = float(v.sum()) / total
    if used < 2:
        return mean, math.nan, used
    resid = v - mean * n
    var = used / (used - 1) * float((resid**2).sum()) / total**2
    return mean, var, used


def summarize(sums: dict[str, float]) -> dict:
    """``{"n", "rmse", "mae", "model": {"rmse", "mae"}, "slices": {...}}`` of one version's sums
    (``rmse`` / ``mae`` of the served rating; None where nothing was joined)."""

    def figures(prefix: str) -> dict:
        n = sums.get(f"{prefix}:n", 0.0)
        out: dict = {"n": int(n)}
        for kind in RATINGS:
            se, ae = sums.get(f"{prefix}:se:{kind}", 0.0), sums.get(f"{prefix}:ae:{kind}", 0.0)
            rmse = math.sqrt(se / n) if n else None
            mae = ae / n if n else None
            if kind == "served":
                out.update(rmse=rmse, mae=mae)
            else:
                out["model"] = {"rmse": rmse, "mae": mae}
        return out

    top = figures("all")
    top["slices"] = {s: figures(s) for s in SLICES[1:]}
    return top


def compare(
    champion: dict[str, float],
    challenger: dict[str, float],
    paired: dict[str, float],
    *,
    rating: str,
    confidence: float,
) -> dict:
    """Challenger minus champion in squared error, with a ``confidence`` interval.

    Paired (on the pairs both predicted) when there are any, else unpaired (each version on
    the users it answered). Negative means the challenger errs less.

    Returns:
        ``{"kind": "paired" | "unpaired" | "none", "n", "clusters", "mean_diff", "ci",
        "confidence", "rating", "interval"}``; ``ci`` None when there are fewer than
        ``MIN_CLUSTERS`` user clusters with events.
    """
    out: dict = {"rating": rating, "confidence": confidence, "mean_diff": None, "ci": None}
    # Paired when most events were predicted by both (shadow on); a few pairs answered by
    # both otherwise (a client naming a version) would give an interval over few clusters.
    joined = min(champion.get("all:n", 0.0), challenger.get("all:n", 0.0))
    if paired.get("n", 0.0) > 0 and paired["n"] >= 0.5 * joined:
        n, d = _clusters(paired, f"d:{rating}")
        mean, var, used = ratio_variance(n, d)
        out.update(kind="paired", n=int(n.sum()), clusters=used, mean_diff=mean)
        out["interval"] = (
            "paired, cluster-robust over user clusters (users hashed into 64 groups), "
            "Student t with clusters - 1 degrees of freedom"
        )
    else:
        na, sa = _clusters(champion, f"se:{rating}")
        nb, sb = _clusters(challenger, f"se:{rating}")
        ma, va, ga = ratio_variance(na, sa)
        mb, vb, gb = ratio_variance(nb, sb)
        used = min(ga, gb)
        total = int(na.sum() + nb.sum())
        out.update(kind="unpaired" if na.sum() and nb.sum() else "none", n=total, clusters=used)
        out["interval"] = (
            "unpaired (no pair predicted by both: enable shadow for a paired comparison): "
            "difference of the two mean squared errors, sum of their cluster-robust variances"
        )
        if na.sum() and nb.sum():
            mean, var = mb - ma, va + vb
            out["mean_diff"] = mean
        else:
            var = math.nan
    if out["mean_diff"] is not None and used >= MIN_CLUSTERS and math.isfinite(var):
        half = _t_quantile(confidence, used - 1) * math.sqrt(var)
        out["ci"] = [out["mean_diff"] - half, out["mean_diff"] + half]
    return out


def decision(comparison: dict, min_events: int) -> str | None:
    """The gate: ``"promote"`` when the challenger errs less with the comparison's confidence
    (its interval below 0), ``"rollback"`` when it errs more, else None; only once the
    challenger's own joined events (the paired ones when paired) reach ``min_events``."""
    ci = comparison.get("ci")
    if comparison.get("kind") == "paired":
        evidence = comparison.get("n", 0)
    else:
        evidence = comparison.get("challenger_events", 0)
    if ci is None or evidence < min_events:
        return None
    if ci[1] < 0:
        return "promote"
    if ci[0] > 0:
        return "rollback"
    return None


class OnlineEvaluation:
    """Joins feedback with logged predictions and keeps the sums (module docstring).

    Args:
        log: where predictions were recorded.
        redis_tier: shared sums (None: in process only).
        ttl_s: Redis keeps a version's sums this long after their last update.
    """

    def __init__(
        self,
        log_: PredictionLog,
        metrics: Metrics,
        *,
        redis_tier: RedisTier | None,
        ttl_s: int,
        key_prefix: str,
    ):
        self.log = log_
        self.metrics = metrics
        self.redis = redis_tier
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        self._local: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def eval_key(self, version: str, trial: str | None = None) -> str:
        """A version's sums: over its lifetime, or within one trial (``service/versions.py``)."""
        if trial is None:
            return f"{self.key_prefix}:eval:{{{version}}}"
        return f"{self.key_prefix}:trial:{{{trial}}}:{version}"

    def compare_key(self, trial: str) -> str:
        """The paired sums of one trial (a challenger against a champion)."""
        return f"{self.key_prefix}:trial:{{{trial}}}:paired"

    def join(
        self,
        users: Sequence[str],
        items: Sequence[str],
        ratings: Sequence[float],
        pair: tuple[str, str, str] | None,
    ) -> dict[str, int]:
        """Join feedback events with the predictions logged for their pairs and add the
        errors (blocking: Redis round trips; run off the event loop).

        Args:
            pair: ``(champion, challenger, trial)`` while a challenger is served: both
                versions' sums are also kept for the trial, and the paired sums on the pairs
                both predicted.

        Returns:
            Joined events per model version.
        """
        self.log.flush(timeout_s=0.5)
        found = self.log.lookup(users, items)
        per_version: dict[str, tuple[list[Prediction], list[float], list[str]]] = {}
        both: tuple[list, list, list, list] = ([], [], [], [])
        for u, y, preds in zip(users, ratings, found, strict=True):
            for version, p in preds.items():
                entry = per_version.setdefault(version, ([], [], []))
                entry[0].append(p)
                entry[1].append(float(y))
                entry[2].append(u)
            if pair is not None and pair[0] in preds and pair[1] in preds:
                both[0].append(preds[pair[0]])
                both[1].append(preds[pair[1]])
                both[2].append(float(y))
                both[3].append(u)
        updates: dict[str, dict[str, float]] = {}
        for version, (preds, ys, us) in per_version.items():
            inc = error_increments(preds, ys, us)
            updates[self.eval_key(version)] = inc
            if pair is not None and version in pair[:2]:
                updates[self.eval_key(version, pair[2])] = inc
            self._count(version, inc)
        if pair is not None and both[0]:
            inc = paired_increments(*both)
            updates[self.compare_key(pair[2])] = inc
            m = self.metrics
            m.online_paired.labels(champion=pair[0], challenger=pair[1]).inc(inc["n"])
            for kind in RATINGS:
                for side in ("champion", "challenger"):
                    m.online_paired_squared_error.labels(
                        champion=pair[0], challenger=pair[1], side=side, rating=kind
                    ).inc(inc[f"se_{side}:{kind}"])
        with self._lock:
            for key, inc in updates.items():
                mine = self._local.setdefault(key, {})
                for f, v in inc.items():
                    mine[f] = mine.get(f, 0.0) + v
        if self.redis is not None and updates:
            self._send(updates)
        return {v: len(x[0]) for v, x in per_version.items()}

    def _count(self, version: str, inc: dict[str, float]) -> None:
        m = self.metrics
        for s in SLICES:
            n = inc.get(f"{s}:n", 0.0)
            if not n:
                continue
            m.online_events.labels(model_version=version, slice=s).inc(n)
            for kind in RATINGS:
                m.online_squared_error.labels(model_version=version, slice=s, rating=kind).inc(
                    inc[f"{s}:se:{kind}"]
                )
                m.online_absolute_error.labels(model_version=version, slice=s, rating=kind).inc(
                    inc[f"{s}:ae:{kind}"]
                )

    def _send(self, updates: dict[str, dict[str, float]]) -> None:
        def write(client: redis.Redis) -> bool:
            with client.pipeline(transaction=False) as pipe:
                for key, inc in updates.items():
                    for f, v in inc.items():
                        pipe.hincrbyfloat(key, f, v)
                    pipe.expire(key, self.ttl_s)
                pipe.execute()
            return True

        if self.redis.call("set", write) is None:
            # These events count in this process's figures only (GET /v1/models says which).
            self.metrics.online_eval_errors.inc()

    def sums(self, keys: Iterable[str]) -> tuple[dict[str, dict[str, float]], str]:
        """The sums under ``keys`` and where they came from: ``"redis"`` (every replica's) or
        ``"process"`` (this process's: no Redis, or it did not answer)."""
        keys = list(keys)
        if self.redis is not None and keys:

            def read(client: redis.Redis) -> list:
                with client.pipeline(transaction=False) as pipe:
                    for k in keys:
                        pipe.hgetall(k)
                    return pipe.execute()

            shared = self.redis.call("get", read)
            if shared is not None:
                return {
                    k: {(f.decode() if isinstance(f, bytes) else f): float(v) for f, v in h.items()}
                    for k, h in zip(keys, shared, strict=True)
                }, "redis"
        with self._lock:
            return {k: dict(self._local.get(k, {})) for k in keys}, "process"

    def report(
        self,
        versions: Sequence[str],
        pair: tuple[str, str, str] | None,
        *,
        rating: str,
        confidence: float,
    ) -> tuple[dict[str, dict], dict | None, str]:
        """``(per-version summaries over their lifetime, the comparison of the trial ``pair``
        or None, source)``."""
        keys = [self.eval_key(v) for v in versions]
        if pair is not None:
            champion, challenger, trial = pair
            keys += [self.eval_key(champion, trial), self.eval_key(challenger, trial)]
            keys.append(self.compare_key(trial))
        sums, source = self.sums(keys)
        per_version = {v: summarize(sums[self.eval_key(v)]) for v in versions}
        comparison = None
        if pair is not None:
            a, b = sums[self.eval_key(champion, trial)], sums[self.eval_key(challenger, trial)]
            comparison = compare(
                a, b, sums[self.compare_key(trial)], rating=rating, confidence=confidence
            )
            comparison.update(
                champion=champion,
                challenger=challenger,
                trial=trial,
                challenger_events=int(b.get("all:n", 0.0)),
            )
        return per_version, comparison, source

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.log.close()
