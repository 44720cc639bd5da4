"""A lean client for ``POST /chat/completions`` on any OpenAI-compatible server.

Why not the ``openai`` SDK on the hot path: it costs ~4 ms of client CPU per
request here (pydantic models, httpx), which caps a 2-core machine near 250
requests/s. This client sends pre-serialised bytes over a pooled transport and
reads only the fields the engine needs, so CPU per request stays well under a
millisecond. It does not retry: the retry decision lives in the engine, next to
the limiter and the ledger, so a retry is paced and budgeted like any request.

Status mapping (``classify``) is a small pure function, as in openai-python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from dynogen.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InsufficientQuotaError,
    InvalidResponseError,
    RateLimitError,
    ServerError,
)
from dynogen.execute.transport import AiohttpTransport, RawResponse, Transport
from dynogen.ratelimit.headers import retry_after_seconds

__all__ = [
    "ChatClient", "Completion", "classify", "parse_answer", "parse_completion", "parse_embeddings",
]


@dataclass(slots=True)
class Completion:
    content: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    headers: Mapping[str, str]
    raw: bytes


def _error_info(body: bytes) -> tuple[str, str, str]:
    """(message, type, code) from an OpenAI-style error body; tolerant of anything."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace"), "", ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return (str(err.get("message") or "")[:500], str(err.get("type") or ""),
                str(err.get("code") or ""))
    if isinstance(err, str):
        return err[:500], "", ""
    return str(obj)[:200], "", ""


def classify(resp: RawResponse) -> APIError:
    """The error a non-2xx answer means. Pure: status, headers and body in, error out."""
    status = resp.status
    rid = resp.headers.get("x-request-id")
    message, etype, code = _error_info(resp.body)
    excerpt = message[:300]
    if status == 429:
        if code == "insufficient_quota" or etype == "insufficient_quota":
            return InsufficientQuotaError(
                "the API account is out of quota (insufficient_quota): add credit or raise the "
                "spending limit, then resume the run; retrying cannot help",
                status=status, request_id=rid, body=excerpt)
        low = f"{etype} {message}".lower()
        if etype == "tokens" or "tokens per min" in low or "(tpm)" in low:
            kind = "tokens"
        elif etype == "requests" or "requests per min" in low or "(rpm)" in low:
            kind = "requests"
        else:
            kind = "unknown"
        return RateLimitError(f"rate limited ({kind}): {excerpt}", kind=kind,
                              retry_after=retry_after_seconds(resp.headers, kind),
                              request_id=rid, body=excerpt)
    if status in (401, 403):
        return AuthenticationError(
            f"the server refused the API key (HTTP {status}): check OPENAI_API_KEY (or the "
            f"variable --api-key-env names); {excerpt}",
            status=status, request_id=rid, body=excerpt)
    if status in (408, 409) or status >= 500:
        err = ServerError(f"server error HTTP {status}: {excerpt}", status=status,
                          request_id=rid, body=excerpt)
        err.retry_after = retry_after_seconds(resp.headers)
        return err
    return BadRequestError(f"request refused with HTTP {status}: {excerpt}", status=status,
                           request_id=rid, body=excerpt)


def parse_answer(resp: RawResponse, endpoint: str = "/chat/completions") -> Completion:
    """A 2xx answer of either endpoint as a ``Completion``; embeddings keep their vectors
    in ``raw`` (the embedder decodes them) and always finish with ``stop``."""
    if endpoint == "/embeddings":
        return parse_embeddings(resp)
    return parse_completion(resp)


def _json_object(resp: RawResponse) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The answer's JSON object and its ``usage`` (if any); garbled bodies are retryable."""
    try:
        obj = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        raise InvalidResponseError("the server's answer is not JSON", kind="body_not_json",
                                   status=resp.status) from None
    if not isinstance(obj, dict):
        raise InvalidResponseError("the answer is JSON but not an object", kind="wrong_shape")
    return obj, obj.get("usage") if isinstance(obj.get("usage"), dict) else None


def parse_embeddings(resp: RawResponse) -> Completion:
    obj, usage = _json_object(resp)
    if not isinstance(obj.get("data"), list):
        raise InvalidResponseError("the answer has no data list", kind="wrong_shape", usage=usage)
    return Completion(None, "stop", usage, resp.headers, resp.body)


def parse_completion(resp: RawResponse) -> Completion:
    obj, usage = _json_object(resp)
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise InvalidResponseError("the answer has no choices list", kind="wrong_shape",
                                   usage=usage)
    if not choices:
        raise InvalidResponseError("the answer has an empty choices list", kind="empty_choices",
                                   usage=usage)
    ch = choices[0]
    msg = ch.get("message") if isinstance(ch, dict) else None
    if not isinstance(msg, dict):
        raise InvalidResponseError("the first choice has no message", kind="wrong_shape",
                                   usage=usage)
    content = msg.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidResponseError("message content is not text", kind="wrong_shape", usage=usage)
    fr = ch.get("finish_reason")
    return Completion(content, fr if isinstance(fr, str) else None, usage, resp.headers,
                      resp.body)


class ChatClient:
    """Sends pre-serialised bodies to an OpenAI-compatible server's endpoints.

    >>> client = ChatClient("http://127.0.0.1:8080/v1", api_key=None)
    >>> completion = await client.complete(orjson.dumps(body))
    """

    def __init__(self, base_url: str, api_key: str | None, *, transport: Transport | None = None,
                 timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.timeout = timeout
        self.transport: Transport = transport or AiohttpTransport()
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers

    async def send(self, body: bytes, endpoint: str = "/chat/completions") -> RawResponse:
        """One round trip; status is not interpreted (the limiter wants every answer's headers)."""
        url = self.url if endpoint == "/chat/completions" else self.base_url + endpoint
        return await self.transport.post(url, body, self._headers, self.timeout)

    def classify(self, resp: RawResponse) -> APIError:
        """The error a non-2xx answer means (``classify``)."""
        return classify(resp)

    async def complete(self, body: bytes) -> Completion:
        resp = await self.send(body)
        if resp.status >= 300:
            raise classify(resp)
        return parse_completion(resp)

    async def aclose(self) -> None:
        await self.transport.aclose()

    def __repr__(self) -> str:
        return f"ChatClient({self.url!r})"
