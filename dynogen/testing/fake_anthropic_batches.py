"""Anthropic's Message Batches API on the fake server: create, retrieve, list, cancel, results.

A batch is one JSON body of up to ``max_requests`` requests (``custom_id`` and
``params``, at most ``max_bytes``); it is ``in_progress`` while its requests are
answered evenly over ``processing_seconds``, then ``ended`` with a results file
(JSONL, one ``{"custom_id", "result": {"type": "succeeded" | "errored" |
"canceled" | "expired", ...}}`` a request, in no promised order). Its counts stay
``processing`` until it ends, as Anthropic's do. A cancel makes it
``canceling`` and, ``cancel_seconds`` later, ``ended`` with what was not
answered ``canceled``. A batch not done 24 hours after creation ends with the
rest ``expired``; ``expire_every`` makes every Nth batch stop answering after
``expire_fraction`` of its requests, so expiry is reached by moving the clock.

``create_error`` refuses every create with that status; ``create_lost`` makes
the next N creates make their batch and then answer 500, as when the answer is
lost on its way back (the client cannot know the batch exists).

Nothing runs in the background: a batch catches up with ``clock`` (Unix seconds,
injectable) whenever it is looked at, so a test that owns the clock decides
when requests are answered. Each request is answered by the fake's ``process``
(the same answers and usage as ``POST /v1/messages``, billed at Batch prices,
outside the per-minute limits); ``line_fail_rate`` makes a seeded share of them
``errored`` with ``line_fail_type``.

The server-side record (``counts()``, ``GET /admin/batches``) is what "nothing
submitted twice" is checked against: batches created, requests submitted, how
often each ``custom_id`` was submitted and answered.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from dynogen.testing.fake_anthropic_wire import Refused, key_matches, rfc3339

__all__ = ["DAY", "MAX_BATCH_BYTES", "MAX_BATCH_REQUESTS", "FakeMessageBatches",
           "add_batch_routes"]

MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
DAY = 86_400.0
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_JSON = "application/json"
_SETTINGS = ("processing_seconds", "cancel_seconds", "expire_every", "expire_fraction",
             "line_fail_rate", "line_fail_type", "max_requests", "max_bytes", "create_error",
             "create_lost")


class Answerer(Protocol):
    api_key: str | None

    def process(self, params: Any) -> tuple[int, dict[str, Any]]: ...


def _time(t: float | None) -> str | None:
    return None if t is None else rfc3339(t)


@dataclass
class _Batch:
    id: str
    seq: int
    created: float
    requests: list[tuple[str, Any]]
    expire: bool
    done: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel_at: float | None = None
    ended_at: float | None = None

    def counts(self) -> dict[str, int]:
        if self.ended_at is None:
            return {"processing": len(self.requests), "succeeded": 0, "errored": 0,
                    "canceled": 0, "expired": 0}
        c = Counter(r["type"] for r in self.results.values())
        return {"processing": 0, "succeeded": c["succeeded"], "errored": c["errored"],
                "canceled": c["canceled"], "expired": c["expired"]}


class FakeMessageBatches:
    """The Message Batches of one fake server (see the module docstring).

    >>> fake = FakeAnthropic(wall=clock)                      # fake.batches is one of these
    >>> fake.batches.configure(processing_seconds=60.0, line_fail_rate=0.05)
    >>> fake.batches.counts()["max_submitted_per_custom_id"]   # 1: nothing went twice
    """

    def __init__(self, answerer: Answerer, *, clock: Callable[[], float] = time.time,
                 processing_seconds: float = 60.0, cancel_seconds: float = 1.0,
                 expire_every: int = 0, expire_fraction: float = 0.5,
                 line_fail_rate: float = 0.0, line_fail_type: str = "overloaded_error",
                 max_requests: int = MAX_BATCH_REQUESTS, max_bytes: int = MAX_BATCH_BYTES,
                 create_error: int | None = None, create_lost: int = 0,
                 seed: int = 0) -> None:
        self.answerer = answerer
        self.clock = clock
        self.processing_seconds = processing_seconds
        self.cancel_seconds = cancel_seconds
        self.expire_every = expire_every
        self.expire_fraction = expire_fraction
        self.line_fail_rate = line_fail_rate
        self.line_fail_type = line_fail_type
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.create_error = create_error
        self.create_lost = create_lost
        self.seed = seed
        self.reset()

    def configure(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise ValueError(f"unknown batch setting(s) {unknown}: use {', '.join(_SETTINGS)}")
        for k, v in settings.items():
            setattr(self, k, v)

    def reset(self) -> None:
        self.batches: dict[str, _Batch] = {}
        self.rng = random.Random(self.seed)
        self.submitted: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.created = 0

    # ---- the API ----------------------------------------------------------------------------

    def create(self, raw: bytes) -> dict[str, Any]:
        if self.create_error:
            raise Refused(int(self.create_error), "api_error", "batch creation refused")
        if len(raw) > self.max_bytes:
            raise Refused(413, "request_too_large",
                           f"Request exceeds the maximum allowed size of {self.max_bytes} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Refused(400, "invalid_request_error", "The request body is not valid "
                           "JSON.") from None
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            raise Refused(400, "invalid_request_error", "requests: Field required")
        if len(reqs) > self.max_requests:
            raise Refused(400, "invalid_request_error",
                           f"requests: at most {self.max_requests} requests per batch")
        seen: set[str] = set()
        items: list[tuple[str, Any]] = []
        for r in reqs:
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
                raise Refused(400, "invalid_request_error", f"custom_id {cid!r}: must match "
                               "^[a-zA-Z0-9_-]{1,64}$")
            if cid in seen:
                raise Refused(400, "invalid_request_error",
                               f"custom_id {cid!r} is used more than once in this batch")
            if not isinstance(r.get("params"), dict):
                raise Refused(400, "invalid_request_error", "params: Field required")
            seen.add(cid)
            items.append((cid, r["params"]))
        self.created += 1
        seq = self.created
        expire = bool(self.expire_every) and seq % int(self.expire_every) == 0
        b = _Batch(f"msgbatch_fake{seq:06d}{self.rng.getrandbits(40):010x}", seq, self.clock(),
                   items, expire)
        self.batches[b.id] = b
        self.submitted.update(cid for cid, _ in items)
        if self.create_lost:
            self.create_lost -= 1
            raise Refused(500, "api_error", "the answer was lost (fake)")
        return self.view(b, "")

    def get(self, batch_id: str) -> _Batch:
        b = self.batches.get(batch_id)
        if b is None:
            raise Refused(404, "not_found_error", f"message batch {batch_id!r} not found")
        self.advance(b, self.clock())
        return b

    def cancel(self, batch_id: str) -> _Batch:
        b = self.get(batch_id)
        if b.ended_at is None and b.cancel_at is None:
            b.cancel_at = self.clock()
        return b

    def listing(self, limit: int = 20, before_id: str | None = None,
                after_id: str | None = None) -> tuple[list[_Batch], bool]:
        """Newest first; ``after_id`` pages on to older batches, ``before_id`` to newer."""
        order = sorted(self.batches.values(), key=lambda b: b.seq, reverse=True)
        ids = [b.id for b in order]
        if after_id is not None and after_id in ids:
            order = order[ids.index(after_id) + 1:]
        elif before_id is not None and before_id in ids:
            order = order[:ids.index(before_id)][-limit:]
        page = order[:limit]
        for b in page:
            self.advance(b, self.clock())
        return page, len(order) > len(page)

    def results(self, batch_id: str) -> bytes:
        b = self.get(batch_id)
        if b.ended_at is None:
            raise Refused(400, "invalid_request_error",
                           f"Message Batch {batch_id} has not ended: no results yet")
        return b"".join(orjson.dumps({"custom_id": cid, "result": b.results[cid]}) + b"\n"
                        for cid, _ in reversed(b.requests))  # in no promised order

    def view(self, b: _Batch, root: str) -> dict[str, Any]:
        if b.ended_at is not None:
            status = "ended"
        elif b.cancel_at is not None:
            status = "canceling"
        else:
            status = "in_progress"
        return {"id": b.id, "type": "message_batch", "processing_status": status,
                "request_counts": b.counts(), "ended_at": _time(b.ended_at),
                "created_at": _time(b.created), "expires_at": _time(b.created + DAY),
                "archived_at": None, "cancel_initiated_at": _time(b.cancel_at),
                "results_url": (f"{root}/v1/messages/batches/{b.id}/results"
                                if b.ended_at is not None else None)}

    # ---- time -------------------------------------------------------------------------------

    def advance(self, b: _Batch, now: float) -> None:
        """Answer what ``now`` says is answered; end the batch when its time has come."""
        if b.ended_at is not None:
            return
        n = len(b.requests)
        span = max(self.processing_seconds, 1e-9)
        stop = now if b.cancel_at is None else min(now, b.cancel_at)
        target = n if stop >= b.created + span else math.floor(n * (stop - b.created) / span)
        if b.expire:
            target = min(target, math.floor(n * self.expire_fraction))
        while b.done < min(target, n):
            cid, params = b.requests[b.done]
            b.results[cid] = self._answer(params)
            self.answered[cid] += 1
            b.done += 1
        if b.cancel_at is not None and now >= b.cancel_at + self.cancel_seconds:
            self._end(b, b.cancel_at + self.cancel_seconds, "canceled")
        elif b.done == n:
            self._end(b, b.created + span, "")
        elif now >= b.created + DAY:
            self._end(b, b.created + DAY, "expired")

    def _answer(self, params: Any) -> dict[str, Any]:
        if self.line_fail_rate and self.rng.random() < self.line_fail_rate:
            return {"type": "errored", "error": {"type": "error", "error": {
                "type": self.line_fail_type, "message": "the request failed (fake)"}}}
        status, doc = self.answerer.process(params)
        if status == 200:
            return {"type": "succeeded", "message": doc}
        return {"type": "errored", "error": doc}

    @staticmethod
    def _end(b: _Batch, at: float, rest: str) -> None:
        for cid, _ in b.requests[b.done:]:
            b.results.setdefault(cid, {"type": rest or "expired"})
        b.ended_at = at

    def counts(self) -> dict[str, Any]:
        """The server-side record: what was submitted and answered, per ``custom_id``."""
        by = Counter(r["type"] for b in self.batches.values() for r in b.results.values())
        return {
            "batches_created": self.created,
            "requests_submitted": sum(self.submitted.values()),
            "custom_ids_submitted": len(self.submitted),
            "max_submitted_per_custom_id": max(self.submitted.values(), default=0),
            "requests_answered": sum(self.answered.values()),
            "custom_ids_answered": len(self.answered),
            "max_answered_per_custom_id": max(self.answered.values(), default=0),
            "results": dict(by),
            "by_status": dict(Counter("ended" if b.ended_at is not None else "live"
                                      for b in self.batches.values())),
        }


# ---- routes -----------------------------------------------------------------------------------

def add_batch_routes(app: web.Application, batches: FakeMessageBatches) -> None:
    def root(request: web.Request) -> str:
        return f"{request.url.scheme}://{request.url.host}:{request.url.port}"

    def guard(request: web.Request) -> None:
        key = batches.answerer.api_key
        if key is not None and not key_matches(request.headers, key):
            raise Refused(401, "authentication_error", "invalid x-api-key")

    def refused(e: Refused) -> web.Response:
        return web.Response(status=e.status, body=e.body(), content_type=_JSON)

    async def create(request: web.Request) -> web.Response:
        try:
            guard(request)
            return _json(batches.create(await request.read()))
        except Refused as e:
            return refused(e)

    async def retrieve(request: web.Request) -> web.Response:
        try:
            guard(request)
            return _json(batches.view(batches.get(request.match_info["id"]), root(request)))
        except Refused as e:
            return refused(e)

    async def cancel(request: web.Request) -> web.Response:
        try:
            guard(request)
            return _json(batches.view(batches.cancel(request.match_info["id"]), root(request)))
        except Refused as e:
            return refused(e)

    async def listing(request: web.Request) -> web.Response:
        try:
            guard(request)
            q = request.query
            limit = max(1, min(1000, int(q.get("limit", "20"))))
            page, more = batches.listing(limit, q.get("before_id"), q.get("after_id"))
        except Refused as e:
            return refused(e)
        except ValueError:
            return refused(Refused(400, "invalid_request_error", "limit: not a number"))
        data = [batches.view(b, root(request)) for b in page]
        return _json({"data": data, "has_more": more,
                      "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None})

    async def results(request: web.Request) -> web.Response:
        try:
            guard(request)
            body = batches.results(request.match_info["id"])
        except Refused as e:
            return refused(e)
        return web.Response(body=body, content_type="application/binary")

    async def admin(request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                settings = orjson.loads(await request.read())
                if not isinstance(settings, Mapping):
                    raise ValueError("send a JSON object of settings")
                settings = dict(settings)
                if settings.pop("reset", False):
                    batches.reset()
                batches.configure(**settings)
            except (orjson.JSONDecodeError, ValueError) as e:
                return _json({"error": str(e)}, 400)
        return _json(batches.counts())

    app.router.add_post("/v1/messages/batches", create)
    app.router.add_get("/v1/messages/batches", listing)
    app.router.add_get("/v1/messages/batches/{id}", retrieve)
    app.router.add_post("/v1/messages/batches/{id}/cancel", cancel)
    app.router.add_get("/v1/messages/batches/{id}/results", results)
    app.router.add_route("*", "/admin/batches", admin)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)
