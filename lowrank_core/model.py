"""The seed notebooks' CIFAR-10 network, and a fast pure-function forward pass.

:func:`net_fn` is the reference definition in Haiku, exactly the seed's
(Haiku defaults, SAME padding, Haiku's own module names). The product runs the
same arithmetic through :func:`forward`, a pure function of the params tree:

* the convolutional trunk as a function of its own, so that variants which
  change only the dense stack can reuse its output on the test set;
* the dense stack as whatever layers the params tree holds, so compressed
  variants (factorized ``u``/``v`` layers, removed or shrunk layers) run
  through the same code without new Haiku modules.

Tests check both against ``network.apply`` on real images.
"""

from __future__ import annotations

from typing import Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from lowrank_core.errors import CheckpointError

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
NUM_CLASSES = 10
CONV_LAYERS = ("conv2_d", "conv2_d_1")
DENSE_LAYERS = ("linear", "linear_1", "linear_2", "linear_3", "linear_4")
HIDDEN_LAYERS = DENSE_LAYERS[:-1]  # the ones layer removal may drop
DENSE_WIDTHS = (3000, 2000, 2000, 1000, NUM_CLASSES)
FEATURE_DIM = 8 * 8 * 48  # flattened output of the convolutional trunk

Params = Mapping[str, Mapping[str, jnp.ndarray]]


def _avg_pool_module() -> hk.AvgPool:
    # The seed wrote window_shape=(2, 2). Haiku pads a short window with leading
    # ones, so on NHWC input that pools over width *and channels* (32×16×9 after
    # the first pool, 6,144 features, 30 M parameters). The seed's stated design
    # (8·8·48 = 3,072 features, 21.3 M parameters) pools height and width:
    return hk.AvgPool(window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")


def net_fn(images: jnp.ndarray) -> jnp.ndarray:
    """The seed's network on normalized NHWC float images; returns logits."""
    net = hk.Sequential([
        hk.Conv2D(output_channels=18, kernel_shape=(5, 5)), jax.nn.relu,
        _avg_pool_module(), jax.nn.relu,
        hk.Conv2D(output_channels=48, kernel_shape=(5, 5)), jax.nn.relu,
        _avg_pool_module(),
        hk.Flatten(),
        hk.Linear(3000), jax.nn.relu,
        hk.Linear(2000), jax.nn.relu,
        hk.Linear(2000), jax.nn.relu,
        hk.Linear(1000), jax.nn.relu,
        hk.Linear(NUM_CLASSES),
    ])
    return net(images)


network = hk.without_apply_rng(hk.transform(net_fn))


def preprocess(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 NHWC images -> ``(x / 255 - MEAN) / STD`` in float32 (the seed's, fixed)."""
    return (images.astype(jnp.float32) / 255.0 - MEAN) / STD


@jax.jit  # one compiled program instead of dispatching 21 M truncated-normal draws op by op
def init_params(key: jax.Array) -> hk.Params:
    """Fresh parameters, as Haiku initializes the seed's network."""
    return network.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32))


def expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """``{module: {param: shape}}`` of the full architecture (no compute)."""
    shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    return {m: {p: tuple(v.shape) for p, v in ps.items()} for m, ps in shapes.items()}


def check_params(params: Params) -> None:
    """Raises :class:`CheckpointError` naming the first param that does not fit the architecture."""
    expected = expected_shapes()
    for module, module_params in expected.items():
        if module not in params:
            raise CheckpointError(f"parameters lack module '{module}' of the seed network")
        for name, shape in module_params.items():
            if name not in params[module]:
                raise CheckpointError(f"parameters lack '{module}/{name}'")
            got = tuple(params[module][name].shape)
            if got != shape:
                raise CheckpointError(f"'{module}/{name}' has shape {got}, the seed network needs {shape}")
    for module in params:
        if module not in expected:
            raise CheckpointError(f"parameters hold unknown module '{module}'")
        for name in params[module]:
            if name not in expected[module]:
                raise CheckpointError(f"parameters hold unknown parameter '{module}/{name}'")


# --------------------------------------------------------------------------
# Fast forward pass


def _conv_same(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """A SAME, stride-1 NHWC convolution, as ``hk.Conv2D`` computes it (XLA's conv)."""
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


CONV_TILE = 4  # output columns per matmul row in :func:`_conv_same_tiled`


def _tiled_kernel(w: jnp.ndarray, tile: int) -> jnp.ndarray:
    """The (kh·(tile+kw-1)·cin, tile·cout) matrix that maps a window of input
    rows and columns to ``tile`` adjacent output pixels."""
    kh, kw, cin, cout = w.shape
    span = tile + kw - 1
    shifts = jnp.stack([jnp.eye(span, tile, k=-dx, dtype=w.dtype) for dx in range(kw)])  # (kw, span, tile)
    return jnp.einsum("dab,ydij->yaibj", shifts, w).reshape(kh * span * cin, tile * cout)


def _conv_same_tiled(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray, tile: int = CONV_TILE) -> jnp.ndarray:
    """The same convolution as :func:`_conv_same`, as one matmul over tiles.

    XLA's CPU convolution runs the 3-channel first layer at a small fraction of
    matmul speed (it dominates inference). Gathering, for every ``tile``
    adjacent output pixels, the kh × (tile+kw-1) input window and multiplying
    by a block-Toeplitz kernel turns it into one large matmul: ≈ 1.6× the
    MACs, ≈ 10× faster here. Tests compare it with XLA's convolution. On a
    GPU or TPU the platform's convolution is used instead.
    """
    n, h, width, _ = x.shape
    kh, kw, _, cout = w.shape
    if width % tile or jax.default_backend() != "cpu":
        return _conv_same(x, w, b)  # accelerators' own convolutions are fast
    span = tile + kw - 1
    padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    windows = jnp.stack([
        jnp.stack([padded[:, dy:dy + h, t * tile:t * tile + span] for dy in range(kh)], axis=2)
        for t in range(width // tile)], axis=2)  # (n, h, tiles, kh, span, cin)
    y = windows.reshape(n * h * (width // tile), -1) @ _tiled_kernel(w, tile)
    return y.reshape(n, h, width, cout) + b


def _avg_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def conv_features(params: Params, images: jnp.ndarray) -> jnp.ndarray:
    """The convolutional trunk: uint8 NHWC images -> (N, 3072) flattened features."""
    x = preprocess(images)
    x = jax.nn.relu(_conv_same_tiled(x, params["conv2_d"]["w"], params["conv2_d"]["b"]))
    x = jax.nn.relu(_avg_pool_2x2(x))
    x = jax.nn.relu(_conv_same(x, params["conv2_d_1"]["w"], params["conv2_d_1"]["b"]))
    x = _avg_pool_2x2(x)
    return x.reshape(x.shape[0], -1)


def dense_layer_names(params: Params) -> list[str]:
    """The dense layers present in ``params``, in network order."""
    return [name for name in DENSE_LAYERS if name in params]


def dense_layer(layer: Mapping[str, jnp.ndarray], x: jnp.ndarray) -> jnp.ndarray:
    """One dense layer: ``x @ w + b``, or factorized ``(x @ u) @ v + b``."""
    if "w" in layer:
        y = x @ layer["w"]
    else:
        y = (x @ layer["u"]) @ layer["v"]
    return y + layer["b"]


def dense_forward(params: Params, features: jnp.ndarray) -> jnp.ndarray:
    """The dense stack, whatever layers ``params`` holds, relu between them."""
    names = dense_layer_names(params)
    x = features
    for i, name in enumerate(names):
        x = dense_layer(params[name], x)
        if i < len(names) - 1:
            x = jax.nn.relu(x)
    return x


def forward(params: Params, images: jnp.ndarray) -> jnp.ndarray:
    """Logits of uint8 NHWC ``images`` under ``params`` (any compressed variant)."""
    return dense_forward(params, conv_features(params, images))
