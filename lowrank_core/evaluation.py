"""Accuracy of a params tree on a whole image set (every image counted)."""

from __future__ import annotations

import numpy as np

from lowrank_core import measure, model


def accuracy(params: model.Params, images: np.ndarray, labels: np.ndarray, batch_size: int | None = None) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    if images.shape[0] == 0:
        raise ValueError("no images to evaluate")
    return float(np.mean(measure.predict_full(params, images, batch_size) == labels))
