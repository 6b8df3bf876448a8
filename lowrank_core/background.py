"""Scheduling an engine's background work: the warm-up, and the quiet a latency needs.

The warm-up computes what every page needs first in one daemon thread: the
convolutions' test-set output and the baseline's accuracy at once, then — only
while no measurement runs (:meth:`WarmUp.busy` marks one), piece by piece — the
hidden-layer outputs, the SVDs and the spectra at initialization, each under its
own lock elsewhere, so a page asking meanwhile waits for that piece only. Those
optional steps also let a latency still lacking its product-path timing go
first, and the spectra at initialization wait for the pages' curves to have
their accuracy: at most DEFER_LIMIT_S in all, since under constant use there is
always such work.
A latency is never timed beside it (:meth:`WarmUp.timing` lets the step in
flight end and holds the next) nor beside another session's retraining
(:func:`priority.exclusive`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from lowrank_core import curves, methods, model, priority

LABELS = {
    "features": "test-set features",
    "baseline": "baseline accuracy",
    "hidden": "hidden-layer outputs",
    "svds": "SVDs",
    "init_spectra": "spectra at initialization",
}
URGENT = ("features", "baseline")  # run at once; the other steps wait for quiet
# Needed by no page's first view (an overlay on Spectra, computed there if asked for first), so it
# waits for the pages' curves as well: beside them it took half the CPU of a page's first minute.
LAST = ("init_spectra",)
DEFER_POLL_S = 0.5
# The optional steps wait on pages' work (see _deferred) at most this long in all: under constant
# use there is always a latency waiting and a curve measuring, and the warm-up would never finish.
DEFER_LIMIT_S = 60.0


def _deferred(step: str) -> bool:
    """Whether an optional step waits on pages' work: a latency still lacking its product-path
    timing (else this step starts first and the timing, waiting for a quiet second, then waits for
    it to end), and, for the LAST steps, curves still measuring their accuracy."""
    return curves.first_latency_pending() or (step in LAST and curves.accuracy_pending())


class WarmUp:
    """One engine's warm-up thread and its bookkeeping."""

    def __init__(self):
        self.warmed: set[str] = set()  # the steps finished
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active = 0  # measurements in progress: the optional steps wait while any runs
        self._active_lock = threading.Condition()
        self._in_step = False  # a step is running now
        self._timings = 0  # latencies being timed: no step starts meanwhile

    def start(self, steps: list[tuple[str, Callable[[], object]]], groups: dict[str, list[str]]) -> threading.Thread:
        """Starts (once) the thread running ``steps`` in order; a group's name is marked warmed
        once all of its steps are (e.g. "svds" for every layer's SVD)."""
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, args=(steps, groups), name="lowrank-warm-up")
                self.thread.daemon = True
                self.thread.start()
            return self.thread

    def _work(self, steps, groups) -> None:
        deadline = None
        for step, task in steps:
            if step not in URGENT:
                deadline = deadline or time.monotonic() + DEFER_LIMIT_S  # one limit for all the steps
                while _deferred(step) and time.monotonic() < deadline:
                    time.sleep(DEFER_POLL_S)
            self._wait_for_quiet(urgent=step in URGENT)
            try:
                task()
            except Exception:  # the page that needs it reports the error itself
                pass
            finally:
                with self._active_lock:
                    self._in_step = False
                    self._active_lock.notify_all()
            self.warmed.add(step)
        for group, members in groups.items():
            if all(m in self.warmed for m in members):
                self.warmed.add(group)

    def still_warming(self) -> list[str]:
        """What the warm-up has not finished yet (empty once done or never started)."""
        if self.thread is None or not self.thread.is_alive():
            return []
        return [label for step, label in LABELS.items() if step not in self.warmed]

    def _wait_for_quiet(self, urgent: bool) -> None:
        """Until no latency is being timed and, for an optional step, no measurement runs; then
        marks a step as running."""
        with self._active_lock:
            self._active_lock.wait_for(lambda: self._timings == 0 and (urgent or self._active == 0))
            self._in_step = True

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Marks a measurement in progress: the warm-up's optional steps wait until it ends."""
        with self._active_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active -= 1
                self._active_lock.notify_all()

    @contextlib.contextmanager
    def timing(self, settle_s: float = priority.EXCLUSIVE_SETTLE_S) -> Iterator[None]:
        """Quiet for a latency: the warm-up's step in flight ends first (waited for at most
        ``settle_s``) and no other starts until the block ends; other background work paused."""
        with self._active_lock:
            self._timings += 1
            if self.thread is not threading.current_thread():
                self._active_lock.wait_for(lambda: not self._in_step, timeout=settle_s)
        try:
            with priority.exclusive():
                yield
        finally:
            with self._active_lock:
                self._timings -= 1
                self._active_lock.notify_all()


def warm_up_steps(engine) -> tuple[list[tuple[str, Callable[[], object]]], dict[str, list[str]]]:
    """The engine's warm-up, in order: the test-set features and the baseline's accuracy, then the
    hidden-layer outputs, every dense layer's SVD and the spectra at initialization; and its groups."""
    svd_steps = [
        (f"svd:{n}", lambda n=n: engine.intermediates.svd_of(engine.params[n]["w"]))
        for n in model.dense_layer_names(engine.params)
    ]
    steps = [
        ("features", lambda: engine.test_features),
        ("baseline", lambda: engine.evaluate(methods.REFERENCE, with_latency=False)),
        ("hidden", lambda: engine.intermediates.hidden_activations().outputs),
        *svd_steps,
        ("init_spectra", engine.init_singular_values),
    ]
    return steps, {"svds": [name for name, _ in svd_steps]}
