"""Test-set predictions on the product path, and their cache beside the measured records.

A variant whose convolutions are the checkpoint's runs from the cached convolutions' output,
and from the checkpoint's hidden-layer outputs before its first changed dense layer: the same
layers on the same inputs, so the same predictions (tests check the logits bit for bit).
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

from lowrank_core import measure
from lowrank_core.fileio import atomic_write_bytes
from lowrank_core.methods import Variant, result_key


def predict(params: dict, checkpoint_params: dict, intermediates, images: np.ndarray) -> np.ndarray:
    """The class of every test image under ``params`` (int32), the fastest exact way."""
    if measure.same_convolutions(params, checkpoint_params):
        predictions = measure.predict_from_features(
            params, intermediates.features("test"), reference=intermediates.hidden_activations()
        )
    else:
        predictions = measure.predict_full(params, images)
    return predictions.astype(np.int32)


NPY_HEADER_MAX = 4096  # an .npy header is padded to 64 bytes; NumPy's own limit is far above a 1-D array's


def of_record(engine, record: dict) -> np.ndarray:
    """The test-set predictions of ``engine``'s measured ``record`` (cached beside the results;
    rebuilt from the record if the file is gone). Their accuracy is the record's."""
    variant = Variant.from_dict(record)
    key = result_key(engine.checkpoint_hash, variant)
    with engine.locks(("predictions", key)):
        if (cached := engine.prediction_cache.get(key)) is not None:
            return cached
        params, _ = engine.build(variant)  # measured before this cache existed, or the file was lost
        predictions = engine.predict(params)
        engine.prediction_cache.put(key, predictions)
        return predictions


class PredictionCache:
    """``<cache>/predictions/<result key>.npy``, written atomically; a missing, corrupt or
    mis-shaped file reads as absent (the caller rebuilds and predicts again)."""

    def __init__(self, folder: pathlib.Path, n_test: int, on_write_failure):
        self.folder, self.n_test, self._on_write_failure = folder, n_test, on_write_failure

    def get(self, key: str) -> np.ndarray | None:
        path = self.folder / f"{key}.npy"
        try:
            if path.stat().st_size > 4 * self.n_test + NPY_HEADER_MAX:  # bounded before it is read
                return None
            predictions = np.load(path, allow_pickle=False)
        except Exception:
            return None
        return predictions if predictions.shape == (self.n_test,) else None

    def put(self, key: str, predictions: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, predictions)
        try:
            atomic_write_bytes(self.folder / f"{key}.npy", buffer.getvalue())
        except OSError as exc:
            self._on_write_failure(exc)
