import json

import numpy as np
import pytest

from lowrank_core import compress, data as data_lib, engine, measure, paths


@pytest.fixture(scope="module")
def real_engine(shared_archive, tmp_path_factory):
    return engine.Engine(paths.BASELINE_DIR, data_lib.load_cifar10(shared_archive),
                         cache_root=tmp_path_factory.mktemp("cache"))


def test_cached_features_give_identical_predictions(real_engine):
    params, _ = real_engine.build("svd", compress.SvdConfig(0.2, "factorized"))
    via_features = measure.predict_from_features(params, real_engine.test_features)
    full = measure.predict_full(params, real_engine.data.x_test)
    assert np.mean(via_features == full) >= 0.9999  # float reassociation may flip a tie


def test_svd_result_cached_and_corruption_recomputed(real_engine):
    config = compress.SvdConfig(0.3, "factorized")
    fresh = real_engine.evaluate("svd", config, with_latency=False)
    assert fresh["n_test"] == 10_000 and fresh["facts"]["ranks"]["linear"] == 900
    again = real_engine.evaluate("svd", config, with_latency=False)
    assert again == fresh
    key = engine.result_key(real_engine.checkpoint_hash, "svd", config, None)
    path = real_engine.cache_dir / "results" / f"{key}.json"
    stored = json.loads(path.read_text())
    stored["payload"]["accuracy"] = 0.999  # tampered: hash no longer matches
    path.write_text(json.dumps(stored))
    assert real_engine.evaluate("svd", config, with_latency=False)["accuracy"] == fresh["accuracy"]
    path.write_text("{truncated")
    assert real_engine.evaluate("svd", config, with_latency=False)["accuracy"] == fresh["accuracy"]


def test_full_rank_svd_keeps_baseline_accuracy(real_engine):
    base = real_engine.evaluate("baseline", with_latency=False)
    full = real_engine.evaluate("svd", compress.SvdConfig(1.0, "reconstructed"), with_latency=False)
    assert abs(full["accuracy"] - base["accuracy"]) <= 0.002


def test_latency_is_measured_with_spread(real_engine):
    result = real_engine.evaluate("quantize")
    lat = result["latency"]["1000"]
    assert lat["repeats"] >= 5 and lat["iqr_ms"] >= 0 and lat["median_ms"] > 0 and lat["compile_s"] > 0
    assert result["bytes"] < 0.3 * measure.stored_bytes(real_engine.params)
    assert result["accuracy"] > 0.8


def test_remove_retrains_the_rewired_layer(real_engine):
    config = engine.RemoveConfig(("linear_1", "linear_2"), retrain_steps=100)
    untrained = real_engine.evaluate("remove", engine.RemoveConfig(config.layers, retrain_steps=0), with_latency=False)
    result = real_engine.evaluate("remove", config, with_latency=False)
    assert result["facts"]["reinitialized_layers"] == ["linear_3"]
    assert untrained["accuracy"] < 0.3 and result["accuracy"] > 0.6


def test_sensitivity_compresses_one_layer_at_a_time(real_engine):
    rows = real_engine.sensitivity("svd", [0.1, 1.0], layers=("linear_4",))
    base = real_engine.evaluate("baseline", with_latency=False)["accuracy"]
    assert [(r["layer"], r["value"]) for r in rows] == [("linear_4", 0.1), ("linear_4", 1.0)]
    assert abs(rows[1]["accuracy"] - base) <= 0.002 and rows[0]["accuracy"] < base - 0.2


def test_dead_units_are_lossless_on_the_baseline(real_engine):
    base = real_engine.evaluate("baseline", with_latency=False)
    slim = real_engine.evaluate("dead_units", with_latency=False)
    assert slim["accuracy"] == base["accuracy"] and slim["params"] < 0.6 * base["params"]
