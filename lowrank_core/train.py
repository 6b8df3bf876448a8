"""Training the seed network, with the seed notebooks' bugs fixed.

In the style of dm-haiku's ``examples/mnist.py``: the training state is a
``NamedTuple``, one jitted :func:`update` maps (state, batch) to the next
state, and everything random flows from explicit PRNG keys.

Fixed against the seeds (see ``docs/seed-bugs.md``): the L2 term is added, is
``0.5·Σw²`` over the parameters (not ``l2_loss`` of the predictions), images
are normalized from uint8 (``(x/255 − mean)/std``, not ``x /- mean`` after an
int8 cast), training uses the large part of the split, and updates are applied
with their sign (``apply_updates(params, updates)``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import pathlib
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lowrank_core import checkpoint, evaluation, initializers, model, priority
from lowrank_core.configs import TrainConfig
from lowrank_core.data import Cifar10
from lowrank_core.fileio import atomic_write_bytes


class TrainState(NamedTuple):
    params: model.Params
    avg_params: model.Params  # exponential moving average of params
    opt_state: optax.OptState
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """What a progress callback receives after each step."""

    step: int  # steps done
    num_steps: int
    loss: float | None  # mean training loss (batches, with L2) since the previous evaluation; None between them
    val_accuracy: float | None  # set on evaluation steps
    seconds: float  # wall time so far (compile included)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    params: model.Params  # the ones the config says to keep (EMA or raw)
    raw_params: model.Params
    avg_params: model.Params
    history: tuple[dict, ...]  # one row per evaluation: step, loss, val accuracies, seconds
    train_seconds: float


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with the config's learning-rate schedule."""
    if config.lr_schedule == "constant":
        lr = config.learning_rate
    else:
        lr = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=config.warmup_steps,
            decay_steps=config.num_steps,
            end_value=0.0,
        )
    return optax.adam(lr)


def l2_penalty(params: model.Params) -> jnp.ndarray:
    """``0.5 · Σ w²`` over every parameter (what the seed meant by weighted L2)."""
    return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def loss_fn(params: model.Params, images: jnp.ndarray, labels: jnp.ndarray, l2_coefficient: float) -> jnp.ndarray:
    """Mean softmax cross-entropy plus the L2 penalty."""
    logits = model.forward(params, images)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return xent + l2_coefficient * l2_penalty(params)


def augment(rng: jax.Array, images: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Random horizontal flips and, for ``flip_crop``, random shifts of up to 4 pixels."""
    if kind == "none":
        return images
    flip_key, shift_key = jax.random.split(rng)
    flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0], 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1, :], images)
    if kind == "flip_crop":
        pad = 4
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        offsets = jax.random.randint(shift_key, (images.shape[0], 2), 0, 2 * pad + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (32, 32, image.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    return images


def make_update(config: TrainConfig, optimizer: optax.GradientTransformation):
    """The jitted ``update(state, images, labels) -> (state, loss)`` for ``config``."""

    @jax.jit
    def update(state: TrainState, images: jnp.ndarray, labels: jnp.ndarray) -> tuple[TrainState, jnp.ndarray]:
        rng, aug_key = jax.random.split(state.rng)
        images = augment(aug_key, images, config.augment)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, images, labels, config.l2_coefficient)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)  # updates already carry the minus sign
        avg_params = optax.incremental_update(params, state.avg_params, config.ema_step_size)
        return TrainState(params, avg_params, opt_state, rng), loss

    return update


def init_state(
    config: TrainConfig, optimizer: optax.GradientTransformation, train_images: np.ndarray | None = None
) -> TrainState:
    """The state before the first step. The ``whitened`` init estimates its
    scales from ``train_images`` (uint8 NHWC training images, never test images)."""
    params, rng = _initial_params_and_rng(config, train_images)
    return TrainState(params, params, optimizer.init(params), rng)


def _initial_params_and_rng(config: TrainConfig, train_images: np.ndarray | None) -> tuple[model.Params, jax.Array]:
    init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
    if config.init == "whitened":
        if train_images is None or train_images.shape[0] == 0:
            raise ValueError("the whitened init needs training images")
        return initializers.whitened_init(init_key, train_images, config.network), rng
    return model.init_params(init_key, config.network), rng


def initial_params(config: TrainConfig, data: Cifar10) -> model.Params:
    """The parameters ``config`` starts training from on ``data`` (its init, its seed,
    its training split): what a spectrum "at initialization" must show (the same
    function :func:`init_state` starts from, without the optimizer state)."""
    x_train = split_train_validation(data, config)[0] if config.init == "whitened" else None
    return _initial_params_and_rng(config, x_train)[0]


def split_train_validation(data: Cifar10, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, validation images, validation labels), shuffled with the config's seed."""
    order = np.random.default_rng(config.seed).permutation(data.x_train.shape[0])
    n_val = min(config.validation_size, data.x_train.shape[0] // 5)
    train_idx, val_idx = order[n_val:], order[:n_val]
    return data.x_train[train_idx], data.y_train[train_idx], data.x_train[val_idx], data.y_train[val_idx]


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
    """Endless shuffled batches, reshuffled every epoch, dropping the ragged end."""
    rng = np.random.default_rng(seed)
    n = images.shape[0]
    batch_size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = np.sort(order[start : start + batch_size])  # sorted gathers are faster
            yield images[idx], labels[idx]


def train(
    config: TrainConfig,
    data: Cifar10,
    on_progress: Callable[[TrainProgress], None] | None = None,
    state: TrainState | None = None,
    start_step: int = 0,
    on_checkpoint: Callable[[int, TrainState], None] | None = None,
) -> TrainResult:
    """Trains the seed network on ``data`` under ``config``.

    ``on_progress`` is called after every step (the CLI drives a progress bar
    with it, the app a ``st.progress``). ``on_checkpoint(step, state)`` is
    called at every evaluation so a caller can save resume points; pass
    ``state`` and ``start_step`` to resume from one. Training is background
    work: in the app it pauses between steps while other sessions' requests run
    (:mod:`lowrank_core.priority`); the seconds it reports leave those pauses out.
    """
    with priority.background():
        return _train(config, data, on_progress, state, start_step, on_checkpoint)


def _train(
    config: TrainConfig,
    data: Cifar10,
    on_progress: Callable[[TrainProgress], None] | None,
    state: TrainState | None,
    start_step: int,
    on_checkpoint: Callable[[int, TrainState], None] | None,
) -> TrainResult:
    optimizer = make_optimizer(config)
    update = make_update(config, optimizer)
    x_train, y_train, x_val, y_val = split_train_validation(data, config)
    started = time.perf_counter()  # a data-dependent init is part of the training time
    if state is None:
        state = init_state(config, optimizer, x_train)
    stream = batches(x_train, y_train, config.batch_size, config.seed + start_step)
    history: list[dict] = []
    loss_sum, loss_count = None, 0  # summed on the device: reading a loss every step would stall the pipeline
    paused = 0.0
    for step in range(start_step + 1, config.num_steps + 1):
        images, labels = next(stream)
        state, loss_value = update(state, images, labels)
        paused += priority.pause_point(functools.partial(jax.block_until_ready, state))
        loss_sum = loss_value if loss_sum is None else loss_sum + loss_value
        loss_count += 1
        val_acc, loss = None, None
        if step % config.eval_every == 0 or step == config.num_steps:
            loss = float(loss_sum) / loss_count  # mean training loss since the previous evaluation
            loss_sum, loss_count = None, 0
            row = {"step": step, "loss": loss, "seconds": time.perf_counter() - started - paused}
            if x_val.shape[0]:
                row["val_accuracy_raw"] = evaluation.accuracy(state.params, x_val, y_val)
                row["val_accuracy_ema"] = evaluation.accuracy(state.avg_params, x_val, y_val)
                val_acc = row[f"val_accuracy_{config.eval_params}"]
            history.append(row)
            if on_checkpoint:
                on_checkpoint(step, state)
        if on_progress:
            on_progress(TrainProgress(step, config.num_steps, loss, val_acc, time.perf_counter() - started - paused))
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - started - paused
    kept = state.avg_params if config.eval_params == "ema" else state.params
    return TrainResult(kept, state.params, state.avg_params, tuple(history), seconds)


def resume_path(out_dir) -> pathlib.Path:
    """Where periodic resume points of a run writing ``out_dir`` live (beside it,
    so the checkpoint folder swap never touches them)."""
    out_dir = pathlib.Path(out_dir)
    return out_dir.with_name(out_dir.name + ".resume.npz")


def save_resume_point(path, step: int, state: TrainState, config: TrainConfig) -> None:
    """The whole training state (params, EMA, optimizer, rng) at ``step``, written atomically."""
    leaves = jax.tree.leaves(state)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        step=np.int64(step),
        config=np.frombuffer(json.dumps(config.to_dict(), sort_keys=True).encode(), np.uint8),
        **{f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)},
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_resume_point(path, config: TrainConfig) -> tuple[int, TrainState] | None:
    """(step, state) from a resume point made under the same config, else None."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if json.loads(npz["config"].tobytes()) != json.loads(json.dumps(config.to_dict(), sort_keys=True)):
                return None
            # Only the tree's structure, shapes and dtypes matter here, which every init shares.
            template = init_state(dataclasses.replace(config, init="haiku"), make_optimizer(config))
            leaves, treedef = jax.tree.flatten(template)
            loaded = [npz[f"leaf_{i:04d}"] for i in range(len(leaves))]
            if any(a.shape != np.shape(b) for a, b in zip(loaded, leaves)):
                return None
            state = jax.tree.unflatten(
                treedef, [jnp.asarray(a, dtype=jnp.asarray(b).dtype) for a, b in zip(loaded, leaves)]
            )
            return int(npz["step"]), state
    except Exception:
        return None  # missing, truncated or from another run: start afresh


FLOAT16_TOLERANCE = 0.001  # float16 storage is used only if it moves test accuracy by ≤ 0.1 point


def train_and_save(
    config: TrainConfig,
    data: Cifar10,
    out_dir,
    on_progress: Callable[[TrainProgress], None] | None = None,
    resume: bool = False,
) -> dict:
    """Trains, measures test accuracy on every test image, and writes a checkpoint.

    The parameters are stored as float16 when that changes full-test-set
    accuracy by at most 0.1 point (halving the file), else as float32. The
    accuracy recorded is that of the parameters as stored. Returns the metadata.
    """
    resume_file = resume_path(out_dir)
    start_step, state = 0, None
    if resume and (point := load_resume_point(resume_file, config)) is not None:
        start_step, state = point

    def on_checkpoint(step: int, state: TrainState) -> None:
        try:
            save_resume_point(resume_file, step, state, config)
        except OSError:
            pass  # a full disk costs the resume point, not the run

    result = train(
        config, data, on_progress=on_progress, state=state, start_step=start_step, on_checkpoint=on_checkpoint
    )
    params32 = jax.tree.map(lambda v: np.asarray(v, np.float32), result.params)
    acc32 = evaluation.accuracy(params32, data.x_test, data.y_test)
    params16 = jax.tree.map(lambda v: v.astype(np.float16).astype(np.float32), params32)
    acc16 = evaluation.accuracy(params16, data.x_test, data.y_test)
    use16 = abs(acc16 - acc32) <= FLOAT16_TOLERANCE
    metadata = {
        "preset": config.preset,
        "config": config.to_dict(),
        "data_source": data.source,
        "data_sha256": data.sha256,
        "n_train": int(data.x_train.shape[0]) - min(config.validation_size, data.x_train.shape[0] // 5),
        "n_test": int(data.x_test.shape[0]),
        "test_accuracy": acc16 if use16 else acc32,
        "test_accuracy_float32": acc32,
        "params_kept": config.eval_params,
        "train_seconds": round(result.train_seconds, 1),
        "history": list(result.history),
        "resumed_from_step": start_step,
    }
    metadata["storage_dtype"] = "float16" if use16 else "float32"
    checkpoint.save(out_dir, params32, metadata, dtype=metadata["storage_dtype"])
    resume_file.unlink(missing_ok=True)
    return metadata
