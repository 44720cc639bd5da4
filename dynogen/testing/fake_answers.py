"""What the fake server answers: completions, deterministic task lists, faults and latency.

Pure functions of the request (and a seeded RNG passed in), so the same body
always gets the same auto answer and tests can predict it without a server.

The auto answer reads the field names from the request the way a model would
have to: from the ``enum`` of a ``json_schema`` response format when there is
one, else from the messages (a ``Fields:`` line, an ``"enum": [...]`` or
``"name": "..."`` pairs in JSON the prompt embeds). It never invents names, so
a prompt it cannot read gets ``{"tasks": []}``, which the engine must count.

Token counts are ``len(text) // 4`` style estimates by default: cheap, and
enough for limits and faults. Cost studies need the real figures, so
``ExactTokens`` counts as OpenAI bills instead (``FakeOpenAI(exact_tokens=True)``):
the messages by the cookbook rule (``dynogen.prompts.tokens.TokenCounter``), a
``json_schema`` response format as the tokens of its JSON text placed *before*
the system message (OpenAI's prompt-caching guide: "the structured output
schema serves as a prefix to the system message"), and the completion as the
tokens of its content. OpenAI does not document how it renders a schema; the
fake bills its JSON text without the ``RESPONSE_FORMAT_OVERHEAD`` slack that
dynogen reserves on top, so a reservation is an upper bound of the bill, as it
must be. With ``prompt_cache`` it also reports ``cached_tokens`` by OpenAI's
rule: the longest prefix already seen, if at least 1,024 tokens, in 128-token
steps.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from dynogen.prompts.tokens import REPLY_PRIMING_TOKENS, TokenCounter
from dynogen.testing.fake_limits import insufficient_quota_body, rate_limit_body
from dynogen.units import ID_NAME

__all__ = [
    "add_answer_time_args", "answer_time_of",
    "CACHE_MIN_TOKENS",
    "CACHE_STEP",
    "DEFAULT_FAULT_KINDS",
    "ExactTokens",
    "FAULT_KINDS",
    "Fault",
    "Latency",
    "OutputTokens",
    "auto_verdict",
    "is_verdict_request",
    "Reply",
    "TaskSpec",
    "auto_content",
    "completion_reply",
    "count_completion_tokens",
    "count_prompt_tokens",
    "error_body",
    "error_reply",
    "fault_reply",
    "task_spec",
]

FAULT_KINDS = (
    "rate_limit",          # 429 with OpenAI's typed body and retry-after headers
    "insufficient_quota",  # 429 code insufficient_quota: fatal, the account is out of money
    "server_error",        # 500
    "unavailable",         # 503
    "http",                # any status/body/headers given in the Fault
    "not_json",            # 200 whose body is not JSON
    "wrong_shape",         # 200 JSON without ``choices``
    "empty_choices",       # 200 with ``choices: []``
    "length",              # finish_reason "length", content cut off mid-JSON
    "content_filter",      # finish_reason "content_filter", content null
    "refusal",             # structured-output refusal: message.refusal set, content null
    "slow",                # the normal answer after ``delay`` seconds
    "reset",               # the connection is reset without an answer
    "timeout",             # no answer for ``delay`` seconds (past the client's timeout), then reset
)
# Injected at random when only a rate is given. Fatal or run-stalling kinds
# (insufficient_quota, timeout) and the catch-all "http" are opt-in.
DEFAULT_FAULT_KINDS = (
    "rate_limit", "server_error", "unavailable", "not_json", "wrong_shape", "empty_choices",
    "length", "content_filter", "refusal", "slow", "reset",
)
_DEFAULT_DELAY = {"slow": 0.5, "timeout": 60.0}

OutputTokens = int | tuple[int, int] | Callable[[random.Random], int]
"""A completion length: fixed, uniform in ``(lo, hi)``, or drawn by a function."""


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted or injected failure; fields left ``None`` take the kind's defaults.

    >>> Fault("server_error").kind
    'server_error'
    >>> Fault("rate_limit", limit_type="tokens", retry_after=0.05).limit_type
    'tokens'
    >>> Fault.http(502, b"<html>bad gateway</html>").status
    502
    """

    kind: str
    status: int | None = None
    body: bytes | str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float | None = None
    content: str | None = None
    limit_type: str = "requests"
    retry_after: float = 0.02

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}: use one of {', '.join(FAULT_KINDS)}")
        if self.limit_type not in ("requests", "tokens"):
            raise ValueError(f"limit_type must be 'requests' or 'tokens', got {self.limit_type!r}")

    @classmethod
    def http(cls, status: int, body: bytes | str | Mapping[str, Any] = b"",
             headers: Mapping[str, str] | None = None) -> Fault:
        return cls("http", status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def slow(cls, delay: float, content: str | None = None) -> Fault:
        return cls("slow", delay=delay, content=content)

    @classmethod
    def timeout(cls, delay: float = 60.0) -> Fault:
        return cls("timeout", delay=delay)

    @property
    def wait(self) -> float:
        return self.delay if self.delay is not None else _DEFAULT_DELAY.get(self.kind, 0.0)

    def body_bytes(self) -> bytes | None:
        if self.body is None or isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return orjson.dumps(dict(self.body))


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds before an answer: lognormal around ``median``, plus time per output token,
    plus a heavy tail (``tail_p`` of answers take ``tail_seconds`` more).

    >>> Latency().sample(random.Random(0), 100)
    0.0
    """

    median: float = 0.0
    sigma: float = 0.0
    per_token: float = 0.0
    tail_p: float = 0.0
    tail_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("median", "sigma", "per_token", "tail_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"latency {name} must be >= 0")
        if not 0.0 <= self.tail_p <= 1.0:
            raise ValueError("latency tail_p must be in [0, 1]")

    @property
    def is_zero(self) -> bool:
        return not (self.median or self.per_token or (self.tail_p and self.tail_seconds))

    def sample(self, rng: random.Random, completion_tokens: int) -> float:
        if self.is_zero:
            return 0.0
        base = self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)) if self.median else 0.0
        tail = self.tail_seconds if self.tail_p and rng.random() < self.tail_p else 0.0
        return base + self.per_token * completion_tokens + tail


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """About OpenAI's count: a quarter of the characters plus 3 per message and 3 per request."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = 0
    for m in messages:
        if isinstance(m, dict):
            chars += len(_text_of(m.get("content")))
    return chars // 4 + 3 * len(messages) + 3


def count_completion_tokens(content: str | None) -> int:
    return len(content) // 4 + 1 if content else 0


CACHE_MIN_TOKENS = 1024  # OpenAI caches prompts from this many tokens...
CACHE_STEP = 128         # ...in steps of this many.
# Stand-ins for tokens that are billed but have no text (message framing, reply
# priming); negative so they never equal a real token id.
_FRAME = (-1, -2, -3)
_NAME_TOKEN = -4
_PRIMING = (-5,) * REPLY_PRIMING_TOKENS


class ExactTokens:
    """Token counts as OpenAI bills them, and (with ``prompt_cache``) its prefix cache.

    ``prompt_ids`` lays a request out as the tokens it is billed for: the
    ``json_schema`` first (OpenAI puts it before the system message), then per
    message 3 framing tokens, the role and the content (a ``name`` adds 1),
    then 3 tokens of reply priming. Its length equals
    ``TokenCounter.count_messages(messages) + count_response_format(rf) -
    RESPONSE_FORMAT_OVERHEAD``.

    >>> ex = ExactTokens("o200k_base")
    >>> ex.prompt_tokens({"messages": [{"role": "user", "content": "hello world"}]})
    (9, 0)
    """

    __slots__ = ("counter", "prompt_cache", "max_prefixes", "_seen")

    def __init__(self, encoding: str = "o200k_base", *, prompt_cache: bool = False,
                 max_prefixes: int = 1_000_000) -> None:
        self.counter = TokenCounter(encoding)
        self.prompt_cache = prompt_cache
        self.max_prefixes = max_prefixes
        self._seen: set[int] = set()

    def prompt_ids(self, body: Mapping[str, Any]) -> list[int]:
        ids: list[int] = []
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            ids += self.counter.encode(json.dumps(rf.get("json_schema", {}), ensure_ascii=False))
        messages = body.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if not isinstance(m, dict):
                continue
            ids += _FRAME
            for key, value in m.items():
                text = _text_of(value) if key == "content" else value
                if isinstance(text, str):
                    ids += self.counter.encode(text)
                if key == "name":
                    ids.append(_NAME_TOKEN)
        ids += _PRIMING
        return ids

    def prompt_tokens(self, body: Mapping[str, Any]) -> tuple[int, int]:
        """(prompt tokens, of which cached); the cache remembers this prompt for later ones."""
        ids = self.prompt_ids(body)
        return len(ids), self.cached_prefix(ids)

    def cached_prefix(self, ids: list[int]) -> int:
        """Tokens of ``ids`` an earlier prompt already had (0 without ``prompt_cache``); then
        remember ``ids``. Call it only for requests the server processes."""
        if not self.prompt_cache or len(ids) < CACHE_MIN_TOKENS:
            return 0
        raw = b"".join(i.to_bytes(4, "little", signed=True) for i in ids)
        steps = range(CACHE_MIN_TOKENS, len(ids) + 1, CACHE_STEP)
        keys = [xxhash.xxh3_64_intdigest(raw[: 4 * k]) for k in steps]
        cached = 0
        for k, key in zip(steps, keys, strict=True):
            if key not in self._seen:
                break
            cached = k
        if len(self._seen) + len(keys) > self.max_prefixes:
            self._seen.clear()  # a provider's cache forgets too
        self._seen.update(keys)
        return cached

    def forget(self) -> None:
        self._seen.clear()

    def completion_tokens(self, content: str | None) -> int:
        return self.counter.count(content) if content else 0

    def cut(self, content: str, max_tokens: int) -> str:
        return self.counter.truncate(content, max_tokens)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: [{"type": "text", "text": ...}]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict)
                       and isinstance(p.get("text"), str))
    return ""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a valid answer may hold: field names and the schema's bounds."""

    names: tuple[str, ...]
    max_tasks: int = 3
    max_inputs: int = 4
    max_len: int | None = None
    outputs: tuple[str, ...] = ()  # an anyOf schema: the fields that may be the output


def task_spec(body: Mapping[str, Any]) -> TaskSpec | None:
    """The field names (and bounds) an answer to ``body`` may use, or ``None`` if unreadable.

    A schema that enumerates them wins; a schema that does not (dynogen's shared layout:
    names are free strings) gives only the bounds, and the names are read from the
    request's last user message, as a model reads them (not from the few-shot turns)."""
    rf = body.get("response_format")
    schema = None
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        spec = _spec_from_schema(schema)
        if spec is not None:
            return spec
    names = _names_of_last_unit(body.get("messages")) if schema is not None else ()
    # As a model that follows the prompt's conventions would, it outputs no id or link.
    outputs = tuple(n for n in names if not ID_NAME.search(n))
    if not names:
        names = _names_from_messages(body.get("messages"))
    if len(names) < 2:
        return None
    tasks = _get(schema, "properties", "tasks")
    return _bounded(TaskSpec(names, outputs=outputs if len(names) > len(outputs) > 0 else ()),
                    tasks, _get(tasks, "items", "properties"))


def _spec_from_schema(schema: Any) -> TaskSpec | None:
    tasks = _get(schema, "properties", "tasks")
    branches = _get(tasks, "items", "anyOf")
    outs: tuple[str, ...] = ()
    if isinstance(branches, list) and branches:
        # One branch per possible output, whose inputs leave it out (dynogen.prompts.schema).
        outs = tuple(dict.fromkeys(
            o for b in branches for o in _str_enum(_get(b, "properties", "output_field",
                                                        "enum"))[:1]))
        names = tuple(dict.fromkeys([*outs, *(
            n for b in branches
            for n in _str_enum(_get(b, "properties", "input_fields", "items", "enum")))]))
        props = _get(branches[0], "properties")
        if len(names) < 2 or not outs:
            return None
        return _bounded(TaskSpec(names, outputs=outs), tasks, props)
    props = _get(tasks, "items", "properties")
    names = _str_enum(_get(props, "output_field", "enum")) or _str_enum(
        _get(props, "input_fields", "items", "enum")) or _first_enum(schema)
    if len(names) < 2:
        return None
    return _bounded(TaskSpec(names), tasks, props)


def _bounded(spec: TaskSpec, tasks: Any, props: Any) -> TaskSpec:
    max_tasks = _get(tasks, "maxItems")
    max_inputs = _get(props, "input_fields", "maxItems")
    max_len = _get(props, "instruction", "maxLength")
    return TaskSpec(
        spec.names,
        max_tasks=max_tasks if isinstance(max_tasks, int) and max_tasks > 0 else 3,
        max_inputs=max_inputs if isinstance(max_inputs, int) and max_inputs > 0 else 4,
        max_len=max_len if isinstance(max_len, int) and max_len > 0 else None,
        outputs=spec.outputs,
    )


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _str_enum(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        return ()
    return tuple(dict.fromkeys(x for x in v if isinstance(x, str)))


def _first_enum(node: Any) -> tuple[str, ...]:
    if isinstance(node, dict):
        found = _str_enum(node.get("enum"))
        if len(found) >= 2:
            return found
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _first_enum(child)
            if found:
                return found
    return ()


_FIELDS_LINE = re.compile(r"^\s*(?:input\s+)?fields?\s*:\s*(.+)$", re.I | re.M)
_ENUM = re.compile(r'"enum"\s*:\s*(\[[^\]]*\])')
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)+)"')
_NAME_TRIM = re.compile(r"\s*[(\[:].*$")


# dynogen's rendering of a field in a unit's message: "- name: type" or "- name: type (labels)";
# a type may hold ": " itself (struct{text: list[string]}), a name seldom does.
_DYNOGEN_FIELD = re.compile(r"^- (.+?): (.+)$")


def _names_of_last_unit(messages: Any) -> tuple[str, ...]:
    """Field names under ``Fields:`` in the last user message (dynogen's metadata format)."""
    if not isinstance(messages, list):
        return ()
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return ()
    text = _text_of(users[-1].get("content"))
    _, found, rest = text.partition("\nFields:\n")
    if not found:
        return ()
    names = []
    for line in rest.splitlines():
        m = _DYNOGEN_FIELD.match(line)
        if m is None:
            if line.startswith("(+"):
                continue  # "(+N more fields not shown)"
            break
        names.append(m.group(1))
    return tuple(dict.fromkeys(names))


def _names_from_messages(messages: Any) -> tuple[str, ...]:
    if not isinstance(messages, list):
        return ()
    text = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
    for line in _FIELDS_LINE.findall(text):
        names = tuple(dict.fromkeys(
            n for n in (_NAME_TRIM.sub("", part).strip().strip("`'\"") for part in line.split(","))
            if n))
        if len(names) >= 2:
            return names
    for blob in _ENUM.findall(text):
        try:
            names = _str_enum(orjson.loads(blob))
        except orjson.JSONDecodeError:
            continue
        if len(names) >= 2:
            return names
    return tuple(dict.fromkeys(_NAME.findall(text)))


_OPENERS = (
    "Given the {inputs}, predict the {output}.",
    "Read the {inputs} and write the matching {output}.",
    "Using the {inputs}, determine the {output}.",
    "Based on the {inputs}, produce the corresponding {output}.",
    "From the {inputs}, infer the {output}.",
    "Look at the {inputs} and answer with the {output}.",
)
_CLOSERS = (
    "Answer concisely.", "Be precise.", "Use the same format as the examples.",
    "Give only the answer.", "Think about the context first.", "Keep it short.",
)
_FILLER = " Consider every detail of the input before answering, and keep the answer consistent."


def auto_content(spec: TaskSpec | None, digest: int, target_chars: int = 0,
                 pad: str = " ") -> str:
    """A valid ``{"tasks": [...]}`` for ``spec``, varied by ``digest``, padded to ``target_chars``.

    Padding first lengthens instructions (up to the schema's ``maxLength``), then
    adds whitespace (``pad`` repeated) before the closing brace: the content
    stays valid JSON, and valid against the schema, at any length. A run of
    spaces is a handful of tokens; ``" \\n"`` is about one token per 4 characters,
    so exact token counting passes that.
    """
    if spec is None:
        return '{"tasks": []}'
    names = spec.names
    n_tasks = 1 + digest % spec.max_tasks
    tasks: list[dict[str, Any]] = []
    for i in range(n_tasks):
        h = (digest >> (8 + 7 * i)) ^ (i * 0x9E3779B1)
        outputs = spec.outputs or names
        output = outputs[(h + i) % len(outputs)]
        others = [x for x in names if x != output]
        k = 1 + (h >> 3) % min(spec.max_inputs, len(others))
        start = (h >> 5) % len(others)
        inputs = [others[(start + j) % len(others)] for j in range(k)]
        opener = _OPENERS[(h >> 11) % len(_OPENERS)]
        text = (opener.format(inputs=" and ".join(inputs), output=output) + " "
                + _CLOSERS[(h >> 14) % len(_CLOSERS)] + f" (variant {digest >> 40:06x}-{i})")
        if spec.max_len is not None:
            text = text[: spec.max_len]
        tasks.append({"instruction": text, "input_fields": inputs, "output_field": output})
    content = orjson.dumps({"tasks": tasks}).decode()
    missing = target_chars - len(content)
    if missing > 0:
        for t in tasks:
            room = missing if spec.max_len is None else min(
                missing, spec.max_len - len(t["instruction"]))
            if room > 0:
                t["instruction"] += (_FILLER * (room // len(_FILLER) + 1))[:room]
                missing -= room
        content = orjson.dumps({"tasks": tasks}).decode()
        missing = target_chars - len(content)
        if missing > 0:
            content = content[:-1] + (pad * (missing // len(pad) + 1))[:missing] + "}"
    return content


@dataclass(slots=True)
class Reply:
    """What to send. ``action``: "answer", "reset" (no answer), "hang" (``delay``, then reset)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: str = "answer"
    fault: str | None = None
    limited: str | None = None
    tokens: tuple[int, int] = (0, 0)


_JSON = "application/json"


def is_verdict_request(body: Mapping[str, Any]) -> bool:
    """A judge request (``dynogen.tasks.judge``): its response schema is named ``verdict``."""
    return _get(body, "response_format", "json_schema", "name") == "verdict" or any(
        isinstance(m, Mapping) and m.get("role") == "system"
        and str(m.get("content", "")).startswith("You review instruction-tuning tasks")
        for m in body.get("messages") or ())


def auto_verdict(digest: int) -> str:
    """A deterministic verdict: one task in four is judged invalid."""
    if digest % 4 == 0:
        return '{"valid": false, "reason": "The output field does not answer the instruction."}'
    return '{"valid": true, "reason": "The task is clear and answerable from its input."}'


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_reply(status: int, message: str, kind: str, code: str | None,
                param: str | None = None) -> Reply:
    return Reply(status, error_body(message, kind, code, param), {"content-type": _JSON})


def completion_reply(model: str, seq: int, content: str | None, finish: str, prompt_tokens: int,
                     max_tokens: int, headers: dict[str, str],
                     refusal: str | None = None, *, exact: ExactTokens | None = None,
                     cached_tokens: int = 0) -> Reply:
    """A chat completion; content longer than ``max_tokens`` is cut off with finish "length".

    With ``exact`` the completion is counted (and cut) in real tokens.
    """
    if exact is not None:
        completion_tokens = exact.completion_tokens(content or refusal)
        if max_tokens and completion_tokens > max_tokens and content is not None:
            content = exact.cut(content, max_tokens)
            completion_tokens, finish = exact.completion_tokens(content), "length"
    else:
        completion_tokens = count_completion_tokens(content or refusal)
    if exact is None and max_tokens and completion_tokens > max_tokens and content is not None:
        # A real model stops at max_tokens mid-answer: the engine must see a cut-off.
        content = content[: 4 * (max_tokens - 1)]
        completion_tokens, finish = max_tokens, "length"
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return Reply(200, orjson.dumps({
        "id": f"chatcmpl-fake{seq:012d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached_tokens},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "system_fingerprint": "fp_fake0000",
    }), headers, tokens=(prompt_tokens, completion_tokens))


def fault_reply(f: Fault, *, model: str, organization: str, seq: int, prompt_tokens: int,
                max_tokens: int, headers: dict[str, str], auto: Callable[[], str],
                limit: float | None, exact: ExactTokens | None = None,
                cached_tokens: int = 0) -> Reply:
    """The reply a fault stands for; ``auto`` makes the normal content when the fault needs it,
    ``limit`` is the current limit of the fault's type (for a rate_limit body)."""
    kind, given = f.kind, f.body_bytes()
    if kind in ("slow", "length", "content_filter", "refusal"):
        content = f.content if f.content is not None else auto()
        extra: dict[str, Any] = {"exact": exact, "cached_tokens": cached_tokens}
        if kind == "slow":
            r = completion_reply(model, seq, content, "stop", prompt_tokens, max_tokens, headers,
                                 **extra)
        elif kind == "length":
            r = completion_reply(model, seq, content[: max(1, len(content) // 2)], "length",
                                 prompt_tokens, 0, headers, **extra)
        elif kind == "content_filter":
            r = completion_reply(model, seq, None, "content_filter", prompt_tokens, 0, headers,
                                 **extra)
        else:
            r = completion_reply(model, seq, None, "stop", prompt_tokens, 0, headers,
                                 refusal="I'm sorry, I can't assist with that request.", **extra)
        if given is not None:
            r.body = given
    elif kind in ("reset", "timeout"):
        r = Reply(0, b"", {}, action="reset" if kind == "reset" else "hang")
    else:
        status, body = _fault_default(f, model, organization, seq, headers, limit)
        r = Reply(status, given if given is not None else body, headers)
    r.status = f.status or r.status
    r.headers = {**r.headers, **f.headers}
    r.delay = f.wait
    r.fault = kind
    return r


def _fault_default(f: Fault, model: str, organization: str, seq: int, headers: dict[str, str],
                   limit: float | None) -> tuple[int, bytes]:
    kind = f.kind
    if kind == "rate_limit":
        headers["retry-after"] = str(max(1, math.ceil(f.retry_after)))
        headers["retry-after-ms"] = str(max(1, round(f.retry_after * 1000)))
        limit = limit or 500
        return 429, rate_limit_body(model, organization, f.limit_type, limit, limit, 1,
                                    f.retry_after)
    if kind == "insufficient_quota":
        return 429, insufficient_quota_body()
    if kind == "server_error":
        return 500, error_body("The server had an error while processing your request. "
                               "Sorry about that!", "server_error", None)
    if kind == "unavailable":
        return 503, error_body("The server is overloaded or not ready yet.", "server_error", None)
    if kind == "not_json":
        headers["content-type"] = "text/html"
        return 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    if kind == "wrong_shape":
        return 200, orjson.dumps({"object": "chat.completion", "model": model,
                                  "result": {"text": "not what you expected"}})
    if kind == "empty_choices":
        return 200, orjson.dumps({"id": f"chatcmpl-fake{seq:012d}", "object": "chat.completion",
                                  "created": int(time.time()), "model": model, "choices": [],
                                  "usage": {"prompt_tokens": 0, "completion_tokens": 0,
                                            "total_tokens": 0}})
    return 500, b""  # "http" without a status


def add_answer_time_args(p: argparse.ArgumentParser) -> None:
    """The command-line knobs of how long a fake's answers take (``--latency-*``,
    ``--tail-*``, ``--output-tokens``), the same for every fake run as a process."""
    p.add_argument("--latency-median", type=float, default=0.0)
    p.add_argument("--latency-sigma", type=float, default=0.0)
    p.add_argument("--latency-per-token", type=float, default=0.0)
    p.add_argument("--tail-p", type=float, default=0.0)
    p.add_argument("--tail-seconds", type=float, default=0.0)
    p.add_argument("--output-tokens", default=None, help="N, or LO:HI for a uniform draw")


def answer_time_of(args: argparse.Namespace) -> tuple[Latency, OutputTokens | None]:
    """The ``Latency`` and output tokens ``add_answer_time_args`` parsed (ValueError on a
    malformed ``--output-tokens``)."""
    out: OutputTokens | None = None
    if args.output_tokens:
        lo, _, hi = args.output_tokens.partition(":")
        out = (int(lo), int(hi)) if hi else int(lo)
    latency = Latency(args.latency_median, args.latency_sigma, args.latency_per_token,
                      args.tail_p, args.tail_seconds)
    return latency, out
