"""The measuring helpers: the chunked inference path and the latency record."""

import jax
import numpy as np
import pytest

from lowrank_core import measure, model


@pytest.fixture(scope="module")
def params():
    return model.init_params(jax.random.PRNGKey(1))


@pytest.mark.parametrize("batch", [2 * measure.CONV_CHUNK, measure.CONV_CHUNK + 7, 3])
def test_chunked_path_equals_model_forward(params, batch):
    # Divisible batches run the convolutions chunk by chunk; others in one piece.
    images = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(measure.fast_forward(params, images)),
                               np.asarray(model.forward(params, images)), rtol=1e-4, atol=1e-5)


def test_conv_features_in_batches_equal_one_call(params):
    images = np.random.default_rng(2).integers(0, 256, (130, 32, 32, 3), dtype=np.uint8)
    batched = measure.conv_features(params, images, batch_size=2 * measure.CONV_CHUNK)  # 100, then 30 padded
    np.testing.assert_allclose(batched, np.asarray(model.conv_features(params, images)), rtol=1e-4, atol=1e-5)


def test_latency_reports_median_and_spread_per_batch(params):
    images = np.zeros((4, 32, 32, 3), np.uint8)
    record = measure.latency(params, images, batch_sizes=(1, 4), repeats=3)
    assert set(record) == {"1", "4"}
    for stats in record.values():
        assert stats["repeats"] == 3 and stats["median_ms"] > 0 and stats["iqr_ms"] >= 0
        assert stats["compile_s"] > 0


def test_slim_params_give_the_same_logits_with_bucketed_widths(params):
    from lowrank_core import compress

    pruned = compress.prune_unstructured(params, compress.PruneConfig(sparsity=0.9, structured=False))
    pruned = compress.prune_structured(pruned, compress.PruneConfig(sparsity=0.37, structured=True))
    slim = measure._slim(pruned)
    widths = [slim[n]["w"].shape[1] for n in model.DENSE_LAYERS[:-1]]
    assert [measure._slim(params)[n]["w"].shape[1] for n in model.DENSE_LAYERS[:-1]] == [3000, 2000, 2000, 1000]
    originals = [pruned[n]["w"].shape[1] for n in model.DENSE_LAYERS[:-1]]
    assert all(w % measure.WIDTH_BUCKET == 0 or w == o for w, o in zip(widths, originals))
    assert all(w <= o for w, o in zip(widths, originals))  # never wider than the variant itself
    assert widths[0] < params["linear"]["w"].shape[1]  # structured pruning's dropped units stay dropped
    features = np.random.default_rng(3).normal(size=(64, 3072)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.dense_forward(slim, features)),
                               np.asarray(model.dense_forward(pruned, features)), rtol=1e-4, atol=1e-4)
