import jax
import numpy as np
import pytest

from lowrank_core import initializers, model


def smooth_images(n: int, seed: int) -> np.ndarray:
    """uint8 NHWC images with the neighbour correlation of photographs:
    8×8 random colour grids upsampled 4× plus a little pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 8, 8, 3))
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 12, (n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def all_patches(images: np.ndarray, size: int) -> np.ndarray:
    x = np.asarray(model.preprocess(images), np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))  # (n, h', w', C, kh, kw)
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * x.shape[-1])


def test_whitening_filters_decorrelate_patches_with_unit_variance():
    images = smooth_images(200, 0)
    filters = initializers.patch_whitening_filters(jax.random.PRNGKey(0), images, (5, 5), 18)
    assert filters.shape == (5, 5, 3, 18) and filters.dtype == np.float32
    patches = all_patches(images, 5)
    covariance = np.cov(patches, rowvar=False)
    outputs = filters.reshape(75, 18).T.astype(np.float64) @ covariance @ filters.reshape(75, 18)
    eigenvalues = np.sort(np.linalg.eigvalsh(covariance))[::-1][:18]
    # Coordinates along the leading principal directions: variance λ/(λ+ε), uncorrelated.
    np.testing.assert_allclose(
        np.diag(outputs), eigenvalues / (eigenvalues + initializers.WHITENING_EPSILON), rtol=0.05
    )
    off_diagonal = outputs - np.diag(np.diag(outputs))
    assert np.abs(off_diagonal).max() < 0.05


def test_whitening_rejects_more_filters_than_patch_dimensions():
    with pytest.raises(ValueError, match="exceed"):
        initializers.patch_whitening_filters(jax.random.PRNGKey(0), smooth_images(4, 1), (3, 3), 28, num_patches=100)


def test_pre_activations_are_every_layer_in_order_ending_in_the_logits():
    params = model.init_params(jax.random.PRNGKey(1))
    images = smooth_images(8, 2)
    outputs = initializers.pre_activations(params, images)
    assert list(outputs) == list(model.CONV_LAYERS + model.DENSE_LAYERS)
    np.testing.assert_allclose(outputs[model.DENSE_LAYERS[-1]], model.forward(params, images), rtol=1e-4, atol=1e-5)


def test_unit_variance_scaling_gives_every_layer_unit_std_but_the_kept_ones():
    params = model.init_params(jax.random.PRNGKey(2))
    images = smooth_images(64, 3)
    scaled = initializers.unit_variance_scaling(params, images, keep=("conv2_d",))
    np.testing.assert_array_equal(scaled["conv2_d"]["w"], params["conv2_d"]["w"])
    assert all(not np.any(layer["b"]) for layer in scaled.values())
    stds = {name: float(np.std(out)) for name, out in initializers.pre_activations(scaled, images).items()}
    for name in model.CONV_LAYERS[1:] + model.DENSE_LAYERS:
        assert stds[name] == pytest.approx(1.0, rel=1e-3), name
    assert stds["conv2_d"] != pytest.approx(1.0, rel=1e-3)  # kept as it was


def test_whitened_init_fits_the_network_and_is_determined_by_its_key():
    images = smooth_images(300, 4)
    first = initializers.whitened_init(jax.random.PRNGKey(3), images)
    again = initializers.whitened_init(jax.random.PRNGKey(3), images)
    other = initializers.whitened_init(jax.random.PRNGKey(4), images)
    model.check_params(first)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first["linear"]["w"], other["linear"]["w"])
    logits = model.forward(first, images[:16])
    assert np.all(np.isfinite(logits)) and 0.5 < float(np.std(logits)) < 2.0
