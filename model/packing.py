"""Sequence packing for bulk encodes: several short texts per row, no attention between them.

A length-bucketed batch pads every text to its bucket, and every bucket is a shape that XLA
compiles. Packing (as in T5X/seqio's packed examples and Krell et al., 2021, "Efficient
Sequence Packing without Cross-contamination") places whole texts one after another in rows
of ``row_length`` tokens, best-fit decreasing; ``segment_ids`` number the texts of a row
(0 is padding), so the encoder masks attention to the text's own tokens, and ``positions``
restart at 0 for each text, so position embeddings (BERT) and relative positions (T5) are
those of the text alone. Each text's activations equal its unpacked ones up to float32
rounding, and one shape serves every text that fits a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PackedRows:
    """Texts packed into rows.

    Attributes:
        input_ids: int32 ``[rows, row_length]`` token ids (the pad id after the last text).
        segment_ids: int32 ``[rows, row_length]``: ``k`` (1-based) for the tokens of the row's
            ``k``-th text, 0 for padding.
        positions: int32 ``[rows, row_length]``: each token's index within its own text.
        slots: int64 ``[n_texts, 2]``: ``(row, k - 1)`` of every text, in input order.
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    slots: np.ndarray

    @property
    def fill(self) -> float:
        """Fraction of the rows' tokens that are text (1.0: no padding)."""
        total = self.segment_ids.size
        return float(np.count_nonzero(self.segment_ids)) / total if total else 1.0


def pack_sequences(
    ids: Sequence[Sequence[int]], row_length: int, max_segments: int, pad_id: int = 0
) -> PackedRows:
    """Pack token id lists into rows, best-fit decreasing (longest text first, each into the
    open row it leaves least room in).

    Args:
        ids: token ids per text (special tokens included), each at most ``row_length`` long.
        row_length: tokens per row.
        max_segments: at most this many texts per row (the width of the pooled output).
        pad_id: the id of padding tokens.

    Returns:
        :class:`PackedRows`; zero rows for no texts.

    Raises:
        ValueError: a text longer than ``row_length``, or a limit below 1.
    """
    if row_length < 1 or max_segments < 1:
        raise ValueError(
            f"row_length and max_segments must be >= 1, got {row_length} and {max_segments}"
        )
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    if len(ids) and lengths.max() > row_length:
        raise ValueError(
            f"a text of {int(lengths.max())} tokens does not fit a row of {row_length}"
        )
    # open_rows[c]: rows with exactly c free tokens that still take a text.
    open_rows: list[list[int]] = [[] for _ in range(row_length + 1)]
    used: list[int] = []  # tokens used per row
    texts: list[list[int]] = []  # text indices per row, in placement order
    for t in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[t])
        row = -1
        for c in range(n, row_length + 1):
            if open_rows[c]:
                row = open_rows[c].pop()
                break
        if row < 0:
            row = len(used)
            used.append(0)
            texts.append([])
        used[row] += n
        texts[row].append(t)
        if len(texts[row]) < max_segments:
            open_rows[row_length - used[row]].append(row)
    rows = len(used)
    input_ids = np.full((rows, row_length), pad_id, np.int32)
    segment_ids = np.zeros((rows, row_length), np.int32)
    positions = np.zeros((rows, row_length), np.int32)
    slots = np.zeros((len(ids), 2), np.int64)
    for r, members in enumerate(texts):
        start = 0
        for k, t in enumerate(members):
            n = int(lengths[t])
            input_ids[r, start : start + n] = ids[t]
            segment_ids[r, start : start + n] = k + 1
            positions[r, start : start + n] = np.arange(n)
            slots[t] = (r, k)
            start += n
    return PackedRows(input_ids, segment_ids, positions, slots)


def attention_allowed(segment_ids):
    """``[batch, 1, q, k]`` bool: query and key belong to the same text (block diagonal).

    Padding (segment 0) attends only to padding, so no query row is masked whole (a row of
    nothing but masked logits would make a NaN that a later layer spreads), and no text attends
    to padding or to another text. Works on jax and numpy arrays.
    """
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
