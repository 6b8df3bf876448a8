"""ONNX Runtime (CPU execution provider) on the variant's exported ONNX graph
(:mod:`lowrank_core.onnx_export`): int8 matrices on integer kernels
(``MatMulInteger``, activations quantized per batch), floats as stored.

``onnxruntime`` is imported only when this runtime runs (an optional extra).
"""

from __future__ import annotations

import functools
import os

from lowrank_core import onnx_export
from lowrank_core.runtimes.base import Runtime, StoredVariant, machine


def _ort():
    import onnxruntime  # deferred: an optional dependency

    return onnxruntime


def missing() -> str | None:
    try:
        _ort()
        onnx_export._onnx()
    except Exception:
        return f"onnxruntime and onnx are not installed; {onnx_export.INSTALL_HINT}"
    return None


def threads() -> int:
    return os.cpu_count() or 1


def session(model_bytes: bytes):
    """An inference session on the CPU with one thread per core, all graph optimizations on."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def prepare(variant: StoredVariant):
    sess = session(onnx_export.to_onnx_bytes(*variant))
    return lambda images: sess.run(None, {onnx_export.INPUT_NAME: images})[0]


@functools.cache
def environment() -> dict:
    ort = _ort()
    extra = {"backend": "onnxruntime", "device": "CPUExecutionProvider", "onnxruntime": ort.__version__}
    return machine({**extra, "threads": threads()})


RUNTIME = Runtime(
    name="onnxruntime",
    label="ONNX Runtime",
    order=1,
    prepare=prepare,
    environment=environment,
    missing=missing,
    threads=threads,
    int8="int8 on integer kernels, activations quantized per batch",
)
