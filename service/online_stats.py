"""The statistics of the online evaluation, as pure functions of additive sums.

Per version and slice (all; cold-start vs known items; ``ood_score`` above vs at-or-below its
training median): counts and sums of squared and absolute errors, of the served (corrected)
rating and the model's own (:func:`error_increments`). Per trial (a challenger against a
champion): on the pairs both predicted, the difference of squared errors
``d = e_challenger^2 - e_champion^2`` (:func:`paired_increments`). Both also per user cluster
(:func:`service.routing.cluster_of`, 64 clusters), for the intervals. Sums are additive, so
they are kept in Redis hashes (``HINCRBYFLOAT``) and in process alike
(``service/online_eval.py``).

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

import math
from collections.abc import Sequence

import numpy as np

from service.prediction_store import Prediction
from service.routing import N_CLUSTERS, cluster_of

SLICES = ("all", "cold_item", "known_item", "ood_high", "ood_low")
RATINGS = ("served", "model")  # the answer (with online corrections), the model alone
MIN_CLUSTERS = 8  # fewer non-empty clusters: no interval (too few independent groups)


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


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def _beta_inc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``, 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``dof`` degrees of freedom:
    ``t`` with ``P(|T| <= t) = confidence`` (scipy's ``t.ppf(0.5 + confidence / 2, dof)``).

    ``P(|T| > t) = I_{dof / (dof + t^2)}(dof / 2, 1 / 2)`` falls with ``t``: bracketed, then
    bisected to double precision (a few milliseconds; computed once per look)."""
    if dof < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(
            f"t_quantile needs dof >= 1 and 0 < confidence < 1, not {dof}, {confidence}"
        )
    tail = 1.0 - confidence
    a = dof / 2.0

    def two_sided_tail(t: float) -> float:
        return _beta_inc(a, 0.5, dof / (dof + t * t))

    lo, hi = 0.0, 1.0
    while two_sided_tail(hi) > tail:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if two_sided_tail(mid) > tail:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


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
        half = t_quantile(confidence, used - 1) * math.sqrt(var)
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
