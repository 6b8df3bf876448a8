"""The arithmetic of the compression methods: pure functions from a params
tree to a params tree (their configs, builds and versions live in
:mod:`lowrank_core.methods`, one module per method).

As in dm-haiku's ``examples/mnist_pruning.py``, nothing here mutates its
input; each returns a new tree that :func:`lowrank_core.model.forward` runs as is:

* truncated SVD: thin SVDs, rank rules, the budget allocation, factors;
* magnitude pruning, unstructured (masked in place) or structured (hidden
  units dropped, matrices physically smaller), and the Zhu & Gupta schedule;
* int8 per-output-column symmetric quantization (stored ``<key>_q`` + ``<key>_scale``);
* lossless dead-unit removal and removal of hidden dense layers;
* spectrum statistics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from lowrank_core import model
from lowrank_core.errors import ConfigError

Params = dict[str, dict[str, np.ndarray]]


def copy_params(params: Mapping) -> Params:
    """A new tree of new layer dicts holding the same arrays (methods never mutate their input)."""
    return {m: dict(ps) for m, ps in params.items()}


# --------------------------------------------------------------------------
# Truncated SVD


def rank_for_fraction(fraction: float, m: int, n: int) -> int:
    """k = max(1, ⌊f · min(m, n)⌋)."""
    return max(1, int(math.floor(fraction * min(m, n) + 1e-9)))


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ energy · Σ σ²."""
    cumulative = np.cumsum(np.square(singular_values.astype(np.float64)))
    return int(min(len(cumulative), np.searchsorted(cumulative, energy * cumulative[-1] * (1 - 1e-12)) + 1))


def break_even_rank(m: int, n: int) -> float:
    """mn/(m+n): above this rank the factorized pair holds more weights than W."""
    return m * n / (m + n)


@dataclasses.dataclass(frozen=True, eq=False)
class LayerSvd:
    """Thin SVD of one weight matrix: ``W = U diag(s) Vt``."""

    u: np.ndarray  # m × r
    s: np.ndarray  # r
    vt: np.ndarray  # r × n


def _live_block(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows and columns of ``w`` that are not all zero."""
    return np.flatnonzero(w.any(axis=1)), np.flatnonzero(w.any(axis=0))


def layer_svd(w: np.ndarray) -> LayerSvd:
    """Thin SVD, computed in float64 for accuracy and stored as float32.

    All-zero rows and columns (a trained layer's dead units: 40–60 % of the
    baseline's) are left out of the decomposition and put back as zeros. That
    is exact — W = [W' 0; 0 0] has W's singular triplets plus zero ones — and
    3–6× faster, since an SVD costs m·n·min(m, n). The live block itself goes
    through its Gram matrix (:func:`_gram_svd`, ≈ 3× faster than LAPACK's
    divide-and-conquer SVD). Singular values past the block's numerical rank
    are exactly 0 and their vectors zero: they add nothing to any truncation."""
    w = np.asarray(w, np.float64)
    m, n = w.shape
    rows, cols = _live_block(w)
    u = np.zeros((m, min(m, n)), np.float32)
    s = np.zeros(min(m, n), np.float32)
    vt = np.zeros((min(m, n), n), np.float32)
    if rows.size and cols.size:
        u_live, s_live, vt_live = _gram_svd(w[np.ix_(rows, cols)])
        k = s_live.size
        u[rows, :k], s[:k], vt[:k, cols] = u_live, s_live, vt_live
    return LayerSvd(u, s, vt)


GRAM_FLOOR = 1e-12  # eigenvalues of the Gram matrix below this share of the largest are noise: σ < 1e-6·σ_max


def _gram_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of a float64 matrix through the eigenvectors of its smaller Gram
    matrix: for AᵀA = V Λ Vᵀ, σ = √λ and U = A V / σ.

    In float64 an eigenvalue is accurate to ≈ 2e-16·λ_max, so σ down to
    1e-6·σ_max come out within ≈ 1e-4 relative and the leading subspaces (all a
    truncation uses: U_k S_k = A V_k, so W_k = A V_k V_kᵀ) to ≈ 1e-12; directions
    with σ below 1e-6·σ_max — numerically A's null space, far below a float16
    or float32 weight's resolution — are returned as σ = 0 with zero vectors."""
    import scipy.linalg  # here, not at import: the pages' first paint does not need it

    tall = a.shape[0] >= a.shape[1]
    gram = a.T @ a if tall else a @ a.T
    eigenvalues, vectors = scipy.linalg.eigh(gram, driver="evr", overwrite_a=True)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]  # descending
    keep = int(np.count_nonzero(eigenvalues > max(eigenvalues[0], 0.0) * GRAM_FLOOR))
    s = np.zeros(eigenvalues.size)
    s[:keep] = np.sqrt(eigenvalues[:keep])
    first = np.zeros((a.shape[0] if tall else a.shape[1], eigenvalues.size))
    first[:, :keep] = ((a @ vectors[:, :keep]) if tall else (vectors[:, :keep].T @ a).T) / s[:keep]
    second = np.zeros_like(vectors)
    second[:, :keep] = vectors[:, :keep]
    return (first, s, second.T) if tall else (second, s, first.T)


GRAM_CONDITION = 1e10  # below it, σ from the Gram matrix's eigenvalues are accurate to ~1e-6 relative


def singular_values(w: np.ndarray) -> np.ndarray:
    """Singular values of ``w`` (descending, float64), for spectra.

    As :func:`layer_svd`, all-zero rows and columns are left out (their values
    are exactly 0). When the live block's Gram matrix is well conditioned
    (λ_max/λ_min ≤ GRAM_CONDITION, e.g. any random initialization) σ = √eig(WᵀW)
    is 3–4× faster than an SVD and accurate to about 1e-6 relative; otherwise
    the SVD gives them."""
    w = np.asarray(w, np.float64)
    out = np.zeros(min(w.shape))
    rows, cols = _live_block(w)
    if not (rows.size and cols.size):
        return out
    live = w[np.ix_(rows, cols)]
    gram = live.T @ live if live.shape[0] >= live.shape[1] else live @ live.T
    eig = np.linalg.eigvalsh(gram)[::-1]
    if eig[-1] > 0 and eig[0] / eig[-1] <= GRAM_CONDITION:
        values = np.sqrt(eig)
    else:
        values = np.linalg.svd(live, compute_uv=False)
    out[: values.size] = values
    return out


def rank_approximated_weight(svd: LayerSvd, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's function done right: (U_k, m×k) and (S_k V_kᵀ, k×n)."""
    return svd.u[:, :k], svd.s[:k, None] * svd.vt[:k]


def ranks_for_budget(svds: Mapping[str, LayerSvd], layers: tuple[str, ...], budget: float) -> dict[str, int]:
    """Ranks that keep the most energy within ``budget`` × Σ m·n parameters.

    Each singular direction i of a layer costs m + n parameters (one column of
    U_k, one row of S_k V_kᵀ) and is worth its share σ_i²/Σσ² of that layer's
    energy; directions are taken greedily by worth per parameter. Because σ is
    descending, each layer receives a prefix, i.e. a rank (at least 1).
    """
    allowed = budget * sum(svds[n].u.shape[0] * svds[n].vt.shape[1] for n in layers)
    # Every layer keeps at least rank 1; the rest of the budget goes greedily.
    ranks = dict.fromkeys(layers, 1)
    spent = float(sum(svds[n].u.shape[0] + svds[n].vt.shape[1] for n in layers))
    candidates = []
    for name in layers:
        s2 = np.square(svds[name].s.astype(np.float64))
        cost = svds[name].u.shape[0] + svds[name].vt.shape[1]
        candidates.extend((share / cost, name, cost) for share in (s2 / s2.sum())[1:])
    for _, name, cost in sorted(candidates, key=lambda c: -c[0]):
        if spent + cost > allowed:
            continue  # a cheaper direction of another layer may still fit
        ranks[name] += 1
        spent += cost
    return ranks


# --------------------------------------------------------------------------
# Spectra


def spectrum_stats(s: np.ndarray) -> dict:
    """Summary numbers of one singular-value spectrum (descending ``s``)."""
    s = np.asarray(s, np.float64)
    energy = np.square(s)
    p = s / s.sum()
    p = p[p > 0]
    return {
        "rank_90": rank_for_energy(s, 0.90),
        "rank_95": rank_for_energy(s, 0.95),
        "rank_99": rank_for_energy(s, 0.99),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),  # Roy & Vetterli: exp(entropy)
        "stable_rank": float(energy.sum() / energy[0]),  # ‖W‖_F² / ‖W‖₂²
        "max_rank": int(len(s)),
        "nonzero": int(np.count_nonzero(s)),  # numerical rank: layer_svd returns σ < 1e-6·σ_max as exact zeros
    }


def spectrum_curves(s: np.ndarray) -> dict[str, np.ndarray]:
    """Singular values, normalized by the largest, and cumulative energy share."""
    s = np.asarray(s, np.float64)
    energy = np.cumsum(np.square(s))
    return {"singular_values": s, "normalized": s / s[0], "cumulative_energy": energy / energy[-1]}


# --------------------------------------------------------------------------
# Pruning


def zhu_gupta_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t₁ − t₀))³, clipped to [t₀, t₁]."""
    progress = min(1.0, max(0.0, (step - begin) / max(1, end - begin)))
    return final + (initial - final) * (1.0 - progress) ** 3


def prunable_layers(params: Mapping) -> tuple[str, ...]:
    """Every kernel magnitude pruning may touch: convolutions, then dense layers."""
    return tuple(model.conv_layer_names(params)) + tuple(model.dense_layer_names(params))


def magnitude_masks(params: Mapping, layers: tuple[str, ...], sparsity: float, scope: str) -> dict[str, np.ndarray]:
    """Boolean keep-masks of the kernels of ``layers`` (biases excluded), exactly at ``sparsity``,
    per layer (``scope="layer"``) or under one threshold across them (``"global"``).

    Ties at the threshold are broken by position so the count is exact.
    """
    kernels = {name: np.asarray(params[name]["w"]) for name in layers if "w" in params[name]}

    def keep_top(values: np.ndarray, n_prune: int) -> np.ndarray:
        # The same set a stable argsort's first n_prune would give (smallest magnitudes, ties at
        # the threshold taken in position order). The threshold is read off a full sort: NumPy's
        # vectorized sort (x86-simd-sort) beats both a partition and a radix select here,
        # measured on the baseline's layers (docs/measurements.md).
        values = np.asarray(values)
        magnitude = np.abs(values.astype(np.float32) if values.dtype == np.float16 else values).ravel()
        keep = np.ones(magnitude.size, bool)
        if n_prune <= 0:
            return keep
        threshold = np.sort(magnitude)[n_prune - 1]
        below = magnitude < threshold
        keep[below] = False
        keep[np.flatnonzero(magnitude == threshold)[: n_prune - int(below.sum())]] = False
        return keep

    if scope == "layer":
        return {n: keep_top(w, int(round(sparsity * w.size))).reshape(w.shape) for n, w in kernels.items()}
    flat = np.concatenate([w.ravel() for w in kernels.values()])
    keep = keep_top(flat, int(round(sparsity * flat.size)))
    masks, offset = {}, 0
    for name, w in kernels.items():
        masks[name] = keep[offset : offset + w.size].reshape(w.shape)
        offset += w.size
    return masks


def prune_unstructured(params: Mapping, layers: tuple[str, ...], sparsity: float, scope: str) -> Params:
    """Zeroes the smallest-magnitude kernel weights of ``layers`` (stored densely: no faster)."""
    out = copy_params(params)
    for name, mask in magnitude_masks(params, layers, sparsity, scope).items():
        out[name]["w"] = np.where(mask, params[name]["w"], 0).astype(np.float32)
    return out


def prune_structured(params: Mapping, layers: tuple[str, ...], sparsity: float) -> Params:
    """Drops the fraction ``sparsity`` of units of each hidden dense layer in ``layers``.

    A unit's score is the L2 norm of its incoming weights; the unit's column
    of ``w``, its bias and the matching row of the next layer are removed, so
    the matrices are physically smaller. Convolutions and the output layer
    keep their shapes.
    """
    out = copy_params(params)
    names = model.dense_layer_names(params)
    for name, nxt in zip(names[:-1], names[1:]):
        if name not in layers:
            continue
        w = np.asarray(out[name]["w"])
        n_units = w.shape[1]
        n_keep = max(1, n_units - int(round(sparsity * n_units)))
        scores = np.linalg.norm(w, axis=0)
        keep = np.sort(np.argsort(-scores, kind="stable")[:n_keep])
        out[name] = {"w": w[:, keep], "b": np.asarray(out[name]["b"])[keep]}
        out[nxt] = dict(out[nxt], w=np.asarray(out[nxt]["w"])[keep, :])
    return out


def kept_units(original: Mapping, params: Mapping) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For a network made from ``original`` by dropping hidden units (structured pruning,
    dead-unit removal) and nothing else before its dense kernels are changed: for each dense
    layer, which of ``original``'s inputs (rows) and units (columns) its kernel ``w`` kept.
    A layer of the original's shape is taken as itself. A column is found by its weights on
    the kept rows and its bias, exactly (pruning slices, it never rounds). ConfigError when the
    layers differ otherwise."""
    names = model.dense_layer_names(original)
    if model.dense_layer_names(params) != names:
        raise ConfigError(
            "the data bases calibrate the checkpoint's own layers, and a layer was removed before SVD "
            "(put SVD first, or use the weight basis)"
        )
    out, rows = {}, np.arange(np.asarray(original[names[0]]["w"]).shape[0])
    for name in names:
        w0, b0 = np.asarray(original[name]["w"], np.float32), np.asarray(original[name]["b"], np.float32)
        if "w" not in params[name]:
            raise ConfigError(f"{name} is already factorized or quantized; put SVD before int8 storage")
        w, b = np.asarray(params[name]["w"], np.float32), np.asarray(params[name]["b"], np.float32)
        if w.shape[0] != rows.size:
            raise ConfigError(f"{name}'s inputs are not a subset of the checkpoint's")
        cols = np.arange(w0.shape[1]) if w.shape == w0.shape else _matching_columns(w0[rows], b0, w, b, name)
        out[name], rows = (rows, cols), cols
    return out


def _matching_columns(w0: np.ndarray, b0: np.ndarray, w: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """The original column (and bias) each column of ``w`` is, each original used once."""
    index: dict[bytes, list[int]] = {}
    for j in range(w0.shape[1]):
        index.setdefault(w0[:, j].tobytes() + b0[j : j + 1].tobytes(), []).append(j)
    cols = []
    for j in range(w.shape[1]):
        found = index.get(np.ascontiguousarray(w[:, j]).tobytes() + b[j : j + 1].tobytes())
        if not found:
            raise ConfigError(
                f"{name} was changed before SVD other than by dropping units; the data bases calibrate "
                "the checkpoint's own units (put SVD first, or use the weight basis)"
            )
        cols.append(found.pop(0))
    return np.asarray(cols)


def sparsity_of(params: Mapping) -> dict[str, float]:
    """Fraction of exactly-zero kernel weights per layer."""
    return {n: float(np.mean(np.asarray(params[n]["w"]) == 0)) for n in prunable_layers(params) if "w" in params[n]}


def drop_dead_units(params: Mapping) -> Params:
    """Removes hidden units that provably never affect the output (lossless).

    A hidden unit is dead if its incoming column is all zero and its bias ≤ 0
    (relu always gives 0), or if its outgoing row in the next layer is all
    zero (nothing reads it). Weight decay and float16 storage leave many such
    units in a trained checkpoint; dropping them shrinks the matrices while
    every logit stays the same up to float rounding. Plain layers (``w``),
    factorized ones (a unit's incoming column is in ``v``, its outgoing row in
    the next layer's ``u``: an SVD of a layer with dead units keeps them as
    zero columns and rows) and int8 ones (``w_q`` with its per-column
    ``w_scale``; a zero int8 column is a zero column) are shrunk. Repeated until
    nothing changes, because dropping a unit can leave a zero row behind.
    """
    out = copy_params(params)
    names = model.dense_layer_names(params)
    changed = True
    while changed:
        changed = False
        for name, nxt in zip(names[:-1], names[1:]):
            # The matrix producing the units, and the next one reading them.
            into = next((k for k in ("w", "v", "w_q", "v_q") if k in out[name]), None)
            read = next((k for k in ("w", "u", "w_q", "u_q") if k in out[nxt]), None)
            if into is None or read is None:
                continue
            w, b, w_next = np.asarray(out[name][into]), np.asarray(out[name]["b"]), np.asarray(out[nxt][read])
            dead = ((w == 0).all(axis=0) & (b <= 0)) | (w_next == 0).all(axis=1)
            if dead.any() and not dead.all():
                keep = np.flatnonzero(~dead)
                shrunk = {into: w[:, keep], "b": b[keep]}
                if into.endswith("_q"):
                    scale = into[:-2] + "_scale"
                    shrunk[scale] = np.asarray(out[name][scale])[keep]
                out[name] = dict(out[name], **shrunk)
                out[nxt] = dict(out[nxt], **{read: w_next[keep]})
                changed = True
    return out


# --------------------------------------------------------------------------
# Quantization


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``w ≈ q * scale`` with ``q`` in −127..127."""
    w = np.asarray(w, np.float32)
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_dense(params: Mapping) -> Params:
    """Every dense matrix (``w``, or factors ``u``, ``v``) stored as int8 ``<key>_q``
    plus float32 per-column ``<key>_scale`` (see :func:`model.layer_matrix`)."""
    out = copy_params(params)
    for name in model.dense_layer_names(params):
        layer = dict(params[name])
        for key in model.MATRIX_KEYS:
            if key in layer:
                q, scale = quantize_int8(layer.pop(key))
                layer[f"{key}_q"], layer[f"{key}_scale"] = q, scale
        out[name] = layer
    return out


def dequantize(params: Mapping) -> tuple[Params, dict[str, tuple[str, ...]]]:
    """(float params, {layer: matrix keys that were int8}): the inverse view of :func:`quantize_dense`."""
    out, quantized = copy_params(params), {}
    for name, layer in params.items():
        keys = tuple(k for k in model.MATRIX_KEYS if f"{k}_q" in layer)
        if keys:
            plain = {k: v for k, v in layer.items() if not (k.endswith("_q") or k.endswith("_scale"))}
            plain.update({k: np.asarray(model.layer_matrix(layer, k), np.float32) for k in keys})
            out[name], quantized[name] = plain, keys
    return out, quantized


# --------------------------------------------------------------------------
# Layer removal


def remove_layers(params: Mapping, layers: tuple[str, ...], key_seed: int = 0) -> tuple[Params, tuple[str, ...]]:
    """Drops hidden dense layers and rewires the stack.

    Returns the new params and the names of the layers whose weights are new
    (re-initialized because their input width changed) and must be retrained.
    """
    for name in layers:
        if name not in model.dense_layer_names(params)[:-1]:
            hidden = ", ".join(model.dense_layer_names(params)[:-1])
            raise ConfigError(f"cannot remove {name!r}; removable layers are {hidden}")
    if len(set(layers)) != len(layers):
        raise ConfigError("each layer may be removed once")
    out = {m: dict(ps) for m, ps in params.items() if m not in layers}
    kept = model.dense_layer_names(out)
    rng = np.random.default_rng(key_seed)
    changed = []
    in_dim = model.spec_of(params).feature_dim
    for name in kept:
        w = np.asarray(out[name]["w"])
        if w.shape[0] != in_dim:
            # Close to Haiku's default Linear init (truncated normal, stddev 1/sqrt(fan_in)).
            std = 1.0 / math.sqrt(in_dim)
            new_w = np.clip(rng.standard_normal((in_dim, w.shape[1])), -2, 2) * std
            out[name] = {"w": new_w.astype(np.float32), "b": np.zeros(w.shape[1], np.float32)}
            changed.append(name)
        in_dim = out[name]["w"].shape[1]
    return out, tuple(changed)


def break_even_fraction(shapes) -> float:
    """The global rank fraction at which factorized layers of these (m, n)
    kernel shapes hold as many weights (and MACs) as the dense ones:
    Σ mn / Σ min(m, n)(m + n)."""
    return sum(m * n for m, n in shapes) / sum(min(m, n) * (m + n) for m, n in shapes)
