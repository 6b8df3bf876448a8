"""Curves that draw themselves: a page's grid of variants measured in the background.

:func:`fill` starts (once per engine and grid) a daemon thread that measures
each variant's accuracy on every test image — coarse grid points first, the
rest after — and then its latency in every installed runtime. It runs as
background work (:mod:`priority`): it pauses while any page runs, and a
latency is timed only after a quiet second, and timed again if a page ran
while it was being timed, so a curve point is never timed beside a slider
move and never slows one. Every point is an ordinary cached record, so the
page redraws from the cache as they arrive.
"""

from __future__ import annotations

import threading
import weakref

from lowrank_core import priority, runtimes

# engine → {(grid, with latency): its filling thread}; weak, so a new engine (even at a reused id) starts afresh
_started: "weakref.WeakKeyDictionary[object, dict[tuple, threading.Thread]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def coarse_first(items: list) -> list:
    """``items`` reordered so every other one comes first, then the rest (a coarse grid, then refined)."""
    return items[::2] + items[1::2]


def fill(engine, variants: list, with_latency: bool = True) -> threading.Thread:
    """Measures ``variants`` in the background (accuracy first, then latency); returns its thread."""
    key = (tuple(variants), with_latency)
    with _lock:
        threads = _started.setdefault(engine, {})
        if key not in threads:
            threads[key] = threading.Thread(
                target=_work,
                args=(weakref.proxy(engine), list(variants), with_latency),
                name="lowrank-curves",
                daemon=True,
            )
            threads[key].start()
        return threads[key]


def _work(engine, variants: list, with_latency: bool) -> None:
    with priority.background():
        for variant in coarse_first(variants):
            _try(lambda v=variant: engine.evaluate(v, with_latency=False))
        if not with_latency:
            return
        names = runtimes.available()
        for variant in coarse_first(variants):
            if engine.cached_result(variant, with_latency=True) is not None:
                continue
            for _ in range(3):  # timed again if a page ran meanwhile
                priority.wait_until_quiet()
                runs = priority.foreground_runs()
                record = _try(lambda v=variant: engine.evaluate(v, with_latency=True, runtimes=names, use_cache=False))
                if record is None or priority.foreground_runs() == runs:
                    break


def _try(measure):
    try:
        return measure()
    except Exception:  # the page that shows the point reports its error when it measures it itself
        return None
