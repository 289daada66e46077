"""Texts to pooled activations in padded, length-bucketed batches: one loop for the backbone,
the trainer's check of the exported model and the service.

Texts are sorted by token count so each batch pads to the shortest length bucket that holds
its longest text; a batch's rows are padded (empty rows, mask 0) to a row bucket. With the
same buckets (the manifest's ``length_buckets``) the trainer scores the exported model with
exactly the shapes the service compiles and calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from model.tokenizer import TextTokenizer, bucket_length


def encode_texts(
    texts: Sequence[str],
    tokenizer: TextTokenizer,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    length_buckets: Sequence[int],
    row_buckets: Sequence[int],
    out_shape: tuple[int, int],
    progress: bool = False,
    desc: str = "encode",
) -> np.ndarray:
    """Pooled activations of ``texts``, in their order.

    Args:
        tokenizer: truncates at its ``max_length``.
        fn: ``(input_ids int32 [b, l], mask int32 [b, l]) -> [b, n_layers, d]``.
        length_buckets: token lengths a batch is padded to (the smallest that holds it).
        row_buckets: batch sizes; a batch holds at most ``row_buckets[-1]`` texts and is padded
            to the smallest bucket that holds it (``(64,)``: always 64 rows).
        out_shape: ``(n_layers, d)``.

    Returns:
        float32 ``[len(texts), n_layers, d]``.
    """
    out = np.zeros((len(texts), *out_shape), dtype=np.float32)
    if not len(texts):
        return out
    ids = tokenizer.encode(list(texts))
    order = np.argsort([len(x) for x in ids], kind="stable")
    chunk = row_buckets[-1]
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            batch = [ids[i] for i in rows]
            batch += [[]] * (bucket_length(len(batch), row_buckets) - len(batch))
            input_ids, mask = tokenizer.pad(batch, length_buckets)
            out[rows] = np.asarray(fn(input_ids, mask), dtype=np.float32)[: len(rows)]
            bar.update(len(rows))
    return out


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``rows`` (a batch bucket); itself if full."""
    if array.shape[0] == rows:
        return array
    pad = np.zeros((rows - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, pad], axis=0)


def pad_cols(array: np.ndarray, length: int, value: int) -> np.ndarray:
    """``[n, k]`` ``array`` widened to ``[n, length]`` with ``value`` (a token length bucket)."""
    if array.shape[1] == length:
        return array
    out = np.full((array.shape[0], length), value, dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out
