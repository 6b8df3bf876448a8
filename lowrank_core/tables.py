"""One layer at a time: an engine's per-layer sensitivity tables, cached by content."""

from __future__ import annotations

import hashlib
import json

from lowrank_core import compress, model, sensitivity
from lowrank_core.errors import ConfigError
from lowrank_core.methods import REGISTRY, Variant, name_of
from lowrank_core.methods.svd import SvdConfig


def _svd_method():
    return REGISTRY[name_of(SvdConfig)]  # the registry's SVD method: the fast table is its one-layer truncation


def svd_table(
    engine, fractions=None, layers=None, on_progress=None, compute: bool = True, basis: str = "weights", on_row=None
):
    """Each dense layer truncated alone at each rank fraction, all test images
    (:func:`sensitivity.svd_sensitivity`; ``on_row`` gets each row as it is measured), in the
    table basis that predicts ``basis``; cached on disk by checkpoint, grid, layers, basis and
    method version. ``compute=False``: the cached table or None."""
    config_type = _svd_method().config_type
    basis = config_type(basis=basis).table_basis  # validates it
    fractions = tuple(float(f) for f in (fractions or sensitivity.DEFAULT_FRACTIONS))
    layers = tuple(layers or model.dense_layer_names(engine.params))
    for f in fractions:
        config_type(rank_fraction=f)  # validates the grid
    key = _table_key(engine, fractions, layers, basis)
    if not compute:
        return _cached_rows(engine, key, fractions, layers, basis)
    with engine.locks(key):
        if (rows := _cached_rows(engine, key, fractions, layers, basis)) is not None:
            return rows
        factor = engine.intermediates.input_factor if basis != "weights" else None
        rows = sensitivity.svd_sensitivity(
            engine.params,
            engine.intermediates.svd_of,
            engine.test_features,
            engine.data.y_test,
            fractions,
            layers,
            engine.storage_dtype,
            on_progress,
            factor,
            on_row,
            engine.intermediates.whitened_svd,
        )
        engine.sensitivity_store.put(key, {"rows": rows, "n_test": int(engine.data.y_test.shape[0])})
        return rows


def _table_key(engine, fractions: tuple, layers: tuple, basis: str) -> str:
    blob = {
        "checkpoint": engine.checkpoint_hash,
        "fractions": fractions,
        "layers": layers,
        "basis": basis,
        "version": _svd_method().version,
        "kind": "svd_sensitivity",
    }
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:32]


def _cached_rows(engine, key: str, fractions: tuple, layers: tuple, basis: str) -> list[dict] | None:
    """The cached table, or its rows at ``fractions`` from the cached full-grid table (the
    Sensitivity page's) when that holds them all: the advisor's anchors need no new cell then."""
    if (hit := engine.sensitivity_store.get(key)) is not None:
        return hit["rows"]
    full = tuple(float(f) for f in sensitivity.DEFAULT_FRACTIONS)
    if fractions == full or not set(fractions) <= set(full):
        return None
    hit = engine.sensitivity_store.get(_table_key(engine, full, layers, basis))
    return None if hit is None else [r for r in hit["rows"] if r["fraction"] in fractions]


def one_layer_at_a_time(engine, method: str, grid, layers=None, on_progress=None) -> list[dict]:
    """Rows (layer, value, accuracy) with one layer compressed at a time over ``grid`` (values of
    the method's swept setting): SVD through its fast table, any other method measured point by
    point (cached)."""
    if method == _svd_method().name:
        rows = svd_table(engine, grid, layers, on_progress)
        return [
            {"layer": r["layer"], "value": r["fraction"], "rank": r["rank"], "accuracy": r["accuracy"]} for r in rows
        ]
    if method not in REGISTRY or REGISTRY[method].sweep is None or not hasattr(REGISTRY[method].config_type(), "only"):
        swept = [n for n, m in REGISTRY.items() if m.sweep and hasattr(m.config_type(), "only")]
        raise ConfigError(f"the sensitivity sweep covers {', '.join(swept)}")
    field = REGISTRY[method].sweep[0]
    layers = layers or compress.prunable_layers(engine.params)
    points = [(n, v) for n in layers for v in grid]
    rows = []
    for i, (name, value) in enumerate(points):
        config = REGISTRY[method].config_type(**{field: value, "only": (name,)})
        result = engine.evaluate(Variant.of(method, config), with_latency=False)
        rows.append({"layer": name, "value": value, "accuracy": result["accuracy"]})
        if on_progress:
            on_progress(i + 1, len(points))
    return rows
