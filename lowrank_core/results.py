"""What a measured record holds, and how it is shown: the product path's figures of a variant."""

from __future__ import annotations

import numpy as np

from lowrank_core import measure
from lowrank_core.methods import Variant, config_dict
from lowrank_core.runtimes import records

TIMING_KEYS = ("latency", "latency_ms", "latency_batch1_ms", "layer_latency_ms", "batch_size", "measured_on")


def measured(
    variant: Variant,
    params: dict,
    facts: dict,
    predictions: np.ndarray,
    labels: np.ndarray,
    stored_bytes: int,
    baseline_bytes: int,
    storage_dtype: str,
    checkpoint_hash: str,
) -> dict:
    """The record of ``variant`` as stored in ``params``: accuracy of ``predictions`` on every
    label, parameters, MACs (computed from the shapes), stored bytes, its steps and facts."""
    single = len(variant.steps) == 1
    nonzero = sum(np.count_nonzero(v) for ps in params.values() for k, v in ps.items() if not k.endswith("_scale"))
    return {
        "method": variant.name,
        "config": config_dict(variant.steps[0][1]) if single else {},
        "steps": variant.to_dict()["steps"],
        "finetune": config_dict(variant.finetune) if variant.finetune else None,
        "label": variant.describe(),
        "checkpoint": checkpoint_hash,
        "accuracy": float(np.mean(predictions == labels)),
        "n_test": int(labels.shape[0]),
        "params": measure.count_params(params),
        "nonzero_params": int(nonzero),
        "macs": measure.macs_per_image(params),
        "bytes": stored_bytes,
        "storage_dtype": storage_dtype,
        "compression_ratio": baseline_bytes / stored_bytes,
        "facts": facts,
    }


def latency(params: dict, images: np.ndarray, environment: dict, with_layer_latency: bool) -> dict:
    """The product path's latency fields of a record (call it where the CPU is quiet)."""
    lat = measure.latency(params, images)
    batch = max(int(b) for b in lat)
    out = {
        "latency": lat,
        "batch_size": batch,
        "latency_ms": lat[str(batch)]["median_ms"],
        "latency_batch1_ms": lat["1"]["median_ms"],
        "measured_on": environment,
    }
    if with_layer_latency:  # a few seconds more: the CLI asks for it, the app on demand
        out["layer_latency_ms"] = measure.layer_latency(params, images)
    return out


def measured_here(record: dict, environment: dict) -> bool:
    return (record.get("measured_on") or {}).get("fingerprint") == environment["fingerprint"]


def as_listed(record: dict, environment: dict) -> dict:
    """``record`` as a chart lists it: latency measured on another machine (the product path's
    and each runtime's) moved under ``latency_elsewhere``, never shown as this machine's."""
    if record.get("latency") and not measured_here(record, environment):
        record = records.moved_apart(record, TIMING_KEYS)
    if record.get("runtimes"):
        record = {**record, "runtimes": records.listed_apart(record["runtimes"])}
    return record
