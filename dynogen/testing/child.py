"""A fake server in a child process: started with its options as flags, ready when it
prints its URL, stopped with SIGTERM. The OpenAI and Anthropic fakes both run this way."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Self

import orjson
from aiohttp import web

__all__ = ["ChildProcess", "fake_main", "flags", "run_app", "serve_until_signalled", "start_child"]


@contextlib.asynccontextmanager
async def run_app(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve a fake's ``app`` on ``host:port`` (0 picks a free port) until the block exits;
    yields the port."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def flags(options: Mapping[str, Any]) -> list[str]:
    """``rpm=600`` → ``--rpm 600``, ``kinds=["a", "b"]`` → ``--kinds a,b``,
    ``output_tokens=(100, 300)`` → ``--output-tokens 100:300``; ``None``/``False`` left out."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, tuple) and len(value) == 2 and key == "output_tokens":
            argv += [flag, f"{value[0]}:{value[1]}"]
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def fake_main(argv: Sequence[str] | None, parser: argparse.ArgumentParser,
              make: Callable[[argparse.Namespace], Any],
              serve: Callable[[Any, str, int], contextlib.AbstractAsyncContextManager[Any]],
              ) -> int:
    """A fake's ``main``: parse, build the fake (a ``ValueError`` is a usage error), serve
    it on ``--host``/``--port`` until signalled (on uvloop where installed: more of the
    machine's cores for the clients being measured)."""
    args = parser.parse_args(argv)
    try:
        fake = make(args)
    except ValueError as e:
        parser.error(str(e))
    from dynogen.eventloop import run as run_on_loop

    run_on_loop(serve_until_signalled(serve(fake, args.host, args.port)))
    return 0


async def serve_until_signalled(server: contextlib.AbstractAsyncContextManager[Any]) -> None:
    """Serve until SIGTERM or SIGINT, after printing ``{"url", "pid"}`` for the parent."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server as running:
        print(json.dumps({"url": running.url, "pid": os.getpid()}), flush=True)
        await stop.wait()


def start_child(module: str, options: Mapping[str, Any], *, what: str,
                ready_timeout: float = 90.0) -> tuple[subprocess.Popen[bytes], str, Any]:
    """``python -m module`` with ``options`` as flags; waits for its URL line. Returns the
    process, its URL and its stderr log (the caller's process object closes it)."""
    argv = [sys.executable, "-m", module, *flags(options)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- the process object owns and closes it
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(ready_timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.seek(0)
        err = log.read().decode("utf-8", "replace").strip().splitlines()
        log.close()
        raise RuntimeError(f"the {what} did not start: {err[-1] if err else 'no output'}")
    return proc, str(json.loads(line)["url"]), log


class ChildProcess:
    """A fake in a child process; stops on ``with`` exit. ``root`` is where its admin
    routes (``/stats``, ``/admin/...``) are."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Any, *,
                 root: str | None = None, timeout: float = 30.0) -> None:
        self.proc = proc
        self.url = url
        self.root = root if root is not None else url
        self.pid = proc.pid
        self._log = log
        self._timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = None if payload is None else orjson.dumps(dict(payload))
        req = urllib.request.Request(self.root + path, data=data, method="GET" if data is None
                                     else "POST", headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=self._timeout) as resp:
            return orjson.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._call("/stats"))

    def set_limits(self, **limits: float | None) -> Any:
        return self._call("/admin/limits", limits)

    def reset(self) -> None:
        self._call("/admin/reset", {})

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited in ``timeout`` seconds; returns the code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode
