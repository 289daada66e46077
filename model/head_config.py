"""The LEVI head's configuration: its shape and kind (:class:`HeadConfig`), and the fields that
make it one of the report's methods (:func:`ablation`).

Plain data, without Flax or JAX: the service reads it from an artifact's manifest; the head
itself (``model.head``) is built from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


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
