"""What the scorer is asked: pairs (:class:`ScoreInput`), each side's entity key, and where
each side's fields came from."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from service.entity_store import freeze
from service.results import SOURCE_CODE

NO_FIELDS: Mapping[str, Any] = MappingProxyType({})  # a pair side without fields (read-only)


class ScoreInput(NamedTuple):
    """One pair to rate (a named tuple: a ``/rank`` of 10,000 candidates builds 10,000 of
    them, about 4x faster than a frozen dataclass's).

    Attributes:
        user, item: the fields that override the model's tables: the request's, over the
            entity's catalog record when it has one (``service/catalog.py``). Never
            modified.
        user_from, item_from: where those fields came from: ``request`` (the request sent
            some), ``catalog`` (the catalog record alone), or "" (derived: ``request`` when
            there are fields).
    """

    user_id: str
    item_id: str
    user: Mapping[str, Any] = NO_FIELDS
    item: Mapping[str, Any] = NO_FIELDS
    user_from: str = ""
    item_from: str = ""


def sources(inputs: Sequence[ScoreInput], side: str, cold: np.ndarray) -> np.ndarray:
    """int8 ``[n]``: each pair's source of one side, as a position in
    :data:`service.results.SOURCES` (request > catalog > the model's tables > unknown)."""
    out = np.where(np.asarray(cold, bool), SOURCE_CODE["unknown"], SOURCE_CODE["model"])
    out = out.astype(np.int8)
    fields, origins = _USER if side == "user" else _ITEM
    # Most pairs name an entity without fields: only those with fields or an origin are
    # visited (the scan itself is C: ``map`` of an attribute getter).
    for j in _flagged(inputs, fields, origins):
        origin = origins(inputs[j])
        if origin == "catalog":
            out[j] = SOURCE_CODE["catalog"]
        elif origin == "request" or fields(inputs[j]):
            out[j] = SOURCE_CODE["request"]
    return out


_USER = (attrgetter("user"), attrgetter("user_from"))
_ITEM = (attrgetter("item"), attrgetter("item_from"))


def _flagged(inputs: Sequence[ScoreInput], fields: Callable, origins: Callable) -> list[int]:
    """Positions of the pairs whose side has fields or an origin (ascending)."""
    if not any(map(fields, inputs)) and not any(map(origins, inputs)):
        return []
    return [j for j, r in enumerate(inputs) if fields(r) or origins(r)]


def entity_keys(side: str, inputs: Sequence[ScoreInput]) -> list[tuple[str, tuple]]:
    """Each pair's ``(entity id, frozen request fields)`` on one side: what identifies the
    entity's projections and records."""
    ids, fields = (_USER_ID, _USER[0]) if side == "user" else (_ITEM_ID, _ITEM[0])
    if not any(map(fields, inputs)):  # no pair brings fields on this side (the usual case)
        return list(zip(map(ids, inputs), repeat(()), strict=False))
    return list(zip(map(ids, inputs), map(freeze, map(fields, inputs)), strict=True))


_USER_ID, _ITEM_ID = attrgetter("user_id"), attrgetter("item_id")
