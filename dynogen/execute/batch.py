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
server's files (by name) and batches (by the run's metadata).

Which API: ``remote`` (``batch_remote.BatchRemote``, OpenAI's Files and Batches,
by default; ``anthropic_batches.AnthropicBatches`` for Message Batches) says
whether requests are uploaded first (``uploads``) and whether a batch must be
found again without metadata (``intents``: an ``intent`` is journaled before
each create, a file whose create left no id is looked up before anything is
submitted again, and stays unsubmitted while the lookup is undecided).
``figures`` replaces a request's prompt count by the ledger's upper bound when
the provider's tokenizer is not at hand. A batch the user
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynogen.config import BatchSettings, ServerSettings
from dynogen.dedup import HashSet
from dynogen.errors import (
    APIError,
    BudgetExceeded,
    ConfigError,
    DynogenError,
    FatalAPIError,
    RequestFailed,
    RetryableError,
    Stopped,
)
from dynogen.execute.base import Accounting, Request
from dynogen.execute.batch_admin import live_status_line
from dynogen.execute.batch_answers import Answers, Meter
from dynogen.execute.batch_files import (
    MAX_RESULT_LINE,
    Caps,
    iter_input_lines,
    key_hash,
    parse_result_line,
)
from dynogen.execute.batch_inputs import InputFiles, LiveFile
from dynogen.execute.batch_remote import BatchRemote
from dynogen.execute.batch_state import TERMINAL, BatchJournal, FileState
from dynogen.execute.client import Completion
from dynogen.execute.ledger import Ledger
from dynogen.store.cache import RequestCache, request_key
from dynogen.store.journal import JsonlWriter

__all__ = ["BatchExecutor", "BatchOptions"]

# Line failures worth another round: the server's fault or the batch's, not the request's.
_RETRYABLE_HTTP = ("http_408", "http_409", "http_429", "http_5")


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


def _take(it: Iterator[Any], n: int) -> list[Any]:
    return list(itertools.islice(it, n))


def _unexpected(doing: str, e: Exception) -> FatalAPIError:
    return FatalAPIError(f"batch mode failed while {doing} ({type(e).__name__}: {e}); the "
                         "batches already submitted are journaled: run the same command again "
                         "to resume")


class BatchExecutor:
    """Answers requests from Batch API jobs; see the module docstring.

    >>> ex = BatchExecutor(cfg.batch, cfg.server, ledger=Ledger(price, 5.0, batch=True),
    ...                    cache=cache, state_dir=out)
    >>> ex.plan(requests); comp = await ex.complete(requests[0], Accounting())
    """

    def __init__(self, batch: BatchSettings, server: ServerSettings, *, ledger: Ledger,
                 cache: RequestCache | None, state_dir: Path | None, max_retries: int = 6,
                 quiet: bool = False, concurrency: int = 1024,
                 spend: JsonlWriter | None = None, meter: Meter | None = None,
                 stage: str = "tasks", options: BatchOptions | None = None, client: Any = None,
                 limiter: Any = None, transport: Any = None,
                 remote: Callable[[str, BatchJournal], Any] | None = None,
                 figures: Callable[[Request], tuple[int, int]] | None = None) -> None:
        # ``limiter`` and ``transport`` belong to online sending: a batch job has no
        # per-minute pacing here, and it reaches the server through the provider's SDK.
        if state_dir is None:
            raise ConfigError("--mode batch needs a directory for its input files and journal")
        self.journal = BatchJournal(state_dir).open()
        run_id = self.journal.run_id(create=True)
        assert run_id is not None
        try:
            if remote is not None:
                self.remote = remote(run_id, self.journal)
            else:
                self.remote = BatchRemote(server.base_url, server.api_key.get(), run_id=run_id,
                                          client=client, max_retries=max_retries,
                                          timeout=server.request_timeout)
            self.journal.check_provider(self.remote.provider)
        except BaseException:
            self.journal.close()
            raise
        self.figures = figures
        caps = Caps(requests=batch.batch_max_requests,
                    bytes=getattr(self.remote, "file_bytes", Caps().bytes))
        opts = options or BatchOptions(
            poll_seconds=batch.poll_seconds, rounds=batch.batch_rounds, caps=caps,
            enqueued_tokens=batch.batch_enqueued_tokens, quiet=quiet)
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
        self.session: Counter[str] = Counter()
        self.inputs = InputFiles(self.journal, self.opts.caps, ledger, self.session)
        self.files = self.inputs.files   # the journal's view of every file of the run
        self.live = self.inputs.live     # files not yet collected, in the order written
        self._planned = HashSet()
        self._failures: dict[int, str] = {}
        self.answers = Answers(self.cache, ledger, spend, meter, stage, self.session)
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

    def in_flight(self) -> dict[str, int]:
        states = [lv.state for lv in list(self.live.values())]
        return {"files": len(states),
                "batches": sum(1 for s in states if s is not None and s.batch_id)}

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
        except Exception as e:  # a bug or a full disk: fail loudly, never leave waiters hanging
            self._fail_all(_unexpected("reading the plan", e))
        finally:
            self._planning.set()
            self._planned_more.set()

    async def _plan_all(self, requests: Iterable[Request]) -> None:
        await self._start()
        it = iter(requests)
        while not self._stopping and self._fatal is None and not self.user_cancelled:
            chunk = await asyncio.to_thread(_take, it, 256)
            if not chunk:
                break
            for req in chunk:
                req = self._bounded(req)
                key = request_key(req.body)
                h = key_hash(key)
                if not self._planned.add(h) or self._known(key, h):
                    continue
                if not self.inputs.write(("plan", req.endpoint), key, h, req, 0, None):
                    # Out of budget for now: the rest reach the pool through complete()
                    # once settled batches have freed money.
                    self.session["batch_plan_stopped_by_budget"] += 1
                    self.inputs.close_kind("plan")
                    await self._submit_pending()
                    return
            self._planned_more.set()
            await self._submit_pending()
        self.inputs.close_kind("plan")
        await self._submit_pending()

    def _bounded(self, req: Request) -> Request:
        """``req`` reserved at the ledger's upper bound of its prompt (``figures``)."""
        if self.figures is None:
            return req
        bound = self.figures(req)[1]
        return req if bound == req.prompt_tokens else dataclasses.replace(
            req, prompt_tokens=bound)

    async def complete(self, req: Request, acct: Accounting) -> Completion:
        await self._start()
        req = self._bounded(req)
        key = request_key(req.body)
        h = key_hash(key)
        while True:
            comp = self.answers.take(key, h, req.endpoint, acct)
            if comp is not None:
                return comp
            if self._fatal is not None:
                raise self._fatal
            reason = self._failures.get(h)
            if reason is not None:
                raise RequestFailed(reason, APIError(f"batch request failed: {reason}"))
            live = self.inputs.holder(h)
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
        for live in list(self.inputs.open.values()):
            if live.writer is not None:
                live.writer.discard()
        self.inputs.open.clear()
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
                live = LiveFile(st.name, st.endpoint, st.round, st.parent)
                live.state = st
                path = self.journal.local(st.name)
                if path.exists():
                    for key, *_ in iter_input_lines(path):
                        live.keys.add(key_hash(key))
                # Submitted by an earlier session: billed whatever the budget says now.
                # One not yet submitted waits for money like any other.
                with contextlib.suppress(BudgetExceeded):
                    live.reservation = self.ledger.reserve(st.prompt_tokens, st.max_tokens,
                                                           force=st.batch_id is not None)
                self.live[st.name] = live
                self.session["batch_resumed"] += 1
            await self._find_lost()
            self._started = True
            self._poller = asyncio.create_task(self._poll_loop())

    async def _find_lost(self) -> None:
        """Adopt uploads and batches a kill kept out of the journal, so none is made twice."""
        if self.remote.uploads:
            no_file = {n for n, lv in self.live.items() if lv.state and not lv.state.file_id}
            for name, file_id in (await self.remote.find_files(no_file)).items():
                self.journal.record("upload", name, file_id=file_id)
                self.files[name].file_id = file_id
                self.session["batch_lost_uploads_found"] += 1
        no_batch = {n: lv.state for n, lv in self.live.items() if lv.state
                    and (lv.state.file_id or not self.remote.uploads)
                    and not lv.state.batch_id
                    and (lv.state.intent_at is not None or not self.remote.intents)}
        if no_batch:
            await self._adopt(no_batch)

    async def _adopt(self, lost: dict[str, FileState]) -> None:
        """Ask the remote which batches the files in ``lost`` made; journal what it finds.
        A file it cannot decide yet (``None``) stays unresolved: nothing is submitted for it."""
        found = await self.remote.find_batches(lost)
        for name in lost:
            live = self.live.get(name)
            if live is not None:
                live.unresolved = name in found and found[name] is None
        for name, batch_id in found.items():
            if batch_id is None:
                self.session["batch_lost_unresolved"] += 1
                continue
            self.journal.record("batch", name, batch_id=batch_id)
            self.files[name].batch_id = batch_id
            self.files[name].status = "validating"
            self.session["batch_lost_batches_found"] += 1

    # ---- writing input files ------------------------------------------------------------------

    def _known(self, key: bytes, h: int) -> bool:
        """Answered already, or in a batch that will answer it."""
        if self.inputs.holder(h) is not None:
            return True
        if self.answers.has(key, h):
            self.session["batch_cache_skips"] += 1
            return True
        return False

    def _pool(self, key: bytes, h: int, req: Request) -> LiveFile | None:
        """Put an unplanned request into the pool file; ``None`` if the budget cannot take it."""
        if not self.inputs.write(("pool", req.endpoint), key, h, req, 0, None):
            return None
        self.session["batch_unplanned"] += 1
        self._wake.set()
        return self.inputs.open[("pool", req.endpoint)]

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

    async def _submit_pending(self) -> None:
        """Upload and create batches for closed files, in order, while money and the enqueued
        cap allow. A 4xx is fatal: it is raised here and to every waiter."""
        async with self._submit_lock:
            for live in list(self.live.values()):
                st = live.state
                if st is None or st.batch_id is not None or self._stopping:
                    continue
                if self.user_cancelled:
                    # Cancelled by the user: nothing new is submitted; its requests fail
                    # now (counted) and a later resume sends them.
                    live.error = RequestFailed("batch_cancelled",
                                               APIError("the run's batches were cancelled"))
                    live.done.set()
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
                if cap is not None and self.inputs.enqueued() + st.prompt_tokens > cap and any(
                        lv.submitted for lv in self.live.values()):
                    return
                if live.unresolved:
                    continue  # the poller asks the remote again
                if self.remote.intents and st.intent_at is not None:
                    # An earlier create may have made a batch whose id was never seen.
                    await self._adopt({st.name: st})
                    if st.batch_id is not None:
                        self._wake.set()
                        continue
                    if live.unresolved:
                        continue
                try:
                    if st.file_id is None and self.remote.uploads:
                        st.file_id = await self.remote.upload(self.journal.local(st.name),
                                                              st.name)
                        self.journal.record("upload", st.name, file_id=st.file_id)
                        self.session["batch_uploads"] += 1
                    if self.remote.intents:
                        self.journal.record("intent", st.name)
                        st.intent_at = time.time()
                    st.batch_id = await self.remote.create(st.file_id, st.name, st.endpoint,
                                                           st.round)
                except FatalAPIError as e:
                    self._fail_all(e)
                    raise
                except RetryableError:
                    if not self.remote.intents:
                        raise
                    # The create may or may not have made a batch: the next try looks for
                    # it first (its intent is journaled), and submits only if there is none.
                    self.session["batch_create_errors"] += 1
                    continue
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
            except Exception as e:
                self._fail_all(_unexpected("polling batches", e))
                return
            delay = low if changed else min(self.opts.poll_seconds, delay * 2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _tick(self) -> bool:
        now = time.monotonic()
        for slot, live in list(self.inputs.open.items()):
            if slot[0] == "pool" and now - live.opened >= self.opts.poll_seconds:
                self.inputs.close_file(slot)
        undecided = {lv.name: lv.state for lv in self.live.values()
                     if lv.unresolved and lv.state is not None and lv.state.batch_id is None}
        if undecided:
            await self._adopt(undecided)
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

    async def _collect(self, live: LiveFile, batch: Any) -> None:
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
                    if live.reservation is None:
                        live.reservation = self.ledger.reserve(0, 0, force=True)
                    why, cost = self.answers.land(res, live.reservation, live.endpoint)
                    live.usd += cost
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
            if h in answered or self.answers.has(key, h):
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
            self.inputs.write_line(follow_slot, key, h, line, pt, mt, st)
        self.inputs.close_file(follow_slot)
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

    # ---- the status line ----------------------------------------------------------------------

    def status_line(self) -> str:
        return live_status_line([(lv.remote, lv.writer is not None) for lv in self.live.values()],
                                sum(1 for f in self.files.values() if f.done), self.ledger)

    def _show(self) -> None:
        line = self.status_line()
        if line != self._last_status and not self.opts.quiet:
            print(line, file=sys.stderr, flush=True)
        self._last_status = line
