"""Where the limiter reads time, so tests can own it.

Everything time-dependent in ``dynogen.ratelimit`` goes through a ``Clock``:
``now()`` for reading and ``await sleep(s)`` for waiting. ``MonotonicClock`` is
the real one. ``FakeClock`` only moves when a test says so: ``advance()`` steps
from one sleeper's deadline to the next, waking sleepers in deadline order and
letting the woken tasks run before time moves on, so a minute of pacing runs in
milliseconds and is exactly repeatable.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

__all__ = ["Clock", "FakeClock", "MonotonicClock"]

T = TypeVar("T")


class Clock(Protocol):
    """A monotonic time source in seconds, and a way to wait on it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``.

    >>> MonotonicClock().now() > 0
    True
    """

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that stands still until told to move.

    ``advance`` is a coroutine because moving time must also let the tasks it
    wakes run (and perhaps go back to sleep) before time moves further; a
    synchronous advance would wake everyone at the end time and hide pacing bugs.

    >>> async def demo() -> float:
    ...     clock = FakeClock()
    ...     sleeper = asyncio.ensure_future(clock.sleep(5))
    ...     await clock.advance(5)
    ...     return clock.now() if sleeper.done() else -1.0
    >>> asyncio.run(demo())
    5.0
    """

    __slots__ = ("_now", "_sleepers", "_seq")

    # Loop turns allowed for woken tasks to settle when the event loop's ready
    # queue cannot be inspected; with CPython's loops settling ends when idle.
    SETTLE_TURNS = 200

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if not seconds > 0.0:  # also catches NaN
            await asyncio.sleep(0)
            return
        deadline = self._now + seconds
        if deadline <= self._now:  # a delay below float resolution must still move time
            deadline = math.nextafter(self._now, math.inf)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (deadline, self._seq, fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (cancelled ones are dropped as they are met)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    @property
    def next_deadline(self) -> float | None:
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in deadline order."""
        if not seconds >= 0.0:
            raise ValueError(f"FakeClock.advance needs seconds >= 0, got {seconds}")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (never backwards), waking sleepers on the way."""
        await self._settle()
        while True:
            self._drop_cancelled()
            if not self._sleepers or self._sleepers[0][0] > when:
                break
            self._now = max(self._now, self._sleepers[0][0])
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            await self._settle()
        self._now = max(self._now, when)
        await self._settle()

    async def run(self, aw: Awaitable[T], *, timeout: float = math.inf) -> T:
        """Run ``aw`` to completion, jumping time to each next deadline whenever all is idle.

        Raises ``RuntimeError`` if ``aw`` waits with nobody asleep (it would wait
        forever) and ``TimeoutError`` past ``timeout`` seconds of fake time.
        """
        task = asyncio.ensure_future(aw)
        limit = self._now + timeout
        try:
            while True:
                await self._settle()
                if task.done():
                    return task.result()
                nxt = self.next_deadline
                if nxt is None:
                    raise RuntimeError("FakeClock.run: the task is blocked and nothing is asleep")
                if nxt > limit:
                    raise TimeoutError(f"FakeClock.run: not done after {timeout} s of fake time")
                await self.advance_to(nxt)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    async def _settle(self) -> None:
        """Yield until every runnable task has run and blocked again."""
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        for _ in range(self.SETTLE_TURNS):
            await asyncio.sleep(0)
            # We resume inside the loop's turn; an empty ready queue means no
            # other callback is left to run in this turn or was scheduled since.
            if ready is not None and not ready:
                return
