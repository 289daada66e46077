"""T5 encoder (T5 1.0 and 1.1) as a pure Flax module with T5X parameter names.

The parameter tree follows t5x ``examples/t5/network.py`` so a T5X encoder tree maps one to
one::

    token_embedder/embedding                                   [vocab, d_model]
    encoder/relpos_bias/rel_embedding                          [heads, num_buckets]
    encoder/layers_{i}/pre_attention_layer_norm/scale          [d_model]
    encoder/layers_{i}/attention/{query,key,value}/kernel      [d_model, heads, d_kv]
    encoder/layers_{i}/attention/out/kernel                    [heads, d_kv, d_model]
    encoder/layers_{i}/pre_mlp_layer_norm/scale                [d_model]
    encoder/layers_{i}/mlp/wi/kernel (1.0) | wi_0, wi_1 (1.1)  [d_model, d_ff]
    encoder/layers_{i}/mlp/wo/kernel                           [d_ff, d_model]
    encoder/encoder_norm/scale                                 [d_model]

T5 specifics: RMS layer norm (no mean, no bias, float32 statistics), no biases, attention
logits without the 1/sqrt(d) scale, one bidirectional relative position bias shared by every
layer, ReLU feed-forward (1.0) or gated GELU with the tanh approximation (1.1). Per-layer
outputs are the residual stream after each layer, the last one after ``encoder_norm``, exactly
as Hugging Face's ``output_hidden_states[1:]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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


@dataclass(frozen=True)
class T5Config:
    """Shape of a T5 encoder (Hugging Face ``T5Config`` field names)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    num_heads: int = 8
    d_ff: int = 2048
    num_layers: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"  # "relu" (T5 1.0) or "gated-gelu" (T5 1.1)
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.feed_forward_proj not in ("relu", "gated-gelu"):
            raise CheckpointError(
                f"feed_forward_proj {self.feed_forward_proj!r} is not supported; expected "
                "'relu' (T5 1.0) or 'gated-gelu' (T5 1.1)"
            )

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj == "gated-gelu"

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> T5Config:
        """Build from a parsed Hugging Face ``config.json`` of a T5 model."""
        missing = [
            k
            for k in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers")
            if k not in cfg
        ]
        if missing:
            raise CheckpointError(f"config.json lacks T5 field(s) {missing}")
        proj = cfg.get("feed_forward_proj", "relu")
        if proj == "gated-gelu_new":  # some exports spell the 1.1 activation this way
            proj = "gated-gelu"
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["d_model"]),
            d_kv=int(cfg["d_kv"]),
            num_heads=int(cfg["num_heads"]),
            d_ff=int(cfg["d_ff"]),
            num_layers=int(cfg["num_layers"]),
            relative_attention_num_buckets=int(cfg.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(cfg.get("relative_attention_max_distance", 128)),
            feed_forward_proj=proj,
            layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-6)),
        )

    @classmethod
    def tiny(cls) -> T5Config:
        """A small T5 1.0 encoder for tests."""
        return cls(vocab_size=256, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)

    @classmethod
    def t5_small(cls) -> T5Config:
        """t5-small, the paper's backbone: 6 layers, d_model 512, 8 heads."""
        return cls()


def relative_position_bucket(
    relative_position: jax.Array, num_buckets: int = 32, max_distance: int = 128
) -> jax.Array:
    """Bidirectional T5 bucket of ``key_position - query_position`` (int32, same shape).

    Half the buckets are for positive offsets; within a half, small offsets get a bucket
    each and larger ones share logarithmically wider buckets up to ``max_distance``.
    """
    num_buckets //= 2
    bucket = (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, distance, large)


class RMSNorm(nn.Module):
    """T5 layer norm: scale * x / sqrt(mean(x^2) + eps), statistics in float32."""

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(x32**2, axis=-1, keepdims=True)
        return (x32 * jax.lax.rsqrt(variance + self.epsilon) * scale).astype(x.dtype)


class RelativePositionBias(nn.Module):
    """The shared position bias ``[1, heads, q_len, k_len]`` (T5X ``relpos_bias``)."""

    config: T5Config

    @nn.compact
    def __call__(self, length: int, positions: jax.Array | None = None) -> jax.Array:
        """``[1, heads, q, k]``, or ``[batch, heads, q, k]`` from per-token ``positions``
        ``[batch, length]`` (a packed row's positions within each text)."""
        cfg = self.config
        table = self.param(
            "rel_embedding",
            nn.initializers.normal(1.0),
            (cfg.num_heads, cfg.relative_attention_num_buckets),
        )  # [heads, buckets]
        if positions is None:
            positions = jnp.arange(length)
            relative = positions[None, :] - positions[:, None]  # [q, k]: key - query
        else:
            relative = positions[:, None, :] - positions[:, :, None]  # [b, q, k]
        buckets = relative_position_bucket(
            relative, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        bias = jnp.take(table, buckets, axis=1)  # [heads, (b,) q, k]
        return bias[None] if bias.ndim == 3 else jnp.moveaxis(bias, 0, 1)  # [b, heads, q, k]


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases or logit scaling (T5X ``attention``)."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        cfg = self.config
        proj = lambda name: nn.DenseGeneral((cfg.num_heads, cfg.d_kv), use_bias=False, name=name)
        q = proj("query")(x)  # [batch, length, heads, d_kv]
        k = proj("key")(x)
        v = proj("value")(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [batch, heads, q, k]
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [batch, length, heads, d_kv]
        return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, name="out")(out)


class MlpBlock(nn.Module):
    """ReLU (``wi``, ``wo``) or gated GELU (``wi_0``, ``wi_1``, ``wo``) feed-forward."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)
        if cfg.gated:
            gate = jax.nn.gelu(dense(cfg.d_ff, "wi_0")(x), approximate=True)  # "gelu_new"
            h = gate * dense(cfg.d_ff, "wi_1")(x)  # [batch, length, d_ff]
        else:
            h = jax.nn.relu(dense(cfg.d_ff, "wi")(x))  # [batch, length, d_ff]
        return dense(cfg.d_model, "wo")(h)


class EncoderLayer(nn.Module):
    """Pre-norm attention and feed-forward, each added to the residual stream."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        eps = self.config.layer_norm_epsilon
        h = RMSNorm(eps, name="pre_attention_layer_norm")(x)
        x = x + SelfAttention(self.config, name="attention")(h, bias)
        h = RMSNorm(eps, name="pre_mlp_layer_norm")(x)
        return x + MlpBlock(self.config, name="mlp")(h)  # [batch, length, d_model]


class Encoder(nn.Module):
    """The layer stack (T5X ``encoder``): relpos bias, ``layers_i``, ``encoder_norm``."""

    config: T5Config

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, positions: jax.Array | None = None
    ) -> tuple[jax.Array, ...]:
        """``mask``: 1/0 per token, or a packed row's segment ids with ``positions``."""
        cfg = self.config
        length = x.shape[1]
        position = RelativePositionBias(cfg, name="relpos_bias")(length, positions)
        # Padded keys get a large negative logit (float32 minimum, as the reference).
        if positions is None:
            keep = mask.astype(jnp.float32)[:, None, None, :]  # [b, 1, 1, k]
        else:
            keep = attention_allowed(mask).astype(jnp.float32)  # [b, 1, q, k]
        pad = (1.0 - keep) * jnp.finfo(jnp.float32).min
        bias = position + pad  # [batch, heads, q, k]
        states = []
        for i in range(cfg.num_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias)
            states.append(x)
        states[-1] = RMSNorm(cfg.layer_norm_epsilon, name="encoder_norm")(x)
        return tuple(states)


class T5Encoder(nn.Module):
    """``(input_ids [b, l] int32, mask [b, l] int32) -> EncoderOutput`` of every layer.

    For packed rows (``model.packing``) ``mask`` holds the segment ids and ``positions`` each
    token's index in its text: a text attends only to itself, at its own relative positions.
    """

    config: T5Config

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, mask: jax.Array, positions: jax.Array | None = None
    ) -> EncoderOutput:
        cfg = self.config
        x = nn.Embed(cfg.vocab_size, cfg.d_model, name="token_embedder")(input_ids)  # [b, l, d]
        states = Encoder(cfg, name="encoder")(x, mask, positions)
        if positions is not None:
            mask = (mask > 0).astype(jnp.int32)
        return EncoderOutput(hidden_states=states, mask=mask)


def t5_params_from_hf(
    config: T5Config, tensors: Mapping[str, np.ndarray], source: str | Path = "checkpoint"
) -> dict[str, Any]:
    """Map Hugging Face T5 (encoder) tensors to the T5X-named Flax tree.

    torch ``Linear`` weights are ``[out, in]``; Flax kernels are ``[in, out]`` (attention
    kernels reshaped to T5X's ``[d_model, heads, d_kv]`` and ``[heads, d_kv, d_model]``).

    Raises:
        CheckpointError: a tensor is missing or its shape disagrees with config.json.
    """
    c = config
    d, h, k, f = c.d_model, c.num_heads, c.d_kv, c.d_ff

    def get(name: str, shape: tuple[int, ...], aliases: tuple[str, ...] = ()) -> np.ndarray:
        return np.asarray(take(tensors, name, shape, source=source, aliases=aliases), np.float32)

    embedding = get("shared.weight", (c.vocab_size, d), aliases=("encoder.embed_tokens.weight",))
    rel = get(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (c.relative_attention_num_buckets, h),
    )
    encoder: dict[str, Any] = {"relpos_bias": {"rel_embedding": rel.T}}  # [heads, buckets]
    for i in range(c.num_layers):
        p = f"encoder.block.{i}."
        att = p + "layer.0.SelfAttention."
        qkv = {
            name: {"kernel": get(att + short + ".weight", (h * k, d)).T.reshape(d, h, k)}
            for name, short in (("query", "q"), ("key", "k"), ("value", "v"))
        }
        qkv["out"] = {"kernel": get(att + "o.weight", (d, h * k)).T.reshape(h, k, d)}
        ff = p + "layer.1.DenseReluDense."
        wis = ("wi_0", "wi_1") if c.gated else ("wi",)
        mlp = {w: {"kernel": get(ff + w + ".weight", (f, d)).T} for w in wis}
        mlp["wo"] = {"kernel": get(ff + "wo.weight", (d, f)).T}
        encoder[f"layers_{i}"] = {
            "pre_attention_layer_norm": {"scale": get(p + "layer.0.layer_norm.weight", (d,))},
            "attention": qkv,
            "pre_mlp_layer_norm": {"scale": get(p + "layer.1.layer_norm.weight", (d,))},
            "mlp": mlp,
        }
    if f"encoder.block.{c.num_layers}.layer.0.layer_norm.weight" in tensors:
        raise CheckpointError(
            f"{source}: the weights have more than the {c.num_layers} layers of config.json"
        )
    encoder["encoder_norm"] = {"scale": get("encoder.final_layer_norm.weight", (d,))}
    return {"params": {"token_embedder": {"embedding": embedding}, "encoder": encoder}}


def t5_params_from_t5x(tree: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """A T5X parameter tree (``token_embedder`` + ``encoder``) as this module's params.

    The names are the same, so the encoder part passes through; shapes are checked against
    an abstract init of :class:`T5Encoder`.
    """
    tree = tree.get("params", tree)
    missing = [k for k in ("token_embedder", "encoder") if k not in tree]
    if missing:
        raise CheckpointError(
            f"T5X tree lacks {missing} (top-level names: {sorted(tree)}); expected the "
            "parameters of t5x examples/t5/network.py Transformer"
        )
    given = {"token_embedder": tree["token_embedder"], "encoder": tree["encoder"]}
    want = jax.eval_shape(
        lambda: T5Encoder(config).init(
            jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)
        )
    )["params"]
    flat_given = dict(jax.tree_util.tree_leaves_with_path(given))
    for path, leaf in jax.tree_util.tree_leaves_with_path(want):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        if path not in flat_given:
            raise CheckpointError(f"T5X tree lacks {name}")
        if tuple(np.shape(flat_given[path])) != tuple(leaf.shape):
            raise CheckpointError(
                f"T5X tensor {name} has shape {np.shape(flat_given[path])}, expected {leaf.shape}"
            )
    return {"params": jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), given)}
