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
    import jax.numpy as jnp

    params, _ = checkpoint.load(paths.BASELINE_DIR)
    plain_fn = jax.jit(lambda p, x: jnp.argmax(model.network.apply(p, model.preprocess(x)), -1))
    plain = np.concatenate(
        [np.asarray(plain_fn(params, real_data.x_test[i : i + 1000])) for i in range(0, 10_000, 1000)]
    )
    fast = measure.predict_full(params, real_data.x_test)  # dead units dropped, tiled convolution
    np.testing.assert_array_equal(plain, fast)  # every one of the 10,000 test images


def test_ragged_last_batch_is_counted(real_data):
    params, _ = checkpoint.load(paths.BASELINE_DIR)
    images, labels = real_data.x_test[:2600], real_data.y_test[:2600]
    padded = measure.predict_full(params, images)  # five batches of 500, then 100 padded to 500
    assert padded.shape == (2600,)
    np.testing.assert_array_equal(padded[2500:], measure.predict_full(params, images[2500:], batch_size=100))
    assert evaluation.accuracy(params, images, labels) == float(np.mean(padded == labels))
