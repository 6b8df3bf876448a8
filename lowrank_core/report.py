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

METHOD_LABELS = {"baseline": "Baseline", "svd": "Low-rank (SVD)", "prune": "Pruning", "remove": "Layer removal",
                 "quantize": "Int8 quantization", "dead_units": "Dead-unit removal (lossless)"}


def describe(result: dict) -> str:
    """A short human label of a result's method and configuration."""
    method, config = result["method"], result.get("config", {})
    if method == "svd":
        if config.get("layer_ranks"):
            rule = "ranks " + ", ".join(f"{n}={k}" for n, k in config["layer_ranks"])
        elif config.get("param_budget"):
            rule = f"budget {config['param_budget']:.0%} of params"
        elif config.get("energy"):
            rule = f"energy {config['energy']:.0%}"
        else:
            rule = f"f={config.get('rank_fraction')}"
        if config.get("layer_fractions"):
            rule += " (" + ", ".join(f"{n} f={f}" for n, f in config["layer_fractions"]) + ")"
        if config.get("only"):
            rule += " on " + "+".join(config["only"])
        text = f"SVD {config.get('form')} {rule}" + ("" if config.get("include_output", True) else ", output kept")
    elif method == "prune":
        kind = "structured" if config.get("structured") else f"{config.get('scope')}-wise"
        text = f"prune {config.get('sparsity'):.0%} {kind} {config.get('schedule', 'one-shot')}"
        if config.get("only"):
            text += " on " + "+".join(config["only"])
    elif method == "remove":
        text = f"remove {'+'.join(config.get('layers', ()))}, retrain {config.get('retrain_steps')} steps"
    else:
        text = METHOD_LABELS.get(method, method)
    if result.get("finetune"):
        text += f", fine-tuned {result['finetune']['steps']} steps"
    return text


def flat_row(result: dict) -> dict:
    """One CSV-friendly row per result."""
    return {"method": result["method"], "variant": describe(result), "accuracy": result["accuracy"],
            "n_test": result["n_test"], "params": result["params"], "nonzero_params": result.get("nonzero_params"),
            "macs_per_image": result["macs"], "bytes": result["bytes"],
            "compression_ratio": result.get("compression_ratio"),
            "latency_ms_batch1000": result.get("latency_ms"), "latency_ms_batch1": result.get("latency_batch1_ms"),
            "latency_iqr_ms_batch1000": (result.get("latency") or {}).get("1000", {}).get("iqr_ms"),
            "config": json.dumps(result.get("config", {}), sort_keys=True),
            "finetune": json.dumps(result.get("finetune")), "checkpoint": result.get("checkpoint")}


def to_csv(results: Iterable[dict]) -> str:
    rows = [flat_row(r) for r in results]
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
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


def svd_headlines(results: Iterable[dict], baseline: dict) -> list[str]:
    """The seed's questions answered from measured SVD results (global fraction, all layers, no fine-tuning)."""
    points = {}
    for r in results:
        c = r.get("config", {})
        if (r["method"] != "svd" or r.get("finetune") or "latency_ms" not in r or c.get("energy")
                or c.get("layer_ranks") or c.get("layer_fractions") or c.get("param_budget") or c.get("only")):
            continue
        points[(c["form"], c["rank_fraction"])] = r
    lines = []
    if "latency_ms" not in baseline:
        return lines
    base_ms = baseline["latency_ms"]
    for form in ("factorized", "reconstructed"):
        measured = sorted((f, r) for (fm, f), r in points.items() if fm == form)
        if len(measured) < 2:
            continue
        faster = [f for f, r in measured if r["latency_ms"] < 0.95 * base_ms]
        slowest_ok = max(faster) if faster else None
        if slowest_ok is None:
            lines.append(f"**{form.capitalize()}**: no measured rank fraction ({len(measured)} points) runs ≥ 5 % "
                         f"faster than the baseline ({base_ms:.0f} ms per 1,000 images).")
        else:
            r = dict(measured)[slowest_ok]
            lines.append(f"**{form.capitalize()}**: saves time at rank fraction ≤ {slowest_ok} (measured: "
                         f"{r['latency_ms']:.0f} ms vs {base_ms:.0f} ms per 1,000 images, accuracy "
                         f"{r['accuracy']:.1%} vs {baseline['accuracy']:.1%}).")
    return lines
