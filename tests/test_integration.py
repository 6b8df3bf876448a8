"""On the real CIFAR-10 (LOWRANK_CIFAR10 or ../shared): the shipped baseline."""

import numpy as np
import pytest

from lowrank_core import checkpoint, data as data_lib, evaluation, measure, model, paths


@pytest.fixture(scope="module")
def real_data(shared_archive):
    return data_lib.load_cifar10(shared_archive)


def test_shipped_baseline_accuracy_on_full_test_set(real_data):
    params, metadata = checkpoint.load(paths.BASELINE_DIR)
    acc = evaluation.accuracy(params, real_data.x_test, real_data.y_test)
    assert acc >= 0.66
    # Recorded accuracy is reproduced here to within a few images (GPU vs CPU XLA).
    assert abs(acc - metadata["test_accuracy"]) <= 0.0005
    assert metadata["n_test"] == 10_000 and metadata["data_sha256"] == real_data.sha256


def test_product_path_equals_plain_haiku_apply(real_data):
    import jax

    params, _ = checkpoint.load(paths.BASELINE_DIR)
    images = real_data.x_test[:1000]
    plain = jax.jit(lambda p, x: model.network.apply(p, model.preprocess(x)))(params, images)
    fast = measure.predict_full(params, images)
    np.testing.assert_array_equal(np.argmax(np.asarray(plain), -1), fast)


def test_ragged_last_batch_is_counted(real_data):
    params, _ = checkpoint.load(paths.BASELINE_DIR)
    images, labels = real_data.x_test[:2500], real_data.y_test[:2500]
    padded = measure.predict_full(params, images)  # 1000, 1000, then 500 padded to 1000
    assert padded.shape == (2500,)
    np.testing.assert_array_equal(padded[2000:], measure.predict_full(params, images[2000:], batch_size=500))
    assert evaluation.accuracy(params, images, labels) == float(np.mean(padded == labels))
