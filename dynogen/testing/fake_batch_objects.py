"""What OpenAI's Batch API hands out, on the fake: files, batches, lines and refusals.

The records ``FakeBatches`` keeps (``StoredFile``, ``Batch`` and its ``Line``\\ s),
their JSON as OpenAI writes it (``StoredFile.obj``, ``batch_object``), the checks
an input file must pass at validation (``parse_input``, each failure one of
OpenAI's error objects with its line number), and ``Refused``: an HTTP error
answer raised by the store or the routes and written by the routes. Plain data
and pure functions: no clock, no state, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from dynogen.testing.fake_answers import error_body

__all__ = ["BATCH_ENDPOINTS", "LIVE", "MAX_FILE_BYTES", "MAX_FILE_REQUESTS", "TERMINAL", "Batch",
           "Line", "Refused", "StoredFile", "batch_object", "custom_id", "iter_lines",
           "json_or_none", "line_error", "parse_input", "refusal"]

MAX_FILE_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
BATCH_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                             "/v1/responses"})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LIVE = frozenset({"in_progress", "finalizing"})


class Refused(Exception):
    """An HTTP error answer: status and an OpenAI error body."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, kind, code, param)


def refusal(status: int) -> Refused:
    """What a switch that refuses every upload or create (``upload_error``...) answers."""
    if status == 401:
        return Refused(401, "Incorrect API key provided.", "invalid_api_key")
    if status == 429:
        return Refused(429, "You exceeded your current quota, please check your plan and "
                       "billing details.", "insufficient_quota", None, "insufficient_quota")
    return Refused(status, "The request was refused by the fake server's switch.",
                   "refused_by_switch")


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass(slots=True)
class Line:
    custom_id: str
    body: bytes
    prompt_tokens: int


@dataclass(slots=True)
class Batch:
    id: str
    seq: int
    input_file_id: str
    endpoint: str
    window: str
    metadata: dict[str, str] | None
    created: float
    auth: dict[str, str]
    fate: str                      # "complete", "expire" or "fail"
    status: str = "validating"
    stamps: dict[str, float] = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)
    done: int = 0                  # lines processed (answered or failed)
    out: list[bytes] = field(default_factory=list)
    err: list[bytes] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    usage: list[int] = field(default_factory=lambda: [0, 0, 0])  # prompt, completion, cached
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    model: str | None = None


def batch_object(b: Batch) -> dict[str, Any]:
    """``b`` as OpenAI's batch object."""
    def stamp(name: str) -> int | None:
        t = b.stamps.get(name)
        return None if t is None else int(t)
    prompt, completion, cached = b.usage
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model,
        "errors": None if b.errors is None else {"object": "list", "data": b.errors},
        "input_file_id": b.input_file_id, "completion_window": b.window,
        "status": b.status, "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id, "created_at": int(b.created),
        "in_progress_at": stamp("in_progress_at"),
        "expires_at": int(b.created) + 24 * 3600,
        "finalizing_at": stamp("finalizing_at"), "completed_at": stamp("completed_at"),
        "failed_at": stamp("failed_at"), "expired_at": stamp("expired_at"),
        "cancelling_at": stamp("cancelling_at"), "cancelled_at": stamp("cancelled_at"),
        "request_counts": {"total": len(b.lines), "completed": b.completed,
                           "failed": b.failed},
        "usage": {"input_tokens": prompt, "output_tokens": completion,
                  "total_tokens": prompt + completion,
                  "input_tokens_details": {"cached_tokens": cached},
                  "output_tokens_details": {"reasoning_tokens": 0}},
        "metadata": b.metadata,
    }


def line_error(code: str, message: str, line: int | None,
               param: str | None = None) -> dict[str, Any]:
    """One of a failed batch's ``errors``: what is wrong, and on which line of its input."""
    return {"code": code, "message": message, "param": param, "line": line}


def parse_input(b: Batch, data: bytes, count_tokens: Callable[[dict[str, Any]], int],
                max_requests: int) -> list[dict[str, Any]]:
    """Check ``b``'s input file and fill ``b.lines`` and ``b.model``; the errors, if any
    (OpenAI stops at the first bad line)."""
    seen: set[str] = set()
    models: set[str] = set()
    for no, raw in enumerate(iter_lines(data), 1):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return [line_error("invalid_json_line", "This line is not parseable as valid JSON.",
                               no)]
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return [line_error("missing_required_parameter", "Missing required parameter: "
                               "'custom_id'.", no, "custom_id")]
        cid = line["custom_id"]
        if cid in seen:
            return [line_error("duplicate_custom_id", f"The custom_id '{cid}' is used more "
                               "than once in this file.", no, "custom_id")]
        seen.add(cid)
        if line.get("method") != "POST":
            return [line_error("invalid_method", "Only the POST method is supported.", no,
                               "method")]
        if line.get("url") != b.endpoint and "/v1" + str(line.get("url")) != b.endpoint:
            return [line_error("mismatched_endpoint", f"The url '{line.get('url')}' does not "
                               f"match the batch endpoint '{b.endpoint}'.", no, "url")]
        body = line.get("body")
        if not isinstance(body, dict):
            return [line_error("missing_required_parameter", "Missing required parameter: "
                               "'body'.", no, "body")]
        if isinstance(body.get("model"), str):
            models.add(body["model"])
        b.lines.append(Line(cid, orjson.dumps(body), count_tokens(body)))
    if not b.lines:
        return [line_error("empty_file", "The input file has no requests.", None)]
    if len(b.lines) > max_requests:
        return [line_error("too_many_requests", f"The input file has {len(b.lines):,} "
                           f"requests; the limit is {max_requests:,}.", None)]
    if len(models) > 1:
        return [line_error("model_mismatch", "Every request in a batch must use the same "
                           "model.", None, "model")]
    b.model = next(iter(models), None)
    return []


def iter_lines(data: bytes) -> Iterator[bytes]:
    """The non-blank lines of a JSONL file."""
    for raw in data.split(b"\n"):
        if raw.strip():
            yield raw


def custom_id(raw: bytes) -> str | None:
    """A line's ``custom_id``, if it is JSON and has one."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    cid = line.get("custom_id") if isinstance(line, dict) else None
    return cid if isinstance(cid, str) else None


def json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None

