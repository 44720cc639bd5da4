"""The seam between the engine and HTTP.

A transport sends one POST and returns status, headers and body bytes; it
knows nothing of OpenAI. ``AiohttpTransport`` is the real one (one pooled
session, keep-alive, no per-request allocation of sessions), ``MockTransport``
calls a handler in-process so the engine is tested without sockets — the way
httpx's ``MockTransport`` works. Network failures surface as dynogen's own
``APITimeoutError``/``APIConnectionError`` so nothing above this module sees
aiohttp's exception types.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from dynogen.errors import APIConnectionError, APITimeoutError

__all__ = ["AiohttpTransport", "MockTransport", "RawResponse", "Transport", "SentRequest"]


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class SentRequest:
    """What a ``MockTransport`` handler receives."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Transport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout: float) -> RawResponse: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """Pooled aiohttp transport. One per run; ``limit`` bounds open connections."""

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            conn = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300,
                                        enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=conn, auto_decompress=True, skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "dynogen"},
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout: float) -> RawResponse:
        session = self._get_session()
        try:
            async with session.post(
                url, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                data = await resp.read()
                return RawResponse(resp.status, resp.headers, data)
        except TimeoutError:
            raise APITimeoutError(f"no answer from {_host(url)} within {timeout:.0f}s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise APIConnectionError(
                f"connection to {_host(url)} failed: {type(e).__name__}"
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Handler = Callable[[SentRequest], RawResponse | Awaitable[RawResponse]]


class MockTransport:
    """Calls ``handler(SentRequest)`` instead of the network."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout: float) -> RawResponse:
        out = self.handler(SentRequest(url, body, dict(headers)))
        if inspect.isawaitable(out):
            try:
                return await asyncio.wait_for(out, timeout)
            except TimeoutError:
                raise APITimeoutError(f"no answer within {timeout:.0f}s") from None
        return out

    async def aclose(self) -> None:
        return None


def _host(url: str) -> str:
    # Never echo a full URL: some users put keys in query strings.
    try:
        return url.split("//", 1)[1].split("/", 1)[0]
    except IndexError:
        return "server"
