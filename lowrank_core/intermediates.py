"""Expensive intermediates every variant shares, each computed once and guarded
by its own lock, so one session's long computation never blocks a request
that does not need it.

* thin SVDs of weight matrices, keyed by the matrix's bytes (so a pipeline's
  already-compressed matrix gets its own), cached on disk;
* the convolutions' output on the test and on the training images, and the
  checkpoint's hidden layers' outputs on the test images;
* the singular values of the dense layers at the initialization the
  checkpoint's training config names (Haiku's or the whitened one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import threading
from typing import Callable

import numpy as np

from lowrank_core import compress, configs, measure, model, paths, priority, refit, train
from lowrank_core.data import Cifar10
from lowrank_core.fileio import atomic_write_bytes
from lowrank_core.finetune import Teacher
from lowrank_core.methods import BuildContext

CALIBRATION_IMAGES = 5000  # training images whose layer inputs calibrate activation-whitened SVD
CALIBRATION_SEED = 0


class KeyedLocks:
    """One lock per key, created on first use; a page waiting for one that background work
    holds does not make that work pause for it (:class:`priority.YieldingLock`)."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[object, priority.YieldingLock] = {}

    def __call__(self, key) -> priority.YieldingLock:
        with self._guard:
            return self._locks.setdefault(key, priority.YieldingLock())


def matrix_digest(matrix: np.ndarray) -> str:
    matrix = np.ascontiguousarray(matrix)
    digest = hashlib.sha256(str((matrix.shape, matrix.dtype.str)).encode())
    digest.update(memoryview(matrix).cast("B"))
    return digest.hexdigest()[:24]


class Intermediates:
    def __init__(
        self,
        params,
        metadata: dict,
        data: Cifar10,
        cache_dir: pathlib.Path,
        on_write_failure: Callable[[OSError], None],
    ):
        self.params, self.metadata, self.data = params, metadata, data
        self.cache_dir = pathlib.Path(cache_dir)
        self._on_write_failure = on_write_failure
        self._locks = KeyedLocks()
        self._svds: dict[str, compress.LayerSvd] = {}
        self._digests: dict[int, tuple[np.ndarray, str]] = {}  # id → (array kept alive, digest)
        self._features: dict[str, np.ndarray] = {}
        self._teacher_logits: dict[str, np.ndarray] = {}
        self._calibration_path: refit.CalibrationPath | None = None
        self._hidden: measure.HiddenActivations | None = None
        self._init_s: dict[str, np.ndarray] | None = None
        self._factors: dict[object, np.ndarray] = {}  # layer name, or (name, rows) of a pruned kernel
        self._energies: dict[str, dict[str, np.ndarray]] = {}
        self._whitened: dict[tuple, compress.LayerSvd] = {}  # (layer, kernel digest, rows) → SVD of LᵀW

    def _save(self, path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            self._on_write_failure(exc)

    # ---- SVDs, keyed by content ----

    def _digest(self, matrix: np.ndarray) -> str:
        known = self._digests.get(id(matrix))
        if known is not None and known[0] is matrix:
            return known[1]
        digest = matrix_digest(matrix)
        if any(matrix is np.asarray(layer.get("w")) for layer in self.params.values()):
            self._digests[id(matrix)] = (matrix, digest)  # the checkpoint's own matrices: hash once
        return digest

    def build_context(self, on_progress=None) -> BuildContext:
        """What a method's build may read: these SVDs, training features and labels, the
        activation bases and the calibration path, each computed once when first asked for."""
        return BuildContext(
            svd=self.svd_of,
            train_features=lambda: self.features("train"),
            train_labels=self.data.y_train,
            on_progress=on_progress,
            input_factor=self.input_factor,
            whitened_svd=self.whitened_svd,
            calibration_path=self.calibration_path,
            kept_units=self.kept_units,
            teacher=self.teacher,
        )

    def svd_of(self, matrix: np.ndarray) -> compress.LayerSvd:
        """Thin SVD of ``matrix`` (memory, then disk, then computed)."""
        digest = self._digest(np.asarray(matrix))
        with self._locks(("layer_svd", digest)):
            if digest in self._svds:
                return self._svds[digest]
            path = self.cache_dir / "layer_svd" / f"{digest}.npz"
            try:
                with np.load(path, allow_pickle=False) as npz:
                    svd = compress.LayerSvd(npz["u"], npz["s"], npz["vt"])
            except Exception:
                svd = compress.layer_svd(matrix)
                self._save(path, {"u": svd.u, "s": svd.s, "vt": svd.vt})
            self._svds[digest] = svd
            return svd

    def whitened_svd(self, name: str, w: np.ndarray, rows: np.ndarray | None = None) -> compress.LayerSvd:
        """The SVD of LᵀW, what the activation basis truncates, for dense layer ``name`` (L its
        :meth:`input_factor`, on the inputs ``rows`` a pruned kernel kept) and kernel ``w``
        (float32). LᵀW is formed once per kernel: forming it again only to look its SVD up by its
        bytes was most of a cached build's time."""
        w = np.asarray(w, np.float32)
        rows = _subset(rows, self.params[name]["w"].shape[0])
        key = (name, self._digest(w), None if rows is None else matrix_digest(rows))
        with self._locks(("whitened", key)):
            if key not in self._whitened:
                self._whitened[key] = self.svd_of(self.input_factor(name, rows).T @ w)
            return self._whitened[key]

    def kept_units(self, params) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Which of the checkpoint's inputs and units each dense layer of ``params`` kept
        (:func:`compress.kept_units`)."""
        return compress.kept_units(self.params, params)

    def layer_svds(self) -> dict[str, compress.LayerSvd]:
        """The checkpoint's dense layers' SVDs, in network order."""
        return {n: self.svd_of(self.params[n]["w"]) for n in model.dense_layer_names(self.params)}

    def singular_values_of(self, params, digest: str) -> dict[str, np.ndarray]:
        """Singular values of another checkpoint's dense layers (``digest``: its params
        file's sha256), cached on disk under the artifacts' shared spectra folder."""
        path = paths.artifacts_dir() / "cache" / "spectra" / f"{digest[:24]}.npz"
        names = model.dense_layer_names(params)
        with self._locks(("spectra", digest)):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    return {n: npz[n] for n in names}
            except Exception:
                values = {n: compress.singular_values(params[n]["w"]) for n in names}
                self._save(path, values)
                return values

    # ---- convolutions' output ----

    def features(self, split: str) -> np.ndarray:
        """(N, feature_dim) outputs of the convolutions on ``split``: "test", "train", or
        "train_flipped" (the training images mirrored left to right)."""
        with self._locks(("features", split)):
            if split not in self._features:
                images = self.data.x_train[:, :, ::-1] if split == "train_flipped" else getattr(self.data, f"x_{split}")
                self._features[split] = measure.conv_features(self.params, images)
            return self._features[split]

    def teacher(self, flip: bool) -> Teacher:
        """The checkpoint's logits on the training features (fine-tuning's distillation targets);
        with ``flip``, the mirrored images' features and the logits on them too."""
        splits = ("train", "train_flipped") if flip else ("train",)
        logits = []
        for split in splits:
            with self._locks(("teacher", split)):
                if split not in self._teacher_logits:
                    dense = measure.dense_params(self.params)
                    self._teacher_logits[split] = measure.logits_from_features(dense, self.features(split))
                logits.append(self._teacher_logits[split])
        if not flip:
            return Teacher(logits[0])
        return Teacher(logits[0], self.features("train_flipped"), logits[1])

    def hidden_activations(self) -> measure.HiddenActivations:
        """The checkpoint's hidden dense layers' outputs on the test set (product
        path; ≈ 190 MB for the baseline, computed when a variant first needs
        them): a variant that changes only later layers runs from there
        (:func:`measure.predict_from_features`)."""
        with self._locks("hidden_activations"):
            if self._hidden is None:
                self._hidden = measure.HiddenActivations(self.params, self.features("test"))
            return self._hidden

    # ---- calibration (activation-whitened SVD) ----

    def calibration_indices(self) -> np.ndarray:
        """The calibration set: CALIBRATION_IMAGES training images (never test
        images), chosen by a fixed seed so every run names the same ones."""
        n = self.data.x_train.shape[0]
        order = np.random.default_rng(CALIBRATION_SEED).permutation(n)
        return np.sort(order[: min(CALIBRATION_IMAGES, n)])

    def calibration_features(self) -> np.ndarray:
        """The convolutions' output on the calibration images (kept in memory: 5,000 × 3,072 floats)."""
        with self._locks("calibration_features"):
            if "calibration" not in self._features:
                images = self.data.x_train[self.calibration_indices()]
                self._features["calibration"] = measure.conv_features(self.params, images)
            return self._features["calibration"]

    def calibration_path(self) -> refit.CalibrationPath:
        """The checkpoint's dense stack on the calibration images (:class:`refit.CalibrationPath`)."""
        with self._locks("calibration_path"):
            if self._calibration_path is None:
                self._calibration_path = refit.CalibrationPath(self.params, self.calibration_features())
            return self._calibration_path

    def input_factor(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """L with L Lᵀ = XᵀX/N + λI over the inputs X of the checkpoint's dense
        layer ``name`` on the calibration set (λ = 1e-6 of the mean diagonal, so
        inputs that are always zero — dead units — keep it invertible); with ``rows``
        (the inputs a pruned kernel kept), the factor of that block of XᵀX/N + λI. Every
        layer's factor is computed in one pass over the calibration images (the
        convolutions run once), and cached on disk."""
        full = self._input_factor(name)
        rows = _subset(rows, full.shape[0])
        if rows is None:
            return full
        key = (name, matrix_digest(rows))
        with self._locks(("input_factor", key)):
            if key not in self._factors:
                block = np.asarray(full[rows], np.float64)  # (L Lᵀ)[rows, rows] = L[rows] L[rows]ᵀ
                self._factors[key] = np.linalg.cholesky(block @ block.T).astype(np.float32)
            return self._factors[key]

    def _input_factor(self, name: str) -> np.ndarray:
        with self._locks("input_factors"):
            if name not in self._factors:
                names = model.dense_layer_names(self.params)
                for layer in names:
                    try:
                        with np.load(self.cache_dir / "calibration" / f"{layer}.npz", allow_pickle=False) as npz:
                            self._factors[layer] = npz["factor"]
                    except Exception:
                        pass
                if name not in self._factors:
                    x = self.calibration_features()
                    for layer in names:
                        if layer not in self._factors:
                            factor = _cholesky_of_inputs(x)
                            self._save(self.cache_dir / "calibration" / f"{layer}.npz", {"factor": factor})
                            self._factors[layer] = factor
                        if layer != names[-1]:
                            x = np.maximum(x @ self.params[layer]["w"] + self.params[layer]["b"], 0.0)
            return self._factors[name]

    def data_singular_values(self) -> dict[str, np.ndarray]:
        """σ(LᵀW) of each dense layer: the layer as its inputs on the calibration
        images see it (L Lᵀ = XᵀX/N + λI), cached on disk. They are the singular values of
        the activation basis's SVDs (:meth:`whitened_svd`, which the sensitivity table and the
        SVD method truncate), so computing either computes both."""
        with self._locks("data_spectra"):
            path = self.cache_dir / "calibration" / "data_singular_values.npz"
            names = model.dense_layer_names(self.params)
            try:
                with np.load(path, allow_pickle=False) as npz:
                    return {n: npz[n] for n in names}
            except Exception:
                pass
            values = {n: np.asarray(self.whitened_svd(n, self.params[n]["w"]).s, np.float64) for n in names}
            self._save(path, values)
            return values

    def output_energies(self, basis: str) -> dict[str, np.ndarray]:
        """Each dense layer's output energy on the calibration images per direction of ``basis``'s
        SVD, in its order: truncating after k directions leaves Σ_{i>k} of them as ‖X(W − W_k)‖².
        "activations": σ_i(LᵀW)². "weights": σ_i(W)²·‖Lᵀu_i‖² (the discarded σ_i u_i v_iᵀ are
        orthogonal in v, so their output energies add up)."""
        if basis != "weights":
            return {n: np.square(s) for n, s in self.data_singular_values().items()}
        with self._locks("weight_output_energies"):
            if "weights" not in self._energies:
                self._energies["weights"] = {
                    n: np.square(svd.s.astype(np.float64))
                    * np.square(np.linalg.norm(self.input_factor(n).T @ svd.u, axis=0), dtype=np.float64)
                    for n, svd in self.layer_svds().items()
                }
            return self._energies["weights"]

    # ---- initialization ----

    def init_singular_values(self) -> dict[str, np.ndarray]:
        """Singular values of each dense layer at the initialization the
        checkpoint was trained from (its config's init, seed and network; the
        whitened init is rebuilt from the same training split)."""
        with self._locks("init"):
            if self._init_s is not None:
                return self._init_s
            path = self.cache_dir / "init_singular_values.npz"
            names = model.dense_layer_names(self.params)
            try:
                with np.load(path, allow_pickle=False) as npz:
                    self._init_s = {n: npz[n] for n in names}
                    return self._init_s
            except Exception:
                pass
            config = dataclasses.replace(
                configs.TrainConfig.from_dict(self.metadata.get("config") or {}), network=model.spec_of(self.params)
            )
            init = train.initial_params(config, self.data)
            self._init_s = {n: compress.singular_values(init[n]["w"]) for n in names}
            self._save(path, self._init_s)
            return self._init_s


def _subset(rows: np.ndarray | None, inputs: int) -> np.ndarray | None:
    """``rows`` as int64 indices, or None when they are all ``inputs`` of the layer."""
    if rows is None or (len(rows) == inputs and np.array_equal(rows, np.arange(inputs))):
        return None
    return np.asarray(rows, np.int64)


def _cholesky_of_inputs(x: np.ndarray) -> np.ndarray:
    """Lower-triangular L (float32) with L Lᵀ = XᵀX/N + λI, λ = 1e-6 of the mean diagonal.

    Computed in float64 on the inputs that are ever non-zero only: an input
    that is zero on every row has a zero row and column in XᵀX, so the
    Cholesky factor is block-diagonal — the live inputs' factor, and √λ on the
    rest — exactly (each of the eliminated products is an exact zero), at a
    fraction of the cost (the baseline's later layers read 40–60 % dead units)."""
    live = np.flatnonzero(np.asarray(x).any(axis=0))
    x_live = np.asarray(x[:, live], np.float64)
    gram = x_live.T @ x_live / x.shape[0]
    ridge = 1e-6 * max(np.trace(gram) / x.shape[1], 1e-12)
    gram[np.diag_indices_from(gram)] += ridge
    factor = np.zeros((x.shape[1], x.shape[1]), np.float32)
    factor[np.diag_indices_from(factor)] = np.sqrt(ridge)
    factor[np.ix_(live, live)] = np.linalg.cholesky(gram)
    return factor
