"""A BERT-family encoder run in two parts: a frozen bottom once per text, a tuned top per step.

Tuning the top of an encoder (``training/tuning.py``) never changes what its bottom computes,
so the residual stream entering the first tuned layer is a fixed function of each text: it is
computed once (:func:`bottom`) and every training step runs only the tuned layers, forward and
backward (:func:`top`). ``top(bottom(x))`` is exactly the whole encoder
(``model.bert.BertEncoder``); a test checks it.

The split point ``start`` counts layers: the bottom is the embeddings and layers ``0 ..
start - 1``, the top layers ``start .. N - 1``. ``start = EMBEDDINGS`` (-1) puts the embeddings
in the top too (full fine-tuning): the bottom is then the token ids themselves.

Only the ``bert`` family (MiniLM, BERT) is split here; T5 encoders share one relative
position bias across layers and are not supported by the tuning stage yet.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp

from model.bert import BertConfig, BertEmbeddings, BertLayer
from model.lora import lora_applied
from model.pooling import EncoderOutput, masked_mean

EMBEDDINGS = -1  # the split point that tunes the embeddings as well


def _key_bias(mask: jax.Array, dtype) -> jax.Array:
    # as BertEncoder: a finite large negative, so an all-padding row stays finite
    return jnp.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(dtype)  # [b, 1, 1, l]


def check_start(config: BertConfig, start: int) -> None:
    """Raises ValueError unless ``EMBEDDINGS <= start <= num_layers``."""
    if not EMBEDDINGS <= start <= config.num_layers:
        raise ValueError(
            f"split point {start} outside [{EMBEDDINGS}, {config.num_layers}] for an encoder "
            f"of {config.num_layers} layers"
        )


def bottom(
    config: BertConfig, params: Any, input_ids: jax.Array, mask: jax.Array, start: int
) -> jax.Array:
    """The residual stream entering layer ``start``.

    Args:
        params: ``{"params": ...}`` of ``BertEncoder(config)``.
        input_ids, mask: int32 ``[b, l]``.

    Returns:
        float32 ``[b, l, d]``; for ``start = EMBEDDINGS`` the token ids ``[b, l]`` unchanged.
    """
    check_start(config, start)
    if start == EMBEDDINGS:
        return input_ids
    p = params["params"]
    x = BertEmbeddings(config).apply({"params": p["embeddings"]}, input_ids)  # [b, l, d]
    bias = _key_bias(mask, x.dtype)
    for i in range(start):
        x = BertLayer(config).apply({"params": p[f"layers_{i}"]}, x, bias)  # [b, l, d]
    return x


def top(
    config: BertConfig,
    params: Any,
    x: jax.Array,
    mask: jax.Array,
    start: int,
    lora: Any = None,
    lora_alpha: float = 1.0,
) -> EncoderOutput:
    """Layers ``start .. N - 1`` over :func:`bottom`'s output ``x``.

    Args:
        params: ``{"params": ...}``; only the embeddings (``start = EMBEDDINGS``) and the
            layers ``start ..`` are read, so a tree holding just those is enough.
        x: ``[b, l, d]`` (token ids ``[b, l]`` for ``start = EMBEDDINGS``).
        lora: LoRA adapters (``model.lora``) added, unmerged, to the layers they name.

    Returns:
        An :class:`EncoderOutput` with the hidden states of layers ``start .. N - 1``
        (``max(start, 0) ..`` for ``EMBEDDINGS``), each ``[b, l, d]``.
    """
    check_start(config, start)
    p = params["params"]
    if start == EMBEDDINGS:
        x = BertEmbeddings(config).apply({"params": p["embeddings"]}, x)  # [b, l, d]
    bias = _key_bias(mask, x.dtype)
    hidden = []
    for i in range(max(start, 0), config.num_layers):
        adapters = (lora or {}).get(f"layers_{i}")
        with lora_applied(adapters, lora_alpha) if adapters else contextlib.nullcontext():
            x = BertLayer(config).apply({"params": p[f"layers_{i}"]}, x, bias)  # [b, l, d]
        hidden.append(x)
    return EncoderOutput(hidden_states=tuple(hidden), mask=mask)


def top_pooled_last(
    config: BertConfig,
    params: Any,
    x: jax.Array,
    mask: jax.Array,
    start: int,
    lora: Any = None,
    lora_alpha: float = 1.0,
) -> jax.Array:
    """Masked mean of the last layer's hidden states ``[b, d]`` (float32) from :func:`top`."""
    out = top(config, params, x, mask, start, lora, lora_alpha)
    last = EncoderOutput(hidden_states=out.hidden_states[-1:], mask=mask)
    return masked_mean(last)[:, 0]  # [b, d]
