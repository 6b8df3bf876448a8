"""The benchmark suite's rows on tiny inputs (the suite itself is run by hand; see README)."""

import dataclasses
import types

import numpy as np
import pytest

from lowrank_core import bench, configs, data as data_lib, model

# The default recipe on the small network of the same layer kinds: the rows' logic, seconds sooner.
TINY = dataclasses.replace(configs.get_preset("default"), network=model.TINY_SPEC)


@pytest.fixture
def tiny_data(synthetic_archive):
    return data_lib.load_cifar10(synthetic_archive)


def test_time_to_accuracy_stops_at_the_target(tiny_data):
    run = bench.bench_time_to_accuracy(tiny_data, "tiny", target=0.0, eval_every=2, log=lambda _: None)
    assert run["reached"] == run["curve"][0] and run["reached"]["step"] == 2  # any accuracy ≥ 0
    assert run["reached"]["train_s"] > 0


def test_time_to_accuracy_puts_initialization_on_the_clock(tiny_data, monkeypatch):
    # A fake clock that only the initialization advances: the reported time is
    # exactly the initialization's if (and only if) it is counted.
    clock = {"now": 0.0}
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    real_init_state = bench.train.init_state

    def slow_init_state(*args, **kwargs):
        clock["now"] += 100.0
        return real_init_state(*args, **kwargs)

    monkeypatch.setattr(bench.train, "init_state", slow_init_state)
    run = bench.bench_time_to_accuracy(tiny_data, "tiny", target=0.0, eval_every=2, log=lambda _: None)
    assert run["init_s"] == 100.0 and run["reached"]["train_s"] == 100.0


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


def test_time_to_accuracy_takes_a_config_and_counts_epochs(tiny_data):
    config = bench.recipe_grid(images_per_epoch=32, horizons=(0.5,), settings=((16, 1e-3, "none"),), base=TINY)[0]
    assert config.num_steps == 1 and config.batch_size == 16 and config.lr_schedule == "cosine"
    run = bench.bench_time_to_accuracy(tiny_data, config, target=1.01, eval_every=1, log=lambda _: None)
    n_train = tiny_data.x_train.shape[0] - min(config.validation_size, tiny_data.x_train.shape[0] // 5)
    assert run["curve"][-1]["epochs"] == pytest.approx(16 / n_train)
    assert run["config"]["learning_rate"] == 1e-3 and run["preset"] == config.preset


def test_recipe_grid_decays_every_schedule_at_its_own_horizon():
    grid = bench.recipe_grid()
    assert len(grid) == len(bench.RECIPE_HORIZONS) * len(bench.RECIPE_SETTINGS)
    assert len({c.preset for c in grid}) == len(grid)  # labels tell the runs apart
    for config in grid:
        epochs = config.num_steps * config.batch_size / 45_000
        assert any(abs(epochs - h) < 0.01 for h in bench.RECIPE_HORIZONS)
        assert 0 < config.warmup_steps < config.num_steps


def test_recipes_row_runs_each_config_and_tabulates(tiny_data):
    grid = bench.recipe_grid(
        images_per_epoch=32, horizons=(1.0,), settings=((16, 1e-3, "none"), (8, 5e-4, "flip")), base=TINY
    )
    runs = bench.bench_recipes(tiny_data, grid, target=1.01, eval_images=16, log=lambda _: None)
    assert [r["preset"] for r in runs] == [c.preset for c in grid]
    # evaluated every 16 training images: every step of 16, every second step of 8
    assert [[p["step"] for p in r["curve"]] for r in runs] == [[1, 2], [2, 4]]
    table = bench.to_markdown({"environment": bench.environment(), "recipes": runs})
    assert table.count("not reached") == 2 and "bs8 lr0.0005 flip 1ep" in table
    assert "| comparison |" not in table  # no empty comparison table above the recipes
