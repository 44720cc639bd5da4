"""The limiter's FIFO: requests that cannot go at once, and what wakes them.

Each waiting ``acquire`` is one ``Waiter`` (its future and its timer) in the
limiter's queue. Only the head of the queue is ever woken: by a release, by a
change of limits or of the in-flight target, or by the timer armed for when
pacing says it may go; it takes its grant, then wakes the next. Kept apart from
the limiter because it is the only part that creates futures and tasks: the
uncontended path of ``acquire`` never gets here.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Final

from dynogen.ratelimit.clock import Clock

if TYPE_CHECKING:
    from collections import deque

    from dynogen.ratelimit.calibrate import ChargeModel
    from dynogen.ratelimit.permit import Permit

__all__ = ["MIN_SLEEP", "WaitQueue", "Waiter"]

MIN_SLEEP: Final = 1e-6  # never arm a timer shorter than this (float rounding at wake-up)
_INF: Final = math.inf


class Waiter:
    __slots__ = ("tokens", "fut", "timer", "wake_at")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.fut: asyncio.Future[None] | None = None
        self.timer: asyncio.Task[None] | None = None
        self.wake_at = _INF

    def wake(self, _: object = None) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

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
    """``Limiter``'s waiting path: FIFO, one woken at a time (a mixin, no state of its own)."""

    __slots__ = ()

    if TYPE_CHECKING:
        # The limiter's, used here (``Limiter.__init__`` sets them).
        _clock: Clock
        _charge: ChargeModel
        _tpm: float | None
        _waiters: deque[Waiter]

        def _wait_time(self, now: float, tokens: int) -> float: ...
        def _grant(self, now: float, tokens: int, asked: int, max_tokens: int) -> Permit: ...

    async def _wait(self, tokens: int, asked: int, max_tokens: int) -> Permit:
        loop = asyncio.get_running_loop()
        w = Waiter(tokens)
        self._waiters.append(w)
        try:
            while True:
                w.fut = loop.create_future()
                if self._waiters[0] is w:
                    if self._charge.ready:
                        # The charge as known now: a request queued before the server's
                        # charge was learned must not go on reserving the old count.
                        w.tokens = self._charge.charge(asked, max_tokens)
                        if self._tpm is not None and w.tokens > self._tpm:
                            w.tokens = math.floor(self._tpm)  # goes alone, a full bucket
                    now = self._clock.now()
                    delay = self._wait_time(now, w.tokens)
                    if delay == 0.0:
                        self._waiters.popleft()
                        w.disarm()
                        permit = self._grant(now, w.tokens, asked, max_tokens)
                        if self._waiters:
                            self._wake_head()
                        return permit
                    if delay != _INF:
                        w.arm(self._clock, now, delay)
                await w.fut
        except BaseException:
            w.disarm()
            if self._waiters and self._waiters[0] is w:
                self._waiters.popleft()
                self._wake_head()
            elif w in self._waiters:
                self._waiters.remove(w)
            raise

    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].wake()
