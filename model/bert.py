"""BERT-family text encoder (MiniLM, BERT) as a pure Flax linen module, eval mode only.

The module reproduces Hugging Face ``BertModel`` with ``output_hidden_states=True``: its
``hidden_states`` are the residual stream after each of the N layers (HF's
``hidden_states[1:]``). There is no dropout and no pooler; token type ids are all zero, as in
single-segment inputs.

Parameter tree (``params`` collection)::

    embeddings/{word_embeddings, position_embeddings, token_type_embeddings}/embedding
    embeddings/layer_norm/{scale, bias}
    layers_<i>/attention/{query, key, value, out}/{kernel, bias}
    layers_<i>/attention_layer_norm/{scale, bias}
    layers_<i>/mlp/{wi, wo}/{kernel, bias}
    layers_<i>/mlp_layer_norm/{scale, bias}

``bert_params_from_hf`` fills it from Hugging Face tensor names, with or without ``bert.``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model.hf_checkpoint import CheckpointError, take
from model.packing import attention_allowed
from model.pooling import EncoderOutput

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclass(frozen=True)
class BertConfig:
    """Shape and numerics of a BERT-family encoder (the fields of HF ``config.json``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; expected one of "
                f"{sorted(ACTIVATIONS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> BertConfig:
        """Build from a parsed Hugging Face ``config.json`` of a BERT-family model.

        Raises:
            CheckpointError: a required field is missing or the model is not absolute-position
                BERT.
        """
        required = {
            "vocab_size": "vocab_size",
            "hidden_size": "hidden_size",
            "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads",
            "intermediate_size": "intermediate_size",
        }
        missing = [hf for hf in required.values() if hf not in cfg]
        if missing:
            raise CheckpointError(
                f"config.json lacks {', '.join(missing)} (expected a BERT-family config)"
            )
        kind = cfg.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise CheckpointError(
                f"config.json has position_embedding_type={kind!r}; only 'absolute' is supported"
            )
        try:
            return cls(
                **{ours: int(cfg[hf]) for ours, hf in required.items()},
                max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
                type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                hidden_act=str(cfg.get("hidden_act", "gelu")),
            )
        except ValueError as e:
            raise CheckpointError(f"config.json: {e}") from None

    @classmethod
    def tiny(cls) -> BertConfig:
        """A few-thousand-parameter encoder for tests."""
        return cls(
            vocab_size=128,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )

    @classmethod
    def minilm_l6(cls) -> BertConfig:
        """sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, name=name)


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """``input_ids`` int32 ``[batch, length]``; ``positions`` int32 ``[batch, length]`` (a
        packed row's per-text positions) or None (``0 .. length - 1``)."""
        cfg = self.config
        length = input_ids.shape[1]
        word = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
        position_table = self.param(
            "position_embeddings",
            nn.initializers.normal(0.02),
            (cfg.max_position_embeddings, cfg.hidden_size),
        )
        if positions is None:
            # jnp.take with an arange (not a static slice) keeps `length` symbolic under
            # jax.export.
            position_rows = jnp.take(position_table, jnp.arange(length), axis=0)[None]
        else:
            position_rows = jnp.take(position_table, positions, axis=0)  # [batch, length, d]
        token_type_table = self.param(
            "token_type_embeddings",
            nn.initializers.normal(0.02),
            (cfg.type_vocab_size, cfg.hidden_size),
        )
        x = word + position_rows + token_type_table[0]  # [batch, length, d]
        return _layer_norm(cfg, "layer_norm")(x)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """Multi-head self-attention.

        Args:
            x: ``[batch, length, d]``.
            bias: ``[batch, 1, 1, length]`` additive key mask (0 or a large negative value), or
                ``[batch, 1, length, length]`` for packed rows.
        """
        cfg = self.config
        batch, length = x.shape[0], x.shape[1]

        def heads(name: str) -> jax.Array:
            y = nn.Dense(cfg.hidden_size, name=name)(x)  # [batch, length, d]
            return y.reshape(batch, length, cfg.num_heads, cfg.head_dim)

        q, k, v = heads("query"), heads("key"), heads("value")  # [batch, length, heads, dh]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.head_dim).astype(np.float32)
        weights = jax.nn.softmax(scores + bias, axis=-1)  # [batch, heads, q_len, k_len]
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [batch, length, heads, dh]
        context = context.reshape(batch, length, cfg.hidden_size)  # [batch, length, d]
        return nn.Dense(cfg.hidden_size, name="out")(context)


class BertMlp(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = nn.Dense(cfg.intermediate_size, name="wi")(x)  # [batch, length, intermediate]
        h = ACTIVATIONS[cfg.hidden_act](h)
        return nn.Dense(cfg.hidden_size, name="wo")(h)  # [batch, length, d]


class BertLayer(nn.Module):
    """Post-layer-norm transformer block, as in BERT."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        cfg = self.config
        x = _layer_norm(cfg, "attention_layer_norm")(
            x + BertSelfAttention(cfg, name="attention")(x, bias)
        )
        return _layer_norm(cfg, "mlp_layer_norm")(x + BertMlp(cfg, name="mlp")(x))


class BertEncoder(nn.Module):
    """BERT-family encoder returning every layer's hidden states.

    ``__call__(input_ids, mask)`` takes int32 ``[batch, length]`` token ids and a 1/0 mask of
    real tokens and returns an :class:`EncoderOutput` with ``num_layers`` arrays
    ``[batch, length, d]``, equal to HF ``output_hidden_states[1:]``. For packed rows
    (``model.packing``) ``mask`` holds the segment ids and ``positions`` each token's index in
    its text: a text attends only to itself.
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, mask: jax.Array, positions: jax.Array | None = None
    ) -> EncoderOutput:
        cfg = self.config
        x = BertEmbeddings(cfg, name="embeddings")(input_ids, positions)  # [batch, length, d]
        # A finite large negative (not -inf): an all-padding row gives uniform weights, not NaN.
        if positions is None:
            allowed = mask[:, None, None, :] > 0  # [b, 1, 1, l]
        else:
            allowed = attention_allowed(mask)  # [b, 1, l, l]
            mask = (mask > 0).astype(jnp.int32)
        bias = jnp.where(allowed, 0.0, -1e9).astype(x.dtype)
        hidden_states = []
        for i in range(cfg.num_layers):
            x = BertLayer(cfg, name=f"layers_{i}")(x, bias)  # [batch, length, d]
            hidden_states.append(x)
        return EncoderOutput(hidden_states=tuple(hidden_states), mask=mask)


def _strip_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF BertModel saves ``embeddings.*``; BertFor* heads save ``bert.embeddings.*``."""
    if any(k.startswith("embeddings.") for k in tensors):
        return dict(tensors)
    return {k.removeprefix("bert."): v for k, v in tensors.items()}


def bert_params_from_hf(
    config: BertConfig, tensors: Mapping[str, np.ndarray], source: str | Path = "checkpoint"
) -> dict[str, Any]:
    """Map Hugging Face BERT tensors onto the :class:`BertEncoder` parameter tree.

    Args:
        config: the encoder config (from the same checkpoint's ``config.json``).
        tensors: HF-named float32 arrays (``embeddings.word_embeddings.weight``,
            ``encoder.layer.N.attention.self.query.weight``, ...), optionally ``bert.``-prefixed.
        source: named in error messages (the checkpoint directory).

    Returns:
        ``{"params": ...}`` ready for ``BertEncoder(config).apply``.

    Raises:
        CheckpointError: a tensor is missing or its shape disagrees with ``config``.
    """
    t = _strip_prefix(tensors)
    d, ff = config.hidden_size, config.intermediate_size

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(take(t, name, shape, source=source), dtype=np.float32)

    def dense(prefix: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
        # torch Linear stores [out, in]; flax Dense wants kernel [in, out].
        return {
            "kernel": get(f"{prefix}.weight", (n_out, n_in)).T.copy(),
            "bias": get(f"{prefix}.bias", (n_out,)),
        }

    def layer_norm(prefix: str) -> dict[str, np.ndarray]:
        # Old BERT checkpoints call them gamma/beta.
        return {
            "scale": np.asarray(
                take(t, f"{prefix}.weight", (d,), source=source, aliases=(f"{prefix}.gamma",))
            ),
            "bias": np.asarray(
                take(t, f"{prefix}.bias", (d,), source=source, aliases=(f"{prefix}.beta",))
            ),
        }

    params: dict[str, Any] = {
        "embeddings": {
            "word_embeddings": {
                "embedding": get("embeddings.word_embeddings.weight", (config.vocab_size, d))
            },
            "position_embeddings": get(
                "embeddings.position_embeddings.weight", (config.max_position_embeddings, d)
            ),
            "token_type_embeddings": get(
                "embeddings.token_type_embeddings.weight", (config.type_vocab_size, d)
            ),
            "layer_norm": layer_norm("embeddings.LayerNorm"),
        }
    }
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        params[f"layers_{i}"] = {
            "attention": {
                "query": dense(f"{p}.attention.self.query", d, d),
                "key": dense(f"{p}.attention.self.key", d, d),
                "value": dense(f"{p}.attention.self.value", d, d),
                "out": dense(f"{p}.attention.output.dense", d, d),
            },
            "attention_layer_norm": layer_norm(f"{p}.attention.output.LayerNorm"),
            "mlp": {
                "wi": dense(f"{p}.intermediate.dense", d, ff),
                "wo": dense(f"{p}.output.dense", ff, d),
            },
            "mlp_layer_norm": layer_norm(f"{p}.output.LayerNorm"),
        }
    extra = f"encoder.layer.{config.num_layers}.attention.self.query.weight"
    if extra in t:
        raise CheckpointError(
            f"{source}: tensor {extra} exists but config.json says num_hidden_layers="
            f"{config.num_layers}; the config and the weights disagree"
        )
    return {"params": params}
