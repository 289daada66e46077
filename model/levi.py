"""LEVI as the trainer and the exporter see it: init, loss, adapter ratings, the answer.

The Flax network (``model/head.py``: the embedding MLP, the per-layer adapters, the
collaborative term) knows nothing of losses or exports; the trainer (``training/train.py``)
knows nothing of the network's inside. This wrapper sits between them, as t5x's
``BaseModel`` (``get_initial_variables``, ``loss_fn``, ``predict_batch``) sits between a
Flax module and its trainer:

* :meth:`LeviModel.init_variables`: parameters for a batch shape;
* :meth:`LeviModel.loss_fn`: the mean over adapters of each adapter's MSE (paper Eq. 3) plus
  the collaborative term's per-example L2;
* :meth:`LeviModel.predict_batch`: ``(adapters [b, A], rating [b])``, the function exported
  as ``head.jaxexport``; :meth:`LeviModel.side_function` / :meth:`LeviModel.pair_function`
  are its first-layer decomposition (``model/decomposed.py``), exported for factored views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from model.decomposed import pair_function, side_function
from model.decomposed_layout import Layout
from model.head import LeviHead, adapter_loss, collab_penalty, ensemble
from model.head_config import HeadConfig

PyTree = Any


@dataclass(frozen=True)
class LeviModel:
    """The LEVI model of one head config (hashable: jitted functions are cached by it).

    Inputs everywhere: ``ids [b, F] int32`` (categorical and bucketized numeric features,
    users' first), ``multi_hot [b, G] float32``, ``activations [b, n_views, n_layers, d]
    float32`` (pooled per layer of the frozen text view).
    """

    config: HeadConfig

    @property
    def module(self) -> LeviHead:
        return LeviHead(self.config)

    def init_variables(
        self, key: jax.Array, ids: jax.Array, multi_hot: jax.Array, activations: jax.Array
    ) -> PyTree:
        """Fresh parameters (the arrays give only the shapes; one row is enough)."""
        return self.module.init(key, ids, multi_hot, activations)

    def adapters(
        self,
        params: PyTree,
        ids: jax.Array,
        multi_hot: jax.Array,
        activations: jax.Array,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Raw adapter ratings ``[b, A]`` (unclipped); dropout on when ``rng`` is given."""
        if rng is None:
            return self.module.apply(params, ids, multi_hot, activations, deterministic=True)
        return self.module.apply(
            params, ids, multi_hot, activations, deterministic=False, rngs={"dropout": rng}
        )

    def loss_fn(
        self, params: PyTree, batch: tuple, rng: jax.Array, factor_l2: float = 0.0
    ) -> jax.Array:
        """Training loss of ``batch = (ids, multi_hot, activations, ratings [b])``: the mean
        of the adapters' MSEs plus ``factor_l2`` x the per-example L2 of the biases and
        factors the batch reads (scalar)."""
        ids, multi_hot, activations, ratings = batch
        adapters = self.adapters(params, ids, multi_hot, activations, rng)
        return adapter_loss(adapters, ratings) + factor_l2 * collab_penalty(
            params, ids, self.config
        )

    def rating(self, adapters: jax.Array) -> jax.Array:
        """The answer ``[b]``: the adapters' mean clipped to the rating range."""
        return ensemble(adapters, self.config)

    def predict_batch(
        self, params: PyTree, ids: jax.Array, multi_hot: jax.Array, activations: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(adapters [b, A], rating [b])``, deterministic: what ``head.jaxexport`` holds."""
        adapters = self.adapters(params, ids, multi_hot, activations)
        return adapters, self.rating(adapters)

    def side_function(self, layout: Layout, side: str) -> Callable:
        """The first-layer decomposition's ``side`` function (``model.decomposed``)."""
        return side_function(self.config, layout, side)

    def pair_function(self) -> Callable:
        """The first-layer decomposition's pair function: parts -> (adapters, rating)."""
        return pair_function(self.config)
