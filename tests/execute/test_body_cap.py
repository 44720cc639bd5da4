"""Answers of bounded size (issue #12): a runaway body is cut off as it streams in.

A proxy that answered one chat request with 1.5 GB drove ``dynogen call`` to
6.75 GB of memory and wrote the whole body to its output and cache. Against a
real aiohttp server that streams an endless body, declares a huge length, or
sends a small gzip that inflates to 50 MB, the transport stops reading at
``max_response_bytes``, the dispatcher retries it like a server fault, and
neither the output nor the cache ever holds it.
"""

from __future__ import annotations

import gzip
import io
import resource
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from dynogen.commands.call import acall
from dynogen.config import Config, Secret
from dynogen.errors import ResponseTooLargeError
from dynogen.execute.transport import iter_lines_capped, read_capped_sync

CAP = 256 * 1024
ANSWER = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "fine"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})


class Runaway:
    """First chat request: a runaway answer of ``kind``; every later one: a normal answer."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls = 0
        self.streamed = 0
        # Built before the client's memory is measured: only the client's share counts.
        self.bomb = gzip.compress(b'{"choices": "' + b" " * (200 * 2**20) + b'"}') if (
            kind == "gzip") else b""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.calls += 1
        if self.calls > 1:
            return web.Response(body=ANSWER, content_type="application/json")
        if self.kind == "gzip":
            return web.Response(body=self.bomb, headers={"Content-Encoding": "gzip",
                                                    "Content-Type": "application/json"})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.kind == "declared":
            resp.content_length = 1_500_000_000
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * 2**20
        try:
            for _ in range(1500):  # up to 1.5 GB, as the broken proxy sent
                await resp.write(chunk)
                self.streamed += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what we want
        return resp


@pytest.fixture
async def runaway_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Runaway]]:
    srv = Runaway(request.param)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", srv.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", srv
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("runaway_server", ["chunked", "declared", "gzip"], indirect=True)
async def test_a_runaway_answer_is_cut_off_retried_and_never_kept(
        tmp_path: Path, runaway_server: tuple[str, Runaway]) -> None:
    url, srv = runaway_server
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(orjson.dumps({
        "custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}) + b"\n")
    out, cache = tmp_path / "answers.jsonl", tmp_path / "cache.sqlite"
    cfg = Config(base_url=url, model="m", free=True, quiet=True, api_key=Secret("sk-x"),
                 max_response_bytes=CAP, cache_path=str(cache), retry_base_delay=0.01,
                 retry_max_delay=0.02, max_in_flight=2)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = await acall(cfg, requests, out)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert res.stop_reason is None and res.requests == 1
    assert srv.calls == 2 and res.session.get("retries") == 1  # retried like a 5xx
    line = orjson.loads(out.read_bytes())
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "fine"
    assert out.stat().st_size < 4096
    with sqlite3.connect(cache) as db:
        sizes = [n for (n,) in db.execute("SELECT length(body) FROM answers")]
    assert sizes == [len(ANSWER)]
    assert srv.streamed < 64 * 2**20  # the server was stopped, not read to the end
    assert grown_mb < 100, grown_mb


def test_batch_output_lines_over_the_cap_are_skipped_unheld() -> None:
    big = b"x" * (3 * 2**16 + 5)
    data = b'{"a": 1}\n' + big + b"\n" + b'{"b": 2}\n' + b"tail-without-newline"
    got = list(iter_lines_capped(io.BytesIO(data), 1024))
    assert got == [b'{"a": 1}\n', None, b'{"b": 2}\n', b"tail-without-newline"]
    assert list(iter_lines_capped(io.BytesIO(b"y" * 5000), 1024)) == [None]
    assert list(iter_lines_capped(io.BytesIO(b""), 1024)) == []


def test_a_blocking_read_stops_at_the_cap() -> None:
    assert read_capped_sync(io.BytesIO(b"z" * 1000), 1000) == b"z" * 1000
    with pytest.raises(ResponseTooLargeError, match="larger than 1,000 bytes"):
        read_capped_sync(io.BytesIO(b"z" * 1001), 1000, "the Hub")
