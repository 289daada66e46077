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

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class HeadConfig:
    """Shape and kind of a LEVI head.

    Attributes:
        vocab_sizes: per categorical feature (OOV slot included), user features first.
        n_multi_hot: width of the multi-hot input (multi_categorical columns; 0: none).
        layers: 0-based encoder layers that get an adapter (empty: no text view).
        text_free_heads: adapters over the task vector alone, used only when ``layers`` is
            empty (1 = the MLP baseline A4, n = the multi-head MLP A5).
        use_task_vector: feed the embedding MLP's output to every adapter (False: A3 / LP).
        embed_dim: embedding width per categorical feature (16: the collaborative term
            carries the id interactions, so wider id embeddings overfit; README, "Results").
        mlp_dims: the embedding MLP (512 -> 256 in the paper).
        adapter_hidden: hidden width of each adapter (0: a linear adapter, the linear probe).
        dropout: dropout rate in the MLP and adapters during training.
        rating_min, rating_max: the answer is clipped to this range.
        rating_mean: initial output bias, so training starts at the global mean.
        user_id_feature, item_id_feature: columns of ``ids`` holding the user and item id
            (-1: none); the collaborative term needs both.
        factor_dim: width of the collaborative user and item factors (0: biases only).
            The defaults are the trainer's (``training.config.TrainConfig.head`` overrides
            them); artifacts written before the collaborative term load with it off.
        id_biases: include the user and item biases in the collaborative term.
    """

    vocab_sizes: tuple[int, ...]
    n_multi_hot: int = 0
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    text_free_heads: int = 1
    use_task_vector: bool = True
    embed_dim: int = 16
    mlp_dims: tuple[int, ...] = (512, 256)
    adapter_hidden: int = 256
    dropout: float = 0.1
    rating_min: float = 1.0
    rating_max: float = 5.0
    rating_mean: float = 3.5
    user_id_feature: int = -1
    item_id_feature: int = -1
    factor_dim: int = 64
    id_biases: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_adapters(self) -> int:
        return len(self.layers) if self.layers else self.text_free_heads

    @property
    def uses_text(self) -> bool:
        return bool(self.layers)

    @property
    def uses_collab(self) -> bool:
        """Whether the collaborative term is on (it belongs to the from-scratch model)."""
        has_ids = self.user_id_feature >= 0 and self.item_id_feature >= 0
        return self.use_task_vector and has_ids and (self.factor_dim > 0 or self.id_biases)

    def to_json(self) -> dict:
        """The fields as JSON, without the rating range: the manifest holds that once
        (``rating_range``), and :meth:`from_json` takes it back."""
        data = asdict(self)
        for name in ("extra", "rating_min", "rating_max"):
            data.pop(name)
        return data

    @classmethod
    def from_json(cls, data: dict, rating_range: Sequence[float] | None = None) -> HeadConfig:
        """The config of :meth:`to_json`'s ``data`` with the manifest's ``rating_range``.

        Artifacts written before the collaborative term lack its fields: the defaults (off)
        rebuild them exactly; older ones carry the range in ``data`` itself.
        """
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fields.setdefault("factor_dim", 0)  # written before the collaborative term: off
        fields.setdefault("id_biases", False)
        if rating_range is not None:
            fields["rating_min"], fields["rating_max"] = (float(x) for x in rating_range)
        return cls(**fields)


def ablation(method: str, n_layers: int) -> dict:
    """The ``HeadConfig`` fields that make a head one of the report's methods (paper
    Tables 1, 5): LEVI, intermediates + adapters without the MLP (A3), the MLP alone (A4),
    the multi-head MLP (A5) and the linear probe on the last layer (LP).

    Raises:
        ValueError: ``method`` trains no head (the closed-form and post-hoc baselines).
    """
    all_layers = tuple(range(n_layers))
    presets = {
        "levi": {"layers": all_layers},
        "intermediates": {"layers": all_layers, "use_task_vector": False},
        "mlp": {"layers": (), "text_free_heads": 1},
        "multihead_mlp": {"layers": (), "text_free_heads": n_layers},
        "linear_probe": {
            "layers": (n_layers - 1,),
            "use_task_vector": False,
            "adapter_hidden": 0,
        },
    }
    if method not in presets:
        raise ValueError(f"{method!r} is not a trained method; trained: {sorted(presets)}")
    return presets[method]


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
