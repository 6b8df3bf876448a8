"""The calibrated SVD basis: a sequential, closed-form reduced-rank refit."""

import jax
import numpy as np
import pytest

from lowrank_core import compress, data as data_lib, engine, methods, model, refit
from lowrank_core.errors import ConfigError
from lowrank_core.finetune import FinetuneConfig
from lowrank_core.methods.svd import SvdConfig


@pytest.fixture(scope="module")
def tiny():
    params = jax.tree.map(np.asarray, model.init_params(jax.random.PRNGKey(0), model.TINY_SPEC))
    rng = np.random.default_rng(0)
    calibration = np.maximum(rng.standard_normal((2000, model.TINY_SPEC.feature_dim)), 0).astype(np.float32)
    return params, calibration


def _outputs(params, x):
    names = model.dense_layer_names(params)
    outs = []
    for i, name in enumerate(names):
        x = np.asarray(model.dense_layer(params[name], x))
        outs.append(x)
        x = np.maximum(x, 0) if i < len(names) - 1 else x
    return outs


def test_at_full_rank_the_refit_reproduces_every_layers_outputs(tiny):
    params, calibration = tiny
    full = {n: min(params[n]["w"].shape) for n in model.dense_layer_names(params)}
    refitted = refit.sequential_refit(params, full, refit.CalibrationPath(params, calibration))
    for got, want in zip(_outputs(refitted, calibration), _outputs(params, calibration)):
        assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()  # float32 rounding only


def _lam(x, ridge):
    live = np.flatnonzero(x.any(0))
    xc = x[:, live] - x[:, live].mean(0)
    return ridge * np.trace(xc.T @ xc / len(x)) / live.size


def _reference_fit(x, t, w, k, ridge):
    """Reduced-rank ridge regression towards w, written out independently: the rank-k
    least-squares solution of an augmented system [Xc; √(λN)·I]·B ≈ [Tc; √(λN)·w]."""
    mean_x, mean_t = x.mean(0), t.mean(0)
    live = np.flatnonzero(x.any(0))
    xc, tc = (x - mean_x)[:, live], t - mean_t
    root = np.sqrt(_lam(x, ridge) * len(x))
    a = np.vstack([xc, root * np.eye(live.size)])
    y = np.vstack([tc, root * w[live]])
    b_ls = np.linalg.lstsq(a, y, rcond=None)[0]
    _, _, vt = np.linalg.svd(a @ b_ls, full_matrices=False)
    b_k = np.zeros((x.shape[1], t.shape[1]))
    b_k[live] = b_ls @ vt[:k].T @ vt[:k]
    return b_k, mean_t - mean_x @ b_k


def _objective(x, t, w, b_k, bias, ridge):
    return np.sum((x @ b_k + bias - t) ** 2) + _lam(x, ridge) * len(x) * np.sum((b_k - w) ** 2)


def test_each_layer_matches_an_independent_reduced_rank_regression(tiny):
    params, calibration = tiny
    ranks = {"linear": 20, "linear_2": 10, "linear_3": 6}
    refitted = refit.sequential_refit(params, ranks, refit.CalibrationPath(params, calibration))
    x_orig = x_comp = calibration.astype(np.float64)
    for name in model.dense_layer_names(params):
        w, b = params[name]["w"].astype(np.float64), params[name]["b"].astype(np.float64)
        target = x_orig @ w + b
        layer = refitted[name]
        if name in ranks:
            b_k, bias = _reference_fit(x_comp, target, w, ranks[name], refit.RIDGE)
            got = layer["u"].astype(np.float64) @ layer["v"]
            assert layer["u"].shape[1] == ranks[name] and np.linalg.matrix_rank(got) == ranks[name]
            # The same optimum (the rank-k subspace itself may rotate where eigenvalues nearly tie).
            best = _objective(x_comp, target, w, b_k, bias, refit.RIDGE)
            assert _objective(x_comp, target, w, got, layer["b"], refit.RIDGE) <= best * (1 + 1e-4)
            y = x_comp @ got + layer["b"]
        else:
            np.testing.assert_array_equal(layer["w"], params[name]["w"])
            y = x_comp @ w + b
        x_orig, x_comp = np.maximum(target, 0), np.maximum(y, 0)


def test_refitting_beats_plain_truncation_on_the_calibration_outputs(tiny):
    params, calibration = tiny
    ranks = {"linear": 8, "linear_1": 8, "linear_2": 8, "linear_3": 8}
    refitted = refit.sequential_refit(params, ranks, refit.CalibrationPath(params, calibration))
    plain = methods.get("svd").finalize(
        methods.get("svd").build(
            params,
            SvdConfig(form="factorized", layer_ranks=tuple(ranks.items())),
            methods.BuildContext(
                svd=__import__("lowrank_core").compress.layer_svd, train_features=None, train_labels=None
            ),
        )[0],
        SvdConfig(form="factorized"),
    )
    want = _outputs(params, calibration)[-1]
    err = lambda p: np.linalg.norm(_outputs(p, calibration)[-1] - want)  # noqa: E731
    assert err(refitted) < err(plain)


@pytest.fixture
def tiny_engine(tiny_checkpoint, tmp_path):
    archive, ck = tiny_checkpoint
    return engine.Engine(ck, data_lib.load_cifar10(archive), cache_root=tmp_path / "cache")


def test_the_calibrated_basis_composes_with_fine_tuning_and_int8(tiny_engine):
    svd = SvdConfig(
        form="factorized",
        layer_ranks=(("linear", 12), ("linear_1", 8)),
        only=("linear", "linear_1"),
        basis="calibrated",
    )
    variant = methods.Variant(
        (("svd", svd), ("quantize", methods.get("quantize").config_type())), FinetuneConfig(steps=3)
    )
    record = tiny_engine.evaluate(variant, with_latency=False)
    assert record["facts"]["ranks"] == {"linear": 12, "linear_1": 8}
    params, _ = tiny_engine.build(variant)
    assert params["linear"]["u_q"].dtype == np.int8 and params["linear"]["u_q"].shape[1] == 12
    assert "calibrated refit" in record["label"]
    plain = tiny_engine.evaluate(methods.Variant.of("svd", svd), with_latency=False)
    assert plain["accuracy"] != record["accuracy"] or plain["bytes"] != record["bytes"]


def _pruned(params, sparsity):
    hidden = tuple(model.dense_layer_names(params)[:-1])
    return compress.prune_structured(params, hidden, sparsity)


def test_after_structured_pruning_each_kept_unit_is_fit_to_its_original(tiny):
    # AIMET's reconstruction after channel pruning: the pruned network's layers are refit to the
    # checkpoint's own pre-activations at the units they kept, from the inputs the pruned,
    # compressed layers before them give (an independent reduced-rank regression on those).
    params, calibration = tiny
    pruned = _pruned(params, 0.5)
    units = compress.kept_units(params, pruned)
    ranks = {"linear": 12, "linear_1": 6, "linear_2": 5}
    refitted = refit.sequential_refit(pruned, ranks, refit.CalibrationPath(params, calibration), units)
    x_orig = x_comp = calibration.astype(np.float64)
    for name in model.dense_layer_names(params):
        rows, cols = units[name]
        w, b = params[name]["w"].astype(np.float64), params[name]["b"].astype(np.float64)
        target = x_orig @ w + b
        layer = refitted[name]
        if name in ranks:
            prior, kept_target = w[np.ix_(rows, cols)], target[:, cols]
            b_k, bias = _reference_fit(x_comp, kept_target, prior, ranks[name], refit.RIDGE)
            got = layer["u"].astype(np.float64) @ layer["v"]
            assert got.shape == pruned[name]["w"].shape
            best = _objective(x_comp, kept_target, prior, b_k, bias, refit.RIDGE)
            assert _objective(x_comp, kept_target, prior, got, layer["b"], refit.RIDGE) <= best * (1 + 1e-4)
            y = x_comp @ got + layer["b"]
        else:
            np.testing.assert_array_equal(layer["w"], pruned[name]["w"])
            y = x_comp @ pruned[name]["w"].astype(np.float64) + pruned[name]["b"]
        x_orig, x_comp = np.maximum(target, 0), np.maximum(y, 0)


def test_pruning_then_a_data_basis_builds_through_the_engine(tiny_engine):
    prune = ("prune", methods.get("prune").config_type(sparsity=0.5, structured=True))
    for basis in ("activations", "calibrated"):
        svd = SvdConfig(
            form="factorized", layer_ranks=(("linear", 10), ("linear_1", 6)), only=("linear", "linear_1"), basis=basis
        )
        params, _ = tiny_engine.build(methods.Variant((prune, ("svd", svd))))
        assert params["linear"]["u"].shape == (tiny_engine.params["linear"]["w"].shape[0], 10)
        assert params["linear"]["v"].shape[1] == tiny_engine.params["linear"]["w"].shape[1] // 2
    # The activation basis on a pruned kernel whitens by the inputs it kept: L of that block of XᵀX.
    pruned = _pruned(tiny_engine.params, 0.5)
    rows, _ = compress.kept_units(tiny_engine.params, pruned)["linear_1"]
    full = tiny_engine.intermediates.input_factor("linear_1").astype(np.float64)
    block = tiny_engine.intermediates.input_factor("linear_1", rows).astype(np.float64)
    np.testing.assert_allclose(block @ block.T, (full @ full.T)[np.ix_(rows, rows)], rtol=1e-4, atol=1e-6)
    assert not np.triu(block, 1).any()


def test_kept_units_are_found_and_a_kernel_changed_otherwise_is_refused(tiny):
    params, _ = tiny
    pruned = _pruned(params, 0.5)
    units = compress.kept_units(params, pruned)
    for name in model.dense_layer_names(params):
        rows, cols = units[name]
        np.testing.assert_array_equal(pruned[name]["w"], params[name]["w"][np.ix_(rows, cols)])
    assert units["linear_4"][1].size == params["linear_4"]["w"].shape[1]  # the output layer keeps its units
    changed = dict(pruned, linear_1=dict(pruned["linear_1"], w=pruned["linear_1"]["w"] * 1.5))
    with pytest.raises(ConfigError, match="other than by dropping units"):
        compress.kept_units(params, changed)
    with pytest.raises(ConfigError, match="a layer was removed"):
        compress.kept_units(params, {n: p for n, p in pruned.items() if n != "linear_2"})


def test_another_rank_of_the_first_layer_reuses_its_eigenvectors(tiny, monkeypatch):
    params, calibration = tiny
    path = refit.CalibrationPath(params, calibration)
    refit.sequential_refit(params, {"linear": 20}, path)  # the first layer's eigenproblem, solved once
    calls = []
    real_eigh = refit.scipy.linalg.eigh
    monkeypatch.setattr(refit.scipy.linalg, "eigh", lambda *a, **k: calls.append(1) or real_eigh(*a, **k))
    refitted = refit.sequential_refit(params, {"linear": 12}, path)
    assert calls == []
    # The same optimum as solving the rank-12 eigenproblem directly.
    fit = path.original_fit(0)
    u, v, b = refit._rank_k(fit, 12, params["linear"]["w"].shape[0])
    x, target = calibration.astype(np.float64), _outputs(params, calibration)[0]
    w = params["linear"]["w"].astype(np.float64)
    want = _objective(x, target, w, u @ v, b, refit.RIDGE)
    got = refitted["linear"]["u"].astype(np.float64) @ refitted["linear"]["v"]
    assert _objective(x, target, w, got, refitted["linear"]["b"], refit.RIDGE) <= want * (1 + 1e-5)


def test_a_variant_sharing_its_first_layers_reuses_their_refit(tiny, monkeypatch):
    params, calibration = tiny
    path = refit.CalibrationPath(params, calibration)
    refit.sequential_refit(params, {"linear": 20, "linear_1": 10, "linear_2": 8}, path)
    fits = []
    real_fit = refit._fit
    monkeypatch.setattr(refit, "_fit", lambda *a: fits.append(1) or real_fit(*a))
    second = {"linear": 20, "linear_1": 10, "linear_2": 5}
    got = refit.sequential_refit(params, second, path)
    assert fits == []  # linear_2's fit depends on the layers before it only: kept from the first variant
    want = refit.sequential_refit(params, second, refit.CalibrationPath(params, calibration))
    assert len(fits) == 3  # a fresh path fits all three layers again
    for name in second:
        for part in ("u", "v", "b"):
            np.testing.assert_array_equal(got[name][part], want[name][part])
    # A layer left dense takes part in the key by its weights: the same ranks after a changed
    # linear_1 are refit again, as a fresh path would, never served the unchanged network's factors.
    ranks = {"linear": 20, "linear_2": 5}
    unchanged = refit.sequential_refit(params, ranks, path)
    changed = dict(params, linear_1=dict(params["linear_1"], b=params["linear_1"]["b"] + 1.0))
    other = refit.sequential_refit(changed, ranks, path)
    fresh = refit.sequential_refit(changed, ranks, refit.CalibrationPath(params, calibration))
    np.testing.assert_array_equal(other["linear_2"]["u"], fresh["linear_2"]["u"])
    assert not np.array_equal(other["linear_2"]["u"], unchanged["linear_2"]["u"])
    with pytest.raises(ValueError):
        got["linear"]["u"][0, 0] = 1.0  # shared with later variants: read-only


def test_the_prefix_stores_keep_the_most_recently_used_within_their_bytes():
    store = refit._BoundedStore(max_bytes=3 * 800)
    for key in (b"a", b"b", b"c"):
        store.put(key, {"u": np.zeros(100)})  # 800 bytes each
    assert store.get(b"a") is not None  # now the most recently used
    store.put(b"d", (np.zeros(100), None))
    assert store.get(b"b") is None and all(store.get(k) is not None for k in (b"a", b"c", b"d"))
    store.put(b"huge", np.zeros(1000))  # larger than the whole store: not kept, nothing dropped for it
    assert store.get(b"huge") is None and store.get(b"c") is not None
