"""Foreground first: interactive requests run before long background work.

Two cores are not enough for a retraining and a slider move at once: XLA's
threads take both, and a cached rerun that needs a fraction of a second waits
seconds for CPU. So the process keeps two kinds of work apart:

- *foreground*: a script run someone is looking at (``app.py`` wraps each run
  in :func:`foreground`);
- *background*: work of minutes no one waits on interactively — retraining and
  the training set's features it needs (the engine wraps such variants in
  :func:`background`). It calls :func:`pause_point` between its steps; while
  another thread runs foreground work there, or did less than ``GRACE_S`` ago
  (a session's next rerun follows its last within a browser round trip), it
  finishes its step and waits, at most ``MAX_PAUSE_S`` at a time so that it
  still advances under constant use.
  While a latency is being timed (:func:`exclusive`) it waits without limit:
  a time measured beside a training would measure that contention.

Background work also runs at a lower OS priority (nice BACKGROUND_NICE, with
XLA's compute threads): a step already running when a rerun arrives no longer
shares the CPU with it. A thread in background mode never counts as
foreground, so two retrainings never wait on each other. Nothing here knows
Streamlit; with no foreground work, a pause point costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable, Iterator

MAX_PAUSE_S = 3.0  # longest single pause of background work while foreground work runs
GRACE_S = 0.5  # background work resumes only after this long without foreground work
EXCLUSIVE_SETTLE_S = 10.0  # longest wait of exclusive work for background steps in flight to end

_cond = threading.Condition()
_foreground: dict[int, int] = {}  # thread → nesting depth
_background: dict[int, int] = {}
_paused: set[int] = set()
_exclusive_by: dict[int, int] = {}  # thread → how many exclusive blocks it is in (its own never pause it)
_last_foreground_end = float("-inf")  # time.monotonic() when foreground work last ended


_foreground_runs = 0  # how many foreground blocks have started (see :func:`quiet_since`)


def _enter(table: dict[int, int]) -> int:
    global _foreground_runs
    me = threading.get_ident()
    with _cond:
        table[me] = table.get(me, 0) + 1
        if table is _foreground:
            _foreground_runs += 1
        _cond.notify_all()
    return me


def in_background() -> bool:
    """Whether the calling thread is doing background work (:func:`background`)."""
    return threading.get_ident() in _background


def foreground_runs() -> int:
    """A counter of foreground blocks started: equal before and after some work means none ran beside it."""
    return _foreground_runs


@contextlib.contextmanager
def idle() -> Iterator[None]:
    """Marks the calling background thread as paused while it only waits (on a lock, or for
    quiet), so exclusive work entering meanwhile does not wait for it to reach a pause point."""
    me = threading.get_ident()
    with _cond:
        _paused.add(me)
        _cond.notify_all()
    try:
        yield
    finally:
        with _cond:
            _paused.discard(me)


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Marks the calling foreground thread as only waiting (for a lock another thread holds)
    for the ``with`` block: it is no interactive request for background work to pause for —
    were the holder background work, pausing for its own waiter would stall them both, one
    step per ``MAX_PAUSE_S``. No grace period follows (its run goes on afterwards)."""
    me = threading.get_ident()
    with _cond:
        depth = _foreground.pop(me, 0)
        _cond.notify_all()
    try:
        yield
    finally:
        if depth:
            with _cond:
                _foreground[me] = _foreground.get(me, 0) + depth


class YieldingLock:
    """A lock whose waiters wait as :func:`waiting` (the intermediates' and variants' locks), and
    which lends their priority to its holder: background work holding it while an interactive
    request waits for it (directly, or through a chain of such locks) does not pause for other
    pages, since the request waits for it either way — were it to pause, a second session
    waiting behind that request (on Streamlit's cache lock, say) would stall all three."""

    def __init__(self):
        self._lock = threading.Lock()
        self._wanted = 0  # interactive requests waiting for it

    def __enter__(self) -> "YieldingLock":
        me = threading.get_ident()
        if not self._lock.acquire(blocking=False):
            interactive = me not in _background or _lent_to(me)
            with waiting(), self._wanted_by(interactive):
                self._lock.acquire()
        with _cond:
            _held.setdefault(me, []).append(self)
        return self

    def __exit__(self, *exc) -> None:
        me = threading.get_ident()
        with _cond:
            _held[me].remove(self)
            if not _held[me]:
                del _held[me]
        self._lock.release()

    @contextlib.contextmanager
    def _wanted_by(self, interactive: bool) -> Iterator[None]:
        global _foreground_runs, _wanting
        if not interactive:
            yield
            return
        with _cond:
            self._wanted += 1
            _wanting += 1
            _foreground_runs += 1  # work that runs for a page now: a latency timed meanwhile is timed again
            _cond.notify_all()
        try:
            yield
        finally:
            with _cond:
                self._wanted -= 1
                _wanting -= 1
                _cond.notify_all()


_held: dict[int, list[YieldingLock]] = {}  # thread → the yielding locks it holds
_wanting = 0  # interactive requests waiting for a yielding lock: other background work pauses for them too


def _lent_to(me: int) -> bool:
    """Whether an interactive request waits for a yielding lock thread ``me`` holds."""
    return any(lock._wanted for lock in _held.get(me, ()))


def wait_until_quiet(quiet_s: float = 1.0) -> None:
    """Blocks until no foreground work has run for ``quiet_s`` seconds (for timing in the background)."""
    with idle():
        while True:
            with _cond:
                busy = bool(_foreground) or _wanting > 0
                since = time.monotonic() - _last_foreground_end
            if not busy and since >= quiet_s:
                return
            time.sleep(max(0.05, quiet_s - since) if not busy else 0.1)


def _leave(table: dict[int, int], me: int) -> None:
    global _last_foreground_end
    with _cond:
        table[me] -= 1
        if not table[me]:
            del table[me]
            if table is _foreground and me not in _background:
                _last_foreground_end = time.monotonic()
        _cond.notify_all()


@contextlib.contextmanager
def foreground() -> Iterator[None]:
    """Marks the calling thread's work as interactive for the ``with`` block."""
    me = _enter(_foreground)
    try:
        yield
    finally:
        _leave(_foreground, me)


BACKGROUND_NICE = 19  # the OS priority (nice) of background work's threads and of XLA's compute threads


def _lower_compute_priority(compute_too: bool = True) -> None:
    """Raises the nice value of the calling thread and (``compute_too``) of XLA's CPU compute
    threads (named ``tf_XLA…``) to BACKGROUND_NICE, on Linux (elsewhere a no-op).

    A step of background work already running when a rerun arrives takes both
    cores until it ends (≈ 0.3 s); at a higher nice value the kernel hands the
    rerun's Python the CPU at once instead of sharing it. Raising a nice value
    needs no privilege, lowering it back does, so XLA's threads keep it for the
    process's life (and the calling thread for its own: a Streamlit script
    thread ends with its session's runs): any JAX computation then yields to
    interactive Python work in the same process, which changes nothing on an
    otherwise idle CPU."""
    tasks = "/proc/self/task"
    try:
        tids = os.listdir(tasks)
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"{tasks}/{tid}/comm") as comm:
                name = comm.read().strip()
            if int(tid) == threading.get_native_id() or (compute_too and name.startswith("tf_XLA")):
                if os.getpriority(os.PRIO_PROCESS, int(tid)) < BACKGROUND_NICE:
                    os.setpriority(os.PRIO_PROCESS, int(tid), BACKGROUND_NICE)
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile, or a system that refuses: priorities stay as they were


@contextlib.contextmanager
def background(compute_too: bool = True) -> Iterator[None]:
    """Marks the calling thread's work as long and yielding (see :func:`pause_point`),
    even inside a foreground run, and lowers its OS priority and (``compute_too``: work that
    runs JAX) that of XLA's compute threads (:func:`_lower_compute_priority`)."""
    _lower_compute_priority(compute_too)
    me = _enter(_background)
    try:
        yield
    finally:
        _leave(_background, me)


def _others_interactive(me: int) -> bool:
    recent = time.monotonic() - _last_foreground_end < GRACE_S
    return recent or _wanting > 0 or any(t != me and t not in _background for t in _foreground)


def _exclusive_others(me: int) -> bool:
    """Whether exclusive work of another thread runs (a thread's own never pauses it)."""
    return len(_exclusive_by) > (me in _exclusive_by)  # entries leave at zero: single dict operations, no lock


def pause_point(sync: Callable[[], object] | None = None, max_pause_s: float | None = None) -> float:
    """Between two steps of background work: if other threads run foreground
    work (or did within ``GRACE_S``, or exclusive work runs), calls ``sync``
    (e.g. ``block_until_ready`` on what was dispatched, so nothing of this work
    keeps running) and waits until they are done, at most ``max_pause_s``
    (default ``MAX_PAUSE_S``) for foreground work, without limit for exclusive
    work. A no-op outside :func:`background`. Returns the seconds paused."""
    max_pause_s = MAX_PAUSE_S if max_pause_s is None else max_pause_s
    me = threading.get_ident()
    quiet = (
        len(_foreground) <= (me in _foreground) and not _wanting and time.monotonic() - _last_foreground_end >= GRACE_S
    )
    if me not in _background or (quiet and not _exclusive_others(me)) or (me in _held and _lent_to(me)):
        return 0.0  # read without the lock (single dict operations): the common case costs nothing
    started = time.perf_counter()
    with _cond:
        if not (_exclusive_others(me) or _others_interactive(me)):
            return 0.0
    if sync is not None:
        sync()
    deadline = started + max_pause_s
    with _cond:
        _paused.add(me)
        _cond.notify_all()
        try:
            while not _lent_to(me) and (
                _exclusive_others(me) or (_others_interactive(me) and time.perf_counter() < deadline)
            ):
                # A timed wait even when nothing will notify: the grace period ends by itself.
                _cond.wait(
                    timeout=None if _exclusive_others(me) else min(0.05, max(0.0, deadline - time.perf_counter()))
                )
        finally:
            _paused.discard(me)
    return time.perf_counter() - started


class Interrupted(Exception):
    """Raised at an :func:`interrupt_point` of interruptible work when a page wants the CPU."""


_interruptible: set[int] = set()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Background work that gives up (:class:`Interrupted`) rather than pause when a page runs:
    a latency timed in the background, which a page running beside it would disturb anyway."""
    me = threading.get_ident()
    _interruptible.add(me)
    try:
        yield
    finally:
        _interruptible.discard(me)


def interrupt_point() -> None:
    """Between two timed calls: in :func:`interruptible` work, raises :class:`Interrupted` if
    another thread runs foreground work (or did within ``GRACE_S``), so the page gets the CPU
    within one call. A no-op elsewhere (a foreground timing, the CLI's)."""
    me = threading.get_ident()
    if me in _interruptible and not _lent_to(me):
        with _cond:
            if _others_interactive(me):
                raise Interrupted


@contextlib.contextmanager
def exclusive(settle_s: float = EXCLUSIVE_SETTLE_S) -> Iterator[None]:
    """Work that must not share the CPU (timing a latency): background work
    pauses at its next pause point until the block ends; entering waits (at
    most ``settle_s``) until every background thread has reached one."""
    me = threading.get_ident()
    with _cond:
        _exclusive_by[me] = _exclusive_by.get(me, 0) + 1
        _cond.notify_all()
        _cond.wait_for(lambda: all(t in _paused or t == me or _lent_to(t) for t in _background), timeout=settle_s)
    try:
        yield
    finally:
        with _cond:
            _exclusive_by[me] -= 1
            if not _exclusive_by[me]:
                del _exclusive_by[me]
            _cond.notify_all()
