"""What a runtime provides: predictions on a test set and timed batches.

A runtime runs a variant *as stored* (:class:`StoredVariant`: the params tree
of the stored file, its float dtype and the layers kept in float32), so every
runtime sees the same weights the product measures and exports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np


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
    are computed; ``predict(variant, images)`` gives the class of every image (a
    runtime may run a whole test set its own faster way, with the same result);
    ``missing()`` says why it cannot run here (None when it can); ``environment()``
    where it runs (``fingerprint`` hashes it).
    """

    name: str
    label: str
    order: int
    prepare: Callable[[StoredVariant], Callable[[np.ndarray], np.ndarray]]
    predict: Callable[[StoredVariant, np.ndarray], np.ndarray]
    environment: Callable[[], dict]
    missing: Callable[[], str | None] = lambda: None
    threads: Callable[[], int] = lambda: os.cpu_count() or 1
    int8: str = ""  # how it runs int8 matrices, in a few words


def machine(extra: Mapping[str, Any]) -> dict:
    """The machine's description plus ``extra`` (runtime, versions), with a ``fingerprint``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    env = {**extra, "cpu": cpu, "cores": os.cpu_count(), "host": platform.node()}
    env["fingerprint"] = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]
    return env


def time_calls(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> dict:
    """First-call time, then median and IQR of ``repeats`` calls after ``warmup``
    (``fn`` returns once its work is done)."""
    started = time.perf_counter()
    fn()
    first_s = time.perf_counter() - started
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {
        "compile_s": first_s,
        "median_ms": 1e3 * median,
        "iqr_ms": 1e3 * (q3 - q1),
        "min_ms": 1e3 * min(samples),
        "repeats": repeats,
    }


def latency(runtime: Runtime, variant: StoredVariant, images: np.ndarray, batch_sizes: tuple[int, ...]) -> dict:
    """Whole-network latency at each batch size, keyed by the batch actually timed
    (the same shape as :func:`lowrank_core.measure.latency`); ``setup_s`` is the
    load (compile or session creation), timed apart."""
    started = time.perf_counter()
    run = runtime.prepare(variant)
    setup_s = time.perf_counter() - started
    out = {}
    for batch_size in batch_sizes:
        batch = np.ascontiguousarray(images[:batch_size])
        stats = time_calls(lambda batch=batch: run(batch))
        stats["setup_s"] = setup_s
        stats["per_image_ms"] = stats["median_ms"] / batch.shape[0]
        out[str(batch.shape[0])] = stats
    return out


def runtime_record(
    runtime: Runtime,
    variant: StoredVariant,
    images: np.ndarray,
    labels: np.ndarray,
    batch_sizes: tuple[int, ...] | None,
) -> tuple[dict, np.ndarray]:
    """(One runtime's measurement of a variant, its predictions): accuracy on every
    image, and latency at ``batch_sizes`` (None: accuracy only), with where it was measured."""
    predictions = np.asarray(runtime.predict(variant, images))
    record = {
        "accuracy": float(np.mean(predictions == labels)),
        "n_test": int(labels.shape[0]),
        "runtime": runtime.name,
        "threads": runtime.threads(),
    }
    if batch_sizes:
        record.update(timing_fields(runtime, latency(runtime, variant, images, batch_sizes)))
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
