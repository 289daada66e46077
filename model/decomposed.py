"""First-layer decomposition of the LEVI head: per-entity partial products + a pair remainder.

The head's first layers are linear in the concatenation of a user part, an item part and a
pair part:

* the embedding MLP's first Dense reads ``concat(user feature embeddings, item feature
  embeddings, Dense(concat(user multi-hot, item multi-hot)))``;
* each adapter's first Dense reads ``concat(norm(user view), norm(item view), task vector)``
  (one kernel per part already, ``model.head.Adapter``);
* the collaborative term reads a user row and an item row.

So ``x @ W = x_user @ W_user + x_item @ W_item (+ x_pair @ W_pair)`` splits exactly: the
user-side and item-side products are computed once per entity (:func:`side_parts`, "request-
level user broadcast" when ranking many items for one user) and only the remainder runs per
pair (:func:`pair_adapters`: the first layer's sum and ReLU, the rest of the MLP, the
task-vector part of each adapter, the adapters' output layers, the collaborative dot
product). Both are pure functions of the head's parameters, exported with ``jax.export``
next to the whole head (``model.artifact``), which stays the reference and the path of
``pair`` views (one text per user-item pair cannot be split).

Shapes: ``Fu``/``Fi`` id columns and ``Gu``/``Gi`` multi-hot widths per side (users first, as
``model.features.FeatureSpec`` orders them), ``A`` adapters, ``H`` adapter hidden width
(1 for a linear adapter), ``M`` the MLP's first width, ``k`` the factor width.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.decomposed_layout import Layout
from model.head_config import HeadConfig


def _views_of(layout: Layout, side: str) -> list[int]:
    return [v for v, s in enumerate(layout.view_sides) if s == side]


def _adapter_names(cfg: HeadConfig) -> list[str]:
    if cfg.uses_text:
        return [f"adapter_{layer}" for layer in cfg.layers]
    return [f"adapter_{i}" for i in range(cfg.text_free_heads)]


def _first(cfg: HeadConfig) -> str:
    """Name of each adapter's first layer (``hidden``, or ``out`` for a linear adapter)."""
    return "hidden" if cfg.adapter_hidden else "out"


def side_parts(
    params: Any,
    cfg: HeadConfig,
    layout: Layout,
    side: str,
    ids: jax.Array,
    multi_hot: jax.Array,
    views: jax.Array,
) -> dict[str, jax.Array]:
    """The partial products of one side's entities.

    Args:
        params: the head's variables (``{"params": ...}``).
        side: ``"user"`` or ``"item"``.
        ids: int32 ``[n, F_side]``; multi_hot: float32 ``[n, G_side]``.
        views: float32 ``[n, n_side_views, n_layers, d]`` pooled activations of the side's
            views (``[n, 0, 1, 1]`` when it has none).

    Returns:
        ``mlp [n, M]`` (zeros of width 0 without a task vector), ``adapters [n, A, H]``,
        ``bias [n]`` and ``factors [n, k]`` of the collaborative term (zeros when off).
    """
    p = params["params"]
    n = ids.shape[0]
    offset = 0 if side == "user" else layout.n_user_ids
    mh_offset = 0 if side == "user" else layout.n_user_multi_hot
    out: dict[str, jax.Array] = {}
    if cfg.use_task_vector:
        mlp = p["mlp"]
        kernel = mlp["mlp_0"]["kernel"]  # [F * e (+ e), M]
        e = cfg.embed_dim
        acc = jnp.zeros((n, kernel.shape[1]), jnp.float32)
        for j in range(ids.shape[1]):
            col = offset + j
            rows = mlp[f"embed_{col}"]["embedding"][ids[:, j]]  # [n, e]
            acc += rows @ kernel[col * e : (col + 1) * e]
        if cfg.n_multi_hot and multi_hot.shape[1]:
            width = multi_hot.shape[1]
            w = mlp["multi_hot"]["kernel"][mh_offset : mh_offset + width]  # [G_side, e]
            f = len(cfg.vocab_sizes)
            acc += (multi_hot @ w) @ kernel[f * e : (f + 1) * e]
        out["mlp"] = acc
    else:
        out["mlp"] = jnp.zeros((n, 0), jnp.float32)
    names = _adapter_names(cfg)
    first = _first(cfg)
    width = cfg.adapter_hidden or 1
    mine = _views_of(layout, side)
    if cfg.uses_text and mine:
        per_adapter = []
        for name, layer in zip(names, cfg.layers, strict=True):
            kernel = p[name][f"{first}_views"]["kernel"]  # [n_views * d, H]
            d = kernel.shape[0] // len(layout.view_sides)
            acc = jnp.zeros((n, width), jnp.float32)
            for k, v in enumerate(mine):
                x = views[:, k, layer, :]  # [n, d]
                norm = nn.LayerNorm(use_scale=False, use_bias=False).apply({}, x)
                acc += norm @ kernel[v * d : (v + 1) * d]
            per_adapter.append(acc)
        out["adapters"] = jnp.stack(per_adapter, axis=1)  # [n, A, H]
    else:
        out["adapters"] = jnp.zeros((n, len(names), width), jnp.float32)
    k = cfg.factor_dim if cfg.uses_collab else 0
    out["bias"] = jnp.zeros((n,), jnp.float32)
    out["factors"] = jnp.zeros((n, k), jnp.float32)
    if cfg.uses_collab:
        col = (cfg.user_id_feature if side == "user" else cfg.item_id_feature) - offset
        entity_ids = ids[:, col]
        collab = p["collab"]
        if cfg.id_biases:
            out["bias"] = collab[f"{side}_bias"]["embedding"][entity_ids][:, 0]
        if cfg.factor_dim:
            out["factors"] = collab[f"{side}_factors"]["embedding"][entity_ids]
    return out


def pair_adapters(
    params: Any, cfg: HeadConfig, user: dict[str, jax.Array], item: dict[str, jax.Array]
) -> jax.Array:
    """Adapter ratings ``[b, A]`` of pairs from their sides' parts (rows aligned), equal to
    ``LeviHead(cfg).apply(params, ids, multi_hot, activations)`` of the whole head."""
    p = params["params"]
    task = None
    if cfg.use_task_vector:
        mlp = p["mlp"]
        pre = user["mlp"] + item["mlp"] + mlp["mlp_0"]["bias"]
        if cfg.n_multi_hot:
            e, f = cfg.embed_dim, len(cfg.vocab_sizes)
            pre += mlp["multi_hot"]["bias"] @ mlp["mlp_0"]["kernel"][f * e : (f + 1) * e]
        x = nn.relu(pre)
        for j in range(1, len(cfg.mlp_dims)):
            x = nn.relu(x @ mlp[f"mlp_{j}"]["kernel"] + mlp[f"mlp_{j}"]["bias"])
        task = x  # [b, mlp_dims[-1]]
    first = _first(cfg)
    outs = []
    for a, name in enumerate(_adapter_names(cfg)):
        q = p[name]
        h = user["adapters"][:, a] + item["adapters"][:, a]  # [b, H]
        if cfg.uses_text:
            h += q[f"{first}_views"]["bias"]
            if task is not None:
                h += task @ q[f"{first}_task"]["kernel"]
        else:  # text-free heads: the task part carries the bias
            h += task @ q[f"{first}_task"]["kernel"] + q[f"{first}_task"]["bias"]
        if cfg.adapter_hidden:
            h = nn.relu(h) @ q["out"]["kernel"] + q["out"]["bias"]
        outs.append(h[:, 0])
    adapters = jnp.stack(outs, axis=-1)  # [b, A]
    if cfg.uses_collab:
        collab = user["bias"] + item["bias"] + jnp.sum(user["factors"] * item["factors"], -1)
        adapters += collab[:, None]
    return adapters


def side_function(cfg: HeadConfig, layout: Layout, side: str):
    """Pure ``(params, ids, multi_hot, views) -> parts`` for ``jax.jit`` / ``jax.export``."""

    def fn(params, ids, multi_hot, views):
        return side_parts(params, cfg, layout, side, ids, multi_hot, views)

    return fn


def pair_function(cfg: HeadConfig):
    """Pure ``(params, user parts, item parts) -> (adapters [b, A], rating [b])``."""
    from model.head import ensemble

    def fn(params, user, item):
        adapters = pair_adapters(params, cfg, user, item)
        return adapters, ensemble(adapters, cfg)

    return fn
