"""The OpenAI Batch API on the fake server: ``/v1/files`` and ``/v1/batches``.

Batch mode has to be tested against something that behaves like OpenAI's
asynchronous side: files uploaded as multipart with ``purpose=batch``, batches
that move ``validating → in_progress → finalizing → completed`` over time, an
output file and an error file in OpenAI's line format, partial output when a
batch expires or is cancelled, and whole batches that fail. ``FakeBatches``
holds that state next to a ``FakeOpenAI``; every line is answered by the same
``FakeOpenAI.reply`` as the chat route (so scripted answers, fault draws and
``exact_tokens`` usage apply), but outside the chat rate limits, as OpenAI's
batch queue is.

Time is read from ``clock`` (``time.time`` by default, so timestamps are Unix
seconds). A batch created at ``t`` validates until ``t + validating``, answers
its lines evenly over the next ``in_progress`` seconds and finalizes for
``finalizing`` more. Nothing runs in the background: a batch catches up with the
clock whenever it is looked at, so a test that owns the clock decides exactly
when lines are answered::

    fake = FakeOpenAI()
    batches = FakeBatches(fake, clock=clock, in_progress=60.0, line_fail_rate=0.05)
    async with serve(fake) as server:                 # the routes are always there
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test")
        ...
        clock.t += 120                                # every batch finishes
    batches.counts()                                   # files, batches, lines processed

A fake in its own process (``start_fake_process``) is configured over HTTP:
``POST /admin/batches`` with settings (and ``"reset": true`` to forget every file,
batch and count), ``GET /admin/batches`` for the counts.

Switches: ``line_fail_rate`` (seeded draw per processed line → an error-file line
with status ``line_fail_status``), ``expire_every`` / ``fail_every`` (every Nth
batch created expires after answering ``expire_fraction`` of its lines, or fails
at validation), ``enqueued_token_limit`` (a batch that would push the prompt
tokens in flight past it fails with ``token_limit_exceeded``, as OpenAI's does),
``upload_error`` / ``create_error`` (refuse every upload or create with a status),
``junk_lines`` (each output file also holds a torn line and a foreign ``custom_id``).
The server-side record for "nothing submitted twice" checks is ``counts()``:
files and batches created, identical uploads, lines processed, and how often
each ``custom_id`` was submitted and processed.
"""

from __future__ import annotations

import collections
import math
import random
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import xxhash
from aiohttp import BodyPartReader, web

from dynogen.testing.fake_answers import count_prompt_tokens, error_body

if TYPE_CHECKING:
    from dynogen.testing.fake_openai import FakeOpenAI

__all__ = ["BATCH_ENDPOINTS", "MAX_FILE_BYTES", "MAX_FILE_REQUESTS", "FakeBatches",
           "add_batch_routes", "batches_of"]

MAX_FILE_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
BATCH_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                             "/v1/responses"})
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_LIVE = frozenset({"in_progress", "finalizing"})
_JSON = "application/json"
_SETTINGS = ("validating", "in_progress", "finalizing", "cancelling", "line_fail_rate",
             "line_fail_status", "expire_every", "fail_every", "expire_fraction",
             "enqueued_token_limit", "upload_error", "create_error", "max_file_bytes",
             "max_file_requests", "junk_lines")
_EXPIRED_MSG = "This request could not be executed before the completion window expired."
_CANCELLED_MSG = "This request was not executed because the batch was cancelled."


class _Refused(Exception):
    """An HTTP error answer: status and an OpenAI error body."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, kind, code, param)


@dataclass(slots=True)
class _File:
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
class _Line:
    custom_id: str
    body: bytes
    prompt_tokens: int


@dataclass(slots=True)
class _Batch:
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
    lines: list[_Line] = field(default_factory=list)
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


class FakeBatches:
    """Files and batches of one ``FakeOpenAI``; see the module docstring for the switches.

    Creating one attaches it to ``fake`` (``batches_of(fake)`` finds it; a fake
    served without one gets the defaults).
    """

    def __init__(self, fake: FakeOpenAI, *, clock: Callable[[], float] = time.time,
                 validating: float = 0.02, in_progress: float = 0.1, finalizing: float = 0.02,
                 cancelling: float = 0.0, line_fail_rate: float = 0.0,
                 line_fail_status: int = 500, expire_every: int = 0, fail_every: int = 0,
                 expire_fraction: float = 0.5, enqueued_token_limit: int | None = None,
                 upload_error: int | None = None, create_error: int | None = None,
                 max_file_bytes: int = MAX_FILE_BYTES,
                 max_file_requests: int = MAX_FILE_REQUESTS, junk_lines: bool = False,
                 seed: int = 0) -> None:
        self.fake = fake
        self.clock = clock
        self.validating = validating
        self.in_progress = in_progress
        self.finalizing = finalizing
        self.cancelling = cancelling
        self.line_fail_rate = line_fail_rate
        self.line_fail_status = line_fail_status
        self.expire_every = expire_every
        self.fail_every = fail_every
        self.expire_fraction = expire_fraction
        self.enqueued_token_limit = enqueued_token_limit
        self.upload_error = upload_error
        self.create_error = create_error
        self.max_file_bytes = max_file_bytes
        self.max_file_requests = max_file_requests
        self.junk_lines = junk_lines
        self.configure()  # validates
        self.seed = seed
        self.reset()
        _ATTACHED[fake] = self

    def reset(self) -> None:
        """Forget every file, batch and count (the switches stay); the RNG is reseeded."""
        self.rng = random.Random(self.seed)
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.files_created = 0
        self.batches_created = 0
        self.lines_processed = 0
        self.upload_digests: collections.Counter[str] = collections.Counter()
        self.submitted: collections.Counter[str] = collections.Counter()
        self.processed: collections.Counter[str] = collections.Counter()
        self.billed = {"lines": 0, "prompt_tokens": 0, "completion_tokens": 0,
                       "cached_tokens": 0}

    # ---- control ------------------------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Change switches at run time (also ``POST /admin/batches``); unknown names raise."""
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise ValueError(f"unknown batch settings {sorted(unknown)}: "
                             f"use {', '.join(_SETTINGS)}")
        for name, value in settings.items():
            setattr(self, name, value)
        for name in ("validating", "in_progress", "finalizing", "cancelling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if not 0.0 <= self.line_fail_rate <= 1.0 or not 0.0 <= self.expire_fraction <= 1.0:
            raise ValueError("line_fail_rate and expire_fraction must be in [0, 1]")
        for name in ("expire_every", "fail_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 = never)")

    def expire(self, batch_id: str) -> None:
        """Make one batch expire (after ``expire_fraction`` of its lines) instead of completing."""
        self._batch(batch_id).fate = "expire"

    def counts(self) -> dict[str, Any]:
        """The server-side record: what was created, submitted, processed and billed."""
        self._advance_all()
        return {
            "files_created": self.files_created,
            "batches_created": self.batches_created,
            "duplicate_uploads": sum(n - 1 for n in self.upload_digests.values()),
            "lines_submitted": sum(self.submitted.values()),
            "custom_ids_submitted": len(self.submitted),
            "lines_processed": self.lines_processed,
            "custom_ids_processed": len(self.processed),
            "max_processed_per_custom_id": max(self.processed.values(), default=0),
            "billed": dict(self.billed),
            "by_status": dict(collections.Counter(b.status for b in self.batches.values())),
        }

    # ---- files --------------------------------------------------------------------------------

    def add_file(self, filename: str, purpose: str, data: bytes, *,
                 uploaded: bool = True) -> _File:
        prefix = "file-" if uploaded else "file-out"
        f = _File(f"{prefix}{len(self.files) + 1:020d}", filename, purpose, data,
                  int(self.clock()))
        self.files[f.id] = f
        if uploaded:
            self.files_created += 1
            self.upload_digests[xxhash.xxh3_128_hexdigest(data)] += 1
        return f

    def _file(self, file_id: str) -> _File:
        f = self.files.get(file_id)
        if f is None:
            raise _Refused(404, f"No such File object: {file_id}", None, "id")
        return f

    # ---- batches ------------------------------------------------------------------------------

    def create_batch(self, body: Any, auth: Mapping[str, str]) -> _Batch:
        if self.create_error is not None:
            raise _refusal(self.create_error)
        if not isinstance(body, dict):
            raise _Refused(400, "We could not parse the JSON body of your request.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise _Refused(400, f"Missing required parameter: '{name}'.",
                               "missing_required_parameter", name)
        if body["endpoint"] not in BATCH_ENDPOINTS:
            raise _Refused(400, f"Invalid value: '{body['endpoint']}'. Supported values are: "
                           + ", ".join(f"'{e}'" for e in sorted(BATCH_ENDPOINTS)) + ".",
                           "invalid_value", "endpoint")
        if body["completion_window"] != "24h":
            raise _Refused(400, "Invalid value: completion_window must be '24h'.",
                           "invalid_value", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (
                not isinstance(metadata, dict) or len(metadata) > 16
                or any(not isinstance(k, str) or len(k) > 64 or not isinstance(v, str)
                       or len(v) > 512 for k, v in metadata.items())):
            raise _Refused(400, "Invalid 'metadata': up to 16 string pairs, keys of at most 64 "
                           "characters, values of at most 512.", "invalid_value", "metadata")
        f = self._file(body["input_file_id"])
        if f.purpose != "batch":
            raise _Refused(400, f"File {f.id} has purpose '{f.purpose}'; a batch needs an input "
                           "file uploaded with purpose 'batch'.", "invalid_value", "input_file_id")
        self.batches_created += 1
        seq = self.batches_created
        fate = ("fail" if self.fail_every and seq % self.fail_every == 0 else
                "expire" if self.expire_every and seq % self.expire_every == 0 else "complete")
        b = _Batch(f"batch_{seq:024x}", seq, f.id, body["endpoint"], "24h",
                   dict(metadata) if metadata is not None else None, self.clock(), dict(auth),
                   fate)
        self.batches[b.id] = b
        for line in _iter_lines(f.data):
            cid = _custom_id(line)
            if cid is not None:
                self.submitted[cid] += 1
        return b

    def cancel(self, batch_id: str) -> _Batch:
        b = self._batch(batch_id)
        self._advance(b, self.clock())
        if b.status in _TERMINAL or b.status == "cancelling":
            if b.status != "cancelling":
                raise _Refused(409, f"Cannot cancel a batch with status '{b.status}'.",
                               "batch_not_cancellable")
            return b
        b.status = "cancelling"
        b.stamps["cancelling_at"] = self.clock()
        self._advance(b, self.clock())
        return b

    def _batch(self, batch_id: str) -> _Batch:
        b = self.batches.get(batch_id)
        if b is None:
            raise _Refused(404, f"No batch found with id '{batch_id}'.", None, "batch_id")
        return b

    def _advance_all(self) -> None:
        now = self.clock()
        for b in self.batches.values():
            self._advance(b, now)

    def _advance(self, b: _Batch, now: float) -> None:
        """Catch ``b`` up with ``now``: validate, answer the lines due, finish."""
        v_end = b.created + self.validating
        ip_end = v_end + self.in_progress
        if b.status == "validating" and now >= v_end:
            self._validate(b, v_end)
        if b.status == "in_progress":
            cap = len(b.lines) if b.fate != "expire" else math.floor(
                len(b.lines) * self.expire_fraction)
            due = len(b.lines) if now >= ip_end or self.in_progress == 0 else math.floor(
                len(b.lines) * (now - v_end) / self.in_progress)
            self._process(b, min(cap, due))
            if now >= ip_end:
                if b.fate == "expire":
                    self._finish(b, "expired", ip_end, "batch_expired", _EXPIRED_MSG)
                else:
                    b.status = "finalizing"
                    b.stamps["finalizing_at"] = ip_end
        if b.status == "finalizing" and now >= ip_end + self.finalizing:
            self._finish(b, "completed", ip_end + self.finalizing)
        if b.status == "cancelling":
            at = b.stamps["cancelling_at"]
            if now >= at + self.cancelling:
                self._finish(b, "cancelled", at + self.cancelling, "batch_cancelled",
                             _CANCELLED_MSG)

    def _validate(self, b: _Batch, at: float) -> None:
        f = self.files.get(b.input_file_id)
        errors: list[dict[str, Any]] = []
        if f is None:
            errors.append(_err("invalid_file", "The input file was deleted.", None))
        elif b.fate == "fail":
            errors.append(_err("server_error", "The batch failed because of an internal error. "
                               "Please try again.", None))
        else:
            errors = self._parse_lines(b, f.data)
        if not errors and self.enqueued_token_limit is not None:
            queued = sum(ln.prompt_tokens for other in self.batches.values()
                         if other.status in _LIVE for ln in other.lines[other.done:])
            mine = sum(ln.prompt_tokens for ln in b.lines)
            if queued + mine > self.enqueued_token_limit:
                errors.append(_err("token_limit_exceeded", f"Enqueued token limit reached for "
                                   f"{b.model or self.fake.model} in organization org-fake. "
                                   f"Limit: {self.enqueued_token_limit:,} enqueued tokens. "
                                   "Please try submitting your requests again later.", None))
        if errors:
            b.status, b.errors, b.lines = "failed", errors, []
            b.stamps["failed_at"] = at
        else:
            b.status = "in_progress"
            b.stamps["in_progress_at"] = at

    def _parse_lines(self, b: _Batch, data: bytes) -> list[dict[str, Any]]:
        seen: set[str] = set()
        models: set[str] = set()
        for no, raw in enumerate(_iter_lines(data), 1):
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return [_err("invalid_json_line", "This line is not parseable as valid JSON.", no)]
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                return [_err("missing_required_parameter", "Missing required parameter: "
                             "'custom_id'.", no, "custom_id")]
            cid = line["custom_id"]
            if cid in seen:
                return [_err("duplicate_custom_id", f"The custom_id '{cid}' is used more than "
                             "once in this file.", no, "custom_id")]
            seen.add(cid)
            if line.get("method") != "POST":
                return [_err("invalid_method", "Only the POST method is supported.", no,
                             "method")]
            if line.get("url") != b.endpoint and "/v1" + str(line.get("url")) != b.endpoint:
                return [_err("mismatched_endpoint", f"The url '{line.get('url')}' does not "
                             f"match the batch endpoint '{b.endpoint}'.", no, "url")]
            body = line.get("body")
            if not isinstance(body, dict):
                return [_err("missing_required_parameter", "Missing required parameter: "
                             "'body'.", no, "body")]
            if isinstance(body.get("model"), str):
                models.add(body["model"])
            raw_body = orjson.dumps(body)
            tokens = (len(self.fake.exact.prompt_ids(body)) if self.fake.exact is not None
                      else count_prompt_tokens(body))
            b.lines.append(_Line(cid, raw_body, tokens))
        if not b.lines:
            return [_err("empty_file", "The input file has no requests.", None)]
        if len(b.lines) > self.max_file_requests:
            return [_err("too_many_requests", f"The input file has {len(b.lines):,} requests; "
                         f"the limit is {self.max_file_requests:,}.", None)]
        if len(models) > 1:
            return [_err("model_mismatch", "Every request in a batch must use the same model.",
                         None, "model")]
        b.model = next(iter(models), None)
        return []

    def _process(self, b: _Batch, upto: int) -> None:
        """Answer lines ``b.done .. upto`` with the chat route's reply logic."""
        while b.done < upto:
            line = b.lines[b.done]
            b.done += 1
            self.lines_processed += 1
            self.processed[line.custom_id] += 1
            req_id = f"req_{b.seq:012x}{b.done:012x}"
            line_id = f"batch_req_{b.seq:012x}{b.done:012x}"
            if self.line_fail_rate and self.rng.random() < self.line_fail_rate:
                status, body = self.line_fail_status, orjson.loads(error_body(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error", None))
            else:
                reply = self.fake.reply(line.body, b.auth, limited=False)
                self.fake.finished(reply)
                status, body = reply.status, _json_or_none(reply.body)
                if reply.action != "answer" or body is None:
                    status, body = 500, orjson.loads(error_body(
                        "The server had an error while processing your request.",
                        "server_error", None))
            record = {"id": line_id, "custom_id": line.custom_id,
                      "response": {"status_code": status, "request_id": req_id, "body": body},
                      "error": None}
            if status == 200:
                b.completed += 1
                b.out.append(orjson.dumps(record))
                usage = body.get("usage") if isinstance(body, dict) else None
                if isinstance(usage, dict):
                    prompt = int(usage.get("prompt_tokens") or 0)
                    completion = int(usage.get("completion_tokens") or 0)
                    cached = int((usage.get("prompt_tokens_details") or {}).get(
                        "cached_tokens") or 0)
                    for i, n in enumerate((prompt, completion, cached)):
                        b.usage[i] += n
                    self.billed["lines"] += 1
                    self.billed["prompt_tokens"] += prompt
                    self.billed["completion_tokens"] += completion
                    self.billed["cached_tokens"] += cached
            else:
                b.failed += 1
                b.err.append(orjson.dumps(record))

    def _finish(self, b: _Batch, status: str, at: float, code: str | None = None,
                message: str = "") -> None:
        """End ``b``: unprocessed lines become error lines with ``code``; files are written."""
        if code is not None:
            for no, line in enumerate(b.lines[b.done:], b.done + 1):
                b.err.append(orjson.dumps({
                    "id": f"batch_req_{b.seq:012x}{no:012x}",
                    "custom_id": line.custom_id, "response": None,
                    "error": {"code": code, "message": message}}))
        if self.junk_lines and b.out:
            # What a client must survive: a torn line and an answer to a request it never made.
            b.out.insert(len(b.out) // 2, b'{"id": "batch_req_torn", "custom_id": "dg-')
            b.out.append(orjson.dumps({"id": "batch_req_x", "custom_id": "someone-else",
                                       "response": {"status_code": 200, "request_id": "r",
                                                    "body": {}}, "error": None}))
        if b.out:
            b.output_file_id = self.add_file(f"{b.id}_output.jsonl", "batch_output",
                                             b"\n".join(b.out) + b"\n", uploaded=False).id
        if b.err:
            b.error_file_id = self.add_file(f"{b.id}_error.jsonl", "batch_output",
                                            b"\n".join(b.err) + b"\n", uploaded=False).id
        b.out, b.err = [], []
        b.status = status
        b.stamps[f"{status}_at"] = at

    def obj(self, b: _Batch) -> dict[str, Any]:
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


_ATTACHED: weakref.WeakKeyDictionary[FakeOpenAI, FakeBatches] = weakref.WeakKeyDictionary()


def batches_of(fake: FakeOpenAI) -> FakeBatches:
    """The ``FakeBatches`` attached to ``fake``, attaching one with the defaults if none is."""
    found = _ATTACHED.get(fake)
    return found if found is not None else FakeBatches(fake)


def _err(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _refusal(status: int) -> _Refused:
    if status == 401:
        return _Refused(401, "Incorrect API key provided.", "invalid_api_key")
    if status == 429:
        return _Refused(429, "You exceeded your current quota, please check your plan and "
                        "billing details.", "insufficient_quota", None, "insufficient_quota")
    return _Refused(status, "The request was refused by the fake server's switch.",
                    "refused_by_switch")


def _iter_lines(data: bytes) -> Iterator[bytes]:
    for raw in data.split(b"\n"):
        if raw.strip():
            yield raw


def _custom_id(raw: bytes) -> str | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    cid = line.get("custom_id") if isinstance(line, dict) else None
    return cid if isinstance(cid, str) else None


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _page(items: list[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """OpenAI's cursor page over ``items`` (already in listing order)."""
    try:
        limit = max(1, min(100, int(query.get("limit", "20"))))
    except ValueError:
        raise _Refused(400, "Invalid 'limit': an integer from 1 to 100.", "invalid_value",
                       "limit") from None
    after = query.get("after")
    start = 0
    if after:
        ids = [it["id"] for it in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start:start + limit]
    return {"object": "list", "data": data, "has_more": start + limit < len(items),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


# ---- routes -----------------------------------------------------------------------------------

def add_batch_routes(app: web.Application, fake: FakeOpenAI) -> None:
    """Serve ``batches_of(fake)`` on ``app``: files, batches and the admin endpoints."""
    store = batches_of(fake)

    def guard(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            key = fake.api_key
            try:
                if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
                    raise _Refused(401, "Incorrect API key provided. You can find your API key "
                                   "at https://platform.openai.com/account/api-keys.",
                                   "invalid_api_key")
                result: web.StreamResponse = await handler(request)
                return result
            except _Refused as e:
                return web.Response(status=e.status, body=e.body, content_type=_JSON)
        return wrapped

    async def upload(request: web.Request) -> web.Response:
        if store.upload_error is not None:
            raise _refusal(store.upload_error)
        if not request.content_type.startswith("multipart/"):
            raise _Refused(400, "Uploads are multipart/form-data with 'file' and 'purpose'.")
        purpose, filename, data = None, "upload.jsonl", b""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > store.max_file_bytes:
                        raise _Refused(400, f"File is larger than the {store.max_file_bytes:,}"
                                       "-byte limit for batch input.", "file_too_large", "file")
                    chunks.append(chunk)
                data = b"".join(chunks)
        if purpose is None:
            raise _Refused(400, "Missing required parameter: 'purpose'.",
                           "missing_required_parameter", "purpose")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data", "vision"):
            raise _Refused(400, f"Invalid value for 'purpose': '{purpose}'.", "invalid_value",
                           "purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise _Refused(400, "Batch input files must be .jsonl.", "invalid_file_format",
                           "file")
        return _json(store.add_file(filename, purpose, data).obj())

    async def file_get(request: web.Request) -> web.Response:
        return _json(store._file(request.match_info["file_id"]).obj())

    async def file_list(request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        items = [f.obj() for f in reversed(store.files.values())
                 if purpose is None or f.purpose == purpose]
        return _json(_page(items, request.query))

    async def file_delete(request: web.Request) -> web.Response:
        f = store._file(request.match_info["file_id"])
        del store.files[f.id]
        return _json({"id": f.id, "object": "file", "deleted": True})

    async def file_content(request: web.Request) -> web.StreamResponse:
        f = store._file(request.match_info["file_id"])
        resp = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        resp.content_length = len(f.data)
        await resp.prepare(request)
        view = memoryview(f.data)
        for start in range(0, len(f.data), 1 << 16):
            await resp.write(view[start:start + (1 << 16)])
        await resp.write_eof()
        return resp

    async def batch_create(request: web.Request) -> web.Response:
        auth = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        b = store.create_batch(_json_or_none(await request.read()), auth)
        return _json(store.obj(b))

    async def batch_get(request: web.Request) -> web.Response:
        b = store._batch(request.match_info["batch_id"])
        store._advance(b, store.clock())
        return _json(store.obj(b))

    async def batch_list(request: web.Request) -> web.Response:
        store._advance_all()
        items = [store.obj(b) for b in reversed(store.batches.values())]
        return _json(_page(items, request.query))

    async def batch_cancel(request: web.Request) -> web.Response:
        return _json(store.obj(store.cancel(request.match_info["batch_id"])))

    async def admin_get(request: web.Request) -> web.Response:
        return _json(store.counts())

    async def admin_set(request: web.Request) -> web.Response:
        try:
            settings = orjson.loads(await request.read())
            if not isinstance(settings, dict):
                raise ValueError("send a JSON object of settings")
            if settings.pop("reset", False):
                store.reset()
            store.configure(**settings)
        except (orjson.JSONDecodeError, ValueError, TypeError) as e:
            raise _Refused(400, str(e)) from None
        return _json(store.counts())

    r = app.router
    r.add_post("/v1/files", guard(upload))
    r.add_get("/v1/files", guard(file_list))
    r.add_get("/v1/files/{file_id}", guard(file_get))
    r.add_delete("/v1/files/{file_id}", guard(file_delete))
    r.add_get("/v1/files/{file_id}/content", guard(file_content))
    r.add_post("/v1/batches", guard(batch_create))
    r.add_get("/v1/batches", guard(batch_list))
    r.add_get("/v1/batches/{batch_id}", guard(batch_get))
    r.add_post("/v1/batches/{batch_id}/cancel", guard(batch_cancel))
    r.add_get("/admin/batches", guard(admin_get))
    r.add_post("/admin/batches", guard(admin_set))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)
