"""Text views: how a user, an item or a user–item pair is rendered as text for the encoder.

A view is a template over entity fields. ``factored`` (the default) renders one text per user
and one per item, so each distinct entity is encoded once and its activations cached;
``pair`` renders the paper's LIFT-style sentence per user–item pair. Adapters take the
concatenation of every view's pooled activations, so both go through the same code path.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MISSING = "unknown"


@dataclass(frozen=True)
class TextView:
    """One text template.

    Attributes:
        name: short name, e.g. ``"user"``.
        entity: ``"user"``, ``"item"`` or ``"pair"``: which record the template reads (the
            user's ``user_id`` and declared columns, the item's ``item_id`` and declared
            columns; a pair template reads both).
        template: ``str.format`` template over those field names.
    """

    name: str
    entity: str
    template: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.template) if f)

    def render(self, user: Mapping[str, object], item: Mapping[str, object]) -> str:
        """The text of this view for one user and one item (only the needed one is read)."""
        source: dict[str, object] = {}
        if self.entity in ("user", "pair"):
            source.update(user)
        if self.entity in ("item", "pair"):
            source.update(item)
        return self.template.format(**{f: _text(source.get(f)) for f in self.fields})


def _text(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and value != value:  # NaN from pandas
        return MISSING
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value) if len(value) else MISSING
    if isinstance(value, float) and value.is_integer():  # 24.0 from a column with gaps -> "24"
        return str(int(value))
    text = str(value).strip()
    return text or MISSING


@dataclass(frozen=True)
class ViewSet:
    """The text views a model reads, in the order their activations are concatenated."""

    name: str
    views: tuple[TextView, ...]

    @property
    def n_views(self) -> int:
        return len(self.views)

    def render(self, user: Mapping[str, object], item: Mapping[str, object]) -> list[str]:
        return [v.render(user, item) for v in self.views]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "views": [
                {"name": v.name, "entity": v.entity, "template": v.template} for v in self.views
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ViewSet:
        return cls(data["name"], tuple(TextView(**v) for v in data["views"]))


def views_from_templates(
    *, user: str | None = None, item: str | None = None, pair: str | None = None
) -> ViewSet:
    """``factored`` views (one user text, one item text) or one ``pair`` view.

    Templates read entity records: ``user_id`` / ``item_id`` and the declared columns.

    Raises:
        ValueError: neither (or both) styles given.
    """
    if pair is not None and user is None and item is None:
        return ViewSet("pair", (TextView("pair", "pair", pair),))
    if pair is None and user is not None and item is not None:
        return ViewSet("factored", (TextView("user", "user", user), TextView("item", "item", item)))
    raise ValueError("text views: give user and item templates, or one pair template")
