"""The limiter's FIFO: requests that cannot go at once, and what wakes them.

Each waiting ``acquire`` is one ``Waiter`` (its future and its timer) in a
``WaitQueue``. Only the head of the queue is ever woken: by a release, by a
change of limits or of the in-flight target, or by the timer armed for when
pacing says it may go; it takes its grant, then wakes the next. The queue knows
nothing of limits: whether the head may go is the ``admit`` callback's answer
(the limiter's), which grants it or arms its timer. Kept apart from the limiter
because it is the only part that creates futures and tasks: the uncontended
path of ``acquire`` never gets here.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Final, TypeVar

from dynogen.ratelimit.clock import Clock

__all__ = ["MIN_SLEEP", "WaitQueue", "Waiter"]

MIN_SLEEP: Final = 1e-6  # never arm a timer shorter than this (float rounding at wake-up)
_INF: Final = math.inf

T = TypeVar("T")


class Waiter:
    """One waiting request: the tokens it reserves (and what it asked, of which
    ``max_tokens``), its future, and the timer that wakes it."""

    __slots__ = ("tokens", "asked", "max_tokens", "fut", "timer", "wake_at", "error")

    def __init__(self, tokens: int, asked: int = 0, max_tokens: int = 0) -> None:
        self.tokens = tokens
        self.asked = asked
        self.max_tokens = max_tokens
        self.fut: asyncio.Future[None] | None = None
        self.timer: asyncio.Task[None] | None = None
        self.wake_at = _INF
        self.error: BaseException | None = None  # it can never go: its acquire raises this

    def wake(self, _: object = None) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        # Recorded, then woken: a waiter already woken (its future done, not yet run)
        # must see the error too, not carry on with its waker's result.
        self.error = exc
        self.wake()

    def arm(self, clock: Clock, now: float, delay: float) -> None:
        """Make sure something wakes us by ``now + delay`` (an earlier timer already does)."""
        when = now + delay
        timer = self.timer
        if timer is not None and not timer.done():
            if self.wake_at <= when:
                return
            timer.cancel()
        self.wake_at = when
        self.timer = asyncio.ensure_future(clock.sleep(max(delay, MIN_SLEEP)))
        self.timer.add_done_callback(self.wake)

    def disarm(self) -> None:
        if self.timer is not None and not self.timer.done():
            self.timer.cancel()
        self.timer = None


class WaitQueue:
    """FIFO of waiting requests, one woken at a time.

    ``fifo`` is the queue itself, public so the limiter's fast path can see
    whether anyone waits with one truth test (it only reads it).

    >>> async def demo() -> str:
    ...     queue = WaitQueue()
    ...     return await queue.wait(Waiter(10), lambda w: f"granted {w.tokens}")
    >>> asyncio.run(demo())
    'granted 10'
    """

    __slots__ = ("fifo",)

    def __init__(self) -> None:
        self.fifo: deque[Waiter] = deque()

    def __len__(self) -> int:
        return len(self.fifo)

    async def wait(self, w: Waiter, admit: Callable[[Waiter], T | None]) -> T:
        """Queue ``w``; when it is at the head, ``admit(w)`` says whether it goes: its
        grant, or ``None`` (it has armed the waiter's timer, or a release, new limits
        or a new target will wake it)."""
        loop = asyncio.get_running_loop()
        fifo = self.fifo
        fifo.append(w)
        try:
            while True:
                if w.error is not None:
                    raise w.error
                w.fut = loop.create_future()
                if fifo[0] is w:
                    granted = admit(w)
                    if granted is not None:
                        fifo.popleft()
                        w.disarm()
                        if fifo:
                            fifo[0].wake()
                        return granted
                await w.fut
        except BaseException:
            w.disarm()
            if fifo and fifo[0] is w:
                fifo.popleft()
                self.wake_head()
            elif w in fifo:
                fifo.remove(w)
            raise

    def wake_head(self) -> None:
        if self.fifo:
            self.fifo[0].wake()

    def fail_where(self, never: Callable[[Waiter], bool],
                   error: Callable[[Waiter], BaseException]) -> None:
        """Take out every waiter that can ``never`` go, failing its ``acquire`` with ``error``."""
        for w in [w for w in self.fifo if never(w)]:
            self.fifo.remove(w)
            w.disarm()
            w.fail(error(w))
