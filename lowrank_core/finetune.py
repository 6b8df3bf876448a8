"""Cheap retraining of the dense stack over frozen convolutions.

The convolutions' output on the training set is computed once; the dense
stack (any variant's: factorized, shrunk, rewired) then trains on it with Adam
in one jitted update, as the second seed's "option A" retrains the head.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lowrank_core import compress, model, priority
from lowrank_core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 3e-4
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ConfigError("fine-tuning needs steps ≥ 0, batch_size ≥ 1 and a positive learning rate")


class FinetuneState(NamedTuple):
    params: dict
    opt_state: optax.OptState


MaskSchedule = Callable[[int, dict], "dict | None"]


def finetune_dense(
    dense: dict,
    features: np.ndarray,
    labels: np.ndarray,
    config: FinetuneConfig,
    masks: dict | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    mask_schedule: MaskSchedule | None = None,
) -> dict:
    """Trains ``dense`` (the dense layers of a params tree) on conv ``features``.

    ``masks`` (``{layer: bool array}``) keep pruned weights at zero.
    ``mask_schedule(step, params)`` may return new masks before a step
    (gradual pruning); masks are arguments of the jitted update, so changing
    them costs no recompilation.
    """
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, max(1, config.steps)))
    ones = {k: jnp.ones_like(v["w"]) for k, v in dense.items() if "w" in v}

    def as_mask_tree(new_masks: dict | None) -> dict:
        return {k: jnp.asarray(new_masks[k], jnp.float32) if new_masks and k in new_masks else ones[k] for k in ones}

    def apply_masks(params, mask_tree):
        return {k: (dict(v, w=v["w"] * mask_tree[k]) if k in mask_tree else v) for k, v in params.items()}

    def loss_fn(params, x, y):
        logits = model.dense_forward(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def update(state: FinetuneState, mask_tree, x, y) -> FinetuneState:
        grads = jax.grad(loss_fn)(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return FinetuneState(apply_masks(optax.apply_updates(state.params, updates), mask_tree), opt_state)

    mask_tree = as_mask_tree(masks)
    params = apply_masks(jax.tree.map(jnp.asarray, dense), mask_tree)
    state = FinetuneState(params, optimizer.init(params))
    rng = np.random.default_rng(config.seed)
    n = features.shape[0]
    for step in range(config.steps):
        if mask_schedule is not None:
            new_masks = mask_schedule(step, state.params)
            if new_masks is not None:
                mask_tree = as_mask_tree(new_masks)
                state = FinetuneState(apply_masks(state.params, mask_tree), state.opt_state)
        idx = np.sort(rng.choice(n, size=min(config.batch_size, n), replace=False))
        state = update(state, mask_tree, features[idx], labels[idx])
        priority.pause_point(functools.partial(jax.block_until_ready, state))  # an interactive request goes first
        if on_progress:
            on_progress(step + 1, config.steps)
    return jax.tree.map(lambda v: np.asarray(v, np.float32), state.params)


def gradual_prune_dense(
    dense: dict,
    features: np.ndarray,
    labels: np.ndarray,
    config: FinetuneConfig,
    layers: tuple[str, ...],
    sparsity: float,
    scope: str,
    frozen: dict | None = None,
    every: int = 50,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, dict]:
    """Fine-tunes ``dense`` while the kernels of ``layers`` reach ``sparsity`` (per layer or
    global, ``scope``) on
    Zhu & Gupta's cubic schedule (masks recomputed by magnitude every ``every``
    steps over the first 3/4 of training, then held).

    ``frozen`` holds pruned layers that do not train (the convolutions): with a
    global scope they take part in every threshold, so one magnitude threshold
    covers every pruned kernel, as the config says. Returns (dense params,
    final masks of every pruned kernel, frozen ones included).
    """
    frozen = frozen or {}
    chosen = tuple(n for n in layers if n in {**frozen, **dense})
    end = max(1, (3 * config.steps) // 4)

    def masks_at(sparsity: float, params) -> dict:
        kernels = {n: {"w": np.asarray(v["w"])} for n, v in {**frozen, **params}.items() if n in chosen}
        return compress.magnitude_masks(kernels, tuple(kernels), sparsity, scope)

    def schedule(step: int, params) -> dict | None:
        if step > end or (step % every and step != end):
            return None  # masks held between updates and after the ramp
        masks = masks_at(compress.zhu_gupta_sparsity(step, sparsity, 0, end), params)
        return {n: m for n, m in masks.items() if n in dense}

    params = finetune_dense(dense, features, labels, config, on_progress=on_progress, mask_schedule=schedule)
    # The last schedule step applied the target; make it exact on the returned weights.
    masks = masks_at(sparsity, params)
    params = {k: (dict(v, w=v["w"] * masks[k]) if k in masks else v) for k, v in params.items()}
    return params, masks
