import os
import pathlib
import threading
import time

import pytest

from lowrank_core import priority


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    # Each test starts with no foreground work in its grace period; pauses short enough to test.
    monkeypatch.setattr(priority, "_last_foreground_end", float("-inf"))
    monkeypatch.setattr(priority, "MAX_PAUSE_S", 1.0)


def _run_steps(steps: list[float], stop: threading.Event, synced: list[int] | None = None) -> None:
    """Background work: records when each step ends, pausing between steps."""
    with priority.background():
        while not stop.is_set():
            time.sleep(0.005)  # a step
            steps.append(time.perf_counter())
            priority.pause_point(None if synced is None else lambda: synced.append(1))


def test_pause_point_is_free_outside_background_work():
    synced = []
    with priority.foreground():
        assert priority.pause_point(lambda: synced.append(1)) == 0.0
    assert synced == []


def test_background_work_pauses_while_another_thread_runs_foreground_work(monkeypatch):
    # The grace period is tested apart from the pause's bound (the next test): with the bound at 1 s, a
    # pause begun 0.05 s before `entered` may end by it inside the grace period on a loaded machine.
    monkeypatch.setattr(priority, "MAX_PAUSE_S", 10.0)
    steps, synced, stop = [], [], threading.Event()
    worker = threading.Thread(target=_run_steps, args=(steps, stop, synced))
    worker.start()
    try:
        time.sleep(0.1)
        assert steps and not synced  # runs freely while no one is interactive
        with priority.foreground():
            time.sleep(0.05)  # the step in flight ends, then it pauses
            entered, count = time.perf_counter(), len(steps)
            time.sleep(0.5)
            assert len(steps) == count and synced  # no step while we run; its work was synced first
        left = time.perf_counter()
        time.sleep(priority.GRACE_S + 0.2)
        assert len(steps) > count  # and it goes on once we are done,
        assert not [t for t in steps if entered < t < left + 0.9 * priority.GRACE_S]  # after a grace period
    finally:
        stop.set()
        worker.join()


def test_a_pause_is_bounded_so_background_work_advances_under_constant_use():
    steps, stop = [], threading.Event()
    worker = threading.Thread(target=_run_steps, args=(steps, stop))
    with priority.foreground():  # never leaves during the test
        worker.start()
        time.sleep(2.2 * priority.MAX_PAUSE_S)
        stop.set()
    worker.join()
    assert 2 <= len(steps) <= 4  # one step per pause, not none
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert all(g >= 0.9 * priority.MAX_PAUSE_S for g in gaps)


def test_background_threads_never_wait_on_each_other_nor_on_their_own_run():
    steps_a, steps_b, stop = [], [], threading.Event()

    def inside_a_foreground_run(steps):
        with priority.foreground():  # the session's own script run, retraining
            _run_steps(steps, stop)

    workers = [threading.Thread(target=inside_a_foreground_run, args=(s,)) for s in (steps_a, steps_b)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join()
    assert len(steps_a) > 10 and len(steps_b) > 10


def test_exclusive_work_waits_for_background_steps_then_holds_them_without_limit():
    stop = threading.Event()
    steps: list[float] = []

    def long_steps():
        with priority.background():
            while not stop.is_set():
                time.sleep(0.2)  # a step that is in flight when exclusive work begins
                steps.append(time.perf_counter())
                priority.pause_point()

    worker = threading.Thread(target=long_steps)
    worker.start()
    time.sleep(0.05)
    with priority.exclusive():
        entered = time.perf_counter()
        assert steps and steps[-1] <= entered  # the step in flight ended before we began
        count = len(steps)
        time.sleep(priority.MAX_PAUSE_S + 0.3)  # longer than a foreground pause
        assert len(steps) == count
    time.sleep(0.3)
    stop.set()
    worker.join()
    assert len(steps) > count  # and it goes on afterwards


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread priorities are read from /proc")
def test_background_work_runs_below_interactive_work_with_xla_threads_too(monkeypatch):
    import jax.numpy as jnp

    (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()  # XLA's CPU client and its threads exist
    names = {
        int(t): pathlib.Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")
    }
    xla = {t for t, name in names.items() if name.startswith("tf_XLA")}
    # Nice values are inherited and never lowered back, so this process may already run at 19 (an earlier
    # test retrained here): every thread is read as 0, except one already above the target, and the
    # raises are recorded, not made.
    above = next(iter(xla))
    monkeypatch.setattr(os, "getpriority", lambda which, tid: priority.BACKGROUND_NICE + 1 if tid == above else 0)
    raised = {}
    monkeypatch.setattr(os, "setpriority", lambda which, tid, value: raised.__setitem__(tid, value))
    seen = {}

    def work():
        seen["self"] = threading.get_native_id()
        with priority.background():
            pass

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert xla and raised == {t: priority.BACKGROUND_NICE for t in (xla - {above}) | {seen["self"]}}


def test_a_page_waiting_for_a_lock_that_background_work_holds_does_not_make_it_pause():
    lock, steps = priority.YieldingLock(), []
    holding = threading.Event()

    def holder():
        with priority.background(), lock:
            holding.set()
            for _ in range(20):  # 20 steps of 5 ms, each followed by a pause point
                time.sleep(0.005)
                steps.append(time.perf_counter())
                priority.pause_point()

    worker = threading.Thread(target=holder)
    worker.start()
    assert holding.wait(5)
    started = time.perf_counter()
    with priority.foreground(), lock:  # the page's run, waiting for what the background computes
        waited = time.perf_counter() - started
        assert priority._foreground  # it counts as interactive again once it holds the lock
    worker.join()
    # Without the yielding lock each step would pause up to MAX_PAUSE_S (1 s here) for its own waiter.
    assert len(steps) == 20 and waited < 0.6 * priority.MAX_PAUSE_S, waited


def test_background_work_a_page_waits_for_does_not_pause_for_other_pages():
    # Session A's run waits for a variant that background work is measuring (its lock); session B's
    # run waits for A (Streamlit's cache lock) and so counts as interactive all along. The holder
    # must not pause for B: A waits for it, and B for A.
    lock, steps = priority.YieldingLock(), []
    holding, b_running, done = threading.Event(), threading.Event(), threading.Event()

    def holder():
        with priority.background(), lock:
            holding.set()
            b_running.wait(5)
            for _ in range(20):
                time.sleep(0.005)
                steps.append(time.perf_counter())
                priority.pause_point()

    def session_b():
        with priority.foreground():
            b_running.set()
            done.wait(60)

    threads = [threading.Thread(target=holder), threading.Thread(target=session_b)]
    for t in threads:
        t.start()
    assert holding.wait(5) and b_running.wait(5)
    started = time.perf_counter()
    with priority.foreground(), lock:
        waited = time.perf_counter() - started
    done.set()
    for t in threads:
        t.join()
    # Without the lent priority each of the 20 steps pauses MAX_PAUSE_S (1 s here) for session B.
    assert len(steps) == 20 and waited < 0.6 * priority.MAX_PAUSE_S, waited
    assert not priority._held  # every lock given back


def test_an_interruptible_background_timing_gives_the_cpu_to_a_page_at_once():
    page_running, page_done = threading.Event(), threading.Event()

    def page():
        with priority.foreground():
            page_running.set()
            page_done.wait(10)

    with priority.background(), priority.interruptible():
        priority.interrupt_point()  # nothing else runs: it goes on
        worker = threading.Thread(target=page)
        worker.start()
        assert page_running.wait(5)
        with pytest.raises(priority.Interrupted):
            priority.interrupt_point()
    with priority.background():
        priority.interrupt_point()  # ordinary background work pauses instead (pause_point); never raises here
    page_done.set()
    worker.join()


def test_other_background_work_pauses_while_a_page_waits_for_background_work():
    # A page waits for what the warm-up computes (its lock): the curve filler must not take the
    # CPU from that computation meanwhile (a waiting page is no foreground run of its own).
    lock, holding = priority.YieldingLock(), threading.Event()
    steps, stop = [], threading.Event()

    def holder():
        with priority.background(), lock:
            holding.set()
            time.sleep(0.5)  # the computation the page waits for

    worker = threading.Thread(target=holder)
    worker.start()
    assert holding.wait(5)
    filler = threading.Thread(target=_run_steps, args=(steps, stop))
    filler.start()
    time.sleep(0.05)
    with priority.foreground():
        waited_from = time.perf_counter()
        with lock:  # waits until the holder lets go
            waited_to = time.perf_counter()
    stop.set()
    filler.join()
    worker.join()
    assert waited_to - waited_from > 0.3  # it did wait for the holder
    during = [t for t in steps if waited_from + 0.05 < t < waited_to - 0.05]
    assert len(during) <= 2, len(during)  # paused while the page waited (≈ 60 steps of 5 ms otherwise)


def test_exclusive_work_never_pauses_for_its_own_exclusivity():
    paused = []

    def timing_thread():  # a background timing: its own accuracy pass has pause points
        with priority.background(), priority.exclusive(settle_s=0):
            paused.append(priority.pause_point())

    worker = threading.Thread(target=timing_thread, daemon=True)
    worker.start()
    worker.join(5)
    assert paused == [0.0]  # it would wait for itself forever
