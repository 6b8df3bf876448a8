"""The measurement queue: first come, first served, re-entrant, never stuck."""

import threading
import time

from lowrank_core.fairness import TicketQueue


def test_turns_are_served_in_arrival_order_and_none_is_overtaken():
    queue, order, started = TicketQueue(), [], []
    gate = threading.Event()

    def first():
        with queue.turn():
            started.append("first")
            gate.wait(5)
            order.append("first")

    def later(name):
        with queue.turn():
            order.append(name)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    while not started:
        time.sleep(0.01)
    for name in ("a", "b", "c", "d"):
        t = threading.Thread(target=later, args=(name,))
        t.start()
        threads.append(t)
        while queue.ahead() < len(threads):  # each has drawn its ticket before the next arrives
            time.sleep(0.01)
    assert queue.ahead() == 5
    gate.set()
    for t in threads:
        t.join(5)
    assert order == ["first", "a", "b", "c", "d"] and queue.ahead() == 0


def test_a_turn_is_reentrant_and_an_abandoned_ticket_does_not_block_the_queue():
    queue = TicketQueue()
    with queue.turn():
        with queue.turn():  # a measurement inside a measurement: no deadlock
            assert queue.ahead() == 1
    assert queue.ahead() == 0
    holder_in, release = threading.Event(), threading.Event()

    def hold():
        with queue.turn():
            holder_in.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holder_in.wait(5)

    class GiveUp(Exception):
        pass

    def impatient():
        try:
            with queue._cond:  # a waiter interrupted while waiting gives up its ticket
                pass
            real_wait = queue._cond.wait_for

            def interrupted(predicate, timeout=None):
                raise GiveUp

            queue._cond.wait_for = interrupted
            try:
                with queue.turn():
                    pass
            finally:
                queue._cond.wait_for = real_wait
        except GiveUp:
            pass

    impatient()
    release.set()
    holder.join(5)
    done = []
    waiter = threading.Thread(target=lambda: queue.turn().__enter__() or done.append(1))
    waiter.start()
    waiter.join(2)
    assert done == [1]  # served although the ticket before it was abandoned


def test_background_work_takes_no_turn_so_it_never_holds_one_while_it_yields():
    from lowrank_core import fairness, measurement, priority

    inside = threading.Event()

    def background():
        with priority.background(), measurement.turn():
            inside.set()

    with fairness.MEASUREMENTS.turn():  # a page's measurement holds the turn
        ahead = fairness.MEASUREMENTS.ahead()
        worker = threading.Thread(target=background)
        worker.start()
        assert inside.wait(5)  # not queued behind the page: it yields to pages instead
        assert fairness.MEASUREMENTS.ahead() == ahead
    worker.join(5)
    with measurement.turn():  # a page's own measurement does take one
        assert fairness.MEASUREMENTS.ahead() == 1
