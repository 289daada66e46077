"""The prediction log's pairs in process: numpy columns of slots in write order.

A pair's predictions live in one slot: when it was last written, and per model version its
model rating, served rating and two flags (cold-start item, OOD). Slots are handed out in
write order, so the least recently written pair is the oldest slot in use, the first out
past ``max_pairs``; rewriting a pair moves it (with its other versions' predictions, when
they are still within ``ttl_s``) to the newest slot, and refreshes its time.

Per pair this holds one dict entry (its key: the hash of ``(user_id, item_id)``, 64 bits,
randomized per process) and two slots' worth of columns (17 bytes, and 9 per version a fresh
pair holds): 167 bytes with two versions (measured with tracemalloc), against 627 for the
dict of named tuples per pair it replaced: 16 instead of 60 MiB per replica at the default
100,000 pairs (docs/PROFILING.md, issue 27). Two distinct pairs share a key with probability
about ``n**2 / 2**65`` (3e-10 at 100,000 pairs).

Not thread-safe: the prediction log holds its lock around every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

PRESENT, COLD_ITEM, OOD_HIGH = 1, 2, 4  # bits of a version's flags in a slot


class Prediction(NamedTuple):
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


class _Version:
    """One version's column: float32 ratings and uint8 flags per slot (dropped at a
    compaction once no fresh pair holds a prediction of it)."""

    __slots__ = ("model_rating", "rating", "flags")

    def __init__(self, capacity: int):
        self.model_rating = np.zeros(capacity, np.float32)
        self.rating = np.zeros(capacity, np.float32)
        self.flags = np.zeros(capacity, np.uint8)


class PredictionStore:
    """Every version's latest prediction per ``(user_id, item_id)`` pair, in process.

    Args:
        max_pairs: pairs kept (the least recently written goes first).
        ttl_s: a pair written longer ago than this reads as never predicted.
    """

    def __init__(self, max_pairs: int, ttl_s: float):
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.capacity = int(max_pairs)
        self.ttl_s = float(ttl_s)
        # Slots in write order: [tail, head) holds every pair, with holes where a pair was
        # rewritten (it moved to the head); twice the pairs, so that a compaction (every
        # pair moved to the front, in order) comes at most once per max_pairs writes.
        self._size = 2 * self.capacity
        self._slot: dict[int, int] = {}  # key -> slot
        self._key = np.zeros(self._size, np.int64)  # slot -> key of its pair
        self._used = np.zeros(self._size, bool)  # slot holds a pair (its key maps to it)
        self._written_at = np.zeros(self._size, np.float64)  # time.monotonic() seconds
        self._versions: dict[str, _Version] = {}
        self._head = 0  # the next slot handed out
        self._tail = 0  # no pair below it

    def __len__(self) -> int:
        return len(self._slot)

    @staticmethod
    def keys(users: Sequence[str], items: Sequence[str]) -> list[int]:
        """The store's keys of the pairs ``zip(users, items)``."""
        return list(map(hash, zip(users, items, strict=True)))

    def put(
        self,
        version: str,
        keys: Sequence[int],
        model_rating: np.ndarray,
        rating: np.ndarray,
        cold_item: np.ndarray,
        ood_high: np.ndarray,
        now: float,
    ) -> None:
        """Write ``version``'s predictions of the pairs ``keys`` (:meth:`keys`) at time
        ``now``; of a pair given twice, the last one counts. Arrays are ``[len(keys)]``."""
        if not len(keys):
            return
        # A pair given twice: its last prediction, written in that one's place in the order.
        last = {k: j for j, k in enumerate(keys)}
        rows = np.sort(np.fromiter(last.values(), np.int64, len(last)))
        unique = [keys[j] for j in rows.tolist()]
        col = self._versions.get(version)
        if col is None:
            col = self._versions[version] = _Version(self._size)
        flags = (
            PRESENT
            | np.where(np.asarray(cold_item)[rows], COLD_ITEM, 0)
            | np.where(np.asarray(ood_high)[rows], OOD_HIGH, 0)
        ).astype(np.uint8)
        values = (np.asarray(model_rating, np.float32)[rows], np.asarray(rating, np.float32)[rows])
        for start in range(0, len(unique), self.capacity):  # at most max_pairs at a time
            chunk = slice(start, start + self.capacity)
            self._put_chunk(
                col, unique[chunk], values[0][chunk], values[1][chunk], flags[chunk], now
            )

    def _put_chunk(
        self,
        col: _Version,
        keys: list[int],
        model_rating: np.ndarray,
        rating: np.ndarray,
        flags: np.ndarray,
        now: float,
    ) -> None:
        n, slot = len(keys), self._slot
        old = np.fromiter((slot.get(k, -1) for k in keys), np.int64, n)
        had = old >= 0
        # The pairs already here and still fresh keep their other versions' predictions.
        fresh = had.copy()
        fresh[had] = now - self._written_at[old[had]] < self.ttl_s
        kept = old[fresh]
        carried = {
            name: (v.model_rating[kept], v.rating[kept], v.flags[kept])
            for name, v in self._versions.items()
        }
        self._used[old[had]] = False  # a pair rewritten leaves its slot
        compacted = self._head + n > self._size
        if compacted:
            self._compact()
        new = np.arange(self._head, self._head + n)
        self._head += n
        slot.update(zip(keys, new.tolist(), strict=True))
        self._key[new] = keys
        self._used[new] = True
        self._written_at[new] = now
        for name, v in self._versions.items():
            v.flags[new] = 0
            m, r, f = carried[name]
            v.model_rating[new[fresh]], v.rating[new[fresh]], v.flags[new[fresh]] = m, r, f
        col.model_rating[new] = model_rating
        col.rating[new] = rating
        col.flags[new] = flags
        self._evict(len(slot) - self.capacity)
        if compacted:  # at most once per max_pairs pairs written
            self._drop_expired_versions(now)

    def _compact(self) -> None:
        """Move every pair to the front, in write order (its slot's data with it)."""
        live = np.flatnonzero(self._used[self._tail : self._head]) + self._tail
        m = len(live)
        arrays = [self._key, self._written_at]
        for v in self._versions.values():
            arrays += [v.model_rating, v.rating, v.flags]
        for a in arrays:
            a[:m] = a[live]
        self._used[:m] = True
        self._used[m : self._head] = False
        self._slot.update(zip(self._key[:m].tolist(), range(m), strict=True))
        self._head, self._tail = m, 0

    def _drop_expired_versions(self, now: float) -> None:
        """Drop the columns of versions no fresh pair holds a prediction of."""
        at = np.flatnonzero(self._used[self._tail : self._head]) + self._tail
        fresh = at[now - self._written_at[at] < self.ttl_s]
        for name, v in list(self._versions.items()):
            if not (v.flags[fresh] & PRESENT).any():
                del self._versions[name]

    def _evict(self, excess: int) -> None:
        """Drop the ``excess`` least recently written pairs."""
        if excess <= 0:
            return
        # The oldest slots in use, from the tail: a window that grows until it holds enough
        # (one evicted pair per written one scans a few slots, not the whole array).
        window = max(64, 2 * excess)
        while True:
            stop = min(self._tail + window, self._head)
            found = np.flatnonzero(self._used[self._tail : stop])
            if len(found) >= excess or stop == self._head:
                break
            window *= 4
        victims = found[:excess] + self._tail
        for k in self._key[victims].tolist():
            del self._slot[k]
        self._used[victims] = False
        self._tail = int(victims[-1]) + 1

    def get(self, keys: Sequence[int], now: float) -> list[dict[str, Prediction]]:
        """Every version's prediction of each pair (``{}``: never predicted, replaced or
        older than ``ttl_s``)."""
        out: list[dict[str, Prediction]] = [{} for _ in keys]
        slot = self._slot
        found = [(j, s) for j, s in enumerate(map(slot.get, keys)) if s is not None]
        if not found:
            return out
        at = np.fromiter((s for _, s in found), np.int64, len(found))
        fresh = now - self._written_at[at] < self.ttl_s
        for name, v in self._versions.items():
            flags = v.flags[at].tolist()
            model, served = v.model_rating[at].tolist(), v.rating[at].tolist()
            rows = zip(found, fresh.tolist(), flags, model, served, strict=True)
            for (j, _), ok, f, m, r in rows:
                if ok and f & PRESENT:
                    out[j][name] = Prediction(m, r, bool(f & COLD_ITEM), bool(f & OOD_HIGH))
        return out
