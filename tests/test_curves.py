import gc
import threading
import time

from lowrank_core import curves, priority


def test_coarse_first_puts_every_other_point_first():
    assert curves.coarse_first([0, 1, 2, 3, 4]) == [0, 2, 4, 1, 3]


class _Engine:
    """Evaluates nothing, and tells the test when the filling thread has started measuring."""

    def __init__(self, started: threading.Event, release: threading.Event):
        self.started, self.release = started, release

    def evaluate(self, variant, with_latency=False, **_):
        self.started.set()
        self.release.wait(5)
        return {"accuracy": 0.5}

    def cached_result(self, variant, with_latency=False):
        return None


def test_a_filling_thread_ends_quietly_when_its_engine_is_dropped(monkeypatch):
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    started, release = threading.Event(), threading.Event()
    engine = _Engine(started, release)
    thread = curves.fill(engine, ["a", "b"], with_latency=True)
    assert started.wait(5)
    del engine  # a cleared cache drops the engine while its curve is being filled
    gc.collect()
    release.set()
    thread.join(5)
    assert not thread.is_alive() and errors == []


def test_a_timing_a_page_interrupts_starts_again_once_quiet(monkeypatch):
    monkeypatch.setattr(curves.runtimes, "available", lambda: ("product",))  # one stage
    calls = []

    class Engine:
        def cached_result(self, variant, with_latency=False):
            return None

        def evaluate(self, variant, with_latency, runtimes):
            calls.append("evaluate")
            if len(calls) == 1:
                raise priority.Interrupted  # a page started while it was being timed
            return {"latency_ms": 1.0}

        def retime(self, variant, runtimes):
            calls.append("retime")
            return {"latency_ms": 1.0}

    engine = Engine()
    thread = curves.time_later(engine, "variant")
    thread.join(30)
    # Interrupted: measured again from where it was (what is missing), not re-timed as disturbed.
    assert not thread.is_alive() and calls == ["evaluate", "evaluate"]


def test_every_variant_asked_for_is_timed_on_the_product_path_before_any_other_runtime(monkeypatch):
    # A page shows a latency once its variant and the baseline are timed on one runtime: the
    # baseline's ONNX Runtime stage (its own accuracy pass, then the timing) must not come first.
    import time

    monkeypatch.setattr(curves.runtimes, "available", lambda: ("product", "other"))
    calls, release = [], threading.Event()

    class Engine:
        def cached_result(self, variant, with_latency=False):
            return None

        def evaluate(self, variant, with_latency, runtimes):
            if not calls:
                release.wait(10)  # the baseline's first stage runs while the page's variant is asked for
            calls.append((variant, runtimes))
            return {"latency_ms": 1.0}

    engine = Engine()
    first = curves.time_later(engine, "baseline")
    deadline = time.time() + 10
    while not release.is_set() and time.time() < deadline:
        if curves._first_stages._left == 1:  # the baseline's thread is in its first stage
            second = curves.time_later(engine, "variant")
            while curves._first_stages._left < 2 and time.time() < deadline:
                time.sleep(0.01)
            release.set()
        time.sleep(0.01)
    first.join(30), second.join(30)
    assert [c[1] for c in calls[:2]] == [("product",), ("product",)]
    assert sorted(calls[2:]) == [("baseline", ("product", "other")), ("variant", ("product", "other"))]


def test_a_pages_timing_in_other_runtimes_waits_for_the_curves_accuracy(monkeypatch):
    # Accuracy first, then latency: a page's ONNX Runtime pass (its own accuracy, then the timing)
    # kept the page's curve at one point for 20 s.
    monkeypatch.setattr(curves.runtimes, "available", lambda: ("product", "other"))
    calls, release, started = [], threading.Event(), threading.Event()

    class Engine:
        def cached_result(self, variant, with_latency=False):
            return None

        def evaluate(self, variant, with_latency=False, runtimes=()):
            if not with_latency:
                started.set()
                release.wait(10)
            calls.append((variant, tuple(runtimes) if with_latency else "accuracy"))
            return {"latency_ms": 1.0}

    engine = Engine()
    filling = curves.fill(engine, ["point"], with_latency=False)
    assert started.wait(5)
    timing = curves.time_later(engine, "page's variant")
    deadline = time.time() + 10
    while not calls and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert calls == [("page's variant", ("product",))]  # its product path at once; nothing else yet
    release.set()
    filling.join(10), timing.join(30)
    assert calls[1:] == [("point", "accuracy"), ("page's variant", ("product", "other"))]
