"""The product's own path: JAX (XLA) on the default device, dead units dropped,
the first convolution as a tiled matmul on a CPU (see :mod:`lowrank_core.measure`).
Int8 matrices are dequantized once when a variant loads: XLA runs float32."""

from __future__ import annotations

import jax
import numpy as np

from lowrank_core import measure
from lowrank_core.runtimes.base import Runtime, StoredVariant


def prepare(variant: StoredVariant):
    params = jax.device_put(measure.product_params(variant.params))
    forward = measure.compiled_forward()

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(forward(params, images))

    run(np.zeros((1, *measure.IMAGE_SHAPE), np.uint8))  # compiles for batch 1 now, not when first timed
    return run


RUNTIME = Runtime(
    name="jax",
    label="JAX (XLA)",
    order=0,
    prepare=prepare,
    environment=measure.environment,
    int8="int8 dequantized to float32 once, when loaded",
)
