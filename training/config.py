"""Training configuration: one frozen dataclass with named presets.

The MovieLens-100K default (the ``movielens-100k`` preset) runs with::

    python -m training --output-dir artifacts        # or: make train

and a user's own data with ``python -m training --config spec.toml`` (``training.spec``),

and the tiny preset (tests, smoke runs) with::

    python -m training --tiny --output-dir /tmp/levi-tiny
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model.head_config import HeadConfig

# Every method of the report (paper Tables 1, 5, 14), in report order.
METHODS: tuple[str, ...] = (
    "global_mean",
    "biases",
    "mlp",
    "multihead_mlp",
    "intermediates",
    "linear_probe",
    "mlp_lp_ensemble",
    "levi",
)
# Methods that train a LeviHead (the rest are closed form or post hoc).
TRAINED_METHODS: tuple[str, ...] = ("mlp", "multihead_mlp", "intermediates", "linear_probe", "levi")
# HeadConfig fields a training run may set (``TrainConfig.head``); their defaults are
# HeadConfig's, the one home of the head's sizes.
HEAD_FIELDS: tuple[str, ...] = (
    "embed_dim",
    "mlp_dims",
    "adapter_hidden",
    "dropout",
    "factor_dim",
    "id_biases",
)
_HEAD_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(HeadConfig) if f.name in HEAD_FIELDS
}
# Backbone tuning before LEVI (``training/tuning.py``) and the report row of each kind: the
# paper's fine-tuning baselines (Table 1: FT, HT, LPFT; Table 4: LoRA).
TUNING_KINDS: tuple[str, ...] = ("none", "half", "lora", "full", "lpft")
TUNING_ROWS: dict[str, str] = {"full": "ft", "half": "ht", "lora": "lora", "lpft": "lpft"}


@dataclass(frozen=True)
class TuningConfig:
    """The tuning stage: the backbone's selected parameters trained with a small regression
    head (``model.text_regressor``) on ID train, early-stopped on ID validation, before LEVI
    reads the tuned backbone as its text view.

    Attributes:
        kind: ``none`` (the frozen pre-trained backbone), ``half`` (the top half of the
            transformer layers, HT), ``lora`` (LoRA adapters on every attention and
            feed-forward projection of the layers from ``lora_from_layer``, merged into the
            weights afterwards), ``full`` (every parameter, embeddings included: FT), ``lpft``
            (the head trained on the frozen encoder first, then ``full``: LP-FT).
        steps: optimizer steps at most.
        text_fraction: each step samples this share of every view's training texts and
            trains on the ID train pairs whose texts are all sampled (about
            ``text_fraction ** n_views`` of them): each distinct text runs through the tuned
            layers once per step, however many of the step's pairs read it.
        eval_every: steps between validations (ID validation RMSE; early stopping).
        patience: validations without improvement before stopping (best parameters kept).
        lr: Adam learning rate of the encoder's parameters (``half``, ``full``, ``lpft``).
        lora_lr: of the LoRA adapters.
        head_lr: of the regression head.
        lora_rank, lora_alpha: the adapters' rank ``r`` and scale ``alpha`` (``alpha / r``).
        lora_from_layer: the first layer with adapters (0: all).
        head_hidden: the regression head's hidden width (0: linear).
        probe_epochs: ``lpft``: epochs of the head alone on the frozen encoder's features.
        seed: initialisation and sampling (one tuned backbone per run; the run's ``seeds``
            vary the heads trained on it).
        compare_frozen: with ``levi`` among the methods, also train LEVI on the pre-trained
            backbone (same seeds, learning rates and data) for the report's ``levi_frozen``
            row.
    """

    kind: str = "none"
    steps: int = 160
    text_fraction: float = 0.25
    eval_every: int = 40
    patience: int = 2
    lr: float = 2e-4
    lora_lr: float = 1e-3
    head_lr: float = 1e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_from_layer: int = 0
    head_hidden: int = 256
    probe_epochs: int = 8
    seed: int = 0
    compare_frozen: bool = True

    def __post_init__(self) -> None:
        if self.kind not in TUNING_KINDS:
            raise ValueError(
                f"backbone tuning {self.kind!r} unknown; expected one of {', '.join(TUNING_KINDS)}"
            )
        if not 0 < self.text_fraction <= 1:
            raise ValueError(f"tuning text_fraction must be in (0, 1], got {self.text_fraction}")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError("tuning steps and eval_every must be positive")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def row(self) -> str:
        """The report row of the tuned encoder with its head alone (``ft``, ``ht``, ...)."""
        return TUNING_ROWS[self.kind]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what `python -m training` produces.

    Attributes:
        dataset: the dataset spec: a preset name (``training/presets/<name>.toml``) or the
            path of a spec file; it declares the tables, columns, text views, rating scale
            and split.
        data_path, reader: replace the spec's ``ratings.path`` and ``reader``.
        split_seed: replaces the spec's ``split.seed`` (None: the spec's). One split;
            ``seeds`` vary the model init, dropout and batch order.
        feedback: a directory of the service's feedback logs (``LEVI_FEEDBACK_DIR``): their
            events join the ratings before the split, each once (``training.data.feedback``).
        catalog: a directory of the service's catalog logs (``LEVI_CATALOG_DIR``): the
            registered users and items join the entity tables, each once, with its latest
            record (``training.data.catalog``).
        backbone, checkpoint, max_length: the frozen text encoder (``model.backbone``);
            max_length None takes the checkpoint's own token limit (256 for the packaged
            MiniLM), a number may only lower it.
        methods: which rows of the report to compute (see ``METHODS``).
        seeds: model seeds; the report gives mean and std over them.
        lrs: Adam learning-rate grid; the best on ID validation is chosen per method.
        lr_on_first_seed: choose the learning rate on ``seeds[0]`` only and reuse it for the
            other seeds (saves two thirds of the search); False searches every seed.
        lr_probe_epochs: with ``lr_on_first_seed``, successive halving: every rate is trained
            this many epochs, the better half twice as many, ..., and the last one continues
            to early stopping (0: a full run per rate).
        batch_size: global batch, split over the devices of every process.
        data_shards: the ratings cut into this many shards (``training.data.shards``), each
            fed by one process's devices, ``batch_size / data_shards`` pairs of each shard a
            batch (``training.feed``); None: one per process. Batches depend on it, not on the
            processes: one process with ``data_shards`` N trains what N processes train.
        max_epochs, patience: early stopping on ID validation RMSE (best params kept).
        weight_decay: decoupled weight decay of ``optax.adamw``.
        item_oov_prob: during training, each pair's item features are replaced by the OOV
            id with this probability, so the OOV slot is trained and the head learns to rely
            on the item text for cold-start items (the OOD movies).
        head: overrides of ``model.head_config.HeadConfig``'s defaults, by field name (one of
            ``HEAD_FIELDS``: embed_dim, mlp_dims, adapter_hidden, dropout, factor_dim,
            id_biases); the defaults are HeadConfig's. :meth:`replace` takes these names
            directly too.
        factor_l2: per-example L2 on the biases and factors a batch reads
            (``model.head.collab_penalty``).
        steps_per_chunk: training steps per jitted ``lax.scan`` call (None: a whole epoch).
        eval_batch_size: rows per jitted evaluation call.
        encode_batch_size: texts per backbone call during precompute.
        bias_regs: L2 grid of the user+item bias baseline (tuned on ID validation).
        export: write the artifact at the end.
        tuning: the backbone tuning stage before LEVI (:class:`TuningConfig`; kind
            ``none``: LEVI reads the frozen pre-trained backbone).
    """

    dataset: str = "movielens-100k"
    data_path: str | None = None
    reader: str | None = None
    split_seed: int | None = None
    feedback: str | None = None
    catalog: str | None = None
    backbone: str = "minilm-l6"
    checkpoint: str | None = None
    max_length: int | None = None
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    lr_on_first_seed: bool = True
    lr_probe_epochs: int = 2
    batch_size: int = 200
    data_shards: int | None = None
    max_epochs: int = 8
    patience: int = 1
    weight_decay: float = 1e-4
    item_oov_prob: float = 0.1
    head: Mapping[str, Any] = field(default_factory=dict)
    factor_l2: float = 0.02
    steps_per_chunk: int | None = None
    eval_batch_size: int = 4096
    encode_batch_size: int = 128
    bias_regs: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
    export: bool = True
    tuning: TuningConfig = field(default_factory=TuningConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not self.lrs:
            raise ValueError("lrs must name at least one learning rate")
        if self.batch_size <= 0 or self.max_epochs <= 0:
            raise ValueError("batch_size and max_epochs must be positive")
        if self.data_shards is not None and self.data_shards < 1:
            raise ValueError(f"data_shards must be positive, got {self.data_shards}")
        unknown = sorted(set(self.head) - set(HEAD_FIELDS))
        if unknown:
            raise ValueError(f"head: unknown field(s) {unknown}; known: {', '.join(HEAD_FIELDS)}")

    @classmethod
    def default(cls) -> TrainConfig:
        """The movielens-100k preset, MiniLM-L6, all methods, 3 seeds."""
        return cls()

    @classmethod
    def tiny(cls) -> TrainConfig:
        """A few steps on a tiny model: smoke tests and the synthetic end-to-end test."""
        return cls(
            seeds=(0, 1),
            lrs=(1e-3, 1e-2),
            batch_size=32,
            max_epochs=3,
            patience=1,
            head={"embed_dim": 8, "mlp_dims": (32, 16), "adapter_hidden": 16, "factor_dim": 4},
            eval_batch_size=256,
            encode_batch_size=32,
            bias_regs=(1.0, 10.0),
        )

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes``; head fields (``HEAD_FIELDS``) go into ``head``, and
        ``tuning_<field>`` names into ``tuning`` (``tuning_kind="half"``)."""
        head = {k: changes.pop(k) for k in list(changes) if k in HEAD_FIELDS}
        if head:
            changes["head"] = {**changes.get("head", self.head), **head}
        named = [k for k in changes if k.startswith("tuning_")]
        tuning = {k.removeprefix("tuning_"): changes.pop(k) for k in named}
        if tuning:
            changes["tuning"] = dataclasses.replace(changes.get("tuning", self.tuning), **tuning)
        return dataclasses.replace(self, **changes)

    def head_fields(self) -> dict[str, Any]:
        """Every ``HEAD_FIELDS`` value of this run: HeadConfig's defaults with ``head``."""
        return {**_HEAD_DEFAULTS, **self.head}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, *fields: str) -> str:
        """Short hash of the named fields (all when none): keys checkpoints to a config."""
        data = self.to_json()
        if fields:
            data = {k: data[k] for k in fields}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
