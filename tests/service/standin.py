"""A tiny artifact for service tests, used while ``model.artifact.export_artifact`` is absent.

It has the loader's API (``encode``, ``score``, ``ood_score``, tables, views, features,
reference statistics, manifest with a backbone fingerprint) and a checksummed directory: a
tiny random BERT (the real ``model.bert`` encoder, MiniLM tokenizer) and a tiny random
``LeviHead``, both rebuilt deterministically from the seed in ``manifest.json``;
``weights.sha`` guards against corruption the way the real manifest's sha256 list does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from model.bert import BertConfig, BertEncoder
from model.features import fit_feature_spec
from model.head import HeadConfig, LeviHead, ensemble
from model.pooling import masked_mean
from model.templates import factored_views
from model.tokenizer import TextTokenizer

USERS = [
    {"user_id": "1", "age": 24, "gender": "M", "occupation": "writer", "zip_code": "55105"},
    {"user_id": "2", "age": 61, "gender": "F", "occupation": "doctor", "zip_code": "02139"},
    {"user_id": "3", "age": -1, "gender": "F", "occupation": "student", "zip_code": "94110"},
    {"user_id": "4", "age": 33, "gender": "M", "occupation": "engineer", "zip_code": "10001"},
]
ITEMS = [
    {"item_id": "10", "title": "Kolya (1996)", "genres": ("Comedy",)},
    {"item_id": "11", "title": "Heat (1995)", "genres": ("Action", "Crime")},
    {"item_id": "12", "title": "Toy Story (1995)", "genres": ("Animation", "Children's")},
]
GENRES = ("Action", "Animation", "Children's", "Comedy", "Crime")


class StandInError(ValueError):
    """The stand-in artifact directory is missing a file or fails its checksum."""


@dataclass(frozen=True)
class Reference:
    activation_mean: np.ndarray
    activation_var: np.ndarray
    prediction_edges: np.ndarray
    prediction_hist: np.ndarray
    disagreement_quantiles: np.ndarray


@dataclass
class StandInArtifact:
    path: Path
    manifest: dict
    model_version: str
    tokenizer: TextTokenizer
    features: Any
    views: Any
    head_config: HeadConfig
    users: pd.DataFrame
    items: pd.DataFrame
    reference: Reference
    _encode: Any
    _score: Any

    def encode(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(self._encode(input_ids, mask))

    def score(self, ids, multi_hot, activations) -> tuple[np.ndarray, np.ndarray]:
        adapters, rating = self._score(ids, multi_hot, activations)
        return np.asarray(adapters), np.asarray(rating)

    def ood_score(self, adapters: np.ndarray) -> np.ndarray:
        median = float(self.reference.disagreement_quantiles[1])
        return np.std(np.asarray(adapters), axis=-1) / median


def write_standin(root: Path, model_version: str, seed: int, tokenizer_path: Path) -> Path:
    out = Path(root) / model_version
    out.mkdir(parents=True, exist_ok=True)
    weights = f"seed={seed}".encode()
    (out / "weights.bin").write_bytes(weights)
    manifest = {
        "format_version": 1,
        "model_version": model_version,
        "seed": seed,
        "tokenizer": str(tokenizer_path),
        "activation_dtype": "float32",
        "files": {"weights.bin": hashlib.sha256(weights).hexdigest()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def load_standin(path: Path) -> StandInArtifact:
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise StandInError(f"{path}: manifest.json is missing")
    manifest = json.loads((path / "manifest.json").read_text())
    for name, sha in manifest["files"].items():
        data = (path / name).read_bytes() if (path / name).is_file() else b""
        if hashlib.sha256(data).hexdigest() != sha:
            raise StandInError(f"{path}/{name}: sha256 does not match manifest.json")
    seed = int(manifest["seed"])
    tokenizer = TextTokenizer(manifest["tokenizer"], max_length=32)
    bert = dataclasses.replace(BertConfig.tiny(), vocab_size=tokenizer._hf.get_vocab_size())
    encoder = BertEncoder(bert)
    ids0 = jnp.zeros((1, 8), jnp.int32)
    enc_params = jax.jit(encoder.init)(jax.random.key(seed), ids0, jnp.ones_like(ids0))
    encode = jax.jit(lambda i, m: masked_mean(encoder.apply(enc_params, i, m)))
    features = fit_feature_spec(USERS, ITEMS, genres=GENRES)
    views = factored_views()
    cfg = HeadConfig(
        vocab_sizes=features.vocab_sizes,
        n_multi_hot=features.n_multi_hot,
        layers=(0, 1),
        embed_dim=8,
        mlp_dims=(16, 8),
        adapter_hidden=8,
    )
    head = LeviHead(cfg)
    d, n_layers, n_views = bert.hidden_size, bert.num_layers, views.n_views
    head_params = jax.jit(head.init)(
        jax.random.key(seed + 1),
        jnp.zeros((1, len(cfg.vocab_sizes)), jnp.int32),
        jnp.zeros((1, cfg.n_multi_hot), jnp.float32),
        jnp.zeros((1, n_views, n_layers, d), jnp.float32),
    )

    @jax.jit
    def score(ids, multi_hot, acts):
        adapters = head.apply(head_params, ids, multi_hot, acts)
        return adapters, ensemble(adapters, cfg)

    fingerprint = hashlib.sha256(f"standin-bert-{seed}".encode()).hexdigest()
    manifest["backbone"] = {
        "name": "tiny-bert",
        "fingerprint": fingerprint,
        "n_layers": n_layers,
        "hidden_size": d,
        "length_buckets": [16, 32],
    }
    rng = np.random.default_rng(seed)
    reference = Reference(
        activation_mean=rng.normal(size=(n_views, n_layers, d)).astype(np.float32) * 0.1,
        activation_var=np.ones((n_views, n_layers, d), np.float32),
        prediction_edges=np.linspace(1.0, 5.0, 9),
        prediction_hist=np.array([1, 2, 5, 10, 20, 25, 15, 5], np.float64),
        disagreement_quantiles=np.array([0.05, 0.1, 0.3]),
    )
    return StandInArtifact(
        path=path,
        manifest=manifest,
        model_version=manifest["model_version"],
        tokenizer=tokenizer,
        features=features,
        views=views,
        head_config=cfg,
        users=pd.DataFrame(USERS),
        items=pd.DataFrame(ITEMS),
        reference=reference,
        _encode=encode,
        _score=score,
    )
