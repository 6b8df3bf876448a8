"""Sequential closed-form refit of low-rank dense layers on calibration data.

Layers in network order. For a compressed layer with inputs X (what the
*already compressed* layers before it produce on the calibration images) and
target T = X₀W + b (the *original* layer's pre-activations on the original
path), the new factors are the rank-k reduced-rank regression of T on X, with
a ridge that pulls the fit towards the layer's own weights W:

1. B_ls = argmin ‖Xc·B − Tc‖² + λN‖B − W‖² on centred data:
   (XcᵀXc/N + λI)⁻¹(XcᵀTc/N + λW), with λ = RIDGE × the mean input variance;
2. the best rank-k B for that objective: B_ls projected on the top-k
   eigenvectors V_k of B_lsᵀ(XcᵀXc/N + λI)B_ls, so u = B_ls·V_k, v = V_kᵀ;
3. the bias refit from the means, b' = mean(T) − mean(X)·u·v.

Each layer corrects the error the layers before it made, in closed form and
without a gradient step (the local update of SVD-LLM; the reconstruction AIMET
applies after channel pruning). The pull towards W keeps a fit of millions of
weights from 5,000 images from overfitting them: λ → 0 is the plain refit,
λ → ∞ the truncation of W itself. RIDGE = 10 was chosen among 1e-4 … 1,000
by accuracy on 5,000 *training* images outside the calibration set (never on
test images). With X = X₀ at full rank the fit is exactly W, for any λ.
A layer left uncompressed keeps its weights and passes the compressed inputs on.

After structured pruning (or dead-unit removal) the kept units are fit to their
originals' pre-activations (:func:`lowrank_core.compress.kept_units` says which
they are) from the inputs the pruned, compressed layers before them give, so
the refit corrects the pruning's error as well as the truncation's.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from typing import Mapping, NamedTuple

import numpy as np
import scipy.linalg

from lowrank_core import model

RIDGE = 10.0  # λ relative to the mean input variance (see the module docstring for how it was chosen)
# What a calibration path keeps of variants it refit, so that a candidate sharing their first layers
# (the advisor's bisection tries many) reuses those layers' factors and the next layer's fit.
FIT_CACHE_BYTES = 160 * 2**20
FACTOR_CACHE_BYTES = 64 * 2**20


class _Fit(NamedTuple):
    """The parts of one layer's ridge fit that do not depend on its rank."""

    live: np.ndarray  # inputs that are ever non-zero (the others get zero rows of u)
    mean_x: np.ndarray
    mean_t: np.ndarray
    chol: np.ndarray  # R with R Rᵀ = G_λ on the live inputs
    z: np.ndarray  # R⁻¹ (XcᵀTc / N + λ·prior)


def _fit(x: np.ndarray, target: np.ndarray, prior: np.ndarray) -> _Fit:
    """With G_λ = XcᵀXc/N + λI = R Rᵀ and Z = R⁻¹(XcᵀTc/N + λ·prior) the ridge fit is B_ls = R⁻ᵀZ.
    Products in float32 (the weights' precision), the factorization and solves in float64."""
    live = np.flatnonzero(x.any(axis=0))
    mean_x, mean_t = x.mean(axis=0), target.mean(axis=0)
    xc = x[:, live] - mean_x[live]
    gram = (xc.T @ xc).astype(np.float64) / x.shape[0]
    cross = (xc.T @ (target - mean_t)).astype(np.float64) / x.shape[0]
    lam = RIDGE * max(float(np.trace(gram)) / max(live.size, 1), 1e-12)
    gram[np.diag_indices_from(gram)] += lam
    cross += lam * prior[live]
    chol = scipy.linalg.cholesky(gram, lower=True)
    return _Fit(live, mean_x, mean_t, chol, scipy.linalg.solve_triangular(chol, cross, lower=True))


def _rank_k(fit: _Fit, rank: int, inputs: int, eigenvectors: np.ndarray | None = None):
    """(u, v, b) of the best rank-k B = u·v: B_ls projected on the top-k eigenvectors V_k of ZᵀZ
    (the minimizer of ‖Xc·B − Tc‖² + λN‖B − prior‖² over rank ≤ k), the bias from the means.
    ``eigenvectors``: all of ZᵀZ's, largest first, when already known."""
    n = fit.z.shape[1]
    k = min(rank, n)
    if eigenvectors is not None:
        v_k = eigenvectors[:, :k]
    else:
        _, vecs = scipy.linalg.eigh(fit.z.T @ fit.z, subset_by_index=(n - k, n - 1))
        v_k = vecs[:, ::-1]  # largest first
    u = np.zeros((inputs, k))
    u[fit.live] = scipy.linalg.solve_triangular(fit.chol.T, fit.z @ v_k, lower=False)  # B_ls V_k
    return u, v_k.T, fit.mean_t - (fit.mean_x @ u) @ v_k.T


def _dense(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x·W + b from the non-zero rows and columns of W only (the rest add exact zeros)."""
    rows, cols = np.flatnonzero(w.any(axis=1)), np.flatnonzero(w.any(axis=0))
    out = np.broadcast_to(b, (x.shape[0], b.shape[0])).copy()
    out[:, cols] += x[:, rows] @ w[np.ix_(rows, cols)]
    return out


class CalibrationPath:
    """The checkpoint's own dense stack on the calibration images: every layer's
    pre-activations (the refit's targets), and — for the first compressed layer of a
    variant, whose inputs are the checkpoint's own — its rank-independent fit (cached)."""

    def __init__(self, params: Mapping, calibration: np.ndarray):
        self.names = tuple(model.dense_layer_names(params))
        self.features = np.asarray(calibration, np.float32)
        self.live_out = {n: np.flatnonzero(np.asarray(params[n]["w"]).any(axis=0)) for n in self.names}
        self._weights = [
            (np.asarray(params[n]["w"], np.float32), np.asarray(params[n]["b"], np.float32)) for n in self.names
        ]
        self.targets, x = [], self.features
        for name in self.names:
            self.targets.append(_dense(x, np.asarray(params[name]["w"], np.float32), np.asarray(params[name]["b"])))
            x = np.maximum(self.targets[-1], 0.0)
        self._fits: dict[str, _Fit] = {}
        self._eigenvectors: dict[tuple, np.ndarray] = {}  # the last two (layer, units) asked for
        self._lock, self._eigen_lock = threading.Lock(), threading.Lock()
        self.fits_by_prefix = _BoundedStore(FIT_CACHE_BYTES)  # by what the layers before did
        self.factors_by_prefix = _BoundedStore(FACTOR_CACHE_BYTES)  # … and the layer's own rank

    def is_original(self, i: int, w: np.ndarray, b: np.ndarray) -> bool:
        """Whether (w, b) are the checkpoint's own weights of dense layer ``i``."""
        return np.array_equal(w, self._weights[i][0]) and np.array_equal(b, self._weights[i][1])

    def original_weights(self, i: int) -> np.ndarray:
        """The checkpoint's own kernel of dense layer ``i`` (the fit's prior)."""
        return self._weights[i][0]

    def inputs(self, i: int) -> np.ndarray:
        """The original inputs of dense layer ``i``."""
        return self.features if i == 0 else np.maximum(self.targets[i - 1], 0.0)

    def original_fit(self, i: int) -> _Fit:
        name = self.names[i]
        with self._lock:
            if name not in self._fits:
                prior = self._weights[i][0][:, self.live_out[name]]
                self._fits[name] = _fit(self.inputs(i), self.targets[i][:, self.live_out[name]], prior)
            return self._fits[name]

    def original_eigenvectors(self, i: int, fit: _Fit, units: np.ndarray) -> np.ndarray:
        """Every eigenvector of ZᵀZ, largest first, for layer ``i``'s fit from the checkpoint's own
        inputs restricted to ``units`` (``fit``): rank-independent, so a variant at another rank
        slices it instead of solving its eigenproblem again (of a 3,000-wide first layer, the
        largest part of a refit)."""
        key = (i, units.tobytes())
        with self._eigen_lock:
            if key not in self._eigenvectors:
                _, vecs = scipy.linalg.eigh(fit.z.T @ fit.z)
                while len(self._eigenvectors) >= 2:
                    self._eigenvectors.pop(next(iter(self._eigenvectors)))
                self._eigenvectors[key] = np.ascontiguousarray(vecs[:, ::-1])
            return self._eigenvectors[key]


class _BoundedStore:
    """A least-recently-used store of arrays (or tuples and dicts of them) by key, at most
    ``max_bytes`` of array data; thread-safe, never locked across the work that fills it."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self._bytes = max_bytes, 0
        self._items: collections.OrderedDict[bytes, tuple[object, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: bytes, value) -> None:
        size = _nbytes(value)
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            while self._bytes + size > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1]
            self._items[key] = (value, size)
            self._bytes += size


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else ()
    return sum(_nbytes(part) for part in parts)


def _refit_layer(fit: _Fit, w: np.ndarray, b: np.ndarray, live_out: np.ndarray, rank: int, eigenvectors=None) -> dict:
    """One layer's factors; outputs outside ``live_out`` (dead units: a zero column of W)
    stay exactly as they were (zero column, own bias), so they remain droppable downstream."""
    u, v_live, bias_live = _rank_k(fit, rank, w.shape[0], eigenvectors)
    v = np.zeros((u.shape[1], w.shape[1]))
    v[:, live_out] = v_live
    bias = np.asarray(b, np.float64).copy()
    bias[live_out] = bias_live
    return {"u": u.astype(np.float32), "v": v.astype(np.float32), "b": bias.astype(np.float32)}


def _layer_fit(path: CalibrationPath, i: int, inputs: np.ndarray | None, rows, cols):
    """(fit, live, eigenvectors) for layer ``i`` of a network that kept the checkpoint's inputs
    ``rows`` and units ``cols``: the fit of its live units (``live``: their positions among
    ``cols``) from ``inputs`` — None: the checkpoint's own, whose fit is cached and sliced, its
    eigenvectors cached too; else they are None and the rank-k eigenproblem is solved."""
    live_out = path.live_out[path.names[i]]
    local = np.flatnonzero(np.isin(cols, live_out))
    if inputs is None:
        fit, pos = path.original_fit(i), np.searchsorted(live_out, cols[local])
        fit = fit._replace(mean_t=fit.mean_t[pos], z=fit.z[:, pos])
        return fit, local, path.original_eigenvectors(i, fit, pos)
    prior = path.original_weights(i)[np.ix_(rows, cols[local])]
    return _fit(inputs, path.targets[i][:, cols[local]], prior), local, None


def _compressed_layer(path: CalibrationPath, i: int, x_comp, w, b, rows, cols, rank: int, prefix) -> dict:
    """Layer ``i``'s refit factors, from ``path``'s stores when a variant whose layers before it did
    the same (``prefix``: their digest, updated here with this layer's) was refit already: the
    factors depend on nothing else, and the fit on nothing but the inputs and units."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    prefix.update(b"%d: %d rows, %d cols:" % (i, rows.size, cols.size) + rows.tobytes() + cols.tobytes())
    fit_key = prefix.digest()
    prefix.update(b"rank %d shape %r:" % (rank, w.shape) + b.tobytes())
    if (layer := path.factors_by_prefix.get(prefix.digest())) is not None:
        return dict(layer)
    found = None if x_comp is None else path.fits_by_prefix.get(fit_key)  # the first one's fit is kept anyway
    fit, live_out, eigenvectors = found or _layer_fit(path, i, x_comp, rows, cols)
    if x_comp is not None and found is None:
        path.fits_by_prefix.put(fit_key, (fit, live_out, None))
    layer = _refit_layer(fit, w, b, live_out, rank, eigenvectors)
    for array in layer.values():
        array.flags.writeable = False  # shared with later variants: nobody may change it in place
    path.factors_by_prefix.put(prefix.digest(), layer)
    return dict(layer)


def sequential_refit(params: Mapping, ranks: Mapping[str, int], path: CalibrationPath, units=None) -> dict:
    """``params`` with each layer in ``ranks`` replaced by refit factors ``u``, ``v`` and
    bias ``b`` (float32), fitted in network order to ``path``'s targets (the checkpoint's
    pre-activations on the calibration images). Other layers keep their weights. ``units``
    (:func:`lowrank_core.compress.kept_units`; default: all of them) says which of the checkpoint's
    inputs and units each layer of a pruned ``params`` kept: each kept unit is fit to its
    original's pre-activations from the inputs the pruned, compressed layers before it give."""
    out = {m: dict(ps) for m, ps in params.items()}
    x_comp = None  # the current layer's inputs once they differ from the checkpoint's
    prefix = hashlib.blake2b(digest_size=16)  # what the layers so far did (see _compressed_layer)
    last = len(path.names) - 1
    for i, name in enumerate(path.names):
        w, b = np.asarray(params[name]["w"], np.float32), np.asarray(params[name]["b"], np.float32)
        rows, cols = units[name] if units else (np.arange(w.shape[0]), np.arange(w.shape[1]))
        inputs = path.inputs(i) if x_comp is None else x_comp
        if name in ranks:
            out[name] = _compressed_layer(path, i, x_comp, w, b, rows, cols, ranks[name], prefix)
            y = (inputs @ out[name]["u"]) @ out[name]["v"] + out[name]["b"]
        elif x_comp is None and path.is_original(i, w, b):
            prefix.update(b"%d: original" % i)
            continue  # nothing changed yet: the original path
        else:
            if i < last:
                for part in (b"%d: dense %r:" % (i, w.shape), np.ascontiguousarray(w), b):
                    prefix.update(part)
            y = _dense(inputs, w, b)
        if i < last:
            x_comp = np.maximum(y, 0.0)
    return out
