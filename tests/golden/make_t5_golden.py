"""Make the T5 parity goldens: small random T5 1.0 and 1.1 encoders run by the reference.

Run with a Python that has torch, transformers and sentencepiece (not project dependencies)::

    /tmp/refvenv/bin/python tests/golden/make_t5_golden.py

Writes ``tests/assets/t5_v1_{0,1}_tiny/`` (Hugging Face format: config.json, model.safetensors
of a ``T5EncoderModel``, spiece.model) and ``tests/golden/t5_v1_{0,1}_tiny.npz`` with the texts,
their ids (sentencepiece + ``</s>``, padded with 0), the mask, and the masked-mean pooled
``output_hidden_states[1:]`` of every layer (``pooled``, float32 ``[n, n_layers, d]``; the last
layer is after the final layer norm, as the reference reports it).

The sentencepiece model uses the identity normalizer so it stays a few KB (the NFKC table of
real T5 vocabularies is 240 KB); the tokenizer path is the same either way.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers
from transformers import T5Config, T5EncoderModel

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "assets"
VOCAB = 256
TEXTS = [
    "user id 196, age 49, occupation writer, zip code 55105",
    "movie id 242, title Kolya (1996)",
    "When the user id is 138, the user occupation is doctor, what can be the user rating on "
    "this movie? The movie title is Star Wars (1977) and it is an adventure.",
    "hi",
    "movie id 1, title Toy Story (1995), genres Animation, Children's, Comedy",
    "user id 7, age 57, occupation administrator, zip code 91344 — café naïve",
    # Over 128 tokens, so some query-key distances reach the clipped last bucket.
    ", ".join(f"movie id {i}" for i in range(30)),
]
# (version, feed_forward_proj, layers, torch seed)
VERSIONS = (("v1_0", "relu", 2, 0), ("v1_1", "gated-gelu", 3, 1))


def corpus(n: int = 300) -> list[str]:
    """MovieLens-like sentences to train the tiny sentencepiece vocabulary on."""
    rng = random.Random(0)
    jobs = ["writer", "doctor", "student", "engineer", "artist", "administrator", "other"]
    words = ["Star", "Wars", "Toy", "Story", "Kolya", "movie", "rating", "adventure", "night"]
    lines = []
    for i in range(n):
        lines.append(
            f"user id {rng.randint(1, 943)}, age {rng.randint(7, 73)}, occupation "
            f"{rng.choice(jobs)}, zip code {rng.randint(10000, 99999)}"
        )
        lines.append(
            f"movie id {i}, title {' '.join(rng.sample(words, 3))} ({rng.randint(1930, 1998)})"
        )
    return lines + TEXTS


def train_tokenizer() -> bytes:
    """A unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=VOCAB,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        model_type="unigram",
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return model.getvalue()


def main() -> None:
    spiece = train_tokenizer()
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    ids = [sp.encode(t) + [sp.eos_id()] for t in TEXTS]  # T5 appends </s>
    length = max(map(len, ids))
    assert length > 128, f"the long text has only {length} tokens"
    input_ids = np.zeros((len(ids), length), np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    for version, proj, layers, seed in VERSIONS:
        torch.manual_seed(seed)
        cfg = T5Config(
            vocab_size=VOCAB,
            d_model=64,
            d_kv=16,
            num_heads=4,
            d_ff=128,
            num_layers=layers,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            feed_forward_proj=proj,
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
        )
        model = T5EncoderModel(cfg).eval()
        out_dir = ASSETS / f"t5_{version}_tiny"
        model.save_pretrained(out_dir, safe_serialization=True)
        (out_dir / "spiece.model").write_bytes(spiece)
        with torch.no_grad():
            hidden = model(
                input_ids=torch.tensor(input_ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                output_hidden_states=True,
            ).hidden_states
        x = torch.stack(hidden[1:], 1).float()  # [n, n_layers, length, d]
        m = torch.tensor(mask, dtype=torch.float32)[:, None, :, None]  # [n, 1, length, 1]
        pooled = ((x * m).sum(2) / m.sum(2)).numpy().astype(np.float32)  # [n, n_layers, d]
        np.savez_compressed(
            HERE / f"t5_{version}_tiny.npz",
            texts=np.array(TEXTS),
            input_ids=input_ids,
            mask=mask,
            pooled=pooled,
            reference=np.array(
                f"torch {torch.__version__}, transformers {transformers.__version__}"
            ),
        )
        print(version, pooled.shape, out_dir)


if __name__ == "__main__":
    main()
