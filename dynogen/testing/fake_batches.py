"""The OpenAI Batch API on the fake server: ``/v1/files`` and ``/v1/batches``.

Batch mode has to be tested against something that behaves like OpenAI's
asynchronous side: files uploaded as multipart with ``purpose=batch``, batches
that move ``validating → in_progress → finalizing → completed`` over time, an
output file and an error file in OpenAI's line format, partial output when a
batch expires or is cancelled, and whole batches that fail. ``FakeBatches``
holds that state for a ``FakeOpenAI``, which owns one (``fake.batches``; creating
one with other settings, ``FakeBatches(fake, ...)``, puts it in the old one's
place); every line is answered by the same ``FakeOpenAI.reply`` as the chat
route (so scripted answers, fault draws and ``exact_tokens`` usage apply), but
outside the chat rate limits, as OpenAI's batch queue is. The records and their
JSON are ``fake_batch_objects``; the HTTP routes, ``fake_batch_routes``. This
module knows the fake only by what it calls (``ChatFake``): it imports neither.

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
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson
import xxhash

from dynogen.testing.fake_answers import ExactTokens, Reply, count_prompt_tokens, error_body
from dynogen.testing.fake_batch_objects import (
    BATCH_ENDPOINTS,
    LIVE,
    MAX_FILE_BYTES,
    MAX_FILE_REQUESTS,
    TERMINAL,
    Batch,
    Refused,
    StoredFile,
    batch_object,
    custom_id,
    iter_lines,
    json_or_none,
    line_error,
    parse_input,
    refusal,
)

__all__ = ["BATCH_ENDPOINTS", "MAX_FILE_BYTES", "MAX_FILE_REQUESTS", "ChatFake", "FakeBatches",
           "batches_of"]

_SETTINGS = ("validating", "in_progress", "finalizing", "cancelling", "line_fail_rate",
             "line_fail_status", "expire_every", "fail_every", "expire_fraction",
             "enqueued_token_limit", "upload_error", "create_error", "max_file_bytes",
             "max_file_requests", "junk_lines")
_EXPIRED_MSG = "This request could not be executed before the completion window expired."
_CANCELLED_MSG = "This request was not executed because the batch was cancelled."


class ChatFake(Protocol):
    """What the batch queue needs of the chat server it belongs to (``FakeOpenAI``)."""

    model: str
    api_key: str | None
    exact: ExactTokens | None
    batches: FakeBatches

    def reply(self, raw: bytes, headers: Mapping[str, str], *,
              limited: bool = True) -> Reply: ...

    def finished(self, reply: Reply) -> None: ...


class FakeBatches:
    """Files and batches of one ``FakeOpenAI``; see the module docstring for the switches.

    Every ``FakeOpenAI`` has one with the defaults (``fake.batches``); creating one
    for ``fake`` puts it in that one's place, so that ``make_app(fake)`` serves it.
    """

    def __init__(self, fake: ChatFake, *, clock: Callable[[], float] = time.time,
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
        fake.batches = self  # the fake's batches from now on (``make_app`` serves its own)

    def reset(self) -> None:
        """Forget every file, batch and count (the switches stay); the RNG is reseeded."""
        self.rng = random.Random(self.seed)
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
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
                 uploaded: bool = True) -> StoredFile:
        prefix = "file-" if uploaded else "file-out"
        f = StoredFile(f"{prefix}{len(self.files) + 1:020d}", filename, purpose, data,
                       int(self.clock()))
        self.files[f.id] = f
        if uploaded:
            self.files_created += 1
            self.upload_digests[xxhash.xxh3_128_hexdigest(data)] += 1
        return f

    def file(self, file_id: str) -> StoredFile:
        """The file ``file_id`` (``Refused`` 404 if there is none)."""
        f = self.files.get(file_id)
        if f is None:
            raise Refused(404, f"No such File object: {file_id}", None, "id")
        return f

    def delete_file(self, file_id: str) -> StoredFile:
        f = self.file(file_id)
        del self.files[f.id]
        return f

    def list_files(self, purpose: str | None = None) -> list[StoredFile]:
        """Newest first, as OpenAI lists them."""
        return [f for f in reversed(self.files.values()) if purpose is None or f.purpose == purpose]

    # ---- batches ------------------------------------------------------------------------------

    def create_batch(self, body: Any, auth: Mapping[str, str]) -> Batch:
        if self.create_error is not None:
            raise refusal(self.create_error)
        if not isinstance(body, dict):
            raise Refused(400, "We could not parse the JSON body of your request.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise Refused(400, f"Missing required parameter: '{name}'.",
                              "missing_required_parameter", name)
        if body["endpoint"] not in BATCH_ENDPOINTS:
            raise Refused(400, f"Invalid value: '{body['endpoint']}'. Supported values are: "
                          + ", ".join(f"'{e}'" for e in sorted(BATCH_ENDPOINTS)) + ".",
                          "invalid_value", "endpoint")
        if body["completion_window"] != "24h":
            raise Refused(400, "Invalid value: completion_window must be '24h'.",
                          "invalid_value", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (
                not isinstance(metadata, dict) or len(metadata) > 16
                or any(not isinstance(k, str) or len(k) > 64 or not isinstance(v, str)
                       or len(v) > 512 for k, v in metadata.items())):
            raise Refused(400, "Invalid 'metadata': up to 16 string pairs, keys of at most 64 "
                          "characters, values of at most 512.", "invalid_value", "metadata")
        f = self.file(body["input_file_id"])
        if f.purpose != "batch":
            raise Refused(400, f"File {f.id} has purpose '{f.purpose}'; a batch needs an input "
                          "file uploaded with purpose 'batch'.", "invalid_value", "input_file_id")
        self.batches_created += 1
        seq = self.batches_created
        fate = ("fail" if self.fail_every and seq % self.fail_every == 0 else
                "expire" if self.expire_every and seq % self.expire_every == 0 else "complete")
        b = Batch(f"batch_{seq:024x}", seq, f.id, body["endpoint"], "24h",
                  dict(metadata) if metadata is not None else None, self.clock(), dict(auth),
                  fate)
        self.batches[b.id] = b
        for line in iter_lines(f.data):
            cid = custom_id(line)
            if cid is not None:
                self.submitted[cid] += 1
        return b

    def cancel(self, batch_id: str) -> Batch:
        b = self._batch(batch_id)
        self._advance(b, self.clock())
        if b.status in TERMINAL or b.status == "cancelling":
            if b.status != "cancelling":
                raise Refused(409, f"Cannot cancel a batch with status '{b.status}'.",
                              "batch_not_cancellable")
            return b
        b.status = "cancelling"
        b.stamps["cancelling_at"] = self.clock()
        self._advance(b, self.clock())
        return b

    def retrieve(self, batch_id: str) -> Batch:
        """The batch ``batch_id``, caught up with the clock (``Refused`` 404 if none)."""
        b = self._batch(batch_id)
        self._advance(b, self.clock())
        return b

    def list_batches(self) -> list[Batch]:
        """Every batch, caught up with the clock, newest first."""
        self._advance_all()
        return list(reversed(self.batches.values()))

    def _batch(self, batch_id: str) -> Batch:
        b = self.batches.get(batch_id)
        if b is None:
            raise Refused(404, f"No batch found with id '{batch_id}'.", None, "batch_id")
        return b

    def _advance_all(self) -> None:
        now = self.clock()
        for b in self.batches.values():
            self._advance(b, now)

    def _advance(self, b: Batch, now: float) -> None:
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

    def _validate(self, b: Batch, at: float) -> None:
        f = self.files.get(b.input_file_id)
        errors: list[dict[str, Any]] = []
        if f is None:
            errors.append(line_error("invalid_file", "The input file was deleted.", None))
        elif b.fate == "fail":
            errors.append(line_error("server_error", "The batch failed because of an internal "
                                     "error. Please try again.", None))
        else:
            errors = parse_input(b, f.data, self._count_tokens, self.max_file_requests)
        if not errors and self.enqueued_token_limit is not None:
            queued = sum(ln.prompt_tokens for other in self.batches.values()
                         if other.status in LIVE for ln in other.lines[other.done:])
            mine = sum(ln.prompt_tokens for ln in b.lines)
            if queued + mine > self.enqueued_token_limit:
                errors.append(line_error(
                    "token_limit_exceeded", f"Enqueued token limit reached for "
                    f"{b.model or self.fake.model} in organization org-fake. "
                    f"Limit: {self.enqueued_token_limit:,} enqueued tokens. "
                    "Please try submitting your requests again later.", None))
        if errors:
            b.status, b.errors, b.lines = "failed", errors, []
            b.stamps["failed_at"] = at
        else:
            b.status = "in_progress"
            b.stamps["in_progress_at"] = at

    def _count_tokens(self, body: dict[str, Any]) -> int:
        exact = self.fake.exact
        return len(exact.prompt_ids(body)) if exact is not None else count_prompt_tokens(body)

    def _process(self, b: Batch, upto: int) -> None:
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
                status, body = reply.status, json_or_none(reply.body)
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

    def _finish(self, b: Batch, status: str, at: float, code: str | None = None,
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

    def obj(self, b: Batch) -> dict[str, Any]:
        """``b`` as OpenAI's batch object."""
        return batch_object(b)


def batches_of(fake: ChatFake) -> FakeBatches:
    """The ``FakeBatches`` of ``fake``: ``fake.batches`` (every fake has one)."""
    return fake.batches
