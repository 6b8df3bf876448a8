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


def predict(params: dict, checkpoint_params: dict, intermediates, images: np.ndarray) -> np.ndarray:
    """The class of every test image under ``params`` (int32), the fastest exact way."""
    if measure.same_convolutions(params, checkpoint_params):
        predictions = measure.predict_from_features(
            params, intermediates.features("test"), reference=intermediates.hidden_activations()
        )
    else:
        predictions = measure.predict_full(params, images)
    return predictions.astype(np.int32)


class PredictionCache:
    """``<cache>/predictions/<result key>.npy``, written atomically; a missing, corrupt or
    mis-shaped file reads as absent (the caller rebuilds and predicts again)."""

    def __init__(self, folder: pathlib.Path, n_test: int, on_write_failure):
        self.folder, self.n_test, self._on_write_failure = folder, n_test, on_write_failure

    def get(self, key: str) -> np.ndarray | None:
        try:
            predictions = np.load(self.folder / f"{key}.npy", allow_pickle=False)
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
