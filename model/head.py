"""The LEVI head: a from-scratch embedding MLP ensembled with per-layer text-view adapters.

For each selected encoder layer ``l`` one adapter reads
``concat(pooled layer-l activations of every view, task vector)`` and predicts a rating.
Training averages the adapters' losses; the answer is the adapters' mean clipped to the
rating range, and their spread is an out-of-distribution signal.

The same module also expresses the ablations of the report (paper Tables 1, 5): no task
vector (A3: intermediates + adapters), no text (A4: MLP; A5: multi-head MLP) and a linear
probe on one layer (LP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class HeadConfig:
    """Shape and kind of a LEVI head.

    Attributes:
        vocab_sizes: per categorical feature (OOV slot included), user features first.
        n_multi_hot: width of the multi-hot genre input (0: genres off).
        layers: 0-based encoder layers that get an adapter (empty: no text view).
        text_free_heads: adapters over the task vector alone, used only when ``layers`` is
            empty (1 = the MLP baseline A4, n = the multi-head MLP A5).
        use_task_vector: feed the embedding MLP's output to every adapter (False: A3 / LP).
        embed_dim: embedding width per categorical feature.
        mlp_dims: the embedding MLP (512 -> 256 in the paper).
        adapter_hidden: hidden width of each adapter (0: a linear adapter, the linear probe).
        dropout: dropout rate in the MLP and adapters during training.
        rating_min, rating_max: the answer is clipped to this range.
        rating_mean: initial output bias, so training starts at the global mean.
    """

    vocab_sizes: tuple[int, ...]
    n_multi_hot: int = 0
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    text_free_heads: int = 1
    use_task_vector: bool = True
    embed_dim: int = 32
    mlp_dims: tuple[int, ...] = (512, 256)
    adapter_hidden: int = 256
    dropout: float = 0.0
    rating_min: float = 1.0
    rating_max: float = 5.0
    rating_mean: float = 3.5
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_adapters(self) -> int:
        return len(self.layers) if self.layers else self.text_free_heads

    @property
    def uses_text(self) -> bool:
        return bool(self.layers)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        return data

    @classmethod
    def from_json(cls, data: dict) -> HeadConfig:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


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
            parts.append(nn.Dense(cfg.embed_dim, name="genres")(multi_hot))
        x = jnp.concatenate(parts, axis=-1)  # [batch, n_features * embed_dim]
        for i, width in enumerate(cfg.mlp_dims):
            x = nn.relu(nn.Dense(width, name=f"mlp_{i}")(x))
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        return x


class Adapter(nn.Module):
    """One adapter: per-view layer-normed activations (+ task vector) -> hidden -> rating."""

    config: HeadConfig

    @nn.compact
    def __call__(
        self, views: jax.Array | None, task: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        cfg = self.config
        parts = []
        if views is not None:  # [batch, n_views, d]
            # Residual streams differ in scale across layers; normalise each view's vector.
            parts.append(nn.LayerNorm(name="view_norm")(views).reshape(views.shape[0], -1))
        if task is not None:
            parts.append(task)
        x = jnp.concatenate(parts, axis=-1)
        if cfg.adapter_hidden:
            x = nn.relu(nn.Dense(cfg.adapter_hidden, name="hidden")(x))
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        out = nn.Dense(1, name="out", bias_init=nn.initializers.constant(cfg.rating_mean))(x)
        return out[:, 0]  # [batch]


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
        return jnp.stack(outs, axis=-1)  # [batch, n_adapters]


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
