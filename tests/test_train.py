import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_core import configs, data as data_lib, model, train
from lowrank_core.errors import ConfigError


@pytest.fixture
def tiny_data(synthetic_archive):
    return data_lib.load_cifar10(synthetic_archive)


def test_presets_are_frozen_hashable_and_seed_recipe():
    seed = configs.get_preset("seed")
    assert hash(seed) == hash(configs.get_preset("seed"))
    assert (seed.batch_size, seed.num_steps, seed.learning_rate, seed.lr_schedule) == (64, 10_001, 1e-3, "constant")
    assert seed.eval_params == "ema" and seed.ema_step_size == 0.001 and seed.l2_coefficient == 1e-4
    with pytest.raises(dataclasses.FrozenInstanceError):
        seed.batch_size = 1
    with pytest.raises(ConfigError, match="unknown preset"):
        configs.get_preset("fast")
    with pytest.raises(ConfigError):
        configs.TrainConfig(augment="rotate")
    with pytest.raises(ConfigError, match="init must be one of"):
        configs.TrainConfig(init="xavier")


def test_l2_penalty_is_half_sum_of_squares():
    params = {"a": {"w": jnp.array([1.0, 2.0])}, "b": {"b": jnp.array([3.0])}}
    assert float(train.l2_penalty(params)) == pytest.approx(0.5 * 14)


def test_loss_adds_l2_term():
    params = model.init_params(jax.random.PRNGKey(0), model.TINY_SPEC)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    labels = np.array([1, 2])
    plain = train.loss_fn(params, images, labels, 0.0)
    regularized = train.loss_fn(params, images, labels, 1e-4)
    assert float(regularized - plain) == pytest.approx(1e-4 * float(train.l2_penalty(params)), rel=1e-3)


def test_update_descends_the_loss():
    config = configs.TrainConfig(
        batch_size=8,
        num_steps=5,
        lr_schedule="constant",
        learning_rate=1e-4,
        augment="none",
        warmup_steps=0,
        network=model.TINY_SPEC,
    )
    optimizer = train.make_optimizer(config)
    state = train.init_state(config, optimizer)
    update = train.make_update(config, optimizer)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 8)
    before = float(train.loss_fn(state.params, images, labels, config.l2_coefficient))
    for _ in range(3):
        state, _ = update(state, images, labels)
    after = float(train.loss_fn(state.params, images, labels, config.l2_coefficient))
    assert after < before  # would rise if updates were applied with the wrong sign


def test_augment_keeps_the_pixels_of_each_image():
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    assert train.augment(jax.random.PRNGKey(0), images, "none") is images
    flipped = np.asarray(train.augment(jax.random.PRNGKey(0), jnp.asarray(images), "flip"))
    for image, out in zip(images, flipped):  # each image as it was, or mirrored
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    assert any(np.array_equal(out, image[:, ::-1]) for image, out in zip(images, flipped))
    shifted = np.asarray(train.augment(jax.random.PRNGKey(1), jnp.asarray(images), "flip_crop"))
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    for image, out in zip(images, shifted):  # a 32×32 window of the reflect-padded (maybe mirrored) image
        windows = [
            np.pad(candidate, ((4, 4), (4, 4), (0, 0)), mode="reflect")[dy : dy + 32, dx : dx + 32]
            for candidate in (image, image[:, ::-1])
            for dy in range(9)
            for dx in range(9)
        ]
        assert any(np.array_equal(out, window) for window in windows)


def test_split_uses_the_large_part_for_training(tiny_data):
    config = configs.TrainConfig(validation_size=5000)
    x_tr, y_tr, x_val, y_val = train.split_train_validation(tiny_data, config)
    assert x_tr.shape[0] >= 4 * x_val.shape[0]
    assert x_tr.shape[0] + x_val.shape[0] == tiny_data.x_train.shape[0]


def test_training_is_deterministic_and_reports_progress(tiny_data):
    config = configs.get_preset("tiny")
    seen = []
    first = train.train(config, tiny_data, on_progress=seen.append)
    second = train.train(config, tiny_data)
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    assert [p.step for p in seen] == list(range(1, config.num_steps + 1))
    assert [row["step"] for row in first.history] == [3, 6]


def test_reported_loss_is_the_mean_since_the_previous_evaluation(tiny_data, monkeypatch):
    # Every step's loss, recorded by wrapping the jitted update; the progress
    # report must average the steps since the previous evaluation, not repeat one.
    losses = []
    real_make_update = train.make_update

    def recording_make_update(config, optimizer):
        update = real_make_update(config, optimizer)

        def recorded(state, images, labels):
            state, loss = update(state, images, labels)
            losses.append(float(loss))
            return state, loss

        return recorded

    monkeypatch.setattr(train, "make_update", recording_make_update)
    config = configs.get_preset("tiny")
    seen = []
    train.train(config, tiny_data, on_progress=seen.append)
    reported = {p.step: p.loss for p in seen}
    assert [step for step, loss in reported.items() if loss is not None] == [3, 6]
    assert reported[3] == pytest.approx(np.mean(losses[:3]), rel=1e-5)
    assert reported[6] == pytest.approx(np.mean(losses[3:6]), rel=1e-5)


def test_train_config_round_trips_through_metadata():
    config = configs.get_preset("tiny")
    assert configs.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in configs.get_preset("baseline").to_dict().items() if k != "network"}
    assert configs.TrainConfig.from_dict(old).network == model.SEED_SPEC  # checkpoints before the spec existed


def test_train_and_save_writes_a_loadable_checkpoint(tmp_path, tiny_data):
    from lowrank_core import checkpoint

    meta = train.train_and_save(configs.get_preset("tiny"), tiny_data, tmp_path / "ck")
    params, saved = checkpoint.load(tmp_path / "ck")
    assert saved["n_test"] == tiny_data.x_test.shape[0] == meta["n_test"]
    assert 0 <= saved["test_accuracy"] <= 1 and saved["data_sha256"] == tiny_data.sha256
    assert saved["config"]["preset"] == "tiny" and saved["storage_dtype"] in ("float16", "float32")


def test_whitened_init_needs_training_images_and_trains_deterministically(tiny_data):
    config = dataclasses.replace(configs.get_preset("tiny"), init="whitened")
    with pytest.raises(ValueError, match="needs training images"):
        train.init_state(config, train.make_optimizer(config))
    first = train.train(config, tiny_data)
    second = train.train(config, tiny_data)
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    haiku = train.train(configs.get_preset("tiny"), tiny_data)
    assert not np.allclose(first.params["conv2_d"]["w"], haiku.params["conv2_d"]["w"])
    assert all(np.isfinite(row["loss"]) for row in first.history)
