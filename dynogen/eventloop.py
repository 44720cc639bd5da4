"""The event loop every command runs on: uvloop where it is installed, else asyncio's.

Why: with a thousand requests in flight (a 30,000 RPM account at 3 s answers) the
loop's own work — timers, socket readiness, callbacks — is a large share of each
request's CPU, and one process has one core. uvloop (libuv, in C) does that work
several times faster; it is a dependency on Linux and macOS. Everything dynogen does
runs the same on either loop (the test suite runs on asyncio's).
``DYNOGEN_EVENT_LOOP=asyncio`` picks asyncio's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")

GEN0, GEN1, GEN2 = 50_000, 20, 100  # collector thresholds while a command runs (_collector)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` if wanted and importable, else ``None`` (asyncio's)."""
    if os.environ.get("DYNOGEN_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop ``loop_factory`` picks, with the collector tuned.

    Called where a loop is already running in this thread (a Jupyter notebook, an
    async web handler), it runs the command on a fresh loop in a worker thread and
    waits for it: no signal handlers there (they need the main thread), the user's
    loop and the collector left as they are. ``await dynogen.arun(...)`` is the
    native way from async code; this keeps ``dynogen.run(...)`` working too.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with _collector(), asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dynogen") as pool:
        return pool.submit(_run_fresh, coro).result()


def _run_fresh(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def _collector() -> Iterator[None]:
    """Fewer, cheaper garbage collections while a command runs.

    Why: every request allocates a few thousand short-lived objects, so CPython's
    default thresholds (700, 10, 10) run a collection every few requests, and with
    a thousand requests in flight the older generations it scans are large: at
    30,000 RPM the collector stopped the loop for over 20 ms a hundred times in a
    minute (8 s in all). Objects made before the run (imported modules: most of
    the heap) are frozen out of every collection, and young collections run after
    ``GEN0`` allocations. Reference cycles are still collected.
    ``DYNOGEN_GC=default`` keeps CPython's settings.
    """
    if os.environ.get("DYNOGEN_GC", "").strip().lower() == "default":
        yield
        return
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
