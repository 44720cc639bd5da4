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

``python -m dynogen.testing.fake_anthropic --port 0 --rpm 3000 ...`` serves it in
its own process (``start_fake_anthropic`` from Python) and prints
``{"url": ..., "pid": ...}`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import json
import math
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import xxhash
from aiohttp import web

from dynogen.prompts.tokens import TokenCounter
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
from dynogen.testing.fake_limits import Stats, TokenBucket

__all__ = ["BILL_KINDS", "key_matches", "FakeAnthropic", "FakeAnthropicProcess", "FakeAnthropicServer",
           "error_body", "main", "make_app", "serve", "start_fake_anthropic"]

Answer = str | Mapping[str, Any] | Fault
_KEEP: Any = object()
_JSON = "application/json"
KNOWN_KEYS = frozenset({
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "temperature",
    "top_p", "top_k", "stop_sequences", "metadata", "stream", "thinking", "service_tier",
    "output_config", "container", "mcp_servers", "context_management"})
BILL_KINDS = ("requests", "input", "cache_write", "cache_read", "output")
_FRAME = 3  # tokens a message's role and separators take
_LIMIT_NAMES = (("requests", "requests"), ("input-tokens", "input tokens"),
                ("output-tokens", "output tokens"))


def error_body(kind: str, message: str) -> bytes:
    """Anthropic's error body: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def key_matches(headers: Mapping[str, str], key: str) -> bool:
    """``x-api-key: KEY`` (the Messages API's own) or ``Authorization: Bearer KEY`` (what
    newer SDKs send)."""
    return headers.get("x-api-key") == key or headers.get("Authorization") == f"Bearer {key}"


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class _Refused(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


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


@dataclass
class _Layout:
    """A request as the tokens it is billed for: segments in cache order, breakpoints."""

    total: int = 0
    bounds: list[tuple[int, int]] = field(default_factory=list)  # (tokens so far, prefix key)


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
        self._cache: dict[int, float] = {}
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

    def _layout(self, body: Mapping[str, Any]) -> _Layout:
        """Tokens in Anthropic's cache order, and each breakpoint's prefix length and key."""
        lay = _Layout()
        h = xxhash.xxh3_64()

        def add(obj: Any, tokens: int, mark: bool) -> None:
            h.update(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS))
            lay.total += tokens
            if mark:
                lay.bounds.append((lay.total, h.intdigest()))

        tools = body.get("tools") or []
        for tool in tools:
            plain = {k: v for k, v in tool.items() if k != "cache_control"}
            add(plain, self.counter.count(json.dumps(plain, ensure_ascii=False)),
                "cache_control" in tool)
        if tools:
            add("tool-use system prompt", self.tool_prompt_tokens, False)
        system = body.get("system")
        for block in [{"type": "text", "text": system}] if isinstance(system, str) else (
                system or []):
            add(block.get("text", ""), self.counter.count(str(block.get("text", ""))),
                "cache_control" in block)
        for m in body["messages"]:
            content = m["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            add(m["role"], _FRAME, False)
            for block in blocks:
                text = str(block.get("text", "")) if block.get("type") == "text" else \
                    json.dumps({k: v for k, v in block.items() if k != "cache_control"})
                add(text, self.counter.count(text), "cache_control" in block)
        return lay

    def _cached(self, lay: _Layout, now: float) -> tuple[int, int]:
        """(tokens written to the cache, tokens read from it) for a request laid out so."""
        usable = [(n, k) for n, k in lay.bounds if n >= self.cache_min_tokens]
        if not usable:
            return 0, 0
        read = 0
        for n, k in reversed(usable):
            seen = self._cache.get(k)
            if seen is not None and now - seen <= self.cache_ttl:
                read = n
                break
        for _, k in usable:
            self._cache[k] = now
        last = usable[-1][0]
        return last - read, read

    # ---- deciding an answer (no I/O) ---------------------------------------------------------

    def check(self, body: Any) -> dict[str, Any]:
        """A Messages body as the API validates it; ``_Refused`` says why not."""
        if not isinstance(body, dict):
            raise _Refused(400, "invalid_request_error", "The request body is not valid JSON.")
        extra = sorted(set(body) - KNOWN_KEYS)
        if extra:
            raise _Refused(400, "invalid_request_error",
                           f"{extra[0]}: Extra inputs are not permitted")
        mt = body.get("max_tokens")
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise _Refused(400, "invalid_request_error", "max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant")
                and isinstance(m.get("content"), str | list) for m in messages):
            raise _Refused(400, "invalid_request_error",
                           "messages: each message needs a role (user or assistant) and content")
        marks = sum("cache_control" in b for b in (body.get("system") or [])
                    if isinstance(b, dict)) + sum(
            "cache_control" in b for m in messages if isinstance(m["content"], list)
            for b in m["content"] if isinstance(b, dict)) + sum(
            "cache_control" in t for t in body.get("tools") or [] if isinstance(t, dict))
        if marks > 4:
            raise _Refused(400, "invalid_request_error",
                           "A maximum of 4 blocks with cache_control may be provided.")
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get(
                "name") not in {t.get("name") for t in body.get("tools") or []}:
            raise _Refused(400, "invalid_request_error",
                           f"tool_choice: tool {choice.get('name')!r} not found in tools")
        t = body.get("temperature")
        if t is not None and not (isinstance(t, int | float) and 0.0 <= t <= 1.0):
            raise _Refused(400, "invalid_request_error",
                           "temperature: Input should be less than or equal to 1")
        return body

    def _auth(self, headers: Mapping[str, str]) -> None:
        if self.api_key is not None and not key_matches(headers, self.api_key):
            raise _Refused(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            raise _Refused(400, "invalid_request_error", "anthropic-version: header is required")

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
            body = self.check(body)
        except _Refused as e:
            return Reply(e.status, error_body(e.kind, str(e)), out)
        lay = self._layout(body)
        answer: Answer | None = self.queue.popleft() if self.queue else None
        if answer is None and self.overload_rate and self.rng.random() < self.overload_rate:
            answer = Fault("unavailable")
        if isinstance(answer, Fault) and answer.kind in ("rate_limit", "unavailable",
                                                         "server_error", "http", "reset",
                                                         "timeout"):
            return self._fault(answer, out, now)
        written, read = self._peek_cache(lay, now)
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

    def _peek_cache(self, lay: _Layout, now: float) -> tuple[int, int]:
        usable = [(n, k) for n, k in lay.bounds if n >= self.cache_min_tokens]
        for n, k in reversed(usable):
            seen = self._cache.get(k)
            if seen is not None and now - seen <= self.cache_ttl:
                return usable[-1][0] - n, n
        return (usable[-1][0], 0) if usable else (0, 0)

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

    def message(self, body: Mapping[str, Any], lay: _Layout | None, now: float, *, batch: bool,
                answer: Answer | None = None) -> tuple[int, dict[str, Any]]:
        """The answer to a valid request: (200, a message), billed; caches what it writes."""
        lay = lay if lay is not None else self._layout(body)
        written, read = self._cached(lay, now)
        if isinstance(answer, Mapping):
            return 200, dict(answer)
        tool = self._forced_tool(body)
        digest = xxhash.xxh3_64_intdigest(_canonical(body))
        if isinstance(answer, str):
            text = answer
        elif tool is not None and tool.get("name") == "verdict":
            text = auto_verdict(digest)
        else:
            text = auto_content(task_spec(_as_openai(body, tool)), digest)
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
            body = self.check(params)
        except _Refused as e:
            return e.status, {"type": "error", "error": {"type": e.kind, "message": str(e)}}
        self._seq += 1
        return self.message(body, None, self.clock(), batch=True)

    @staticmethod
    def _forced_tool(body: Mapping[str, Any]) -> dict[str, Any] | None:
        choice = body.get("tool_choice")
        if not isinstance(choice, dict) or choice.get("type") not in ("tool", "any"):
            return None
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        if choice.get("type") == "any":
            return tools[0] if tools else None
        return next((t for t in tools if t.get("name") == choice.get("name")), None)

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
            out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(wall + b.reset_seconds())
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


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [str(b.get("text", "")) if b.get("type") == "text" else json.dumps(
        {k: v for k, v in b.items() if k != "cache_control"}, sort_keys=True)
        for b in content or () if isinstance(b, dict)]


def _canonical(body: Mapping[str, Any]) -> bytes:
    """What an answer may depend on: the request without ``cache_control`` and with text
    blocks and plain strings alike, so marking a prefix never changes the answer."""
    tools = [{k: v for k, v in t.items() if k != "cache_control"}
             for t in body.get("tools") or () if isinstance(t, dict)]
    return orjson.dumps({
        "model": body.get("model"), "max_tokens": body.get("max_tokens"),
        "temperature": body.get("temperature"), "tools": tools,
        "tool_choice": body.get("tool_choice"), "system": _texts(body.get("system")),
        "messages": [[m.get("role"), _texts(m.get("content"))] for m in body["messages"]],
    }, option=orjson.OPT_SORT_KEYS)


def _as_openai(body: Mapping[str, Any], tool: Mapping[str, Any] | None) -> dict[str, Any]:
    """Enough of an OpenAI body for ``fake_answers.task_spec`` to read field names from."""
    texts = [m["content"] if isinstance(m["content"], str) else "".join(
        str(b.get("text", "")) for b in m["content"] if isinstance(b, dict))
        for m in body["messages"]]
    out: dict[str, Any] = {"messages": [{"role": "user", "content": t} for t in texts]}
    if tool is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": tool.get("name"), "schema": tool.get("input_schema")}}
    return out


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
    runner = web.AppRunner(make_app(fake), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield FakeAnthropicServer(fake, host, int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()


# ---- its own process --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynogen.testing.fake_anthropic",
                                description="A fake Anthropic API for benchmarks.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="claude-sonnet-4-5")
    for name in ("rpm", "itpm", "otpm"):
        p.add_argument(f"--{name}", type=float, default=None)
    p.add_argument("--burst-seconds", type=float, default=1.0)
    p.add_argument("--latency-median", type=float, default=0.0)
    p.add_argument("--latency-sigma", type=float, default=0.0)
    p.add_argument("--latency-per-token", type=float, default=0.0)
    p.add_argument("--tail-p", type=float, default=0.0)
    p.add_argument("--tail-seconds", type=float, default=0.0)
    p.add_argument("--output-tokens", default=None, help="N, or LO:HI (for latency)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overload-rate", type=float, default=0.0)
    p.add_argument("--prices", default=None,
                   help="input,output,cache_write,cache_read in dollars per 1M tokens")
    p.add_argument("--processing-seconds", type=float, default=60.0,
                   help="how long a Message Batch takes")
    return p


def _fake_from_args(args: argparse.Namespace) -> FakeAnthropic:
    out: OutputTokens | None = None
    if args.output_tokens:
        lo, _, hi = args.output_tokens.partition(":")
        out = (int(lo), int(hi)) if hi else int(lo)
    prices = None
    if args.prices:
        vals = [float(x) for x in args.prices.split(",")]
        prices = dict(zip(("input", "output", "cache_write", "cache_read"), vals, strict=False))
    fake = FakeAnthropic(
        model=args.model, rpm=args.rpm, itpm=args.itpm, otpm=args.otpm,
        burst_seconds=args.burst_seconds,
        latency=Latency(args.latency_median, args.latency_sigma, args.latency_per_token,
                        args.tail_p, args.tail_seconds),
        output_tokens=out, api_key=args.api_key, keep_history=False, seed=args.seed,
        overload_rate=args.overload_rate, prices=prices)
    fake.batches.configure(processing_seconds=args.processing_seconds)
    return fake


async def _serve_until_signalled(fake: FakeAnthropic, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(fake, host=host, port=port) as server:
        print(json.dumps({"url": server.url, "pid": os.getpid()}), flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        fake = _fake_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    from dynogen import eventloop

    eventloop.run(_serve_until_signalled(fake, args.host, args.port))
    return 0


class FakeAnthropicProcess:
    """A fake in a child process (``start_fake_anthropic``); stops on ``with`` exit."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Any) -> None:
        self.proc = proc
        self.url = url
        self.pid = proc.pid
        self._log = log

    def __enter__(self) -> FakeAnthropicProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = None if payload is None else orjson.dumps(dict(payload))
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None
                                     else "POST", headers={"content-type": _JSON})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return orjson.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return dict(self.call("/stats"))

    def set_limits(self, **limits: float | None) -> Any:
        return self.call("/admin/limits", limits)

    def reset(self) -> None:
        self.call("/admin/reset", {})

    def batches(self, **settings: Any) -> dict[str, Any]:
        """Change batch settings (``reset=True`` forgets every batch); returns the counts."""
        return dict(self.call("/admin/batches", settings) if settings
                    else self.call("/admin/batches"))

    def stop(self, timeout: float = 10.0) -> int:
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


def start_fake_anthropic(*, ready_timeout: float = 90.0, **options: Any) -> FakeAnthropicProcess:
    """``python -m dynogen.testing.fake_anthropic`` with ``options`` as flags (``rpm=600`` →
    ``--rpm 600``, ``output_tokens=(100, 300)`` → ``--output-tokens 100:300``)."""
    argv = [sys.executable, "-m", "dynogen.testing.fake_anthropic"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, tuple) and key == "output_tokens":
            argv += [flag, f"{value[0]}:{value[1]}"]
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
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
        raise RuntimeError(f"the fake Anthropic server did not start: "
                           f"{err[-1] if err else 'no output'}")
    return FakeAnthropicProcess(proc, json.loads(line)["url"], log)


if __name__ == "__main__":
    sys.exit(main())
