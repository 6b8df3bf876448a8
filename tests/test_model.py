import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_core import model
from lowrank_core.errors import CheckpointError


@pytest.fixture(scope="module")
def params():
    return model.init_params(jax.random.PRNGKey(0))


def test_architecture_is_the_seeds(params):
    shapes = model.SEED_SPEC.shapes()
    assert list(shapes) == ["conv2_d", "conv2_d_1", "linear", "linear_1", "linear_2", "linear_3", "linear_4"]
    assert shapes["conv2_d"]["w"] == (5, 5, 3, 18) and shapes["conv2_d_1"]["w"] == (5, 5, 18, 48)
    assert [shapes[n]["w"] for n in model.DENSE_LAYERS] == [
        (3072, 3000),
        (3000, 2000),
        (2000, 2000),
        (2000, 1000),
        (1000, 10),
    ]
    assert sum(v.size for v in jax.tree.leaves(params)) == 21_257_026


def test_preprocess_is_fixed_normalization():
    images = np.array([[[[0, 128, 255]]]], np.uint8)
    expected = (np.array([0, 128, 255]) / 255.0 - model.MEAN) / model.STD
    np.testing.assert_allclose(np.asarray(model.preprocess(images))[0, 0, 0], expected, rtol=1e-5)


def test_fast_forward_matches_haiku_apply(params):
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    reference = model.network.apply(params, model.preprocess(images))
    fast = model.forward(params, images)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(reference), rtol=1e-4, atol=1e-5)


def test_factorized_layer_equals_product(params):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(4, 7)).astype(np.float32)
    np.testing.assert_allclose(
        model.dense_layer({"u": u, "v": v, "b": b}, x), model.dense_layer({"w": u @ v, "b": b}, x), rtol=1e-5, atol=1e-5
    )


def test_check_params_names_first_mismatch(params):
    bad = jax.tree.map(lambda v: v, params)
    bad["linear_2"] = dict(bad["linear_2"], w=jnp.zeros((2000, 1999)))
    with pytest.raises(CheckpointError, match="linear_2/w"):
        model.check_params(bad)
    missing = {k: v for k, v in params.items() if k != "linear_4"}
    with pytest.raises(CheckpointError, match="linear_4"):
        model.check_params(missing)


@pytest.mark.parametrize("shape", [(5, 5, 3, 18), (5, 5, 18, 48), (3, 3, 4, 6), (4, 4, 2, 3)])
def test_tiled_convolution_equals_xla_convolution(shape):
    rng = np.random.default_rng(sum(shape))
    w = rng.normal(size=shape).astype(np.float32)
    b = rng.normal(size=shape[-1]).astype(np.float32)
    x = rng.normal(size=(3, 16, 16, shape[2])).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(model._conv_same_tiled(x, w, b)), np.asarray(model._conv_same(x, w, b)), rtol=1e-4, atol=1e-4
    )


def _reference_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A SAME, stride-1 convolution written out in numpy (independent of XLA)."""
    kh, kw = w.shape[:2]
    padded = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (w.shape[-1],), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            out += padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]] @ w[dy, dx]
    return out + b


def test_both_convolutions_equal_a_plain_reference_including_odd_widths():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 5, 3, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    for width in (6, 8):  # 6 is not a multiple of the tile: the fallback path
        x = rng.normal(size=(2, 6, width, 3)).astype(np.float32)
        expected = _reference_conv(x, w, b)
        np.testing.assert_allclose(np.asarray(model._conv_same_tiled(x, w, b)), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(model._conv_same(x, w, b)), expected, rtol=1e-4, atol=1e-4)


def test_network_spec_builds_what_it_says():
    spec = model.TINY_SPEC
    params = model.init_params(jax.random.PRNGKey(4), spec)
    assert {m: {k: tuple(v.shape) for k, v in ps.items()} for m, ps in params.items()} == spec.shapes()
    assert model.spec_of(params) == spec and spec.feature_dim == 8 * 8 * 8
    images = np.random.default_rng(4).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    reference = model.make_network(spec).apply(params, model.preprocess(images))
    np.testing.assert_allclose(np.asarray(model.forward(params, images)), np.asarray(reference), rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError):
        model.NetworkSpec(conv_channels=(4, 4, 4, 4, 4, 4))  # 32 px cannot pool six times


def test_int8_and_factorized_layers_run_as_their_float_product():
    rng = np.random.default_rng(5)
    u = rng.normal(size=(7, 3)).astype(np.float32)
    q = rng.integers(-127, 128, (3, 5)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, 5).astype(np.float32)
    b = np.zeros(5, np.float32)
    x = rng.normal(size=(2, 7)).astype(np.float32)
    np.testing.assert_allclose(
        model.dense_layer({"u": u, "v_q": q, "v_scale": scale, "b": b}, x),
        x @ u @ (q.astype(np.float32) * scale),
        rtol=1e-5,
        atol=1e-5,
    )
