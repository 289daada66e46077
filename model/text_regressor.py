"""The small regression head that tunes an encoder: pooled text views -> one rating.

The tuning stage (``training/tuning.py``) trains the encoder's top layers (or LoRA adapters,
or all of it) through this head, as the paper's fine-tuning baselines (FT, HT, LoRA, LPFT)
train a language model with a regression head on the task (Roh et al. 2024, Table 1, D.2).
Its input is the last layer's attention-masked mean of every text view (``[b, n_views, d]``),
each view layer-normalised; one hidden ReLU layer (``hidden = 0``: linear) and an output bias
starting at the training mean.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class TextRegressor(nn.Module):
    """``(pooled [b, n_views, d]) -> ratings [b]`` (unclipped).

    Attributes:
        hidden: hidden width (0: a linear head).
        rating_mean: initial output bias.
    """

    hidden: int = 256
    rating_mean: float = 3.5

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        x = nn.LayerNorm(name="norm")(pooled.astype(jnp.float32))  # [b, n_views, d], per view
        x = x.reshape(x.shape[0], -1)  # [b, n_views * d]
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))  # [b, hidden]
        out = nn.Dense(1, name="out", bias_init=nn.initializers.constant(self.rating_mean))(
            x
        )  # [b, 1]
        return out[:, 0]
