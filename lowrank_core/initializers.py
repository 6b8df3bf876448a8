"""Data-dependent initialization of the seed network (the ``whitened`` init).

Haiku's default init (truncated normal, std 1/√fan_in, zero biases) halves the
signal's variance at every ReLU, and the first convolution starts from random
filters over strongly correlated pixels, so a short training run spends much
of its first epoch learning to see. Two classic fixes, neither of which
changes the architecture or the number of parameters:

* **Patch whitening** of the first convolution (as in fast CIFAR-10 training,
  e.g. Keller Jordan's airbench): its filters start as the leading principal
  directions of 5×5×3 training patches, each scaled by 1/√(λ + ε), so the
  layer's outputs start decorrelated with about unit variance.
* **Layer-sequential unit variance** (Mishkin & Matas, 2016): every later
  layer's weights are scaled so that its pre-activations have unit standard
  deviation on a batch of training images.

Both are pure functions of (key, params, training images); nothing here looks
at validation or test images.
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from lowrank_core import model

WHITENING_EPSILON = 1e-2  # added to each eigenvalue: keeps near-flat directions from blowing up
WHITENING_PATCHES = 50_000  # patches sampled to estimate the 75×75 patch covariance
SCALING_IMAGES = 1024  # images whose pre-activations set each layer's scale


def sample_patches(key: jax.Array, images: np.ndarray, kernel_shape: tuple[int, int], num_patches: int) -> np.ndarray:
    """``num_patches`` random (kh·kw·channels) patches of normalized ``images`` (uint8 NHWC),
    flattened in the (kh, kw, channel) order of an HWIO kernel."""
    kh, kw = kernel_shape
    n, h, w, _ = images.shape
    index_key, row_key, col_key = jax.random.split(key, 3)
    index = np.asarray(jax.random.randint(index_key, (num_patches,), 0, n))
    row = np.asarray(jax.random.randint(row_key, (num_patches,), 0, h - kh + 1))
    col = np.asarray(jax.random.randint(col_key, (num_patches,), 0, w - kw + 1))
    patches = images[
        index[:, None, None],
        row[:, None, None] + np.arange(kh)[None, :, None],
        col[:, None, None] + np.arange(kw)[None, None, :],
    ]  # (P, kh, kw, C)
    return np.asarray(model.preprocess(patches)).reshape(num_patches, -1)


def patch_whitening_filters(
    key: jax.Array,
    images: np.ndarray,
    kernel_shape: tuple[int, int],
    num_filters: int,
    num_patches: int = WHITENING_PATCHES,
    epsilon: float = WHITENING_EPSILON,
) -> np.ndarray:
    """(kh, kw, channels, num_filters) filters: the ``num_filters`` leading
    eigenvectors of the patch covariance of ``images``, scaled by 1/√(λ + ε).

    Filter *i* applied to a patch gives its coordinate along principal
    direction *i*, with variance λᵢ/(λᵢ + ε) ≈ 1, uncorrelated with the others.
    """
    patches = sample_patches(key, images, kernel_shape, num_patches).astype(np.float64)
    if num_filters > patches.shape[1]:
        raise ValueError(f"{num_filters} filters exceed the {patches.shape[1]} dimensions of a patch")
    patches -= patches.mean(axis=0)
    covariance = patches.T @ patches / patches.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    leading = np.argsort(eigenvalues)[::-1][:num_filters]
    filters = eigenvectors[:, leading] / np.sqrt(eigenvalues[leading] + epsilon)
    channels = images.shape[-1]
    return filters.reshape(*kernel_shape, channels, num_filters).astype(np.float32)


def _collect_pre_activations(x: jnp.ndarray, spec: model.NetworkSpec) -> dict[str, jnp.ndarray]:
    outputs = {}

    def record(next_fn, args, kwargs, context):
        out = next_fn(*args, **kwargs)
        if isinstance(context.module, (hk.Conv2D, hk.Linear)) and context.method_name == "__call__":
            outputs[context.module.module_name] = out
        return out

    with hk.intercept_methods(record):
        model.net_fn(x, spec)
    return outputs


@functools.partial(jax.jit, static_argnums=2)
def _pre_activations(params: hk.Params, x: jnp.ndarray, spec: model.NetworkSpec) -> dict[str, jnp.ndarray]:
    transformed = hk.without_apply_rng(hk.transform(functools.partial(_collect_pre_activations, spec=spec)))
    return transformed.apply(params, x)


def pre_activations(params: hk.Params, images: np.ndarray) -> dict[str, jnp.ndarray]:
    """The output of every convolution and linear layer of the reference network
    (before its ReLU) on uint8 ``images``, keyed by Haiku module name."""
    return _pre_activations(params, model.preprocess(jnp.asarray(images)), model.spec_of(params))


def unit_variance_scaling(params: hk.Params, images: np.ndarray, keep: tuple[str, ...] = ()) -> hk.Params:
    """``params`` with zero biases and each layer's weights (but those in ``keep``)
    scaled so that its pre-activations on ``images`` have unit standard deviation.

    With zero biases every step between two layers (ReLU, average pooling,
    flattening) is positively homogeneous, so scaling one layer by *s* scales
    all later pre-activations by *s*: one forward pass gives every scale.
    """
    params = {name: {**layer, "b": jnp.zeros_like(layer["b"])} for name, layer in params.items()}
    stds = {name: float(jnp.std(out)) for name, out in pre_activations(params, images).items()}
    upstream = 1.0  # product of the scales applied to earlier layers
    for name in model.spec_of(params).shapes():  # network order
        scale = 1.0 if name in keep else 1.0 / (stds[name] * upstream)
        params[name]["w"] = params[name]["w"] * scale
        upstream *= scale
    return params


def whitened_init(key: jax.Array, images: np.ndarray, spec: model.NetworkSpec = model.SEED_SPEC) -> hk.Params:
    """Fresh parameters of the network of ``spec``: Haiku's init, then patch-whitening
    filters in the first convolution and unit-variance scaling of every later
    layer, both estimated on ``images`` (uint8 NHWC training images)."""
    init_key, patch_key, batch_key = jax.random.split(key, 3)
    params = model.init_params(init_key, spec)
    first = spec.conv_layers[0]
    kh, kw, _, num_filters = params[first]["w"].shape
    params = {
        **params,
        first: {**params[first], "w": jnp.asarray(patch_whitening_filters(patch_key, images, (kh, kw), num_filters))},
    }
    chosen = np.asarray(
        jax.random.choice(batch_key, images.shape[0], (min(SCALING_IMAGES, images.shape[0]),), replace=False)
    )
    return unit_variance_scaling(params, images[np.sort(chosen)], keep=(first,))
