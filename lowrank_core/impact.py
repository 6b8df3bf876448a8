"""What a variant changes, image by image: per-class accuracy, confusion
matrices, and the test images whose prediction changed. Pure functions of the
labels and two prediction vectors over the same test set."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``m[i, j]``: test images of class i predicted as j."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    return correct / np.maximum(counts, 1)


def compare(labels: np.ndarray, reference: np.ndarray, variant: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class accuracy of both, confusion matrices and their difference, and
    the indices of images the variant fixed (reference wrong, variant right),
    broke (the other way round) or changed between two wrong classes."""
    k = len(class_names)
    ref_ok, var_ok = reference == labels, variant == labels
    changed = reference != variant
    ref_conf, var_conf = confusion(labels, reference, k), confusion(labels, variant, k)
    return {
        "class_names": list(class_names),
        "n_test": int(labels.shape[0]),
        "per_class": [
            {"class": name, "images": int(n), "reference": float(a), "variant": float(b), "change": float(b - a)}
            for name, n, a, b in zip(
                class_names,
                np.bincount(labels, minlength=k),
                class_accuracy(labels, reference, k),
                class_accuracy(labels, variant, k),
            )
        ],
        "confusion_reference": ref_conf.tolist(),
        "confusion_variant": var_conf.tolist(),
        "confusion_change": (var_conf - ref_conf).tolist(),
        "fixed": np.flatnonzero(~ref_ok & var_ok).tolist(),
        "broken": np.flatnonzero(ref_ok & ~var_ok).tolist(),
        "changed_wrong": np.flatnonzero(changed & ~ref_ok & ~var_ok).tolist(),
        "accuracy_reference": float(ref_ok.mean()),
        "accuracy_variant": float(var_ok.mean()),
    }
