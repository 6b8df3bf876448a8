"""Any variant as an ONNX graph that ONNX Runtime (or any ONNX runtime) runs alone.

Interface (opset :data:`OPSET`): one input ``images``, uint8 ``(N, 32, 32, 3)``
NHWC as CIFAR-10 stores them, normalized inside the graph as the product does,
``(x / 255 − mean) / std``; one output ``logits``, float32 ``(N, 10)``.

The graph computes what :func:`lowrank_core.model.forward` computes on the
variant as stored: SAME convolutions (NCHW inside the graph), relu, 2×2 average
pools, the NHWC flatten, then each dense layer as ``MatMul`` + ``Add`` (a
factorized layer as two ``MatMul``). Dead hidden units are dropped first, as on
the product path (lossless). Floats are stored in the variant's own storage
dtype (float16 initializers are cast to float32 once, at session creation).

An int8 matrix is stored exactly as the product stores it (int8 weights, one
float32 scale per output column) and runs on integer kernels: activations are
quantized per batch (``DynamicQuantizeLinear``, uint8 with a zero point), the
product runs as ``MatMulInteger`` (int32 accumulation), and the result is scaled
back by ``x_scale · w_scale``. Activations are rounded too, so an int8 graph's
accuracy is its own figure, measured on every test image like any other.

``onnx`` is imported only here, and only when a graph is built or read.
"""

from __future__ import annotations

import numpy as np

from lowrank_core import compress, model
from lowrank_core.errors import ConfigError

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MAX_ONNX_BYTES = 512 * 2**20  # the largest .onnx read back: the float32 baseline is ≈ 85 MB
INSTALL_HINT = "install the onnx extra: pip install -e '.[onnx]' (or: pip install onnx onnxruntime)"


def _onnx():
    # Deferred: the core never needs onnx unless a graph is built or read.
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"ONNX export needs the onnx package; {INSTALL_HINT}") from None
    return onnx


class _Graph:
    """Nodes and initializers under unique names."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers, self._count = onnx, [], [], 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, stem: str, value: np.ndarray) -> str:
        """An initializer; float16 ones are cast to float32 by a node (folded at load)."""
        value = np.ascontiguousarray(value)
        name = self.name(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(value, name))
        if value.dtype == np.float16:
            return self.op("Cast", [name], to=self.onnx.TensorProto.FLOAT)
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> str | list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, names, **attributes))
        return names[0] if outputs == 1 else names


def _float(value, dtype) -> np.ndarray:
    """A float array in the storage dtype (int8 matrices and scales keep theirs)."""
    return np.asarray(value).astype(dtype)


def _convolutions(graph: _Graph, params, x: str, dtype) -> str:
    mean = graph.constant("mean", model.MEAN.reshape(1, 3, 1, 1))
    std = graph.constant("std", model.STD.reshape(1, 3, 1, 1))
    x = graph.op("Cast", [x], to=graph.onnx.TensorProto.FLOAT)
    x = graph.op("Div", [x, graph.constant("full_scale", np.array(255.0, np.float32))])
    x = graph.op("Transpose", [x], perm=[0, 3, 1, 2])  # NHWC → NCHW
    x = graph.op("Div", [graph.op("Sub", [x, mean]), std])
    for name in model.conv_layer_names(params):
        w = np.transpose(np.asarray(params[name]["w"]), (3, 2, 0, 1))  # HWIO → OIHW
        kh, kw = w.shape[2:]
        pads = [(kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2]  # SAME, as XLA pads an even kernel
        conv = graph.op(
            "Conv",
            [
                x,
                graph.constant(f"{name}_w", _float(w, dtype)),
                graph.constant(f"{name}_b", _float(params[name]["b"], dtype)),
            ],
            pads=pads,
        )
        x = graph.op("AveragePool", [graph.op("Relu", [conv])], kernel_shape=[2, 2], strides=[2, 2])
    x = graph.op("Transpose", [x], perm=[0, 2, 3, 1])  # back to NHWC: the dense stack reads that order
    return graph.op("Reshape", [x, graph.constant("flat", np.array([0, -1], np.int64))])


def _int8_matmul(graph: _Graph, x: str, q: np.ndarray, scale: np.ndarray, stem: str) -> str:
    x_q, x_scale, x_zero = graph.op("DynamicQuantizeLinear", [x], outputs=3)
    acc = graph.op("MatMulInteger", [x_q, graph.constant(f"{stem}_q", q.astype(np.int8)), x_zero])
    scales = graph.op("Mul", [x_scale, graph.constant(f"{stem}_scale", scale.astype(np.float32))])
    return graph.op("Mul", [graph.op("Cast", [acc], to=graph.onnx.TensorProto.FLOAT), scales])


def _matmul(graph: _Graph, layer, key: str, x: str, stem: str, dtype) -> str:
    if f"{key}_q" in layer:
        return _int8_matmul(graph, x, np.asarray(layer[f"{key}_q"]), np.asarray(layer[f"{key}_scale"]), stem)
    return graph.op("MatMul", [x, graph.constant(stem, _float(layer[key], dtype))])


def _dense(graph: _Graph, params, x: str, dtype, float32_layers) -> str:
    names = model.dense_layer_names(params)
    for i, name in enumerate(names):
        layer, layer_dtype = params[name], np.float32 if name in float32_layers else dtype
        if "u" in layer or "u_q" in layer:
            x = _matmul(graph, layer, "u", x, f"{name}_u", layer_dtype)
            x = _matmul(graph, layer, "v", x, f"{name}_v", layer_dtype)
        else:
            x = _matmul(graph, layer, "w", x, f"{name}_w", layer_dtype)
        x = graph.op("Add", [x, graph.constant(f"{name}_b", _float(layer["b"], layer_dtype))])
        if i < len(names) - 1:
            x = graph.op("Relu", [x])
    return x


def check_exportable(params) -> None:
    """A :class:`ConfigError` if ``params`` is not a network this format holds."""
    if not model.conv_layer_names(params) or not model.dense_layer_names(params):
        raise ConfigError("ONNX export needs convolutions 'conv2_d…' and dense layers 'linear…'")
    for name in model.dense_layer_names(params):
        if not any(k in params[name] for k in ("w", "u", "w_q", "u_q")):
            raise ConfigError(f"ONNX export cannot hold dense layer {name!r}: it has no kernel")


def to_onnx_bytes(params, storage_dtype="float32", float32_layers: tuple[str, ...] = ()) -> bytes:
    """The serialized ONNX model of a variant's stored ``params`` (checked by ``onnx.checker``)."""
    onnx = _onnx()
    check_exportable(params)
    params = compress.drop_dead_units(params)  # lossless, as on the product path
    graph = _Graph(onnx)
    x = _convolutions(graph, params, INPUT_NAME, np.dtype(storage_dtype))
    logits = _dense(graph, params, x, np.dtype(storage_dtype), set(float32_layers))
    graph.nodes.append(onnx.helper.make_node("Identity", [logits], [OUTPUT_NAME]))
    side = model.IMAGE_SIZE
    inputs = [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, ["N", side, side, 3])]
    classes = np.shape(params[model.dense_layer_names(params)[-1]]["b"])[0]
    outputs = [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", classes])]
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, "lowrank_variant", inputs, outputs, graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="lowrank-explorer",
    )
    proto.ir_version = 8  # ONNX 1.10+: what every current ONNX Runtime reads
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def read_onnx_bytes(blob: bytes, source: str = "the file"):
    """A checked ONNX model with this product's interface, or a one-line :class:`ConfigError`."""
    onnx = _onnx()
    if len(blob) > MAX_ONNX_BYTES:
        raise ConfigError(f"{source} is {len(blob):,} bytes; an exported variant is at most {MAX_ONNX_BYTES:,}")
    try:
        proto = onnx.load_model_from_string(blob)
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf and the checker raise many types for a foreign or corrupt file
        raise ConfigError(f"{source} is not a valid ONNX model ({type(exc).__name__}); export it again") from None
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [(INPUT_NAME, onnx.TensorProto.UINT8)] or outputs != [OUTPUT_NAME]:
        raise ConfigError(
            f"{source} is an ONNX model of another interface (wants uint8 '{INPUT_NAME}' → "
            f"'{OUTPUT_NAME}'); export the variant with this tool"
        )
    return proto
