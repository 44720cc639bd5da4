"""Online execution: one paced, budgeted, cached, retried request at a time, many at once.

The per-request path, in order: request cache → rate limiter (slot, request,
worst-case tokens) → ledger (worst-case dollars) → HTTP → limiter corrected
from the answer's headers → ledger settled from ``usage`` → cache. Retries
re-enter the same path, so they are paced and paid for like first tries.

Which server it speaks to is the client's business (``ChatClient`` for any
OpenAI-compatible server, ``AnthropicClient`` for Anthropic's Messages API):
both take the OpenAI-shaped body and give back an OpenAI-shaped answer, so the
cache key, the cached answer and the usage the ledger reads mean the same for
both. A provider whose limits count input and output tokens apart gives a
``SplitLimiter`` instead of a ``Limiter``, and ``figures`` when the limiter's
count and the ledger's upper bound of a prompt differ (no offline tokenizer).

What it decides: transient faults (5xx, timeouts, resets, garbled bodies) are
retried with jittered backoff up to ``max_retries``, then ``RequestFailed``;
429s pause every sender (not only this one) and are retried. Every wait reads
the limiter's clock, so tests drive retries with a fake clock and never sleep.
What it leaves to the caller: fatal errors, a refused budget and 400s
propagate, because only the caller knows whether a 400 means "step the
response format down" or "stop the run".
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from dynogen.dedup import HashSet
from dynogen.errors import (
    APIConnectionError,
    BudgetExceeded,
    InvalidResponseError,
    RateLimitError,
    RequestFailed,
    RetryableError,
    Stopped,
)
from dynogen.execute.base import Accounting, Request, usage_counts
from dynogen.execute.client import Completion, parse_answer
from dynogen.execute.ledger import Ledger, Reservation
from dynogen.execute.limits import SplitLimiter
from dynogen.execute.transport import RawResponse
from dynogen.ratelimit import Limiter, RetryPolicy
from dynogen.store.cache import RequestCache, request_key
from dynogen.store.journal import JsonlWriter

__all__ = ["Meter", "OnlineExecutor"]

MAX_RATE_LIMIT_RETRIES = 30
DEFAULT_429_PAUSE = 1.0


class Meter(Protocol):
    def request_done(self, tokens: int, cost_usd: float) -> None: ...


class Client(Protocol):
    """What the executor needs of a server's client (``ChatClient``, ``AnthropicClient``)."""

    async def send(self, body: bytes, endpoint: str = ...) -> RawResponse: ...

    def classify(self, resp: RawResponse) -> Exception: ...

    async def aclose(self) -> None: ...


Figures = Callable[[Request], tuple[int, int]]
"""(tokens the limiter paces a prompt with, tokens the ledger reserves for it)."""


class OnlineExecutor:
    """Sends request bodies at the limits and within the budget.

    >>> ex = OnlineExecutor(client, limiter, ledger, cache, RetryPolicy(), spend=writer)
    >>> comp = await ex.complete(Request(body, prompt_tokens=812, max_tokens=640), Accounting())
    """

    def __init__(self, client: Client, limiter: Limiter | SplitLimiter, ledger: Ledger,
                 cache: RequestCache | None, policy: RetryPolicy, *,
                 spend: JsonlWriter | None = None, meter: Meter | None = None,
                 stage: str = "tasks", secret: str | None = None,
                 concurrency: int = 64, figures: Figures | None = None) -> None:
        self.client = client
        self.limiter = limiter
        self.figures = figures
        self.ledger = ledger
        self.cache = cache
        self.policy = policy
        self.spend = spend
        self.meter = meter
        self.stage = stage
        self._concurrency = concurrency
        self._secret = secret.encode() if secret else None
        self.session: Counter[str] = Counter()
        # A cache that started empty can only hit what this run put in it: remember
        # those (8 bytes each) and skip the SQLite lookup for everything else.
        self._cache_warm = cache is not None and len(cache) > 0
        self._put_here = HashSet()
        self._stopping = False
        # Hand unused tokens back to the limiter until the server shows (a tokens
        # 429) that it charges prompt + max_tokens on admission and never refunds,
        # as OpenAI documents; from then on the limiter counts what the server does.
        self._refund_tokens = True
        self._settled = asyncio.Event()

    # ------------------------------------------------------------ the seam
    @property
    def concurrency(self) -> int:
        return self._concurrency

    def plan(self, requests: Iterable[Request]) -> None:
        """Online requests are sent when asked for; nothing to prepare."""

    def stop(self) -> None:
        self._stopping = True
        self._settled.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def in_flight(self) -> dict[str, int]:
        return {"requests": self.ledger.in_flight}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, req: Request, acct: Accounting) -> Completion:
        key = request_key(req.body)
        if self.cache is not None and (
                self._cache_warm or int.from_bytes(key[:8], "little") in self._put_here):
            hit = self.cache.get(key)
            if hit is not None:
                self.session["cache_hits"] += 1
                acct.responses += 1  # an answer used, though not paid for again
                return parse_answer(RawResponse(200, {}, hit), req.endpoint)
        tries = limited = 0
        while True:
            if self._stopping:
                raise Stopped()
            try:
                comp = await self._send_once(req, acct)
            except RateLimitError as e:
                limited += 1
                if e.kind == "tokens" and self._refund_tokens:
                    self._refund_tokens = False
                    self.session["token_refunds_stopped"] += 1
                self.limiter.pause(e.retry_after if e.retry_after is not None
                                   else DEFAULT_429_PAUSE, e.kind)
                if limited > MAX_RATE_LIMIT_RETRIES:
                    raise RequestFailed("rate_limited", e) from None
                continue
            except RetryableError as e:
                tries += 1
                if not self.policy.should_retry(tries):
                    raise RequestFailed(e.reason, e) from None
                self.session["retries"] += 1
                await self.limiter.clock.sleep(self.policy.delay(tries, e.retry_after))
                continue
            if self.cache is not None and comp.finish_reason in ("stop", None):
                self.cache.put(key, comp.raw)
                self._put_here.add(int.from_bytes(key[:8], "little"))
            return comp

    # ------------------------------------------------------------ one try
    async def _send_once(self, req: Request, acct: Accounting) -> Completion:
        paced, bound = (req.prompt_tokens, req.prompt_tokens) if self.figures is None \
            else self.figures(req)
        worst = paced + req.max_tokens
        permit: Any = await self.limiter.acquire(worst, req.max_tokens)
        while True:
            try:
                reservation = self.ledger.reserve(bound, req.max_tokens)
                break
            except BudgetExceeded:
                # In-flight requests usually settle below their worst case: wait for
                # them before deciding the budget is spent.
                if self.ledger.in_flight == 0 or self._stopping:
                    self.limiter.release(permit, 0)
                    raise
                self._settled.clear()
                await self._settled.wait()
        acct.requests += 1
        self.session["requests"] += 1
        try:
            raw = await self.client.send(req.body, req.endpoint)
        except APIConnectionError:
            # Never reached the server: nothing billed, nothing counted against limits.
            self._release(reservation)
            self.limiter.release(permit, 0)
            raise
        except RetryableError:
            # A timed-out request may still have been processed and billed: keep the worst case.
            self._charge(reservation, None, acct, req.variant)
            self.limiter.release(permit, worst)
            raise
        if isinstance(self.limiter, SplitLimiter):
            self.limiter.observe_headers(raw.headers, permit, refused=raw.status == 429)
        else:
            self.limiter.observe_headers(raw.headers, permit)
        if raw.status == 429:
            self.limiter.observe_refusal(permit, raw.body)
        if raw.status >= 300:
            self._release(reservation)
            self.limiter.release(permit, 0 if raw.status == 429 else None)
            self.session[f"http_{raw.status}"] += 1
            raise self.client.classify(self._redacted(raw))
        try:
            comp = parse_answer(raw, req.endpoint)
        except InvalidResponseError as e:
            self._charge(reservation, e.usage, acct, req.variant)
            self.limiter.release(permit, None)
            self.session[f"invalid_{e.kind}"] += 1
            raise
        used = self._charge(reservation, comp.usage, acct, req.variant)
        acct.responses += 1
        if isinstance(self.limiter, SplitLimiter):
            counts = usage_counts(comp.usage)
            if counts is None:
                self.limiter.release(permit, None)
            else:
                self.limiter.answered(permit, counts[0], counts[2], counts[1],
                                      refund=self._refund_tokens)
        else:
            self.limiter.release(permit, used if self._refund_tokens else None)
        return comp

    def _redacted(self, raw: RawResponse) -> RawResponse:
        """The answer with the API key masked: some servers and proxies echo the request's
        Authorization header in error bodies, which end up in messages and logs."""
        if self._secret is None or self._secret not in raw.body:
            return raw
        return RawResponse(raw.status, raw.headers, raw.body.replace(self._secret, b"***"))

    def _release(self, reservation: Reservation) -> None:
        self.ledger.release(reservation)
        self._settled.set()

    def _charge(self, reservation: Reservation, usage: Any, acct: Accounting,
                variant: str | None) -> int | None:
        cost = self.ledger.settle(reservation, usage, stage=self.stage, variant=variant)
        self._settled.set()
        acct.cost += cost
        counts = usage_counts(usage)
        used = None
        if counts is not None:
            pin, pout, cached = counts
            acct.tokens_in += pin
            acct.tokens_out += pout
            acct.tokens_cached += cached
            used = pin + pout
            if self.spend is not None:
                self.spend.write({"usd": cost, "in": pin, "out": pout, "cached": cached})
        elif self.spend is not None:
            self.spend.write({"usd": cost, "unconfirmed": True})
        if self.spend is not None:
            # Money is spent the moment the answer arrives: record it before anything
            # else can be lost to a kill, so a resumed run's budget counts it.
            self.spend.flush()
        if self.meter is not None:
            self.meter.request_done(used or 0, cost)
        return used
