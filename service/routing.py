"""Which version answers a user: sticky canary buckets, and the user clusters of the online
comparison's confidence intervals.

Both are a keyed hash of the user id (BLAKE2b, 64 bits), so they are the same on every
replica and worker, in every process start, with no shared state: a user keeps one version
for as long as the canary share stays, and two replicas agree. The two hashes use different
keys, so the clusters cut across the canary split (each cluster holds canary and non-canary
users alike).
"""

from __future__ import annotations

import hashlib

N_CLUSTERS = 64  # user clusters of the cluster-robust intervals (service/online_eval.py)
_CANARY_KEY = b"levi-canary"
_CLUSTER_KEY = b"levi-cluster"


def _hash64(user_id: str, key: bytes) -> int:
    digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8, key=key)
    return int.from_bytes(digest.digest(), "big")


def canary_position(user_id: str) -> float:
    """The user's place in ``[0, 1)``: the user is in a canary of share ``s`` when it is below
    ``s`` (so growing the share keeps everyone who was already in)."""
    return _hash64(user_id, _CANARY_KEY) / 2.0**64


def in_canary(user_id: str, share: float) -> bool:
    """Whether ``user_id`` is answered by the challenger at canary share ``share`` (0-1)."""
    return share > 0.0 and canary_position(user_id) < share


def cluster_of(user_id: str) -> int:
    """The user's cluster, ``0 .. N_CLUSTERS - 1`` (independent of the canary position)."""
    return _hash64(user_id, _CLUSTER_KEY) % N_CLUSTERS
