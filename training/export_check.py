"""The export stage's check of the artifact it wrote, loaded as a service loads it.

* :func:`check_exported`: a fixed sample of held-out pairs scored end to end through the
  artifact (texts rendered with its views from its entity tables, tokenized by its tokenizer,
  encoded by its exported backbone in the manifest's length buckets, features from its
  vocabularies, its exported head) must give the ratings of the live parameters on the same
  pairs. :data:`CHECK_PAIRS` pairs: a mismatch that touches a share ``f`` of the pairs (one
  feature column, some entities' tables, a template, a layer order) escapes a uniform sample
  of ``n`` pairs with probability ``(1 - f) ** n``: below 1e-4 for ``f`` = 0.5% at n = 2,048,
  while encoding at most 2 x 2,048 texts costs seconds, not the full re-encode of every text.
* :func:`exported_figures`: the exported model's ID test and OOD RMSE over every held-out
  pair, through its exported head, its vocabularies and entity tables, with the pooled
  activations the run already has (the backbone half of the path is what the sample checks).
  Streamed in chunks of :data:`CHUNK` pairs: no per-pair copy of activations or features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from model.batching import encode_texts
from training import evaluate

if TYPE_CHECKING:
    from model.artifact import Artifact
    from training.prepare import Prepared

CHECK_PAIRS = 2048
# Rating units. The live path reads the float16 activation cache, the exported one encodes
# in float32: ratings differ by about 1e-3 or less; a wrong table, template or layer order
# moves them by tenths.
TOLERANCE = 0.02
# Pairs per exported-head call in exported_figures: at 4,096 the call's inputs and XLA's
# temporaries added about 300 MB (MiniLM, two views) to the run's peak; 1,024 costs no speed.
CHUNK = 1024


class ExportMismatch(RuntimeError):
    """The exported artifact does not compute what the live parameters compute."""


@dataclass(frozen=True)
class ExportCheck:
    """What :func:`check_exported` compared.

    Attributes:
        pairs: pairs scored end to end (ID test and OOD; ``by_part`` splits them).
        texts: distinct texts the exported backbone encoded for them.
        max_abs_diff, rms_diff: exported minus live ratings, rating units.
        tolerance: the largest ``max_abs_diff`` that passes.
    """

    pairs: int
    by_part: dict[str, int]
    texts: int
    max_abs_diff: float
    rms_diff: float
    tolerance: float

    def to_json(self) -> dict:
        return {
            "pairs": self.pairs,
            "by_part": dict(self.by_part),
            "texts": self.texts,
            "max_abs_diff": self.max_abs_diff,
            "rms_diff": self.rms_diff,
            "tolerance": self.tolerance,
        }

    def describe(self) -> str:
        parts = ", ".join(f"{n:,} {p}" for p, n in self.by_part.items())
        return (
            f"checked end to end on a fixed sample of {self.pairs:,} pairs ({parts}; "
            f"{self.texts:,} texts encoded by the exported backbone): largest difference from "
            f"the live parameters {self.max_abs_diff:.2g}, RMS {self.rms_diff:.2g} "
            f"(tolerance {self.tolerance:g})"
        )


def check_rows(prep: Prepared, n: int = CHECK_PAIRS, seed: int = 0) -> dict[str, np.ndarray]:
    """The fixed sample: part -> sorted pair rows, half ID test and half OOD (a part with
    fewer pairs gives them all and the other part fills up), drawn by ``default_rng(seed)``."""
    parts = {p: prep.rows[p] for p in ("test", "ood") if len(prep.rows[p])}
    rng = np.random.default_rng(seed)
    out, left = {}, n
    for k, (part, rows) in enumerate(sorted(parts.items(), key=lambda kv: len(kv[1]))):
        take = min(len(rows), left // (len(parts) - k))
        out[part] = np.sort(rng.choice(rows, take, replace=False)).astype(np.int32)
        left -= take
    return {p: out[p] for p in ("test", "ood") if p in out}


def _frame(table: pa.Table) -> pd.DataFrame:
    """The artifact's entity table as pandas, multi-valued cells as tuples (as the trainer
    has them)."""
    frame = table.to_pandas()
    for col in frame.columns:
        if frame[col].dtype == object and any(isinstance(v, np.ndarray) for v in frame[col]):
            frame[col] = [tuple(v) if isinstance(v, np.ndarray) else v for v in frame[col]]
    return frame


def _records(table: pa.Table, key: str, ids: np.ndarray) -> list[dict]:
    frame = _frame(table)
    indexed = frame.assign(**{key: frame[key].astype(str)}).set_index(key)
    return [{key: i, **indexed.loc[i].to_dict()} for i in ids]


def score_end_to_end(art: Artifact, prep: Prepared, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Ratings ``[len(rows)]`` of pair ``rows`` through the artifact alone, and the number of
    distinct texts encoded (the service's path: tables, views, tokenizer, backbone, head)."""
    users = _records(art.users, "user_id", prep.pair_ids("user", rows))
    items = _records(art.items, "item_id", prep.pair_ids("item", rows))
    texts = [art.views.render(u, i) for u, i in zip(users, items, strict=True)]  # [n][n_views]
    unique = sorted({t for row in texts for t in row})
    position = {t: j for j, t in enumerate(unique)}
    pooled = encode_texts(
        unique,
        art.tokenizer,
        art.encode,
        length_buckets=tuple(art.manifest["backbone"]["length_buckets"]),
        row_buckets=(64,),
        out_shape=art.reference.activation_mean.shape[1:],
        desc="check exported",
    )  # [n_unique, n_layers, d]
    inputs = art.features.encode(users, items)
    ratings = []
    for s in range(0, len(rows), CHUNK):
        at = np.array([[position[t] for t in row] for row in texts[s : s + CHUNK]])
        acts = pooled[at]  # [chunk, n_views, n_layers, d]
        ratings.append(
            art.score(inputs["ids"][s : s + CHUNK], inputs["multi_hot"][s : s + CHUNK], acts)[1]
        )
    return np.concatenate(ratings), len(unique)


def check_exported(
    art: Artifact, prep: Prepared, rows: dict[str, np.ndarray], live: dict[str, np.ndarray]
) -> ExportCheck:
    """Compare the artifact, end to end, with the live parameters on the sample ``rows``.

    Args:
        rows: :func:`check_rows`; live: part -> the live parameters' ratings of those rows.

    Raises:
        ExportMismatch: a rating differs by more than :data:`TOLERANCE` (the message names
            the pair and both ratings).
    """
    every = np.concatenate(list(rows.values()))
    want = np.concatenate([live[p] for p in rows])
    got, texts = score_end_to_end(art, prep, every)
    return compare_ratings(
        got,
        want,
        by_part={p: len(r) for p, r in rows.items()},
        texts=texts,
        name=lambda k: (
            f"{art.path}: the exported model rates user {prep.pair_ids('user', [every[k]])[0]!r}, "
            f"item {prep.pair_ids('item', [every[k]])[0]!r}"
        ),
    )


def compare_ratings(
    got: np.ndarray,
    want: np.ndarray,
    *,
    by_part: dict[str, int],
    texts: int,
    name,
    tolerance: float = TOLERANCE,
) -> ExportCheck:
    """The :class:`ExportCheck` of exported ratings ``got`` against live ``want`` (``[n]``).

    Args:
        name: ``position -> "who rates what"`` for the message.

    Raises:
        ExportMismatch: a rating differs by more than ``tolerance``.
    """
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    check = ExportCheck(
        pairs=len(diff),
        by_part=by_part,
        texts=texts,
        max_abs_diff=float(diff.max()) if len(diff) else 0.0,
        rms_diff=float(np.sqrt(np.mean(diff**2))) if len(diff) else 0.0,
        tolerance=tolerance,
    )
    if check.max_abs_diff > tolerance:
        worst = int(np.argmax(diff))
        raise ExportMismatch(
            f"{name(worst)} {got[worst]:.4f} where the live parameters give {want[worst]:.4f} "
            f"({int((diff > tolerance).sum())} of {len(diff)} sampled pairs differ by more "
            f"than {tolerance:g}); the artifact does not compute the trained model: do not "
            "serve it, and report the run's log"
        )
    return check


def exported_figures(art: Artifact, prep: Prepared) -> dict[str, float]:
    """ID test and OOD RMSE of the exported head over every held-out pair.

    Features come from the artifact's vocabularies and entity tables (one encode per entity,
    gathered per chunk of pairs), activations from the run's own pooled tables
    (``prep.activations``), the ratings from the exported head function.
    """
    users, items = _frame(art.users), _frame(art.items)
    user_rows = _table_rows(users, "user_id", prep.users["user_id"])
    item_rows = _table_rows(items, "item_id", prep.items["item_id"])
    feats = {
        side: (
            art.features.encode_entity(side, records),
            art.features.encode_multi_hot(side, records),
        )
        for side, records in (
            ("user", users.to_dict("records")),
            ("item", items.to_dict("records")),
        )
    }
    acts = prep.activations
    out = {}
    for part, key in (("test", "id_test_rmse"), ("ood", "ood_rmse")):
        rows = prep.rows[part]
        if not len(rows):
            out[key] = float("nan")
            continue
        ratings = []
        for s in range(0, len(rows), CHUNK):
            chunk = rows[s : s + CHUNK]
            u = user_rows[prep.tables.pair_user[chunk]]
            i = item_rows[prep.tables.pair_item[chunk]]
            ids = np.concatenate([feats["user"][0][u], feats["item"][0][i]], axis=1)
            multi_hot = np.concatenate([feats["user"][1][u], feats["item"][1][i]], axis=1)
            first = acts.matrices[0]
            views = np.empty((len(chunk), len(acts.matrices), *first.shape[1:]), np.float32)
            for v, m in enumerate(acts.matrices):  # [chunk, n_views, n_layers, d], one copy
                views[:, v] = m[acts.index[chunk, v]]
            ratings.append(art.score(ids, multi_hot, views)[1])
        out[key] = evaluate.rmse(np.concatenate(ratings), prep.tables.rating[rows])
    return out


def _table_rows(table: pd.DataFrame, key: str, ids: pd.Series) -> np.ndarray:
    """Row of each of ``ids`` in the artifact's ``table``.

    Raises:
        ExportMismatch: an entity of the run is missing from the artifact's table.
    """
    rows = pd.Index(table[key].astype(str)).get_indexer(ids.astype(str))
    if (rows < 0).any():
        missing = ids[rows < 0].iloc[:3].tolist()
        raise ExportMismatch(
            f"the artifact's {key[:-3]} table lacks {int((rows < 0).sum())} entities of the run, "
            f"e.g. {missing}"
        )
    return rows
