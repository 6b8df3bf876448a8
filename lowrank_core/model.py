"""The seed notebooks' CIFAR-10 network as data, and a fast pure-function forward pass.

A :class:`NetworkSpec` holds the layer widths (the seed's by default; tests
use :data:`TINY_SPEC`). :func:`net_fn` is the reference definition in Haiku,
for the seed spec exactly the seed's (Haiku defaults, SAME padding, Haiku's
own module names). The product runs the
same arithmetic through :func:`forward`, a pure function of the params tree:

* the convolutional trunk as a function of its own, so that variants which
  change only the dense stack can reuse its output on the test set;
* the dense stack as whatever layers the params tree holds, so compressed
  variants (factorized ``u``/``v`` layers, removed or shrunk layers) run
  through the same code without new Haiku modules.

Tests check both against ``network.apply`` on real images.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from lowrank_core.errors import CheckpointError

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
NUM_CLASSES = 10
IMAGE_SIZE = 32


def _haiku_names(prefix: str, count: int) -> tuple[str, ...]:
    # Haiku names repeated modules "linear", "linear_1", …: checkpoints keep these names.
    return tuple(prefix if i == 0 else f"{prefix}_{i}" for i in range(count))


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The network as data: conv widths, hidden dense widths, classes.

    Each convolution (``kernel``×``kernel``, SAME, relu) is followed by a 2×2
    average pool; the flattened features feed the dense stack (relu between
    layers). The default is the seed notebooks' network; tests use small ones.
    """

    conv_channels: tuple[int, ...] = (18, 48)
    hidden_widths: tuple[int, ...] = (3000, 2000, 2000, 1000)
    num_classes: int = NUM_CLASSES
    kernel: int = 5

    def __post_init__(self):
        if not self.conv_channels or not self.hidden_widths:
            raise CheckpointError("a network needs at least one convolution and one hidden dense layer")
        if any(int(c) < 1 for c in self.conv_channels + self.hidden_widths) or self.kernel < 1:
            raise CheckpointError("layer widths and the kernel size must be positive")
        if IMAGE_SIZE % (2 ** len(self.conv_channels)):
            raise CheckpointError(f"{len(self.conv_channels)} pooling stages do not divide {IMAGE_SIZE}-pixel images")

    @property
    def conv_layers(self) -> tuple[str, ...]:
        return _haiku_names("conv2_d", len(self.conv_channels))

    @property
    def dense_layers(self) -> tuple[str, ...]:
        return _haiku_names("linear", len(self.hidden_widths) + 1)

    @property
    def hidden_layers(self) -> tuple[str, ...]:
        return self.dense_layers[:-1]

    @property
    def dense_widths(self) -> tuple[int, ...]:
        return self.hidden_widths + (self.num_classes,)

    @property
    def feature_dim(self) -> int:
        side = IMAGE_SIZE // 2 ** len(self.conv_channels)
        return side * side * self.conv_channels[-1]

    def shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """``{module: {param: shape}}``, in network order (no compute)."""
        out: dict[str, dict[str, tuple[int, ...]]] = {}
        channels = 3
        for name, width in zip(self.conv_layers, self.conv_channels):
            out[name] = {"w": (self.kernel, self.kernel, channels, width), "b": (width,)}
            channels = width
        fan_in = self.feature_dim
        for name, width in zip(self.dense_layers, self.dense_widths):
            out[name] = {"w": (fan_in, width), "b": (width,)}
            fan_in = width
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SEED_SPEC = NetworkSpec()
# Small enough that a test trains and compresses it end to end in seconds.
TINY_SPEC = NetworkSpec(conv_channels=(4, 8), hidden_widths=(96, 64, 64, 32))

# The seed network's layer names (every spec with two convolutions and four
# hidden layers, TINY_SPEC included, shares them).
CONV_LAYERS = SEED_SPEC.conv_layers
DENSE_LAYERS = SEED_SPEC.dense_layers
HIDDEN_LAYERS = SEED_SPEC.hidden_layers
FEATURE_DIM = SEED_SPEC.feature_dim

Params = Mapping[str, Mapping[str, jnp.ndarray]]


def _avg_pool_module() -> hk.AvgPool:
    # The seed wrote window_shape=(2, 2). Haiku pads a short window with leading
    # ones, so on NHWC input that pools over width *and channels* (32×16×9 after
    # the first pool, 6,144 features, 30 M parameters). The seed's stated design
    # (8·8·48 = 3,072 features, 21.3 M parameters) pools height and width:
    return hk.AvgPool(window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")


def net_fn(images: jnp.ndarray, spec: NetworkSpec = SEED_SPEC) -> jnp.ndarray:
    """The network of ``spec`` in Haiku on normalized NHWC float images; returns logits.

    For the seed spec this is exactly the seed's (Haiku defaults, SAME padding,
    Haiku's module names)."""
    layers: list = []
    for channels in spec.conv_channels:
        layers += [
            hk.Conv2D(output_channels=channels, kernel_shape=(spec.kernel, spec.kernel)),
            jax.nn.relu,
            _avg_pool_module(),
        ]
    layers.append(hk.Flatten())
    for width in spec.hidden_widths:
        layers += [hk.Linear(width), jax.nn.relu]
    layers.append(hk.Linear(spec.num_classes))
    return hk.Sequential(layers)(images)


def make_network(spec: NetworkSpec = SEED_SPEC) -> hk.Transformed:
    """The Haiku reference network of ``spec`` (init and apply)."""
    return hk.without_apply_rng(hk.transform(functools.partial(net_fn, spec=spec)))


network = make_network(SEED_SPEC)


def preprocess(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 NHWC images -> ``(x / 255 - MEAN) / STD`` in float32 (the seed's, fixed)."""
    return (images.astype(jnp.float32) / 255.0 - MEAN) / STD


@functools.partial(jax.jit, static_argnums=1)  # one compiled program, not 21 M draws op by op
def init_params(key: jax.Array, spec: NetworkSpec = SEED_SPEC) -> hk.Params:
    """Fresh parameters, as Haiku initializes the network of ``spec``."""
    return make_network(spec).init(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32))


def _ordered(params: Params, prefix: str) -> list[str]:
    """Names ``prefix``, ``prefix_1``, ``prefix_2``, … present in ``params``, in that order."""
    found = {
        0 if n == prefix else int(n[len(prefix) + 1 :]): n
        for n in params
        if n == prefix or (n.startswith(prefix + "_") and n[len(prefix) + 1 :].isdigit())
    }
    return [found[i] for i in sorted(found)]


def spec_of(params: Params) -> NetworkSpec:
    """The :class:`NetworkSpec` whose shapes ``params`` has (checked with :func:`check_params`)."""
    convs, dense = _ordered(params, "conv2_d"), _ordered(params, "linear")
    try:
        spec = NetworkSpec(
            conv_channels=tuple(int(np.shape(params[n]["w"])[-1]) for n in convs),
            hidden_widths=tuple(int(np.shape(params[n]["w"])[1]) for n in dense[:-1]),
            num_classes=int(np.shape(params[dense[-1]]["w"])[1]),
            kernel=int(np.shape(params[convs[0]]["w"])[0]),
        )
    except (IndexError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            "parameters do not hold convolutions 'conv2_d…' and dense layers 'linear…' with 'w' kernels"
        ) from None
    check_params(params, spec)
    return spec


def check_params(params: Params, spec: NetworkSpec = SEED_SPEC) -> None:
    """Raises :class:`CheckpointError` naming the first param that does not fit ``spec``."""
    expected = spec.shapes()
    for module, module_params in expected.items():
        if module not in params:
            raise CheckpointError(f"parameters lack module '{module}' of the network")
        for name, shape in module_params.items():
            if name not in params[module]:
                raise CheckpointError(f"parameters lack '{module}/{name}'")
            got = tuple(params[module][name].shape)
            if got != shape:
                raise CheckpointError(f"'{module}/{name}' has shape {got}, the network needs {shape}")
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
        x, w, window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
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
    windows = jnp.stack(
        [
            jnp.stack([padded[:, dy : dy + h, t * tile : t * tile + span] for dy in range(kh)], axis=2)
            for t in range(width // tile)
        ],
        axis=2,
    )  # (n, h, tiles, kh, span, cin)
    y = windows.reshape(n * h * (width // tile), -1) @ _tiled_kernel(w, tile)
    return y.reshape(n, h, width, cout) + b


def _avg_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def conv_layer_names(params: Params) -> list[str]:
    """The convolutions present in ``params``, in network order."""
    return _ordered(params, "conv2_d")


def conv_features(params: Params, images: jnp.ndarray) -> jnp.ndarray:
    """The convolutional trunk: uint8 NHWC images -> (N, feature_dim) flattened features.

    The first convolution runs as one tiled matmul on a CPU (see
    :func:`_conv_same_tiled`); a ReLU then a 2×2 average pool follow each.
    """
    x = preprocess(images)
    for i, name in enumerate(conv_layer_names(params)):
        conv = _conv_same_tiled if i == 0 else _conv_same
        x = _avg_pool_2x2(jax.nn.relu(conv(x, params[name]["w"], params[name]["b"])))
    return x.reshape(x.shape[0], -1)


def dense_layer_names(params: Params) -> list[str]:
    """The dense layers present in ``params``, in network order."""
    return _ordered(params, "linear")


# A dense layer's matrices: a plain kernel "w", or a factorized pair "u", "v"
# (x → (x u) v). Any of them may be stored as int8: "<name>_q" (int8) with
# per-output-column "<name>_scale" (float32), meaning q · scale.
MATRIX_KEYS = ("w", "u", "v")


def layer_matrix(layer: Mapping[str, jnp.ndarray], name: str):
    """Matrix ``name`` of a dense layer as floats (dequantized if stored as int8), or None."""
    if name in layer:
        return layer[name]
    if f"{name}_q" in layer:
        return layer[f"{name}_q"].astype(jnp.float32) * layer[f"{name}_scale"]
    return None


def is_factorized(layer: Mapping) -> bool:
    return layer_matrix(layer, "u") is not None


def dense_layer(layer: Mapping[str, jnp.ndarray], x: jnp.ndarray) -> jnp.ndarray:
    """One dense layer: ``x @ w + b``, or factorized ``(x @ u) @ v + b`` (int8 matrices dequantized)."""
    if is_factorized(layer):
        y = (x @ layer_matrix(layer, "u")) @ layer_matrix(layer, "v")
    else:
        y = x @ layer_matrix(layer, "w")
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
