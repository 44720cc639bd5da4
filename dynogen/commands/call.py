"""``dynogen call``: a user's own Batch API input file, online or as Batch API jobs.

Input is what users would upload to OpenAI's Batch API: one
``{"custom_id", "method", "url", "body"}`` a line. Each line goes through the
same executor as ``run`` (``--mode online``: limiter, retries, ledger, budget,
cache; ``--mode batch``: split, uploaded and polled as Batch API jobs), and the
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

from dynogen.compose import check_key, counter_for, open_stack, preflight, resolve_price, signals
from dynogen.config import Config
from dynogen.errors import (
    BudgetExceeded,
    ConfigError,
    FatalAPIError,
    RequestFailed,
    Stopped,
    StorageError,
    UserError,
)
from dynogen.eventloop import run as run_on_loop
from dynogen.execute.base import Accounting, Executor, Request
from dynogen.execute.client import Completion
from dynogen.execute.transport import Transport
from dynogen.outcome import EXIT, RunOutcome, exit_code
from dynogen.progress import make_progress
from dynogen.prompts.tokens import TokenCounter
from dynogen.store.journal import JsonlWriter, iter_jsonl, repair
from dynogen.store.lock import RunLock

__all__ = ["CallResult", "acall", "call", "read_batch_lines"]

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


def _request(line: _Line, cfg: Config, counter: TokenCounter) -> Request:
    body = line.body
    assert body is not None
    mt = body.get("max_completion_tokens") or body.get("max_tokens") or cfg.max_tokens
    try:
        pt = counter.count_messages(body["messages"], response_format=body.get("response_format"))
    except (TypeError, AttributeError):
        pt = len(orjson.dumps(body["messages"])) // 2  # non-text content: a safe over-count
    return Request(orjson.dumps(body), pt, int(mt))


async def acall(cfg: Config, requests_path: str | Path, out_path: str | Path, *,
                transport: Transport | None = None,
                handle_signals: bool = False) -> CallResult:
    """Send every line of ``requests_path``; append answers to ``out_path``."""
    src, out = Path(requests_path), Path(out_path)
    if not src.is_file():
        raise ConfigError(f"requests file {src} not found")
    price = resolve_price(cfg)
    check_key(cfg)
    await preflight(cfg, transport)  # before the lock and the output file: nothing to undo
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    lock = RunLock(out, purpose="call").acquire()  # one writer per output file
    try:
        return await _acall_locked(cfg, src, out, transport, handle_signals, price)
    finally:
        lock.release()


async def _acall_locked(cfg: Config, src: Path, out: Path, transport: Transport | None,
                        handle_signals: bool, price: Any) -> CallResult:
    try:
        repair(out)
        writer = JsonlWriter(out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    done = {str(r.get("custom_id")) for r in iter_jsonl(out)}
    counter = counter_for(cfg, price)
    bar = make_progress(cfg.quiet, "requests", rpm=cfg.rpm, tpm=cfg.tpm, budget=cfg.budget_usd)
    result = CallResult()
    t0 = time.perf_counter()
    try:
        async with open_stack(
            cfg, price=price, stage="call", budget_usd=cfg.budget_usd,
            cache_path=Path(cfg.cache_path) if cfg.cache_path else None,
            state_dir=out.parent / (out.name + ".batches"), transport=transport, meter=bar,
        ) as stack:
            ex = stack.executor
            if cfg.mode == "batch":
                ex.plan(_request(line, cfg, counter) for line in read_batch_lines(src)
                        if line.body is not None and line.custom_id not in done)
            with signals(lambda: _stop(result, ex, "interrupted", None), enabled=handle_signals):
                await _send_all(ex, cfg, src, done, counter, writer, bar, result)
            result.ledger = stack.ledger.totals()
            result.session = dict(ex.session)
    finally:
        writer.close()
        bar.close()
    result.wall_seconds = time.perf_counter() - t0
    return result


def _stop(result: CallResult, ex: Executor, reason: str, err: BaseException | None) -> None:
    if result.stop_reason is None:
        result.stop_reason, result.error = reason, err
    ex.stop()


async def _send_all(ex: Executor, cfg: Config, src: Path, done: set[str],
                    counter: TokenCounter, writer: JsonlWriter, bar: Any,
                    result: CallResult) -> None:
    # Lines wait here parsed (a dict is ~5x its JSON): a short queue, refilled by the
    # feeder, keeps memory flat while thousands of workers are in flight.
    queue: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=min(2 * ex.concurrency, 512))

    def emit(line: dict[str, Any]) -> None:
        # Flushed per answer: an answer paid for and not on disk would be sent (and
        # paid) again by a resume, since `call` keeps no cache unless given --cache.
        writer.write(line)
        try:
            writer.flush()
        except StorageError as e:  # disk full: stop; this id is sent again on resume
            _stop(result, ex, "fatal", e)
            return
        result.written += 1
        bar.unit_done()

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            if ex.stopping:
                continue
            if item.error is not None or item.body is None:
                result.errors["invalid_request"] += 1
                emit(_out_line(item.custom_id, None, {"code": "invalid_request",
                                                      "message": str(item.error)}))
                continue
            req = _request(item, cfg, counter)
            item.body = None  # the request's bytes are all that is needed while it waits
            try:
                comp = await ex.complete(req, Accounting())
            except RequestFailed as e:
                result.errors[e.reason] += 1
                emit(_out_line(item.custom_id, None, {"code": e.reason, "message": str(e.last)}))
                continue
            except Stopped:
                continue
            except BudgetExceeded as e:
                _stop(result, ex, "budget", e)
                continue
            except (FatalAPIError, StorageError) as e:
                _stop(result, ex, "fatal", e)
                continue
            result.requests += 1
            emit(_out_line(item.custom_id, comp, None))

    async def feed() -> None:
        lines = read_batch_lines(src)
        while not ex.stopping:
            chunk = await asyncio.to_thread(lambda: list(itertools.islice(lines, 256)))
            if not chunk:
                break
            for line in chunk:
                if ex.stopping:
                    break
                if line.custom_id in done:
                    result.already_done += 1
                    continue
                done.add(line.custom_id)
                await queue.put(line)
        # Only a feeder that ran out of work releases the workers; one that failed or was
        # cancelled leaves that to the TaskGroup, which cancels them (a put into a full
        # queue nobody drains would hang there).
        for _ in range(ex.concurrency):
            await queue.put(None)

    async with asyncio.TaskGroup() as tg:
        for _ in range(ex.concurrency):
            tg.create_task(worker())
        tg.create_task(feed())


def call(cfg: Config, requests: str | Path, out: str | Path, *,
         transport: Transport | None = None, handle_signals: bool = False) -> RunOutcome:
    """Send a Batch API input file's requests (online or as Batch API jobs); answers in
    the Batch API output format."""
    cfg = cfg.validate()
    res = run_on_loop(acall(cfg, requests, out, transport=transport,
                              handle_signals=handle_signals))
    report = res.to_dict()
    failed = sum(res.errors.values())
    spent = report["cost"].get("spent_usd", 0.0)
    if res.stop_reason == "budget":
        msg = (f"budget reached: spent ${spent:.4f} of ${cfg.budget_usd:.4f}; {res.written} "
               f"lines written to {out}. Run again with a larger --budget-usd to continue.")
        return RunOutcome(EXIT["budget"], Path(out), report, msg, "budget")
    if isinstance(res.error, StorageError):
        return RunOutcome(exit_code(res.error), Path(out), report, str(res.error), "storage")
    if res.stop_reason == "fatal":
        msg = f"stopped: {res.error}. {res.written} lines written to {out}; run again to resume."
        return RunOutcome(EXIT["fatal"], Path(out), report, msg, "fatal")
    if res.stop_reason == "interrupted":
        msg = (f"interrupted: {res.written} lines written to {out}. Run the same command "
               "again to resume.")
        return RunOutcome(EXIT["interrupted"], Path(out), report, msg, "interrupted")
    msg = (f"done: {res.requests} answered, {failed} failed, {res.already_done} already done; "
           f"${spent:.4f} spent in {res.wall_seconds:.1f}s. Output: {out}")
    return RunOutcome(EXIT["ok"], Path(out), report, msg)
