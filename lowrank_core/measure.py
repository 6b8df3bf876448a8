"""Measuring a variant honestly: accuracy on every test image, latency, size.

Latency follows the usual rules: the first call (compile) is timed and
reported apart, then warm-up calls, then ``repeats`` timed calls each ended by
``block_until_ready``; we report the median and the interquartile range.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lowrank_core import checkpoint, model, priority
from lowrank_core.compress import dequantize, drop_dead_units

EVAL_BATCH = 1000  # the test-set batch at which latency is reported
# Whole-test-set predictions on a CPU run in batches of PREDICT_BATCH, and
# inside each batch the convolutions run CONV_CHUNK images at a time: the
# convolutions are fastest on cache-sized chunks, the dense stack on larger
# batches (each batch streams the ~20 MB first-layer matrix from memory once).
# Measured on the 2-core CPU: 500 × 50 ran the test set ≈ 15 % faster than
# plain batches of 250. On an accelerator one large batch is fastest.
PREDICT_BATCH = 500
ACCELERATOR_BATCH = 10_000
CONV_CHUNK = 50


def predict_batch() -> int:
    """The batch size whole-set predictions use on this machine's default backend."""
    return PREDICT_BATCH if jax.default_backend() == "cpu" else ACCELERATOR_BATCH


def _chunked_conv_features(params, images):
    """``model.conv_features`` over ``images`` in chunks of CONV_CHUNK (one
    loop in the compiled program, so one compile per batch shape)."""
    n = images.shape[0]
    if jax.default_backend() != "cpu" or n <= CONV_CHUNK or n % CONV_CHUNK:
        return model.conv_features(params, images)
    chunks = images.reshape(n // CONV_CHUNK, CONV_CHUNK, *images.shape[1:])
    return jax.lax.map(lambda chunk: model.conv_features(params, chunk), chunks).reshape(n, -1)


@jax.jit
def _conv_features(params, images):
    return _chunked_conv_features(params, images)


@jax.jit
def _dense_predict(dense_params, features):
    return jnp.argmax(model.dense_forward(dense_params, features), axis=-1)


@jax.jit
def _dense_logits(dense_params, features):
    return model.dense_forward(dense_params, features)


def fast_forward(params, images):
    """Logits as :func:`model.forward` computes them, with the convolutions run
    in cache-sized chunks (the product's inference path)."""
    return model.dense_forward(params, _chunked_conv_features(params, images))


@jax.jit
def _full_predict(params, images):
    return jnp.argmax(fast_forward(params, images), axis=-1)


# Module-level, so timing a variant whose shapes were seen before reuses the
# compiled program instead of compiling again on every measurement.
_fast_forward = jax.jit(fast_forward)
_dense_layer = jax.jit(model.dense_layer)
IMAGE_SHAPE = (model.IMAGE_SIZE, model.IMAGE_SIZE, 3)


def compiled_forward():
    """The jitted product forward ``(product params, uint8 images) -> logits`` every latency times
    (one module-level function: shapes seen before reuse their compiled program)."""
    return _fast_forward


def _batched(fn: Callable, params, inputs: np.ndarray, batch_size: int | None) -> np.ndarray:
    """``fn`` over ``inputs`` in batches (default :func:`predict_batch`); a short
    last batch is zero-padded so only one shape is ever compiled."""
    batch_size = batch_size or predict_batch()
    n = inputs.shape[0]
    params = jax.device_put(params)  # once, not on every call: the weights are ~85 MB
    result, pending = None, None  # pending: (start, size, output) of the batch still computing

    def collect() -> np.ndarray:
        # Each batch is copied into one preallocated array as it lands, so the whole output
        # exists once, never also as its batches (for the training set's features, 614 MB).
        nonlocal result
        start, size, out = pending
        out = np.asarray(out)
        if result is None:
            result = np.empty((n,) + out.shape[1:], out.dtype)
        result[start : start + size] = out[:size]
        return result

    for start in range(0, n, batch_size):
        chunk = inputs[start : start + batch_size]
        size = chunk.shape[0]
        if size < batch_size and n > batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - size,) + chunk.shape[1:], chunk.dtype)])
        out = fn(params, chunk)  # dispatched asynchronously: the previous batch is read back meanwhile
        if pending is not None:
            collect()
        pending = (start, size, out)
        priority.pause_point(out.block_until_ready)  # in background work, an interactive request goes first
    if pending is None:
        return np.asarray(fn(params, inputs))  # no rows: the shapes of an empty output
    return collect()


def conv_features(params: Mapping, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """(N, 3072) outputs of the convolutional trunk, computed in batches."""
    conv = {name: params[name] for name in model.conv_layer_names(params)}
    return _batched(_conv_features, conv, images, batch_size)


def logits_from_features(dense: Mapping, features: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """(N, classes) float32 logits of the dense stack ``dense`` on conv ``features``, in batches."""
    return _batched(_dense_logits, dense, features, batch_size).astype(np.float32)


def dense_params(params: Mapping) -> dict:
    return {name: params[name] for name in model.dense_layer_names(params)}


WIDTH_BUCKET = 128  # hidden widths are padded up to a multiple of this after dead units are dropped


def product_params(params: Mapping, pad: bool = True) -> dict:
    """The product's inference form of ``params``, used for accuracy and latency alike:
    int8 matrices dequantized once, as a model is when loaded (``q · scale`` in
    float32, the same product the forward pass would compute on every batch;
    int8 is how a variant is stored, not how it runs), dead hidden units dropped
    (lossless), then each hidden
    width padded with zero units up to a multiple of WIDTH_BUCKET (at most
    back to its original width).

    A zero unit (zero column, zero bias, zero outgoing row) adds exact zeros,
    so the logits do not change; the padding makes variants of nearby sparsity
    or rank share one compiled program instead of compiling (seconds under
    load) for every new set of widths.
    """
    # On the host: eager device ops would each compile for every new shape.
    dequantized, _ = dequantize({m: {k: np.asarray(v) for k, v in ps.items()} for m, ps in params.items()})
    out = dict(drop_dead_units(dequantized))
    if not pad:  # one shape only ever runs (the sensitivity table's tails): nothing to share
        return out
    names = model.dense_layer_names(out)
    for name, nxt in zip(names[:-1], names[1:]):
        layer, following = dict(out[name]), dict(out[nxt])
        into = next((k for k in ("w", "u") if k in following), None)
        if "w" not in layer or into is None:
            continue  # a factorized layer: its inner width is its rank
        width = layer["w"].shape[1]
        extra = min(-width % WIDTH_BUCKET, dequantized[name]["w"].shape[1] - width)  # never wider than before
        if not extra:
            continue
        layer["w"] = np.pad(layer["w"], ((0, 0), (0, extra)))
        layer["b"] = np.pad(layer["b"], (0, extra))
        following[into] = np.pad(following[into], ((0, extra), (0, 0)))
        out[name], out[nxt] = layer, following
    return out


@jax.jit
def _hidden_layer(layer, x):
    return jax.nn.relu(model.dense_layer(layer, x))


class HiddenActivations:
    """A network's dense stack in product form and, on ``features`` (computed on
    first use, layer by layer in the batches :func:`predict_from_features` uses),
    the output of each of its hidden layers after relu."""

    def __init__(self, params: Mapping, features: np.ndarray, batch_size: int | None = None):
        self.product = product_params(dense_params(params))
        self._features, self._batch_size = features, batch_size
        self._outputs: list[np.ndarray] | None = None
        self._lock = threading.Lock()

    @property
    def outputs(self) -> list[np.ndarray]:
        with self._lock:
            if self._outputs is None:
                outputs, x = [], self._features
                for name in model.dense_layer_names(self.product)[:-1]:
                    x = _batched(_hidden_layer, self.product[name], x, self._batch_size)
                    outputs.append(x)
                self._outputs = outputs
            return self._outputs


def _same_layer(a: Mapping, b: Mapping) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # shapes, then values


def unchanged_layers(product: Mapping, reference: Mapping) -> int:
    """How many leading dense layers two product-form stacks share exactly."""
    count = 0
    for a, b in zip(model.dense_layer_names(product), model.dense_layer_names(reference)):
        if a != b or not _same_layer(product[a], reference[b]):
            break
        count += 1
    return count


def predict_from_features(
    params: Mapping,
    features: np.ndarray,
    batch_size: int | None = None,
    reference: HiddenActivations | None = None,
) -> np.ndarray:
    """Predictions of a variant whose convolutions equal those that made ``features``
    (dead hidden units dropped first: lossless, see :func:`predict_full`).

    With ``reference`` (the checkpoint's :class:`HiddenActivations` on the same
    ``features``), only the layers from the variant's first changed one onward
    run, from the reference's output before it: the same layers on the same
    inputs, so the same predictions (a test checks the logits bit for bit), in
    a fraction of the time when a variant changes only late layers (pruning the
    shipped baseline below its layers' share of zeros changes only the output layer)."""
    product = product_params(dense_params(params))
    names = model.dense_layer_names(product)
    if reference is not None:
        # A variant equal to the checkpoint runs whole (the outputs are computed only for variants
        # that share a part of it: the advisor's candidates, say, never need them).
        start = unchanged_layers(product, reference.product)
        if 0 < start < len(names):
            tail = {name: product[name] for name in names[start:]}
            return _batched(_dense_predict, tail, reference.outputs[start - 1], batch_size)
    return _batched(_dense_predict, product, features, batch_size)


def predict_full(params: Mapping, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Predictions through the whole network: the product's test-set path.

    Dead hidden units are dropped first (:func:`compress.drop_dead_units`,
    lossless; widths then padded to shared sizes, see
    :func:`product_params`); on a CPU the first convolution runs as one tiled matmul
    (:func:`model.conv_features`) over cache-sized chunks. Tests check the
    argmax equals a plain ``network.apply`` on real images.
    """
    return _batched(_full_predict, product_params(params), images, batch_size)


def same_convolutions(a: Mapping, b: Mapping) -> bool:
    names = model.conv_layer_names(a)
    return names == model.conv_layer_names(b) and all(
        np.array_equal(np.asarray(a[n][p]), np.asarray(b[n][p])) for n in names for p in ("w", "b")
    )


# --------------------------------------------------------------------------
# Size


def count_params(params: Mapping) -> int:
    """Weights and biases (an int8 matrix counts its entries; its scales are storage, in bytes)."""
    return int(sum(np.asarray(v).size for ps in params.values() for k, v in ps.items() if not k.endswith("_scale")))


def _matrix_size(layer: Mapping, key: str) -> int:
    for stored in (key, f"{key}_q"):
        if stored in layer:
            return int(np.prod(np.shape(layer[stored])))
    return 0


def macs_per_image(params: Mapping) -> int:
    """Multiply-accumulates per image: every convolution and every dense matrix."""
    h = model.IMAGE_SIZE
    conv = 0
    for name in model.conv_layer_names(params):
        kh, kw, cin, cout = np.shape(params[name]["w"])
        conv += h * h * kh * kw * cin * cout  # SAME padding: one output per input pixel
        h //= 2
    dense = sum(_matrix_size(params[n], k) for n in model.dense_layer_names(params) for k in model.MATRIX_KEYS)
    return conv + dense


def conv_macs(params: Mapping) -> int:
    """The convolutions' share of :func:`macs_per_image`."""
    return macs_per_image({n: params[n] for n in model.conv_layer_names(params)})


def stored_bytes(params: Mapping, float_dtype="float32") -> int:
    """Bytes of the variant's stored file (:func:`checkpoint.params_to_npz_bytes`), measured by writing it."""
    return len(checkpoint.params_to_npz_bytes(params, float_dtype))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def fingerprinted(env: dict) -> dict:
    """``env`` with ``fingerprint``: a hash of everything in it."""
    return {**env, "fingerprint": hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]}


def environment() -> dict:
    """Where a latency was measured: backend, device, CPU, jax; ``fingerprint`` hashes them."""
    device = jax.devices()[0]
    return fingerprinted(
        {
            "backend": jax.default_backend(),
            "device": getattr(device, "device_kind", str(device)),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "jax": jax.__version__,
            "host": platform.node(),
        }
    )


# --------------------------------------------------------------------------
# Latency


def time_calls(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> dict:
    """First-call time (the compile, for shapes not seen before), then median
    and IQR of ``repeats`` blocked calls after ``warmup`` (``fn`` may return jax
    arrays, which are waited for, or host arrays, already computed)."""
    started = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - started
    for _ in range(warmup):
        priority.interrupt_point()
        jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        priority.interrupt_point()  # a background timing gives the CPU to a page within one call
        started = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - started)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {
        "compile_s": compile_s,
        "median_ms": 1e3 * median,
        "iqr_ms": 1e3 * (q3 - q1),
        "min_ms": 1e3 * min(samples),
        "repeats": repeats,
    }


def timed_batch_sizes(n_images: int) -> tuple[int, ...]:
    """1 and EVAL_BATCH, or as many images as there are if fewer (the batch actually timed)."""
    return tuple(sorted({1, min(EVAL_BATCH, n_images)}))


def latency(params: Mapping, images: np.ndarray, batch_sizes: tuple[int, ...] | None = None, repeats: int = 7) -> dict:
    """Whole-network latency (convolutions included) at each batch size, keyed by
    the batch actually timed, on the product's inference path (the same
    :func:`product_params` the accuracy uses, and :func:`fast_forward`)."""
    batch_sizes = batch_sizes or timed_batch_sizes(images.shape[0])
    params = jax.device_put(product_params(params))
    out = {}
    for batch_size in batch_sizes:
        batch = jax.device_put(images[:batch_size])
        batch_size = int(batch.shape[0])
        stats = time_calls(lambda batch=batch: _fast_forward(params, batch), repeats=repeats)
        stats["per_image_ms"] = stats["median_ms"] / batch_size
        out[str(batch_size)] = stats
    return out


def layer_latency(params: Mapping, images: np.ndarray, batch_size: int = EVAL_BATCH, repeats: int = 5) -> dict:
    """Median milliseconds of the convolutional trunk and of each dense layer at
    ``batch_size`` (or all images if fewer; ``batch_size`` in the result), product path."""
    params = jax.device_put(product_params(params))
    batch = jax.device_put(images[:batch_size])
    out = {
        "batch_size": int(batch.shape[0]),
        "convolutions": time_calls(lambda: _conv_features(params, batch), repeats=repeats)["median_ms"],
    }
    x = _conv_features(params, batch)
    for name in model.dense_layer_names(params):
        layer, inputs = params[name], x
        out[name] = time_calls(lambda layer=layer, inputs=inputs: _dense_layer(layer, inputs), repeats=repeats)[
            "median_ms"
        ]
        x = jax.nn.relu(_dense_layer(layer, inputs))
    return out
