"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the
encoder's dense projections: train ``A [in, r]`` and ``B [r, out]`` beside a frozen kernel
``W [in, out]``, so a projection computes ``x W + b + (alpha / r) (x A) B``.

Adapters are a tree mirroring the encoder's parameters down to each adapted ``Dense``::

    {"layers_3": {"attention": {"query": {"a": [in, r], "b": [r, out]}, ...},
                  "mlp": {"wi": {...}, "wo": {...}}}, ...}

* :func:`init_lora`: ``A`` random (normal, std ``1 / sqrt(in)``), ``B`` zero, so a fresh
  adapter leaves the encoder unchanged.
* :func:`lora_applied`: the unmerged forward pass, as trained (the low-rank path keeps the
  frozen kernels out of the backward pass's weight gradients): a Flax method interceptor adds
  ``(alpha / r) (x A) B`` to every adapted ``Dense`` while a module runs.
* :func:`merge_lora`: ``W + (alpha / r) A B``: an ordinary encoder again (what is exported and
  served, at no extra cost per call); a test checks it computes what the unmerged pass does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The attention and feed-forward projections of model.bert.BertLayer, as paths in a layer.
BERT_TARGETS: tuple[tuple[str, str], ...] = (
    ("attention", "query"),
    ("attention", "key"),
    ("attention", "value"),
    ("attention", "out"),
    ("mlp", "wi"),
    ("mlp", "wo"),
)


def init_lora(
    key: jax.Array,
    params: Any,
    layers: Sequence[int],
    rank: int,
    targets: Sequence[tuple[str, ...]] = BERT_TARGETS,
) -> dict[str, Any]:
    """Fresh adapters of rank ``rank`` on ``targets`` of ``layers_<i>`` for ``i in layers``.

    Args:
        params: ``{"params": ...}`` of the encoder (kernels give the shapes).

    Raises:
        ValueError: ``rank < 1``, or a target names no kernel in ``params``.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    p = params["params"]
    out: dict[str, Any] = {}
    keys = iter(jax.random.split(key, len(layers) * len(targets)))
    for i in layers:
        layer: dict[str, Any] = {}
        for path in targets:
            node = p.get(f"layers_{i}", {})
            for name in path:
                node = node.get(name, {}) if isinstance(node, dict) else {}
            if "kernel" not in node:
                raise ValueError(f"no kernel at layers_{i}/{'/'.join(path)} to adapt")
            n_in, n_out = node["kernel"].shape
            a = jax.random.normal(next(keys), (n_in, rank), jnp.float32) / jnp.sqrt(n_in)
            leaf = {"a": a, "b": jnp.zeros((rank, n_out), jnp.float32)}
            sub = layer
            for name in path[:-1]:
                sub = sub.setdefault(name, {})
            sub[path[-1]] = leaf
        out[f"layers_{i}"] = layer
    return out


def _leaves(lora: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, {"a", "b"})`` of every adapter in a tree."""
    if isinstance(lora, dict) and set(lora) == {"a", "b"}:
        yield prefix, lora
        return
    for name, sub in lora.items():
        yield from _leaves(sub, (*prefix, name))


def merge_lora(params: Any, lora: Any, alpha: float) -> Any:
    """``params`` with every adapted kernel replaced by ``W + (alpha / r) A B`` (a new tree;
    ``params`` is not changed)."""

    def copy(node):
        return {k: copy(v) for k, v in node.items()} if isinstance(node, dict) else node

    merged = copy(params)
    for path, leaf in _leaves(lora):
        node = merged["params"]
        for name in path:
            node = node[name]
        rank = leaf["a"].shape[1]
        node["kernel"] = node["kernel"] + (alpha / rank) * (leaf["a"] @ leaf["b"])
    return merged


@contextlib.contextmanager
def lora_applied(lora: Any, alpha: float) -> Iterator[None]:
    """Within the block, every ``nn.Dense`` whose module path (relative to the module being
    applied) names an adapter of ``lora`` adds ``(alpha / r) (x A) B`` to its output.

    Apply a whole encoder with the adapters' full tree, or one layer with its
    ``lora["layers_<i>"]`` subtree.
    """
    table = {path: leaf for path, leaf in _leaves(lora)}

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
            return y
        leaf = table.get(tuple(context.module.path))
        if leaf is None:
            return y
        rank = leaf["a"].shape[1]
        x = args[0]  # [..., in]
        return y + (alpha / rank) * ((x @ leaf["a"]) @ leaf["b"])  # [..., out]

    with nn.intercept_methods(interceptor):
        yield
