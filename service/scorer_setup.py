"""Building a scorer and what it shares with the process: the activation cache (in-process
LRU over the shared Redis tier), the online corrections of its model version, the Redis tier
itself, and the persistent XLA compilation cache. Used by the serving engine and the batch
CLI alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
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

log = logging.getLogger(__name__)


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


def enable_compilation_cache(directory: Path) -> bool:
    """Keep compiled XLA executables on disk, so a restart or new replica warms up fast.

    Returns:
        False (with a warning: the service compiles as without a cache) when the directory
        cannot be created or written, e.g. on a read-only filesystem.
    """
    import jax

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        log.warning(
            "compilation cache off: %s is not writable (%s); set LEVI_COMPILATION_CACHE_DIR "
            "to a writable directory, or LEVI_COMPILATION_CACHE=0 to silence this",
            directory,
            e,
        )
        return False
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


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
