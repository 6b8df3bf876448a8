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
    np.testing.assert_allclose(
        np.asarray(measure.fast_forward(params, images)),
        np.asarray(model.forward(params, images)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_conv_features_in_batches_equal_one_call(params):
    images = np.random.default_rng(2).integers(0, 256, (130, 32, 32, 3), dtype=np.uint8)
    batched = measure.conv_features(params, images, batch_size=2 * measure.CONV_CHUNK)  # 100, then 30 padded
    np.testing.assert_allclose(batched, np.asarray(model.conv_features(params, images)), rtol=1e-4, atol=1e-5)


def test_latency_reports_median_and_spread_per_batch(params, monkeypatch):
    images = np.zeros((4, 32, 32, 3), np.uint8)
    record = measure.latency(params, images, batch_sizes=(1, 4), repeats=3)
    assert set(record) == {"1", "4"}
    for batch, stats in record.items():
        assert stats["repeats"] == 3 and stats["iqr_ms"] >= 0 and stats["min_ms"] <= stats["median_ms"]
        assert stats["per_image_ms"] == pytest.approx(stats["median_ms"] / int(batch))
    # Timing follows the rules: one first (compile) call apart, warm-up, then exactly `repeats` timed calls.
    clock = iter(range(1000))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    stats = measure.time_calls(lambda: calls.append(1) or np.zeros(1), repeats=5, warmup=2)
    assert len(calls) == 1 + 2 + 5 and stats["repeats"] == 5
    assert stats["compile_s"] == 1.0 and stats["median_ms"] == 1000.0 and stats["iqr_ms"] == 0.0


def test_latency_on_a_short_test_set_records_the_batch_timed(params):
    # Five images: the record says batch 5, not 1,000, and divides by 5.
    record = measure.latency(params, np.zeros((5, 32, 32, 3), np.uint8), repeats=2)
    assert set(record) == {"1", "5"}
    assert record["5"]["per_image_ms"] == pytest.approx(record["5"]["median_ms"] / 5)
    assert measure.timed_batch_sizes(10_000) == (1, 1000) and measure.timed_batch_sizes(1) == (1,)


def test_slim_params_give_the_same_logits_with_bucketed_widths(params):
    from lowrank_core import compress

    pruned = compress.prune_unstructured(params, compress.prunable_layers(params), 0.9, "layer")
    pruned = compress.prune_structured(pruned, compress.prunable_layers(pruned), 0.37)
    slim = measure.product_params(pruned)
    widths = [slim[n]["w"].shape[1] for n in model.DENSE_LAYERS[:-1]]
    assert [measure.product_params(params)[n]["w"].shape[1] for n in model.DENSE_LAYERS[:-1]] == [
        3000,
        2000,
        2000,
        1000,
    ]
    originals = [pruned[n]["w"].shape[1] for n in model.DENSE_LAYERS[:-1]]
    assert all(w % measure.WIDTH_BUCKET == 0 or w == o for w, o in zip(widths, originals))
    assert all(w <= o for w, o in zip(widths, originals))  # never wider than the variant itself
    assert widths[0] < params["linear"]["w"].shape[1]  # structured pruning's dropped units stay dropped
    features = np.random.default_rng(3).normal(size=(64, 3072)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(model.dense_forward(slim, features)),
        np.asarray(model.dense_forward(pruned, features)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_int8_runs_dequantized_once_on_the_product_path_with_the_same_predictions(params):
    from lowrank_core import compress

    pruned = compress.prune_structured(params, compress.prunable_layers(params), 0.5)
    int8 = compress.quantize_dense(pruned)
    product = measure.product_params(measure.dense_params(int8))
    assert not any(k.endswith(("_q", "_scale")) for layer in product.values() for k in layer)
    assert product["linear"]["w"].shape[1] < params["linear"]["w"].shape[1]  # dead units dropped here too
    assert product["linear_1"]["w"].dtype == np.float32
    features = np.random.default_rng(4).normal(size=(300, 3072)).astype(np.float32)
    on_the_fly = np.argmax(np.asarray(model.dense_forward(measure.dense_params(int8), features)), -1)
    np.testing.assert_array_equal(measure.predict_from_features(int8, features, batch_size=128), on_the_fly)


def test_a_variant_runs_from_the_checkpoints_hidden_outputs_with_the_same_logits(params):
    # The engine predicts a variant from the checkpoint's cached hidden outputs before its first
    # changed layer: that must be the same computation, bit for bit, as the whole dense stack.
    rng = np.random.default_rng(5)
    features = np.maximum(rng.standard_normal((700, model.FEATURE_DIM)), 0).astype(np.float32)  # 500 + 200 padded
    reference = measure.HiddenActivations(params, features)
    names = model.dense_layer_names(params)
    logits = jax.jit(model.dense_forward)
    for changed in (1, len(names) - 1):  # the longest and the shortest run from the reference
        variant = {n: dict(params[n]) for n in params}
        variant[names[changed]]["b"] = np.asarray(variant[names[changed]]["b"]) + 0.01
        product = measure.product_params(measure.dense_params(variant))
        assert measure.unchanged_layers(product, reference.product) == changed
        tail = {n: product[n] for n in names[changed:]}
        np.testing.assert_array_equal(
            measure._batched(logits, tail, reference.outputs[changed - 1], None),
            measure._batched(logits, product, features, None),
        )
        # NaN features: the right predictions can only come from the reference's outputs.
        np.testing.assert_array_equal(
            measure.predict_from_features(variant, np.full_like(features, np.nan), reference=reference),
            measure.predict_from_features(variant, features),
        )
    # A variant equal to the checkpoint runs whole: its hidden outputs are never needed for it.
    fresh = measure.HiddenActivations(params, np.full_like(features, np.nan))
    np.testing.assert_array_equal(
        measure.predict_from_features(params, features, reference=fresh),
        measure.predict_from_features(params, features),
    )
    assert fresh._outputs is None
