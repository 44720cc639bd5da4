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
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


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
    """``asyncio.run`` on the loop ``loop_factory`` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)
