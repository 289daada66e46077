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

MISSING = "unknown"


@dataclass(frozen=True)
class TextView:
    """One text template.

    Attributes:
        name: short name, e.g. ``"user"``.
        entity: ``"user"``, ``"item"`` or ``"pair"``: which fields the template reads. User
            fields are named ``user_id, age, gender, occupation, zip_code``; item fields
            ``item_id, title, genres``; a pair template may use both.
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
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else MISSING
    if isinstance(value, (int,)) and value < 0:  # -1 marks a missing age
        return MISSING
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


def factored_views(*, genres: bool = False, gender: bool = False) -> ViewSet:
    """One user text and one item text (paper inputs; genres and gender behind switches)."""
    user = "user id {user_id}, age {age}" + (", gender {gender}" if gender else "")
    user += ", occupation {occupation}, zip code {zip_code}"
    item = "movie id {item_id}, title {title}" + (", genres {genres}" if genres else "")
    return ViewSet("factored", (TextView("user", "user", user), TextView("item", "item", item)))


def pair_views(*, genres: bool = False, gender: bool = False) -> ViewSet:
    """The paper's single LIFT-style sentence per user–item pair."""
    text = "When the user id is {user_id}, the user age is {age}"
    text += ", the user gender is {gender}" if gender else ""
    text += (
        ", the user occupation is {occupation}, the user zip code is {zip_code}, "
        "the movie id is {item_id}, the movie title is {title}"
    )
    text += ", the movie genres are {genres}" if genres else ""
    text += ", what can be the user rating on this movie?"
    return ViewSet("pair", (TextView("pair", "pair", text),))


def make_views(name: str, *, genres: bool = False, gender: bool = False) -> ViewSet:
    """``"factored"`` or ``"pair"``."""
    if name == "factored":
        return factored_views(genres=genres, gender=gender)
    if name == "pair":
        return pair_views(genres=genres, gender=gender)
    raise ValueError(f"unknown text views {name!r}: expected 'factored' or 'pair'")
