"""Per-class accuracy, confusion matrices and changed images, checked against direct counts."""

import numpy as np
import pytest

from lowrank_core import impact


def test_compare_counts_every_image_once():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    reference = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 4, 500))
    variant = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 4, 500))
    found = impact.compare(labels, reference, variant, ["a", "b", "c", "d"])
    assert len(found["fixed"]) == np.sum((reference != labels) & (variant == labels))
    assert len(found["broken"]) == np.sum((reference == labels) & (variant != labels))
    gained = (len(found["fixed"]) - len(found["broken"])) / 500
    assert found["accuracy_variant"] - found["accuracy_reference"] == pytest.approx(gained)
    conf = np.array(found["confusion_variant"])
    assert conf.sum() == 500 and all(
        conf[i, j] == np.sum((labels == i) & (variant == j)) for i in range(4) for j in range(4)
    )
    assert np.array_equal(np.array(found["confusion_change"]), conf - np.array(found["confusion_reference"]))
    for row, name in zip(found["per_class"], "abcd"):
        cls = "abcd".index(name)
        assert row["images"] == np.sum(labels == cls)
        assert row["variant"] == np.mean(variant[labels == cls] == cls)
