"""The engine: results measured as stored, cached by content, and every fix of
the "every number true" round, on a tiny checkpoint (fast) and the shipped
baseline (real)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from lowrank_core import (
    checkpoint,
    compress,
    configs,
    data as data_lib,
    engine,
    intermediates,
    measure,
    methods,
    model,
    paths,
    train,
)
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods.prune import PruneConfig
from lowrank_core.methods.quantize import QuantizeConfig
from lowrank_core.methods.svd import SvdConfig


@pytest.fixture
def tiny_engine(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    return engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")


def _counting(eng):
    calls = []
    real_build = eng.build

    def build(*args, **kwargs):
        calls.append(args[0])
        return real_build(*args, **kwargs)

    eng.build = build
    return calls


def _load_npz(blob: bytes) -> dict:
    return checkpoint.variant_from_npz_bytes(blob)


def test_cache_hits_build_nothing_and_tampered_entries_are_rebuilt(tiny_engine):
    calls = _counting(tiny_engine)
    variant = methods.Variant.of("svd", SvdConfig(0.3, "factorized"))
    fresh = tiny_engine.evaluate(variant, with_latency=False)
    assert len(calls) == 1
    assert tiny_engine.evaluate(variant, with_latency=False) == fresh and len(calls) == 1  # a hit: nothing built
    path = tiny_engine.store.path(methods.result_key(tiny_engine.checkpoint_hash, variant))
    stored = json.loads(path.read_text())
    stored["payload"]["accuracy"] = 0.999  # tampered: its hash no longer matches
    path.write_text(json.dumps(stored))
    again = tiny_engine.evaluate(variant, with_latency=False)
    assert len(calls) == 2 and again["accuracy"] == fresh["accuracy"]
    path.write_text("{truncated")
    assert tiny_engine.evaluate(variant, with_latency=False)["accuracy"] == fresh["accuracy"] and len(calls) == 3


def test_result_key_tracks_what_changes_the_result_and_nothing_else(tiny_engine, monkeypatch):
    key = methods.result_key
    h = tiny_engine.checkpoint_hash
    base = methods.Variant.of("prune", PruneConfig(0.5, structured=True))
    assert key(h, base) == key(h, methods.Variant.of("prune", PruneConfig(0.5, scope="global", structured=True)))
    assert key(h, base) != key(h, methods.Variant.of("prune", PruneConfig(0.6, structured=True)))
    assert key(h, base) != key("another-checkpoint", base)
    assert key(h, base) != key(h, methods.Variant.of("prune", PruneConfig(0.5, structured=True), FinetuneConfig(10)))
    assert key(h, base) == key(h, methods.Variant.of("prune", PruneConfig(0.5, structured=True), FinetuneConfig(0)))
    pipeline = methods.Variant((("prune", PruneConfig(0.5, structured=True)), ("quantize", QuantizeConfig())))
    assert key(h, pipeline) != key(h, base)
    # A step named by its config type is the same step.
    assert methods.Variant.chain(PruneConfig(0.5, structured=True), QuantizeConfig()) == pipeline
    with pytest.raises(ConfigError, match="no method takes a FinetuneConfig"):
        methods.name_of(FinetuneConfig)
    before = key(h, base)
    monkeypatch.setitem(methods.REGISTRY, "prune", dataclasses.replace(methods.REGISTRY["prune"], version=99))
    assert key(h, base) != before  # a new method version never trusts old results


@pytest.mark.parametrize("form", ["factorized", "reconstructed"])
def test_fine_tuned_svd_keeps_each_layer_at_its_rank(tiny_engine, form):
    config = SvdConfig(0.25, form)
    plain, facts = tiny_engine.build("svd", config)
    tuned, tuned_facts = tiny_engine.build("svd", config, FinetuneConfig(steps=30, batch_size=32))
    assert tuned_facts["ranks"] == facts["ranks"]
    for name, k in facts["ranks"].items():
        if form == "factorized":
            assert tuned[name]["u"].shape[1] == k and tuned[name]["v"].shape[0] == k
            w = tuned[name]["u"].astype(np.float64) @ tuned[name]["v"]
        else:
            w = tuned[name]["w"]  # stored in float32: numpy's rank tolerance is float32's
            assert w.dtype == np.float32 and name in tuned_facts["float32_layers"]
        assert np.linalg.matrix_rank(w) <= k, name
    assert not np.array_equal(tuned["linear"].get("b"), plain["linear"].get("b"))  # it did train


def test_fine_tuning_ends_on_the_int8_grid_and_keeps_pruned_zeros(tiny_engine):
    tuned, facts = tiny_engine.build(
        methods.Variant((("svd", SvdConfig(0.5, "factorized")), ("quantize", QuantizeConfig())), FinetuneConfig(20))
    )
    untuned, _ = tiny_engine.build(
        methods.Variant((("svd", SvdConfig(0.5, "factorized")), ("quantize", QuantizeConfig())))
    )
    for name in facts["int8_layers"]:
        layer = tuned[name]
        assert set(layer) == {"u_q", "u_scale", "v_q", "v_scale", "b"}
        assert layer["u_q"].dtype == np.int8 and np.abs(layer["u_q"]).max() <= 127
    assert not np.array_equal(tuned["linear"]["u_q"], untuned["linear"]["u_q"])  # trained, then on the grid again
    exported = _load_npz(
        tiny_engine.variant_npz(
            tiny_engine.evaluate(
                methods.Variant(
                    (("svd", SvdConfig(0.5, "factorized")), ("quantize", QuantizeConfig())), FinetuneConfig(20)
                ),
                with_latency=False,
            )
        )
    )
    assert exported["linear"]["u_q"].dtype == np.int8
    np.testing.assert_array_equal(exported["linear"]["u_q"], tuned["linear"]["u_q"])

    pruned, _ = tiny_engine.build("prune", PruneConfig(0.7))
    pruned_tuned, _ = tiny_engine.build("prune", PruneConfig(0.7), FinetuneConfig(20))
    for name in ("linear", "linear_1", "linear_4"):
        zeros = pruned[name]["w"] == 0
        assert np.all(pruned_tuned[name]["w"][zeros] == 0)
        assert not np.array_equal(pruned_tuned[name]["w"], pruned[name]["w"])


def test_exported_variant_is_the_measured_one(tiny_engine):
    for variant in (
        methods.Variant.of("baseline"),
        methods.Variant.of("quantize"),
        methods.Variant.of("svd", SvdConfig(0.3, "reconstructed")),
        methods.Variant((("prune", PruneConfig(0.5, structured=True)), ("svd", SvdConfig(0.5, "factorized")))),
    ):
        result = tiny_engine.evaluate(variant, with_latency=False)
        blob = tiny_engine.variant_npz(result)
        assert len(blob) == result["bytes"], variant.name
        params = _load_npz(blob)
        predictions = measure.predict_full(params, tiny_engine.data.x_test)
        assert float(np.mean(predictions == tiny_engine.data.y_test)) == result["accuracy"], variant.name
        assert measure.count_params(params) == result["params"]


def test_global_gradual_pruning_uses_one_threshold_over_all_kernels(tiny_engine):
    result = tiny_engine.evaluate(
        "prune", PruneConfig(0.6, scope="global", schedule="gradual", gradual_steps=8), with_latency=False
    )
    params, _ = tiny_engine.build(methods.Variant.from_dict(result))
    kernels = [params[n]["w"] for n in result["facts"]["sparsity"]]
    zeros = sum(int(np.sum(k == 0)) for k in kernels)
    total = sum(k.size for k in kernels)
    # Exactly the global count over convolutions and dense kernels together (the
    # frozen convolutions take part in the threshold, so their share is theirs, not 60 %).
    assert zeros == round(0.6 * total)
    conv = [result["facts"]["sparsity"][n] for n in ("conv2_d", "conv2_d_1")]
    assert all(0 < s < 1 for s in conv) and conv != [pytest.approx(0.6)] * 2


def test_init_spectrum_rebuilds_the_init_the_checkpoint_names(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    data = data_lib.load_cifar10(archive)
    whitened = tmp_path / "whitened_ck"
    shutil.copytree(ck, whitened)
    metadata = json.loads((whitened / "metadata.json").read_text())
    metadata["config"]["init"] = "whitened"
    (whitened / "metadata.json").write_text(json.dumps(metadata))
    got = engine.Engine(whitened, data, cache_root=tmp_path / "c").init_singular_values()
    config = configs.TrainConfig.from_dict(metadata["config"])
    expected = train.initial_params(config, data)
    np.testing.assert_allclose(
        got["linear_1"], np.linalg.svd(np.asarray(expected["linear_1"]["w"], np.float64), compute_uv=False), rtol=1e-5
    )
    haiku = engine.Engine(ck, data, cache_root=tmp_path / "d").init_singular_values()
    assert not np.allclose(got["linear_1"], haiku["linear_1"])


def test_latency_records_the_batch_timed_and_where(tiny_engine):
    result = tiny_engine.evaluate("baseline", with_latency=True)
    n = tiny_engine.data.x_test.shape[0]
    assert n < 1000 and result["batch_size"] == n and set(result["latency"]) == {"1", str(n)}
    assert result["measured_on"]["fingerprint"] == measure.environment()["fingerprint"]
    # A record timed on another machine: its latency is never shown as this machine's.
    key = methods.result_key(tiny_engine.checkpoint_hash, methods.Variant.of("baseline"))
    path = tiny_engine.store.path(key)
    stored = json.loads(path.read_text())
    stored["payload"]["measured_on"] = dict(stored["payload"]["measured_on"], fingerprint="elsewhere", cpu="other")
    from lowrank_core.store import payload_hash

    stored["sha256"] = payload_hash(stored["payload"])
    path.write_text(json.dumps(stored))
    listed = [r for r in tiny_engine.cached_results() if r["method"] == "baseline"][0]
    assert "latency_ms" not in listed and listed["latency_elsewhere"]["measured_on"]["cpu"] == "other"
    assert tiny_engine.cached_result("baseline", with_latency=True) is None
    again = tiny_engine.evaluate("baseline", with_latency=True)  # re-measured here
    assert again["measured_on"]["fingerprint"] == measure.environment()["fingerprint"]
    assert again["accuracy"] == result["accuracy"]


def test_clear_results_forgets_everything(tiny_engine):
    tiny_engine.evaluate("baseline", with_latency=False)
    tiny_engine.evaluate("quantize", with_latency=False)
    assert len(tiny_engine.cached_results()) == 2
    assert tiny_engine.clear_results() == 2
    assert tiny_engine.cached_results() == [] and tiny_engine.cached_result("quantize") is None


def test_engine_is_keyed_by_the_bytes_it_loaded(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    data = data_lib.load_cifar10(archive)
    folder = tmp_path / "ck"
    shutil.copytree(ck, folder)
    first = engine.Engine(folder, data, cache_root=tmp_path / "c")
    params, metadata = checkpoint.load(folder)
    params["linear"]["b"] = params["linear"]["b"] + 1.0
    checkpoint.save(folder, params, metadata, dtype="float16")  # a retrain into the same folder
    second = engine.Engine(folder, data, cache_root=tmp_path / "c")
    assert second.checkpoint_hash != first.checkpoint_hash


# ---- the shipped baseline on real CIFAR-10 ----


@pytest.fixture(scope="module")
def real_engine(shared_archive, tmp_path_factory):
    return engine.Engine(
        paths.BASELINE_DIR, data_lib.load_cifar10(shared_archive), cache_root=tmp_path_factory.mktemp("cache")
    )


def test_baseline_stored_size_is_its_file(real_engine):
    base = real_engine.evaluate("baseline", with_latency=False)
    on_disk = (paths.BASELINE_DIR / checkpoint.PARAMS_FILE).stat().st_size
    assert abs(base["bytes"] - on_disk) <= 4096 and base["storage_dtype"] == "float16"
    assert base["n_test"] == 10_000 and base["params"] == 21_257_026
    int8 = real_engine.evaluate("quantize", with_latency=False)
    assert int8["bytes"] < 0.55 * base["bytes"] and int8["accuracy"] > 0.8


def test_full_rank_svd_and_dead_units_keep_baseline_accuracy(real_engine):
    base = real_engine.evaluate("baseline", with_latency=False)
    # Two layers (their SVDs are shared with the sensitivity test; the others take a minute).
    full = real_engine.evaluate("svd", SvdConfig(1.0, "factorized", only=("linear_1", "linear_4")), with_latency=False)
    assert abs(full["accuracy"] - base["accuracy"]) <= 0.002
    slim = real_engine.evaluate("dead_units", with_latency=False)
    assert slim["accuracy"] == base["accuracy"] and slim["params"] < 0.6 * base["params"]


def test_sensitivity_shows_the_output_layer_is_fragile(real_engine):
    rows = real_engine.sensitivity("svd", [0.1, 1.0], layers=("linear_1", "linear_4"))
    base = real_engine.evaluate("baseline", with_latency=False)["accuracy"]
    by = {(r["layer"], r["value"]): r["accuracy"] for r in rows}
    assert abs(by[("linear_4", 1.0)] - base) <= 0.002 and by[("linear_4", 0.1)] < base - 0.2
    assert by[("linear_1", 0.1)] > base - 0.01  # a hidden layer at 10 % of its rank barely moves


def test_fast_svd_sensitivity_equals_measuring_each_cell(tiny_engine):
    fractions = (0.05, 0.25, 1.0)
    rows = tiny_engine.svd_sensitivity(fractions)
    assert len(rows) == 5 * len(fractions)
    n = tiny_engine.data.y_test.shape[0]
    for row in rows:
        measured = tiny_engine.evaluate("svd", SvdConfig(row["fraction"], only=(row["layer"],)), with_latency=False)
        assert measured["facts"]["ranks"][row["layer"]] == row["rank"]
        assert abs(measured["accuracy"] - row["accuracy"]) <= 1 / n + 1e-12, row  # float summation order only
    calls = _counting(tiny_engine)
    assert tiny_engine.svd_sensitivity(fractions) == rows and not calls  # cached
    assert [r["value"] for r in tiny_engine.sensitivity("svd", list(fractions), layers=("linear_4",))] == [
        0.05,
        0.25,
        1.0,
    ]


def test_activation_basis_minimizes_the_output_error_on_calibration_data(tiny_engine):
    # W_k from LᵀW is the rank-k matrix closest to W in ‖X(W − W_k)‖ over the calibration inputs X:
    # never worse there than the plain truncation of W.
    name, k = "linear_1", 6
    x = measure.conv_features(
        tiny_engine.params, tiny_engine.data.x_train[tiny_engine.intermediates.calibration_indices()]
    )
    x = np.maximum(x @ tiny_engine.params["linear"]["w"] + tiny_engine.params["linear"]["b"], 0.0)
    w = tiny_engine.params[name]["w"].astype(np.float64)
    errors = {}
    for basis in ("weights", "activations"):
        params, facts = tiny_engine.build(
            "svd", SvdConfig(layer_ranks=((name, k),), only=(name,), form="factorized", basis=basis)
        )
        assert facts["ranks"] == {name: k} and params[name]["u"].shape[1] == k
        w_k = params[name]["u"].astype(np.float64) @ params[name]["v"]
        errors[basis] = np.linalg.norm(x @ (w - w_k))
    assert errors["activations"] <= errors["weights"] * 1.001
    rows = tiny_engine.svd_sensitivity((0.1, 1.0), basis="activations")
    measured = tiny_engine.evaluate("svd", SvdConfig(0.1, only=("linear",), basis="activations"), with_latency=False)
    cell = next(r for r in rows if r["layer"] == "linear" and r["fraction"] == 0.1)
    assert abs(cell["accuracy"] - measured["accuracy"]) <= 1 / tiny_engine.data.y_test.shape[0] + 1e-12
    assert "activation basis" in measured["label"]


def test_warm_up_runs_once_in_the_background(tiny_engine, monkeypatch):
    thread = tiny_engine.warm_up()
    assert tiny_engine.warm_up() is thread  # idempotent
    thread.join(timeout=120)
    assert {"features", "baseline", "hidden", "svds", "init_spectra"} <= tiny_engine.warmed
    assert tiny_engine.intermediates.hidden_activations()._outputs is not None  # a pruning move starts from them
    calls = _counting(tiny_engine)
    tiny_engine.evaluate("baseline", with_latency=False)
    assert not calls  # the baseline was measured by the warm-up
    from lowrank_core import compress

    def no_svd(w):
        raise AssertionError("an SVD computed again after the warm-up")

    monkeypatch.setattr(compress, "layer_svd", no_svd)
    monkeypatch.setattr(compress, "singular_values", no_svd)
    assert len(tiny_engine.intermediates.layer_svds()) == len(tiny_engine.spec.dense_layers)
    assert tiny_engine.init_singular_values()  # both served from the warm-up's results


def test_data_spectrum_is_that_of_the_whitened_weights(tiny_engine, monkeypatch):
    seen = tiny_engine.data_spectra()
    factor = tiny_engine.intermediates.input_factor("linear_2")
    whitened = factor.T @ np.asarray(
        tiny_engine.params["linear_2"]["w"], np.float32
    )  # what the activation basis truncates
    expected = np.linalg.svd(whitened.astype(np.float64), compute_uv=False)  # LAPACK, independently of the Gram route
    np.testing.assert_allclose(seen["linear_2"]["curves"]["singular_values"], expected, rtol=1e-6)
    # They come from the very SVD the activation basis truncates: that one needs computing no more.
    computed = []
    real_svd = compress.layer_svd
    monkeypatch.setattr(compress, "layer_svd", lambda matrix: computed.append(1) or real_svd(matrix))
    tiny_engine.intermediates.svd_of(whitened)
    assert computed == []
    # L Lᵀ is the inputs' Gram matrix on the calibration images (training images, never test images).
    assert tiny_engine.intermediates.calibration_indices().max() < tiny_engine.data.x_train.shape[0]


def test_a_data_basis_build_forms_each_layers_whitened_matrix_once(tiny_engine, monkeypatch):
    # An activation-basis build looked its SVDs up by the bytes of LᵀW, so it formed LᵀW again
    # every time (the first layer's product was most of a cached calibrated build's time).
    for basis in ("activations", "calibrated"):
        tiny_engine.build("svd", SvdConfig(0.3, basis=basis))
    looked_up = []
    real_svd_of = tiny_engine.intermediates.svd_of
    monkeypatch.setattr(tiny_engine.intermediates, "svd_of", lambda m: looked_up.append(m.shape) or real_svd_of(m))
    tiny_engine.build("svd", SvdConfig(0.3, basis="activations"))
    tiny_engine.build("svd", SvdConfig(0.2, basis="calibrated"))
    assert looked_up == []  # no LᵀW formed (nor hashed) again
    monkeypatch.undo()
    for name in model.dense_layer_names(tiny_engine.params):  # and what it serves is the SVD of LᵀW
        w = tiny_engine.params[name]["w"]
        direct = compress.layer_svd(tiny_engine.intermediates.input_factor(name).T @ w)
        served = tiny_engine.intermediates.whitened_svd(name, w)
        np.testing.assert_allclose(served.s, direct.s, rtol=1e-6)


def test_input_factors_come_from_one_pass_and_factor_each_layers_input_gram(tiny_engine, monkeypatch):
    calls = []
    real_features = measure.conv_features
    monkeypatch.setattr(measure, "conv_features", lambda *a: calls.append(1) or real_features(*a))
    names = model.dense_layer_names(tiny_engine.params)
    factors = {n: tiny_engine.intermediates.input_factor(n) for n in names}
    assert len(calls) == 1  # the convolutions ran once for every layer's factor
    x = real_features(tiny_engine.params, tiny_engine.data.x_train[tiny_engine.intermediates.calibration_indices()])
    for name in names:
        gram = np.asarray(x, np.float64).T @ x / x.shape[0]
        gram[np.diag_indices_from(gram)] += 1e-6 * np.trace(gram) / gram.shape[0]
        factor = factors[name].astype(np.float64)
        assert not np.triu(factor, 1).any()
        np.testing.assert_allclose(factor @ factor.T, gram, rtol=1e-4, atol=1e-5 * np.abs(gram).max())
        x = np.maximum(x @ tiny_engine.params[name]["w"] + tiny_engine.params[name]["b"], 0.0)


def test_the_input_factor_of_dead_inputs_is_the_full_cholesky():
    x = np.random.default_rng(0).standard_normal((50, 12)).astype(np.float32)
    x[:, [1, 5, 6, 11]] = 0.0  # inputs that are zero on every calibration row: dead units
    gram = np.asarray(x, np.float64).T @ x / x.shape[0]
    gram[np.diag_indices_from(gram)] += 1e-6 * np.trace(gram) / gram.shape[0]
    np.testing.assert_allclose(intermediates._cholesky_of_inputs(x), np.linalg.cholesky(gram), rtol=1e-6, atol=1e-9)


def test_predictions_are_kept_from_the_measurement(tiny_engine):
    result = tiny_engine.evaluate("prune", PruneConfig(0.7), with_latency=False)
    calls = _counting(tiny_engine)
    predictions = tiny_engine.predictions(result)
    assert not calls  # read back, not rebuilt and predicted again
    assert float(np.mean(predictions == tiny_engine.data.y_test)) == result["accuracy"]
    # A lost file is recomputed from the record, to the same predictions.
    key = engine.result_key(tiny_engine.checkpoint_hash, engine.Variant.from_dict(result))
    (tiny_engine.cache_dir / "predictions" / f"{key}.npy").unlink()
    np.testing.assert_array_equal(tiny_engine.predictions(result), predictions)
    assert len(calls) == 1


def test_a_latency_waits_for_the_warm_ups_step_in_flight_and_holds_the_next():
    import threading
    import time

    from lowrank_core import background

    schedule, in_first, first_done, order = background.WarmUp(), threading.Event(), threading.Event(), []

    def first():
        in_first.set()
        time.sleep(0.5)
        first_done.set()

    schedule.start([("features", first), ("baseline", lambda: order.append("next step"))], {})
    assert in_first.wait(5)
    with schedule.timing():  # the first step is still running: timing waits for it, not for the whole warm-up
        order.append(("timed after the step in flight", first_done.is_set()))
        time.sleep(0.3)
    schedule.thread.join(5)
    assert order == [("timed after the step in flight", True), "next step"]


def test_the_spectra_at_initialization_wait_for_the_pages_curves():
    import threading
    import time

    from lowrank_core import background, curves

    schedule, ran = background.WarmUp(), threading.Event()
    with curves._curve_accuracy.pending():  # a page's curve is measuring its accuracy
        schedule.start([("baseline", lambda: None), ("init_spectra", ran.set)], {})
        time.sleep(4 * background.DEFER_POLL_S)
        assert "baseline" in schedule.warmed and not ran.is_set()
    assert ran.wait(5)
    schedule.thread.join(5)


def test_the_warm_ups_optional_steps_let_a_latency_a_page_asked_for_go_first():
    # Else the hidden-layer outputs start the moment the baseline is measured and the Overview's
    # latency, asked for then and waiting for a quiet second, waits for them as well.
    import threading
    import time

    from lowrank_core import background, curves

    schedule, ran = background.WarmUp(), threading.Event()
    with curves._first_stages.pending():  # a page's latency, not yet timed on the product path
        schedule.start([("baseline", lambda: None), ("hidden", ran.set)], {})
        time.sleep(4 * background.DEFER_POLL_S)
        assert "baseline" in schedule.warmed and not ran.is_set()
    assert ran.wait(5)
    schedule.thread.join(5)


def test_the_warm_up_waits_on_pages_work_only_so_long(monkeypatch):
    # Under constant use a latency is always waiting and a curve always measuring: without a limit
    # the warm-up never finished (a soak waiting for it timed out).
    import threading

    from lowrank_core import background, curves

    monkeypatch.setattr(background, "DEFER_LIMIT_S", 1.0)
    schedule, ran = background.WarmUp(), threading.Event()
    with curves._first_stages.pending(), curves._curve_accuracy.pending():
        schedule.start([("baseline", lambda: None), ("init_spectra", ran.set)], {})
        assert ran.wait(10)
    schedule.thread.join(5)


def test_warm_up_waits_while_a_measurement_runs(tiny_engine):
    import time

    with tiny_engine.schedule.busy():  # a slider move's measurement in progress
        thread = tiny_engine.warm_up()
        deadline = time.time() + 60
        while "baseline" not in tiny_engine.warmed and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert "baseline" in tiny_engine.warmed and "svds" not in tiny_engine.warmed  # the SVDs wait
    thread.join(timeout=120)
    assert "svds" in tiny_engine.warmed and "init_spectra" in tiny_engine.warmed


def test_retraining_yields_to_interactive_runs_and_never_runs_beside_a_latency(tiny_engine, monkeypatch):
    import threading
    import time

    from lowrank_core import priority

    steps, stop = [], threading.Event()

    class Stopped(Exception):
        pass

    def on_progress(done, total):
        steps.append(time.perf_counter())
        if stop.is_set():
            raise Stopped

    def retrain():  # another session's fine-tuning, inside its own script run
        with priority.foreground():
            try:
                tiny_engine.evaluate(
                    "svd",
                    SvdConfig(0.25),
                    finetune=FinetuneConfig(steps=100_000, batch_size=32),
                    with_latency=False,
                    on_progress=on_progress,
                )
            except Stopped:
                pass

    worker = threading.Thread(target=retrain)
    worker.start()
    try:
        deadline = time.time() + 60
        while len(steps) < 20 and time.time() < deadline:
            time.sleep(0.01)
        with priority.foreground():  # this session's slider move
            entered = time.perf_counter()
            time.sleep(0.6)
            left = time.perf_counter()
        assert len([t for t in steps if entered < t < left]) <= 1  # at most the step in flight
        time.sleep(priority.GRACE_S + 0.3)
        assert [t for t in steps if t > left]  # then it goes on
        paused = []
        real = measure.latency
        monkeypatch.setattr(
            measure, "latency", lambda *a, **k: (paused.append(bool(priority._paused)), real(*a, **k))[1]
        )
        tiny_engine.evaluate("baseline", with_latency=True, use_cache=False)
        assert paused == [True]  # the retraining was paused when timing began
    finally:
        stop.set()
        worker.join(timeout=60)


def test_the_sensitivity_table_hands_out_each_row_as_it_is_measured(tiny_engine):
    fractions, seen = (0.3, 0.7), []
    rows = tiny_engine.svd_sensitivity(fractions, on_row=seen.append)
    assert sorted(map(str, seen)) == sorted(map(str, rows))  # every cell, each handed out once
    layers = [row["layer"] for row in seen]
    assert layers == sorted(layers, key=list(model.dense_layer_names(tiny_engine.params)).index)  # layer by layer


def test_retiming_keeps_every_accuracy_and_times_again(tiny_engine, monkeypatch):
    from lowrank_core import runtimes
    from lowrank_core.runtimes import base as runtime_base

    names = runtimes.available()
    first = tiny_engine.evaluate("baseline", with_latency=True, runtimes=names)
    passes, real = [], runtime_base.accuracy_fields
    monkeypatch.setattr(runtime_base, "accuracy_fields", lambda *a: passes.append(a) or real(*a))
    again = tiny_engine.retime("baseline", runtimes=names)
    assert not passes  # no runtime measured its accuracy again: only the timing was redone
    assert again["accuracy"] == first["accuracy"] and again["latency"] != first["latency"]
    for name in names[1:]:
        assert again["runtimes"][name]["accuracy"] == first["runtimes"][name]["accuracy"]
        assert again["runtimes"][name]["latency"] != first["runtimes"][name]["latency"]
    assert tiny_engine.cached_result("baseline", with_latency=True) == again  # stored
