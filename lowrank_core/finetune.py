"""Cheap retraining of the dense stack over frozen convolutions.

The convolutions' output on the training set is computed once; the dense
stack (any variant's: factorized, shrunk, rewired) then trains on it with Adam
in one jitted update, as the second seed's "option A" retrains the head.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lowrank_core import model
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


def finetune_dense(dense: dict, features: np.ndarray, labels: np.ndarray, config: FinetuneConfig,
                   masks: dict | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Trains ``dense`` (the dense layers of a params tree) on conv ``features``.

    ``masks`` (``{layer: bool array}``) keep pruned weights at zero.
    """
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, max(1, config.steps)))
    masks = {k: jnp.asarray(v) for k, v in (masks or {}).items() if k in dense}

    def apply_masks(params):
        return {k: (dict(v, w=v["w"] * masks[k]) if k in masks else v) for k, v in params.items()}

    def loss_fn(params, x, y):
        logits = model.dense_forward(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def update(state: FinetuneState, x, y) -> FinetuneState:
        grads = jax.grad(loss_fn)(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return FinetuneState(apply_masks(optax.apply_updates(state.params, updates)), opt_state)

    params = jax.tree.map(jnp.asarray, dense)
    state = FinetuneState(params, optimizer.init(params))
    rng = np.random.default_rng(config.seed)
    n = features.shape[0]
    for step in range(config.steps):
        idx = np.sort(rng.choice(n, size=min(config.batch_size, n), replace=False))
        state = update(state, features[idx], labels[idx])
        if on_progress:
            on_progress(step + 1, config.steps)
    return jax.tree.map(lambda v: np.asarray(v, np.float32), state.params)
