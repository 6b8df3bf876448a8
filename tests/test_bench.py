"""The benchmark suite's rows on tiny inputs (the suite itself is run by hand; see README)."""

import numpy as np
import pytest

from lowrank_core import bench, data as data_lib


@pytest.fixture
def tiny_data(synthetic_archive):
    return data_lib.load_cifar10(synthetic_archive)


def test_time_to_accuracy_stops_at_the_target(tiny_data):
    run = bench.bench_time_to_accuracy(tiny_data, "tiny", target=0.0, eval_every=2, log=lambda _: None)
    assert run["reached"] == run["curve"][0] and run["reached"]["step"] == 2  # any accuracy ≥ 0
    assert run["reached"]["train_s"] > 0


def test_time_to_accuracy_reports_an_unreached_target(tiny_data):
    run = bench.bench_time_to_accuracy(tiny_data, "tiny", target=1.01, eval_every=2, log=lambda _: None)
    assert run["reached"] is None and [p["step"] for p in run["curve"]] == [2, 4, 6]
    times = [p["train_s"] for p in run["curve"]]
    assert times == sorted(times)
    table = bench.to_markdown({"environment": bench.environment(), "to_accuracy": [run]})
    assert "not reached in 6 steps" in table


def test_ratio_is_median_of_paired_ratios():
    ratio = bench._ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    assert ratio["median"] == pytest.approx(3.0) and ratio["q1"] <= ratio["median"] <= ratio["q3"]
    assert np.isfinite(list(ratio.values())).all()
