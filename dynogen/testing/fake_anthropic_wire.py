"""What the fake Anthropic server knows of the wire: validation, token layout, prompt cache.

Pure code, no I/O and no clock of its own (``now`` is passed in):

- ``check``: a Messages body as the API validates it (unknown keys, such as an
  OpenAI ``seed`` or ``response_format``, are a 400, as Anthropic's are);
- ``layout``: the tokens a request is billed for, in Anthropic's cache order
  (tools, the tool-use system prompt, system blocks, messages with 3 framing
  tokens each), and the prefix each ``cache_control`` breakpoint closes;
- ``PromptCache``: a prefix of at least ``min_tokens`` is written by the first
  request that marks it and read by later ones for ``ttl`` seconds after its
  last use;
- ``canonical``: the bytes an answer may depend on, the same whether or not a
  prefix is marked and whether text comes as a string or as blocks, so online
  and batch requests of the same body get the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import xxhash

from dynogen.prompts.tokens import TokenCounter

__all__ = ["KNOWN_KEYS", "Layout", "PromptCache", "Refused", "as_openai", "canonical", "check",
           "error_body", "forced_tool", "key_matches", "layout", "rfc3339"]

KNOWN_KEYS = frozenset({
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "temperature",
    "top_p", "top_k", "stop_sequences", "metadata", "stream", "thinking", "service_tier",
    "output_config", "container", "mcp_servers", "context_management"})
FRAME = 3  # tokens a message's role and separators take


class Refused(Exception):
    """An error answer: HTTP status, Anthropic's error type and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind

    def body(self) -> bytes:
        return error_body(self.kind, str(self))


def error_body(kind: str, message: str) -> bytes:
    """Anthropic's error body: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def key_matches(headers: Mapping[str, str], key: str) -> bool:
    """``x-api-key: KEY`` (the Messages API's own) or ``Authorization: Bearer KEY`` (what
    SDK 2.x sends)."""
    return headers.get("x-api-key") == key or headers.get("Authorization") == f"Bearer {key}"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _invalid(message: str) -> Refused:
    return Refused(400, "invalid_request_error", message)


def check(body: Any) -> dict[str, Any]:
    """A Messages body as the API validates it; ``Refused`` says why not."""
    if not isinstance(body, dict):
        raise _invalid("The request body is not valid JSON.")
    extra = sorted(set(body) - KNOWN_KEYS)
    if extra:
        raise _invalid(f"{extra[0]}: Extra inputs are not permitted")
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise _invalid("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant")
            and isinstance(m.get("content"), str | list) for m in messages):
        raise _invalid("messages: each message needs a role (user or assistant) and content")
    system = body.get("system")
    blocks = [b for b in (system if isinstance(system, list) else []) if isinstance(b, dict)]
    blocks += [b for m in messages if isinstance(m["content"], list) for b in m["content"]
               if isinstance(b, dict)]
    blocks += [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if sum("cache_control" in b for b in blocks) > 4:
        raise _invalid("A maximum of 4 blocks with cache_control may be provided.")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get(
            "name") not in {t.get("name") for t in body.get("tools") or []}:
        raise _invalid(f"tool_choice: tool {choice.get('name')!r} not found in tools")
    t = body.get("temperature")
    if t is not None and not (isinstance(t, int | float) and 0.0 <= t <= 1.0):
        raise _invalid("temperature: Input should be less than or equal to 1")
    return body


def forced_tool(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tool ``tool_choice`` forces (``tool`` by name, or ``any``: the first), if any."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in ("tool", "any"):
        return None
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if choice.get("type") == "any":
        return tools[0] if tools else None
    return next((t for t in tools if t.get("name") == choice.get("name")), None)


@dataclass
class Layout:
    """A request as the tokens it is billed for, and its breakpoints: (tokens up to and
    including the marked block, a key of everything up to there)."""

    total: int = 0
    bounds: list[tuple[int, int]] = field(default_factory=list)


def layout(body: Mapping[str, Any], counter: TokenCounter, tool_prompt_tokens: int) -> Layout:
    """Tokens in Anthropic's cache order, and each breakpoint's prefix length and key."""
    lay = Layout()
    h = xxhash.xxh3_64()

    def add(obj: Any, tokens: int, mark: bool) -> None:
        h.update(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS))
        lay.total += tokens
        if mark:
            lay.bounds.append((lay.total, h.intdigest()))

    tools = body.get("tools") or []
    for tool in tools:
        plain = {k: v for k, v in tool.items() if k != "cache_control"}
        add(plain, counter.count(json.dumps(plain, ensure_ascii=False)), "cache_control" in tool)
    if tools:
        add("tool-use system prompt", tool_prompt_tokens, False)
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else (
            system or []):
        text = str(block.get("text", ""))
        add(text, counter.count(text), "cache_control" in block)
    for m in body["messages"]:
        content = m["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        add(m["role"], FRAME, False)
        for block in blocks:
            text = str(block.get("text", "")) if block.get("type") == "text" else json.dumps(
                {k: v for k, v in block.items() if k != "cache_control"})
            add(text, counter.count(text), "cache_control" in block)
    return lay


class PromptCache:
    """Prefixes written by one request and read by the next, as Anthropic's cache does."""

    __slots__ = ("min_tokens", "ttl", "_seen")

    def __init__(self, min_tokens: int = 1024, ttl: float = 300.0) -> None:
        self.min_tokens = min_tokens
        self.ttl = ttl
        self._seen: dict[int, float] = {}

    def peek(self, lay: Layout, now: float) -> tuple[int, int]:
        """(tokens a request would write, tokens it would read), remembering nothing."""
        usable = [(n, k) for n, k in lay.bounds if n >= self.min_tokens]
        for n, k in reversed(usable):
            seen = self._seen.get(k)
            if seen is not None and now - seen <= self.ttl:
                return usable[-1][0] - n, n
        return (usable[-1][0], 0) if usable else (0, 0)

    def use(self, lay: Layout, now: float) -> tuple[int, int]:
        """(written, read) for a request the server processes; its prefixes are kept."""
        written, read = self.peek(lay, now)
        for n, k in lay.bounds:
            if n >= self.min_tokens:
                self._seen[k] = now
        return written, read

    def clear(self) -> None:
        self._seen.clear()


def texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [str(b.get("text", "")) if b.get("type") == "text" else json.dumps(
        {k: v for k, v in b.items() if k != "cache_control"}, sort_keys=True)
        for b in content or () if isinstance(b, dict)]


def canonical(body: Mapping[str, Any]) -> bytes:
    """What an answer may depend on: the request without ``cache_control`` and with text
    blocks and plain strings alike, so marking a prefix never changes the answer."""
    tools = [{k: v for k, v in t.items() if k != "cache_control"}
             for t in body.get("tools") or () if isinstance(t, dict)]
    return orjson.dumps({
        "model": body.get("model"), "max_tokens": body.get("max_tokens"),
        "temperature": body.get("temperature"), "tools": tools,
        "tool_choice": body.get("tool_choice"), "system": texts(body.get("system")),
        "messages": [[m.get("role"), texts(m.get("content"))] for m in body["messages"]],
    }, option=orjson.OPT_SORT_KEYS)


def as_openai(body: Mapping[str, Any], tool: Mapping[str, Any] | None) -> dict[str, Any]:
    """Enough of an OpenAI body for ``fake_answers.task_spec`` to read field names from."""
    out: dict[str, Any] = {"messages": [{"role": "user", "content": "".join(texts(m["content"]))}
                                        for m in body["messages"]]}
    if tool is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": tool.get("name"), "schema": tool.get("input_schema")}}
    return out
