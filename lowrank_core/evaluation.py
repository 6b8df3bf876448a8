"""Accuracy of a params tree on a whole image set, in fixed-size batches."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_core import model

EVAL_BATCH = 1000


@functools.partial(jax.jit, static_argnums=())
def _predict_batch(params, images):
    return jnp.argmax(model.forward(params, images), axis=-1)


def predict(params: model.Params, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Predicted class of every image (uint8 NHWC), computed in batches.

    The last batch is padded to ``batch_size`` so only one shape is compiled.
    """
    n = images.shape[0]
    out = np.empty(n, np.int32)
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        size = chunk.shape[0]
        if size < batch_size and n > batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - size,) + chunk.shape[1:], chunk.dtype)])
        out[start:start + size] = np.asarray(_predict_batch(params, chunk))[:size]
    return out


def accuracy(params: model.Params, images: np.ndarray, labels: np.ndarray,
             batch_size: int = EVAL_BATCH) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels`` (every image counted)."""
    if images.shape[0] == 0:
        raise ValueError("no images to evaluate")
    return float(np.mean(predict(params, images, batch_size) == labels))
