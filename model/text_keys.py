"""Keys of one text's activations: the same digest in the trainer's on-disk cache
(training/precompute.py) and the service's LRU and Redis (service/cache.py).

A text's activations depend on the backbone too: the on-disk cache keeps them under a
directory per backbone fingerprint, the service puts the fingerprint in the key.
"""

from __future__ import annotations

import hashlib


def text_digest(text: str) -> str:
    """SHA-256 of ``text``'s UTF-8 bytes, hex (64 characters)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def activation_key(prefix: str, fingerprint: str, text: str) -> str:
    """``<prefix>:<backbone fingerprint>:<text digest>``: the service's cache key (the prefix
    is the setting ``LEVI_CACHE_KEY_PREFIX``)."""
    return f"{prefix}:{fingerprint}:{text_digest(text)}"
