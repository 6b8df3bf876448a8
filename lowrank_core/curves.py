"""Curves that draw themselves: a page's grid of variants measured in the background.

:func:`fill` starts (once per engine and grid) a daemon thread that measures
each variant's accuracy on every test image — coarse grid points first, the
rest after — and then the latency of a coarse subset in every installed runtime (a page's own
timings in runtimes other than the product path wait for every curve's accuracy). It runs as
background work (:mod:`priority`): it pauses while any page runs, and a
latency is timed only after a quiet second; a page starting meanwhile
interrupts the timing (within one timed call) and it starts again once quiet,
so a curve point is never timed beside a slider move and never slows one. Every point is an ordinary cached record, so the
page redraws from the cache as they arrive.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from typing import Iterator

from lowrank_core import priority, runtimes

# engine → {(grid, with latency): its filling thread}; weak, so a new engine (even at a reused id) starts afresh
_started: "weakref.WeakKeyDictionary[object, dict[tuple, threading.Thread]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def coarse_first(items: list) -> list:
    """``items`` reordered so every other one comes first, then the rest (a coarse grid, then refined)."""
    return items[::2] + items[1::2]


def timed_record(engine, variant) -> dict | None:
    """``variant``'s cached record if it holds latency in every installed runtime, else None."""
    return engine.cached_result(variant, with_latency=True) if _timed(engine, variant) else None


def first_timed_record(engine, variant) -> dict | None:
    """``variant``'s cached record once its latency is timed on the product path (the other
    runtimes may still be timing: :func:`time_later` times the product path of every variant
    asked for first), else None."""
    return engine.cached_result(variant, with_latency=True)


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


_timing_lock = threading.Lock()  # one background timing at a time: two would disturb each other
_timing_requests: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def time_later(engine, variant) -> threading.Thread:
    """Times ``variant`` in every installed runtime in the background, once the CPU is quiet
    (re-timed if a page ran meanwhile): the product path first, then — once every variant asked
    for has its product-path latency, so a page can show one at all — the other runtimes
    (their own accuracy pass, then the timing). Returns its thread (one per engine and variant)."""
    with _lock:
        threads = _timing_requests.setdefault(engine, {})
        if variant not in threads or not threads[variant].is_alive() and not _timed(engine, variant):
            threads[variant] = threading.Thread(
                target=_time_quietly, args=(weakref.proxy(engine), variant), name="lowrank-timing", daemon=True
            )
            threads[variant].start()
        return threads[variant]


def _timed(engine, variant) -> bool:
    record = engine.cached_result(variant, with_latency=True)
    others = runtimes.available()[1:]
    return record is not None and all("latency_ms" in (record.get("runtimes") or {}).get(n, {}) for n in others)


def _engine_alive(work):
    """``work`` with its engine held weakly: an engine dropped meanwhile (a cleared cache) ends it quietly."""

    def run(engine, *args) -> None:
        try:
            work(engine, *args)
        except ReferenceError:
            pass  # the engine is gone: nothing left to measure for

    return run


TIMING_ATTEMPTS = 20  # a timing a page interrupts starts again once the CPU is quiet; so many times at most


class _Pending:
    """How many pieces of some work are still to run; others wait for none to be left."""

    def __init__(self):
        self._left = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def pending(self) -> Iterator[None]:
        with self._cond:
            self._left += 1
        try:
            yield
        finally:
            with self._cond:
                self._left -= 1
                self._cond.notify_all()

    def wait_for_none(self, timeout_s: float | None = None) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._left == 0, timeout_s)

    def left(self) -> int:
        return self._left


# Every other runtime's stage waits for none of these to be left: timings still lacking their
# product-path stage (a baseline timed in ONNX Runtime kept a page's own latency from showing), and
# curves still measuring their accuracy (accuracy first, then latency: two ONNX Runtime passes
# kept a page's curve at one point for 20 s).
_first_stages = _Pending()
_curve_accuracy = _Pending()
ACCURACY_WAIT_S = 60.0


def accuracy_pending() -> bool:
    """Whether a curve is still measuring its accuracy (other background work may wait for it)."""
    return _curve_accuracy.left() > 0


def first_latency_pending() -> bool:
    """Whether a latency asked for (by a page or a curve) still lacks its product-path timing."""
    return _first_stages.left() > 0


@_engine_alive
def _time_quietly(engine, variant) -> None:
    names = runtimes.available()
    with priority.background(), priority.interruptible():
        with _first_stages.pending():
            _time_in(engine, variant, names[:1])
        if len(names) > 1:
            with priority.idle():
                _first_stages.wait_for_none()
                # At most so long: under constant use some curve is always measuring.
                _curve_accuracy.wait_for_none(ACCURACY_WAIT_S)
                _first_stages.wait_for_none()
            _time_in(engine, variant, names)


def _time_in(engine, variant, names: tuple[str, ...]) -> None:
    """Times ``variant`` in ``names`` (what is missing), again if a page ran meanwhile."""
    disturbed = False
    for _ in range(TIMING_ATTEMPTS):
        priority.wait_until_quiet()
        with priority.idle():
            _timing_lock.acquire()
        try:
            runs = priority.foreground_runs()
            # Only what is missing is measured; a finished timing a page ran beside is timed again
            # (accuracy kept). A page starting meanwhile interrupts it: the CPU is the page's.
            # Curve points and the warm-up wait meanwhile: a page is waiting for this latency.
            with priority.exclusive(settle_s=0):
                record = _try(functools.partial(_timing, engine, variant, names, again=disturbed))
        except priority.Interrupted:
            continue
        finally:
            _timing_lock.release()
        if record is None or priority.foreground_runs() == runs:
            return
        disturbed = True


def _timing(engine, variant, names: tuple[str, ...], again: bool) -> dict:
    if again:
        return engine.retime(variant, runtimes=names)
    return engine.evaluate(variant, with_latency=True, runtimes=names)


@_engine_alive
def _work(engine, variants: list, with_latency: bool) -> None:
    with priority.background():
        with _curve_accuracy.pending():
            for variant in coarse_first(variants):
                _try(lambda v=variant: engine.evaluate(v, with_latency=False))
        if not with_latency:
            return
        # The latency curve: only its coarse points, each timed when quiet (timing holds the CPU to
        # itself, so every point timed would keep other background work waiting that long).
        for variant in variants[::4]:
            if not _timed(engine, variant):
                _time_quietly(engine, variant)


def _try(measure):
    try:
        return measure()
    except priority.Interrupted:
        raise
    except Exception:  # the page that shows the point reports its error when it measures it itself
        return None
