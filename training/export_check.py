"""The export stage's check of the artifact it wrote, loaded as a service loads it.

:func:`check_exported` compares the artifact with the live parameters on a fixed sample of
held-out pairs (:data:`CHECK_PAIRS`), in three parts that together cover the service's path
(entity tables, text views, tokenizer, exported backbone, vocabularies, exported head and,
where the views are factored, the exported first-layer decomposition):

1. *Texts.* Every view's text of every sampled pair, rendered by the artifact's views from
   its entity tables, must equal the text the run encoded (the run's views over its own
   tables): a string comparison, no encode.
2. *Tokens and backbone.* Every distinct text of those pairs must tokenize to the same ids by
   the artifact's tokenizer as by the run's (milliseconds, no encode: normalization, unknown
   characters and truncation show here on any text). The :data:`LONGEST_TEXTS` longest (in
   tokens) and :data:`CHECK_TEXTS` others drawn with a fixed seed go through the exported
   backbone, padded to the manifest's length bucket that holds the longest (one compiled
   shape), and must give the run's pooled activations of the same texts. A wrong weight or
   layer order touches every text; a fault that touches a share ``f`` of the texts escapes
   ``n`` random ones with probability ``(1 - f) ** n``: 5.8e-3 for ``f`` = 1% and below 1e-4
   for ``f`` = 2% at n = 512, for about 2 s of encoding (MiniLM, 2 cores) where encoding
   every text of the sample (about 3,200) in every length bucket it needed took 11 s.
3. *Head.* The sampled pairs' features from the artifact's vocabularies and entity tables,
   with the run's activations, through the exported head (and through the side and pair
   functions of the decomposition, where exported) must give the live ratings. A mismatch that
   touches a share ``f`` of the pairs (one feature column, some entities' rows) escapes a
   uniform sample of ``n`` pairs with probability ``(1 - f) ** n``: below 1e-4 for ``f`` = 0.5%
   at n = 2,048.

Since 1 shows the artifact renders the run's texts and 2 that its backbone encodes texts as
the run's activations say, 3's use of those activations stands for the encode of every pair.

The head part's scoring, and the exported figures over every held-out pair, are
``training.exported_scoring``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.batching import encode_texts
from model.tokenizer import bucket_length
from training.exported_scoring import (
    EntityInputs,
    ExportMismatch,
    artifact_records,
    decomposed_ratings,
    entity_inputs,
    head_ratings,
)

if TYPE_CHECKING:
    from model.artifact import Artifact
    from training.prepare import Prepared

CHECK_PAIRS = 2048
CHECK_TEXTS = 512  # drawn texts of the sample through the exported backbone
LONGEST_TEXTS = 64  # and the sample's longest
# Rating units. Both sides read the run's float16 activations: on CPU exported and live
# ratings differ by about 1e-6 (XLA's different fusions, the decomposition's other order of
# sums); on GPUs float32 matmuls may run in TF32 (10-bit mantissa), hence the margin. A wrong
# table row or weight moves ratings by tenths.
TOLERANCE = 0.02
# Activations: |exported - run| / (|run| + the layer's RMS). The run's float16 cache rounds
# at 4.9e-4 relative, bucketed against packed encodes differ by about 1e-5; a wrong weight,
# token or truncation moves pooled activations by their own size.
ACTIVATION_TOLERANCE = 1e-2
_DO_NOT_SERVE = (
    "the artifact does not compute the trained model: do not serve it, and report the run's log"
)


@dataclass(frozen=True)
class ExportCheck:
    """What :func:`check_exported` compared.

    Attributes:
        pairs: pairs scored (ID test and OOD; ``by_part`` splits them).
        texts: distinct (view, text) of those pairs; every pair's texts were compared with
            the run's, every distinct one's tokens too.
        encoded: texts the exported backbone encoded.
        activation_diff: their largest activation difference (see
            :data:`ACTIVATION_TOLERANCE`).
        max_abs_diff, rms_diff: exported head minus live ratings, rating units.
        decomposed_diff: the decomposition's largest rating difference (None: pair views).
        tolerance: the largest rating difference that passes.
    """

    pairs: int
    by_part: dict[str, int]
    texts: int
    encoded: int
    activation_diff: float
    max_abs_diff: float
    rms_diff: float
    decomposed_diff: float | None
    tolerance: float

    def describe(self) -> str:
        parts = ", ".join(f"{n:,} {p}" for p, n in self.by_part.items())
        decomposed = (
            ""
            if self.decomposed_diff is None
            else f", through the first-layer decomposition {self.decomposed_diff:.2g}"
        )
        return (
            f"checked on a fixed sample of {self.pairs:,} pairs ({parts}): their {self.texts:,} "
            f"texts rendered as the run's; {self.encoded:,} of them encoded by the exported "
            f"backbone as the run's activations (largest relative difference "
            f"{self.activation_diff:.2g}); rated by the exported head with the largest "
            f"difference from the live parameters {self.max_abs_diff:.2g}, RMS "
            f"{self.rms_diff:.2g}{decomposed} (tolerance {self.tolerance:g})"
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


def check_exported(
    art: Artifact,
    prep: Prepared,
    rows: dict[str, np.ndarray],
    live: dict[str, np.ndarray],
    entities: EntityInputs | None = None,
    run_tokenizer=None,
) -> ExportCheck:
    """Compare the artifact with the live parameters on the sample ``rows`` (module docstring).

    Args:
        rows: :func:`check_rows`; live: part -> the live parameters' ratings of those rows.
        entities: :func:`entity_inputs` (computed when None).
        run_tokenizer: the run's backbone's tokenizer (``encode(texts) -> ids``); when given,
            every distinct text of the sample must tokenize as the artifact's tokenizer does.

    Raises:
        ExportMismatch: an entity of the run is missing from the artifact's tables, a text
            renders or tokenizes differently (names the view, the pair and both texts), an
            activation differs by more than :data:`ACTIVATION_TOLERANCE` (names the text and
            the layer) or a rating by more than :data:`TOLERANCE` (names the pair and both
            ratings).
    """
    entities = entities or entity_inputs(art, prep)
    every = np.concatenate(list(rows.values()))
    want = np.concatenate([live[p] for p in rows])
    by_part = {p: len(r) for p, r in rows.items()}

    def name(k: int) -> str:
        return f"{art.path}: the exported model rates {_pair(prep, every[k])}"

    texts = _check_texts(art, prep, entities, every)
    encoded, activation_diff = _check_backbone(art, prep, texts, run_tokenizer)
    head = compare_ratings(head_ratings(art, prep, entities, every), want, name=name)
    decomposed = None
    if art.decomposed:
        decomposed = compare_ratings(
            decomposed_ratings(art, prep, entities, every),
            want,
            name=lambda k: f"{name(k)} through its first-layer decomposition",
        ).max_abs
    return ExportCheck(
        pairs=len(every),
        by_part=by_part,
        texts=len(texts),
        encoded=encoded,
        activation_diff=activation_diff,
        max_abs_diff=head.max_abs,
        rms_diff=head.rms,
        decomposed_diff=decomposed,
        tolerance=TOLERANCE,
    )


def _check_texts(
    art: Artifact, prep: Prepared, entities: EntityInputs, rows: np.ndarray
) -> dict[tuple[int, str], int]:
    """Part 1: every view's text of pair ``rows`` as the artifact renders it (its tables read
    as the service reads them: Arrow rows, lists as tuples) against the run's.

    Returns:
        ``(view, text) -> row in the run's activation matrix of that view``, every distinct
        text of the pairs.

    Raises:
        ExportMismatch: a text differs (names the view, the user, the item and both texts).
    """
    user, item = prep.tables.pair_user[rows], prep.tables.pair_item[rows]
    ours = (prep.users.iloc[user].to_dict("records"), prep.items.iloc[item].to_dict("records"))
    theirs = (
        artifact_records(art.users, entities.rows["user"][user]),
        artifact_records(art.items, entities.rows["item"][item]),
    )
    index = prep.activations.index[rows]  # [n, n_views]
    out: dict[tuple[int, str], int] = {}
    for k in range(len(rows)):
        run_texts = prep.views.render(ours[0][k], ours[1][k])
        artifact_texts = art.views.render(theirs[0][k], theirs[1][k])
        for v, (a, b) in enumerate(zip(artifact_texts, run_texts, strict=True)):
            if a != b:
                raise ExportMismatch(
                    f"{art.path}: view {art.views.views[v].name!r} of {_pair(prep, rows[k])} "
                    f"renders {a[:200]!r} from the artifact's tables but {b[:200]!r} in the "
                    f"run; {_DO_NOT_SERVE}"
                )
            out.setdefault((v, a), int(index[k, v]))
    return out


def _pair(prep: Prepared, row: int) -> str:
    """``user 'u', item 'i'``: who rates what in pair ``row``, for a message."""
    return f"user {prep.pair_ids('user', [row])[0]!r}, item {prep.pair_ids('item', [row])[0]!r}"


def _check_tokens(art: Artifact, texts: list[str], run_tokenizer) -> list[int]:
    """Every text's token ids by the artifact's tokenizer against the run's (no encode).
    Returns the artifact's token counts.

    Raises:
        ExportMismatch: a text tokenizes differently (names it and where the ids part).
    """
    ids = art.tokenizer.encode(texts)
    if run_tokenizer is not None:
        for text, got, want in zip(texts, ids, run_tokenizer.encode(texts), strict=True):
            if got != want:
                at = next(
                    (j for j, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), None
                )
                where = f"from token {at}" if at is not None else f"{len(got)} vs {len(want)} ids"
                raise ExportMismatch(
                    f"{art.path}: the artifact's tokenizer splits {text[:200]!r} otherwise than "
                    f"the run's ({where}); {_DO_NOT_SERVE}"
                )
    return [len(x) for x in ids]


def _check_backbone(
    art: Artifact,
    prep: Prepared,
    texts: dict[tuple[int, str], int],
    run_tokenizer=None,
    seed: int = 0,
) -> tuple[int, float]:
    """Part 2: every distinct text's tokens against the run's tokenizer; the longest (in
    tokens) and some drawn texts through the exported backbone against the run's
    activations. Returns the number encoded and the largest relative difference.

    Raises:
        ExportMismatch: a text tokenizes differently, or an activation differs by more than
            :data:`ACTIVATION_TOLERANCE` (names the text and the layer).
    """
    keys = sorted(texts)
    tokens = _check_tokens(art, [t for _, t in keys], run_tokenizer)
    by_length = sorted(range(len(keys)), key=lambda j: (-tokens[j], keys[j]))
    longest = by_length[:LONGEST_TEXTS]
    rest = sorted(by_length[LONGEST_TEXTS:])
    drawn = np.random.default_rng(seed).choice(
        len(rest), min(CHECK_TEXTS, len(rest)), replace=False
    )
    picked = longest + [rest[j] for j in np.sort(drawn)]
    if not picked:
        return 0, 0.0
    chosen = [keys[j][1] for j in picked]
    # One compiled shape (a cold compile costs about 2 s): every checked text padded to the
    # manifest's bucket that holds the longest (padding is masked; the buckets are one
    # shape-polymorphic exported function).
    buckets = tuple(art.manifest["backbone"]["length_buckets"])
    longest_tokens = max(tokens[j] for j in picked)
    got = encode_texts(
        chosen,
        art.tokenizer,
        art.encode,
        length_buckets=(bucket_length(longest_tokens, buckets),),
        row_buckets=(64,),
        out_shape=art.reference.activation_mean.shape[1:],
        desc="check exported",
    )  # [n, n_layers, d]
    want = np.stack([prep.activations.matrices[keys[j][0]][texts[keys[j]]] for j in picked]).astype(
        np.float32
    )
    scale = np.sqrt(np.mean(want.astype(np.float64) ** 2, axis=(0, 2)))[None, :, None] + 1e-6
    diff = np.abs(got - want) / (np.abs(want) + scale)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    if diff[worst] > ACTIVATION_TOLERANCE:
        bad = int((diff.max(axis=(1, 2)) > ACTIVATION_TOLERANCE).sum())
        raise ExportMismatch(
            f"{art.path}: the exported backbone encodes {chosen[worst[0]][:200]!r} with layer "
            f"{worst[1]} differing from the run's activations by {diff[worst]:.3g} of their "
            f"size ({bad} of {len(chosen)} checked texts beyond {ACTIVATION_TOLERANCE:g}); "
            f"{_DO_NOT_SERVE}"
        )
    return len(chosen), float(diff[worst])


@dataclass(frozen=True)
class RatingDiff:
    """Exported minus live ratings: the largest and the RMS absolute difference, rating units."""

    max_abs: float
    rms: float


def compare_ratings(
    got: np.ndarray, want: np.ndarray, *, name, tolerance: float = TOLERANCE
) -> RatingDiff:
    """Exported ratings ``got`` against live ``want`` (``[n]``): their :class:`RatingDiff`.

    Args:
        name: ``position -> "who rates what"`` for the message.

    Raises:
        ExportMismatch: a rating differs by more than ``tolerance``.
    """
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    out = RatingDiff(
        max_abs=float(diff.max()) if len(diff) else 0.0,
        rms=float(np.sqrt(np.mean(diff**2))) if len(diff) else 0.0,
    )
    if out.max_abs > tolerance:
        worst = int(np.argmax(diff))
        raise ExportMismatch(
            f"{name(worst)} {got[worst]:.4f} where the live parameters give {want[worst]:.4f} "
            f"({int((diff > tolerance).sum())} of {len(diff)} sampled pairs differ by more "
            f"than {tolerance:g}); {_DO_NOT_SERVE}"
        )
    return out
