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
    """Fine-tuning of the dense stack over frozen convolutions.

    By default it distills the checkpoint itself (Hinton et al.): the loss is
    ``distill`` × the cross-entropy to the checkpoint's logits softened by
    ``temperature`` (scaled by T², so its gradients keep their size) plus
    (1 − ``distill``) × the label cross-entropy; with ``flip``, each batch is the
    mirrored images' features with probability ½, the checkpoint's logits on
    them its targets. Labels alone overfit a small head within a few epochs;
    the checkpoint's soft targets on twice the images do not (measured in
    docs/runtimes.md). ``distill=0, flip=False`` is the label loss alone.
    """

    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    distill: float = 0.9
    temperature: float = 4.0
    flip: bool = True

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ConfigError("fine-tuning needs steps ≥ 0, batch_size ≥ 1 and a positive learning rate")
        if not 0.0 <= self.distill <= 1.0 or not self.temperature > 0:
            raise ConfigError("fine-tuning's distillation weight must lie in [0, 1] and its temperature be positive")

    @property
    def needs_teacher(self) -> bool:
        """Whether it reads the checkpoint's logits or the mirrored images' features."""
        return self.distill > 0 or self.flip

    @classmethod
    def labels_only(cls, steps: int, seed: int = 0) -> "FinetuneConfig":
        """The label loss alone on the training features as they are (retraining inside a method)."""
        return cls(steps=steps, learning_rate=3e-4, seed=seed, distill=0.0, flip=False)

    @classmethod
    def from_dict(cls, values: dict) -> "FinetuneConfig":
        """The config a record holds; records written before distillation existed used labels alone."""
        return cls(**{"learning_rate": 3e-4, "distill": 0.0, "flip": False, **values})


class Teacher(NamedTuple):
    """Distillation targets: the checkpoint's logits on the training features, and with flips
    the mirrored images' features and the checkpoint's logits on them."""

    logits: np.ndarray
    flipped_features: np.ndarray | None = None
    flipped_logits: np.ndarray | None = None


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
    teacher: Teacher | None = None,
) -> dict:
    """Trains ``dense`` (the dense layers of a params tree) on conv ``features``.

    ``masks`` (``{layer: bool array}``) keep pruned weights at zero.
    ``mask_schedule(step, params)`` may return new masks before a step
    (gradual pruning); masks are arguments of the jitted update, so changing
    them costs no recompilation. ``teacher`` is needed when ``config`` distills or mirrors.
    """
    if config.needs_teacher and (teacher is None or (config.flip and teacher.flipped_features is None)):
        raise ConfigError("distilling or mirroring needs the checkpoint's logits and mirrored features")
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, max(1, config.steps)))
    ones = {k: jnp.ones_like(v["w"]) for k, v in dense.items() if "w" in v}

    def as_mask_tree(new_masks: dict | None) -> dict:
        return {k: jnp.asarray(new_masks[k], jnp.float32) if new_masks and k in new_masks else ones[k] for k in ones}

    def apply_masks(params, mask_tree):
        return {k: (dict(v, w=v["w"] * mask_tree[k]) if k in mask_tree else v) for k, v in params.items()}

    loss_fn = functools.partial(_loss, distill=config.distill, temperature=config.temperature)

    @jax.jit
    def update(state: FinetuneState, mask_tree, x, y, targets) -> FinetuneState:
        grads = jax.grad(loss_fn)(state.params, x, y, targets)
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
        x, targets = _batch(features, teacher, idx, flipped=config.flip and rng.random() < 0.5)
        state = update(state, mask_tree, x, labels[idx], targets)
        priority.pause_point(functools.partial(jax.block_until_ready, state))  # an interactive request goes first
        if on_progress:
            on_progress(step + 1, config.steps)
    return jax.tree.map(lambda v: np.asarray(v, np.float32), state.params)


def _loss(params, x, y, targets, distill: float, temperature: float):
    logits = model.dense_forward(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if not distill:
        return loss
    soft = optax.softmax_cross_entropy(logits / temperature, jax.nn.softmax(targets / temperature)).mean()
    return distill * temperature**2 * soft + (1.0 - distill) * loss


def _batch(features, teacher: Teacher | None, idx: np.ndarray, flipped: bool):
    """(inputs, the teacher's logits or a placeholder) of one batch, mirrored or not."""
    if teacher is None:
        return features[idx], np.zeros((idx.size, 0), np.float32)
    if flipped:
        return teacher.flipped_features[idx], teacher.flipped_logits[idx]
    return features[idx], teacher.logits[idx]


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
