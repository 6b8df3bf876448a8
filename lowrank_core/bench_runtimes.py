"""The runtimes bench row: every registered runtime on the same variants, float
and int8, timed alternately at batch 1 and 1,000, predictions compared.

For each variant (the baseline, SVD f = 0.05 of the hidden layers, the advisor's
answer when one is cached) three sides run the same images: the product path
(the first runtime), every other runtime on the float variant, and every other
runtime on the variant with int8 storage on top (integer kernels where the
runtime has them). Each side is loaded first (compile or session creation, not
timed), warmed up, then the sides take turns ``repeats`` times.
"""

from __future__ import annotations

import time

import numpy as np

from lowrank_core import runtimes
from lowrank_core.methods import Variant


def _alternate(sides: dict, batch: np.ndarray, repeats: int) -> dict[str, list[float]]:
    for run in sides.values():
        run(batch)
        run(batch)
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            started = time.perf_counter()
            run(batch)
            samples[name].append(time.perf_counter() - started)
    return samples


def _stats(samples: list[float]) -> dict:
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_ms": 1e3 * float(median), "iqr_ms": 1e3 * float(q3 - q1), "repeats": len(samples)}


def _sides(engine, variant: Variant) -> dict[str, tuple]:
    """{side: (runtime, stored variant, test accuracy)} for the product and each other runtime."""
    float_record = engine.evaluate(variant, with_latency=False)
    int8_record = engine.evaluate(variant.with_storage(), with_latency=False)
    names = runtimes.available()
    sides = {names[0]: (names[0], engine.stored_variant(float_record))}
    for name in names[1:]:
        sides[f"{name} float"] = (name, engine.stored_variant(float_record))
        sides[f"{name} int8"] = (name, engine.stored_variant(int8_record))
    return sides


def bench_runtimes(engine, variants: dict[str, Variant], images: np.ndarray, batch_sizes=(1, 1000), repeats=7):
    """Rows of (variant, batch, side) latencies with each side's accuracy on ``images``
    and its share of predictions equal to the product path's."""
    labels = engine.data.y_test[: len(images)]
    rows = []
    for label, variant in variants.items():
        sides = _sides(engine, variant)
        runs = {side: runtimes.get(name).prepare(stored) for side, (name, stored) in sides.items()}
        predictions = {side: np.argmax(_logits(run, images), axis=-1) for side, run in runs.items()}
        product = predictions[next(iter(sides))]
        for batch_size in batch_sizes:
            batch = np.ascontiguousarray(images[:batch_size])
            samples = _alternate(runs, batch, repeats)
            for side in sides:
                rows.append(
                    {
                        "row": "runtimes",
                        "variant": label,
                        "label": variant.describe(),
                        "side": side,
                        "batch_size": int(batch.shape[0]),
                        **_stats(samples[side]),
                        "accuracy": float(np.mean(predictions[side] == labels)),
                        "same_as_product": float(np.mean(predictions[side] == product)),
                        "images": int(len(images)),
                    }
                )
    return rows


def _logits(run, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([run(np.ascontiguousarray(images[i : i + batch])) for i in range(0, len(images), batch)])


def to_markdown(rows: list[dict]) -> list[str]:
    """The rows as a table: per variant and batch, each side's latency and its ratio to the first side."""
    lines = [
        "",
        "| variant | batch | runtime | median ms (IQR) | vs product path | accuracy | same as product |",
        "|---|---|---|---|---|---|---|",
    ]
    first: dict[tuple, float] = {}
    for row in rows:
        key = (row["variant"], row["batch_size"])
        first.setdefault(key, row["median_ms"])
        lines.append(
            f"| {row['variant']} | {row['batch_size']:,} | {row['side']} | {row['median_ms']:.2f} "
            f"({row['iqr_ms']:.2f}) | {first[key] / row['median_ms']:.2f}× | {row['accuracy']:.4f} "
            f"| {100 * row['same_as_product']:.2f} % |"
        )
    return lines
