"""The tiny test assets, built one way for every test: a word-level tokenizer and a 2-layer,
32-wide random BERT (``BertConfig.tiny()``, max length 32, length buckets 16 and 32)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def write_word_tokenizer(path: Path, words: Iterable[str], *, lowercase: bool = True) -> Path:
    """A ``tokenizer.json``: ``[CLS] words [SEP]``, anything else ``[UNK]`` (ids in the order
    of ``words``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([*SPECIALS, *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path = Path(path)
    tok.save(str(path))
    json.loads(path.read_text())  # written and valid
    return path


def tiny_bert(
    tokenizer_path: Path,
    *,
    name: str = "tiny",
    seed: int = 0,
    params_fn: Callable[[Any, tuple], Any] | None = None,
):
    """A ``model.backbone.Backbone`` over ``BertConfig.tiny()``.

    Args:
        params_fn: ``(module, example args) -> params``; default Flax's init with ``seed``.
    """
    import jax

    from model.backbone import Backbone, compute_fingerprint
    from model.bert import BertConfig, BertEncoder
    from model.tokenizer import TextTokenizer

    config = BertConfig.tiny()
    tokenizer = TextTokenizer(tokenizer_path, max_length=32)
    ids = np.zeros((1, 8), np.int32)
    module, args = BertEncoder(config), (ids, np.ones_like(ids))
    params = params_fn(module, args) if params_fn else module.init(jax.random.key(seed), *args)
    return Backbone(
        name=name,
        family="bert",
        config=config,
        params=params,
        tokenizer=tokenizer,
        fingerprint=compute_fingerprint("bert", config, params, tokenizer),
        buckets=(16, 32),
        encode_buckets=(16, 32),
    )
