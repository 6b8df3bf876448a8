"""How the engine measures a variant, and keeps a cached record fresh.

A record's accuracy never goes stale (the cache is keyed by the checkpoint's and
the data's content); its latency does, when it was measured on another machine.
Latency is timed inside the warm-up's ``timing`` window (:mod:`lowrank_core.background`),
so no background work shares the CPU with it.
"""

from __future__ import annotations

import contextlib

from lowrank_core import fairness, priority, results
from lowrank_core.methods import Variant, result_key
from lowrank_core.runtimes import records


def once(
    engine,
    variant: Variant,
    with_latency: bool,
    with_layer_latency: bool,
    extra: tuple[str, ...],
    use_cache: bool,
    on_progress,
) -> dict:
    """``variant``'s record from the cache (refreshed as asked) or measured and stored, computed once
    however many sessions ask for it at a time (browser tabs): the second waits for the first on that
    variant's lock only, then reads its result."""
    key = result_key(engine.checkpoint_hash, variant)
    if use_cache and (hit := lookup(engine, key, with_latency, with_layer_latency, extra)) is not None:
        return hit
    # A training variant takes minutes: it yields to other sessions' interactive requests, and
    # a session waiting for the same one (below) is no interactive request to yield to.
    with priority.background() if variant.trains else contextlib.nullcontext():
        with engine.locks(key):
            if use_cache and (hit := lookup(engine, key, with_latency, with_layer_latency, extra)) is not None:
                return hit
            with engine.schedule.busy(), turn():
                record = measure_variant(engine, variant, with_latency, with_layer_latency, on_progress)
                if extra:
                    record = with_runtimes(engine, record, extra, with_latency)
            engine.store.put(key, record)
            return record


def retimed(engine, variant: Variant, extra: tuple[str, ...]) -> dict:
    """``variant``'s record with its latency timed again here, on the product path and in the
    runtimes ``extra``, its accuracy kept (it never goes stale): for a timing a page disturbed."""
    record = engine.evaluate(variant, with_latency=False)
    key = result_key(engine.checkpoint_hash, variant)
    with engine.locks(key), engine.schedule.busy():
        stored = engine.stored_variant(record)  # built once, for every runtime (a fine-tuned one trains)
        timed = {**record, **latency(engine, stored.params, False)}
        record = records.with_runtimes(timed, stored, engine.data, extra, True, engine.schedule.timing, True)
        engine.store.put(key, record)
    return record


def turn():
    """An interactive measurement's turn, in arrival order across sessions. Background work
    (training included) takes none: it yields to interactive work instead, and holding a turn
    while it yields would make every session queued behind it wait for the work it yields to."""
    return contextlib.nullcontext() if priority.in_background() else fairness.MEASUREMENTS.turn()


def measure_variant(engine, variant: Variant, with_latency: bool, with_layer_latency: bool, on_progress) -> dict:
    """``variant``'s record: built, its predictions kept beside the result (What changes and the
    report read them instead of predicting again), its stored size, and latency if asked."""
    params, facts = engine.build(variant, on_progress=on_progress)
    predictions = engine.predict(params)
    engine.prediction_cache.put(result_key(engine.checkpoint_hash, variant), predictions)
    record = results.measured(
        variant,
        params,
        facts,
        predictions,
        engine.data.y_test,
        len(engine.npz(params, facts)),
        engine.baseline_bytes,
        engine.storage_dtype,
        engine.checkpoint_hash,
    )
    if with_latency:
        record.update(latency(engine, params, with_layer_latency))
    return record


def latency(engine, params: dict, with_layer_latency: bool) -> dict:
    """The product path's latency fields of ``params``, timed with the CPU to itself."""
    with engine.schedule.timing():
        return results.latency(params, engine.data.x_test, engine.environment, with_layer_latency)


def with_runtimes(engine, record: dict, names: tuple[str, ...], with_latency: bool) -> dict:
    """``record`` with each runtime's own measurement of its variant (accuracy, and latency if asked)."""
    timing = engine.schedule.timing if with_latency else contextlib.nullcontext
    return records.with_runtimes(record, engine.stored_variant(record), engine.data, names, with_latency, timing)


def stale(record: dict, environment: dict, with_latency: bool, with_layer_latency: bool = False) -> bool:
    """Whether ``record`` lacks a latency asked for, as measured on this machine."""
    here = results.measured_here(record, environment)
    return (with_latency and not (record.get("latency") and here)) or (
        with_layer_latency and not (record.get("layer_latency_ms") and here)
    )


def lookup(engine, key: str, with_latency: bool, with_layer_latency: bool, extra: tuple) -> dict | None:
    """The stored record under ``key`` with what is asked for (:func:`refreshed`), or None."""
    if (record := engine.store.get(key)) is None:
        return None
    return refreshed(engine, key, record, with_latency, with_layer_latency, extra)


def refreshed(engine, key: str, record: dict, with_latency: bool, with_layer_latency: bool, extra: tuple) -> dict:
    """``record`` with what is asked for: latency measured on another machine (or missing) is
    measured here, the accuracy kept; runtimes of ``extra`` not measured yet are measured.
    The variant is built once for both (a fine-tuned one trains); it takes its :func:`turn`,
    and each part is stored as soon as it is measured."""
    is_stale = stale(record, engine.environment, with_latency, with_layer_latency)
    missing = records.missing(record, extra, with_latency)
    if not (is_stale or missing):
        return record
    with turn():
        stored = engine.stored_variant(record)
        if is_stale:
            record = {**record, **latency(engine, stored.params, with_layer_latency)}
            engine.store.put(key, record)
        if missing:
            timing = engine.schedule.timing if with_latency else contextlib.nullcontext
            record = records.with_runtimes(record, stored, engine.data, missing, with_latency, timing)
            engine.store.put(key, record)
    return record
