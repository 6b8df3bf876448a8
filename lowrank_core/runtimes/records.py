"""A measured record's ``runtimes`` entry: each registered runtime's own accuracy and latency."""

from __future__ import annotations

import contextlib
from typing import Callable

from lowrank_core import measure
from lowrank_core.runtimes import REGISTRY, base, get as get_runtime

TIMING_KEYS = ("latency", "latency_ms", "latency_batch1_ms", "batch_size", "measured_on")
ACCURACY_KEYS = ("accuracy", "n_test", "runtime")  # what base.accuracy_fields measured (threads: of now)


def with_runtimes(
    record: dict,
    stored: base.StoredVariant,
    data,
    names: tuple[str, ...],
    with_latency: bool,
    timing: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    keep_accuracy: bool = False,
) -> dict:
    """``record`` with each of ``names`` measuring its stored variant on every test image of
    ``data`` (and timing it inside ``timing()`` if ``with_latency``); with ``keep_accuracy``, a
    runtime that measured its accuracy before is only timed again (its accuracy does not change)."""
    measured = dict(record.get("runtimes") or {})
    for name in names:
        loaded = base.load(get_runtime(name), stored)  # one session for its accuracy and its timing
        previous = measured.get(name) or {}
        if keep_accuracy and "accuracy" in previous:
            entry = {k: previous[k] for k in ACCURACY_KEYS if k in previous} | {"threads": loaded.runtime.threads()}
        else:
            entry, _ = base.accuracy_fields(loaded, data.x_test, data.y_test)
        if with_latency:
            with timing():  # only the timing needs the CPU to itself
                timed = base.latency(loaded, data.x_test, measure.timed_batch_sizes(data.x_test.shape[0]))
            entry.update(base.timing_fields(loaded.runtime, timed))
        measured[name] = entry
    return {**record, "runtimes": measured}


def measured_here(entry: dict, name: str) -> bool:
    """Whether ``entry`` holds a latency runtime ``name`` measured on this machine."""
    here = get_runtime(name).environment()["fingerprint"]
    return bool(entry.get("latency")) and (entry.get("measured_on") or {}).get("fingerprint") == here


def missing(record: dict, names: tuple[str, ...], with_latency: bool) -> tuple[str, ...]:
    """The runtimes of ``names`` still to measure for ``record`` (latency: on this machine)."""
    have = record.get("runtimes") or {}
    return tuple(n for n in names if n not in have or (with_latency and not measured_here(have[n], n)))


def moved_apart(entry: dict, keys: tuple[str, ...] = TIMING_KEYS) -> dict:
    """``entry`` with its timing fields (``keys``) moved under ``latency_elsewhere``."""
    moved = {k: entry[k] for k in keys if k in entry}
    return {k: v for k, v in entry.items() if k not in moved} | {"latency_elsewhere": moved}


def listed_apart(entries: dict) -> dict:
    """The entries with latency measured on another machine moved under ``latency_elsewhere``."""
    return {
        name: moved_apart(entry)
        if name in REGISTRY and entry.get("latency") and not measured_here(entry, name)
        else entry
        for name, entry in entries.items()
    }
