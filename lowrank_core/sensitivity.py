"""Per-layer sensitivity, fast: one dense layer truncated at a time, everything
else intact, accuracy on every test image.

For a layer L the test images' inputs to L are computed once (the unchanged
layers before it); the rank-r output ``x U_r (S V)_r + b`` is built up
incrementally over increasing ranks (each rank adds its own slice of factors,
so a whole grid costs one product at the largest rank); only the layers after
L run per rank (in NumPy, see :func:`_tail_predictions`), on the product path
(dead units dropped, see :func:`measure.product_params`; unpadded: one shape
only ever runs). Factors are rounded to the
checkpoint's storage dtype as the engine stores them, so a cell equals the
engine's measurement of ``SvdConfig(rank_fraction=f, only=(L,))`` up to float
summation order.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import scipy.linalg

from lowrank_core import compress, measure, model, priority
from lowrank_core.errors import ConfigError

# 20 fractions, dense where trained layers are cheap to cut (the advisor chooses among these ranks).
DEFAULT_FRACTIONS = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.05,
    0.06,
    0.07,
    0.08,
    0.1,
    0.12,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
)


def _tail_predictions(tail: dict, hidden: np.ndarray) -> np.ndarray:
    """Predictions of the layers after a truncated one, from its relu'd output.

    In NumPy on all rows at once: on the 2-core CPU this ran the baseline's
    table ≈ 25 % faster than the same layers jitted in batches (OpenBLAS
    against XLA's dot), with the same accuracy in all 100 cells."""
    names = model.dense_layer_names(tail)
    x = hidden
    for i, name in enumerate(names):
        x = model.dense_layer(tail[name], x)
        if i < len(names) - 1:
            np.maximum(x, 0.0, out=x)
    priority.pause_point()  # in background work, an interactive request goes first
    return np.argmax(x, axis=-1)


def _rounded(values: np.ndarray, dtype) -> np.ndarray:
    return values.astype(dtype).astype(np.float32)


def svd_sensitivity(
    params,
    svd_of: Callable[[np.ndarray], compress.LayerSvd],
    features: np.ndarray,
    labels: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    layers: Sequence[str] | None = None,
    storage_dtype="float32",
    on_progress: Callable[[int, int], None] | None = None,
    input_factor: Callable[[str], np.ndarray] | None = None,
    on_row: Callable[[dict], None] | None = None,
    whitened_svd: Callable[[str, np.ndarray], compress.LayerSvd] | None = None,
) -> list[dict]:
    """Rows ``{layer, fraction, rank, accuracy, layer_params}``: each of ``layers``
    (default: every dense layer) truncated alone to rank ⌊f·min(m, n)⌋ (at least 1)
    for each fraction f, measured on all of ``features`` (the convolutions'
    test-set output). ``layer_params`` counts that layer factorized (k(m+n)+n).
    ``on_row(row)`` gets each row as soon as it is measured, layer by layer. With
    ``input_factor`` (the activation basis), ``whitened_svd(name, w)`` gives the SVD of LᵀW."""
    names = model.dense_layer_names(params)
    layers = tuple(layers or names)
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ConfigError(f"unknown dense layer {unknown[0]!r}; the network's are {', '.join(names)}")
    total, rows = len(layers) * len(fractions), []

    def progress(row: dict) -> None:
        rows.append(row)
        if on_row:
            on_row(row)
        if on_progress:
            on_progress(len(rows), total)

    x = np.asarray(features, np.float32)
    live_in = np.arange(x.shape[1])
    for i, name in enumerate(names):
        w, b = np.asarray(params[name]["w"], np.float32), np.asarray(params[name]["b"], np.float32)
        last = i == len(names) - 1
        live_out = np.arange(w.shape[1]) if last else _live_units(w, b, np.asarray(params[names[i + 1]]["w"]))
        if name in layers:
            factor = None if input_factor is None else input_factor(name)
            svd = svd_of(w) if factor is None else whitened_svd(name, w)
            tail = None if last else _tail(params, names[i + 1 :], live_out)
            truncated = _Truncated(name, svd, factor, b, live_in, live_out, w.shape)
            _layer_rows(truncated, x, tail, labels, fractions, storage_dtype, progress)
        if not last:
            x = np.maximum(x @ w[np.ix_(live_in, live_out)] + b[live_out], 0.0)
            live_in = live_out
    order = {f: j for j, f in enumerate(fractions)}
    return sorted(rows, key=lambda r: (names.index(r["layer"]), order[r["fraction"]]))


class _Truncated(NamedTuple):
    """One layer to truncate: its SVD (of W, or of LᵀW with ``factor`` L), bias, live units, shape."""

    name: str
    svd: compress.LayerSvd
    factor: np.ndarray | None
    b: np.ndarray
    live_in: np.ndarray
    live_out: np.ndarray
    shape: tuple[int, int]


def _tail(params, following: Sequence[str], live_out: np.ndarray) -> dict:
    """The layers after a truncated one in product form, reading only its live outputs."""
    tail = {t: params[t] for t in following}
    tail[following[0]] = dict(tail[following[0]], w=np.asarray(tail[following[0]]["w"])[live_out])
    return measure.product_params(tail, pad=False)


def _layer_rows(layer: _Truncated, x, tail, labels, fractions, storage_dtype, emit) -> None:
    """Emits one row per fraction: ``layer`` truncated to each rank, the rank-r output built up
    incrementally (each rank adds its own slice of factors), the following layers run per rank."""
    m, n = layer.shape
    by_rank: dict[int, list[float]] = {}
    for f in fractions:
        by_rank.setdefault(compress.rank_for_fraction(f, m, n), []).append(f)
    # Only live inputs and outputs take part: a dead unit's column of W_r is zero too. Directions past
    # the layer's numerical rank (σ exactly 0: dead units and σ < 1e-6·σ_max, see compress.layer_svd)
    # add nothing: project on the ones that exist only (the baseline's first layer: 3,000 → 1,499).
    reach = min(max(by_rank), int(np.count_nonzero(layer.svd.s)))
    u = layer.svd.u[:, :reach]
    if layer.factor is not None:  # activation basis: W_k = L⁻ᵀ U_k S_k V_kᵀ
        u = scipy.linalg.solve_triangular(layer.factor.T, u, lower=False).astype(np.float32)
    vt_live = layer.svd.vt[:, layer.live_out]
    y = np.broadcast_to(layer.b[layer.live_out], (x.shape[0], layer.live_out.size)).astype(np.float32)
    # The inputs projected on every direction the grid reaches, in one product (x is read once).
    projected = x @ _rounded(u[layer.live_in], storage_dtype)
    previous, accuracy = 0, None
    for rank in sorted(by_rank):
        lo, hi = min(previous, reach), min(rank, reach)
        sv = _rounded(layer.svd.s[lo:hi, None] * vt_live[lo:hi], storage_dtype)
        if accuracy is None or sv.any():  # directions past the layer's rank add exactly nothing
            y += projected[:, lo:hi] @ sv
            predictions = np.argmax(y, axis=-1) if tail is None else _tail_predictions(tail, np.maximum(y, 0.0))
            accuracy = float(np.mean(predictions == labels))
        previous = rank
        for f in by_rank[rank]:
            emit(
                {
                    "layer": layer.name,
                    "fraction": f,
                    "rank": rank,
                    "accuracy": accuracy,
                    "layer_params": rank * (m + n) + n,
                }
            )


def _live_units(w: np.ndarray, b: np.ndarray, w_next: np.ndarray) -> np.ndarray:
    """Indices of a hidden layer's units that can affect the output (see :func:`compress.drop_dead_units`)."""
    dead = ((w == 0).all(axis=0) & (b <= 0)) | (w_next == 0).all(axis=1)
    return np.flatnonzero(~dead)


def log_cell_edges(fractions) -> list[float]:
    """Cell boundaries for a heatmap of ``fractions`` on a log axis: geometric midpoints between
    neighbours, the outer edges as far out as the nearest midpoint (half a decade for a single cell)."""
    f = np.log(np.asarray(sorted(fractions), np.float64))
    if f.size == 1:
        return np.exp([f[0] - 0.5, f[0] + 0.5]).tolist()
    mids = (f[1:] + f[:-1]) / 2
    return np.exp(np.concatenate([[2 * f[0] - mids[0]], mids, [2 * f[-1] - mids[-1]]])).tolist()
