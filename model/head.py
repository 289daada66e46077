"""The LEVI head: a from-scratch embedding MLP ensembled with per-layer text-view adapters.

For each selected encoder layer ``l`` one adapter reads
``concat(pooled layer-l activations of every view, task vector)`` and predicts a rating.
Training averages the adapters' losses; the answer is the adapters' mean clipped to the
rating range, and their spread is an out-of-distribution signal.

The from-scratch model also carries a collaborative term, ``b_user + b_item + <p_user,
q_item>`` (learned biases and factors of the user and item ids, as in NeuMF's GMF branch),
added to every adapter's output. An MLP over concatenated id embeddings models the user-item
dot product poorly (Rendle et al., 2020); with the term, the adapters model what is left.
Unknown ids read the OOV row, which item-OOV training fits (cold-start movies). The term is
regularised per example (:func:`collab_penalty`) like classic matrix factorisation, so rarely
seen ids stay near zero.

The same module also expresses the ablations of the report (paper Tables 1, 5): no task
vector (A3: intermediates + adapters), no text (A4: MLP; A5: multi-head MLP) and a linear
probe on one layer (LP). The collaborative term belongs to the from-scratch model, so A4, A5
and LEVI have it and A3 and LP do not.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.head_config import HeadConfig


class EmbeddingMLP(nn.Module):
    """Embeddings of ids and features, then an MLP: the task vector ``[batch, mlp_dims[-1]]``."""

    config: HeadConfig

    @nn.compact
    def __call__(self, ids: jax.Array, multi_hot: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        parts = [
            nn.Embed(size, cfg.embed_dim, name=f"embed_{i}")(ids[:, i])  # [batch, embed_dim]
            for i, size in enumerate(cfg.vocab_sizes)
        ]
        if cfg.n_multi_hot:
            parts.append(nn.Dense(cfg.embed_dim, name="multi_hot")(multi_hot))
        x = jnp.concatenate(parts, axis=-1)  # [batch, n_features * embed_dim]
        for i, width in enumerate(cfg.mlp_dims):
            x = nn.relu(nn.Dense(width, name=f"mlp_{i}")(x))
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        return x


def _collab_tables(cfg: HeadConfig) -> tuple[tuple[str, int, int], ...]:
    """``(name, id column, width)`` of each table of the collaborative term."""
    tables = []
    if cfg.id_biases:
        tables += [("user_bias", cfg.user_id_feature, 1), ("item_bias", cfg.item_id_feature, 1)]
    if cfg.factor_dim:
        tables += [
            ("user_factors", cfg.user_id_feature, cfg.factor_dim),
            ("item_factors", cfg.item_id_feature, cfg.factor_dim),
        ]
    return tuple(tables)


class Collaborative(nn.Module):
    """``b_user + b_item + <p_user, q_item>`` of the id columns: ``[batch]``.

    Biases start at zero and factors near zero, so training starts from the adapters alone.
    """

    config: HeadConfig

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        cfg = self.config
        rows = {}
        for name, col, width in _collab_tables(cfg):
            init = nn.initializers.zeros if width == 1 else nn.initializers.normal(0.01)
            table = nn.Embed(cfg.vocab_sizes[col], width, embedding_init=init, name=name)
            rows[name] = table(ids[:, col])  # [batch, width]
        out = jnp.zeros(ids.shape[:1], jnp.float32)
        if cfg.id_biases:
            out += rows["user_bias"][:, 0] + rows["item_bias"][:, 0]
        if cfg.factor_dim:
            out += jnp.sum(rows["user_factors"] * rows["item_factors"], axis=-1)  # [batch]
        return out


def collab_penalty(params: dict, ids: jax.Array, config: HeadConfig) -> jax.Array:
    """Mean over the batch of the squared norms of the biases and factors its ids read.

    The per-example L2 of matrix factorisation: an id is pulled to zero in proportion to how
    often it is seen, unlike decoupled weight decay, which shrinks every row at every step.

    Args:
        params: the head's variables (``{"params": ...}``).
        ids: int32 ``[batch, F]``, the head's id input.
    """
    if not config.uses_collab:
        return jnp.zeros((), jnp.float32)
    collab = params["params"]["collab"]
    total = jnp.zeros(ids.shape[:1], jnp.float32)
    for name, col, _ in _collab_tables(config):
        rows = collab[name]["embedding"][ids[:, col]]  # [batch, width]
        total += jnp.sum(rows**2, axis=-1)
    return jnp.mean(total)


class Adapter(nn.Module):
    """One adapter: per-view layer-normed activations (+ task vector) -> hidden -> rating.

    The first layer is ``W [norm(views); task] + b`` written as one Dense per part (same
    function, same initial distribution): the frozen activations need no input gradient, so
    backpropagation skips their ``[batch, n_views * d]`` part, a third of the adapter's
    training cost. The layer norm has no scale or shift of its own for the same reason; the
    Dense after it absorbs both.
    """

    config: HeadConfig

    @nn.compact
    def __call__(
        self, views: jax.Array | None, task: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        cfg = self.config
        parts: list[tuple[str, jax.Array]] = []
        if views is not None:  # [batch, n_views, d]
            # Residual streams differ in scale across layers; normalise each view's vector.
            norm = nn.LayerNorm(use_scale=False, use_bias=False, name="view_norm")(views)
            parts.append(("views", norm.reshape(views.shape[0], -1)))  # [batch, n_views * d]
        if task is not None:
            parts.append(("task", task))  # [batch, mlp_dims[-1]]
        if cfg.adapter_hidden:
            x = nn.relu(_split_dense(parts, cfg.adapter_hidden, "hidden"))
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
            out = nn.Dense(1, name="out", bias_init=nn.initializers.constant(cfg.rating_mean))(x)
        else:
            out = _split_dense(parts, 1, "out", bias=cfg.rating_mean)
        return out[:, 0]  # [batch]


def _split_dense(
    parts: list[tuple[str, jax.Array]], width: int, name: str, bias: float = 0.0
) -> jax.Array:
    """``Dense(width)`` of the concatenated parts, one kernel per part (``{name}_{part}``).

    Each kernel is drawn as its rows of one LeCun-normal kernel over the whole input would be
    (variance 1 / total fan-in); the first part carries the bias.
    """
    fan_in = sum(x.shape[-1] for _, x in parts)
    out = None
    for k, (part, x) in enumerate(parts):
        init = nn.initializers.variance_scaling(x.shape[-1] / fan_in, "fan_in", "truncated_normal")
        y = nn.Dense(
            width,
            use_bias=k == 0,
            kernel_init=init,
            bias_init=nn.initializers.constant(bias),
            name=f"{name}_{part}",
        )(x)
        out = y if out is None else out + y
    return out


class LeviHead(nn.Module):
    """Adapter ratings for a batch.

    ``__call__(ids [batch, F] int32, multi_hot [batch, G] float32,
    activations [batch, n_views, n_layers, d] float32) -> [batch, n_adapters]`` raw adapter
    ratings (unclipped; training takes their MSE). Use :func:`ensemble` for the answer.
    """

    config: HeadConfig

    @nn.compact
    def __call__(
        self,
        ids: jax.Array,
        multi_hot: jax.Array,
        activations: jax.Array,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        task = None
        if cfg.use_task_vector:
            task = EmbeddingMLP(cfg, name="mlp")(ids, multi_hot, deterministic)  # [batch, 256]
        outs = []
        if cfg.uses_text:
            for layer in cfg.layers:
                views = activations[:, :, layer, :]  # [batch, n_views, d]
                outs.append(Adapter(cfg, name=f"adapter_{layer}")(views, task, deterministic))
        else:
            for i in range(cfg.text_free_heads):
                outs.append(Adapter(cfg, name=f"adapter_{i}")(None, task, deterministic))
        adapters = jnp.stack(outs, axis=-1)  # [batch, n_adapters]
        if cfg.uses_collab:
            adapters += Collaborative(cfg, name="collab")(ids)[:, None]
        return adapters


def ensemble(adapters: jax.Array, config: HeadConfig) -> jax.Array:
    """The answer: mean of the adapter ratings clipped to the rating range. ``[batch]``."""
    return jnp.clip(jnp.mean(adapters, axis=-1), config.rating_min, config.rating_max)


def adapter_loss(
    adapters: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean over adapters of each adapter's MSE (a weighted sum when ``weights`` is given)."""
    per_adapter = jnp.mean((adapters - targets[:, None]) ** 2, axis=0)  # [n_adapters]
    if weights is None:
        return jnp.mean(per_adapter)
    return jnp.sum(per_adapter * weights)
