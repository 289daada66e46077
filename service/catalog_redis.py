"""The catalog in Redis: shared by every replica, keyed by data set and entity id.

Keys (one hash tag per data set, so a cluster keeps them in one slot):

* ``<prefix>:{<dataset>}:records:<kind>``: hash, entity id -> the record's JSON
  (``model/catalog_format.py``), tombstones included;
* ``<prefix>:{<dataset>}:order:<kind>``: hash, entity id -> its order key (zero-padded version
  and writer), compared as strings inside the script;
* ``<prefix>:{<dataset>}:changes``: stream of applied writes, one entry per write call:
  ``n`` (a sequence number without gaps), ``k`` (the kind), ``r`` (a JSON array of records);
  trimmed to about ``STREAM_LENGTH`` entries;
* ``<prefix>:{<dataset>}:seq``: the last sequence number;
* ``<prefix>:{<dataset>}:epoch``: a random token set by the first write after the keys were
  created: a process that sees it change (or vanish) knows Redis lost what it held.

No model version is part of any key: records survive a retraining and a version change.
Writes go through one Lua script that keeps, per entity, only the newest record (so replays,
refills and concurrent writers never go back in time) and appends what it applied to the
stream. Every call goes through :class:`service.cache.RedisTier` (timeouts and back-off).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis

from model.catalog_format import KINDS, check_record
from service.cache import RedisTier
from service.catalog_mirror import Record

log = logging.getLogger(__name__)

# Every call must fit in LEVI_REDIS_TIMEOUT_S (0.1 s) even with long text fields (up to
# 20,000 characters each): writes go in chunks of at most WRITE_BYTES, a stream entry holds
# one chunk, and reads take a few entries or records per call.
STREAM_LENGTH = 100_000  # stream entries kept (about); a process further behind reloads all
WRITE_CHUNK = 1000  # records per script call, at most
WRITE_BYTES = 256 << 10  # bytes of records per script call, at most (one record at least)
SCAN_COUNT = 200  # records per HSCAN call of a full load (a hint to Redis)
READ_COUNT = 8  # stream entries per poll call

# KEYS: records hash, order hash, changes stream, seq, epoch.
# ARGV: stream length, kind, a new epoch token, then (id, order, record JSON) triples.
_WRITE = """
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[5], epoch)
end
local applied = {}
for i = 4, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  if (not old) or old < ARGV[i + 1] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    applied[#applied + 1] = ARGV[i + 2]
  end
end
if #applied > 0 then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'n', seq, 'k', ARGV[2],
             'r', '[' .. table.concat(applied, ',') .. ']')
end
return {#applied, epoch}
"""


def order_text(record: Record) -> str:
    """A string that sorts as ``record.order`` does (versions are below 10**20)."""
    return f"{record.version:020d}:{record.writer}"


def _chunks(rows: list[tuple[Record, bytes]]) -> list[list[tuple[Record, bytes]]]:
    """``rows`` in chunks of at most ``WRITE_CHUNK`` records and ``WRITE_BYTES`` bytes."""
    out: list[list[tuple[Record, bytes]]] = []
    size = 0
    for row in rows:
        if not out or len(out[-1]) >= WRITE_CHUNK or size + len(row[1]) > WRITE_BYTES:
            out.append([])
            size = 0
        out[-1].append(row)
        size += len(row[1])
    return out


def _tag(dataset: str) -> str:
    return re.sub(r"[{}\s]", "_", dataset) or "_"


@dataclass(frozen=True)
class Position:
    """Where a process is in the change stream: the last entry id and sequence number read,
    and the epoch they belong to."""

    entry: str
    seq: int
    epoch: str | None


@dataclass(frozen=True)
class Changes:
    """What a poll read: records (in order), the new position, and whether the stream can no
    longer be followed (``lost``: Redis lost its data, or entries were trimmed before they
    were read) so the caller must reload everything."""

    records: list[Record]
    position: Position
    lost: bool = False
    more: bool = False


class CatalogRedis:
    """One data set's catalog keys in Redis.

    Args:
        tier: the process's Redis tier (time-boxed calls, back-off).
        prefix: ``LEVI_CATALOG_KEY_PREFIX``.
        dataset: the served model's data set name.
    """

    def __init__(self, tier: RedisTier, prefix: str, dataset: str):
        self.tier = tier
        self.dataset = dataset
        base = f"{prefix}:{{{_tag(dataset)}}}"
        self.records_key = {k: f"{base}:records:{k}" for k in KINDS}
        self.order_key = {k: f"{base}:order:{k}" for k in KINDS}
        self.stream_key = f"{base}:changes"
        self.seq_key = f"{base}:seq"
        self.epoch_key = f"{base}:epoch"
        self._script = tier.client.register_script(_WRITE)

    @property
    def available(self) -> bool:
        return self.tier.available

    def write(self, records: Sequence[Record]) -> bool:
        """Write ``records`` (each entity keeps its newest); False when Redis did not answer
        (some chunks may have been written: writing them again changes nothing)."""
        by_kind: dict[str, list[Record]] = {}
        for r in records:
            by_kind.setdefault(r.kind, []).append(r)
        for kind, rows in by_kind.items():
            for chunk in _chunks([(r, orjson.dumps(r.to_json(self.dataset))) for r in rows]):
                args: list = [STREAM_LENGTH, kind, os.urandom(8).hex()]
                for r, doc in chunk:
                    args += [r.id, order_text(r), doc]
                keys = [
                    self.records_key[kind],
                    self.order_key[kind],
                    self.stream_key,
                    self.seq_key,
                    self.epoch_key,
                ]
                done = self.tier.call(
                    "catalog_write",
                    lambda client, keys=keys, args=args: self._script(
                        keys=keys, args=args, client=client
                    ),
                )
                if done is None:
                    return False
        return True

    def position(self) -> Position | None:
        """The stream's end now (None when Redis did not answer). Sets the epoch token when
        there is none yet, so that a token gone later always means Redis lost its data."""

        def read(client: redis.Redis) -> list:
            with client.pipeline(transaction=True) as pipe:
                pipe.set(self.epoch_key, os.urandom(8).hex(), nx=True)
                pipe.xrevrange(self.stream_key, count=1)
                pipe.get(self.seq_key)
                pipe.get(self.epoch_key)
                return pipe.execute()

        got = self.tier.call("catalog_sync", read)
        if got is None:
            return None
        _, last, seq, epoch = got
        entry = last[0][0].decode() if last else "0-0"
        return Position(entry, int(seq or 0), epoch.decode() if epoch else None)

    def load_all(self) -> list[Record] | None:
        """Every record in Redis (None when Redis did not answer before the end)."""
        out: list[Record] = []
        for kind in KINDS:
            cursor = 0
            while True:

                def scan(client: redis.Redis, cursor=cursor, kind=kind):
                    return client.hscan(self.records_key[kind], cursor, count=SCAN_COUNT)

                got = self.tier.call("catalog_load", scan)
                if got is None:
                    return None
                cursor, values = got
                out += self._decode(values.values(), f"Redis {self.records_key[kind]}")
                if not cursor:
                    break
        return out

    def poll(self, position: Position) -> Changes | None:
        """Records written since ``position`` (None when Redis did not answer)."""

        def read(client: redis.Redis) -> list:
            with client.pipeline(transaction=True) as pipe:
                pipe.get(self.epoch_key)
                pipe.xread({self.stream_key: position.entry}, count=READ_COUNT)
                return pipe.execute()

        got = self.tier.call("catalog_sync", read)
        if got is None:
            return None
        epoch_raw, streams = got
        epoch = epoch_raw.decode() if epoch_raw else None
        if epoch is None or epoch != position.epoch:
            return Changes([], position, lost=True)
        entries = streams[0][1] if streams else []
        records: list[Record] = []
        entry, seq = position.entry, position.seq
        for entry_id, values in entries:
            n = int(values[b"n"])
            if n != seq + 1:  # trimmed before this process read it
                return Changes([], position, lost=True)
            records += self._decode(orjson.loads(values[b"r"]), f"Redis {self.stream_key}")
            entry, seq = entry_id.decode(), n
        return Changes(records, Position(entry, seq, epoch), more=len(entries) == READ_COUNT)

    def _decode(self, values, where: str) -> list[Record]:
        """Records of this data set among JSON ``values`` (others are skipped with a warning:
        they are not ours)."""
        out = []
        for raw in values:
            try:
                doc = orjson.loads(raw) if isinstance(raw, bytes | str) else raw
                record = check_record(doc, where)
            except ValueError as e:
                log.warning("catalog: a record in %s was left out: %s", where, e)
                continue
            if record["dataset"] == self.dataset:
                out.append(Record.from_json(record))
        return out
