"""A fake Anthropic API (Messages and Message Batches) for tests and benchmarks.

``FakeAnthropic`` holds the settings (limits, latency, the answer queue, prices)
and the record (``history``, stats, the bill); ``make_app`` serves it over real
HTTP with aiohttp, so the ``anthropic`` SDK and dynogen's client both talk to it
as to Anthropic (``base_url`` is the server's root, without ``/v1``)::

    fake = FakeAnthropic(rpm=4000, itpm=2_000_000, otpm=400_000)
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="test")

What it does as Anthropic does (deciding an answer is plain code, no I/O):

- ``POST /v1/messages``: checks ``x-api-key`` (when ``api_key`` is set),
  ``anthropic-version``, ``max_tokens`` and refuses keys the API does not know
  (an OpenAI ``seed`` or ``response_format`` is a 400). A forced tool is answered
  with a ``tool_use`` block whose input fills the tool's ``input_schema``
  deterministically from a hash of the request (the same task lists the OpenAI
  fake writes, ``fake_answers``); a verdict tool gets a verdict; otherwise text.
- Tokens: the tools' JSON, ``tool_prompt_tokens`` for the tool-use system prompt,
  the system blocks and each message (3 framing tokens plus its text), counted
  with ``encoding`` (Claude's tokenizer is not public: this is the fake's choice).
  A ``cache_control`` breakpoint caches the prefix up to it (tools → system →
  messages) once it is ``cache_min_tokens`` long: the first request writes it
  (``cache_creation_input_tokens``), later ones read it
  (``cache_read_input_tokens``) for ``cache_ttl`` seconds from the last use;
  ``input_tokens`` is the rest, as Anthropic reports it.
- Limits: requests, input tokens and output tokens per minute, each a bucket
  refilled continuously and holding ``burst_seconds`` of its rate
  (``fake_limits.TokenBucket``). Input counts uncached tokens and cache writes
  (reads too with ``cache_reads_count``); output holds ``max_tokens`` while the
  request runs and gets back what was not generated when the answer is sent.
  Every answer carries ``anthropic-ratelimit-{requests,input-tokens,
  output-tokens}-{limit,remaining,reset}`` (token ``remaining`` rounded to the
  thousand, ``reset`` an RFC 3339 time) and a ``Date``; a 429 adds
  ``retry-after``. Queued ``Fault``s give 429s, 529 overloaded, 500s, resets.
- Message Batches (``fake_anthropic_batches``), outside the per-minute limits.
- The bill: with ``prices`` (dollars per 1M tokens: ``input``, ``output``,
  ``cache_write``, ``cache_read``; Batches at ``batch_factor`` of them) every
  processed request is billed, online and batch apart (``bill()``).

Request validation, token layout and the prompt cache are in
``fake_anthropic_wire``; ``python -m dynogen.testing.fake_anthropic_process
--port 0 --rpm 3000 ...`` serves it in its own process (``start_fake_anthropic``
from Python) and prints ``{"url": ..., "pid": ...}``.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash
from aiohttp import web

from dynogen.prompts.tokens import TokenCounter
from dynogen.testing.child import run_app
from dynogen.testing.fake_answers import (
    Fault,
    Latency,
    OutputTokens,
    Reply,
    auto_content,
    auto_verdict,
    task_spec,
)
from dynogen.testing.fake_anthropic_batches import FakeMessageBatches, add_batch_routes
from dynogen.testing.fake_anthropic_wire import (
    Layout,
    PromptCache,
    Refused,
    as_openai,
    canonical,
    check,
    error_body,
    forced_tool,
    key_matches,
    layout,
    rfc3339,
)
from dynogen.testing.fake_limits import Stats, TokenBucket

__all__ = ["BILL_KINDS", "FakeAnthropic", "FakeAnthropicServer", "make_app", "serve"]

Answer = str | Mapping[str, Any] | Fault
_KEEP: Any = object()
_JSON = "application/json"
BILL_KINDS = ("requests", "input", "cache_write", "cache_read", "output")
_LIMIT_NAMES = (("requests", "requests"), ("input-tokens", "input tokens"),
                ("output-tokens", "output tokens"))


@dataclass
class _Bill:
    requests: int = 0
    input: int = 0
    cache_write: int = 0
    cache_read: int = 0
    output: int = 0
    usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*BILL_KINDS, "usd")}


class FakeAnthropic:
    """Settings and state of one fake Anthropic server (see the module docstring).

    >>> fake = FakeAnthropic(rpm=600, seed=1)
    >>> fake.enqueue('{"tasks": []}', Fault("unavailable"))
    >>> len(fake.queue)
    2
    """

    def __init__(self, *, model: str = "claude-sonnet-4-5", rpm: float | None = None,
                 itpm: float | None = None, otpm: float | None = None,
                 burst_seconds: float = 1.0, latency: Latency | None = None,
                 output_tokens: OutputTokens | None = None, api_key: str | None = None,
                 keep_history: bool = True, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, encoding: str = "o200k_base",
                 tool_prompt_tokens: int = 346, cache_min_tokens: int = 1024,
                 cache_ttl: float = 300.0, cache_reads_count: bool = False,
                 round_remaining: bool = True, prices: Mapping[str, float] | None = None,
                 batch_factor: float = 0.5, overload_rate: float = 0.0) -> None:
        for limit in (rpm, itpm, otpm):
            if limit is not None and limit <= 0:
                raise ValueError(f"rpm, itpm and otpm must be positive or None, got {limit}")
        self.model = model
        self.latency = latency or Latency()
        self.output_tokens = output_tokens
        self.api_key = api_key
        self.keep_history = keep_history
        self.seed = seed
        self.clock = clock
        self.wall = wall
        self.counter = TokenCounter(encoding)
        self.tool_prompt_tokens = tool_prompt_tokens
        self.cache_min_tokens = cache_min_tokens
        self.cache_ttl = cache_ttl
        self.cache_reads_count = cache_reads_count
        self.round_remaining = round_remaining
        self.prices = dict(prices) if prices else None
        self.batch_factor = batch_factor
        self.overload_rate = overload_rate
        self.burst_seconds = burst_seconds
        self.buckets: dict[str, TokenBucket | None] = {"requests": None, "input-tokens": None,
                                                       "output-tokens": None}
        self.set_limits(rpm=rpm, itpm=itpm, otpm=otpm)
        self.queue: collections.deque[Answer] = collections.deque()
        self.history: list[Any] = []
        self.batches = FakeMessageBatches(self, clock=wall, seed=seed)
        self.reset()

    # ---- scripting and control ------------------------------------------------------------

    def enqueue(self, *answers: Answer) -> None:
        """Answers used in order: content (a tool's input as JSON text, or text), a whole
        response dict, or a ``Fault`` (rate_limit, unavailable → 529, server_error, http,
        not_json, length, reset, slow)."""
        for a in answers:
            if not isinstance(a, str | Mapping | Fault):
                raise TypeError(f"an answer is a str, a response dict or a Fault, not {type(a)}")
            self.queue.append(a)

    def set_limits(self, *, rpm: float | None = _KEEP, itpm: float | None = _KEEP,
                   otpm: float | None = _KEEP) -> None:
        """Change limits mid-run (``None`` lifts one); a bucket keeps its deficit."""
        now = self.clock()
        for name, value in (("requests", rpm), ("input-tokens", itpm), ("output-tokens", otpm)):
            if value is _KEEP:
                continue
            old = self.buckets[name]
            if value is None:
                self.buckets[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"limits must be positive numbers or null, got {value!r}")
            new = TokenBucket(value, burst_seconds=self.burst_seconds, now=now)
            if old is not None:
                old.refill(now)
                new.level = min(new.capacity, new.capacity - old.deficit())
            self.buckets[name] = new

    def reset(self) -> None:
        """Forget what happened: queue, history, stats, prompt cache, bill, full buckets."""
        now = self.clock()
        for b in self.buckets.values():
            if b is not None:
                b.level, b.updated = b.capacity, now
        self.queue.clear()
        self.history.clear()
        self.stats = Stats(now)
        self.rng = random.Random(self.seed)
        self._seq = 0
        self.cache = PromptCache(self.cache_min_tokens, self.cache_ttl)
        self._bill = {"online": _Bill(), "batch": _Bill()}

    def bill(self) -> dict[str, Any]:
        """What the server billed: tokens and dollars, online and batch apart."""
        out: dict[str, Any] = {k: b.to_dict() for k, b in self._bill.items()}
        out["usd"] = round(self._bill["online"].usd + self._bill["batch"].usd, 9)
        return out

    def stats_dict(self) -> dict[str, Any]:
        now = self.clock()
        limits: dict[str, Any] = {"burst_seconds": self.burst_seconds}
        for name, b in self.buckets.items():
            limits[name] = None if b is None else b.limit
        return {**self.stats.to_dict(now), "limits": limits, "bill": self.bill(),
                "batches": self.batches.counts()}

    # ---- counting ---------------------------------------------------------------------------

    # ---- deciding an answer (no I/O) ---------------------------------------------------------

    def _auth(self, headers: Mapping[str, str]) -> None:
        if self.api_key is not None and not key_matches(headers, self.api_key):
            raise Refused(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            raise Refused(400, "invalid_request_error", "anthropic-version: header is required")

    def reply(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        """Decide the answer to one ``POST /v1/messages`` (rate-limited, billed online)."""
        now = self.clock()
        self.stats.arrived(now)
        self._seq += 1
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if self.keep_history:
            self.history.append(body if body is not None else raw)
        out = {"content-type": _JSON, "request-id": f"req_fake{self._seq:020d}"}
        try:
            self._auth(headers)
            body = check(body)
        except Refused as e:
            return Reply(e.status, e.body(), out)
        lay = layout(body, self.counter, self.tool_prompt_tokens)
        answer: Answer | None = self.queue.popleft() if self.queue else None
        if answer is None and self.overload_rate and self.rng.random() < self.overload_rate:
            answer = Fault("unavailable")
        if isinstance(answer, Fault) and answer.kind in ("rate_limit", "unavailable",
                                                         "server_error", "http", "reset",
                                                         "timeout"):
            return self._fault(answer, out, now)
        _, read = self.cache.peek(lay, now)
        counted = lay.total - read + (read if self.cache_reads_count else 0)
        refusal = self._admit(counted, body["max_tokens"], now)
        out.update(self.headers(now))
        if refusal is not None:
            kind, wait = refusal
            out["retry-after"] = str(max(1, math.ceil(wait)))
            return Reply(429, error_body("rate_limit_error", self._limit_message(kind)), out,
                         limited=kind)
        status, doc = self.message(body, lay, now, batch=False, answer=answer)
        body_bytes = orjson.dumps(doc)
        if isinstance(answer, Fault) and answer.kind == "not_json":
            body_bytes = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        usage = doc.get("usage") or {}
        reply = Reply(status, body_bytes, out,
                      tokens=(lay.total, int(usage.get("output_tokens") or 0)))
        reply.delay = self._delay(doc, answer)
        reply.fault = answer.kind if isinstance(answer, Fault) else None
        return reply

    def _delay(self, doc: Mapping[str, Any], answer: Answer | None) -> float:
        if isinstance(answer, Fault) and answer.kind == "slow":
            return answer.wait
        if self.latency.is_zero:
            return 0.0
        n = int((doc.get("usage") or {}).get("output_tokens") or 0)
        target = self.output_tokens
        if target is not None:
            n = target if isinstance(target, int) else self.rng.randint(*target) \
                if isinstance(target, tuple) else target(self.rng)
        return self.latency.sample(self.rng, n)

    def message(self, body: Mapping[str, Any], lay: Layout | None, now: float, *, batch: bool,
                answer: Answer | None = None) -> tuple[int, dict[str, Any]]:
        """The answer to a valid request: (200, a message), billed; caches what it writes."""
        lay = lay if lay is not None else layout(body, self.counter, self.tool_prompt_tokens)
        written, read = self.cache.use(lay, now)
        if isinstance(answer, Mapping):
            return 200, dict(answer)
        tool = forced_tool(body)
        digest = xxhash.xxh3_64_intdigest(canonical(body))
        if isinstance(answer, str):
            text = answer
        elif tool is not None and tool.get("name") == "verdict":
            text = auto_verdict(digest)
        else:
            text = auto_content(task_spec(as_openai(body, tool)), digest)
        max_tokens = int(body["max_tokens"])
        out_tokens = self.counter.count(text)
        stop = "tool_use" if tool is not None else "end_turn"
        if out_tokens > max_tokens or (isinstance(answer, Fault) and answer.kind == "length"):
            stop = "max_tokens"
            text = self.counter.truncate(text, max_tokens) if out_tokens > max_tokens else \
                text[: len(text) // 2]
            out_tokens = min(out_tokens, max_tokens)
        if tool is not None:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                value = {}  # cut off mid-answer: the tool's input is incomplete
            block: dict[str, Any] = {"type": "tool_use", "id": f"toolu_fake{digest:016x}",
                                     "name": tool["name"], "input": value}
        else:
            block = {"type": "text", "text": text}
        usage = {"input_tokens": lay.total - written - read, "output_tokens": out_tokens,
                 "cache_creation_input_tokens": written, "cache_read_input_tokens": read,
                 "service_tier": "batch" if batch else "standard"}
        self._charge(usage, batch)
        return 200, {"id": f"msg_fake{digest:016x}{self._seq:06d}", "type": "message",
                     "role": "assistant", "model": body.get("model") or self.model,
                     "content": [block], "stop_reason": stop, "stop_sequence": None,
                     "usage": usage}

    def process(self, params: Any) -> tuple[int, dict[str, Any]]:
        """One Message Batches request: (200, message) or (status, error); not rate-limited."""
        try:
            body = check(params)
        except Refused as e:
            return e.status, {"type": "error", "error": {"type": e.kind, "message": str(e)}}
        self._seq += 1
        return self.message(body, None, self.clock(), batch=True)

    def _charge(self, usage: Mapping[str, Any], batch: bool) -> None:
        b = self._bill["batch" if batch else "online"]
        b.requests += 1
        b.input += usage["input_tokens"]
        b.cache_write += usage["cache_creation_input_tokens"]
        b.cache_read += usage["cache_read_input_tokens"]
        b.output += usage["output_tokens"]
        p = self.prices
        if p:
            usd = (usage["input_tokens"] * p["input"] + usage["output_tokens"] * p["output"]
                   + usage["cache_creation_input_tokens"] * p.get("cache_write", p["input"])
                   + usage["cache_read_input_tokens"] * p.get("cache_read", p["input"])) / 1e6
            b.usd += usd * (self.batch_factor if batch else 1.0)

    # ---- limits -----------------------------------------------------------------------------

    def _admit(self, input_tokens: int, max_tokens: int, now: float) -> tuple[str, float] | None:
        """Take one request, its input tokens and ``max_tokens`` of output, or say which limit
        refuses (taking nothing)."""
        asks = (("requests", 1), ("input-tokens", input_tokens), ("output-tokens", max_tokens))
        for name, cost in asks:
            b = self.buckets[name]
            if b is not None:
                wait = b.wait(cost, now=now)
                if wait > 0:
                    return name, wait
        for name, cost in asks:
            b = self.buckets[name]
            if b is not None:
                b.take(cost)
        return None

    def _limit_message(self, name: str) -> str:
        b = self.buckets[name]
        unit = dict(_LIMIT_NAMES)[name]
        return (f"This request would exceed your organization's rate limit of "
                f"{int(b.limit if b else 0):,} {unit} per minute. For details, refer to: "
                "https://docs.claude.com/en/api/rate-limits. You can see the response headers "
                "for current usage. Please reduce the prompt length or the maximum tokens "
                "requested, or try again later.")

    def headers(self, now: float) -> dict[str, str]:
        """The ``anthropic-ratelimit-*`` headers and the ``Date`` they are measured against."""
        wall = self.wall()
        out = {"date": email.utils.formatdate(wall, usegmt=True)}
        for name, b in self.buckets.items():
            if b is None:
                continue
            b.refill(now)
            left = b.remaining()
            if name != "requests" and self.round_remaining:
                left = (left + 500) // 1000 * 1000  # Anthropic rounds tokens to the thousand
            out[f"anthropic-ratelimit-{name}-limit"] = str(int(b.limit))
            out[f"anthropic-ratelimit-{name}-remaining"] = str(max(0, left))
            out[f"anthropic-ratelimit-{name}-reset"] = rfc3339(wall + b.reset_seconds())
        return out

    def _fault(self, f: Fault, out: dict[str, str], now: float) -> Reply:
        out.update(self.headers(now))
        if f.kind == "rate_limit":
            out["retry-after"] = str(max(1, math.ceil(f.retry_after)))
            name = "output-tokens" if f.limit_type == "tokens" else "requests"
            return Reply(429, error_body("rate_limit_error", self._limit_message(name)), out,
                         fault="rate_limit", limited=name)
        if f.kind == "unavailable":
            return Reply(529, error_body("overloaded_error", "Overloaded"), out,
                         fault="overloaded")
        if f.kind == "server_error":
            return Reply(500, error_body("api_error", "Internal server error"), out,
                         fault="server_error")
        if f.kind in ("reset", "timeout"):
            return Reply(0, b"", {}, action="reset" if f.kind == "reset" else "hang",
                         delay=f.wait, fault=f.kind)
        return Reply(f.status or 500, f.body_bytes() or b"", {**out, **f.headers}, fault="http")

    def finished(self, reply: Reply, max_tokens: int = 0) -> None:
        """Count an answer when it is sent; hand back the output tokens it did not use."""
        out = self.buckets["output-tokens"]
        if out is not None and reply.status == 200 and max_tokens:
            out.refill(self.clock())
            out.level = min(out.capacity, out.level + max(0, max_tokens - reply.tokens[1]))
        self.stats.record(self.clock(), reply.status, reply.tokens, reply.fault, reply.limited)


# ---- the aiohttp app ------------------------------------------------------------------------

def make_app(fake: FakeAnthropic) -> web.Application:
    """Messages, Message Batches, models, health, stats and admin routes."""
    closing = asyncio.Event()

    async def pause(seconds: float) -> None:
        if seconds > 0 and not closing.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), seconds)

    async def messages(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        reply = fake.reply(raw, request.headers)
        try:
            max_tokens = int(orjson.loads(raw).get("max_tokens") or 0)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            max_tokens = 0
        try:
            await pause(reply.delay)
        finally:
            fake.finished(reply, max_tokens)
        if reply.action != "answer":
            _reset(request)
            return web.Response(status=499)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def models(request: web.Request) -> web.Response:
        return _json({"data": [{"type": "model", "id": fake.model, "display_name": fake.model,
                                "created_at": "2025-09-29T00:00:00Z"}],
                      "has_more": False, "first_id": fake.model, "last_id": fake.model})

    async def stats(request: web.Request) -> web.Response:
        return _json(fake.stats_dict())

    async def limits(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict) or not set(body) <= {"rpm", "itpm", "otpm"}:
                raise ValueError('send {"rpm": N|null, "itpm": N|null, "otpm": N|null}')
            fake.set_limits(**body)
        except (orjson.JSONDecodeError, ValueError, TypeError) as e:
            return _json({"error": str(e)}, 400)
        return _json(fake.stats_dict()["limits"])

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return _json({"status": "reset"})

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def on_shutdown(app: web.Application) -> None:
        closing.set()

    app = web.Application(client_max_size=300 * 1024 * 1024)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_get("/health", health)
    app.router.add_post("/admin/limits", limits)
    app.router.add_post("/admin/reset", reset)
    add_batch_routes(app, fake.batches)
    app.on_shutdown.append(on_shutdown)
    return app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


@dataclass(frozen=True, slots=True)
class FakeAnthropicServer:
    """A running in-process fake; ``url`` is the SDK's ``base_url`` (the server's root)."""

    fake: FakeAnthropic
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def serve(fake: FakeAnthropic, host: str = "127.0.0.1",
                port: int = 0) -> AsyncIterator[FakeAnthropicServer]:
    """Serve ``fake`` on ``host:port`` (0 picks a free port) until the block exits."""
    async with run_app(make_app(fake), host, port) as bound:
        yield FakeAnthropicServer(fake, host, bound)
