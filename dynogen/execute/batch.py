"""Batch API mode: the same requests as an online run, answered by OpenAI batch jobs.

``BatchExecutor`` answers ``complete(request)`` like the online dispatcher, from
batches instead of one HTTP call each:

- ``plan(requests)`` gets the whole source's first-try requests up front (as a
  stream) and writes them into input files (``batch_files``), skipping what the
  request cache or a live batch already holds; each file is reserved at its
  worst case in the ledger (batch prices), journaled (``batch_state``),
  uploaded and submitted as it fills. A file that would cross the budget is cut
  short: a smaller one goes, the rest waits for money to be freed.
- A background poller retrieves live batches with backoff (``poll_seconds`` at
  most) and, when one ends, streams its output and error files: each answer is
  billed from its ``usage``, recorded in ``spend.jsonl`` and put in the request
  cache; each failed line (and every line of an expired, cancelled or failed
  batch without an answer) is written into a follow-up file of the next round,
  up to ``rounds``; past that its request fails with a counted reason.
- ``complete`` returns from the cache, or waits for the batch that holds the
  request, or (a request never planned, e.g. a length retry with a larger
  ``max_tokens``) writes it into a pool file the poller submits after lingering
  one poll interval, so stragglers share a batch.

Restart: the journal and the local copies of input files say which requests
are in live batches, so nothing is uploaded or submitted twice; uploads and
batches whose ids a kill kept from the journal are found by listing the
server's files (by name) and batches (by the run's metadata). A batch the user
cancels (``dynogen batch cancel``) is noticed by the poller: what finished is
kept, the rest fails as ``batch_cancelled`` and no new batch is submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dynogen.config import Config
from dynogen.dedup import HashSet
from dynogen.errors import (
    APIError,
    BudgetExceeded,
    ConfigError,
    DynogenError,
    FatalAPIError,
    RequestFailed,
    Stopped,
)
from dynogen.execute.base import Accounting, Request, usage_counts
from dynogen.execute.batch_files import (
    MAX_RESULT_LINE,
    Caps,
    InputFile,
    ResultLine,
    iter_input_lines,
    key_hash,
    parse_result_line,
)
from dynogen.execute.batch_remote import BatchRemote
from dynogen.execute.batch_state import TERMINAL, BatchJournal, FileState
from dynogen.execute.client import Completion, parse_answer
from dynogen.execute.transport import RawResponse
from dynogen.ledger import Ledger, Reservation
from dynogen.store.cache import RequestCache, request_key
from dynogen.store.journal import JsonlWriter

__all__ = ["BatchExecutor", "BatchOptions"]

# Line failures worth another round: the server's fault or the batch's, not the request's.
_RETRYABLE_HTTP = ("http_408", "http_409", "http_429", "http_5")


class _Meter(Protocol):
    def request_done(self, tokens: int, cost_usd: float) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """``poll_seconds``: the longest wait between polls (backoff starts at an eighth of it);
    ``rounds``: follow-up batches for failed lines; ``caps``: when an input file is full;
    ``enqueued_tokens``: prompt tokens allowed in live batches at once (OpenAI's per-model
    enqueued limit), ``None`` for no cap."""

    poll_seconds: float = 60.0
    rounds: int = 3
    caps: Caps = field(default_factory=Caps)
    enqueued_tokens: int | None = None
    max_line: int = MAX_RESULT_LINE
    quiet: bool = True


class _Live:
    """An input file from the moment it is opened until its results are collected."""

    __slots__ = ("name", "state", "keys", "writer", "reservation", "done", "error", "remote",
                 "opened", "round", "parent", "endpoint", "usd")

    def __init__(self, name: str, endpoint: str, round_: int, parent: str | None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.round = round_
        self.parent = parent
        self.state: FileState | None = None      # set once the file is closed and journaled
        self.keys = HashSet()
        self.writer: InputFile | None = None
        self.reservation: Reservation | None = None
        self.done = asyncio.Event()
        self.error: DynogenError | None = None
        self.remote: Any = None
        self.opened = time.monotonic()
        self.usd = 0.0

    @property
    def submitted(self) -> bool:
        return self.state is not None and self.state.batch_id is not None


def _take(it: Iterator[Any], n: int) -> list[Any]:
    return list(itertools.islice(it, n))


class BatchExecutor:
    """Answers requests from Batch API jobs; see the module docstring.

    >>> ex = BatchExecutor(cfg, ledger=Ledger(price, 5.0, batch=True), cache=cache, state_dir=out)
    >>> ex.plan(requests); comp = await ex.complete(requests[0], Accounting())
    """

    def __init__(self, cfg: Config, *, ledger: Ledger, cache: RequestCache | None,
                 state_dir: Path | None, concurrency: int = 1024,
                 spend: JsonlWriter | None = None, meter: _Meter | None = None,
                 stage: str = "tasks", options: BatchOptions | None = None, client: Any = None,
                 limiter: Any = None, transport: Any = None) -> None:
        # ``limiter`` and ``transport`` belong to online sending: a batch job has no
        # per-minute pacing here, and it reaches the server through the openai SDK.
        if state_dir is None:
            raise ConfigError("--mode batch needs a directory for its input files and journal")
        opts = options or BatchOptions(
            poll_seconds=cfg.poll_seconds, rounds=cfg.batch_rounds,
            caps=Caps(requests=cfg.batch_max_requests), enqueued_tokens=cfg.batch_enqueued_tokens,
            quiet=cfg.quiet)
        if opts.enqueued_tokens is not None and opts.caps.tokens is None:
            # A file must fit under the enqueued cap on its own.
            opts = dataclasses.replace(opts, caps=dataclasses.replace(
                opts.caps, tokens=opts.enqueued_tokens))
        self.opts = opts
        self._concurrency = concurrency
        # Answers must outlive a kill between collecting and using them, or a restart
        # would pay for them again: with no cache given, the executor keeps its own.
        self._own_cache = cache is None
        self.cache = cache if cache is not None else RequestCache(state_dir / "cache.sqlite")
        self.ledger = ledger
        self.spend = spend
        self.meter = meter
        self.stage = stage
        self.journal = BatchJournal(state_dir).open()
        run_id = self.journal.run_id(create=True)
        assert run_id is not None
        self.remote = BatchRemote(cfg.base_url, cfg.api_key.get(), run_id=run_id, client=client,
                                  max_retries=cfg.max_retries, timeout=cfg.request_timeout)
        self.session: Counter[str] = Counter()
        self.files: dict[str, FileState] = self.journal.load()
        self._seq = max((int(n[6:12]) for n in self.files if n[6:12].isdigit()), default=0)
        self.live: dict[str, _Live] = {}
        self._open: dict[tuple[str, str], _Live] = {}   # (kind, endpoint) → file being written
        self._planned = HashSet()
        self._failures: dict[int, str] = {}
        self._landed: dict[int, tuple[int, int, int, float]] = {}
        self._uncached: dict[int, bytes] = {}
        self._fatal: DynogenError | None = None
        self._stopping = False
        self._closed = False
        self.user_cancelled = False
        self._started = False
        self._start_lock = asyncio.Lock()
        self._submit_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._planner: asyncio.Task[None] | None = None
        self._planning = asyncio.Event()   # set while no plan is being read
        self._planning.set()
        self._planned_more = asyncio.Event()
        self._last_status = ""

    # ---- the executor interface ---------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def stopping(self) -> bool:
        return self._stopping

    def plan(self, requests: Iterable[Request]) -> None:
        """Read ``requests`` (the caller's first tries, in order) in the background: write,
        reserve and submit batches for them as files fill."""
        self._planning.clear()
        self._planner = asyncio.create_task(self._plan(requests))

    async def _plan(self, requests: Iterable[Request]) -> None:
        try:
            await self._plan_all(requests)
        except DynogenError as e:
            if self._fatal is None:
                self._fail_all(e)
        finally:
            self._planning.set()
            self._planned_more.set()

    async def _plan_all(self, requests: Iterable[Request]) -> None:
        await self._start()
        it = iter(requests)
        while not self._stopping and self._fatal is None:
            chunk = await asyncio.to_thread(_take, it, 256)
            if not chunk:
                break
            for req in chunk:
                key = request_key(req.body)
                h = key_hash(key)
                if not self._planned.add(h) or self._known(key, h):
                    continue
                if not self._write(("plan", req.endpoint), key, h, req, 0, None):
                    # Out of budget for now: the rest reach the pool through complete()
                    # once settled batches have freed money.
                    self.session["batch_plan_stopped_by_budget"] += 1
                    await self._close_open("plan")
                    await self._submit_pending()
                    return
            self._planned_more.set()
            await self._submit_pending()
        await self._close_open("plan")
        await self._submit_pending()

    async def complete(self, req: Request, acct: Accounting) -> Completion:
        await self._start()
        key = request_key(req.body)
        h = key_hash(key)
        while True:
            comp = self._answer(key, h, req.endpoint, acct)
            if comp is not None:
                return comp
            if self._fatal is not None:
                raise self._fatal
            reason = self._failures.get(h)
            if reason is not None:
                raise RequestFailed(reason, APIError(f"batch request failed: {reason}"))
            live = self._holder(h)
            if live is None and not self._planning.is_set() and not self._stopping:
                # The plan may not have reached this request yet: wait for it to move on.
                self._planned_more.clear()
                await self._planned_more.wait()
                continue
            if live is None:
                if self._stopping:
                    raise Stopped()
                if self.user_cancelled:
                    raise RequestFailed("batch_cancelled", APIError("the batch was cancelled"))
                live = self._pool(key, h, req)
                if live is None:
                    await self._wait_for_money(req)
                    continue
            if live.error is not None:
                raise live.error
            if self._stopping:
                raise Stopped()
            await live.done.wait()

    def stop(self) -> None:
        """Stop submitting; waiters raise ``Stopped``. Live batches run on at the server and
        are collected by the next run with the same ``--out``."""
        self._stopping = True
        for live in list(self.live.values()):
            live.done.set()
        for ev in (self._wake, self._settled, self._planned_more):
            ev.set()

    async def aclose(self) -> None:
        self._closed = True
        self._wake.set()
        for task in (self._planner, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for live in list(self._open.values()):
            if live.writer is not None:
                live.writer.discard()
        self._open.clear()
        await self.remote.aclose()
        self.journal.close()
        if self._own_cache:
            self.cache.close()

    # ---- start and restart --------------------------------------------------------------------

    async def _start(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            for st in self.files.values():
                if st.done:
                    continue
                live = _Live(st.name, st.endpoint, st.round, st.parent)
                live.state = st
                path = self.journal.local(st.name)
                if path.exists():
                    for key, *_ in iter_input_lines(path):
                        live.keys.add(key_hash(key))
                # Submitted by an earlier session: billed whatever the budget says now.
                live.reservation = self.ledger.reserve(st.prompt_tokens, st.max_tokens,
                                                       force=st.batch_id is not None)
                self.live[st.name] = live
                self.session["batch_resumed"] += 1
            await self._find_lost()
            self._started = True
            self._poller = asyncio.create_task(self._poll_loop())

    async def _find_lost(self) -> None:
        """Adopt uploads and batches a kill kept out of the journal, so none is made twice."""
        no_file = {n for n, lv in self.live.items() if lv.state and not lv.state.file_id}
        for name, file_id in (await self.remote.find_files(no_file)).items():
            self.journal.record("upload", name, file_id=file_id)
            self.files[name].file_id = file_id
            self.session["batch_lost_uploads_found"] += 1
        no_batch = {n for n, lv in self.live.items() if lv.state and lv.state.file_id
                    and not lv.state.batch_id}
        for name, batch_id in (await self.remote.find_batches(no_batch)).items():
            self.journal.record("batch", name, batch_id=batch_id)
            self.files[name].batch_id = batch_id
            self.session["batch_lost_batches_found"] += 1

    # ---- writing input files ------------------------------------------------------------------

    def _known(self, key: bytes, h: int) -> bool:
        """Answered already, or in a batch that will answer it."""
        if h in self._uncached or self._holder(h) is not None:
            return True
        if self.cache.get(key) is not None:
            self.session["batch_cache_skips"] += 1
            return True
        return False

    def _write(self, slot: tuple[str, str], key: bytes, h: int, req: Request, round_: int,
               parent: str | None) -> bool:
        """Append ``req`` to the open file of ``slot``, closing it first when full or when the
        budget cannot take one more line; ``False`` if not even a file of one fits."""
        live = self._open.get(slot)
        line = b""
        for _ in range(2):
            if live is None:
                if not self.ledger.can_reserve(req.prompt_tokens, req.max_tokens):
                    return False
                live = self._open_file(slot, req.endpoint, round_, parent)
            writer = live.writer
            assert writer is not None
            line = writer.line(key, req.body)
            fits = writer.fits(line, req.prompt_tokens) and self.ledger.can_reserve(
                writer.prompt_tokens + req.prompt_tokens, writer.max_tokens + req.max_tokens)
            if fits:
                break
            self._close_file(slot)
            live = None
        assert live is not None and live.writer is not None
        live.writer.add(key, line, req.prompt_tokens, req.max_tokens)
        live.keys.add(h)
        return True

    def _open_file(self, slot: tuple[str, str], endpoint: str, round_: int,
                   parent: str | None) -> _Live:
        self._seq += 1
        name = f"input-{self._seq:06d}.jsonl"
        live = _Live(name, endpoint, round_, parent)
        live.writer = InputFile(self.journal.local(name), endpoint, self.opts.caps)
        self.live[name] = live
        self._open[slot] = live
        return live

    def _close_file(self, slot: tuple[str, str]) -> None:
        live = self._open.pop(slot, None)
        if live is None or live.writer is None:
            return
        w, live.writer = live.writer, None
        if w.requests == 0:
            w.discard()
            del self.live[live.name]
            return
        w.close()
        self.journal.record("file", live.name, endpoint=live.endpoint, round=live.round,
                            parent=live.parent, requests=w.requests,
                            prompt_tokens=w.prompt_tokens, max_tokens=w.max_tokens)
        st = FileState(live.name, live.endpoint, live.round, live.parent, w.requests,
                       w.prompt_tokens, w.max_tokens, time.time())
        self.files[live.name] = st
        live.state = st
        with contextlib.suppress(BudgetExceeded):
            live.reservation = self.ledger.reserve(w.prompt_tokens, w.max_tokens)
        self.session["batch_files"] += 1
        self.session["batch_lines_written"] += w.requests

    async def _close_open(self, kind: str) -> None:
        for slot in [s for s in self._open if s[0] == kind]:
            self._close_file(slot)

    def _pool(self, key: bytes, h: int, req: Request) -> _Live | None:
        """Put an unplanned request into the pool file; ``None`` if the budget cannot take it."""
        if not self._write(("pool", req.endpoint), key, h, req, 0, None):
            return None
        self.session["batch_unplanned"] += 1
        self._wake.set()
        return self._open[("pool", req.endpoint)]

    async def _wait_for_money(self, req: Request) -> None:
        """Budget full: wait for live batches to settle, or give up when none can."""
        if self.ledger.can_reserve(req.prompt_tokens, req.max_tokens):
            return
        if not any(lv.reservation is not None or lv.writer is not None
                   for lv in self.live.values()):
            self.ledger.reserve(req.prompt_tokens, req.max_tokens)  # raises BudgetExceeded
        self._settled.clear()
        await self._settled.wait()

    # ---- submitting ---------------------------------------------------------------------------

    def _enqueued(self) -> int:
        return sum(lv.state.prompt_tokens for lv in self.live.values()
                   if lv.submitted and lv.state is not None)

    async def _submit_pending(self) -> None:
        """Upload and create batches for closed files, in order, while money and the enqueued
        cap allow. A 4xx is fatal: it is raised here and to every waiter."""
        async with self._submit_lock:
            for live in list(self.live.values()):
                st = live.state
                if st is None or st.batch_id is not None or self._stopping or self.user_cancelled:
                    continue
                if live.reservation is None:
                    try:
                        live.reservation = self.ledger.reserve(st.prompt_tokens, st.max_tokens)
                    except BudgetExceeded as e:
                        if any(lv.submitted for lv in self.live.values()):
                            return  # money comes back as live batches settle
                        live.error = e
                        live.done.set()
                        continue
                cap = self.opts.enqueued_tokens
                if cap is not None and self._enqueued() + st.prompt_tokens > cap and any(
                        lv.submitted for lv in self.live.values()):
                    return
                try:
                    if st.file_id is None:
                        st.file_id = await self.remote.upload(self.journal.local(st.name),
                                                              st.name)
                        self.journal.record("upload", st.name, file_id=st.file_id)
                        self.session["batch_uploads"] += 1
                    st.batch_id = await self.remote.create(st.file_id, st.name, st.endpoint,
                                                           st.round)
                except FatalAPIError as e:
                    self._fail_all(e)
                    raise
                st.status = "validating"
                self.journal.record("batch", st.name, batch_id=st.batch_id)
                self.session["batch_batches"] += 1
                self.session["requests"] += st.requests
                self._wake.set()

    def _fail_all(self, e: DynogenError) -> None:
        self._fatal = e
        for live in self.live.values():
            live.done.set()
        self._settled.set()

    # ---- polling and collecting ---------------------------------------------------------------

    async def _poll_loop(self) -> None:
        low = max(0.001, self.opts.poll_seconds / 8)
        delay = low
        while not self._closed:
            try:
                changed = await self._tick()
            except FatalAPIError as e:
                self._fail_all(e)
                return
            except APIError:
                # The SDK turns a cancelled request into a connection error: a cancel
                # must still end the loop.
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    return
                self.session["batch_poll_errors"] += 1
                changed = False
            delay = low if changed else min(self.opts.poll_seconds, delay * 2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _tick(self) -> bool:
        now = time.monotonic()
        for slot, live in list(self._open.items()):
            if slot[0] == "pool" and now - live.opened >= self.opts.poll_seconds:
                self._close_file(slot)
        await self._submit_pending()
        changed = False
        for live in [lv for lv in self.live.values() if lv.submitted]:
            st = live.state
            assert st is not None and st.batch_id is not None
            b = await self.remote.retrieve(st.batch_id)
            live.remote = b
            if b.status != st.status:
                changed = True
                if b.status in ("cancelling", "cancelled"):
                    self.user_cancelled = True
                    self.session["batch_cancelled_by_user"] += 1
                st.status = b.status
            if b.status in TERMINAL:
                await self._collect(live, b)
        self._show()
        return changed

    async def _collect(self, live: _Live, batch: Any) -> None:
        """Read a finished batch's results into the cache and ledger; follow up its failures."""
        st = live.state
        assert st is not None
        reasons: dict[int, str] = {}
        answered: set[int] = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            async for raw in self.remote.lines(file_id, self.opts.max_line):
                res = parse_result_line(raw) if raw is not None else "oversized_line"
                if isinstance(res, str):
                    self.session[f"batch_{res}"] += 1
                    continue
                h = key_hash(res.key)
                if h not in live.keys:
                    self.session["batch_unknown_custom_id"] += 1
                    continue
                if res.status == 200 and res.body is not None:
                    why = self._land(live, res)
                    if why is None:
                        answered.add(h)
                        continue
                    reasons[h] = why
                else:
                    reasons[h] = res.reason or "batch_error"
        if batch.status == "failed" and batch.errors and batch.errors.data:
            code = batch.errors.data[0].code or "failed"
            whole = f"batch_failed_{code}"
        else:
            whole = f"batch_{batch.status}"
        cancelled = batch.status == "cancelled" or self.user_cancelled
        has_child = any(f.parent == st.name for f in self.files.values())
        follow_slot = ("retry", st.name)
        failed = 0
        path = self.journal.local(st.name)
        for key, line, pt, mt in (iter_input_lines(path) if path.exists() else iter(())):
            h = key_hash(key)
            if h in answered or h in self._uncached or self.cache.get(key) is not None:
                continue
            failed += 1
            why = reasons.get(h, whole)
            self.session[f"batch_failed_lines:{why}"] += 1
            retry = not cancelled and st.round < self.opts.rounds and (
                why.startswith("batch_") or why.startswith(_RETRYABLE_HTTP)
                or not why.startswith("http_"))
            if not retry:
                self._failures[h] = "batch_cancelled" if cancelled else why
                continue
            if has_child:
                continue  # written by the session a kill ended; it is live on its own
            self._write_line(follow_slot, key, h, line, pt, mt, st)
        self._close_file(follow_slot)
        if live.reservation is not None:
            self.ledger.release(live.reservation)
            live.reservation = None
        self.journal.record("done", st.name, batch_id=st.batch_id, status=batch.status,
                            answered=len(answered), failed=failed, usd=round(live.usd, 6))
        st.done, st.answered, st.failed = True, len(answered), failed
        del self.live[st.name]
        live.done.set()
        self._settled.set()
        self.session[f"batch_{batch.status}"] += 1
        await self._submit_pending()

    def _write_line(self, slot: tuple[str, str], key: bytes, h: int, line: bytes, pt: int,
                    mt: int, parent: FileState) -> None:
        """A failed line, copied as it was into the follow-up file of ``parent``'s next round."""
        live = self._open.get(slot)
        if live is None or not live.writer or not live.writer.fits(line, pt):
            self._close_file(slot)
            live = self._open_file(slot, parent.endpoint, parent.round + 1, parent.name)
        assert live.writer is not None
        live.writer.add(key, line, pt, mt)
        live.keys.add(h)
        self.session["batch_resubmitted"] += 1

    def _land(self, live: _Live, res: ResultLine) -> str | None:
        """Bill and cache one answer; the reason it is unusable, or ``None``."""
        assert res.body is not None
        key, h = res.key, key_hash(res.key)
        if self.cache.get(key) is not None:
            self.session["batch_already_collected"] += 1
            return None
        counts = usage_counts(res.usage)
        pin, pout, cached = counts if counts is not None else (0, 0, 0)
        if live.reservation is None:
            live.reservation = self.ledger.reserve(0, 0, force=True)
        share = self.ledger.split(live.reservation, pin, pout)
        cost = self.ledger.settle(share, res.usage, stage=self.stage)
        live.usd += cost
        if self.spend is not None:
            self.spend.write({"usd": cost, "in": pin, "out": pout, "cached": cached, "batch": 1}
                             if counts is not None else {"usd": cost, "unconfirmed": True})
            self.spend.flush()
        if self.meter is not None:
            self.meter.request_done(pin + pout, cost)
        try:
            comp = parse_answer(RawResponse(200, {}, res.body), live.endpoint)
        except DynogenError as e:
            return f"invalid_{getattr(e, 'kind', 'answer')}"
        self._landed[h] = (pin, pout, cached, cost)
        if comp.finish_reason in ("stop", None):
            self.cache.put(key, res.body)
        else:
            self._uncached[h] = res.body
        return None

    def _answer(self, key: bytes, h: int, endpoint: str, acct: Accounting) -> Completion | None:
        # An answer the cache does not take (cut at max_tokens) stays for the run: a second
        # request with the same body gets it instead of being paid for again.
        body = self._uncached.get(h)
        if body is None:
            body = self.cache.get(key)
        if body is None:
            return None
        landed = self._landed.pop(h, None)
        if landed is None:
            self.session["cache_hits"] += 1
        else:
            pin, pout, cached, cost = landed
            acct.requests += 1
            acct.tokens_in += pin
            acct.tokens_out += pout
            acct.tokens_cached += cached
            acct.cost += cost
        acct.responses += 1
        return parse_answer(RawResponse(200, {}, body), endpoint)

    def _holder(self, h: int) -> _Live | None:
        for live in reversed(self.live.values()):
            if h in live.keys:
                return live
        return None

    # ---- the status line ----------------------------------------------------------------------

    def status_line(self) -> str:
        states: Counter[str] = Counter()
        done = total = 0
        for live in self.live.values():
            b = live.remote
            states[(b.status if b is not None else "writing" if live.writer else "queued")] += 1
            if b is not None and b.request_counts is not None:
                done += b.request_counts.completed + b.request_counts.failed
                total += b.request_counts.total
        finished = sum(1 for f in self.files.values() if f.done)
        parts = [f"{n} {s}" for s, n in sorted(states.items())]
        if finished:
            parts.append(f"{finished} collected")
        return (f"batches: {', '.join(parts) or 'none'}; lines {done:,}/{total:,} in live "
                f"batches; {self.ledger.totals()['requests']['settled']:,} answers; "
                f"${self.ledger.spent:.4f}")

    def _show(self) -> None:
        line = self.status_line()
        if line != self._last_status and not self.opts.quiet:
            print(line, file=sys.stderr, flush=True)
        self._last_status = line
