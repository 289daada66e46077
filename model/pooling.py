"""Per-layer encoder outputs and attention-masked mean pooling."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class EncoderOutput:
    """Every layer's residual stream, as the reference's ``output_hidden_states`` for layers 1..N.

    Attributes:
        hidden_states: one ``[batch, length, d]`` array per encoder layer (for T5 the last one is
            taken after the final layer norm).
        mask: ``[batch, length]``, 1 for real tokens and 0 for padding.
    """

    hidden_states: tuple[jax.Array, ...]
    mask: jax.Array


def masked_mean(output: EncoderOutput) -> jax.Array:
    """Mean over real tokens of every layer: ``[batch, n_layers, d]`` in float32."""
    mask = output.mask.astype(jnp.float32)[:, None, :, None]  # [batch, 1, length, 1]
    stacked = jnp.stack(output.hidden_states, axis=1).astype(jnp.float32)  # [b, n_layers, len, d]
    total = jnp.sum(stacked * mask, axis=2)  # [batch, n_layers, d]
    count = jnp.maximum(jnp.sum(mask, axis=2), 1.0)  # [batch, 1, 1]
    return total / count


def segment_means(output: EncoderOutput, segment_ids: jax.Array, max_segments: int) -> jax.Array:
    """Mean over each text's tokens of every layer, for packed rows (``model.packing``).

    Args:
        segment_ids: int32 ``[batch, length]``: ``k`` (1-based) for the row's ``k``-th text,
            0 for padding.
        max_segments: ``S``, texts per row at most.

    Returns:
        float32 ``[batch, S, n_layers, d]`` (zeros for a row's unused segments).
    """
    ks = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
    member = (segment_ids[:, None, :] == ks[None, :, None]).astype(jnp.float32)  # [b, S, len]
    stacked = jnp.stack(output.hidden_states, axis=1).astype(jnp.float32)  # [b, n_layers, len, d]
    # HIGHEST: exact float32 sums on every backend (a GPU would otherwise use TF32), as
    # masked_mean's elementwise sum.
    total = jnp.einsum("bsl,bnld->bsnd", member, stacked, precision=jax.lax.Precision.HIGHEST)
    count = jnp.maximum(jnp.sum(member, axis=2), 1.0)  # [b, S]
    return total / count[:, :, None, None]
