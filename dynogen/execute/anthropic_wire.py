"""Anthropic's Messages API, spoken from dynogen's OpenAI-shaped requests and answers (pure).

dynogen builds every request as an OpenAI chat body and keeps every answer as an
OpenAI chat completion: the body's bytes are the request-cache key and a batch
line's ``custom_id``, the completion is what the cache holds and what the task
parser, the ledger and the journals read. For Anthropic the translation happens
at the wire and nowhere else, so no stage above ``execute/`` knows the provider
and a cached answer serves a resumed run whichever way it was obtained:

request (``to_messages``)
    system (and developer) messages become ``system`` text blocks, the other turns
    ``messages``; a ``json_schema`` response format becomes one tool whose
    ``input_schema`` is the schema, forced with ``tool_choice`` (its input is the
    answer: it works on every Claude model and in Message Batches);
    ``max_tokens``/``max_completion_tokens`` become ``max_tokens``; temperature is
    clamped to Anthropic's 0..1; ``seed`` has no Anthropic counterpart and is
    dropped. With ``cache`` the last shared block (the last few-shot turn, else the
    system prompt) carries ``cache_control``, so the unit's own message is the only
    part after the cached prefix. Anthropic's cache prefix runs tools → system →
    messages: a schema that names each unit's fields makes every prefix unique, so
    the client marks a prefix only once another request has used it (``PrefixMarks``);
    one shared across requests is cached from its second use on.

answer (``to_completion``)
    the tool's input (JSON text) or the text blocks become ``message.content``;
    ``stop_reason`` becomes ``finish_reason`` (``max_tokens`` → ``length``, a
    refusal → ``content_filter``); ``usage`` keeps OpenAI's meaning:
    ``prompt_tokens`` = ``input_tokens`` + ``cache_creation_input_tokens`` +
    ``cache_read_input_tokens`` (Anthropic's ``input_tokens`` excludes cached
    tokens), ``prompt_tokens_details.cached_tokens`` the reads and
    ``.cache_write_tokens`` the writes (``execute.ledger`` bills both).

errors (``classify``)
    429 is a rate limit of requests, input tokens or output tokens (from the
    message, else from which ``remaining`` header is spent); 529 (overloaded) and
    5xx are server faults: both retryable; 401/403 name the key's variable; a 400
    about the credit balance is an out-of-quota error.

token figures (``prompt_figures``)
    No tokenizer for Claude runs offline. The limiter paces with dynogen's count
    (``--encoding``) plus ``TOOL_PROMPT_TOKENS`` and learns the server's own count
    from its headers; the ledger reserves an upper bound no tokenizer can exceed:
    one token per byte of the OpenAI-shaped body (JSON escaping only adds bytes,
    and a token is at least one byte) plus ``BOUND_OVERHEAD`` for the tool-use
    system prompt and the translation's own keys.

batch results (``result_line``)
    a Message Batches result line becomes an OpenAI Batch API output line, so the
    batch executor reads both providers' results with one parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
import xxhash

from dynogen.dedup import HashSet
from dynogen.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InsufficientQuotaError,
    RateLimitError,
    ServerError,
)
from dynogen.execute.base import Request
from dynogen.execute.transport import RawResponse
from dynogen.ratelimit.headers import retry_after_seconds

__all__ = ["ANTHROPIC_VERSION", "BOUND_OVERHEAD", "DEFAULT_MAX_TOKENS", "TOOL_PROMPT_TOKENS",
           "PrefixMarks", "answer", "classify", "estimate_tokens", "prefix_digest",
           "prompt_figures", "rate_limit_kind", "result_line", "to_completion", "to_messages",
           "usage_of"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens; OpenAI bodies may leave it out
# Pacing only (the limiter learns the real charge): about what Anthropic's tool-use system
# prompt adds to a forced tool's request.
TOOL_PROMPT_TOKENS = 512
# Upper-bound allowance on top of the body's bytes: the tool-use system prompt (under a
# thousand tokens for every model Anthropic lists) and the keys the translation adds.
BOUND_OVERHEAD = 4096
_FINISH = {"end_turn": "stop", "tool_use": "stop", "stop_sequence": "stop",
           "max_tokens": "length", "model_context_window_exceeded": "length",
           "refusal": "content_filter", "pause_turn": "length"}
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_EPHEMERAL = {"type": "ephemeral"}
_SYSTEM_ROLES = ("system", "developer")


# ---- requests ---------------------------------------------------------------------------------

def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's multi-part content: keep the text parts
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def _tool(rf: Any) -> dict[str, Any] | None:
    """The forced tool a ``json_schema`` response format becomes, or ``None``."""
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return None
    js = rf.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
        return None
    name = _TOOL_NAME.sub("_", str(js.get("name") or "answer"))[:64] or "answer"
    return {"name": name, "description": "Record your answer; its input is the whole answer.",
            "input_schema": js["schema"]}


def to_messages(openai: Mapping[str, Any], *, cache: bool = False) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat body; ``cache`` marks the shared prefix."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for m in openai.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role, text = m.get("role"), _text(m.get("content"))
        if role in _SYSTEM_ROLES:
            system.append({"type": "text", "text": text})
        else:
            turns.append({"role": "assistant" if role == "assistant" else "user",
                          "content": text})
    max_tokens = openai.get("max_tokens") or openai.get("max_completion_tokens")
    body: dict[str, Any] = {"model": openai.get("model"),
                            "max_tokens": max_tokens if isinstance(max_tokens, int)
                            else DEFAULT_MAX_TOKENS}
    tool = _tool(openai.get("response_format"))
    if tool is not None:
        body["tools"] = [tool]
        body["tool_choice"] = {"type": "tool", "name": tool["name"]}
    if system:
        body["system"] = system
    if cache:
        # The last block every request of this prefix shares: the last turn before the
        # unit's message, else the system prompt.
        if len(turns) >= 2:
            last = turns[-2]
            last["content"] = [{"type": "text", "text": last["content"],
                                "cache_control": _EPHEMERAL}]
        elif system:
            system[-1]["cache_control"] = _EPHEMERAL
    body["messages"] = turns
    temperature = openai.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        body["temperature"] = min(1.0, max(0.0, float(temperature)))
    return body


def prefix_digest(openai: Mapping[str, Any]) -> int:
    """A fingerprint of what a cached prefix would hold (schema, system, shared turns)."""
    messages = openai.get("messages") or []
    shared = messages[:-1] if isinstance(messages, list) else []
    return xxhash.xxh3_64_intdigest(orjson.dumps(
        [openai.get("model"), openai.get("response_format"), shared]))


class PrefixMarks:
    """Which requests mark their prefix for Anthropic's prompt cache: those whose prefix
    another request (another body, not a retry of this one) has used before. A write costs
    1.25x the input price and pays off only if something else reads it. 8 bytes a request
    and a prefix.

    >>> marks = PrefixMarks()
    >>> marks.mark(prefix=7, body=1), marks.mark(prefix=7, body=1), marks.mark(prefix=7, body=2)
    (False, False, True)
    """

    __slots__ = ("_prefixes", "_pairs", "_shared")

    def __init__(self) -> None:
        self._prefixes = HashSet()
        self._pairs = HashSet()
        self._shared = HashSet()

    def mark(self, prefix: int, body: int) -> bool:
        pair = xxhash.xxh3_64_intdigest(prefix.to_bytes(8, "little") + body.to_bytes(8, "little"))
        new_pair = self._pairs.add(pair)
        if not self._prefixes.add(prefix) and new_pair:
            self._shared.add(prefix)
        return prefix in self._shared


def estimate_tokens(prompt_tokens: int, openai: Mapping[str, Any]) -> int:
    """What Anthropic will likely count for a prompt dynogen counted as ``prompt_tokens``:
    plus the tool-use system prompt when the schema becomes a tool. An approximation."""
    return prompt_tokens + (TOOL_PROMPT_TOKENS if _tool(openai.get("response_format")) else 0)


def prompt_figures(req: Request) -> tuple[int, int]:
    """(tokens the limiter paces with, tokens the ledger reserves) for one request."""
    return (req.prompt_tokens + TOOL_PROMPT_TOKENS,
            max(req.prompt_tokens, len(req.body) + BOUND_OVERHEAD))


# ---- answers ----------------------------------------------------------------------------------

def _count(usage: Mapping[str, Any], key: str) -> int:
    v = usage.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def usage_of(usage: Any) -> dict[str, Any] | None:
    """Anthropic's usage in OpenAI's meaning (prompt tokens include cached ones)."""
    if not isinstance(usage, Mapping) or not isinstance(usage.get("input_tokens"), int):
        return None
    fresh, out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    read = _count(usage, "cache_read_input_tokens")
    prompt = fresh + written + read
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written}}


def to_completion(msg: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion for a Messages API answer (a tool's input is the content).

    A body that is not a message keeps no ``choices``: the executor's parser then
    counts it as a wrong shape (retryable), with its usage if it had one.
    """
    usage = usage_of(msg.get("usage"))
    blocks = msg.get("content")
    if msg.get("type") != "message" or not isinstance(blocks, list):
        return {"object": "chat.completion", "not_a_message": True, "usage": usage}
    content: str | None = None
    tool = next((b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"),
                None)
    if tool is not None:
        content = orjson.dumps(tool.get("input")).decode() if tool.get("input") is not None \
            else None
    else:
        texts = [str(b.get("text")) for b in blocks if isinstance(b, dict)
                 and b.get("type") == "text" and isinstance(b.get("text"), str)]
        content = "".join(texts) if texts else None
    stop = msg.get("stop_reason")
    finish = _FINISH.get(stop, stop) if isinstance(stop, str) else None
    return {"id": msg.get("id"), "object": "chat.completion", "model": msg.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": usage}


def answer(raw: RawResponse) -> RawResponse:
    """A 2xx Messages answer as an OpenAI completion; a body that is not JSON stays as it is
    (the parser reports it)."""
    try:
        msg = orjson.loads(raw.body)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(msg, dict):
        return raw
    return RawResponse(raw.status, raw.headers, orjson.dumps(to_completion(msg)))


# ---- errors -----------------------------------------------------------------------------------

def _error_info(body: bytes) -> tuple[str, str]:
    """(message, type) from an Anthropic error body; tolerant of anything."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace"), ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or "")[:500], str(err.get("type") or "")
    return str(obj)[:200], ""


def rate_limit_kind(message: str, headers: Mapping[str, str]) -> str:
    """Which of Anthropic's limits a 429 hit: requests, input_tokens, output_tokens."""
    low = message.lower()
    if "output tokens" in low:
        return "output_tokens"
    if "input tokens" in low:
        return "input_tokens"
    if "requests" in low:
        return "requests"
    for kind, name in (("requests", "requests"), ("input_tokens", "input-tokens"),
                       ("output_tokens", "output-tokens")):
        left = headers.get(f"anthropic-ratelimit-{name}-remaining")
        if left is not None and left.strip() in ("0", "0.0"):
            return kind
    return "unknown"


def classify(resp: RawResponse, key_env: str = "ANTHROPIC_API_KEY") -> APIError:
    """The error a non-2xx Messages answer means. Pure: status, headers and body in."""
    status = resp.status
    rid = resp.headers.get("request-id") or resp.headers.get("x-request-id")
    message, etype = _error_info(resp.body)
    excerpt = message[:300]
    if status == 429:
        kind = rate_limit_kind(message, resp.headers)
        return RateLimitError(f"rate limited ({kind}): {excerpt}", kind=kind,
                              retry_after=retry_after_seconds(resp.headers), request_id=rid,
                              body=excerpt)
    if status in (401, 403):
        return AuthenticationError(
            f"Anthropic refused the API key (HTTP {status}): check {key_env} (or the "
            f"variable --api-key-env names); {excerpt}", status=status, request_id=rid,
            body=excerpt)
    if status == 400 and "credit balance" in message.lower():
        return InsufficientQuotaError(
            "the Anthropic account's credit balance is too low: add credit, then resume the "
            "run; retrying cannot help", status=status, request_id=rid, body=excerpt)
    if status in (408, 409) or status >= 500:
        what = "overloaded" if status == 529 or etype == "overloaded_error" else "server error"
        err = ServerError(f"Anthropic {what} HTTP {status}: {excerpt}", status=status,
                          request_id=rid, body=excerpt)
        err.retry_after = retry_after_seconds(resp.headers)
        return err
    return BadRequestError(f"request refused with HTTP {status}: {excerpt}", status=status,
                           request_id=rid, body=excerpt)


# ---- Message Batches results ------------------------------------------------------------------

_ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401,
                 "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                 "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529}


def result_line(raw: bytes) -> bytes:
    """A Message Batches result line as an OpenAI Batch API output line (same ``custom_id``);
    a line that is not an object is passed on for the parser to count."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(obj, dict):
        return raw
    result = obj.get("result")
    kind = result.get("type") if isinstance(result, dict) else None
    out: dict[str, Any] = {"custom_id": obj.get("custom_id")}
    if kind == "succeeded" and isinstance(result, dict) and isinstance(result.get("message"),
                                                                         dict):
        out["response"] = {"status_code": 200, "body": to_completion(result["message"])}
    elif kind == "errored" and isinstance(result, dict):
        err = result.get("error")
        inner = err.get("error") if isinstance(err, dict) else None
        etype = str(inner.get("type") if isinstance(inner, dict) else "api_error")
        out["response"] = {"status_code": _ERROR_STATUS.get(etype, 500),
                           "body": {"error": {"type": etype, "code": etype,
                                              "message": str((inner or {}).get("message"))}}}
    elif kind in ("canceled", "expired"):
        out["error"] = {"code": "batch_cancelled" if kind == "canceled" else "batch_expired"}
    else:
        return raw
    return orjson.dumps(out)
