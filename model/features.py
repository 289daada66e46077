"""Feature encoding for the from-scratch MLP: vocabularies fitted on ID train, OOV slot 0.

Categorical features are user features first, then item features, so an answer's feature
row is ``concat(user_ids, item_ids)`` and each entity's part can be encoded once and cached.
Genres (behind a switch) are a multi-hot vector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

OOV = 0
AGE_BOUNDS = (18, 25, 35, 45, 50, 56)  # MovieLens age groups: <18, 18-24, ..., 56+
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def age_bucket(age: object) -> str | None:
    """MovieLens age group label of an age in years; None when missing."""
    try:
        years = int(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if years < 0:
        return None
    return AGE_LABELS[int(np.searchsorted(AGE_BOUNDS, years, side="right"))]


def _clean(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip().lower()
    return text or None


def _zip_prefix(value: object) -> str | None:
    text = _clean(value)
    return text[:3] if text else None


# feature name -> (entity, field read from the entity record, extractor)
EXTRACTORS: dict[str, tuple[str, Callable[[Mapping], str | None]]] = {
    "user_id": ("user", lambda r: _clean(r.get("user_id"))),
    "age_bucket": ("user", lambda r: age_bucket(r.get("age"))),
    "gender": ("user", lambda r: _clean(r.get("gender"))),
    "occupation": ("user", lambda r: _clean(r.get("occupation"))),
    "zip_prefix": ("user", lambda r: _zip_prefix(r.get("zip_code"))),
    "item_id": ("item", lambda r: _clean(r.get("item_id"))),
}
DEFAULT_FEATURES = ("user_id", "age_bucket", "occupation", "zip_prefix", "item_id")


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical feature with its vocabulary; id ``i + 1`` is ``vocab[i]``, 0 is OOV."""

    name: str
    vocab: tuple[str, ...]

    @property
    def entity(self) -> str:
        return EXTRACTORS[self.name][0]

    @property
    def size(self) -> int:
        return len(self.vocab) + 1


@dataclass(frozen=True)
class FeatureSpec:
    """Every input feature of the MLP and how to encode it.

    Attributes:
        categorical: user features first, then item features.
        genres: genre names of the multi-hot item feature; empty when genres are off.
    """

    categorical: tuple[CategoricalFeature, ...]
    genres: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        entities = [f.entity for f in self.categorical]
        if entities != sorted(entities, key=lambda e: e != "user"):
            raise ValueError("FeatureSpec.categorical must list user features before item features")
        # Lookup tables, built once (frozen dataclass: bypass __setattr__).
        object.__setattr__(
            self,
            "_index",
            {f.name: {v: i + 1 for i, v in enumerate(f.vocab)} for f in self.categorical},
        )

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return tuple(f.size for f in self.categorical)

    @property
    def n_multi_hot(self) -> int:
        return len(self.genres)

    def features_of(self, entity: str) -> tuple[CategoricalFeature, ...]:
        return tuple(f for f in self.categorical if f.entity == entity)

    def encode_entity(self, entity: str, records: Sequence[Mapping]) -> np.ndarray:
        """int32 ``[n, n_features_of(entity)]`` ids of user or item records (OOV = 0)."""
        feats = self.features_of(entity)
        out = np.zeros((len(records), len(feats)), dtype=np.int32)
        for j, f in enumerate(feats):
            extract = EXTRACTORS[f.name][1]
            index = self._index[f.name]  # type: ignore[attr-defined]
            for i, r in enumerate(records):
                out[i, j] = index.get(extract(r), OOV)
        return out

    def encode_genres(self, records: Sequence[Mapping]) -> np.ndarray:
        """float32 ``[n, n_multi_hot]`` multi-hot genres of item records."""
        out = np.zeros((len(records), len(self.genres)), dtype=np.float32)
        if not self.genres:
            return out
        col = {g: j for j, g in enumerate(self.genres)}
        for i, r in enumerate(records):
            for g in r.get("genres") or ():
                if g in col:
                    out[i, col[g]] = 1.0
        return out

    def encode(self, users: Sequence[Mapping], items: Sequence[Mapping]) -> dict[str, np.ndarray]:
        """Head inputs for aligned user and item records.

        Returns:
            ``{"ids": int32 [n, F], "multi_hot": float32 [n, G]}``.
        """
        ids = np.concatenate(
            [self.encode_entity("user", users), self.encode_entity("item", items)], axis=1
        )
        return {"ids": ids, "multi_hot": self.encode_genres(items)}

    def to_json(self) -> dict:
        return {
            "categorical": [{"name": f.name, "vocab": list(f.vocab)} for f in self.categorical],
            "genres": list(self.genres),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> FeatureSpec:
        cats = tuple(CategoricalFeature(c["name"], tuple(c["vocab"])) for c in data["categorical"])
        return cls(cats, tuple(data.get("genres", ())))


def fit_feature_spec(
    users: Sequence[Mapping],
    items: Sequence[Mapping],
    *,
    names: Sequence[str] = DEFAULT_FEATURES,
    gender: bool = False,
    genres: Sequence[str] = (),
) -> FeatureSpec:
    """Vocabularies from the users and items seen in ID train (everything else maps to OOV).

    Args:
        users: records of the users that occur in the training ratings.
        items: records of the items that occur in the training ratings.
        names: categorical features to use (see ``EXTRACTORS``).
        gender: add the user gender feature (off by default, as in the paper).
        genres: genre names for the multi-hot item feature; empty turns genres off.
    """
    wanted = list(names) + (["gender"] if gender and "gender" not in names else [])
    unknown = [n for n in wanted if n not in EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; known: {sorted(EXTRACTORS)}")
    wanted.sort(key=lambda n: EXTRACTORS[n][0] != "user")
    cats = []
    for name in wanted:
        entity, extract = EXTRACTORS[name]
        values = {extract(r) for r in (users if entity == "user" else items)}
        cats.append(CategoricalFeature(name, tuple(sorted(v for v in values if v is not None))))
    return FeatureSpec(tuple(cats), tuple(genres))
