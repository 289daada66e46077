"""Two-tier activation cache: an in-process LRU, then Redis shared by every replica.

Key ``levi:act:<backbone fingerprint>:<sha256 of text>``; value the raw bytes of the pooled
activations ``[n_layers, d]`` in the dtype the artifact fixes. A new backbone has a new
fingerprint, so it never reads stale activations.

Redis is an optimisation, never a dependency: every call is time-boxed by socket timeouts;
after a failure Redis is skipped for a back-off period that doubles up to a maximum, then
tried again (redis-py reconnects by itself); meanwhile misses are computed locally.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import redis

from model.text_keys import activation_key
from service.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class LocalLRU:
    """A thread-safe LRU of arrays keyed by cache key."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        with self._lock:
            for k in keys:
                v = self._data.get(k)
                if v is not None:
                    self._data.move_to_end(k)
                    found[k] = v
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            for k, v in items.items():
                self._data[k] = v
                self._data.move_to_end(k)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)


class RedisTier:
    """Redis access with time-boxed calls and circuit-breaker back-off.

    Shared by every model the process serves (keys carry the backbone fingerprint).

    Args:
        url: ``redis://host:port/db``.
        ttl_s: expiry of written activations.
        timeout_s: socket connect/read/write timeout of every call.
        backoff_s, backoff_max_s: pause after the first error, doubled per further error.
    """

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        ttl_s: int,
        timeout_s: float,
        backoff_s: float,
        backoff_max_s: float,
    ):
        self.url = url
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            retry=None,
            health_check_interval=0,
        )
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0  # monotonic time before which Redis is skipped
        metrics.redis_up.set(1)

    @property
    def available(self) -> bool:
        """False while backing off after an error."""
        return time.monotonic() >= self._open_until

    def _ok(self) -> None:
        if self._failures:
            log.info("Redis at %s is answering again", self.url)
        with self._lock:
            self._failures = 0
            self._open_until = 0.0
        self.metrics.redis_up.set(1)

    def _failed(self, op: str, error: Exception) -> None:
        self.metrics.cache_errors.labels(op=op).inc()
        with self._lock:
            pause = min(self.backoff_s * 2**self._failures, self.backoff_max_s)
            self._failures += 1
            self._open_until = time.monotonic() + pause
        self.metrics.redis_up.set(0)
        log.warning(
            "Redis %s at %s failed (%s: %s); computing locally, retrying in %.2fs",
            op,
            self.url,
            type(error).__name__,
            error,
            pause,
        )
        # Drop pooled sockets so the next try opens a fresh connection.
        with contextlib.suppress(Exception):  # best effort on a broken pool
            self.client.connection_pool.disconnect()

    def call(self, op: str, fn: Callable[[redis.Redis], T]) -> T | None:
        """``fn(client)`` time-boxed and behind the back-off; None when Redis is unavailable
        or the call failed (counted in ``levi_activation_cache_errors_total{op}``, then
        backing off).

        ``fn`` must not return None itself (None means "no answer from Redis").
        """
        if not self.available:
            return None
        try:
            value = fn(self.client)
        except (redis.RedisError, OSError) as e:
            self._failed(op, e)
            return None
        self._ok()
        return value

    def mget(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """Values of ``keys`` (None per missing key), or None when Redis is unavailable."""
        if not keys:
            return []
        return self.call("get", lambda client: client.mget(keys))

    def set_many(self, items: Mapping[str, bytes]) -> bool:
        """Write ``items`` with the TTL in one pipelined round trip; False if it failed."""
        if not items:
            return False

        def write(client: redis.Redis) -> bool:
            with client.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(k, v, ex=self.ttl_s)
                pipe.execute()
            return True

        return bool(self.call("set", write))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class ActivationCache:
    """Activations of texts under one backbone: LRU first, then Redis.

    Args:
        fingerprint: the backbone fingerprint (part of every key).
        shape: ``(n_layers, d)`` of one text's activations.
        dtype: storage dtype in Redis (float16 halves traffic; answers are float32).
        local: the in-process tier.
        remote: the Redis tier, or None for in-process only.
        key_prefix: the Redis key prefix (``LEVI_CACHE_KEY_PREFIX``).
    """

    def __init__(
        self,
        fingerprint: str,
        shape: tuple[int, int],
        dtype: np.dtype | str,
        metrics: Metrics,
        *,
        local: LocalLRU,
        remote: RedisTier | None = None,
        key_prefix: str,
    ):
        self.fingerprint = fingerprint
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.metrics = metrics
        self.local = local
        self.remote = remote
        self.key_prefix = key_prefix
        self._local_hit = metrics.cache_lookups.labels(tier="local", result="hit")
        self._local_miss = metrics.cache_lookups.labels(tier="local", result="miss")
        self._redis = {
            r: metrics.cache_lookups.labels(tier="redis", result=r)
            for r in ("hit", "miss", "error", "bypass")
        }

    def key(self, text: str) -> str:
        return activation_key(self.key_prefix, self.fingerprint, text)

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached float32 ``[n_layers, d]`` activations of the keys found in either tier."""
        found = self.local.get_many(keys)
        self._local_hit.inc(len(found))
        missing = [k for k in keys if k not in found]
        self._local_miss.inc(len(missing))
        if not missing or self.remote is None:
            return found
        if not self.remote.available:
            self._redis["bypass"].inc(len(missing))
            return found
        values = self.remote.mget(missing)
        if values is None:
            self._redis["error"].inc(len(missing))
            return found
        promoted = {}
        for k, raw in zip(missing, values, strict=True):
            if raw is None or len(raw) != self.nbytes:  # absent, or written by another layout
                continue
            value = np.frombuffer(raw, dtype=self.dtype).reshape(self.shape)
            promoted[k] = value.astype(np.float32)
        self._redis["hit"].inc(len(promoted))
        self._redis["miss"].inc(len(missing) - len(promoted))
        self.local.put_many(promoted)
        found.update(promoted)
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Store freshly computed activations in both tiers.

        Returns:
            The float32 values as stored (rounded through the storage dtype), so an answer
            is the same whichever tier its activations later come from.
        """
        stored = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in items.items()}
        as_f32 = {k: v.astype(np.float32) for k, v in stored.items()}
        self.local.put_many(as_f32)
        if self.remote is not None:
            self.remote.set_many({k: v.tobytes() for k, v in stored.items()})
        return as_f32
