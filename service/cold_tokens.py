"""How much text scoring will encode, and a large job's encoding in bounded steps.

Admission (``service/scoring.py``) and the queue's bound (``service/batcher.py``) count the
tokens of text a call will encode, estimated cheaply (no rendering, no tokenizing):
:func:`estimate_cold_tokens`. A large job encodes its uncached entities in steps of about
``LEVI_STEP_TOKENS`` tokens before it is scored, so that no single call holds the scorer for
long: :func:`prepare_step` (``Scorer.prepare``, under the scorer's lock).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from model.decomposed_layout import SIDES
from service.score_inputs import ScoreInput, entity_keys

if TYPE_CHECKING:
    from model.templates import ViewSet
    from service.cache import ActivationCache
    from service.entity_store import EntityTable, ProjectionCache

TEMPLATE_TOKENS = 16  # a text view's template and id, in tokens (for cost estimates)


class Encodes(Protocol):
    """What budgeting reads and calls of its scorer (``service.scorer.Scorer``)."""

    decomposed: bool
    views: ViewSet
    cache: ActivationCache
    tables: dict[str, EntityTable]
    projections: dict[str, ProjectionCache]

    def resolve(
        self, side: str, keys: Sequence[tuple[str, tuple]]
    ) -> tuple[list[dict], list[bool], list[tuple[str, ...]]]: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def project(
        self, side: str, keys: Sequence[tuple[str, tuple]], *, store: bool = True
    ) -> dict[str, np.ndarray]: ...


def key_tokens(key: tuple[str, tuple]) -> int:
    """About how many tokens an entity's text views take: the template and id, and a token
    per ~3 characters of the request's field values (an upper bound for MovieLens titles; the
    tokenizer itself is not run: this is for admission and step sizes)."""
    return TEMPLATE_TOKENS + sum(len(str(v)) for _, v in key[1]) // 3


def _text_tokens(text: str) -> int:
    """About how many tokens a rendered text takes (pair views), as :func:`key_tokens`."""
    return TEMPLATE_TOKENS + len(text) // 3


def _within(items: Sequence, budget: int, cost: Callable, at_least_one: bool) -> list:
    """The longest prefix of ``items`` whose ``cost`` sums to at most ``budget`` (and at least
    one item when ``at_least_one`` and there is any)."""
    out, spent = [], 0
    for x in items:
        c = cost(x)
        if spent + c > budget and (out or not at_least_one):
            break
        out.append(x)
        spent += c
    return out


def estimate_cold_tokens(scorer: Encodes, inputs: Sequence[ScoreInput]) -> tuple[int, int]:
    """About how many tokens of text scoring ``inputs`` will encode (an upper bound:
    activations may be cached), cheaply (no rendering, no tokenizing), for admission.

    Returns:
        ``(new, uncached)``: ``new`` counts the entities the model's tables do not hold as
        the request gives them (request fields, unknown ids without a catalog record), what a
        client controls and a per-call limit applies to; ``uncached`` every distinct entity
        whose projections are not cached (known and registered ones too, e.g. right after a
        start), what the queue's bound counts.
    """
    if not scorer.decomposed:  # pair views: one text per distinct pair, nothing projected
        pairs = dict.fromkeys(
            zip(entity_keys("user", inputs), entity_keys("item", inputs), strict=True)
        )
        total = sum(key_tokens(u) + key_tokens(i) for u, i in pairs)
        return total, total
    new = uncached = 0
    for side in SIDES:
        cache = scorer.projections[side]
        all_keys = entity_keys(side, inputs)
        keys = cache.missing(dict.fromkeys(all_keys))
        if not keys:
            continue
        # Catalog records are like the model's tables: registered, not brought by the call.
        attr = f"{side}_from"
        listed = {k for k, r in zip(all_keys, inputs, strict=True) if getattr(r, attr) == "catalog"}
        known = scorer.tables[side].rows([k[0] for k in keys]) >= 0
        for key, in_table in zip(keys, known.tolist(), strict=True):
            tokens = key_tokens(key)
            uncached += tokens
            if key not in listed and (key[1] or not in_table):
                new += tokens
    return new, uncached


def prepare_step(
    scorer: Encodes, inputs: Sequence[ScoreInput], budget_tokens: int, state: dict | None
) -> tuple[bool, dict]:
    """One step of ``Scorer.prepare``: encode (and project) about ``budget_tokens`` tokens of
    what ``inputs`` need that is not cached yet, at least one entity or text.

    Args:
        state: what the previous step returned (None at first).

    Returns:
        ``(done, state)``: done once nothing is left to encode.
    """
    if state is None:
        state = {"left": uncached(scorer, inputs), "encoded": False}
    left: list = state["left"]
    if left:
        state["encoded"] = True
    budget = budget_tokens
    while left and budget > 0:
        side, keys = left[0]
        if side == "text":  # pair views: activations, not projections, are cached
            chunk = _within(keys, budget, _text_tokens, budget == budget_tokens)
            if chunk:
                fresh = scorer.encode(chunk)
                scorer.cache.put_many({scorer.cache.key(t): fresh[i] for i, t in enumerate(chunk)})
            budget -= sum(_text_tokens(t) for t in chunk)
        else:
            cache = scorer.projections[side]
            keys = cache.missing(keys)
            chunk = _within(keys, budget, key_tokens, budget == budget_tokens)
            if chunk:
                scorer.project(side, chunk)
            budget -= max(1, sum(key_tokens(k) for k in chunk))
        left[0] = (side, keys[len(chunk) :])
        if not left[0][1]:
            left.pop(0)
        elif not chunk:
            break  # the next entity does not fit in what is left of this step
    return not left, state


def uncached(scorer: Encodes, inputs: Sequence[ScoreInput]) -> list[tuple[str, list]]:
    """Per side, the distinct entity keys not in the projection cache (factored views), or
    the texts not in the activation cache (pair views)."""
    if not scorer.decomposed:
        texts = list(
            dict.fromkeys(
                t
                for u, i in zip(
                    scorer.resolve("user", entity_keys("user", inputs))[0],
                    scorer.resolve("item", entity_keys("item", inputs))[0],
                    strict=True,
                )
                for t in scorer.views.render(u, i)
            )
        )
        found = scorer.cache.get_many([scorer.cache.key(t) for t in texts])
        missing = [t for t in texts if scorer.cache.key(t) not in found]
        return [("text", missing)] if missing else []
    out = []
    for side in SIDES:
        cache = scorer.projections[side]
        distinct = list(dict.fromkeys(entity_keys(side, inputs)))
        if len(distinct) > cache.capacity:
            continue  # more than the cache holds: each slice projects its own
        missing = cache.missing(distinct)
        if missing:
            out.append((side, missing))
    return out
