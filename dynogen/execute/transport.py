"""The seam between the engine and HTTP.

A transport sends one POST and returns status, headers and body bytes; it
knows nothing of OpenAI. ``AiohttpTransport`` is the real one (one pooled
session, keep-alive, no per-request allocation of sessions), ``MockTransport``
calls a handler in-process so the engine is tested without sockets — the way
httpx's ``MockTransport`` works. Network failures surface as dynogen's own
``APITimeoutError``/``APIConnectionError`` so nothing above this module sees
aiohttp's exception types.

Answers are of bounded size: a body over ``max_body`` bytes (a real answer is
bounded by ``max_tokens``; a broken proxy once sent 1.5 GB) is cut off while it
streams in — never read whole, so 64 of them in flight cannot exhaust memory —
and raised as ``ResponseTooLargeError``, a server fault the dispatcher retries
like a 5xx and never caches. ``read_capped``/``read_capped_sync``/
``iter_lines_capped`` apply the same cap to other streams (Batch output files,
Hub answers).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Protocol

import aiohttp

from dynogen.errors import APIConnectionError, APITimeoutError, ResponseTooLargeError

__all__ = ["AiohttpTransport", "DEFAULT_MAX_BODY", "MockTransport", "RawResponse", "SentRequest",
           "Transport", "iter_lines_capped", "read_capped", "read_capped_sync", "too_large"]

DEFAULT_MAX_BODY = 8 * 2**20  # Config.max_response_bytes


def too_large(cap: int, where: str = "the server") -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"the answer from {where} is larger than {cap:,} bytes (max_response_bytes): cut off "
        "unread", status=200)


async def read_capped(resp: aiohttp.ClientResponse, cap: int, where: str = "the server") -> bytes:
    """The body of ``resp``, or ``ResponseTooLargeError`` as soon as it passes ``cap`` bytes.

    A body whose declared, unencoded length fits is read in one call (the hot
    path); anything else (chunked, compressed, or declared too long) streams in
    and is dropped, connection and all, the moment it crosses the cap.
    """
    declared = resp.content_length
    if declared is not None and declared > cap:
        resp.close()
        raise too_large(cap, where)
    if declared is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > cap:
            resp.close()
            raise too_large(cap, where)
    return bytes(buf)


def read_capped_sync(stream: IO[bytes], cap: int, where: str = "the server") -> bytes:
    """``stream.read()`` that gives up past ``cap`` bytes (for blocking clients, e.g. Hub)."""
    buf = bytearray()
    while chunk := stream.read(min(1 << 16, cap + 1 - len(buf))):
        buf += chunk
        if len(buf) > cap:
            raise too_large(cap, where)
    return bytes(buf)


def iter_lines_capped(stream: IO[bytes], cap: int) -> Iterator[bytes | None]:
    """Lines of ``stream`` (newline kept), ``None`` for each line over ``cap`` bytes.

    An oversized line is skipped to its end without being held, so a Batch
    output file with one runaway answer costs at most ``cap`` bytes of memory
    and the caller counts that line as a failed request.
    """
    buf = bytearray()
    skipping = False
    while chunk := stream.read(1 << 16):
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl + 1]
            if not skipping:
                buf += piece
                if len(buf) > cap:
                    skipping = True
                    buf.clear()
            if nl < 0:
                break
            if skipping:
                yield None
                skipping = False
            else:
                yield bytes(buf)
                buf.clear()
            start = nl + 1
    if skipping:
        yield None
    elif buf:
        yield bytes(buf)


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

    def __init__(self, limit: int = 256, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._limit = limit
        self.max_body = max_body
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
                data = await read_capped(resp, self.max_body, _host(url))
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
