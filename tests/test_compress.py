import dataclasses
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lowrank_core import checkpoint, compress, measure, model
from lowrank_core.errors import ConfigError
from lowrank_core.methods.prune import PruneConfig
from lowrank_core.methods.svd import SvdConfig, choose_ranks, svd_compress

# A small network of the seed's layer structure: feature dim 512, widths 96/64/64/32/10.
SPEC = model.TINY_SPEC


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(np.asarray, model.init_params(jax.random.PRNGKey(7), SPEC))


@pytest.fixture(scope="module")
def svds(params):
    return {n: compress.layer_svd(params[n]["w"]) for n in model.DENSE_LAYERS}


def test_full_rank_reconstruction_equals_w(params, svds):
    w = params["linear_3"]["w"]
    u_k, sv_k = compress.rank_approximated_weight(svds["linear_3"], min(w.shape))
    np.testing.assert_allclose(u_k @ sv_k, w, atol=1e-5)


@pytest.mark.parametrize("k", [1, 10, 30])
def test_eckart_young_error_is_tail_energy(params, svds, k):
    w = params["linear_3"]["w"].astype(np.float64)
    u_k, sv_k = compress.rank_approximated_weight(svds["linear_3"], k)
    error = np.linalg.norm(w - u_k.astype(np.float64) @ sv_k, "fro")
    tail = np.sqrt(np.sum(svds["linear_3"].s.astype(np.float64)[k:] ** 2))
    assert error == pytest.approx(tail, rel=1e-3)
    assert u_k.shape == (64, k) and sv_k.shape == (k, 32)


def _matrix_with_zero_lines(seed: int, m: int = 40, n: int = 30) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((m, n))
    w[::3] = 0.0  # dead inputs: zero rows
    w[:, 1::4] = 0.0  # dead outputs: zero columns
    return w


@pytest.mark.parametrize("seed", [0, 1])
def test_svd_leaving_out_zero_rows_and_columns_is_the_full_svd(seed):
    w = _matrix_with_zero_lines(seed)
    svd = compress.layer_svd(w)
    reference = np.linalg.svd(w, compute_uv=False)
    assert svd.u.shape == (40, 30) and svd.vt.shape == (30, 30)
    np.testing.assert_allclose(svd.s, reference, atol=1e-5)
    assert (svd.s[np.linalg.matrix_rank(w) :] == 0).all()  # past the live rank: exactly zero
    for k in (1, 5, 12, 30):  # every truncation is the Eckart–Young optimum
        u_k, sv_k = compress.rank_approximated_weight(svd, k)
        error = np.linalg.norm(w - u_k.astype(np.float64) @ sv_k, "fro")
        assert error == pytest.approx(np.sqrt(np.sum(reference[k:] ** 2)), rel=1e-4, abs=1e-5)
    assert not compress.layer_svd(np.zeros((4, 3))).s.any()


@pytest.mark.parametrize("shape", [(60, 25), (25, 60)])
def test_the_gram_svd_truncates_like_lapack_and_zeroes_the_numerical_null_space(shape):
    rng = np.random.default_rng(3)
    m, n = shape
    rank = 18  # rank-deficient, with a spread of 1e9 inside the live part, like a trained layer
    w = (rng.standard_normal((m, rank)) * np.logspace(0, -9, rank)) @ rng.standard_normal((rank, n))
    u, s, vt = compress._gram_svd(w)
    reference_u, reference_s, reference_vt = np.linalg.svd(w, full_matrices=False)
    kept = reference_s > 1e-6 * reference_s[0]
    np.testing.assert_allclose(s[kept], reference_s[kept], rtol=1e-4)
    assert (s[~kept] == 0).all() and not u[:, ~kept].any() and not vt[~kept].any()
    for k in (1, 4, 9, int(kept.sum())):  # every truncation the SVD allows: the same matrix W_k
        ours = (u[:, :k] * s[:k]) @ vt[:k]
        theirs = (reference_u[:, :k] * reference_s[:k]) @ reference_vt[:k]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * reference_s[0])
    np.testing.assert_allclose(u[:, kept].T @ u[:, kept], np.eye(kept.sum()), atol=1e-3)  # orthonormal enough


@pytest.mark.parametrize("conditioning", ["random", "ill"])
def test_singular_values_match_numpy(conditioning):
    w = _matrix_with_zero_lines(2)
    if conditioning == "ill":  # a spread the Gram matrix cannot resolve: the SVD answers
        u, _, vt = np.linalg.svd(w, full_matrices=False)
        w = (u * np.logspace(0, -9, u.shape[1])) @ vt
    values = compress.singular_values(w)
    reference = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(values, reference, rtol=1e-6, atol=1e-12)
    assert values.dtype == np.float64 and values.shape == (30,)


def test_factorized_and_reconstructed_give_same_logits(params, svds):
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    rec = svd_compress(params, SvdConfig(0.3, "reconstructed"), svds)
    fac = svd_compress(params, SvdConfig(0.3, "factorized"), svds)
    assert "u" in fac["linear"] and fac["linear"]["u"].shape == (512, 28)
    np.testing.assert_allclose(model.forward(fac, images), model.forward(rec, images), rtol=1e-3, atol=1e-4)
    assert fac["conv2_d"]["w"] is params["conv2_d"]["w"]  # convolutions untouched


def test_rank_rules(svds):
    assert compress.rank_for_fraction(0.1, 3072, 3000) == 300
    assert compress.rank_for_fraction(0.01, 1000, 10) == 1
    s = np.array([3.0, 2.0, 1.0])
    assert compress.rank_for_energy(s, 9 / 14) == 1
    assert (
        compress.rank_for_energy(s, 0.92) == 2
        and compress.rank_for_energy(s, 0.93) == 3
        and compress.rank_for_energy(s, 1.0) == 3
    )
    config = SvdConfig(0.5, layer_ranks=(("linear", 5),), include_output=False)
    ranks = choose_ranks(config, svds)
    assert ranks["linear"] == 5 and ranks["linear_1"] == 32 and "linear_4" not in ranks
    assert compress.break_even_rank(2000, 2000) == 1000


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rank_fraction=0),
        dict(rank_fraction=1.5),
        dict(rank_fraction=float("nan")),
        dict(energy=0),
        dict(energy=1.2),
        dict(form="diagonal"),
        dict(layer_ranks=(("conv2_d", 3),)),
        dict(layer_ranks=(("linear", 0),)),
        dict(layer_ranks=(("linear", 2), ("linear", 3))),
    ],
)
def test_bad_svd_settings_raise(kwargs):
    with pytest.raises(ConfigError):
        SvdConfig(**kwargs)


def test_ranks_are_checked_against_the_network(params, svds):
    # Configs know layer names, not shapes: a rank beyond the layer is refused when built for this network.
    with pytest.raises(ConfigError, match="rank of linear_4 must be an integer in 1..10"):
        svd_compress(params, SvdConfig(layer_ranks=(("linear_4", 11),)), svds)
    with pytest.raises(ConfigError, match="unknown dense layer 'linear_9'"):
        svd_compress(params, SvdConfig(layer_ranks=(("linear_9", 1),)), svds)


def test_irrelevant_fields_are_canonical():
    # Equal configs build equal variants, so they share one cache key and one label.
    assert SvdConfig(0.3, energy=0.9) == SvdConfig(0.7, energy=0.9)
    assert SvdConfig(0.3, energy=0.5, param_budget=0.2) == SvdConfig(param_budget=0.2)
    assert PruneConfig(0.5, scope="global", structured=True) == PruneConfig(0.5, scope="layer", structured=True)
    assert PruneConfig(0.5, gradual_steps=10) == PruneConfig(0.5)
    assert PruneConfig(0.5, schedule="gradual", gradual_steps=10) != PruneConfig(0.5, schedule="gradual")


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_settings_parsers_accept_only_valid_ranges(value):
    for make, ok in (
        (lambda v: SvdConfig(rank_fraction=v), lambda v: 0 < v <= 1),
        (lambda v: PruneConfig(sparsity=v), lambda v: 0 <= v < 1),
    ):
        if ok(value):
            make(value)
        else:
            with pytest.raises(ConfigError):
                make(value)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_pruning_hits_sparsity_exactly(params, scope, sparsity):
    pruned = compress.prune_unstructured(params, compress.prunable_layers(params), sparsity, scope)
    kernels = [pruned[n]["w"] for n in compress.prunable_layers(params)]
    total = sum(k.size for k in kernels)
    zeros = sum(int(np.sum(k == 0)) for k in kernels)
    assert zeros == round(sparsity * total) or (scope == "layer" and abs(zeros - sparsity * total) <= len(kernels))
    if scope == "layer":
        for n in compress.prunable_layers(params):
            assert np.sum(pruned[n]["w"] == 0) == round(sparsity * pruned[n]["w"].size)
    assert all(np.array_equal(pruned[n]["b"], params[n]["b"]) for n in compress.prunable_layers(params))


def test_structured_pruning_shrinks_matrices(params):
    pruned = compress.prune_structured(params, compress.prunable_layers(params), 0.5)
    assert pruned["linear"]["w"].shape == (512, 48) and pruned["linear_1"]["w"].shape == (48, 32)
    assert pruned["linear_4"]["w"].shape == (16, 10)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert model.forward(pruned, images).shape == (2, 10)
    assert measure.macs_per_image(pruned) < measure.macs_per_image(params)


def test_removed_layers_have_expected_shapes(params):
    removed, changed = compress.remove_layers(params, ("linear_1", "linear_2"))
    assert model.dense_layer_names(removed) == ["linear", "linear_3", "linear_4"]
    assert removed["linear_3"]["w"].shape == (96, 32) and changed == ("linear_3",)
    assert model.forward(removed, np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 10)
    with pytest.raises(ConfigError):
        compress.remove_layers(params, ("linear_4",))


def test_int8_quantization_round_trip(params):
    w = params["linear_2"]["w"]
    q, scale = compress.quantize_int8(w)
    assert q.dtype == np.int8 and scale.shape == (w.shape[1],)
    assert np.all(np.abs(q * scale - w) <= scale / 2 * (1 + 1e-5) + 1e-9)
    quantized = compress.quantize_dense(params)
    assert quantized["linear_2"]["w_q"].dtype == np.int8 and "w" not in quantized["linear_2"]
    dense_bytes = sum(params[n]["w"].size for n in model.DENSE_LAYERS)
    # int8 matrices: a quarter of float32, plus float32 scales and the container's small overhead.
    saved = measure.stored_bytes(params) - measure.stored_bytes(quantized)
    assert 3 * dense_bytes - 4 * sum(params[n]["w"].shape[1] for n in model.DENSE_LAYERS) - 4096 < saved
    assert saved <= 3 * dense_bytes
    back, which = compress.dequantize(quantized)
    assert which["linear_2"] == ("w",)
    np.testing.assert_array_equal(back["linear_2"]["w"], q.astype(np.float32) * scale)


def test_stored_format_round_trips(params, tmp_path):
    # The exported file holds exactly what as_stored() measures: float16 floats, int8 + float32 scales.
    quantized = compress.quantize_dense(params)
    blob = checkpoint.params_to_npz_bytes(quantized, "float16")
    (tmp_path / "v.npz").write_bytes(blob)
    with np.load(tmp_path / "v.npz") as npz:
        assert npz["linear/w_q"].dtype == np.int8 and npz["linear/w_scale"].dtype == np.float32
        assert npz["linear/b"].dtype == np.float16 and npz["conv2_d/w"].dtype == np.float16
        stored = checkpoint.as_stored(quantized, "float16")
        np.testing.assert_array_equal(npz["conv2_d/w"].astype(np.float32), stored["conv2_d"]["w"])
        np.testing.assert_array_equal(npz["linear/w_q"], stored["linear"]["w_q"])


def test_as_stored_passes_the_stored_layers_a_variant_kept_through(params):
    stored = checkpoint.as_stored(params, "float16")
    variant = {**stored, "linear": {**stored["linear"], "w": stored["linear"]["w"] * 1.001}}  # one array changed
    again = checkpoint.as_stored(variant, "float16", already_stored=stored)
    assert again["conv2_d"]["w"] is stored["conv2_d"]["w"] and again["linear"]["b"] is stored["linear"]["b"]
    full = checkpoint.as_stored(variant, "float16")
    for module, layer in full.items():
        for key, value in layer.items():
            np.testing.assert_array_equal(again[module][key], value)
    assert again["linear"]["w"] is not variant["linear"]["w"]  # a changed array is rounded as ever


def test_spectrum_stats():
    stats = compress.spectrum_stats(np.array([1.0, 1.0, 1.0, 1.0]))
    assert stats["effective_rank"] == pytest.approx(4) and stats["stable_rank"] == pytest.approx(4)
    assert compress.spectrum_stats(np.array([1.0, 0.0]))["effective_rank"] == pytest.approx(1)


def _with_dead_units(params):
    out = compress.copy_params(params)
    w = np.array(out["linear"]["w"])
    b = np.array(out["linear"]["b"])
    w[:, :20] = 0
    b[:20] = -0.5  # relu(0·x − 0.5) = 0: dead
    w[:, 20:25] = 0
    b[20:25] = 0.3  # constant output: alive, must be kept
    nxt = np.array(out["linear_1"]["w"])
    nxt[40:50] = 0  # nothing reads units 40..49 of linear
    out["linear"] = {"w": w, "b": b}
    out["linear_1"] = dict(out["linear_1"], w=nxt)
    return out


def test_drop_dead_units_is_lossless(params):
    images = np.random.default_rng(5).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    dead = _with_dead_units(params)
    slim = compress.drop_dead_units(dead)
    assert slim["linear"]["w"].shape == (512, 96 - 30)
    assert slim["linear_1"]["w"].shape == (96 - 30, 64)
    np.testing.assert_allclose(
        np.asarray(model.forward(slim, images)), np.asarray(model.forward(dead, images)), rtol=1e-4, atol=1e-4
    )
    assert compress.drop_dead_units(params)["linear"]["w"].shape == (512, 96)  # nothing dead: unchanged


def test_drop_dead_units_shrinks_factorized_layers_losslessly(params):
    images = np.random.default_rng(6).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    dead = _with_dead_units(params)
    factorized = svd_compress(
        dead,
        SvdConfig(0.5, "factorized", include_output=False),
        {n: compress.layer_svd(dead[n]["w"]) for n in model.DENSE_LAYERS},
    )
    slim = compress.drop_dead_units(factorized)
    # linear's 30 dead units: zero columns of its V and zero rows of linear_1's U, both dropped.
    assert slim["linear"]["v"].shape[1] == factorized["linear"]["v"].shape[1] - 30
    assert slim["linear_1"]["u"].shape[0] == factorized["linear_1"]["u"].shape[0] - 30
    np.testing.assert_allclose(
        np.asarray(model.forward(slim, images)), np.asarray(model.forward(factorized, images)), rtol=1e-4, atol=1e-4
    )


def test_output_kept_compresses_every_hidden_layer(params, svds):
    out = svd_compress(params, SvdConfig(0.25, "factorized", include_output=False), svds)
    assert [n for n in model.DENSE_LAYERS if "u" in out[n]] == list(model.HIDDEN_LAYERS)
    assert out["linear_3"]["u"].shape == (64, 8) and out["linear_4"]["w"] is params["linear_4"]["w"]


def test_layer_fractions_and_only(params, svds):
    config = SvdConfig(0.5, layer_fractions=(("linear_1", 0.1),), only=("linear", "linear_1"))
    ranks = choose_ranks(config, svds)
    assert ranks == {"linear": 48, "linear_1": 6}
    out = svd_compress(params, config, svds)
    assert out["linear_2"]["w"] is params["linear_2"]["w"]
    with pytest.raises(ConfigError, match="unknown layer"):
        SvdConfig(only=("conv2_d",))
    with pytest.raises(ConfigError, match="unknown dense layer"):
        svd_compress(params, SvdConfig(only=("linear_7",)), svds)
    with pytest.raises(ConfigError, match="fraction of linear"):
        SvdConfig(layer_fractions=(("linear", 1.5),))


@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5])
def test_param_budget_is_respected_and_uses_it(svds, budget):
    layers = model.DENSE_LAYERS
    ranks = compress.ranks_for_budget(svds, layers, budget)
    dense = sum(svds[n].u.shape[0] * svds[n].vt.shape[1] for n in layers)
    cost = sum(k * (svds[n].u.shape[0] + svds[n].vt.shape[1]) for n, k in ranks.items())
    assert cost <= budget * dense
    # Directions that do not fit are skipped, cheaper ones still taken: what is left
    # unspent is less than the cheapest direction of any layer that could still grow.
    growable = [n for n in layers if ranks[n] < len(svds[n].s)]
    assert budget * dense - cost < min(svds[n].u.shape[0] + svds[n].vt.shape[1] for n in growable)
    config = SvdConfig(param_budget=budget, form="factorized")
    assert choose_ranks(config, svds) == ranks


def test_zhu_gupta_schedule():
    assert compress.zhu_gupta_sparsity(0, 0.8, 0, 100) == 0.0
    assert compress.zhu_gupta_sparsity(100, 0.8, 0, 100) == pytest.approx(0.8)
    assert compress.zhu_gupta_sparsity(500, 0.8, 0, 100) == pytest.approx(0.8)
    values = [compress.zhu_gupta_sparsity(t, 0.8, 0, 100) for t in range(0, 101, 10)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[1] - values[0] > values[-1] - values[-2]  # prunes fast early, slowly late


def test_gradual_pruning_reaches_exact_sparsity(params):
    from lowrank_core.finetune import FinetuneConfig, gradual_prune_dense

    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, SPEC.feature_dim)).astype(np.float32)
    labels = rng.integers(0, 10, 256).astype(np.int32)
    dense = measure.dense_params(params)
    finetune = dataclasses.replace(FinetuneConfig.labels_only(8), batch_size=32)
    out, masks = gradual_prune_dense(dense, features, labels, finetune, tuple(dense), 0.7, "layer", every=2)
    for name in model.DENSE_LAYERS:
        assert np.mean(out[name]["w"] == 0) == pytest.approx(0.7, abs=1e-3)
        assert not np.array_equal(out[name]["b"], dense[name]["b"])  # it trained
    with pytest.raises(ConfigError, match="gradual pruning is unstructured"):
        PruneConfig(0.5, structured=True, schedule="gradual")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_cli_grid_and_rank_text_never_escape_as_other_errors(text):
    import argparse

    from lowrank_core import cli
    from lowrank_core.errors import LowrankError

    try:
        grid = cli._parse_grid(text)
    except LowrankError:
        grid = None
    if grid is not None:  # accepted: a sweep's worth of finite values, a range's inside its ends
        assert 1 <= len(grid) <= cli.MAX_GRID and all(math.isfinite(v) for v in grid)
        if ":" in text:
            start, stop, _ = (float(v) for v in text.split(":"))
            assert grid[0] == round(start, 10) and all(start - 1e-9 <= v <= stop + 1e-6 for v in grid)
        else:
            assert grid == [float(v) for v in text.split(",")]
    from lowrank_core.methods import svd

    parser = argparse.ArgumentParser()
    svd.add_arguments(parser)
    for option in ("--rank-fraction", "--layer-ranks", "--layer-fractions", "--param-budget", "--energy"):
        argv = [f"{option}={text}"]
        try:
            config = svd.config_from_args(parser.parse_args(argv))
        except LowrankError:
            continue
        assert 0 < config.rank_fraction <= 1


@settings(max_examples=100, deadline=None)
@given(
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.sampled_from(model.DENSE_LAYERS + ("x",)), max_size=3)
)
def test_energy_budget_and_layer_settings_are_validated(value, names):
    for make, ok in (
        (lambda: SvdConfig(energy=value), 0 < value <= 1),
        (lambda: SvdConfig(param_budget=value), 0 < value <= 1),
        (
            lambda: SvdConfig(layer_fractions=tuple((n, value) for n in names)),
            all(n in model.DENSE_LAYERS for n in names)
            and len(set(names)) == len(names)
            and (not names or 0 < value <= 1),
        ),
    ):
        if ok:
            make()
        else:
            with pytest.raises(ConfigError):
                make()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 2.0, -3.0]), min_size=1, max_size=60),
    st.floats(min_value=0.0, max_value=0.99),
)
def test_magnitude_mask_equals_stable_sort_definition(values, sparsity):
    # Heavy ties (the shipped checkpoint has millions of exact zeros): the
    # pruned set must be the stable argsort's first n, i.e. ties in position order.
    w = np.asarray(values, np.float32).reshape(-1, 1)
    mask = compress.magnitude_masks({"linear": {"w": w}}, ("linear",), sparsity, "layer")["linear"].ravel()
    n_prune = int(round(sparsity * w.size))
    expected = np.ones(w.size, bool)
    expected[np.argsort(np.abs(w).ravel(), kind="stable")[:n_prune]] = False
    np.testing.assert_array_equal(mask, expected)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=-(2.0**100), max_value=2.0**100, width=32), min_size=1, max_size=80),
    st.floats(min_value=0.0, max_value=0.99),
)
def test_magnitude_mask_equals_stable_sort_definition_over_many_exponents(values, sparsity):
    w = np.asarray(values, np.float32).reshape(-1, 1)
    mask = compress.magnitude_masks({"linear": {"w": w}}, ("linear",), sparsity, "layer")["linear"].ravel()
    expected = np.ones(w.size, bool)
    expected[np.argsort(np.abs(w).ravel(), kind="stable")[: int(round(sparsity * w.size))]] = False
    np.testing.assert_array_equal(mask, expected)


def test_magnitude_masks_of_float64_kernels_keep_their_precision():
    # Two magnitudes that float32 would merge into one: the smaller is pruned, not the first.
    w = np.array([[1.0 + 1e-12], [1.0]], np.float64)
    mask = compress.magnitude_masks({"linear": {"w": w}}, ("linear",), 0.5, "layer")["linear"]
    assert mask.ravel().tolist() == [True, False]
