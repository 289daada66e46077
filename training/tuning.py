"""Stage 2a of a run (``--backbone-tuning``): the backbone light-tuned on the task before LEVI
reads it, as the paper's headline LEVI does (Roh et al. 2024, Sec. D.2, Table 14).

The backbone's selected parameters are trained with a small regression head
(``model.text_regressor``: the pooled last layer of every text view -> a rating) on ID train,
early-stopped on ID validation RMSE:

* ``half`` (HT): the top half of the transformer layers;
* ``lora``: LoRA adapters (``model.lora``) on the attention and feed-forward projections,
  merged into the weights afterwards;
* ``full`` (FT): every parameter, embeddings included;
* ``lpft`` (LP-FT): the head trained on the frozen encoder first, then ``full``.

Cheap on CPU: the frozen bottom layers' output of each distinct text is computed once
(``model.layer_split.bottom``); each step samples texts and the pairs among them
(``training.tuning_data``) and runs only the tuned layers, forward and backward, over the
step's distinct texts. The step is data parallel over the local devices' mesh (texts and
pairs sharded on ``data``, parameters replicated); with several processes each process tunes
the same backbone from the same data and seed on its own devices.

The result is an ordinary :class:`model.backbone.Backbone` (LoRA merged), whose fingerprint
(a hash of its weights) differs from the pre-trained one, so activation caches never mix. The
tuned weights, the head and the tuned encoder's scores are kept under
``<output dir>/.tuned/<key>`` (key: base fingerprint, tuning config, data), so a second run
with other LEVI seeds does not tune again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from model.backbone import Backbone, compute_fingerprint
from model.layer_split import EMBEDDINGS, bottom, top_pooled_last
from model.lora import init_lora, merge_lora
from model.text_regressor import TextRegressor
from training import evaluate
from training.config import TuningConfig
from training.evaluate import rmse
from training.precompute import render_views
from training.tuning_data import StepSampler, bottom_outputs, text_groups

PyTree = Any
EVAL_CHUNK = 256  # texts per jitted forward when scoring


@dataclass(frozen=True)
class TuningResult:
    """What the tuning stage hands on.

    Attributes:
        backbone: the tuned encoder (LoRA merged), a new fingerprint.
        scores: the tuned encoder with its head alone on ID test and OOD
            (``training.evaluate.score_method``), the report row ``config.row``.
        summary: for the report: kind, split point, steps, validation RMSE, seconds, ...
    """

    backbone: Backbone
    scores: dict
    summary: dict


def split_point(kind: str, n_layers: int, lora_from_layer: int = 0) -> int:
    """The first tuned layer (``model.layer_split``): ``half`` the top half (layers
    ``n // 2 ..``), ``lora`` ``lora_from_layer``, ``full``/``lpft`` the embeddings."""
    if kind == "half":
        return n_layers // 2
    if kind == "lora":
        return lora_from_layer
    return EMBEDDINGS


def _top_keys(start: int, n_layers: int) -> list[str]:
    keys = ["embeddings"] if start == EMBEDDINGS else []
    return keys + [f"layers_{i}" for i in range(max(start, 0), n_layers)]


@dataclass(frozen=True)
class _Plan:
    """How the encoder's parameters split into what is trained and what is not."""

    kind: str
    start: int
    lora_alpha: float

    @property
    def lora(self) -> bool:
        return self.kind == "lora"

    def split(self, params: PyTree, n_layers: int, key: jax.Array, rank: int):
        """``(trainable, frozen)``: trees of what ``top`` reads (frozen: only what it reads)."""
        p = params["params"]
        keys = _top_keys(self.start, n_layers)
        if self.lora:
            lora = init_lora(key, params, range(max(self.start, 0), n_layers), rank)
            return lora, {k: p[k] for k in keys}
        return {k: p[k] for k in keys}, {}

    def encoder(self, trainable: PyTree, frozen: PyTree) -> tuple[PyTree, PyTree]:
        """``(params for top, LoRA adapters or None)``."""
        if self.lora:
            return {"params": frozen}, trainable
        return {"params": {**frozen, **trainable}}, None

    def merged(self, base: PyTree, trainable: PyTree) -> PyTree:
        """The whole tuned encoder's parameters (LoRA merged into the kernels)."""
        if self.lora:
            return merge_lora(base, trainable, self.lora_alpha)
        return {"params": {**base["params"], **trainable}}


def _optimizer(plan: _Plan, cfg: TuningConfig) -> optax.GradientTransformation:
    enc_lr = cfg.lora_lr if plan.lora else cfg.lr
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {"encoder": optax.adamw(enc_lr, weight_decay=0.0), "head": optax.adam(cfg.head_lr)},
            {"encoder": "encoder", "head": "head"},
        ),
    )


@functools.lru_cache(maxsize=8)
def _compiled(config, plan: _Plan, cfg: TuningConfig, rating_mean: float, mesh: Mesh):
    """Jitted ``step``, ``pooled`` (the tuned top's last layer) and ``head`` functions."""
    head = TextRegressor(cfg.head_hidden, rating_mean)
    tx = _optimizer(plan, cfg)
    shard = NamedSharding(mesh, P("data"))

    def pooled(trainable, frozen, x, mask):
        enc, lora = plan.encoder(trainable, frozen)
        return top_pooled_last(config, enc, x, mask, plan.start, lora, plan.lora_alpha)

    def loss_fn(state_params, frozen, caches, masks, batch, groups_of_view):
        trainable, head_params = state_params["encoder"], state_params["head"]
        views = []
        for groups in groups_of_view:
            parts = []
            for g in groups:
                sel = jax.lax.with_sharding_constraint(batch["selected"][g], shard)
                x, m = caches[g][sel], masks[g][sel]  # [n_sel, l, d] (ids for FT), [n_sel, l]
                parts.append(pooled(trainable, frozen, x, m))
            views.append(jnp.concatenate(parts))  # [n_sel_v, d]
        pos = jax.lax.with_sharding_constraint(batch["positions"], shard)
        feats = jnp.stack([v[pos[:, k]] for k, v in enumerate(views)], axis=1)  # [P, n_views, d]
        pred = head.apply(head_params, feats)  # [P]
        w = batch["weights"]
        return jnp.sum(w * (pred - batch["ratings"]) ** 2) / jnp.maximum(jnp.sum(w), 1.0)

    def step(state, frozen, caches, masks, batch, groups_of_view):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(
            params, frozen, caches, masks, batch, groups_of_view
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return {
        "step": jax.jit(step, static_argnames="groups_of_view", donate_argnums=0),
        "pooled": jax.jit(pooled),
        "head": jax.jit(head.apply),
        "tx": tx,
    }


def tuning_key(backbone: Backbone, cfg: TuningConfig, texts, index, ratings, rows) -> str:
    """What a tuned backbone depends on: the base weights, the tuning config, the texts and
    the ID train and validation pairs."""
    h = hashlib.sha256(backbone.fingerprint.encode())
    fields = {k: v for k, v in cfg.__dict__.items() if k != "compare_frozen"}  # not tuning
    h.update(json.dumps(fields, sort_keys=True).encode())
    for view in texts:
        h.update("\x1f".join(view).encode())
    for part in ("train", "val"):
        h.update(np.ascontiguousarray(index[rows[part]]).tobytes())
        h.update(np.ascontiguousarray(ratings[rows[part]]).tobytes())
    return h.hexdigest()[:16]


def tune_backbone(
    prep,
    backbone: Backbone,
    cfg: TuningConfig,
    *,
    cache_root: Path | None,
    log: Callable[[str], None] = print,
    mesh: Mesh | None = None,
) -> TuningResult:
    """Tune ``backbone`` on ``prep``'s ID train pairs (see the module docstring).

    Args:
        prep: ``training.prepare.Prepared`` (before encoding): views, entities, pairs, rows.
        cache_root: where tuned backbones are kept (None: never kept, always tuned).
        mesh: the devices (default: every local device on one ``data`` axis).

    Raises:
        ValueError: a ``pair`` view (one text per pair cannot be cached per entity), a
            backbone family other than ``bert``, or no ID train or validation pairs.
    """
    if backbone.family != "bert":
        raise ValueError(
            f"backbone tuning supports BERT-family encoders (minilm-l6, bert), not "
            f"{backbone.family!r}; pass --backbone-tuning none"
        )
    if any(v.entity not in ("user", "item") for v in prep.views.views):
        raise ValueError(
            "backbone tuning needs factored text views (one text per user and per item); "
            "this spec has a pair view"
        )
    if not len(prep.rows["train"]) or not len(prep.rows["val"]):
        raise ValueError("backbone tuning needs ID train and validation pairs")
    start = time.perf_counter()
    pairs = prep.pairs
    texts, index = render_views(prep.views, prep.users, prep.items, pairs.user, pairs.item)
    ratings = np.asarray(prep.pairs.rating, np.float32)
    key = tuning_key(backbone, cfg, texts, index, ratings, prep.rows)
    directory = None if cache_root is None else Path(cache_root) / key
    if directory is not None and (directory / "summary.json").is_file():
        result = _load_tuned(directory, backbone, cfg)
        log(f"tuning: {cfg.kind} backbone {key} from {directory} (not tuned again)")
        return result

    mesh = mesh or Mesh(np.array(jax.local_devices()), ("data",))
    n_layers = backbone.n_layers
    plan = _Plan(cfg.kind, split_point(cfg.kind, n_layers, cfg.lora_from_layer), cfg.lora_alpha)
    mu = float(ratings[prep.rows["train"]].mean())
    head = TextRegressor(cfg.head_hidden, mu)
    lo, hi = prep.spec.rating_scale.bounds

    groups = text_groups(backbone.tokenizer, texts, index, prep.rows["train"])
    config = backbone.config
    bottom_fn = jax.jit(lambda ids, m: bottom(config, backbone.params, ids, m, plan.start))
    caches = bottom_outputs(groups, bottom_fn)  # per group [n, l, d] (token ids for FT)
    bottom_seconds = time.perf_counter() - start
    replicated = NamedSharding(mesh, P())
    caches_dev = jax.device_put([c for c in caches], replicated)
    masks_dev = jax.device_put([g.mask for g in groups], replicated)
    groups_of_view = tuple(
        tuple(k for k, g in enumerate(groups) if g.view == v) for v in range(len(texts))
    )
    log(
        f"tuning {cfg.kind}: layers from {plan.start} of {n_layers} "
        f"({'embeddings and ' if plan.start == EMBEDDINGS else ''}the rest trained"
        f"{', LoRA rank ' + str(cfg.lora_rank) if plan.lora else ''}); "
        f"{sum(len(g.texts) for g in groups)} texts in {len(groups)} length groups, bottom "
        f"computed once in {bottom_seconds:.1f}s"
    )

    k_enc, k_head = jax.random.split(jax.random.key(cfg.seed))
    trainable, frozen = plan.split(backbone.params, n_layers, k_enc, cfg.lora_rank)
    fns = _compiled(config, plan, cfg, mu, mesh)

    def pooled_all(trainable) -> list[np.ndarray]:
        """Per view ``[n_texts_v, d]``: the tuned encoder's pooled last layer of every text."""
        out = [np.zeros((len(t), backbone.hidden_size), np.float32) for t in texts]
        for g, cache in zip(groups, caches, strict=True):
            for s in range(0, len(g.texts), EVAL_CHUNK):
                x, m = cache[s : s + EVAL_CHUNK], g.mask[s : s + EVAL_CHUNK]
                n = len(x)
                if len(g.texts) > EVAL_CHUNK and n < EVAL_CHUNK:  # one shape per group
                    x = np.concatenate([x, np.zeros((EVAL_CHUNK - n, *x.shape[1:]), x.dtype)])
                    m = np.concatenate([m, np.zeros((EVAL_CHUNK - n, m.shape[1]), m.dtype)])
                pooled = np.asarray(fns["pooled"](trainable, frozen, x, m))  # [chunk, d]
                out[g.view][g.texts[s : s + n]] = pooled[:n]
        return out

    def predict(head_params, views: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        preds = []
        for s in range(0, len(rows), 4096):
            r = rows[s : s + 4096]
            feats = np.stack([views[v][index[r, v]] for v in range(len(views))], axis=1)
            preds.append(np.asarray(fns["head"](head_params, feats)))
        out = np.concatenate(preds) if preds else np.zeros(0, np.float32)
        return np.clip(out, lo, hi)

    example = jnp.zeros((1, len(texts), backbone.hidden_size), jnp.float32)
    head_params = head.init(k_head, example)
    val_rows, val_y = prep.rows["val"], ratings[prep.rows["val"]]
    probe_note = ""
    if cfg.kind == "lpft":  # LP first: the head alone on the frozen encoder's features
        frozen_views = pooled_all(trainable)
        head_params, probe_val = _fit_head(
            head, head_params, frozen_views, index, ratings, prep.rows, cfg, predict
        )
        probe_note = f"; head alone on the frozen encoder first: val RMSE {probe_val:.4f}"
        log(f"tuning lpft: head probed on the frozen encoder, val RMSE {probe_val:.4f}")

    params = {"encoder": trainable, "head": head_params}
    state = jax.device_put((params, fns["tx"].init(params)), replicated)
    sampler = StepSampler(
        groups,
        index,
        ratings,
        prep.rows["train"],
        [len(t) for t in texts],
        cfg.text_fraction,
        cfg.seed,
        unit=mesh.size,
    )
    shard = NamedSharding(mesh, P("data"))
    # no validation before the first step: the head is untrained (LPFT's was validated)
    best_val, best = float("inf"), (jax.device_get(trainable), jax.device_get(head_params))
    best_step, bad, steps, pairs_seen, history = 0, 0, 0, 0, []
    train_start = time.perf_counter()
    step_seconds: list[float] = []  # the first one compiles
    eval_seconds: list[float] = []
    while steps < cfg.steps:
        sample = sampler.draw()
        batch = {
            "selected": [jax.device_put(s, shard) for s in sample.selected],
            "positions": jax.device_put(sample.positions, shard),
            "ratings": jax.device_put(sample.ratings, shard),
            "weights": jax.device_put(sample.weights, shard),
        }
        tick = time.perf_counter()
        state, loss = fns["step"](state, frozen, caches_dev, masks_dev, batch, groups_of_view)
        loss = float(loss)  # waits for the step: the timings below are the step's own
        step_seconds.append(time.perf_counter() - tick)
        steps += 1
        pairs_seen += int(sample.weights.sum())
        if steps % cfg.eval_every and steps < cfg.steps:
            continue
        enc, hp = state[0]["encoder"], state[0]["head"]
        tick = time.perf_counter()
        val = rmse(predict(hp, pooled_all(enc), val_rows), val_y)
        eval_seconds.append(time.perf_counter() - tick)
        history.append((steps, val))
        log(
            f"  tuning {cfg.kind} step {steps}: loss {loss:.4f}, val RMSE {val:.4f} "
            f"({time.perf_counter() - train_start:.0f}s)"
        )
        if val < best_val - 1e-5:
            best_val, best_step, bad = val, steps, 0
            best = (jax.device_get(enc), jax.device_get(hp))
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    train_seconds = time.perf_counter() - train_start
    trainable, head_params = best
    views = pooled_all(trainable)
    test, ood = prep.rows["test"], prep.rows["ood"]
    groups_ood = {g: r - ood[0] for g, r in prep.ood_groups.items()} if len(ood) else {}
    scores = evaluate.score_method(
        predict(head_params, views, test),
        ratings[test],
        predict(head_params, views, ood),
        ratings[ood],
        groups_ood,
    )
    merged = plan.merged(jax.device_get(backbone.params), trainable)
    tuned = _backbone_with(backbone, merged, cfg)
    summary = {
        "kind": cfg.kind,
        "row": cfg.row,
        "base_fingerprint": backbone.fingerprint,
        "fingerprint": tuned.fingerprint,
        "first_tuned_layer": plan.start,
        "n_layers": n_layers,
        "steps": steps,
        "best_step": best_step,
        "val_rmse": best_val,
        "validations": history,
        "pairs_per_step": sampler.capacity,
        "texts_per_step": int(sum(sampler.sizes)),
        "pairs_seen": pairs_seen,
        "train_seconds": train_seconds,
        "first_step_seconds": step_seconds[0],
        "step_seconds": float(np.median(step_seconds[1:])) if len(step_seconds) > 1 else None,
        "eval_seconds": float(np.median(eval_seconds)) if eval_seconds else None,
        "bottom_seconds": bottom_seconds,
        "seconds": time.perf_counter() - start,
        "devices": mesh.size,
        "config": dict(cfg.__dict__),
        "note": probe_note.removeprefix("; "),
    }
    log(
        f"tuning {cfg.kind}: best val RMSE {best_val:.4f} at step {best_step} of {steps} "
        f"({train_seconds:.0f}s training, {summary['seconds']:.0f}s in all); tuned encoder + "
        f"head alone: ID test {scores['id_rmse']:.4f}, OOD {scores['ood_rmse']:.4f}"
    )
    if directory is not None:
        _save_tuned(directory, merged, scores, summary)
    return TuningResult(tuned, scores, summary)


def _fit_head(head, head_params, views, index, ratings, rows, cfg, predict):
    """LP of LP-FT: the head alone on fixed features (``views``), minibatches of 512 pairs
    (fewer when ID train is smaller),
    ``cfg.probe_epochs`` epochs, the best epoch on ID validation kept."""
    tx = optax.adam(cfg.head_lr)
    feats = lambda r: np.stack([views[v][index[r, v]] for v in range(len(views))], axis=1)

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((head.apply(p, x) - y) ** 2))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(head_params)
    rng = np.random.default_rng(cfg.seed)
    train, val = rows["train"], rows["val"]
    best_val = rmse(predict(head_params, views, val), ratings[val])
    best = head_params
    batch = min(512, len(train))  # full batches only: one compile
    for _ in range(cfg.probe_epochs):
        order = rng.permutation(train)
        for s in range(0, len(order) - batch + 1, batch):
            r = order[s : s + batch]
            head_params, state = step(head_params, state, feats(r), ratings[r])
        val_rmse = rmse(predict(head_params, views, val), ratings[val])
        if val_rmse < best_val - 1e-5:
            best_val, best = val_rmse, head_params
    return best, best_val


def _backbone_with(base: Backbone, params: PyTree, cfg: TuningConfig) -> Backbone:
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    return Backbone(
        name=f"{base.name}+{cfg.row}",
        family=base.family,
        config=base.config,
        params=jax.device_put(params),
        tokenizer=base.tokenizer,
        fingerprint=compute_fingerprint(base.family, base.config, params, base.tokenizer),
        buckets=base.buckets,
        encode_buckets=base.encode_buckets,
    )


def _save_tuned(directory: Path, params: PyTree, scores: dict, summary: dict) -> None:
    from model.artifact_layout import flatten_params
    from model.safetensors_file import save_tensors

    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
    save_tensors(flat, directory / "encoder.safetensors")
    doc = {"scores": scores, "summary": summary}
    tmp = directory / "summary.json.part"
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    tmp.replace(directory / "summary.json")  # last: a directory without it is ignored


def _load_tuned(directory: Path, base: Backbone, cfg: TuningConfig) -> TuningResult:
    from safetensors.numpy import load_file

    from model.artifact_layout import unflatten_params

    params = unflatten_params(load_file(str(directory / "encoder.safetensors")))
    doc = json.loads((directory / "summary.json").read_text())
    tuned = _backbone_with(base, params, cfg)
    if tuned.fingerprint != doc["summary"]["fingerprint"]:
        raise ValueError(
            f"{directory}: the tuned weights do not match their summary's fingerprint; delete "
            "the directory and run again"
        )
    return TuningResult(tuned, doc["scores"], {**doc["summary"], "reused": str(directory)})
