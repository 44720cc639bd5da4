"""One paced, budgeted, cached, retried request — shared by ``run`` and ``call``.

The per-request path, in order: request cache → rate limiter (slot, request,
worst-case tokens) → ledger (worst-case dollars) → HTTP → limiter corrected
from the answer's headers → ledger settled from ``usage`` → cache. Retries
re-enter the same path, so they are paced and paid for like first tries.

What it decides: transient faults (5xx, timeouts, resets, garbled bodies) are
retried with jittered backoff up to ``max_retries``, then ``RequestFailed``;
429s pause every sender (not only this one) and are retried. What it leaves
to the caller: fatal errors, a refused budget and 400s propagate, because only
the caller knows whether a 400 means "step the response format down" or
"stop the run".
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from dynogen.dedup import HashSet
from dynogen.errors import (
    APIConnectionError,
    BudgetExceeded,
    InvalidResponseError,
    RateLimitError,
    RetryableError,
)
from dynogen.execute.client import ChatClient, Completion, classify, parse_completion
from dynogen.execute.transport import RawResponse
from dynogen.ledger import Ledger, Reservation
from dynogen.ratelimit import Limiter, RetryPolicy
from dynogen.store.cache import RequestCache, request_key
from dynogen.store.journal import JsonlWriter

__all__ = ["Accounting", "Dispatcher", "RequestFailed", "Stopped", "usage_counts"]

MAX_RATE_LIMIT_RETRIES = 30
DEFAULT_429_PAUSE = 1.0


class RequestFailed(Exception):
    """Retries exhausted; ``reason`` is the last error's report label."""

    def __init__(self, reason: str, last: BaseException) -> None:
        super().__init__(reason)
        self.reason = reason
        self.last = last


class Stopped(Exception):
    """The run is stopping; the request was not sent."""


class Meter(Protocol):
    def request_done(self, tokens: int, cost_usd: float) -> None: ...


@dataclass(slots=True)
class Accounting:
    """What one logical request (with its retries) cost; the caller sums these."""

    requests: int = 0
    responses: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    cost: float = 0.0
    from_cache: bool = False


def usage_counts(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) from an OpenAI usage object; ``None`` if unusable."""
    if not isinstance(usage, dict):
        return None
    pin, pout = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(pin, int) or not isinstance(pout, int) or pin < 0 or pout < 0:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return pin, pout, cached if isinstance(cached, int) and cached >= 0 else 0


class Dispatcher:
    """Sends request bodies at the limits and within the budget.

    >>> d = Dispatcher(client, limiter, ledger, cache, RetryPolicy(), spend=writer)
    >>> comp = await d.complete(body_bytes, prompt_tokens=812, max_tokens=640, acct=Accounting())
    """

    def __init__(self, client: ChatClient, limiter: Limiter, ledger: Ledger,
                 cache: RequestCache | None, policy: RetryPolicy, *,
                 spend: JsonlWriter | None = None, meter: Meter | None = None,
                 stage: str = "tasks", secret: str | None = None) -> None:
        self.client = client
        self.limiter = limiter
        self.ledger = ledger
        self.cache = cache
        self.policy = policy
        self.spend = spend
        self.meter = meter
        self.stage = stage
        self._secret = secret.encode() if secret else None
        self.session: Counter[str] = Counter()
        # A cache that started empty can only hit what this run put in it: remember
        # those (8 bytes each) and skip the SQLite lookup for everything else.
        self._cache_warm = cache is not None and len(cache) > 0
        self._put_here = HashSet()
        self.stopping = False
        # Hand unused tokens back to the limiter until the server shows (a tokens
        # 429) that it charges prompt + max_tokens on admission and never refunds,
        # as OpenAI documents; from then on the limiter counts what the server does.
        self.refund_tokens = True
        self._settled = asyncio.Event()

    async def complete(self, body: bytes, prompt_tokens: int, max_tokens: int,
                       acct: Accounting, *, variant: str | None = None) -> Completion:
        key = request_key(body)
        if self.cache is not None and (
                self._cache_warm or int.from_bytes(key[:8], "little") in self._put_here):
            hit = self.cache.get(key)
            if hit is not None:
                self.session["cache_hits"] += 1
                acct.from_cache = True
                acct.responses += 1  # an answer used, though not paid for again
                return parse_completion(RawResponse(200, {}, hit))
        tries = limited = 0
        while True:
            if self.stopping:
                raise Stopped()
            try:
                comp = await self._send_once(body, prompt_tokens, max_tokens, acct, variant)
            except RateLimitError as e:
                limited += 1
                if e.kind == "tokens" and self.refund_tokens:
                    self.refund_tokens = False
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
                await asyncio.sleep(self.policy.delay(tries, e.retry_after))
                continue
            if self.cache is not None and comp.finish_reason in ("stop", None):
                self.cache.put(key, comp.raw)
                self._put_here.add(int.from_bytes(key[:8], "little"))
            return comp

    async def _send_once(self, body: bytes, prompt_tokens: int, max_tokens: int,
                         acct: Accounting, variant: str | None) -> Completion:
        worst = prompt_tokens + max_tokens
        permit = await self.limiter.acquire(worst)
        while True:
            try:
                reservation = self.ledger.reserve(prompt_tokens, max_tokens)
                break
            except BudgetExceeded:
                # In-flight requests usually settle below their worst case: wait for
                # them before deciding the budget is spent.
                if self.ledger.in_flight == 0 or self.stopping:
                    self.limiter.release(permit, 0)
                    raise
                self._settled.clear()
                await self._settled.wait()
        acct.requests += 1
        self.session["requests"] += 1
        try:
            raw = await self.client.send(body)
        except APIConnectionError:
            # Never reached the server: nothing billed, nothing counted against limits.
            self._release(reservation)
            self.limiter.release(permit, 0)
            raise
        except RetryableError:
            # A timed-out request may still have been processed and billed: keep the worst case.
            self._charge(reservation, None, acct, variant)
            self.limiter.release(permit, worst)
            raise
        self.limiter.observe_headers(raw.headers, permit)
        if raw.status >= 300:
            self._release(reservation)
            self.limiter.release(permit, 0 if raw.status == 429 else None)
            self.session[f"http_{raw.status}"] += 1
            raise classify(self._redacted(raw))
        try:
            comp = parse_completion(raw)
        except InvalidResponseError as e:
            self._charge(reservation, e.usage, acct, variant)
            self.limiter.release(permit, None)
            self.session[f"invalid_{e.kind}"] += 1
            raise
        used = self._charge(reservation, comp.usage, acct, variant)
        acct.responses += 1
        self.limiter.release(permit, used if self.refund_tokens else None)
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
