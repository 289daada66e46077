"""Tokenizers for the text view: ``tokenizer.json`` or sentencepiece ``spiece.model``.

Batches are padded to the smallest of a few bucket lengths, so a short text is never padded
to the longest possible length and the jitted encoder compiles once per bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.hf_checkpoint import CheckpointError

LENGTH_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)


def buckets_up_to(max_length: int, buckets: Sequence[int] = LENGTH_BUCKETS) -> tuple[int, ...]:
    """The buckets shorter than ``max_length``, then ``max_length`` itself.

    A batch is never padded past the tokenizer's limit (a BERT position table may end there),
    and texts cut at the limit get a bucket of their own, e.g. ``(.., 128, 192, 256)`` at 256.
    """
    return (*(int(b) for b in buckets if b < max_length), int(max_length))


def bucket_length(n: int, buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
    """The smallest bucket that holds ``n`` tokens (the largest bucket if none does)."""
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


class TextTokenizer:
    """Turns texts into token ids with the checkpoint's own special tokens.

    Args:
        path: ``tokenizer.json`` (Hugging Face tokenizers, post-processor adds [CLS]/[SEP] or
            </s>) or ``spiece.model`` (sentencepiece; an EOS id is appended as T5 does).
        max_length: texts are truncated to this many tokens, special tokens included.
    """

    def __init__(self, path: str | Path, max_length: int = 512):
        self.path = Path(path)
        self.max_length = max_length
        if not self.path.is_file():
            raise CheckpointError(f"tokenizer file {self.path} does not exist")
        if self.path.suffix == ".json":
            from tokenizers import Tokenizer

            try:
                tok = Tokenizer.from_file(str(self.path))
            except Exception as e:  # tokenizers raises a bare Exception on bad files
                raise CheckpointError(f"{self.path}: not a valid tokenizer.json ({e})") from None
            tok.no_padding()
            tok.enable_truncation(max_length)
            self._hf = tok
            self._sp = None
            self.pad_id = next(
                (i for t in ("[PAD]", "<pad>") if (i := tok.token_to_id(t)) is not None), 0
            )
        else:
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            try:
                sp.Load(str(self.path))
            except (OSError, RuntimeError) as e:
                raise CheckpointError(
                    f"{self.path}: not a valid sentencepiece model ({e})"
                ) from None
            self._hf = None
            self._sp = sp
            self.pad_id = max(sp.pad_id(), 0)

    @property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer file."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, truncated to ``max_length``."""
        if self._hf is not None:
            return [e.ids for e in self._hf.encode_batch(list(texts))]
        eos = self._sp.eos_id()
        return [ids[: self.max_length - 1] + [eos] for ids in self._sp.encode(list(texts))]

    def truncates(self, text: str) -> bool:
        """Whether ``text`` has more tokens than ``max_length`` (and so is cut)."""
        if len(text) < self.max_length // 2:  # cheap: fewer characters than half the limit
            return False
        if self._hf is not None:
            return bool(self._hf.encode(text).overflowing)
        return len(self._sp.encode(text)) > self.max_length - 1

    def decode(self, ids: Sequence[int]) -> str:
        if self._hf is not None:
            return self._hf.decode(list(ids), skip_special_tokens=True)
        return self._sp.decode([i for i in ids if i != self._sp.eos_id()])

    def pad(
        self, ids: Sequence[Sequence[int]], buckets: Sequence[int] = LENGTH_BUCKETS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pad a batch to its bucket length.

        Returns:
            ``(input_ids, mask)``, both int32 ``[batch, bucket_length]``.
        """
        length = bucket_length(max((len(x) for x in ids), default=1), buckets)
        input_ids = np.full((len(ids), length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(ids), length), dtype=np.int32)
        for i, row in enumerate(ids):
            row = row[:length]
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return input_ids, mask
