import numpy as np
import pytest

from lowrank_core import advisor, compress, data as data_lib, engine, methods, sensitivity
from lowrank_core.errors import ConfigError


@pytest.fixture
def tiny_engine(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    return engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")


def test_plans_are_a_pareto_front_of_rank_choices():
    rows = [
        {"layer": "a", "rank": 1, "accuracy": 0.5},
        {"layer": "a", "rank": 4, "accuracy": 0.9},
        {"layer": "b", "rank": 2, "accuracy": 0.8},
    ]
    front = advisor.plans(rows, {"a": (10, 10), "b": (10, 10)}, base_accuracy=0.9)
    drops = [p.predicted_drop for p in front]
    costs = [p.cost for p in front]
    assert drops == sorted(drops) and costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    # No predicted drop: a at rank 4 (no loss, 80 weights instead of 100), b dense.
    assert front[0].ranks == (("a", 4), ("b", None)) and front[0].cost == 180 and front[0].predicted_drop == 0
    assert front[-1].ranks == (("a", 1), ("b", 2))  # cheapest: 1·20 + 2·20 weights
    assert front[-1].predicted_drop == pytest.approx(0.4 + 0.1)


def test_pipeline_leaves_dense_a_layer_its_rank_no_longer_shrinks(tiny_engine):
    params = tiny_engine.params
    plan = advisor.Plan((("linear", 20), ("linear_1", 2), ("linear_2", None)), 0.0, 0)
    variant = advisor.pipeline_variant(params, plan, 0.7)
    assert [name for name, _ in variant.steps] == ["prune", "svd"]
    config = variant.steps[0][1]
    pruned = compress.prune_structured(params, config.layers_of(params), config.sparsity)
    svd = variant.steps[1][1]
    for layer, rank in svd.layer_ranks:
        m, n = pruned[layer]["w"].shape
        assert rank * (m + n) < m * n
    assert advisor.pipeline_variant(params, advisor.Plan((("linear_2", None),), 0.0, 0), 0.0) is None
    with pytest.raises(ConfigError, match="svd"):
        advisor.AdvisorConfig(methods=("prune",))


def test_the_answer_is_the_cheapest_measured_candidate_within_the_drop(tiny_engine):
    config = advisor.AdvisorConfig(max_drop=30.0, max_measurements=4)
    shares = []
    answer = advisor.smallest_within(tiny_engine, config, lambda text, share: shares.append(share))
    assert shares == sorted(shares) and shares[-1] == 1.0  # the progress bar only moves forward
    search = answer["advisor"]
    assert search["found"] and search["pipelines"]  # structured pruning before the SVD was tried
    # … on every basis's best ranks, in that basis (the data bases calibrate the units kept).
    assert {p["basis"] for p in search["pipelines"]} == {b for b, best in search["best_by_basis"].items() if best}
    base = tiny_engine.evaluate("baseline", with_latency=False)
    measured = search["candidates"] + search["pipelines"]
    within = [c for c in measured if c["drop_points"] <= 30.0 + 1e-9]
    assert answer["params"] == min(c["params"] for c in within)
    assert 100 * (base["accuracy"] - answer["accuracy"]) <= 30.0 + 1e-9
    # Every figure is a measured record: rebuilt from its steps, the same accuracy and size.
    rebuilt = tiny_engine.evaluate(methods.Variant.from_dict(answer), with_latency=False, use_cache=False)
    assert rebuilt["accuracy"] == answer["accuracy"] and rebuilt["params"] == answer["params"]
    predictions = tiny_engine.predictions(answer)
    assert float(np.mean(predictions == tiny_engine.data.y_test)) == answer["accuracy"]
    assert search["with_int8"]["label"].endswith("int8")  # measured too (on a network this small, the
    # float32 scales can outweigh what int8 saves: it is reported, not assumed smaller)


def test_anchored_rows_interpolate_and_never_extrapolate_past_the_largest_measured_error():
    spectrum = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    anchors = [{"layer": "a", "rank": 2, "accuracy": 0.80}, {"layer": "a", "rank": 4, "accuracy": 0.89}]
    fractions = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0)  # ranks 1 … 6 of a 6×6 layer
    energy = {"a": np.square(spectrum)}
    rows = advisor.anchored_rows(anchors, energy, {"a": (6, 6)}, fractions, base_accuracy=0.9)
    by_rank = {r["rank"]: 0.9 - r["accuracy"] for r in rows}
    assert 1 not in by_rank  # more error than any anchor measured: no prediction
    assert by_rank[2] == pytest.approx(0.10) and by_rank[4] == pytest.approx(0.01)  # the anchors themselves
    assert 0.01 < by_rank[3] < 0.10  # between them
    assert 0 <= by_rank[6] < by_rank[5] < 0.01  # less error than any anchor: scaled down


@pytest.mark.parametrize("basis", ["weights", "activations"])
def test_predicted_output_errors_are_each_bases_truncation_error_on_the_calibration_inputs(tiny_engine, basis):
    inter = tiny_engine.intermediates
    energies = inter.output_energies(basis)
    for name in ("linear", "linear_2"):
        w = np.asarray(tiny_engine.params[name]["w"], np.float64)
        factor = inter.input_factor(name).astype(np.float64)
        svd = (
            inter.layer_svds()[name] if basis == "weights" else inter.whitened_svd(name, tiny_engine.params[name]["w"])
        )
        for k in (1, 3, 8):
            u, s, vt = (np.asarray(a, np.float64) for a in (svd.u[:, :k], svd.s[:k], svd.vt[:k]))
            w_k = u * s @ vt if basis == "weights" else np.linalg.solve(factor.T, u * s @ vt)
            want = np.sum((factor.T @ (w - w_k)) ** 2) / np.sum((factor.T @ w) ** 2)  # ‖X(W − W_k)‖² / ‖XW‖²
            assert advisor.predicted_errors(energies[name], [k])[0] == pytest.approx(want, rel=1e-3, abs=1e-7)


def test_anchors_are_read_from_a_cached_full_table(tiny_engine, monkeypatch):
    full = tiny_engine.svd_sensitivity()  # what the Sensitivity page computes
    monkeypatch.setattr(sensitivity, "svd_sensitivity", lambda *a, **k: pytest.fail("a cell was measured again"))
    anchors = tiny_engine.svd_sensitivity(advisor.ANCHOR_FRACTIONS)
    assert anchors == [r for r in full if r["fraction"] in advisor.ANCHOR_FRACTIONS]
    assert {r["fraction"] for r in anchors} == set(advisor.ANCHOR_FRACTIONS)
