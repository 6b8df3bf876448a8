"""First come, first served: interactive measurements take turns in arrival order.

Two cores run one measurement well and several badly; without an order, a
session's burst of slider moves could overtake another session's single move
indefinitely. :data:`MEASUREMENTS` is a ticket lock shared by every engine of
the process: each measurement draws a ticket and runs when its number comes up
(re-entrant per thread, so a measurement that needs another one inside it
never waits on itself). :meth:`TicketQueue.ahead` tells a page how many are
ahead of a new request, so it can say so at once. Long training work does not
queue here (it yields to interactive work instead, see :mod:`priority`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class TicketQueue:
    """A FIFO lock: turns are served in the order tickets were drawn."""

    def __init__(self):
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()  # tickets whose waiter gave up (an exception while waiting)
        self._holder: int | None = None
        self._depth = 0

    def ahead(self) -> int:
        """How many measurements a request made now would wait behind (running one included)."""
        with self._cond:
            return self._next_ticket - self._serving - len(self._abandoned)

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Waits for this thread's turn, in ticket order, and holds it for the block."""
        me = threading.get_ident()
        with self._cond:
            if self._holder != me:
                ticket = self._next_ticket
                self._next_ticket += 1
                try:
                    self._cond.wait_for(lambda: self._serving == ticket)
                except BaseException:
                    self._abandoned.add(ticket)
                    raise
                self._holder = me
            self._depth += 1  # re-entrant: a measurement inside a measurement keeps the turn
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._holder = None
                    self._advance()


MEASUREMENTS = TicketQueue()
