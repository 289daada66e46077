"""Feature encoding for the from-scratch MLP, resolved from the dataset spec.

Every declared column of the users and items tables is a :class:`Column` with its type and
what was fitted on ID train (a vocabulary, bucket edges). Reserved ids, the same for every
column (Merlin's Categorify convention):

* categorical: 0 = out of vocabulary or missing, ``i + 1`` = ``vocab[i]``;
* numeric: 0 = missing or not a number, ``k + 1`` = bucket ``k`` of
  ``searchsorted(edges, value, side="right")`` (``len(edges) + 1`` buckets);
* multi_categorical: a multi-hot vector over the vocabulary (unknown values are dropped).

The ``ids`` input of the head is ``concat(user columns, item columns)`` of the categorical
and numeric MLP columns (ids first on each side); ``multi_hot`` is ``concat(user multi-hot,
item multi-hot)``. So each entity's part is encoded once and cached.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OOV = 0
ENTITIES = ("user", "item")
KINDS = ("categorical", "multi_categorical", "numeric", "text")
ID_COLUMNS = {"user": "user_id", "item": "item_id"}


def clean_category(value: object, prefix: int | None = None) -> str | None:
    """The vocabulary form of a categorical value: stripped, lower case, optionally cut to
    ``prefix`` characters; None when missing."""
    if _missing(value):
        return None
    text = _as_text(value).strip().lower()
    if prefix:
        text = text[:prefix]
    return text or None


def as_number(value: object) -> float | None:
    """A float, or None when missing or not a number (bools are not numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def entity_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row of an entity table as Arrow gives it (``pa.Table.to_pylist``), as records are
    read everywhere: multi-valued (list or array) cells as tuples, so records hash and compare
    as the trainer's do."""
    return {k: tuple(v) if isinstance(v, np.ndarray | list) else v for k, v in row.items()}


def as_values(value: object, sep: str | None = None) -> tuple[str, ...]:
    """The values of a multi-valued cell: a list/tuple/array, or a ``sep``-delimited string."""
    if _missing(value):
        return ()
    if isinstance(value, str):
        parts = value.split(sep) if sep else [value]
    elif isinstance(value, Iterable):
        parts = [_as_text(v) for v in value if not _missing(v)]
    else:
        parts = [_as_text(value)]
    return tuple(p.strip() for p in parts if p.strip())


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _as_text(value: object) -> str:
    """A value as text, whole floats without ".0" (as tables read them: 3.0 -> "3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Column:
    """One resolved column of the users or items table.

    Attributes:
        name: the column name (``user_id`` / ``item_id`` for the ids).
        entity: ``"user"`` or ``"item"``.
        kind: ``categorical``, ``multi_categorical``, ``numeric`` or ``text``.
        mlp: whether the embedding MLP reads it (never for text).
        vocab: categorical / multi_categorical values fitted on ID train (vocabulary form).
        edges: numeric bucket edges.
        prefix: categorical: values are cut to this many characters (0: whole value).
        sep: multi_categorical: delimiter of string cells.
        valid_range: numeric: the values the spec declares valid (``range``), or None.
        seen_range: numeric: the smallest and largest value of ID train, or None.
    """

    name: str
    entity: str
    kind: str
    mlp: bool = True
    vocab: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    prefix: int = 0
    sep: str | None = None
    valid_range: tuple[float, float] | None = None
    seen_range: tuple[float, float] | None = None
    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.entity not in ENTITIES or self.kind not in KINDS:
            raise ValueError(
                f"column {self.name!r}: bad entity {self.entity!r} or kind {self.kind!r}"
            )
        self._index.update({v: i + 1 for i, v in enumerate(self.vocab)})

    @property
    def is_id_input(self) -> bool:
        """A column of the head's ``ids`` input (categorical or numeric, read by the MLP)."""
        return self.mlp and self.kind in ("categorical", "numeric")

    @property
    def is_multi_hot_input(self) -> bool:
        return self.mlp and self.kind == "multi_categorical"

    @property
    def size(self) -> int:
        """Embedding rows (reserved 0 included) or multi-hot width."""
        if self.kind == "numeric":
            return len(self.edges) + 2
        if self.kind == "multi_categorical":
            return len(self.vocab)
        return len(self.vocab) + 1

    def encode_one(self, value: object) -> int:
        """The id of one value (0 when missing or unknown)."""
        if self.kind == "numeric":
            number = as_number(value)
            if number is None:
                return OOV
            return int(np.searchsorted(self.edges, number, side="right")) + 1
        return self._index.get(clean_category(value, self.prefix or None), OOV)

    def known(self, value: object) -> bool:
        """Whether a categorical / multi_categorical value is in the vocabulary."""
        values = as_values(value, self.sep) if self.kind == "multi_categorical" else (value,)
        return all(clean_category(v, self.prefix or None) in self._index for v in values)

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "entity": self.entity, "kind": self.kind, "mlp": self.mlp}
        if self.vocab:
            out["vocab"] = list(self.vocab)
        if self.kind == "numeric":
            out["edges"] = [float(e) for e in self.edges]
        if self.prefix:
            out["prefix"] = self.prefix
        if self.sep:
            out["sep"] = self.sep
        if self.valid_range is not None:
            out["valid_range"] = [float(x) for x in self.valid_range]
        if self.seen_range is not None:
            out["seen_range"] = [float(x) for x in self.seen_range]
        return out

    def far_outside(self, value: object) -> str | None:
        """Why a numeric ``value`` is suspicious, or None: outside what training saw by more
        than the width of that range (only without a declared ``valid_range``, which the
        request checks enforce instead)."""
        if self.kind != "numeric" or self.valid_range is not None or self.seen_range is None:
            return None
        number = as_number(value)
        if number is None:
            return None
        lo, hi = self.seen_range
        span = max(hi - lo, 1.0)
        if lo - span <= number <= hi + span:
            return None
        return (
            f"{self.entity}.{self.name} {number:g} lies far outside the values training saw "
            f"[{lo:g}, {hi:g}]"
        )

    @classmethod
    def from_json(cls, data: Mapping) -> Column:
        return cls(
            name=data["name"],
            entity=data["entity"],
            kind=data["kind"],
            mlp=bool(data.get("mlp", True)),
            vocab=tuple(data.get("vocab", ())),
            edges=tuple(float(e) for e in data.get("edges", ())),
            prefix=int(data.get("prefix", 0)),
            sep=data.get("sep"),
            valid_range=_pair(data.get("valid_range")),
            seen_range=_pair(data.get("seen_range")),
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Every declared column and how the head reads it.

    Attributes:
        columns: the user columns (``user_id`` first), then the item columns (``item_id``
            first), each in spec order.
    """

    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        entities = [c.entity for c in self.columns]
        if entities != sorted(entities, key=lambda e: e != "user"):
            raise ValueError("FeatureSpec.columns must list user columns before item columns")

    @property
    def categorical(self) -> tuple[Column, ...]:
        """The columns of the head's ``ids`` input, in order."""
        return tuple(c for c in self.columns if c.is_id_input)

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return tuple(c.size for c in self.categorical)

    @property
    def n_multi_hot(self) -> int:
        return sum(c.size for c in self.columns if c.is_multi_hot_input)

    def fields_of(self, entity: str) -> tuple[Column, ...]:
        """The declared columns of an entity other than its id (what a request may send)."""
        return tuple(c for c in self.columns if c.entity == entity and c.name != ID_COLUMNS[entity])

    def id_column(self, entity: str) -> int:
        """Position of the entity's id in the ``ids`` input (-1: not an input)."""
        names = [(c.entity, c.name) for c in self.categorical]
        key = (entity, ID_COLUMNS[entity])
        return names.index(key) if key in names else -1

    def encode_entity(self, entity: str, records: Sequence[Mapping]) -> np.ndarray:
        """int32 ``[n, F_entity]`` ids of user or item records (0 = OOV / missing)."""
        cols = [c for c in self.categorical if c.entity == entity]
        out = np.zeros((len(records), len(cols)), dtype=np.int32)
        for j, col in enumerate(cols):
            for i, r in enumerate(records):
                out[i, j] = col.encode_one(r.get(col.name))
        return out

    def encode_multi_hot(self, entity: str, records: Sequence[Mapping]) -> np.ndarray:
        """float32 ``[n, G_entity]`` multi-hot of the entity's multi_categorical columns."""
        cols = [c for c in self.columns if c.entity == entity and c.is_multi_hot_input]
        out = np.zeros((len(records), sum(c.size for c in cols)), dtype=np.float32)
        offset = 0
        for col in cols:
            index = {v: offset + k for k, v in enumerate(col.vocab)}
            for i, r in enumerate(records):
                for v in as_values(r.get(col.name), col.sep):
                    j = index.get(clean_category(v))
                    if j is not None:
                        out[i, j] = 1.0
            offset += col.size
        return out

    def encode(self, users: Sequence[Mapping], items: Sequence[Mapping]) -> dict[str, np.ndarray]:
        """Head inputs for aligned user and item records.

        Returns:
            ``{"ids": int32 [n, F], "multi_hot": float32 [n, G]}``.
        """
        ids = np.concatenate(
            [self.encode_entity("user", users), self.encode_entity("item", items)], axis=1
        )
        multi_hot = np.concatenate(
            [self.encode_multi_hot("user", users), self.encode_multi_hot("item", items)], axis=1
        )
        return {"ids": ids, "multi_hot": multi_hot}

    def to_json(self) -> dict:
        return {"columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, data: Mapping) -> FeatureSpec:
        """Raises: ValueError for the features.json of artifacts before the dataset spec."""
        if "columns" not in data:
            raise ValueError(
                "features.json has no 'columns': the artifact predates the dataset spec; "
                "retrain it with `make train` (or `python -m training --config SPEC`)"
            )
        return cls(tuple(Column.from_json(c) for c in data["columns"]))


def _pair(value: Sequence | None) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class ColumnDecl:
    """What the spec declares of a column before fitting (see ``training.spec.ColumnSpec``).

    Attributes:
        quantiles: numeric: ``k`` of ``"quantile:k"`` (edges fitted), else 0.
        edges: numeric: explicit edges.
        valid_range: numeric: the spec's ``range`` of valid values, or None.
    """

    name: str
    entity: str
    kind: str
    mlp: bool = True
    min_count: int = 1
    max_size: int | None = None
    prefix: int = 0
    sep: str | None = None
    edges: tuple[float, ...] = ()
    quantiles: int = 0
    valid_range: tuple[float, float] | None = None


def _vocab(values: Iterable[str | None], min_count: int, max_size: int | None) -> tuple[str, ...]:
    counts = Counter(v for v in values if v is not None)
    kept = [v for v, n in counts.items() if n >= min_count]
    if max_size is not None and len(kept) > max_size:
        kept = sorted(kept, key=lambda v: (-counts[v], v))[:max_size]
    return tuple(sorted(kept))


def _fit(decl: ColumnDecl, records: Sequence[Mapping]) -> Column:
    values = [r.get(decl.name) for r in records]
    vocab: tuple[str, ...] = ()
    edges = decl.edges
    if decl.kind == "categorical":
        vocab = _vocab(
            (clean_category(v, decl.prefix or None) for v in values), decl.min_count, decl.max_size
        )
    elif decl.kind == "multi_categorical":
        flat = (clean_category(x) for v in values for x in as_values(v, decl.sep))
        vocab = _vocab(flat, decl.min_count, decl.max_size)
    seen = None
    if decl.kind == "numeric":
        numbers = np.array([x for x in map(as_number, values) if x is not None], dtype=np.float64)
        if numbers.size:
            seen = (float(numbers.min()), float(numbers.max()))
        if decl.quantiles and numbers.size:
            qs = np.quantile(numbers, np.linspace(0, 1, decl.quantiles + 1)[1:-1])
            edges = tuple(float(e) for e in np.unique(qs))
    return Column(
        decl.name,
        decl.entity,
        decl.kind,
        decl.mlp and decl.kind != "text",
        vocab,
        edges,
        decl.prefix,
        decl.sep,
        decl.valid_range,
        seen,
    )


def fit_feature_spec(
    decls: Sequence[ColumnDecl], users: Sequence[Mapping], items: Sequence[Mapping]
) -> FeatureSpec:
    """Vocabularies and quantile edges from the users and items seen in ID train.

    Args:
        decls: the declared columns of both entities (ids are added first on each side).
        users: records of the users that occur in the training ratings.
        items: records of the items that occur in the training ratings.
    """
    columns = []
    for entity, records in (("user", users), ("item", items)):
        id_decl = ColumnDecl(ID_COLUMNS[entity], entity, "categorical")
        for decl in [id_decl, *(d for d in decls if d.entity == entity)]:
            columns.append(_fit(decl, records))
    return FeatureSpec(tuple(columns))
