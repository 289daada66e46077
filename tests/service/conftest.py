"""Fixtures of the service tests: real tiny artifacts (two versions), Redis, a uvicorn server.

The artifacts are written by the real ``model.artifact.export_artifact`` from a tiny random
BERT (``BertConfig.tiny()``, a word-level tokenizer) and a tiny random ``LeviHead``, in one
artifacts root with a ``latest`` link; everything loads through ``model.artifact.load_artifact``.

Redis: ``REDIS_URL`` (default redis://127.0.0.1:6379/0). Unreachable Redis skips the tests
that need it, or fails them with ``LEVI_REQUIRE_REDIS=1``. Every run writes under its own
key prefix and deletes it at the end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
SERVER_MAX_BATCH = 4
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
    from tiny_assets import write_word_tokenizer

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
    from tiny_assets import tiny_bert

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
    from model.artifact import export_artifact
    from model.features import fit_feature_spec
    from model.head import HeadConfig, LeviHead
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


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    from model.artifact import load_artifact

    work = tmp_path_factory.mktemp("tiny-model")
    tokenizer = _write_tokenizer(work / "tokenizer.json")
    root = tmp_path_factory.mktemp("artifacts")
    v1 = export_tiny(root, "tiny-v1", 0, tokenizer)
    v2 = export_tiny(root, "tiny-v2", 1, tokenizer)
    assert (root / "latest").resolve() == v2.resolve()
    v3 = export_tiny(tmp_path_factory.mktemp("artifacts-retrain"), "tiny-v3", 0, tokenizer, 7)
    return Artifacts(root, v1, v2, v3, functools.cache(lambda p: load_artifact(Path(p))))


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        message = f"Redis at {url} is unreachable ({e}); start it or set REDIS_URL"
        if os.environ.get("LEVI_REQUIRE_REDIS") == "1":
            pytest.fail(message + " (LEVI_REQUIRE_REDIS=1)")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_client(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def key_prefix(redis_client):
    prefix = f"levi:test:{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(scope="session")
def redis_proxy(redis_url):
    """A stoppable TCP path to the real Redis."""
    pool = redis.Redis.from_url(redis_url).connection_pool
    kwargs = pool.connection_kwargs
    proxy = TcpProxy((kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))))
    proxy.start()
    yield proxy
    proxy.stop()


def proxied_url(redis_url: str, proxy: TcpProxy) -> str:
    db = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0)
    return f"redis://127.0.0.1:{proxy.port}/{db}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"server not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    log: Path

    def metrics(self) -> dict[tuple[str, tuple], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (all its series)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and want <= set(ls))


@contextlib.contextmanager
def start_server(
    model_dir: Path, log: Path, compile_cache: Path, timeout: float = 240, **env: str | None
) -> Iterator[Server]:
    """A ``python -m service`` subprocess on a free 127.0.0.1 port, ready; stopped on exit.

    ``env`` holds ``LEVI_*`` / ``REDIS_URL`` variables; a value of None removes one. Redis and
    the admin token are off unless given.
    """
    with launch_server(model_dir, log, compile_cache, **env) as srv:
        wait_ready(srv.base, srv.proc, log, timeout=timeout)
        yield srv


@contextlib.contextmanager
def launch_server(
    model_dir: Path, log: Path, compile_cache: Path, **env: str | None
) -> Iterator[Server]:
    """:func:`start_server` without waiting for ready (the process may still be loading)."""
    port = free_port()
    full = dict(
        os.environ,
        LEVI_MODEL_DIR=str(model_dir),
        LEVI_HOST="127.0.0.1",
        LEVI_PORT=str(port),
        LEVI_COMPILATION_CACHE_DIR=str(compile_cache),
        PYTHONPATH=str(ROOT),
    )
    for k in ("REDIS_URL", "LEVI_REDIS_URL", "LEVI_ADMIN_TOKEN"):
        full.pop(k, None)
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=full,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        yield Server(base, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server(artifacts, redis_url, redis_proxy, key_prefix, compile_cache, tmp_path_factory):
    """One ``python -m service`` (uvicorn) process for the e2e tests, Redis behind the proxy."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with start_server(
        artifacts.v1,
        log,
        compile_cache,
        REDIS_URL=proxied_url(redis_url, redis_proxy),
        LEVI_CACHE_KEY_PREFIX=key_prefix,
        LEVI_ADMIN_TOKEN=ADMIN_TOKEN,
        LEVI_MAX_BATCH=str(SERVER_MAX_BATCH),
        LEVI_REDIS_BACKOFF_S="0.2",
        LEVI_REDIS_BACKOFF_MAX_S="0.5",
    ) as srv:
        yield srv


@contextlib.contextmanager
def loaded_client(model_dir: Path, compile_cache: Path, **settings: Any) -> Iterator[Any]:
    """A ``fastapi.testclient.TestClient`` on the real app, returned once the model is warm.

    Redis is off unless ``redis_url`` is among ``settings``.
    """
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    config = Settings(
        **{
            "model_dir": model_dir,
            "redis_url": None,
            "compilation_cache_dir": compile_cache,
            **settings,
        }
    )
    with TestClient(create_app(config)) as c:
        until = time.monotonic() + 240
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < until, c.get("/readyz").text
            time.sleep(0.05)
        yield c


def direct_scores(art, pairs: list[dict]) -> list[dict]:
    """What the artifact itself answers, one pair and one text at a time (no service code).

    Known ids take their table records, request fields override; unknown ids start from an
    empty record (every field missing).
    """
    users = {str(r["user_id"]): r for r in art.users.to_dict("records")}
    items = {str(r["item_id"]): r for r in art.items.to_dict("records")}
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
