"""Polite, bounded HTTP GETs to the Hugging Face Hub and its dataset viewer.

Every per-dataset call (a card, ``/is-valid``, ``/info``, ``/first-rows``, a
row page, a range of a Parquet file) goes through one ``HubHttp``: it takes a
permit from the call's rate-limit bucket (``hub_buckets.HubBuckets``: the Hub's
limits are not the LLM's, and its API, file resolves and viewer are counted
apart), feeds the answer's ``RateLimit`` headers back to it, retries 429 and
5xx answers, timeouts and dropped connections with ``RetryPolicy``'s
full-jitter backoff (a ``Retry-After``, else the bucket's ``RateLimit`` reset,
is honoured and, on a 429, holds back every caller of that bucket), and
refuses a body larger than ``max_body`` while it streams in, so one huge card
or row dump cannot take the process's memory.

The Hugging Face token, when there is one, goes in the ``Authorization``
header and nowhere else: not in URLs, errors, stats or logs.

Failures are typed for the caller to turn into counted skips: ``HubHTTPError``
(an answer that is not 2xx after the retries, with the Hub's ``X-Error-Code``),
``BodyTooLarge``; ``HubUnreachable`` means no connection could be made at all.
A call that got no answer after the retries is ``HubHTTPError`` with status 0
and code ``Timeout`` or ``NoAnswer``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from dynogen.config import Secret
from dynogen.io.hub_buckets import HubBuckets, parse_hub_rate_limit
from dynogen.ratelimit import Clock, Limiter, RetryPolicy, retry_after_seconds

__all__ = [
    "DEFAULT_MAX_BODY",
    "RETRY_STATUSES",
    "BodyTooLarge",
    "HubAnswer",
    "HubHTTPError",
    "HubHttp",
    "HubHttpStats",
    "HubUnreachable",
]

DEFAULT_MAX_BODY = 4 * 1024 * 1024  # bytes; the viewer keeps /first-rows near 1 MB
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CHUNK = 64 * 1024


class HubHTTPError(Exception):
    """A non-2xx answer after the retries; ``code`` is the Hub's ``X-Error-Code`` if any."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}{f' {code}' if code else ''})")
        self.status = status
        self.code = code
        self.message = message


class BodyTooLarge(Exception):
    """The answer's body is over the cap (refused while streaming, never held whole)."""


class HubUnreachable(Exception):
    """No connection to the Hub or the viewer after the retries."""


@dataclass(frozen=True, slots=True)
class HubAnswer:
    """An answer; ``url`` is where it came from after the redirects that stayed on the
    asked URL's host (an API link to a file gives its ``/resolve/`` URL; a CDN's
    signed, expiring URL is never kept)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str = ""

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class HubHttpStats:
    """Calls sent (in all and per bucket), retried, answered by status, peak in flight."""

    calls: int = 0
    retries: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    buckets: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "buckets": dict(sorted(self.buckets.items())),
            "peak_in_flight": self.peak_in_flight,
        }


class HubHttp:
    """GETs under the Hub's rate-limit buckets, with retries and a body cap; one per event loop.

    ``limits`` is a ``HubBuckets`` (one limiter per bucket, fed by the Hub's
    headers) or one ``Limiter`` for every call.

    >>> http = HubHttp(HubBuckets(rpm=300, concurrency=8))  # doctest: +SKIP
    >>> answer = await http.get("https://datasets-server.huggingface.co/is-valid",
    ...                         {"dataset": "nyu-mll/glue"})  # doctest: +SKIP
    """

    def __init__(
        self,
        limits: Limiter | HubBuckets,
        *,
        retry: RetryPolicy | None = None,
        token: Secret | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        timeout: float = 60.0,
        clock: Clock | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_body < 1:
            raise ValueError("max_body must be at least 1 byte")
        self.buckets = limits if isinstance(limits, HubBuckets) else HubBuckets.shared(limits)
        self.retry = retry if retry is not None else RetryPolicy(max_retries=5, base=1.0, cap=30.0)
        self._token = token if token is not None else Secret(None)
        self.max_body = max_body
        self.timeout = timeout
        self.clock: Clock = clock if clock is not None else self.buckets.clock
        self._rng = rng
        self.stats = HubHttpStats()
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        token = self._token.get()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(1, self.buckets.max_in_flight)),
                headers={"User-Agent": "dynogen"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str, params: Mapping[str, str] | None = None, *,
                  what: str = "", headers: Mapping[str, str] | None = None,
                  max_body: int | None = None, bucket: str | None = None) -> HubAnswer:
        """The 2xx answer to ``GET url?params``, or a typed failure after the retries.

        ``what`` names the call in error messages (``README.md``, ``viewer /info``);
        ``headers`` are sent too (``Range``); ``max_body`` overrides the cap for this
        call; ``bucket`` overrides the bucket the URL falls in.
        """
        prefix = f"{what}: " if what else ""
        name = bucket or self.buckets.bucket_for(url)
        cap = self.max_body if max_body is None else max_body
        attempt = 0
        while True:
            try:
                answer = await self._once(url, params, name, headers, cap)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
                attempt += 1
                if not self.retry.should_retry(attempt):
                    if isinstance(err, aiohttp.ClientConnectorError):
                        raise HubUnreachable(_describe(err)) from None
                    code = "Timeout" if isinstance(err, TimeoutError) else "NoAnswer"
                    raise HubHTTPError(0, code, prefix + _describe(err)) from None
                self.stats.retries += 1
                await self.clock.sleep(self.retry.delay(attempt, rng=self._rng))
                continue
            if 200 <= answer.status < 300:
                return answer
            attempt += 1
            if answer.status in RETRY_STATUSES and self.retry.should_retry(attempt):
                wait = retry_after_seconds(answer.headers)
                if wait is None and answer.status == 429:
                    told = parse_hub_rate_limit(answer.headers)
                    wait = told.reset if told is not None else None
                delay = self.retry.delay(attempt, wait, rng=self._rng)
                if answer.status == 429:
                    self.buckets.pause(name, delay)
                self.stats.retries += 1
                await self.clock.sleep(delay)
                continue
            raise HubHTTPError(answer.status, answer.headers.get("X-Error-Code", ""),
                               prefix + _error_message(answer))

    async def _once(self, url: str, params: Mapping[str, str] | None, bucket: str,
                    headers: Mapping[str, str] | None, cap: int) -> HubAnswer:
        permit = await self.buckets.acquire(bucket)
        stats = self.stats
        stats.calls += 1
        stats.buckets[bucket] += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        sent = self._headers()
        if headers:
            sent.update(headers)
        try:
            async with self._get_session().get(url, params=params, headers=sent,
                                               allow_redirects=True) as resp:
                stats.statuses[resp.status] += 1
                self.buckets.observe(bucket, resp.headers)
                body = await self._read_capped(resp, cap)
                return HubAnswer(resp.status, dict(resp.headers), body, _home_url(resp))
        finally:
            stats.in_flight -= 1
            self.buckets.release(bucket, permit)

    async def _read_capped(self, resp: aiohttp.ClientResponse, cap: int) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > cap:
            raise BodyTooLarge(f"{declared} bytes announced, the cap is {cap}")
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge(f"over {cap} bytes (the cap); stopped reading")
            parts.append(chunk)
        return b"".join(parts)


def _home_url(resp: aiohttp.ClientResponse) -> str:
    """The last URL on the first one's host among the redirects ``resp`` followed."""
    chain = [*(h.url for h in resp.history), resp.url]
    origin = chain[0].origin()
    return str([u for u in chain if u.origin() == origin][-1])


def _error_message(answer: HubAnswer) -> str:
    message = answer.headers.get("X-Error-Message", "")
    if not message:
        try:
            data = answer.json()
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
    text = " ".join(message.split())
    return (text[:200] + "…") if len(text) > 200 else text


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
