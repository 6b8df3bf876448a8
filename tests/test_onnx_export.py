"""ONNX export and ONNX Runtime as a measured runtime: every kind of variant as a
graph that onnxruntime runs alone, with the product path's predictions."""

import subprocess
import sys

import numpy as np
import pytest

from lowrank_core import checkpoint, data as data_lib, engine, methods, onnx_export, runtimes
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods.prune import PruneConfig
from lowrank_core.methods.remove import RemoveConfig
from lowrank_core.methods.svd import SvdConfig

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

VARIANTS = {
    "baseline": methods.Variant.of("baseline"),
    "factorized": methods.Variant.of("svd", SvdConfig(0.3, "factorized")),
    "reconstructed": methods.Variant.of("svd", SvdConfig(0.3, "reconstructed", include_output=False)),
    "structured": methods.Variant.of("prune", PruneConfig(sparsity=0.5, structured=True)),
    "unstructured": methods.Variant.of("prune", PruneConfig(sparsity=0.7)),
    "removed": methods.Variant.of("remove", RemoveConfig(layers=("linear_1",), retrain_steps=2)),
    "dead units": methods.Variant.of("dead_units"),
    "pipeline": methods.Variant(
        (("prune", PruneConfig(sparsity=0.3, structured=True)), ("svd", SvdConfig(0.5, "factorized")))
    ),
}


@pytest.fixture
def tiny_engine(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    return engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")


def _ort_logits(blob: bytes, images: np.ndarray) -> np.ndarray:
    # Plain onnxruntime, as a user runs the file: no project code.
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_every_kind_of_variant_exports_and_predicts_like_the_product(tiny_engine, kind):
    record = tiny_engine.evaluate(VARIANTS[kind], with_latency=False)
    blob = tiny_engine.variant_onnx(record)
    proto = onnx.load_model_from_string(blob)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.opset_import[0].version == onnx_export.OPSET
    images = tiny_engine.data.x_test
    logits = _ort_logits(blob, images)
    assert logits.shape == (images.shape[0], 10) and logits.dtype == np.float32
    product = tiny_engine.predictions(record)
    assert np.array_equal(np.argmax(logits, axis=-1), product)
    assert float(np.mean(np.argmax(logits, axis=-1) == tiny_engine.data.y_test)) == record["accuracy"]


def test_factorized_layers_are_two_matmuls_and_dead_units_are_gone(tiny_engine):
    record = tiny_engine.evaluate(VARIANTS["factorized"], with_latency=False)
    proto = onnx.load_model_from_string(tiny_engine.variant_onnx(record))
    stored = tiny_engine.stored_variant(record).params
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    ranks = record["facts"]["ranks"]
    u_shapes = sorted(w.shape[1] for name, w in weights.items() if name.startswith("linear") and "_u_" in name)
    assert u_shapes == sorted(ranks.values())
    assert sum(n.op_type == "MatMul" for n in proto.graph.node) == 2 * len(ranks)
    assert stored["linear"]["u"].shape[1] == ranks["linear"]


def test_an_int8_variant_holds_exactly_the_stored_int8_weights_and_runs_integer_kernels(tiny_engine):
    variant = methods.Variant(
        (
            ("svd", SvdConfig(0.5, "factorized", include_output=False)),
            ("quantize", methods.get("quantize").config_type()),
        )
    )
    record = tiny_engine.evaluate(variant, with_latency=False)
    proto = onnx.load_model_from_string(tiny_engine.variant_onnx(record))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == ops.count("DynamicQuantizeLinear") > 0 and "MatMul" not in ops
    weights = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer]
    int8 = [w for w in weights if w.dtype == np.int8]
    stored = checkpoint.variant_from_npz_bytes(tiny_engine.variant_npz(record))
    slim = onnx_export.compress.drop_dead_units(stored)  # the graph drops dead units, as the product path does
    expected = [np.asarray(layer[k]) for layer in slim.values() for k in layer if k.endswith("_q")]
    assert sorted(w.tobytes() for w in int8) == sorted(w.tobytes() for w in expected)
    scales = [w for w in weights if w.dtype == np.float32 and w.ndim == 1]
    for layer in slim.values():
        for key in (k for k in layer if k.endswith("_scale")):
            assert any(s.shape == layer[key].shape and np.array_equal(s, layer[key]) for s in scales)
    # Activations are rounded too: the runtime's accuracy is its own figure, close to the product's.
    logits = _ort_logits(proto.SerializeToString(), tiny_engine.data.x_test)
    assert np.mean(np.argmax(logits, -1) == tiny_engine.predictions(record)) > 0.8


def test_the_runtime_record_keeps_each_runtimes_accuracy_and_latency(tiny_engine):
    variant = VARIANTS["factorized"]
    record = tiny_engine.evaluate(variant, runtimes=("onnxruntime",))
    entry = record["runtimes"]["onnxruntime"]
    assert entry["accuracy"] == record["accuracy"] and entry["n_test"] == record["n_test"]
    for batch in ("1", str(entry["batch_size"])):
        stats = entry["latency"][batch]
        assert stats["median_ms"] > 0 and stats["iqr_ms"] >= 0 and stats["repeats"] == 7 and stats["setup_s"] > 0
    assert entry["measured_on"]["backend"] == "onnxruntime" and entry["threads"] >= 1
    calls = []
    real = tiny_engine.build
    tiny_engine.build = lambda *a, **k: calls.append(a) or real(*a, **k)
    assert tiny_engine.evaluate(variant, runtimes=("onnxruntime",)) == record and not calls  # cached, both runtimes


def test_a_runtime_measured_elsewhere_is_listed_apart(tiny_engine):
    record = tiny_engine.evaluate(VARIANTS["baseline"], runtimes=("onnxruntime",))
    key = methods.result_key(tiny_engine.checkpoint_hash, VARIANTS["baseline"])
    moved = dict(record["runtimes"]["onnxruntime"], measured_on={"fingerprint": "another machine"})
    tiny_engine.store.put(key, {**record, "runtimes": {"onnxruntime": moved}})
    listed = next(r for r in tiny_engine.cached_results() if r["method"] == "baseline")["runtimes"]["onnxruntime"]
    assert "latency" not in listed and listed["latency_elsewhere"]["measured_on"]["fingerprint"] == "another machine"
    again = tiny_engine.evaluate(VARIANTS["baseline"], runtimes=("onnxruntime",))
    assert again["runtimes"]["onnxruntime"]["measured_on"] == runtimes.get("onnxruntime").environment()


def test_runtimes_form_a_registry_with_the_product_first():
    assert runtimes.PRODUCT == "jax" and list(runtimes.REGISTRY) == ["jax", "onnxruntime"]
    assert set(runtimes.available()) == {"jax", "onnxruntime"}
    with pytest.raises(ConfigError, match="unknown runtime"):
        runtimes.get("tvm")


def test_a_corrupt_or_foreign_onnx_file_is_one_clear_error():
    with pytest.raises(ConfigError, match="not a valid ONNX model"):
        onnx_export.read_onnx_bytes(b"\x08\x07garbage" * 10)
    foreign = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "foreign",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    with pytest.raises(ConfigError, match="another interface"):
        onnx_export.read_onnx_bytes(foreign.SerializeToString())


def test_the_readme_snippet_runs_an_exported_file_with_onnxruntime_alone(tiny_engine, tmp_path):
    record = tiny_engine.evaluate(VARIANTS["factorized"], with_latency=False)
    path = tmp_path / "variant.onnx"
    path.write_bytes(tiny_engine.variant_onnx(record))
    readme = (onnx_export.__file__.rsplit("/lowrank_core/", 1)[0]) + "/README.md"
    text = open(readme, encoding="utf-8").read()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "lowrank" not in snippet  # onnxruntime and numpy only
    images = tiny_engine.data.x_test[:8]
    np.save(tmp_path / "images.npy", images)
    script = snippet.replace("variant.onnx", str(path)) + "\nprint(predictions.tolist())\n"
    prelude = f"import numpy as np\nimages = np.load({str(tmp_path / 'images.npy')!r})\n"
    out = subprocess.run([sys.executable, "-c", prelude + script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tiny_engine.predictions(record)[:8].tolist())


def test_a_fine_tuned_variant_exports_its_trained_factors(tiny_engine):
    variant = methods.Variant((("svd", SvdConfig(0.3, "factorized")),), FinetuneConfig(steps=3))
    record = tiny_engine.evaluate(variant, with_latency=False)
    logits = _ort_logits(tiny_engine.variant_onnx(record), tiny_engine.data.x_test)
    assert np.array_equal(np.argmax(logits, -1), tiny_engine.predictions(record))
