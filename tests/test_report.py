"""Labels, tables and headlines built from result records (no engine needed)."""

import csv
import io

from lowrank_core import methods, report
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods.prune import PruneConfig
from lowrank_core.methods.svd import SvdConfig, headlines as svd_headlines


def record(
    variant: methods.Variant, accuracy: float, latency_ms: float | None = None, batch: int = 1000, n_bytes: int = 100
) -> dict:
    out = {
        **variant.to_dict(),
        "method": variant.name,
        "config": methods.config_dict(variant.steps[0][1]) if len(variant.steps) == 1 else {},
        "accuracy": accuracy,
        "n_test": 10_000,
        "params": 10,
        "macs": 10,
        "bytes": n_bytes,
    }
    if latency_ms is not None:
        out.update(latency_ms=latency_ms, batch_size=batch, latency={str(batch): {"iqr_ms": 1.0}})
    return out


def svd(f: float, form: str = "factorized", include_output: bool = True, **kw) -> methods.Variant:
    return methods.Variant.of("svd", SvdConfig(f, form, include_output=include_output), **kw)


def test_labels_name_every_step_and_never_collide():
    pipeline = methods.Variant(
        (
            ("prune", PruneConfig(0.5, structured=True)),
            ("svd", SvdConfig(0.2, "factorized")),
            ("quantize", methods.REGISTRY["quantize"].config_type()),
        ),
        FinetuneConfig(300),
    )
    assert (
        report.describe(record(pipeline, 0.5))
        == "prune 50% structured one-shot → SVD factorized f=0.2 → int8, fine-tuned 300 steps (distilled)"
    )
    assert report.method_label("svd+quantize") == "Low-rank (SVD) + Int8 storage"
    results = [record(svd(0.5), 0.8), record(svd(0.5), 0.8), record(svd(0.5, include_output=False), 0.8)]
    labels = report.unique_labels(results)
    assert len(labels) == 3 and list(labels.values()) == results
    assert "SVD factorized f=0.5 (#2)" in labels and "SVD factorized f=0.5, output kept" in labels


def test_pareto_mask():
    assert list(report.pareto_mask([1, 2, 3, 2], [0.5, 0.7, 0.6, 0.7])) == [True, True, False, True]


def test_headlines_use_only_comparable_measured_points():
    base = {"accuracy": 0.81, "latency_ms": 400.0, "batch_size": 1000}
    results = [
        record(svd(0.1), 0.2, 100),
        record(svd(0.25), 0.36, 200),
        record(svd(0.5), 0.69, 420),
        # output kept: a different curve, never mixed into the one above
        record(svd(0.9, include_output=False), 0.81, 300),
        record(svd(0.05, include_output=False), 0.80, 50),
        # another batch size, fine-tuned and per-layer results: not on these curves
        record(svd(0.75), 0.8, 10, batch=40),
        record(svd(0.8, finetune=FinetuneConfig(5)), 0.8, 10),
    ]
    lines = svd_headlines(results, base)
    assert len(lines) == 2
    truncated = next(line for line in lines if "truncated too" in line)
    kept = next(line for line in lines if "output layer kept" in line)
    assert "3 measured fractions 0.1, 0.25, 0.5" in truncated and "the largest is f = 0.25" in truncated
    assert "2 measured fractions 0.05, 0.9" in kept and "the largest is f = 0.9" in kept
    assert "≤" not in " ".join(lines)  # nothing claimed between or beyond measured points
    # Order of the records does not change the answer.
    assert svd_headlines(list(reversed(results)), base) == lines
    assert svd_headlines(results[:1], base) == []


def test_csv_has_one_row_per_result_with_its_steps():
    results = [record(svd(0.5), 0.7, 100), record(methods.Variant.of("baseline"), 0.81, 400)]
    rows = list(csv.DictReader(io.StringIO(report.to_csv(results))))
    assert [r["variant"] for r in rows] == ["SVD factorized f=0.5", "Baseline"]
    assert rows[0]["latency_ms"] == "100" and '"rank_fraction": 0.5' in rows[0]["steps"]


def test_best_within_answers_only_from_measured_points_on_the_same_test_set():
    base = {"accuracy": 0.80, "n_test": 10_000, "params": 1000, "bytes": 2000, "latency_ms": 10.0, "batch_size": 1000}
    small = dict(record(svd(0.05, include_output=False), 0.795, 5.0, n_bytes=300), params=100)
    tiny_but_bad = dict(record(svd(0.01), 0.70, 1.0, n_bytes=50), params=10)
    other_set = dict(record(svd(0.02), 0.80, 1.0, n_bytes=40), params=5, n_test=40)
    best = report.best_within([small, tiny_but_bad, other_set, record(methods.Variant.of("baseline"), 0.8)], base)
    assert best["params"] is small and best["bytes"] is small and best["latency"] is small
    assert report.best_within([tiny_but_bad], base) == {}


def test_additivity_pairs_single_drops_with_the_measured_drop():
    rows = [{"layer": n, "fraction": 0.1, "accuracy": a} for n, a in (("linear", 0.79), ("linear_1", 0.78))]
    table = report.additivity(rows, 0.80, {0.1: 0.75, 0.2: 0.7}, ["linear", "linear_1"])
    assert len(table) == 1 and table[0]["fraction"] == 0.1
    assert abs(table[0]["sum_of_single_drops"] - 0.03) < 1e-9 and abs(table[0]["measured_drop"] - 0.05) < 1e-9


def test_the_csv_has_every_runtimes_columns_even_when_the_first_record_lacks_them():
    import csv
    import io

    from lowrank_core import report

    plain = {"method": "baseline", "accuracy": 0.8, "n_test": 10, "params": 1, "macs": 1, "bytes": 1}
    measured = dict(plain, method="svd", runtimes={"onnxruntime": {"accuracy": 0.7, "latency_ms": 3.0}})
    rows = list(csv.DictReader(io.StringIO(report.to_csv([plain, measured]))))
    assert rows[0]["onnxruntime_accuracy"] == "" and rows[1]["onnxruntime_accuracy"] == "0.7"
    assert rows[1]["onnxruntime_latency_ms"] == "3.0"
