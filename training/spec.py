"""The dataset spec: one TOML file that declares everything dataset-specific.

Tables and role columns, typed feature columns, text templates, the rating scale and the
ID/OOD split. Read with ``tomllib``, validated with pydantic, so an error names the file and
the key (``books.toml: items.columns.year.buckets: ...``). Presets ship as spec files in
``training/presets/`` (``--preset movielens-100k``). A minimal spec::

    name = "books"
    [ratings]
    path = "ratings.parquet"     # .parquet, .csv, .tsv, .jsonl or .jsonl.gz (relative to the spec)
    user = "reader"
    item = "isbn"
    rating = "score"
    [rating_scale]
    min = 0
    max = 10
    [items]
    path = "books.csv"
    key = "isbn"
    [items.columns]
    title = "text"
    [text]
    user = "reader {reader}"
    item = "{title}"
    [split]
    kind = "cold_items"

Column types (RecBole / Ludwig / Merlin conventions):

* ``categorical``: a vocabulary fitted on ID train (``min_count``, ``max_size``), unknown
  values read the OOV slot 0; ``prefix = n`` keeps the first n characters (zip code -> area).
* ``multi_categorical``: a list column or a ``sep``-delimited string; multi-hot over a capped
  vocabulary.
* ``numeric``: bucketized with explicit ``buckets`` edges or ``"quantile:k"`` (train
  quantiles); the bucket is the MLP input, the raw value goes into the text. ``range =
  [lo, hi]`` declares the valid values (age ``[0, 120]``): data outside is refused, a
  request outside is a 422 naming the field; without it, an answer warns when a value lies
  far outside what training saw.
* ``text``: only read by the templates.

Every non-text column feeds the embedding MLP unless ``mlp = false``; the ids always do.

Reading the files (``model/table_files.py``): each table takes ``encoding`` (default UTF-8,
or what a byte-order mark says), ``delimiter`` and ``decimal`` (CSV/TSV); the top-level
``na_values`` (default ``[""]``, written before the first ``[section]``) lists the cell texts
that mean a missing value in every table, so ``NA`` (Namibia) stays a value unless listed;
ids are never missing because of their spelling. Times follow ``model/timestamps.py``.
"""

from __future__ import annotations

import codecs
import re
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.features import ColumnDecl
from model.table_files import DEFAULT_NA_VALUES, TableOptions, check_options
from model.templates import ViewSet, views_from_templates
from model.timestamps import TimestampError, to_seconds

PRESETS_DIR = Path(__file__).with_name("presets")
READERS = ("files", "movielens-packaged", "movielens-grouplens", "movielens-tfds", "amazon")
ColumnType = Literal["categorical", "multi_categorical", "numeric", "text"]
_QUANTILE = re.compile(r"quantile:([1-9][0-9]*)")


class SpecError(ValueError):
    """A dataset spec is missing, not TOML, or not valid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One typed column of the users or items table."""

    type: ColumnType
    mlp: bool = Field(True, description="feed the embedding MLP (text columns never do)")
    min_count: int = Field(1, ge=1, description="categorical: rarer values read the OOV slot")
    max_size: int | None = Field(None, ge=1, description="vocabulary cap (most common first)")
    prefix: int | None = Field(None, ge=1, description="categorical: keep the first n chars")
    sep: str | None = Field(None, min_length=1, description="multi_categorical: delimiter")
    buckets: list[float] | str | None = Field(None, description="numeric: edges or quantile:k")
    range: tuple[float, float] | None = Field(
        None, description="numeric: the valid values [lo, hi] (data and requests outside fail)"
    )

    @model_validator(mode="after")
    def _fits_type(self) -> ColumnSpec:
        allowed = {
            "categorical": {"min_count", "max_size", "prefix"},
            "multi_categorical": {"min_count", "max_size", "sep"},
            "numeric": {"buckets", "range"},
            "text": set(),
        }[self.type]
        set_keys = {k for k in self.model_fields_set if k not in ("type", "mlp")}
        extra = sorted(set_keys - allowed)
        if extra:
            raise ValueError(
                f"{', '.join(extra)} does not apply to a {self.type} column "
                f"(it takes {', '.join(sorted(allowed)) or 'no options'})"
            )
        if self.type == "numeric":
            if self.buckets is None:
                raise ValueError(
                    "a numeric column needs buckets: a list of edges, e.g. [18, 25, 35], or "
                    '"quantile:4"'
                )
            if isinstance(self.buckets, str) and not _QUANTILE.fullmatch(self.buckets):
                raise ValueError(f'buckets {self.buckets!r}: expected "quantile:<k>" or a list')
            edges = self.buckets if isinstance(self.buckets, list) else None
            if edges is not None and (
                not edges or any(b >= c for b, c in zip(edges, edges[1:], strict=False))
            ):
                raise ValueError(f"buckets {edges}: expected increasing edges")
            if self.range is not None and not self.range[0] < self.range[1]:
                raise ValueError(f"range {list(self.range)}: expected [lo, hi] with lo < hi")
        return self

    @property
    def feeds_mlp(self) -> bool:
        return self.mlp and self.type != "text"

    @property
    def quantiles(self) -> int | None:
        """k of ``"quantile:k"``; None for explicit edges."""
        if isinstance(self.buckets, str):
            return int(_QUANTILE.fullmatch(self.buckets).group(1))  # type: ignore[union-attr]
        return None


class TableFile(_Strict):
    """Where a table lives: ``path`` (relative to the spec file), and how to read it when the
    file does not say (``model/table_files.py``)."""

    path: str | None = None
    format: Literal["parquet", "csv", "tsv", "jsonl"] | None = None
    encoding: str | None = Field(
        None,
        description="text files: a codec such as cp1252 (Excel's CSV on Windows) or latin-1; "
        "default UTF-8, or what a byte-order mark says (UTF-8, UTF-16, UTF-32)",
    )
    delimiter: str | None = Field(
        None,
        description="CSV/TSV: one character; default ',' (CSV) or tab (TSV), or the one of "
        "';', tab, '|' the header line uses when it has no default one",
    )
    decimal: Literal[".", ","] = Field(".", description="CSV/TSV: the decimal mark")

    @model_validator(mode="after")
    def _readable(self) -> TableFile:
        check_options(self.encoding, self.delimiter, self.decimal)
        return self


class RatingsSpec(TableFile):
    """The ratings table and the names of its role columns."""

    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    timestamp: str | None = Field(
        None,
        description="the time column: seconds since the epoch or ISO 8601 dates, within "
        "[1970-01-01, 2262-04-11) (model/timestamps.py)",
    )


class EntitySpec(TableFile):
    """An optional users or items table: its key column and its typed columns."""

    key: str | None = Field(None, description="default: the ratings table's role column")
    columns: dict[str, ColumnSpec] = Field(default_factory=dict)

    @field_validator("columns", mode="before")
    @classmethod
    def _short_types(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class RatingScale(_Strict):
    """The ratings' range: data outside is refused, answers are clipped to it, and the
    artifact stores it once (``manifest["rating_range"]``)."""

    min: float
    max: float

    @property
    def bounds(self) -> tuple[float, float]:
        """``(min, max)`` as floats."""
        return float(self.min), float(self.max)

    @model_validator(mode="after")
    def _ordered(self) -> RatingScale:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class TextSpec(_Strict):
    """``str.format`` templates over the entity's columns; ``user`` + ``item`` (factored
    views, the default) or ``pair`` (one sentence per user-item pair, LIFT style)."""

    user: str | None = None
    item: str | None = None
    pair: str | None = None

    @model_validator(mode="after")
    def _one_style(self) -> TextSpec:
        factored = self.user is not None or self.item is not None
        if factored and self.pair is not None:
            raise ValueError("give either user + item templates or one pair template, not both")
        if not factored and self.pair is None:
            raise ValueError("give user and item templates (or a pair template)")
        if factored and (self.user is None or self.item is None):
            raise ValueError("factored views need both a user and an item template")
        return self


class Within(_Strict):
    """Restrict the split to ratings of items whose ``column`` has any of ``values``."""

    column: str
    values: list[str] = Field(min_length=1)


class SplitSpec(_Strict):
    """How ratings become ID train/val/test and an OOD test set.

    * ``random``: ID ratings only (no OOD test set);
    * ``time``: ratings at or after ``cutoff`` (an ISO 8601 date, UTC unless it has an
      offset), or the latest
      ``ood_fraction`` of ratings, are OOD; OOD groups are months;
    * ``item_attribute``: an item is ID when its ``column`` has ANY of ``in_distribution``;
      OOD groups are the column's values;
    * ``cold_items``: a seeded ``ood_fraction`` of the items (and all their ratings) are OOD.
    """

    kind: Literal["random", "time", "item_attribute", "cold_items"] = "random"
    column: str | None = None
    in_distribution: list[str] | None = None
    cutoff: str | None = None
    ood_fraction: float | None = Field(None, gt=0, lt=1)
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="early stopping needs it")
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    min_group: int = Field(200, ge=1, description="smallest OOD group that gets a report row")
    within: Within | None = None
    expect: dict[str, int] | None = Field(
        None, description="counts the split must have (id_ratings, ood_ratings, ...)"
    )

    @model_validator(mode="after")
    def _kind_options(self) -> SplitSpec:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1 (the rest trains)")
        need: dict[str, tuple[str, ...]] = {
            "random": (),
            "time": (),
            "item_attribute": ("column", "in_distribution"),
            "cold_items": ("ood_fraction",),
        }
        missing = [k for k in need[self.kind] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"split kind {self.kind!r} needs {', '.join(missing)}")
        if self.kind == "time" and (self.cutoff is None) == (self.ood_fraction is None):
            raise ValueError("split kind 'time' needs exactly one of cutoff or ood_fraction")
        if self.cutoff is not None:
            try:
                to_seconds(self.cutoff)
            except TimestampError as e:
                raise ValueError(f"cutoff: {e}") from None
        unused = {
            "random": ("column", "in_distribution", "cutoff", "ood_fraction"),
            "time": ("column", "in_distribution"),
            "item_attribute": ("cutoff", "ood_fraction"),
            "cold_items": ("column", "in_distribution", "cutoff"),
        }[self.kind]
        given = [k for k in unused if getattr(self, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} does not apply to split kind {self.kind!r}")
        return self


class DatasetSpec(_Strict):
    """A whole spec file (see the module docstring)."""

    name: str = Field(min_length=1)
    reader: Literal[READERS] = "files"  # type: ignore[valid-type]
    ratings: RatingsSpec = Field(default_factory=RatingsSpec)
    rating_scale: RatingScale
    users: EntitySpec = Field(default_factory=EntitySpec)
    items: EntitySpec = Field(default_factory=EntitySpec)
    text: TextSpec
    split: SplitSpec = Field(default_factory=SplitSpec)
    na_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NA_VALUES),
        description="cell texts that mean a missing value in every table file (ids never "
        'are); default [""], so NA, null, None and n/a are values unless listed',
    )
    source: Path | None = Field(None, exclude=True, description="the file this was read from")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if self.reader == "files" and not self.ratings.path:
            raise ValueError("ratings.path: the 'files' reader needs the ratings file's path")
        for entity in ("users", "items"):
            table: EntitySpec = getattr(self, entity)
            if table.columns and not table.path and self.reader == "files":
                raise ValueError(f"{entity}.path: columns are declared but no file is named")
            clash = sorted({"user_id", "item_id"} & set(table.columns))
            if clash:
                raise ValueError(
                    f"{entity}.columns: {clash} is reserved for the id; the key column is "
                    f"named by {entity}.key"
                )
        for entity, id_name in (("users", "user_id"), ("items", "item_id")):
            key = self.key(entity)
            if key in getattr(self, entity).columns:
                raise ValueError(
                    f"{entity}.columns: {key!r} is the table's key; the id is always an input "
                    f"of the model and templates read it as {{{id_name}}} (or {{{key}}}): "
                    "remove it from the columns"
                )
        shared = sorted(set(self.users.columns) & set(self.items.columns))
        if self.text.pair is not None and shared:
            fields = {f for f in template_fields(self.text.pair)}
            if fields & set(shared):
                raise ValueError(
                    f"text.pair: {sorted(fields & set(shared))} is a column of both users and "
                    "items; rename one of them"
                )
        for view in ("user", "item", "pair"):
            template = getattr(self.text, view)
            if template is None:
                continue
            allowed = self.placeholders(view)
            unknown = [f for f in template_fields(template) if f not in allowed]
            if unknown:
                raise ValueError(
                    f"text.{view}: placeholder {{{unknown[0]}}} is not a declared column; "
                    f"the {view} template can use {', '.join(sorted(allowed))}"
                )
        if self.split.kind == "item_attribute":
            col = self.split.column
            if col not in self.items.columns:
                raise ValueError(
                    f"split.column {col!r} is not a column of items "
                    f"(declared: {', '.join(self.items.columns) or 'none'})"
                )
        if self.split.within and self.split.within.column not in self.items.columns:
            raise ValueError(
                f"split.within.column {self.split.within.column!r} is not an item column"
            )
        if self.split.kind == "time" and self.ratings.timestamp is None:
            raise ValueError("split kind 'time' needs ratings.timestamp (the time column)")
        return self

    # -- names ----------------------------------------------------------------------------

    def key(self, entity: str) -> str:
        """The key column of ``"users"`` / ``"items"`` in its own file."""
        table: EntitySpec = getattr(self, entity)
        return table.key or (self.ratings.user if entity == "users" else self.ratings.item)

    def placeholders(self, view: str) -> set[str]:
        """Names a template of ``view`` may use: the ids (by ``user_id``/``item_id`` or the
        role column's name) and the declared columns of the entity (both for ``pair``)."""
        names: set[str] = set()
        if view in ("user", "pair"):
            names |= {"user_id", self.ratings.user, *self.users.columns}
        if view in ("item", "pair"):
            names |= {"item_id", self.ratings.item, *self.items.columns}
        return names

    def canonical_template(self, view: str) -> str:
        """The template of ``view`` with the role columns' names replaced by ``user_id`` and
        ``item_id`` (the names the entity records use)."""
        template = getattr(self.text, view)
        rename = {self.ratings.user: "user_id", self.ratings.item: "item_id"}
        out = []
        for literal, name, _, _ in string.Formatter().parse(template):
            out.append(literal.replace("{", "{{").replace("}", "}}"))
            if name is not None:
                declared = name in self._columns_named(view)
                out.append("{" + (name if declared else rename.get(name, name)) + "}")
        return "".join(out)

    def _columns_named(self, view: str) -> set[str]:
        cols: set[str] = set()
        if view in ("user", "pair"):
            cols |= set(self.users.columns)
        if view in ("item", "pair"):
            cols |= set(self.items.columns)
        return cols

    def column_decls(self) -> tuple[ColumnDecl, ...]:
        """The declared columns for ``model.features.fit_feature_spec`` (users, then items)."""
        out = []
        for entity, table in (("user", self.users), ("item", self.items)):
            for name, col in table.columns.items():
                quantiles = col.quantiles or 0
                edges = tuple(col.buckets) if isinstance(col.buckets, list) else ()
                out.append(
                    ColumnDecl(
                        name=name,
                        entity=entity,
                        kind=col.type,
                        mlp=col.feeds_mlp,
                        min_count=col.min_count,
                        max_size=col.max_size,
                        prefix=col.prefix or 0,
                        sep=col.sep,
                        edges=edges,
                        quantiles=quantiles,
                        valid_range=col.range,
                    )
                )
        return tuple(out)

    def views(self) -> ViewSet:
        """The text views of the templates (ids renamed to ``user_id`` / ``item_id``)."""
        if self.text.pair is not None:
            return views_from_templates(pair=self.canonical_template("pair"))
        return views_from_templates(
            user=self.canonical_template("user"), item=self.canonical_template("item")
        )

    def summary(self) -> dict[str, Any]:
        """The resolved spec for the artifact's manifest: columns and types, rating scale,
        split (what serving, the drift demo and ``GET /v1/model`` read)."""
        return {
            "name": self.name,
            "rating_scale": [self.rating_scale.min, self.rating_scale.max],
            "columns": {
                entity: {name: col.type for name, col in table.columns.items()}
                for entity, table in (("user", self.users), ("item", self.items))
            },
            "keys": {"user": self.ratings.user, "item": self.ratings.item},
            "split": self.split.model_dump(exclude_none=True),
            "na_values": list(self.na_values),  # the batch CLI reads files as training did
        }

    def table_options(self, table: TableFile) -> TableOptions:
        """How to read ``table``'s file: its format, encoding, delimiter and decimal mark, and
        the spec's ``na_values``."""
        return TableOptions(
            table.format, table.encoding, table.delimiter, table.decimal, tuple(self.na_values)
        )

    def path_of(self, table: TableFile) -> Path | None:
        """A table's path, relative paths taken from the spec file's directory."""
        if table.path is None:
            return None
        path = Path(table.path).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path


def template_fields(template: str) -> list[str]:
    """Placeholder names of a ``str.format`` template, in order (``{a.b}`` -> ``a``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template {template!r} is not a valid str.format template: {e}") from None
    out = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(f"template {template!r}: every placeholder needs a column name")
        if not name.isidentifier() or spec or conv:
            raise ValueError(
                f"template {template!r}: placeholder {{{name}{'!' + conv if conv else ''}"
                f"{':' + spec if spec else ''}}} must be a plain column name such as {{title}} "
                "(values are rendered as text; missing ones as 'unknown')"
            )
        out.append(name)
    return out


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after",)) or "(top level)"


def parse_spec(data: dict[str, Any], source: Path | None = None) -> DatasetSpec:
    """Validate a spec's parsed TOML.

    Raises:
        SpecError: naming ``source`` and the key of each problem.
    """
    try:
        return DatasetSpec.model_validate({**data, "source": source})
    except ValidationError as e:
        where = str(source) if source else "dataset spec"
        problems = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling; see training/spec.py for the keys)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{where}: {_where(err['loc'])}: {msg}")
        raise SpecError("\n".join(problems)) from None


def load_spec(path_or_preset: str | Path) -> DatasetSpec:
    """A spec from a TOML file, or a preset by name (``training/presets/<name>.toml``).

    Raises:
        SpecError: the file does not exist and is no preset, is not TOML (line named), or
            is not a valid spec (key named).
    """
    path = Path(path_or_preset).expanduser()
    if not path.is_file():
        preset = PRESETS_DIR / f"{path_or_preset}.toml"
        if preset.is_file():
            path = preset
        else:
            raise SpecError(
                f"dataset spec {str(path_or_preset)!r} is neither a file nor a preset; presets: "
                f"{', '.join(preset_names())}. Draft a spec from your files with "
                "`python -m training init --ratings FILE [--users FILE] [--items FILE]`."
            )
    try:
        data = tomllib.loads(spec_text(path))
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    return parse_spec(data, path.resolve())


def spec_text(path: Path) -> str:
    """A spec file's text: UTF-8 (TOML's encoding), with or without the byte-order mark some
    editors write; UTF-16 with its mark (a spreadsheet's or PowerShell's export) too.

    Raises:
        SpecError: bytes that are not UTF-8, naming the line.
    """
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecError(
            f"{path}: line {line} is not UTF-8 text (byte {data[e.start : e.end]!r}); a TOML "
            "file is UTF-8: save it as UTF-8 (a data file's own encoding is set with its "
            "table's encoding key)"
        ) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
