"""A fake OpenAI-compatible chat server for tests and benchmarks.

One object, ``FakeOpenAI``, holds the settings (limits, latency, faults, the
answer queue) and the record (``history``, stats); ``make_app`` serves it with
aiohttp. Deciding an answer (``FakeOpenAI.reply``) is plain code with no I/O,
so the handler only reads the body, sleeps and writes.

Tests run it in-process::

    fake = FakeOpenAI(rpm=6000)
    fake.enqueue('{"tasks": []}', Fault("server_error"))
    async with serve(fake) as server:          # server.url == "http://127.0.0.1:PORT/v1"
        ...

Benchmarks run it in its own process, so its CPU does not compete with the
client's event loop::

    with start_fake_process(rpm=600, tpm=200_000, latency_median=0.3) as proc:
        ...  # proc.url, proc.stats(), proc.set_limits(rpm=300)

or ``python -m dynogen.testing.fake_openai --port 0 --rpm 600 ...``, which
prints ``{"url": ..., "pid": ...}`` once ready and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash
from aiohttp import web

from dynogen.testing.child import ChildProcess, fake_main, run_app, start_child
from dynogen.testing.fake_answers import (
    DEFAULT_FAULT_KINDS,
    ExactTokens,
    Fault,
    Latency,
    OutputTokens,
    Reply,
    add_answer_time_args,
    answer_time_of,
    auto_content,
    auto_verdict,
    completion_reply,
    count_prompt_tokens,
    error_reply,
    fault_reply,
    is_verdict_request,
    task_spec,
)
from dynogen.testing.fake_batch_routes import add_batch_routes
from dynogen.testing.fake_batches import FakeBatches
from dynogen.testing.fake_limits import RateLimiter, Stats, insufficient_quota_body

__all__ = ["FakeOpenAI", "FakeProcess", "FakeServer", "Recorded", "main", "make_app",
           "serve", "start_fake_process"]

Answer = str | Mapping[str, Any] | Fault
_KEEP: Any = object()
_JSON = "application/json"
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "openai-api-key"})


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as received. ``repr`` masks credentials so a failing test never prints them."""

    body: Any
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return f"Recorded(body={self.body!r}, headers={shown!r})"


class FakeOpenAI:
    """Settings and state of one fake server.

    Answers come from the queue (``enqueue``) while it has any, else from a
    seeded fault draw (``fault_rate`` over ``fault_kinds``), else a
    deterministic task list derived from the request. ``clock`` is read for
    rate limits and the stats timeline, so tests can move time by hand.
    ``exact_tokens`` bills ``usage`` in real tokens of ``encoding`` (default:
    the model's, from dynogen's price table) as OpenAI does, and
    ``prompt_cache`` adds ``cached_tokens`` for repeated prefixes (see
    ``fake_answers.ExactTokens``); cost studies need both, other tests neither.
    ``refuse_params`` names body fields the server does not know: a request
    carrying one gets the 400 OpenAI gives an unknown argument (how a server
    without ``prompt_cache_key`` answers it).

    >>> fake = FakeOpenAI(rpm=600, seed=1)
    >>> fake.enqueue("hello", Fault("server_error"))
    >>> len(fake.queue)
    2
    """

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini",
        rpm: float | None = None,
        tpm: float | None = None,
        burst_seconds: float = 1.0,
        latency: Latency | None = None,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = DEFAULT_FAULT_KINDS,
        output_tokens: OutputTokens | None = None,
        insufficient_quota: bool = False,
        api_key: str | None = None,
        keep_history: bool = True,
        seed: int = 0,
        organization: str = "org-fake",
        clock: Callable[[], float] = time.monotonic,
        exact_tokens: bool = False,
        prompt_cache: bool = False,
        encoding: str | None = None,
        refuse_params: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        for limit in (rpm, tpm):
            if limit is not None and limit <= 0:
                raise ValueError(f"rpm and tpm must be positive or None, got {limit}")
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be positive, got {burst_seconds}")
        if isinstance(output_tokens, int) and output_tokens < 1 or isinstance(
                output_tokens, tuple) and not 1 <= output_tokens[0] <= output_tokens[1]:
            raise ValueError(f"output_tokens must be >= 1 or a (lo, hi) range, got {output_tokens}")
        if prompt_cache and not exact_tokens:
            raise ValueError("prompt_cache needs exact_tokens (caching is counted in real tokens)")
        self.fault_kinds = tuple(Fault(k).kind for k in fault_kinds)  # validates the names
        if fault_rate and not self.fault_kinds:
            raise ValueError("fault_rate is set but fault_kinds is empty")
        self.model = model
        self.refuse_params = tuple(refuse_params)
        self.latency = latency or Latency()
        self.fault_rate = fault_rate
        self.output_tokens = output_tokens
        self.insufficient_quota = insufficient_quota
        self.api_key = api_key
        self.keep_history = keep_history
        self.seed = seed
        self.clock = clock
        self.limiter = RateLimiter(rpm=rpm, tpm=tpm, now=clock(), burst_seconds=burst_seconds,
                                   model=model, organization=organization)
        self.queue: collections.deque[Answer] = collections.deque()
        self.history: list[Recorded] = []
        self.stats = Stats(clock())
        self.rng = random.Random(seed)
        self._seq = 0
        self.exact = ExactTokens(encoding or _encoding_of(model),
                                 prompt_cache=prompt_cache) if exact_tokens else None
        # The Batch API's files and batches (``fake_batches``), with the defaults;
        # ``FakeBatches(fake, ...)`` with other settings takes their place.
        self.batches = FakeBatches(self)

    # ---- scripting and control -------------------------------------------------------------

    def enqueue(self, *answers: Answer) -> None:
        """Queue answers used in order: content strings, whole response dicts, or ``Fault``s."""
        for a in answers:
            if not isinstance(a, str | Mapping | Fault):
                raise TypeError(f"an answer is a str, a response dict or a Fault, not {type(a)}")
            self.queue.append(a)

    def set_limits(self, *, rpm: float | None = _KEEP, tpm: float | None = _KEEP,
                   burst_seconds: float | None = None) -> None:
        """Change limits mid-run; ``None`` lifts a limit, an omitted one is kept."""
        now = self.clock()
        lim = self.limiter
        old_rpm = lim.requests.limit if lim.requests else None
        old_tpm = lim.tokens.limit if lim.tokens else None
        new_rpm = old_rpm if rpm is _KEEP else rpm
        new_tpm = old_tpm if tpm is _KEEP else tpm
        for value in (new_rpm, new_tpm):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or value <= 0):
                raise ValueError(f"rpm and tpm must be positive numbers or null, got {value!r}")
        lim.set_limits(rpm=new_rpm, tpm=new_tpm, now=now, burst_seconds=burst_seconds)

    def reset(self) -> None:
        """Forget everything that happened: queue, history, stats, full buckets, RNG reseeded."""
        now = self.clock()
        self.limiter.refill_all(now)
        self.queue.clear()
        self.history.clear()
        self.stats = Stats(now)
        self.rng = random.Random(self.seed)
        self._seq = 0
        if self.exact is not None:
            self.exact.forget()

    def stats_dict(self) -> dict[str, Any]:
        now = self.clock()
        return {**self.stats.to_dict(now), "limits": self.limiter.describe(now)}

    # ---- deciding an answer (no I/O) -------------------------------------------------------

    def reply(self, raw: bytes, headers: Mapping[str, str], *, limited: bool = True) -> Reply:
        """Decide the answer to one ``POST /v1/chat/completions``; a batch line is not rate
        limited (``limited=False``): OpenAI queues batches apart from the per-minute limits."""
        self.stats.arrived(self.clock())
        self._seq += 1
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if self.keep_history:
            self.history.append(Recorded(
                body if body is not None else raw.decode("utf-8", "replace"),
                {k.lower(): v for k, v in headers.items()}))
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided. You can find your API key at "
                          "https://platform.openai.com/account/api-keys.",
                          "invalid_request_error", "invalid_api_key")
        if not isinstance(body, dict):
            return error_reply(400, "We could not parse the JSON body of your request. (HINT: This "
                          "likely means you aren't using your HTTP library correctly.)",
                          "invalid_request_error", None)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return error_reply(400, "Missing required parameter: 'messages'.",
                               "invalid_request_error", "missing_required_parameter", "messages")
        for param in self.refuse_params:
            if param in body:
                return error_reply(400, f"Unrecognized request argument supplied: {param}",
                                   "invalid_request_error", None, param)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if not isinstance(max_tokens, int) or max_tokens < 0:
            return error_reply(400, f"Invalid 'max_tokens': {max_tokens!r}.",
                               "invalid_request_error", "invalid_value", "max_tokens")
        if self.insufficient_quota:
            return Reply(429, insufficient_quota_body(), {"content-type": _JSON},
                         fault="insufficient_quota")
        ids = self.exact.prompt_ids(body) if self.exact is not None else None
        prompt_tokens = len(ids) if ids is not None else count_prompt_tokens(body)
        now = self.clock()
        refusal = (self.limiter.admit(tokens=prompt_tokens + max_tokens, now=now) if limited
                   else None)
        out_headers = {"content-type": _JSON, "x-request-id": f"req_{self._seq:024x}",
                       **self.limiter.headers(now)}
        if refusal is not None:
            if refusal.wait > 0:
                out_headers["retry-after"] = str(max(1, math.ceil(refusal.wait)))
                out_headers["retry-after-ms"] = str(max(1, round(refusal.wait * 1000)))
            return Reply(429, refusal.body, out_headers, limited=refusal.kind)
        answer: Answer | None = self.queue.popleft() if self.queue else None
        if answer is None and self.fault_rate and self.rng.random() < self.fault_rate:
            answer = Fault(self.rng.choice(self.fault_kinds))
        cached = self.exact.cached_prefix(ids) if self.exact is not None and ids else 0
        reply = self._render(answer, body, raw, prompt_tokens, max_tokens, out_headers, cached)
        if reply.action == "answer" and not self.latency.is_zero:
            reply.delay += self.latency.sample(self.rng, reply.tokens[1])
        return reply

    def embed_reply(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        """Decide the answer to one ``POST /v1/embeddings``: hashed bag-of-words vectors.

        Texts sharing words get similar vectors, so selection by diversity can be
        tested; ``dimensions`` in the body sets the size (default 64). Counted,
        recorded and rate-limited like chat requests; the answer queue is not used.
        """
        self.stats.requests += 1
        self._seq += 1
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if self.keep_history:
            self.history.append(Recorded(body if body is not None else raw.decode(
                "utf-8", "replace"), {k.lower(): v for k, v in headers.items()}))
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided.", "invalid_request_error",
                               "invalid_api_key")
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return error_reply(400, "'input' must be a string or a non-empty list of strings.",
                               "invalid_request_error", "invalid_value", "input")
        assert isinstance(body, dict)
        dims = body.get("dimensions", 64)
        if not isinstance(dims, int) or dims < 1:
            return error_reply(400, f"Invalid 'dimensions': {dims!r}.", "invalid_request_error",
                               "invalid_value", "dimensions")
        tokens = sum(len(t) // 4 + 1 for t in texts)
        now = self.clock()
        out_headers = {"content-type": _JSON, "x-request-id": f"req_{self._seq:024x}",
                       **self.limiter.headers(now)}
        refusal = self.limiter.admit(tokens=tokens, now=now)
        if refusal is not None:
            if refusal.wait > 0:
                out_headers["retry-after"] = str(max(1, math.ceil(refusal.wait)))
            return Reply(429, refusal.body, out_headers, limited=refusal.kind)
        data = [{"object": "embedding", "index": i, "embedding": _bag_vector(t, dims)}
                for i, t in enumerate(texts)]
        doc = {"object": "list", "data": data, "model": body.get("model", self.model),
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Reply(200, orjson.dumps(doc), out_headers, tokens=(tokens, 0))

    def _render(self, answer: Answer | None, body: dict[str, Any], raw: bytes, prompt_tokens: int,
                max_tokens: int, headers: dict[str, str], cached: int = 0) -> Reply:
        if isinstance(answer, Fault):
            lim = self.limiter
            bucket = lim.requests if answer.limit_type == "requests" else lim.tokens
            return fault_reply(answer, model=self.model, organization=lim.organization,
                               seq=self._seq, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                               headers=headers, auto=lambda: self._auto(body, raw),
                               limit=bucket.limit if bucket else None, exact=self.exact,
                               cached_tokens=cached)
        if isinstance(answer, Mapping):
            return Reply(200, orjson.dumps(dict(answer)), headers)
        content = answer if answer is not None else self._auto(body, raw)
        return completion_reply(self.model, self._seq, content, "stop", prompt_tokens, max_tokens,
                                headers, exact=self.exact, cached_tokens=cached)

    def _auto(self, body: dict[str, Any], raw: bytes) -> str:
        digest = xxhash.xxh3_64_intdigest(raw)
        if is_verdict_request(body):
            return auto_verdict(digest)
        target = self.output_tokens
        if target is not None and not isinstance(target, int):
            rng = random.Random(digest)
            target = rng.randint(*target) if isinstance(target, tuple) else target(rng)
        # Exact counting pads with " \n" (about 4 characters a token), not a run of spaces
        # (a few tokens however long), so a target length in tokens is roughly met.
        return auto_content(task_spec(body), digest, 4 * (target - 1) if target else 0,
                            pad=" \n" if self.exact is not None else " ")

    def finished(self, reply: Reply) -> None:
        """Count an answer when it is sent (so the timeline shows completions, not arrivals)."""
        self.stats.record(self.clock(), reply.status, reply.tokens, reply.fault, reply.limited)


def _bag_vector(text: str, dims: int) -> list[float]:
    vec = [0.0] * dims
    for word in text.casefold().split():
        h = xxhash.xxh3_64_intdigest(word.strip(".,;:!?").encode("utf-8", "surrogatepass"))
        vec[h % dims] += 1.0 if h >> 63 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


def _encoding_of(model: str) -> str:
    """The model's encoding from dynogen's price table (o200k_base if unknown)."""
    from dynogen.execute.prices import PriceTable

    known = PriceTable.load().find(model)
    return known.encoding if known is not None and known.encoding else "o200k_base"


# ---- the aiohttp app --------------------------------------------------------------------------

def make_app(fake: FakeOpenAI) -> web.Application:
    """Routes: chat completions, embeddings, health, models, stats, two admin endpoints, and
    the Batch API (``fake.batches`` served by ``fake_batch_routes``)."""
    closing = asyncio.Event()

    async def pause(seconds: float) -> None:
        # Ends early at shutdown so a "timeout" fault never holds a server open.
        if seconds > 0 and not closing.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), seconds)

    async def chat(request: web.Request) -> web.StreamResponse:
        reply = fake.reply(await request.read(), request.headers)
        if reply.delay > 0:
            try:
                await pause(reply.delay)
            finally:  # counted even when the client gave up and the handler was cancelled
                fake.finished(reply)
        else:
            fake.finished(reply)
        if reply.action != "answer":
            _reset(request)
            return web.Response(status=499)  # never written: the connection is gone
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def embeddings(request: web.Request) -> web.StreamResponse:
        reply = fake.embed_reply(await request.read(), request.headers)
        fake.finished(reply)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def models(request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [
            {"id": fake.model, "object": "model", "created": 0, "owned_by": "dynogen-fake"}]})

    async def stats(request: web.Request) -> web.Response:
        return _json(fake.stats_dict())

    async def limits(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict) or not set(body) <= {"rpm", "tpm", "burst_seconds"}:
                raise ValueError('send {"rpm": N|null, "tpm": N|null, "burst_seconds": S}')
            fake.set_limits(**body)
        except (orjson.JSONDecodeError, ValueError, TypeError) as e:
            return _json({"error": {"message": str(e), "type": "invalid_request_error"}}, 400)
        return _json(fake.limiter.describe(fake.clock()))

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return _json({"status": "reset"})

    async def on_shutdown(app: web.Application) -> None:
        closing.set()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/admin/limits", limits)
    app.router.add_post("/admin/reset", reset)
    app.on_shutdown.append(on_shutdown)
    add_batch_routes(app, fake.batches)
    return app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST, as a crashed proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()


@dataclass(frozen=True, slots=True)
class FakeServer:
    """A running in-process fake: ``url`` is the OpenAI base URL (ends in ``/v1``)."""

    fake: FakeOpenAI
    host: str
    port: int

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"


@asynccontextmanager
async def serve(fake: FakeOpenAI, host: str = "127.0.0.1",
                port: int = 0) -> AsyncIterator[FakeServer]:
    """Serve ``fake`` on ``host:port`` (0 picks a free port) until the block exits."""
    async with run_app(make_app(fake), host, port) as bound:
        yield FakeServer(fake, host, bound)


# ---- its own process ----------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynogen.testing.fake_openai",
                                description="A fake OpenAI-compatible chat server for benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed when ready)")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--tpm", type=float, default=None)
    p.add_argument("--burst-seconds", type=float, default=1.0)
    add_answer_time_args(p)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(DEFAULT_FAULT_KINDS))
    p.add_argument("--insufficient-quota", action="store_true")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--keep-history", action="store_true", help="keep every request (grows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-tokens", action="store_true",
                   help="count usage in real tokens, as OpenAI bills (see fake_answers)")
    p.add_argument("--prompt-cache", action="store_true",
                   help="report cached_tokens for repeated prefixes of 1,024+ tokens "
                        "(needs --exact-tokens)")
    p.add_argument("--encoding", default=None,
                   help="token encoding for --exact-tokens (default: the model's)")
    p.add_argument("--refuse-params", default="",
                   help="comma-separated body fields answered with a 400 (e.g. prompt_cache_key)")
    return p


def _fake_from_args(args: argparse.Namespace) -> FakeOpenAI:
    latency, out = answer_time_of(args)
    return FakeOpenAI(
        model=args.model, rpm=args.rpm, tpm=args.tpm, burst_seconds=args.burst_seconds,
        latency=latency,
        fault_rate=args.fault_rate,
        fault_kinds=[k for k in args.fault_kinds.split(",") if k],
        output_tokens=out, insufficient_quota=args.insufficient_quota, api_key=args.api_key,
        keep_history=args.keep_history, seed=args.seed, exact_tokens=args.exact_tokens,
        prompt_cache=args.prompt_cache, encoding=args.encoding,
        refuse_params=[p for p in args.refuse_params.split(",") if p],
    )


def main(argv: Sequence[str] | None = None) -> int:
    return fake_main(argv, _parser(), _fake_from_args, serve)


class FakeProcess(ChildProcess):
    """A fake server in a child process (see ``start_fake_process``); stops on ``with`` exit.
    ``url`` ends in ``/v1``; the admin routes are at ``root``."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Any) -> None:
        super().__init__(proc, url, log, root=url.removesuffix("/v1"), timeout=10.0)

    def set_limits(self, **limits: float | None) -> dict[str, Any]:
        return dict(self._call("/admin/limits", limits))


def start_fake_process(*, ready_timeout: float = 90.0, **options: Any) -> FakeProcess:
    """Start ``python -m dynogen.testing.fake_openai`` with ``options`` as flags
    (``rpm=600`` → ``--rpm 600``, ``fault_kinds=["reset"]`` → ``--fault-kinds reset``,
    ``output_tokens=(100, 300)`` → ``--output-tokens 100:300``) and wait until it serves."""
    return FakeProcess(*start_child("dynogen.testing.fake_openai", options,
                                    what="fake OpenAI server", ready_timeout=ready_timeout))



if __name__ == "__main__":
    sys.exit(main())
