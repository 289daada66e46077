"""Held-out pairs scored through an exported artifact with the run's own activations.

The export stage's figures (:func:`exported_figures`: the exported model's ID test and OOD
RMSE over every held-out pair) and its check's head part (``training.export_check``) read the
artifact's entity tables, vocabularies and exported functions, and the pooled activations the
run already has (``prep.activations``): no text is encoded here. Where the artifact exports
the first-layer decomposition (factored views), :func:`decomposed_ratings` scores as the
service does, in blocks of entities; else :func:`head_ratings` runs the whole head. Every
exported call is :data:`CHUNK` rows (the last padded): one compiled shape per function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from model.batching import pad_rows
from model.features import entity_record
from training import evaluate

if TYPE_CHECKING:
    from model.artifact import Artifact
    from training.prepare import Prepared

# Pairs (and entities) per exported call, the last chunk padded (one compiled shape): at
# 4,096 the call's inputs and XLA's temporaries added about 300 MB (MiniLM, two views) to the
# run's peak; 1,024 costs no speed.
CHUNK = 1024
# Entities of one side whose decomposition parts are held at once in decomposed_ratings
# (8.4 KB each with MiniLM's six adapters: 69 MB).
OUTER_BLOCK = 8192
_SIDES = ("user", "item")
_KEYS = {"user": "user_id", "item": "item_id"}


class ExportMismatch(RuntimeError):
    """The exported artifact does not compute what the live parameters compute."""


@dataclass(frozen=True)
class EntityInputs:
    """The artifact's entity tables as head inputs, aligned with the run's entities.

    Attributes:
        rows: side -> int ``[n_run_entities]``: each run entity's row in the artifact's table.
        ids: side -> int32 ``[n_artifact_entities, F_side]`` from the artifact's vocabularies.
        multi_hot: side -> float32 ``[n_artifact_entities, G_side]``.
    """

    rows: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    multi_hot: dict[str, np.ndarray]

    def pair_features(self, user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``ids [n, F]`` and ``multi_hot [n, G]`` of pairs given as run entity rows."""
        u, i = self.rows["user"][user], self.rows["item"][item]
        return (
            np.concatenate([self.ids["user"][u], self.ids["item"][i]], axis=1),
            np.concatenate([self.multi_hot["user"][u], self.multi_hot["item"][i]], axis=1),
        )


def entity_inputs(art: Artifact, prep: Prepared) -> EntityInputs:
    """:class:`EntityInputs` of ``art`` for the run ``prep`` (each table read once).

    Raises:
        ExportMismatch: an entity of the run is missing from the artifact's table.
    """
    rows, ids, multi_hot = {}, {}, {}
    for side, table, own in (("user", art.users, prep.users), ("item", art.items, prep.items)):
        key = _KEYS[side]
        rows[side] = _table_rows(table.column(key).to_pylist(), key, own[key])
        records = artifact_records(table)  # a dict per entity: not kept
        ids[side] = art.features.encode_entity(side, records)
        multi_hot[side] = art.features.encode_multi_hot(side, records)
    return EntityInputs(rows, ids, multi_hot)


def artifact_records(table: pa.Table, rows: np.ndarray | None = None) -> list[dict]:
    """Rows (all, or ``rows``) of an artifact's entity table as the service reads them
    (``model.features.entity_record`` of each Arrow row)."""
    if rows is not None:
        table = table.take(np.asarray(rows, np.int64))
    return [entity_record(record) for record in table.to_pylist()]


def _run_views(prep: Prepared, rows: np.ndarray, views: list[int]) -> np.ndarray:
    """float32 ``[len(rows), len(views), n_layers, d]``: the run's activations of pair
    ``rows`` in ``views`` (one copy)."""
    acts = prep.activations
    first = acts.matrices[views[0]] if views else acts.matrices[0]
    out = np.empty((len(rows), len(views), *first.shape[1:]), np.float32)
    for j, v in enumerate(views):
        out[:, j] = acts.matrices[v][acts.index[rows, v]]
    return out


def head_ratings(
    art: Artifact, prep: Prepared, entities: EntityInputs, rows: np.ndarray
) -> np.ndarray:
    """float32 ``[len(rows)]``: pair ``rows`` through the exported head, features from the
    artifact's tables, activations from the run, in chunks of :data:`CHUNK` (the last padded)."""
    views = list(range(len(prep.activations.matrices)))
    out = []
    for s in range(0, len(rows), CHUNK):
        chunk = rows[s : s + CHUNK]
        ids, multi_hot = entities.pair_features(
            prep.tables.pair_user[chunk], prep.tables.pair_item[chunk]
        )
        inputs = (ids, multi_hot, _run_views(prep, chunk, views))
        out.append(art.score(*(pad_rows(x, CHUNK) for x in inputs))[1][: len(chunk)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def decomposed_ratings(
    art: Artifact, prep: Prepared, entities: EntityInputs, rows: np.ndarray
) -> np.ndarray:
    """float32 ``[len(rows)]``: pair ``rows`` through the exported side functions and pair
    function, as the service scores them.

    Pairs are grouped by the entity of the side with fewer distinct entities among ``rows``
    ("outer"), :data:`OUTER_BLOCK` of them at a time whose parts are computed once (about
    8.4 KB an entity with MiniLM's six adapters: 69 MB a block); a block's pairs, sorted by the
    other side's entity, go in blocks of :data:`CHUNK` of that side's entities, whose parts
    live for their block only. An entity of the other side is computed once per outer block
    that rates it: once in all where the outer side fits one block. Every call is
    :data:`CHUNK` rows (the last padded).
    """
    rows = np.asarray(rows)
    out = np.empty(len(rows), np.float32)
    at_row = np.zeros(len(rows), np.int64)  # each pair's row in its outer block's parts
    entity = {side: getattr(prep.tables, f"pair_{side}")[rows] for side in _SIDES}
    outer = min(_SIDES, key=lambda side: len(np.unique(entity[side])))
    inner = "item" if outer == "user" else "user"
    for block in _entity_blocks(entity[outer], np.arange(len(rows)), OUTER_BLOCK):
        table, at = _side_parts(art, prep, entities, outer, rows[block], entity[outer][block])
        at_row[block] = at
        for part in _entity_blocks(entity[inner][block], block, CHUNK):
            parts, where = _side_parts(art, prep, entities, inner, rows[part], entity[inner][part])
            for s in range(0, len(part), CHUNK):
                pick = part[s : s + CHUNK]
                mine = {k: pad_rows(v[where[s : s + CHUNK]], CHUNK) for k, v in parts.items()}
                other = {k: pad_rows(v[at_row[pick]], CHUNK) for k, v in table.items()}
                user, item = (mine, other) if inner == "user" else (other, mine)
                out[pick] = art.pair(user, item)[1][: len(pick)]
    return out


def _entity_blocks(entity: np.ndarray, positions: np.ndarray, size: int):
    """``positions`` (aligned with ``entity``) sorted by entity, in runs of ``size`` distinct
    entities."""
    order = np.argsort(entity, kind="stable")
    ordered = entity[order]
    firsts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else []
    for b in range(0, len(firsts), size):
        stop = firsts[b + size] if b + size < len(firsts) else len(order)
        yield positions[order[firsts[b] : stop]]


def _side_parts(
    art: Artifact,
    prep: Prepared,
    entities: EntityInputs,
    side: str,
    rows: np.ndarray,
    entity: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One side's parts (``Artifact.side``: ``mlp [u, M]``, ``adapters [u, A, H]``, ``bias
    [u]``, ``factors [u, k]``) of the ``u`` distinct ``entity`` (run entity rows of pair
    ``rows``), and each pair's row in them, int ``[len(rows)]``."""
    distinct, first, inverse = np.unique(entity, return_index=True, return_inverse=True)
    at = entities.rows[side][distinct]
    ids, multi_hot = entities.ids[side][at], entities.multi_hot[side][at]
    views = [v for v, s in enumerate(art.layout.view_sides) if s == side]
    chunks = []
    for s in range(0, len(distinct), CHUNK):
        acts = _run_views(prep, rows[first[s : s + CHUNK]], views)  # [chunk, V_side, L, d]
        inputs = (ids[s : s + CHUNK], multi_hot[s : s + CHUNK], acts)
        got = art.side(side, *(pad_rows(x, CHUNK) for x in inputs))
        chunks.append({k: v[: len(acts)] for k, v in got.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, inverse


def exported_figures(
    art: Artifact, prep: Prepared, entities: EntityInputs | None = None
) -> dict[str, float]:
    """ID test and OOD RMSE of the exported model over every held-out pair.

    Features come from the artifact's vocabularies and entity tables (one encode per entity),
    activations from the run's own pooled tables (``prep.activations``), the ratings from the
    exported first-layer decomposition where the artifact has one (what the service scores
    with: :func:`decomposed_ratings`, about a third of the whole head's FLOPs on a catalog
    with several ratings per entity), else from the exported head (:func:`head_ratings`).
    """
    entities = entities or entity_inputs(art, prep)
    ratings_of = decomposed_ratings if art.decomposed else head_ratings
    out = {}
    for part, key in (("test", "id_test_rmse"), ("ood", "ood_rmse")):
        rows = prep.rows[part]
        if not len(rows):
            out[key] = float("nan")
            continue
        ratings = ratings_of(art, prep, entities, rows)
        out[key] = evaluate.rmse(ratings, prep.tables.rating[rows])
    return out


def _table_rows(table_ids: list, key: str, ids: pd.Series) -> np.ndarray:
    """Row of each of ``ids`` among the artifact table's ids ``table_ids``.

    Raises:
        ExportMismatch: an entity of the run is missing from the artifact's table.
    """
    rows = pd.Index([str(i) for i in table_ids]).get_indexer(ids.astype(str))
    if (rows < 0).any():
        missing = ids[rows < 0].iloc[:3].tolist()
        raise ExportMismatch(
            f"the artifact's {key[:-3]} table lacks {int((rows < 0).sum())} entities of the run, "
            f"e.g. {missing}"
        )
    return rows
