"""Ordered fetch-ahead: an async, concurrent fetcher behind a plain synchronous iterator.

The engine reads sources synchronously (in a thread, in chunks), but a source
such as the Hub is many small network calls that should run concurrently.
``ordered_prefetch`` runs an event loop in a worker thread: it pulls inputs
from the job's async ``items()``, starts ``fetch(item)`` for up to ``window``
of them at once, and hands results to the caller *in input order* through a
small bounded queue. Memory is bounded by ``window`` fetches plus the queue,
whatever the listing's length, and a slow consumer simply stops the fetcher
(the window stays full until the consumer takes the next result).

A failure is delivered in order too: results before it come out first, then
the exception is raised in the consumer. Closing the iterator early (a
``--limit`` reached, the engine stopping) cancels the fetches in flight and
lets the job close its sessions on its own loop.

>>> for result in ordered_prefetch(job, window=32):  # doctest: +SKIP
...     ...
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["PrefetchJob", "ordered_prefetch"]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_POLL = 0.01  # seconds between checks while the consumer's queue is full
_JOIN = 10.0  # seconds to wait for the worker thread after an early close


class PrefetchJob(Protocol[R_co]):
    """What ``ordered_prefetch`` runs on its loop: the inputs, one fetch each, a close."""

    def items(self) -> AsyncIterator[Any]: ...

    async def fetch(self, item: Any) -> R_co: ...

    async def aclose(self) -> None: ...


class _Stopped(Exception):
    """The consumer went away."""


class _Done:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Run(Generic[R]):
    def __init__(self, job: PrefetchJob[R], window: int, out: queue.Queue[Any],
                 stop: threading.Event) -> None:
        self.job = job
        self.window = window
        self.out = out
        self.stop = stop

    async def main(self) -> None:
        pending: asyncio.Queue[asyncio.Task[R] | _Failed | _Done] = asyncio.Queue()
        slots = asyncio.Semaphore(self.window)
        started: list[asyncio.Task[R]] = []
        producer = asyncio.create_task(self._produce(pending, slots, started))
        emitter = asyncio.create_task(self._emit(pending, slots))
        watcher = asyncio.create_task(self._watch())
        try:
            await asyncio.wait({emitter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if emitter.done() and not emitter.cancelled():
                error = emitter.exception()
                if error is not None and not isinstance(error, _Stopped):
                    with contextlib.suppress(_Stopped):
                        await self._put(_Failed(error))
        finally:
            for task in (watcher, emitter, producer, *started):
                task.cancel()
            await asyncio.gather(watcher, emitter, producer, *started, return_exceptions=True)
            await self.job.aclose()

    async def _watch(self) -> None:
        """Returns once the consumer has gone, so fetches in flight are cancelled at once."""
        while not self.stop.is_set():
            await asyncio.sleep(_POLL * 5)

    async def _produce(self, pending: asyncio.Queue[Any], slots: asyncio.Semaphore,
                       started: list[asyncio.Task[R]]) -> None:
        try:
            async for item in self.job.items():
                await slots.acquire()
                task = asyncio.create_task(self.job.fetch(item))
                started.append(task)
                pending.put_nowait(task)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - delivered after the results before it
            pending.put_nowait(_Failed(err))
            return
        pending.put_nowait(_Done())

    async def _emit(self, pending: asyncio.Queue[Any], slots: asyncio.Semaphore) -> None:
        while True:
            head = await pending.get()
            if isinstance(head, _Done):
                await self._put(head)
                return
            if isinstance(head, _Failed):
                await self._put(head)
                return
            result = await head  # raises the fetch's failure, in order
            await self._put(result)
            slots.release()

    async def _put(self, message: Any) -> None:
        while not self.stop.is_set():
            try:
                self.out.put_nowait(message)
                return
            except queue.Full:
                await asyncio.sleep(_POLL)
        raise _Stopped


def ordered_prefetch(job: PrefetchJob[R], *, window: int = 32,
                     buffer: int = 4) -> Iterator[R]:
    """``job.fetch(item)`` for each of ``job.items()``, concurrently, yielded in input order."""
    if window < 1 or buffer < 1:
        raise ValueError("window and buffer must be at least 1")
    out: queue.Queue[Any] = queue.Queue(maxsize=buffer)
    stop = threading.Event()
    run = _Run(job, window, out, stop)
    thread = threading.Thread(target=asyncio.run, args=(run.main(),), daemon=True,
                              name="dynogen-prefetch")
    thread.start()
    try:
        while True:
            message = out.get()
            if isinstance(message, _Done):
                return
            if isinstance(message, _Failed):
                raise message.error
            yield message
    finally:
        stop.set()
        thread.join(_JOIN)
