"""Texts to pooled activations in padded, length-bucketed batches: one loop for the backbone,
the trainer's check of the exported model and the service.

Texts are sorted by token count so each batch pads to the shortest length bucket that holds
its longest text; a batch's rows are padded (empty rows, mask 0) to a row bucket. With the
same buckets (the manifest's ``length_buckets``) the trainer scores the exported model with
exactly the shapes the service compiles and calls.

A bulk encode may pack instead (:class:`Packing`, ``model.packing``): the texts that fit a
row go several to a row, in calls of one shape, when that costs less than the buckets would
(token slots, a packed one counted at ``PACKED_SLOT_COST``: texts of similar lengths just over
half a row would each take a row of their own); longer texts take the buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from model.packing import PackedRows, pack_sequences
from model.tokenizer import TextTokenizer, bucket_length

# What a packed token slot costs next to a bucketed one: attention spans the whole row. The
# MovieLens texts run even per pass packed and bucketed with 10.4% fewer packed slots
# (docs/PROFILING.md, "Seventh pass"), so packing is chosen only when it saves more than that.
PACKED_SLOT_COST = 1.1
# (input_ids, segment_ids, positions: int32 [rows, row_length]) -> [rows, S, n_layers, d]
PackedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Packing:
    """How a bulk encode packs its texts (``model.packing``).

    Attributes:
        fn: the encoder on packed rows (pooled per text).
        row_length: tokens per row; longer texts are encoded in length buckets.
        rows_per_call: rows per call, the one compiled shape ``[rows_per_call, row_length]``
            (the last call is padded with empty rows).
        max_segments: texts per row at most (``S`` of ``fn``'s output).
    """

    fn: PackedFn
    row_length: int
    rows_per_call: int
    max_segments: int


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
    packing: Packing | None = None,
) -> np.ndarray:
    """Pooled activations of ``texts``, in their order.

    Args:
        tokenizer: truncates at its ``max_length``.
        fn: ``(input_ids int32 [b, l], mask int32 [b, l]) -> [b, n_layers, d]``.
        length_buckets: token lengths a batch is padded to (the smallest that holds it).
        row_buckets: batch sizes; a batch holds at most ``row_buckets[-1]`` texts and is padded
            to the smallest bucket that holds it (``(64,)``: always 64 rows).
        out_shape: ``(n_layers, d)``.
        packing: pack the texts that fit a row (:class:`Packing`) when that costs less than
            length buckets would (token slots, a packed one at ``PACKED_SLOT_COST``); the
            rest, and all texts otherwise, go in length-bucketed batches through ``fn``.

    Returns:
        float32 ``[len(texts), n_layers, d]``.
    """
    out = np.zeros((len(texts), *out_shape), dtype=np.float32)
    if not len(texts):
        return out
    ids = tokenizer.encode(list(texts))
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    rest = np.arange(len(ids))
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
        if packing is not None:
            fits = lengths <= packing.row_length
            short = np.flatnonzero(fits)
            packed = pack_sequences(
                [ids[i] for i in short], packing.row_length, packing.max_segments, tokenizer.pad_id
            )
            if len(short) and PACKED_SLOT_COST * _packed_slots(packed, packing) <= (
                _bucketed_slots(lengths[short], length_buckets, row_buckets)
            ):
                out[short] = _encode_packed(packed, packing, bar).reshape(len(short), *out_shape)
                rest = np.flatnonzero(~fits)
        order = rest[np.argsort(lengths[rest], kind="stable")]
        chunk = row_buckets[-1]
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            batch = [ids[i] for i in rows]
            batch += [[]] * (bucket_length(len(batch), row_buckets) - len(batch))
            input_ids, mask = tokenizer.pad(batch, length_buckets)
            out[rows] = np.asarray(fn(input_ids, mask), dtype=np.float32)[: len(rows)]
            bar.update(len(rows))
    return out


def _packed_slots(rows: PackedRows, packing: Packing) -> int:
    """Token slots the packed calls take (the last call's empty rows included)."""
    calls = -(-len(rows.input_ids) // packing.rows_per_call)
    return calls * packing.rows_per_call * packing.row_length


def _bucketed_slots(
    lengths: np.ndarray, length_buckets: Sequence[int], row_buckets: Sequence[int]
) -> int:
    """Token slots (rows x padded length) of these texts in length-sorted bucketed batches."""
    ordered = np.sort(lengths)
    chunk = row_buckets[-1]
    return sum(
        bucket_length(len(part), row_buckets) * bucket_length(int(part[-1]), length_buckets)
        for part in (ordered[s : s + chunk] for s in range(0, len(ordered), chunk))
    )


def _encode_packed(rows: PackedRows, packing: Packing, bar: tqdm) -> np.ndarray:
    """Pooled activations ``[n_texts, n_layers, d]`` of packed texts, in ``rows.slots`` order.

    Raises:
        ValueError: ``packing.fn`` pools fewer segments per row than ``packing.max_segments``.
    """
    per_call, n_rows = packing.rows_per_call, len(rows.input_ids)
    by_row = np.argsort(rows.slots[:, 0], kind="stable")  # texts in row order
    starts = np.arange(0, n_rows + per_call, per_call)
    bounds = np.searchsorted(rows.slots[by_row, 0], starts)  # by_row[bounds[c]:...]: call c's
    parts = []
    for c, start in enumerate(starts[:-1]):
        take = slice(start, start + per_call)
        columns = (rows.input_ids, rows.segment_ids, rows.positions)
        pooled = np.asarray(
            packing.fn(*(pad_rows(a[take], per_call) for a in columns)), dtype=np.float32
        )  # [rows, S, n_layers, d]
        if pooled.shape[1] < packing.max_segments:
            raise ValueError(
                f"the packed encoder pools {pooled.shape[1]} texts per row, but rows hold up "
                f"to {packing.max_segments}"
            )
        texts = by_row[bounds[c] : bounds[c + 1]]
        parts.append(pooled[rows.slots[texts, 0] - start, rows.slots[texts, 1]])
        bar.update(len(texts))
    out = np.concatenate(parts)
    return out[np.argsort(by_row, kind="stable")]  # back to the order of rows.slots


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
