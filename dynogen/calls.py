"""``dynogen call``: run a Batch API input file through the online API.

Input is what users would upload to OpenAI's Batch API: one
``{"custom_id", "method", "url", "body"}`` a line. Each line goes through the
same dispatcher as ``run`` (limiter, retries, ledger, budget, cache), and the
answer is written in the Batch API *output* format::

    {"id": "batch_req_…", "custom_id": "…",
     "response": {"status_code": 200, "request_id": "…", "body": {…}}, "error": null}

A line that cannot be sent (bad JSON, wrong method or url, no messages) gets an
output line with ``error.code = "invalid_request"``; a request whose retries
ran out gets ``error.code`` set to the failure's reason. Nothing is dropped.

Output is append-only and resumable: ids already in the output file are not
sent again, and a torn last line is repaired first. Lines are written as
answers arrive (the Batch API's output is unordered too).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import xxhash

from dynogen.config import Config
from dynogen.errors import BudgetExceeded, ConfigError, FatalAPIError, UserError
from dynogen.execute.client import ChatClient, Completion
from dynogen.execute.online import Accounting, Dispatcher, RequestFailed, Stopped
from dynogen.execute.transport import AiohttpTransport, Transport
from dynogen.ledger import Ledger
from dynogen.progress import make_progress
from dynogen.ratelimit import Limiter, RetryPolicy
from dynogen.store.cache import RequestCache
from dynogen.store.journal import JsonlWriter, iter_jsonl, repair
from dynogen.tokens import TokenCounter

__all__ = ["CallResult", "acall", "read_batch_lines"]

SUPPORTED_URLS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class CallResult:
    requests: int = 0
    written: int = 0
    already_done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    stop_reason: str | None = None
    error: BaseException | None = None
    wall_seconds: float = 0.0
    session: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "written": self.written,
                "already_done": self.already_done, "errors": dict(self.errors),
                "stop_reason": self.stop_reason, "wall_seconds": round(self.wall_seconds, 3),
                "session": self.session, "cost": self.ledger}


@dataclass(slots=True)
class _Line:
    lineno: int
    custom_id: str
    body: dict[str, Any] | None
    error: str | None = None


def read_batch_lines(path: Path) -> Iterator[_Line]:
    """Parse input lines lazily; malformed ones come back with ``error`` set."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield _Line(lineno, f"line-{lineno}", None, "line is not JSON")
                continue
            if not isinstance(obj, dict):
                yield _Line(lineno, f"line-{lineno}", None, "line is not a JSON object")
                continue
            cid = obj.get("custom_id")
            cid = cid if isinstance(cid, str) and cid else f"line-{lineno}"
            if obj.get("method", "POST") != "POST":
                yield _Line(lineno, cid, None, "method must be POST")
            elif obj.get("url") not in SUPPORTED_URLS:
                yield _Line(lineno, cid, None,
                            f"url {obj.get('url')!r} is not supported (use /v1/chat/completions)")
            elif not isinstance(obj.get("body"), dict) or not isinstance(
                    obj["body"].get("messages"), list):
                yield _Line(lineno, cid, None, "body must be an object with a messages list")
            else:
                yield _Line(lineno, cid, obj["body"])


def _out_line(custom_id: str, comp: Completion | None, error: dict[str, str] | None) -> dict[
        str, Any]:
    rid = xxhash.xxh3_64_hexdigest(custom_id.encode())
    if comp is None:
        return {"id": f"batch_req_{rid}", "custom_id": custom_id, "response": None, "error": error}
    body = orjson.loads(comp.raw)
    request_id = comp.headers.get("x-request-id", f"req_{rid}")
    return {"id": f"batch_req_{rid}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body},
            "error": None}


async def acall(cfg: Config, requests_path: str | Path, out_path: str | Path, *,
                transport: Transport | None = None, price: Any = None) -> CallResult:
    """Send every line of ``requests_path``; append answers to ``out_path``."""
    from dynogen.api import resolve_price

    src, out = Path(requests_path), Path(out_path)
    if not src.is_file():
        raise ConfigError(f"requests file {src} not found")
    price = price or resolve_price(cfg)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        repair(out)
        writer = JsonlWriter(out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    done = {str(r.get("custom_id")) for r in iter_jsonl(out)}
    counter = TokenCounter(price.encoding or cfg.encoding)
    limiter = Limiter(rpm=cfg.rpm, tpm=cfg.tpm, max_in_flight=cfg.max_in_flight)
    ledger = Ledger(price, cfg.budget_usd)
    client = ChatClient(cfg.base_url, cfg.api_key.get(),
                        transport=transport or AiohttpTransport(limit=cfg.max_in_flight),
                        timeout=cfg.request_timeout)
    cache = RequestCache(cfg.cache_path) if cfg.cache_path else None
    bar = make_progress(cfg.quiet, "requests", rpm=cfg.rpm, tpm=cfg.tpm, budget=cfg.budget_usd)
    policy = RetryPolicy(max_retries=cfg.max_retries, base=cfg.retry_base_delay,
                         cap=cfg.retry_max_delay)
    dispatch = Dispatcher(client, limiter, ledger, cache, policy, meter=bar, stage="call",
                          secret=cfg.api_key.get())
    result = CallResult()
    queue: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=2 * cfg.max_in_flight)
    t0 = time.perf_counter()

    def stop(reason: str, err: BaseException) -> None:
        if result.stop_reason is None:
            result.stop_reason, result.error = reason, err
        dispatch.stopping = True

    def emit(line: dict[str, Any]) -> None:
        # Flushed per answer: an answer paid for and not on disk would be sent (and
        # paid) again by a resume, since `call` keeps no cache unless given --cache.
        writer.write(line)
        writer.flush()
        result.written += 1
        bar.unit_done()

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            if dispatch.stopping:
                continue
            if item.error is not None or item.body is None:
                result.errors["invalid_request"] += 1
                emit(_out_line(item.custom_id, None, {"code": "invalid_request",
                                                      "message": str(item.error)}))
                continue
            body = item.body
            mt = body.get("max_completion_tokens") or body.get("max_tokens") or cfg.max_tokens
            try:
                pt = counter.count_messages(body["messages"],
                                            response_format=body.get("response_format"))
            except (TypeError, AttributeError):
                pt = len(orjson.dumps(body["messages"])) // 2  # non-text content: a safe over-count
            try:
                comp = await dispatch.complete(orjson.dumps(body), pt, int(mt), Accounting())
            except RequestFailed as e:
                result.errors[e.reason] += 1
                emit(_out_line(item.custom_id, None, {"code": e.reason, "message": str(e.last)}))
                continue
            except Stopped:
                continue
            except BudgetExceeded as e:
                stop("budget", e)
                continue
            except FatalAPIError as e:
                stop("fatal", e)
                continue
            result.requests += 1
            emit(_out_line(item.custom_id, comp, None))

    async def feed() -> None:
        try:
            lines = read_batch_lines(src)
            while not dispatch.stopping:
                chunk = await asyncio.to_thread(lambda: list(itertools.islice(lines, 256)))
                if not chunk:
                    break
                for line in chunk:
                    if dispatch.stopping:
                        break
                    if line.custom_id in done:
                        result.already_done += 1
                        continue
                    done.add(line.custom_id)
                    await queue.put(line)
        finally:
            for _ in range(cfg.max_in_flight):
                await queue.put(None)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(cfg.max_in_flight):
                tg.create_task(worker())
            tg.create_task(feed())
    finally:
        writer.close()
        bar.close()
        await client.aclose()
        if cache is not None:
            cache.close()
    result.wall_seconds = time.perf_counter() - t0
    result.session = dict(dispatch.session)
    result.ledger = ledger.totals()
    return result
