"""Tables and summaries of measured results, for the dashboard and exports.

Pure functions over the result dicts :meth:`Engine.evaluate` returns: labels,
flat rows (CSV/JSON), the Pareto front, and the headline answers to the
seed's questions, all computed from what was measured, never typed in.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Sequence

import numpy as np

from lowrank_core import methods


def parameter_breakdown(spec) -> list[dict]:
    """Per layer of a :class:`model.NetworkSpec`, in network order: kind,
    kernel shape, parameters (kernel + bias) and share of the whole network;
    computed from the shapes alone (no data needed)."""
    shapes = spec.shapes()
    counts = {name: sum(int(np.prod(s)) for s in params.values()) for name, params in shapes.items()}
    total = sum(counts.values())
    return [
        {
            "layer": name,
            "kind": "convolution" if name in spec.conv_layers else "dense",
            "kernel shape": " × ".join(map(str, params["w"])),
            "parameters": counts[name],
            "share": counts[name] / total,
        }
        for name, params in shapes.items()
    ]


def method_label(name: str) -> str:
    """The label of a method, or of a pipeline ("Low-rank (SVD) + Int8 storage")."""
    return " + ".join(methods.REGISTRY[n].label if n in methods.REGISTRY else n for n in name.split("+"))


def method_colour(name: str) -> str:
    """The colour of a method (a pipeline takes its first step's)."""
    first = name.split("+")[0]
    return methods.REGISTRY[first].colour if first in methods.REGISTRY else "#7f7f7f"


def describe(result: dict) -> str:
    """A short human label of a result's steps and fine-tuning."""
    try:
        return methods.Variant.from_dict(result).describe()
    except Exception:  # a record of a method this version no longer has
        return result.get("label") or result["method"]


def unique_labels(results: Sequence[dict]) -> dict[str, dict]:
    """``{label: result}`` with every result present: a label that would collide
    with an earlier one (two records described alike) gets a number."""
    out: dict[str, dict] = {}
    for result in results:
        label = describe(result)
        if label in out:
            n = 2
            while f"{label} (#{n})" in out:
                n += 1
            label = f"{label} (#{n})"
        out[label] = result
    return out


def flat_row(result: dict) -> dict:
    """One CSV-friendly row per result."""
    return {
        "method": result["method"],
        "variant": describe(result),
        "accuracy": result["accuracy"],
        "n_test": result["n_test"],
        "params": result["params"],
        "nonzero_params": result.get("nonzero_params"),
        "macs_per_image": result["macs"],
        "bytes": result["bytes"],
        "compression_ratio": result.get("compression_ratio"),
        "latency_batch_size": result.get("batch_size"),
        "latency_ms": result.get("latency_ms"),
        "latency_iqr_ms": (result.get("latency") or {}).get(str(result.get("batch_size")), {}).get("iqr_ms"),
        "latency_ms_batch1": result.get("latency_batch1_ms"),
        "latency_measured_on": (result.get("measured_on") or {}).get("cpu"),
        **runtime_columns(result),
        "steps": json.dumps(
            result.get("steps") or [{"method": result["method"], "config": result.get("config")}], sort_keys=True
        ),
        "finetune": json.dumps(result.get("finetune")),
        "checkpoint": result.get("checkpoint"),
    }


def runtime_columns(result: dict) -> dict:
    """Each other runtime's own accuracy and latency (batch 1 and the largest batch timed), by runtime name."""
    out = {}
    for name, entry in (result.get("runtimes") or {}).items():
        out[f"{name}_accuracy"] = entry.get("accuracy")
        out[f"{name}_latency_ms"] = entry.get("latency_ms")
        out[f"{name}_latency_ms_batch1"] = entry.get("latency_batch1_ms")
    return out


def to_csv(results: Iterable[dict]) -> str:
    """The results as CSV; a column a record lacks (a runtime it was not measured in) is left empty."""
    rows = [flat_row(r) for r in results]
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def pareto_mask(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """True where no other point is at least as cheap and at least as accurate, and better in one."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    mask = np.ones(len(cost), bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (accuracy >= accuracy[i]) & ((cost < cost[i]) | (accuracy > accuracy[i]))
        mask[i] = not dominated.any()
    return mask


def additivity(
    rows: Sequence[dict], base_accuracy: float, measured: dict[float, float], layers: Sequence[str]
) -> list[dict]:
    """Per rank fraction f: the sum of the single-layer drops of ``layers`` (from
    the sensitivity ``rows``) beside the drop measured with all of them at f."""
    out = []
    for f, accuracy in sorted(measured.items()):
        singles = [base_accuracy - r["accuracy"] for r in rows if r["fraction"] == f and r["layer"] in layers]
        if len(singles) != len(layers):
            continue
        out.append(
            {"fraction": f, "sum_of_single_drops": float(sum(singles)), "measured_drop": base_accuracy - accuracy}
        )
    return out


def best_within(results: Iterable[dict], baseline: dict, max_drop: float = 0.01) -> dict[str, dict]:
    """Among measured results on the baseline's test set within ``max_drop``
    (accuracy as a fraction) of it: the one with the fewest parameters, the
    smallest stored file and, where latency was measured at the baseline's
    batch here, the fastest. Only measured records; keys absent if none."""
    ok = [
        r
        for r in results
        if r.get("n_test") == baseline["n_test"]
        and r["method"] != methods.REFERENCE
        and r["accuracy"] >= baseline["accuracy"] - max_drop - 1e-12
    ]
    out = {}
    if ok:
        out["params"] = min(ok, key=lambda r: r["params"])
        out["bytes"] = min(ok, key=lambda r: r["bytes"])
    timed = [r for r in ok if "latency_ms" in r and r.get("batch_size") == baseline.get("batch_size")]
    if timed and "latency_ms" in baseline:
        out["latency"] = min(timed, key=lambda r: r["latency_ms"])
    return out


def short_label(result: dict) -> str:
    """A variant named in a few words: its steps (e.g. "prune → SVD → int8"), fine-tuning, SVD basis."""
    steps = result.get("steps") or [{"method": result["method"], "config": result.get("config") or {}}]
    words = " → ".join(method_label(s["method"]).split(" (")[0] for s in steps)
    basis = next((s["config"].get("basis") for s in steps if s["config"].get("basis") not in (None, "weights")), None)
    if basis:
        words += f", {basis} basis"
    if result.get("finetune"):
        words += f", fine-tuned {result['finetune']['steps']} steps"
    return words


def headline_cards(results: Iterable[dict], baseline: dict, max_drop: float = 0.01) -> list[dict]:
    """The best measured trade-offs within ``max_drop`` of the baseline as cards: what it
    buys (× fewer parameters, × smaller stored, × faster at the timed batch), the accuracy
    change in points, and the variant (short name and full record). Only measured records."""
    best = best_within(results, baseline, max_drop)
    cards = []
    for key, title, ratio in (
        ("params", "fewer parameters", lambda r: baseline["params"] / r["params"]),
        ("bytes", "smaller stored", lambda r: baseline["bytes"] / r["bytes"]),
        ("latency", "faster", lambda r: baseline["latency_ms"] / r["latency_ms"]),
    ):
        if key in best:
            record = best[key]
            cards.append(
                {
                    "key": key,
                    "title": title,
                    "ratio": ratio(record),
                    "record": record,
                    "drop_points": 100 * (record["accuracy"] - baseline["accuracy"]),
                    "name": short_label(record),
                }
            )
    return cards


def headline_variant(results: Sequence[dict], baseline: dict) -> dict | None:
    """The variant a presenter talks about first: the fewest parameters within 1 point, else the most accurate."""
    cards = headline_cards(results, baseline)
    if cards:
        return cards[0]["record"]
    others = [r for r in results if r["method"] != methods.REFERENCE]
    return max(others, key=lambda r: r["accuracy"]) if others else None
