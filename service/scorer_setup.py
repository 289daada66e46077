"""Building a scorer and what it shares with the process: the activation cache (in-process
LRU over the shared Redis tier), the online corrections of its model version and the Redis
tier itself. Used by the serving engine and the batch CLI alike (the persistent compilation
cache they share with the trainer is model/compilation_cache.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.cache import ActivationCache, LocalLRU, RedisTier
from service.corrections import OnlineCorrections, item_vocabulary, shrinkage_of
from service.metrics import Metrics
from service.scorer import Scorer
from service.settings import Settings
from service.warmup import warm_all

if TYPE_CHECKING:
    from model.artifact import Artifact


def activation_layout(artifact: Artifact) -> tuple[tuple[int, int], np.dtype]:
    """``((n_layers, d), storage dtype)`` of one text's cached activations (from the manifest)."""
    backbone = artifact.manifest["backbone"]
    shape = (int(backbone["n_layers"]), int(backbone["hidden_size"]))
    return shape, np.dtype(artifact.manifest.get("activation_dtype", "float32"))


def build_scorer(
    artifact: Artifact,
    settings: Settings,
    metrics: Metrics,
    *,
    redis: RedisTier | None,
    warm: bool = True,
    corrections: bool = False,
    cache: ActivationCache | None = None,
) -> Scorer:
    """A scorer over ``artifact`` with its activation cache (LRU + the shared Redis tier).

    Args:
        corrections: add the online corrections of this model version (shared through
            ``redis`` when given; ``service/corrections.py``) to its answers.
        cache: the activation cache of another version with the same backbone fingerprint,
            to share (default: a new one).
    """
    shape, dtype = activation_layout(artifact)
    if cache is None or cache.fingerprint != artifact.manifest["backbone"]["fingerprint"]:
        cache = ActivationCache(
            artifact.manifest["backbone"]["fingerprint"],
            shape,
            dtype,
            metrics,
            local=LocalLRU(settings.local_cache_size),
            remote=redis,
            key_prefix=settings.cache_key_prefix,
        )
    scorer = Scorer(
        artifact,
        cache,
        metrics,
        max_batch=settings.max_batch,
        projection_cache_size=settings.projection_cache_size,
    )
    if corrections:
        scorer.corrections = OnlineCorrections(
            scorer.model_version,
            shrinkage_of(artifact.manifest),
            scorer.rating_range,
            metrics,
            redis_tier=redis,
            ttl_s=settings.corrections_ttl_s,
            max_backlog=settings.corrections_backlog,
            key_prefix=settings.corrections_key_prefix,
            item_known=item_vocabulary(artifact.features),
            mirror_size=settings.corrections_mirror_size,
            dedup_s=settings.feedback_dedup_s,
        )
    if warm:
        warm_all(scorer)
    return scorer


def make_redis_tier(settings: Settings, metrics: Metrics) -> RedisTier | None:
    """The Redis tier of ``settings.redis_url`` (None without one)."""
    if not settings.redis_url:
        return None
    return RedisTier(
        settings.redis_url,
        metrics,
        ttl_s=settings.cache_ttl_s,
        timeout_s=settings.redis_timeout_s,
        backoff_s=settings.redis_backoff_s,
        backoff_max_s=settings.redis_backoff_max_s,
    )
