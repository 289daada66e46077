"""The head's training loop: pure jitted steps, early stopping, learning-rate selection, resume.

Speed: every table (entity feature ids, per-view activation matrices, pair -> row indices) is
put on the devices once; a training step gathers its batch from them inside the jitted
function, so ``[n_ratings, n_views, n_layers, d]`` is never materialised, and one jitted
``lax.scan`` runs a whole epoch (or ``steps_per_chunk`` steps), so Python is out of the inner
loop. Data parallel: a ``Mesh`` over ``jax.devices()``; each batch is sharded over its
``data`` axis, parameters and tables are replicated, and XLA inserts the gradient all-reduce
(one CPU device is the degenerate mesh). Checkpoints: orbax, after every epoch and when a
``max_steps`` hook stops the run; a run finds its checkpoint and continues from its step
(the run's state and checkpoints: training/run_state.py).
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
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from model.head_config import HeadConfig, ablation
from model.levi import LeviModel
from training.config import TrainConfig
from training.evaluate import rmse
from training.feed import ShardLayout, epoch_order, global_batch, predict_rows, steps_per_epoch
from training.run_state import Checkpoints, EarlyStopping, RunState

PyTree = Any


@dataclass(frozen=True)
class TrainTables:
    """Host arrays the head trains and predicts on (see :func:`device_tables`).

    Attributes:
        user_ids: int32 ``[n_users, F_user]`` categorical ids of every user (OOV = 0).
        item_ids: int32 ``[n_items, F_item]``.
        user_multi_hot: float32 ``[n_users, G_user]`` multi-hot user columns (G may be 0).
        multi_hot: float32 ``[n_items, G_item]`` multi-hot item columns.
        views: per view, ``[n_texts_v, n_layers, d]`` pooled activations (float16 or 32).
        pair_user, pair_item: int32 ``[n_pairs]`` rows in the entity tables.
        pair_text: int32 ``[n_pairs, n_views]`` rows in the view matrices.
        rating: float32 ``[n_pairs]``.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_multi_hot: np.ndarray
    multi_hot: np.ndarray
    views: tuple[np.ndarray, ...]
    pair_user: np.ndarray
    pair_item: np.ndarray
    pair_text: np.ndarray
    rating: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def signature(self) -> str:
        """Hash of every table's shape and contents: keys checkpoints to the exact inputs
        they were trained on."""
        h = hashlib.sha256()
        for k, v in self.as_dict().items():
            shapes = [a.shape for a in v] if isinstance(v, tuple) else v.shape
            h.update(f"{k}{shapes}".encode())
        # contents too: a spec edit (buckets, vocabulary, templates) or another backbone
        # changes the inputs without changing their shapes
        for v in self.as_dict().values():
            for a in v if isinstance(v, tuple) else (v,):
                h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # a view, no copy
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class RunResult:
    """One training run (method, learning rate, seed).

    Attributes:
        params: the best parameters on ID validation (numpy pytree).
        val_rmse: their ID validation RMSE.
        epochs: epochs run; steps: optimizer steps run (both counting before a resume).
        resumed_from: the step restored from a checkpoint (0: started fresh).
        finished: False when ``max_steps`` stopped the run early.
    """

    method: str
    lr: float
    seed: int
    head: HeadConfig
    params: PyTree
    val_rmse: float
    epochs: int
    steps: int
    resumed_from: int
    finished: bool
    seconds: float


def make_mesh() -> Mesh:
    """A 1-D ``data`` mesh over every device of every process (``jax.devices()``: each
    process's devices together, processes in order; one CPU: a mesh of one)."""
    return Mesh(np.array(jax.devices()), ("data",))


def device_tables(tables: TrainTables, mesh: Mesh) -> dict[str, Any]:
    """Every table replicated on the mesh (activations keep their storage dtype)."""
    replicated = NamedSharding(mesh, P())
    return jax.device_put(tables.as_dict(), replicated)


def head_config(
    method: str,
    cfg: TrainConfig,
    *,
    vocab_sizes: tuple[int, ...],
    n_multi_hot: int,
    n_layers: int,
    rating_mean: float,
    rating_range: tuple[float, float],
    id_features: tuple[int, int] = (-1, -1),
) -> HeadConfig:
    """The head of a trained method (the ablations are configs of one module).

    Args:
        rating_range: the spec's rating scale; answers are clipped to it.
        id_features: columns of the id input holding the user and item id (-1: absent); the
            collaborative term needs both.
    """
    per_method = ablation(method, n_layers)  # raises for a method that trains no head
    base = {
        "vocab_sizes": tuple(vocab_sizes),
        "n_multi_hot": n_multi_hot,
        **cfg.head_fields(),
        "rating_mean": float(rating_mean),
        "rating_min": float(rating_range[0]),
        "rating_max": float(rating_range[1]),
        "user_id_feature": id_features[0],
        "item_id_feature": id_features[1],
    }
    base["mlp_dims"] = tuple(base["mlp_dims"])
    return HeadConfig(**{**base, **per_method})


def _gather(
    head: HeadConfig, data: dict[str, Any], rows: jax.Array, drop_item: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Head inputs of pair ``rows`` ``[b]``: ids, multi_hot, activations, targets."""
    users = data["pair_user"][rows]  # [b]
    items = data["pair_item"][rows]  # [b]
    item_ids = data["item_ids"][items]  # [b, F_item]
    if drop_item is not None:  # train the OOV slot: the item looks unseen, its text remains
        n_user = data["user_ids"].shape[1]
        col = head.item_id_feature - n_user  # the item id among the item columns
        hide = jnp.zeros(item_ids.shape[1], bool)
        hide = hide.at[col].set(True) if col >= 0 else jnp.ones(item_ids.shape[1], bool)
        # the id reads its OOV slot; the item's other features are kept, as a cold start
        # with fields sends them
        item_ids = jnp.where(drop_item[:, None] & hide[None], 0, item_ids)
    ids = jnp.concatenate([data["user_ids"][users], item_ids], axis=1)  # [b, F]
    multi_hot = jnp.concatenate(
        [data["user_multi_hot"][users], data["multi_hot"][items]], axis=1
    )  # [b, G_user + G_item]
    if head.uses_text:
        text_rows = data["pair_text"][rows]  # [b, n_views]
        acts = jnp.stack([m[text_rows[:, v]] for v, m in enumerate(data["views"])], axis=1).astype(
            jnp.float32
        )  # [b, n_views, n_layers, d]
    else:
        acts = jnp.zeros((rows.shape[0], 1, 1, 1), jnp.float32)  # unused by text-free heads
    return ids, multi_hot, acts, data["rating"][rows]


def make_optimizer(weight_decay: float) -> optax.GradientTransformation:
    # The learning rate lives in the optimizer state, so one compiled step serves the grid.
    return optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=weight_decay)


@functools.lru_cache(maxsize=32)
def compiled_predict(head: HeadConfig, mesh: Mesh) -> Callable:
    """Jitted ``predict(params, data, rows [batch]) -> adapter ratings [batch, A]`` (cached).

    Keyed by the head and the mesh only, so every run of a head config, whatever its
    optimizer settings, and its evaluation share one compile.
    """
    model = LeviModel(head)
    batch_sharding = NamedSharding(mesh, P("data"))

    def predict(params, data, rows):
        rows = jax.lax.with_sharding_constraint(rows, batch_sharding)
        ids, mh, acts, _ = _gather(head, data, rows, None)
        return model.adapters(params, ids, mh, acts)

    return jax.jit(predict, out_shardings=batch_sharding)


def uses_one_all_reduce(mesh: Mesh) -> bool:
    """Whether a step on ``mesh`` all-reduces once (:func:`one_all_reduce`): several CPU
    devices. Elsewhere XLA combines the gradients' all-reduces and overlaps them with the
    backward pass, which one all-reduce at its end would prevent."""
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


def one_all_reduce(loss_and_grads: Callable, mesh: Mesh) -> Callable:
    """``loss_and_grads(params, batch, rng)`` data parallel over ``mesh`` with one all-reduce
    per step: each device takes the loss and gradients of its share of the batch (equal
    shares: the mean of the devices' means is the batch's mean) and the devices average them
    as one flat float32 vector.

    Left to XLA, the partitioner all-reduces every gradient leaf on its own, and the CPU
    collectives (gloo over TCP) pay about 3 ms per operand whatever its size: a LEVI head's
    dozens of leaves made a step of 2 processes 100-150 ms against about 1 ms on one
    (docs/PROFILING.md, "Training at scale"). The vector takes the parameters' common dtype
    (float32). Each device draws its own dropout masks (its index folded into ``rng``), so a
    run's random stream depends on its device count, which :func:`run_key` therefore names.
    """

    def local(params: PyTree, batch: tuple, rng: jax.Array) -> tuple[jax.Array, PyTree]:
        rng = jax.random.fold_in(rng, jax.lax.axis_index("data"))
        flat, unravel = ravel_pytree(loss_and_grads(params, batch, rng))
        return unravel(jax.lax.pmean(flat, "data"))

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=(P(), P()), check_vma=False
    )


@functools.lru_cache(maxsize=32)
def compiled_fns(
    head: HeadConfig, weight_decay: float, mesh: Mesh, factor_l2: float
) -> dict[str, Callable]:
    """Jitted ``init`` and ``train_chunk`` of one head config and its loss (cached)."""
    model = LeviModel(head)
    tx = make_optimizer(weight_decay)
    batch_sharding = NamedSharding(mesh, P("data"))

    def init(key: jax.Array, data: dict[str, Any], lr: jax.Array) -> PyTree:
        ids, mh, acts, _ = _gather(head, data, jnp.zeros((1,), jnp.int32), None)
        params = model.init_variables(key, ids, mh, acts)
        opt_state = tx.init(params)
        opt_state.hyperparams["learning_rate"] = lr
        return params, opt_state

    def loss_fn(params, batch, rng):
        return model.loss_fn(params, batch, rng, factor_l2)

    loss_and_grads = jax.value_and_grad(loss_fn)
    if uses_one_all_reduce(mesh):
        loss_and_grads = one_all_reduce(loss_and_grads, mesh)

    def train_chunk(state, data, rows, drop, key):
        """``rows``, ``drop``: ``[n_steps, batch]``; returns the new state and mean loss."""

        def body(state, xs):
            params, opt_state, step = state
            r, d = xs
            r = jax.lax.with_sharding_constraint(r, batch_sharding)
            d = jax.lax.with_sharding_constraint(d, batch_sharding)
            batch = _gather(head, data, r, d)
            loss, grads = loss_and_grads(params, batch, jax.random.fold_in(key, step))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, step + 1), loss

        state, losses = jax.lax.scan(body, state, (rows, drop))
        return state, jnp.mean(losses)

    return {"init": jax.jit(init), "train_chunk": jax.jit(train_chunk)}


def predict_adapters(
    head: HeadConfig,
    params: PyTree,
    data: dict[str, Any],
    rows: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int = 4096,
    layout: ShardLayout | None = None,
) -> np.ndarray:
    """Raw adapter ratings float32 ``[len(rows), n_adapters]`` of pair ``rows``.

    With several processes every process calls it with the same ``rows`` and gets every
    row's ratings; each scores its own shards' rows (``training.feed.predict_rows``).
    """
    layout = layout or ShardLayout.single(0)
    return predict_rows(
        compiled_predict(head, mesh),
        params,
        data,
        rows,
        mesh=mesh,
        layout=layout,
        batch_size=batch_size,
        width=head.n_adapters,
    )


def predict_ratings(head: HeadConfig, adapters: np.ndarray) -> np.ndarray:
    """The answer: mean of adapters clipped to the rating range, ``[n]``."""
    return np.asarray(LeviModel(head).rating(jnp.asarray(adapters)))


def run_key(
    head: HeadConfig,
    cfg: TrainConfig,
    lr: float,
    seed: int,
    data_signature: str,
    mesh: Mesh | None = None,
) -> str:
    """Checkpoint directory name: everything that changes what a run computes (the device
    count where a step's dropout draws depend on it: :func:`one_all_reduce`)."""
    fields = ("batch_size", "max_epochs", "patience", "weight_decay", "item_oov_prob", "factor_l2")
    parts = [head.to_json(), head.rating_min, head.rating_max, cfg.digest(*fields), lr, seed]
    parts += [data_signature]
    if mesh is not None and uses_one_all_reduce(mesh):
        parts += [f"devices={mesh.size}"]
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _steps_per_epoch(train_rows: np.ndarray, batch_size: int, mesh: Mesh, layout) -> int:
    """Full global batches in an epoch (``training.feed.steps_per_epoch``).

    Raises:
        ValueError: the batch does not split over the mesh or the shards, or is larger than
            the data.
    """
    if batch_size % mesh.size:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {mesh.size} devices of the mesh"
        )
    return steps_per_epoch(train_rows, batch_size, layout)


def _initial_state(
    fns: dict[str, Callable],
    data: dict[str, Any],
    *,
    lr: float,
    seed: int,
    mesh: Mesh,
    patience: int,
) -> RunState:
    """Freshly initialised parameters (key ``seed``) and optimizer state at ``lr``."""
    params, opt_state = fns["init"](jax.random.key(seed), data, jnp.float32(lr))
    params, opt_state = jax.device_put((params, opt_state), NamedSharding(mesh, P()))
    return RunState(params, opt_state, EarlyStopping(patience, jax.device_get(params)))


def _next_chunk(
    step: int, steps_per_epoch: int, chunk: int, max_steps: int | None
) -> tuple[int, int, int]:
    """``(epoch, offset, end)``: the next chunk is steps ``[offset, end)`` of ``epoch``.

    It ends at the chunk size, the epoch's end or ``max_steps``; ``end <= offset`` means
    ``max_steps`` is reached.
    """
    epoch, offset = divmod(step, steps_per_epoch)
    end = min(steps_per_epoch, offset + chunk)
    if max_steps is not None:
        end = min(end, offset + max_steps - step)
    return epoch, offset, end


def train_run(
    method: str,
    head: HeadConfig,
    cfg: TrainConfig,
    data: dict[str, Any],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    lr: float,
    seed: int,
    mesh: Mesh,
    checkpoint_dir: Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    layout: ShardLayout | None = None,
) -> RunResult:
    """Train one head with early stopping on ID validation RMSE; keep the best params.

    Each epoch runs in chunks of ``cfg.steps_per_chunk`` steps (default: the whole epoch);
    after an epoch: validate, update the :class:`EarlyStopping` record, checkpoint.

    Args:
        data: :func:`device_tables` of the pairs; ``train_rows``/``val_rows`` index them.
        checkpoint_dir: orbax checkpoints of this run; an existing one is resumed (a finished
            run is returned as is).
        max_steps: stop (and checkpoint) once the optimizer has taken this many steps: the
            interruption hook of the resume test.
        layout: the pairs' data shards and this process's (``training.feed``); None: one
            shard, one process.

    Raises:
        ValueError: ``cfg.batch_size`` does not split over the mesh, or exceeds the training
            pairs.
    """
    start = time.perf_counter()
    layout = layout or ShardLayout.single(int(max(train_rows.max(), val_rows.max())) + 1)
    steps_per_epoch = _steps_per_epoch(train_rows, cfg.batch_size, mesh, layout)
    chunk = cfg.steps_per_chunk or steps_per_epoch
    fns = compiled_fns(head, cfg.weight_decay, mesh, cfg.factor_l2)
    val_y = np.asarray(jax.device_get(data["rating"]))[val_rows]

    state = _initial_state(fns, data, lr=lr, seed=seed, mesh=mesh, patience=cfg.patience)
    ckpt = Checkpoints(checkpoint_dir)
    if ckpt.latest() is not None:
        state = ckpt.restore(state)
    resumed_from = state.step

    # rbg: XLA's RngBitGenerator, much cheaper for dropout masks on CPU than threefry.
    key = jax.random.key(seed + 1_000_003, impl="rbg")
    step_arr = jax.device_put(jnp.int32(state.step), NamedSharding(mesh, P()))
    bar = tqdm(
        total=cfg.max_epochs * steps_per_epoch,
        initial=state.step,
        desc=f"{method} lr={lr:g} seed={seed}",
        unit="step",
        disable=not progress,
        leave=False,
    )
    finished = True
    while not state.done:
        epoch, offset, end = _next_chunk(state.step, steps_per_epoch, chunk, max_steps)
        if end <= offset:  # max_steps: checkpoint here, unless an epoch end was just saved
            finished = False
            if ckpt.latest() != state.step:
                ckpt.save(state)
            break
        order, drop = epoch_order(
            seed, epoch, train_rows, cfg.batch_size, cfg.item_oov_prob, layout
        )  # this process's columns, [steps, batch / processes]
        rows_dev = global_batch(order[offset:end], mesh, P(None, "data"))
        drop_dev = global_batch(drop[offset:end], mesh, P(None, "data"))
        (state.params, state.opt_state, step_arr), loss = fns["train_chunk"](
            (state.params, state.opt_state, step_arr), data, rows_dev, drop_dev, key
        )
        state.step += end - offset
        bar.update(end - offset)
        if end < steps_per_epoch:
            continue
        adapters = predict_adapters(
            head,
            state.params,
            data,
            val_rows,
            mesh=mesh,
            batch_size=cfg.eval_batch_size,
            layout=layout,
        )
        val = rmse(predict_ratings(head, adapters), val_y)
        patience_spent = state.stopping.update(val, state.params, epoch)
        state.done = patience_spent or epoch + 1 >= cfg.max_epochs
        best = state.stopping.best_val
        bar.set_postfix(loss=f"{float(loss):.3f}", val=f"{val:.4f}", best=f"{best:.4f}")
        ckpt.save(state)
    bar.close()
    ckpt.close()
    return RunResult(
        method=method,
        lr=lr,
        seed=seed,
        head=head,
        params=state.stopping.best_params,
        val_rmse=float(state.stopping.best_val),
        epochs=state.step // steps_per_epoch,
        steps=state.step,
        resumed_from=resumed_from,
        finished=finished,
        seconds=time.perf_counter() - start,
    )


def train_method(
    method: str,
    head: HeadConfig,
    cfg: TrainConfig,
    data: dict[str, Any],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    mesh: Mesh,
    data_signature: str,
    checkpoint_root: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    layout: ShardLayout | None = None,
) -> tuple[float, list[RunResult]]:
    """Choose the learning rate on ID validation, then train every seed.

    With ``cfg.lr_on_first_seed`` the grid is searched on ``seeds[0]`` and the chosen rate is
    reused for the other seeds; otherwise each seed searches the grid (full runs). With
    checkpoints and ``cfg.lr_probe_epochs``, the search on ``seeds[0]`` trains every rate for
    that many epochs and continues only the best one to early stopping.

    Returns:
        ``(chosen lr, one RunResult per seed)``.
    """

    layout = layout or ShardLayout.single(int(max(train_rows.max(), val_rows.max())) + 1)
    steps = steps_per_epoch(train_rows, cfg.batch_size, layout)

    def run(lr: float, seed: int, max_steps: int | None = None) -> RunResult:
        directory = None
        if checkpoint_root is not None:
            directory = checkpoint_root / run_key(head, cfg, lr, seed, data_signature, mesh)
        result = train_run(
            method,
            head,
            cfg,
            data,
            train_rows,
            val_rows,
            lr=lr,
            seed=seed,
            mesh=mesh,
            checkpoint_dir=directory,
            max_steps=max_steps,
            progress=progress,
            layout=layout,
        )
        resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
        resumed += "" if result.finished else " (lr probe)"
        log(
            f"  {method:<14} lr={lr:<7g} seed={seed} val_rmse={result.val_rmse:.4f} "
            f"epochs={result.epochs} {result.seconds:.1f}s{resumed}"
        )
        return result

    if cfg.lr_on_first_seed or len(cfg.seeds) == 1:
        seed = cfg.seeds[0]
        if checkpoint_root is not None and cfg.lr_probe_epochs and len(cfg.lrs) > 1:
            # Successive halving: every lr for a few epochs, the better half for twice as
            # many (each resumed from its checkpoint), and so on; the last one goes on to
            # early stopping, which is exactly the full run of that lr. One epoch alone
            # favours large rates that plateau early.
            alive, epochs = list(cfg.lrs), cfg.lr_probe_epochs
            while len(alive) > 1:
                probes = [run(lr, seed, max_steps=epochs * steps) for lr in alive]
                probes.sort(key=lambda r: r.val_rmse)
                alive = [r.lr for r in probes[: (len(probes) + 1) // 2]]
                epochs *= 2
            best = run(alive[0], seed)
        else:
            best = min((run(lr, seed) for lr in cfg.lrs), key=lambda r: r.val_rmse)
        return best.lr, [best] + [run(best.lr, s) for s in cfg.seeds[1:]]
    per_seed = {s: [run(lr, s) for lr in cfg.lrs] for s in cfg.seeds}
    mean_val = {
        lr: np.mean([r.val_rmse for s in cfg.seeds for r in per_seed[s] if r.lr == lr])
        for lr in cfg.lrs
    }
    lr = min(mean_val, key=mean_val.get)
    return lr, [next(r for r in per_seed[s] if r.lr == lr) for s in cfg.seeds]
