"""Fine-tuning's loss: labels, distillation from the checkpoint, mirrored images."""

import dataclasses

import jax
import numpy as np
import pytest

from lowrank_core import data as data_lib, engine, measure, model
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig, Teacher, finetune_dense
from lowrank_core.methods import Variant

SPEC = model.TINY_SPEC


@pytest.fixture
def dense():
    return measure.dense_params(jax.tree.map(np.asarray, model.init_params(jax.random.PRNGKey(0), SPEC)))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(128, SPEC.feature_dim)).astype(np.float32)
    return features, rng.integers(0, 10, 128).astype(np.int32)


def _logits(dense, features):
    return measure.logits_from_features(dense, features)


def _moved(a: dict, b: dict) -> float:
    return max(float(np.abs(a[n][k] - b[n][k]).max()) for n in a for k in a[n])


def _config(**changes) -> FinetuneConfig:
    return FinetuneConfig(steps=6, batch_size=32, **changes)


def _kl(teacher_logits: np.ndarray, student: dict, features: np.ndarray) -> float:
    """KL(teacher ‖ student) of the class distributions, averaged over ``features``."""
    p, q = jax.nn.log_softmax(teacher_logits), jax.nn.log_softmax(_logits(student, features))
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))


@pytest.fixture
def teacher_net():
    return measure.dense_params(jax.tree.map(np.asarray, model.init_params(jax.random.PRNGKey(1), SPEC)))


def test_distillation_pulls_the_student_toward_the_teachers_logits(dense, batch, teacher_net):
    features, labels = batch
    targets = _logits(teacher_net, features) * 20  # a confident teacher, so there is something to learn
    config = dataclasses.replace(_config(distill=1.0, flip=False, temperature=1.0), steps=60)
    distilled = finetune_dense(dense, features, labels, config, teacher=Teacher(targets))
    labelled = finetune_dense(dense, features, labels, dataclasses.replace(config, distill=0.0))
    start = _kl(targets, dense, features)
    assert _kl(targets, distilled, features) < 0.5 * start
    assert _kl(targets, distilled, features) < 0.5 * _kl(targets, labelled, features)


def test_mirrored_batches_pair_mirrored_features_with_their_own_targets(dense, batch, teacher_net):
    features, labels = batch
    mirrored = np.random.default_rng(1).normal(size=features.shape).astype(np.float32)
    targets, mirrored_targets = (_logits(teacher_net, f) * 20 for f in (features, mirrored))
    config = dataclasses.replace(_config(distill=1.0, flip=True, temperature=1.0), steps=200)
    paired = finetune_dense(dense, features, labels, config, teacher=Teacher(targets, mirrored, mirrored_targets))
    swapped = finetune_dense(dense, features, labels, config, teacher=Teacher(targets, mirrored, targets))
    assert _kl(mirrored_targets, paired, mirrored) < 0.5 * _kl(mirrored_targets, swapped, mirrored)
    assert _kl(targets, paired, features) < 0.5 * _kl(targets, dense, features)  # the unmirrored half too


def test_the_label_loss_ignores_a_teacher_and_a_missing_one_is_an_error(dense, batch):
    features, labels = batch
    labels_only = dataclasses.replace(FinetuneConfig.labels_only(6), batch_size=32)
    plain = finetune_dense(dense, features, labels, labels_only)
    with_teacher = finetune_dense(dense, features, labels, labels_only, teacher=Teacher(np.ones((128, 10), np.float32)))
    assert _moved(plain, with_teacher) == 0.0
    with pytest.raises(ConfigError, match="distilling or mirroring needs"):
        finetune_dense(dense, features, labels, _config())
    with pytest.raises(ConfigError, match="distillation weight"):
        FinetuneConfig(distill=1.5)


def test_records_from_before_distillation_read_as_the_label_loss():
    old = FinetuneConfig.from_dict({"steps": 300, "batch_size": 256, "learning_rate": 3e-4, "seed": 0})
    assert old == FinetuneConfig.labels_only(300)
    assert FinetuneConfig.from_dict(dataclasses.asdict(FinetuneConfig())) == FinetuneConfig()
    assert Variant.of("svd", finetune=FinetuneConfig(5)).describe().endswith("fine-tuned 5 steps (distilled)")
    assert Variant.of("svd", finetune=FinetuneConfig.labels_only(5)).describe().endswith("fine-tuned 5 steps")


def test_the_engine_teaches_with_the_checkpoints_logits_on_mirrored_images(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    eng = engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")
    teacher = eng.intermediates.teacher(flip=True)
    mirrored = eng.data.x_train[:, :, ::-1].copy()
    np.testing.assert_allclose(teacher.flipped_features, measure.conv_features(eng.params, mirrored), atol=1e-5)
    full = np.asarray(model.forward(eng.params, mirrored))
    np.testing.assert_allclose(teacher.flipped_logits, full, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(teacher.logits, np.asarray(model.forward(eng.params, eng.data.x_train)), atol=1e-4)
