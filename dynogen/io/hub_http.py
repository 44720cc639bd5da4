"""Polite, bounded HTTP GETs to the Hugging Face Hub and its dataset viewer.

Every per-dataset call (a card, ``/is-valid``, ``/info``, ``/first-rows``)
goes through one ``HubHttp``: it takes a permit from a ``dynogen.ratelimit.Limiter``
of its own (the Hub's limits are not the LLM's), retries 429 and 5xx answers
and dropped connections with ``RetryPolicy``'s full-jitter backoff (a
``retry-after`` is honoured and, on a 429, holds back every sender through
``Limiter.pause``), and refuses a body larger than ``max_body`` while it streams
in, so one huge card or row dump cannot take the process's memory.

The Hugging Face token, when there is one, goes in the ``Authorization``
header and nowhere else: not in URLs, errors, stats or logs.

Failures are typed for the caller to turn into counted skips: ``HubHTTPError``
(an answer that is not 2xx after the retries, with the Hub's ``X-Error-Code``),
``BodyTooLarge``; ``HubUnreachable`` means no connection could be made at all.
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
from dynogen.ratelimit import Clock, Limiter, MonotonicClock, RetryPolicy, retry_after_seconds

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
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class HubHttpStats:
    """Calls sent, retried, answered by status, and the most ever in flight at once."""

    calls: int = 0
    retries: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "peak_in_flight": self.peak_in_flight,
        }


class HubHttp:
    """GETs under a limiter, with retries and a body cap; one per event loop.

    >>> http = HubHttp(Limiter(rpm=300, max_in_flight=8))  # doctest: +SKIP
    >>> answer = await http.get("https://datasets-server.huggingface.co/is-valid",
    ...                         {"dataset": "nyu-mll/glue"})  # doctest: +SKIP
    """

    def __init__(
        self,
        limiter: Limiter,
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
        self.limiter = limiter
        self.retry = retry if retry is not None else RetryPolicy(max_retries=5, base=1.0, cap=30.0)
        self._token = token if token is not None else Secret(None)
        self.max_body = max_body
        self.timeout = timeout
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._rng = rng
        self.stats = HubHttpStats()
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        token = self._token.get()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(1, self.limiter.max_in_flight)),
                headers={"User-Agent": "dynogen"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str, params: Mapping[str, str] | None = None, *,
                  what: str = "") -> HubAnswer:
        """The 2xx answer to ``GET url?params``, or a typed failure after the retries.

        ``what`` names the call in error messages (``README.md``, ``viewer /info``).
        """
        prefix = f"{what}: " if what else ""
        attempt = 0
        while True:
            try:
                answer = await self._once(url, params)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
                attempt += 1
                if not self.retry.should_retry(attempt):
                    if isinstance(err, aiohttp.ClientConnectorError):
                        raise HubUnreachable(_describe(err)) from None
                    raise HubHTTPError(0, "NoAnswer", prefix + _describe(err)) from None
                self.stats.retries += 1
                await self.clock.sleep(self.retry.delay(attempt, rng=self._rng))
                continue
            if 200 <= answer.status < 300:
                return answer
            attempt += 1
            if answer.status in RETRY_STATUSES and self.retry.should_retry(attempt):
                wait = retry_after_seconds(answer.headers)
                delay = self.retry.delay(attempt, wait, rng=self._rng)
                if answer.status == 429:
                    self.limiter.pause(delay, "requests")
                self.stats.retries += 1
                await self.clock.sleep(delay)
                continue
            raise HubHTTPError(answer.status, answer.headers.get("X-Error-Code", ""),
                               prefix + _error_message(answer))

    async def _once(self, url: str, params: Mapping[str, str] | None) -> HubAnswer:
        permit = await self.limiter.acquire(0)
        stats = self.stats
        stats.calls += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            async with self._get_session().get(url, params=params, headers=self._headers(),
                                               allow_redirects=True) as resp:
                stats.statuses[resp.status] += 1
                body = await self._read_capped(resp)
                return HubAnswer(resp.status, dict(resp.headers), body)
        finally:
            stats.in_flight -= 1
            self.limiter.release(permit)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > self.max_body:
            raise BodyTooLarge(f"{declared} bytes announced, the cap is {self.max_body}")
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge(f"over {self.max_body} bytes (the cap); stopped reading")
            parts.append(chunk)
        return b"".join(parts)


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
