"""Real tiny artifacts for the service tests, and what an artifact answers on its own.

The artifacts are written by the real ``model.artifact_export.export_artifact`` from a tiny random
BERT (``BertConfig.tiny()``, a word-level tokenizer) and a tiny random ``LeviHead``, in one
artifacts root with a ``latest`` link; everything loads through ``model.artifact.load_artifact``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BACKBONE_NAME = "tiny-bert"

USERS = [
    {"user_id": "1", "age": 24, "gender": "M", "occupation": "writer", "zip_code": "55105"},
    {"user_id": "2", "age": 61, "gender": "F", "occupation": "doctor", "zip_code": "02139"},
    {"user_id": "3", "age": None, "gender": "F", "occupation": "student", "zip_code": "94110"},
    {"user_id": "4", "age": 33, "gender": "M", "occupation": "engineer", "zip_code": "10001"},
]
ITEMS = [
    {"item_id": "10", "title": "Kolya (1996)", "genres": ("Comedy",)},
    {"item_id": "11", "title": "Heat (1995)", "genres": ("Action", "Crime")},
    {"item_id": "12", "title": "Toy Story (1995)", "genres": ("Animation", "Children's")},
]
GENRES = ("Action", "Animation", "Children's", "Comedy", "Crime")
# What a dataset spec resolves to (training.spec.DatasetSpec.column_decls / views / summary).
USER_TEMPLATE = "user id {user_id}, age {age}, occupation {occupation}, zip code {zip_code}"
ITEM_TEMPLATE = "movie id {item_id}, title {title}"
DATASET = {
    "name": "tiny-service",
    "rating_scale": [1.0, 5.0],
    "columns": {
        "user": {
            "age": "numeric",
            "gender": "categorical",
            "occupation": "categorical",
            "zip_code": "categorical",
        },
        "item": {"title": "text", "genres": "multi_categorical"},
    },
    "split": {"kind": "item_attribute", "column": "genres", "in_distribution": ["Comedy"]},
}


def column_decls() -> tuple:
    from model.features import ColumnDecl

    return (
        ColumnDecl("age", "user", "numeric", edges=(18.0, 25.0, 35.0, 45.0, 50.0, 56.0)),
        ColumnDecl("gender", "user", "categorical", mlp=False),
        ColumnDecl("occupation", "user", "categorical"),
        ColumnDecl("zip_code", "user", "categorical", prefix=3),
        ColumnDecl("title", "item", "text", mlp=False),
        ColumnDecl("genres", "item", "multi_categorical"),
    )


# Words of the rendered texts (lower-cased); anything else is [UNK], as cold starts may be.
WORDS = (
    "user",
    "id",
    "age",
    "occupation",
    "zip",
    "code",
    "movie",
    "title",
    "unknown",
    ",",
    "(",
    ")",
    "writer",
    "doctor",
    "student",
    "engineer",
    "artist",
    "lawyer",
    "kolya",
    "heat",
    "toy",
    "story",
    "brand",
    "new",
    "space",
    "oddity",
    "1995",
    "1996",
    "55105",
    "02139",
    "94110",
    "10001",
    *map(str, range(64)),
)


def _write_tokenizer(path: Path) -> Path:
    from support.tiny_assets import write_word_tokenizer

    return write_word_tokenizer(path, WORDS)


def random_params(module: Any, args: tuple, seed: int, *, out_bias: float = 0.0) -> Any:
    """Random variables of ``module`` without compiling its initializers.

    ``jax.eval_shape`` gives the tree (no XLA compile: a jitted Flax init costs seconds per
    module on 2 cores); numpy fills it: LayerNorm scales 1, biases 0 (an ``out`` bias
    ``out_bias``, so a head starts at the mean rating), weights ``N(0, 1 / fan_in)``.
    """
    import jax

    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: Any) -> np.ndarray:
        names = [str(getattr(p, "key", p)) for p in path]
        if names[-1] == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if names[-1] == "bias":
            return np.full(leaf.shape, out_bias if "out" in names else 0.0, leaf.dtype)
        fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _tiny_backbone(tokenizer_path: Path, seed: int):
    """``BertConfig.tiny()`` with random weights (2 layers, hidden 32, max length 32)."""
    from support.tiny_assets import tiny_bert

    return tiny_bert(
        tokenizer_path,
        name=BACKBONE_NAME,
        params_fn=lambda module, args: random_params(module, args, seed),
    )


# The online corrections' shrinkage of the tiny artifacts (training fits them; these differ
# per kind, so a test sees which one was used).
TINY_CORRECTIONS = {"k_item": 6.0, "k_user": 15.0, "k_item_oov": 2.0}


def export_tiny(
    root: Path, model_version: str, seed: int, tokenizer_path: Path, head_seed: int | None = None
) -> Path:
    """A real artifact ``root/<model_version>`` (and ``root/latest``) from random weights.

    ``head_seed`` (default ``seed``) draws the head alone: two artifacts of one ``seed`` and
    different head seeds share their backbone, as a retrain does."""
    from model.artifact_export import export_artifact
    from model.features import fit_feature_spec
    from model.head import LeviHead
    from model.head_config import HeadConfig
    from model.reference import ReferenceStats
    from model.templates import views_from_templates

    backbone = _tiny_backbone(tokenizer_path, seed)
    features = fit_feature_spec(column_decls(), USERS, ITEMS)
    assert features.n_multi_hot == len(GENRES)
    views = views_from_templates(user=USER_TEMPLATE, item=ITEM_TEMPLATE)
    config = HeadConfig(
        vocab_sizes=features.vocab_sizes,
        n_multi_hot=features.n_multi_hot,
        layers=(0, 1),
        embed_dim=8,
        mlp_dims=(16, 8),
        adapter_hidden=8,
    )
    n_views, n_layers, d = views.n_views, backbone.n_layers, backbone.hidden_size
    head_args = (
        np.zeros((1, len(config.vocab_sizes)), np.int32),
        np.zeros((1, config.n_multi_hot), np.float32),
        np.zeros((1, n_views, n_layers, d), np.float32),
    )
    head_params = random_params(
        LeviHead(config),
        head_args,
        (seed if head_seed is None else head_seed) + 100,
        out_bias=config.rating_mean,
    )
    rng = np.random.default_rng(seed)
    reference = ReferenceStats(
        activation_mean=rng.normal(size=(n_views, n_layers, d)) * 0.1,
        activation_var=np.ones((n_views, n_layers, d)),
        prediction_edges=np.linspace(1.0, 5.0, 9),
        prediction_hist=np.array([1, 2, 5, 10, 20, 25, 15, 5]) / 83,
        disagreement_quantiles=np.array([0.05, 0.1, 0.3]),
    )
    return export_artifact(
        root,
        model_version=model_version,
        backbone=backbone,
        head_config=config,
        head_params=head_params,
        features=features,
        views=views,
        users=pd.DataFrame(USERS),
        items=pd.DataFrame(ITEMS),
        reference=reference,
        dataset=DATASET,
        training_config={"source": "tests/service (random weights)", "seed": seed},
        platforms=("cpu",),
        corrections=TINY_CORRECTIONS,
    )


@dataclass(frozen=True)
class Artifacts:
    root: Path
    v1: Path
    v2: Path
    v3: Path  # v1's backbone, another head (a retrain), in its own root
    loader: Any  # path -> model.artifact.Artifact (cached)


def _pandas_records(table) -> list[dict]:
    """An artifact table's records the way pandas gives them (multi-valued cells as tuples):
    independent of the service's Arrow reading (service/entity_store.py)."""
    records = table.to_pandas().to_dict("records")
    return [
        {k: tuple(v) if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in records
    ]


def direct_scores(art, pairs: list[dict]) -> list[dict]:
    """What the artifact itself answers, one pair and one text at a time (no service code).

    Known ids take their table records, request fields override; unknown ids start from an
    empty record (every field missing).
    """
    users = {str(r["user_id"]): r for r in _pandas_records(art.users)}
    items = {str(r["item_id"]): r for r in _pandas_records(art.items)}
    out = []
    for p in pairs:
        user = dict(users.get(p["user_id"], {"user_id": p["user_id"]}))
        user.update({k: v for k, v in (p.get("user") or {}).items() if v is not None})
        item = dict(items.get(p["item_id"], {"item_id": p["item_id"]}))
        item.update({k: v for k, v in (p.get("item") or {}).items() if v is not None})
        acts = []
        for text in art.views.render(user, item):
            ids, mask = art.tokenizer.pad(art.tokenizer.encode([text]))
            acts.append(np.asarray(art.encode(ids, mask))[0])
        feats = art.features.encode([user], [item])
        adapters, rating = art.score(feats["ids"], feats["multi_hot"], np.stack(acts)[None])
        out.append(
            {
                "rating": float(np.asarray(rating)[0]),
                "adapters": [float(a) for a in np.asarray(adapters)[0]],
                "ood_score": float(np.asarray(art.ood_score(np.asarray(adapters)))[0]),
            }
        )
    return out
