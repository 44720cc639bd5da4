from __future__ import annotations

import orjson
import pytest

from dynogen.errors import (
    AuthenticationError,
    BadRequestError,
    InsufficientQuotaError,
    InvalidResponseError,
    RateLimitError,
    ServerError,
)
from dynogen.execute.client import ChatClient, classify, parse_completion
from dynogen.execute.transport import MockTransport, RawResponse, SentRequest
from dynogen.ratelimit import retry_after_seconds


def err(status: int, message: str = "", type_: str = "", code: str = "",
        headers: dict[str, str] | None = None) -> RawResponse:
    body = orjson.dumps({"error": {"message": message, "type": type_, "code": code}})
    return RawResponse(status, headers or {}, body)


def test_rate_limit_kinds_and_retry_after() -> None:
    e = classify(err(429, "Rate limit reached ... on tokens per min (TPM): Limit 10", "tokens",
                     "rate_limit_exceeded", {"retry-after-ms": "250"}))
    assert isinstance(e, RateLimitError) and e.kind == "tokens" and e.retry_after == 0.25
    e = classify(err(429, "on requests per min (RPM)", "requests", "rate_limit_exceeded",
                     {"x-ratelimit-reset-requests": "1.5s"}))
    assert isinstance(e, RateLimitError) and e.kind == "requests" and e.retry_after == 1.5


def test_quota_auth_bad_request_server() -> None:
    assert isinstance(classify(err(429, "quota", "insufficient_quota", "insufficient_quota")),
                      InsufficientQuotaError)
    assert isinstance(classify(err(401, "bad key")), AuthenticationError)
    assert isinstance(classify(err(400, "response_format not supported")), BadRequestError)
    e = classify(RawResponse(503, {"retry-after": "2"}, b"<html>busy</html>"))
    assert isinstance(e, ServerError) and e.retry_after == 2.0 and "busy" in str(e)


def test_retry_after_prefers_ms() -> None:
    assert retry_after_seconds({"retry-after-ms": "20", "retry-after": "5"}) == 0.02
    assert retry_after_seconds({}) is None


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"not json", "body_not_json"), (b"[1]", "wrong_shape"), (b'{"choices": []}', "empty_choices"),
     (b'{"choices": [{"message": {"content": 5}}]}', "wrong_shape"),
     (b'{"nope": 1}', "wrong_shape")],
)
def test_invalid_bodies(body: bytes, kind: str) -> None:
    with pytest.raises(InvalidResponseError) as ei:
        parse_completion(RawResponse(200, {}, body))
    assert ei.value.reason == kind


async def test_client_sends_key_only_in_header() -> None:
    seen: list[SentRequest] = []

    def handler(req: SentRequest) -> RawResponse:
        seen.append(req)
        body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
        return RawResponse(200, {}, orjson.dumps(body))

    client = ChatClient("http://x/v1/", "sk-canary-123", transport=MockTransport(handler))
    comp = await client.complete(b'{"model": "m"}')
    assert comp.content == "hi" and comp.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert seen[0].url == "http://x/v1/chat/completions"
    assert seen[0].headers["Authorization"] == "Bearer sk-canary-123"
    assert "canary" not in repr(client)
