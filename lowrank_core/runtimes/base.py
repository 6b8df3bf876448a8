"""What a runtime provides: predictions on a test set and timed batches.

A runtime runs a variant *as stored* (:class:`StoredVariant`: the params tree
of the stored file, its float dtype and the layers kept in float32), so every
runtime sees the same weights the product measures and exports.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from lowrank_core import measure, priority

PREDICT_BATCH = 1000  # a whole test set runs in batches of this many images


class StoredVariant(NamedTuple):
    """A variant exactly as its file stores it."""

    params: Mapping[str, Mapping[str, np.ndarray]]
    storage_dtype: str = "float32"
    float32_layers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One way to run a variant.

    ``prepare(variant)`` loads it (compiles, or creates a session) and returns a
    function from a batch of uint8 images to float32 logits that returns once they
    are computed (a measurement loads once: predictions and timings use it); ``missing()`` says why it cannot run here (None when it can); ``environment()``
    where it runs (``fingerprint`` hashes it).
    """

    name: str
    label: str
    order: int
    prepare: Callable[[StoredVariant], Callable[[np.ndarray], np.ndarray]]
    environment: Callable[[], dict]
    missing: Callable[[], str | None] = lambda: None
    threads: Callable[[], int] = lambda: os.cpu_count() or 1
    int8: str = ""  # how it runs int8 matrices, in a few words


def machine(extra: Mapping[str, Any]) -> dict:
    """The machine's description plus ``extra`` (runtime, versions), with a ``fingerprint``."""
    return measure.fingerprinted({**extra, "cpu": measure.cpu_name(), "cores": os.cpu_count(), "host": platform.node()})


class Loaded(NamedTuple):
    """A variant loaded into a runtime once: its batch → logits function and how long loading took."""

    runtime: Runtime
    run: Callable[[np.ndarray], np.ndarray]
    setup_s: float


def load(runtime: Runtime, variant: StoredVariant) -> Loaded:
    """Compiles it, or creates its session, timed apart from everything after."""
    started = time.perf_counter()
    run = runtime.prepare(variant)
    return Loaded(runtime, run, time.perf_counter() - started)


def predict(loaded: Loaded, images: np.ndarray) -> np.ndarray:
    """The class of every image, in batches of PREDICT_BATCH."""
    predictions = []
    for i in range(0, len(images), PREDICT_BATCH):
        priority.pause_point()  # in the background, a page goes first
        predictions.append(np.argmax(loaded.run(np.ascontiguousarray(images[i : i + PREDICT_BATCH])), axis=-1))
    return np.concatenate(predictions)


def latency(loaded: Loaded, images: np.ndarray, batch_sizes: tuple[int, ...]) -> dict:
    """Whole-network latency at each batch size, keyed by the batch actually timed (the same
    shape as :func:`lowrank_core.measure.latency`); ``setup_s`` is the load, timed apart."""
    out = {}
    for batch_size in batch_sizes:
        batch = np.ascontiguousarray(images[:batch_size])
        stats = measure.time_calls(lambda batch=batch: loaded.run(batch))
        stats["setup_s"] = loaded.setup_s
        stats["per_image_ms"] = stats["median_ms"] / batch.shape[0]
        out[str(batch.shape[0])] = stats
    return out


def accuracy_fields(loaded: Loaded, images: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray]:
    """(A runtime record's accuracy fields, the predictions): every image of ``images``."""
    predictions = predict(loaded, images)
    record = {
        "accuracy": float(np.mean(predictions == labels)),
        "n_test": int(labels.shape[0]),
        "runtime": loaded.runtime.name,
        "threads": loaded.runtime.threads(),
    }
    return record, predictions


def timing_fields(runtime: Runtime, timed: dict) -> dict:
    """A runtime record's latency fields from :func:`latency`'s result."""
    batch = max(int(b) for b in timed)
    return {
        "latency": timed,
        "batch_size": batch,
        "latency_ms": timed[str(batch)]["median_ms"],
        "latency_batch1_ms": timed["1"]["median_ms"],
        "measured_on": runtime.environment(),
    }
