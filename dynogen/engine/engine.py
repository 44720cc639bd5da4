"""The task-generation engine: metadata units in, kept tasks out, in bounded memory.

Shape::

    source ──(thread, chunks)──► feeder ──► queue[(unit, variant)] ──► N workers
                                   ▲                                      │ executor (online |
                                   │ window                               │ batch) → parse
                                   └────────── ordered committer ◄────────┘

- The feeder admits a unit only while fewer than ``window`` units are
  uncommitted, so memory is bounded whatever the source's size.
- Workers build the prompt and hand the request to an ``Executor``
  (``dynogen.execute``), which owns limits, budget, cache, retries and the
  mode (sent now, or collected from a Batch API job); then they parse. The
  engine never knows how an answer was obtained. In batch mode the executor
  is first given every first-try request of the source (``plan``), so it can
  submit them ahead while the engine waits on the earliest.
- Units are committed strictly in source order: filtering and run-wide dedup
  run at commit, so which duplicate wins never depends on network timing, and
  two runs with the same inputs write the same ``tasks.jsonl``. Each commit
  appends the unit's tasks, then its journal line; a kill between the two is
  repaired on restart (see ``journal``).

Stopping (budget, signal, fatal API error) stops dispatch; in-flight requests
finish; uncommitted units stay undone for the next resume, and the cache
makes their finished requests free then.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from xxhash import xxh3_64_intdigest

from dynogen.config import Config
from dynogen.dedup import HashSet
from dynogen.engine.lengths import Lengths
from dynogen.errors import (
    BadRequestError,
    BudgetExceeded,
    FatalAPIError,
    RequestFailed,
    Stopped,
    StorageError,
    UserError,
)
from dynogen.execute.base import Accounting, Executor, Request
from dynogen.instances.render import Instance, build_instance
from dynogen.progress import Quiet
from dynogen.prompts.builder import PromptBuilder, render_metadata
from dynogen.prompts.dialect import Dialect, adapt
from dynogen.prompts.tokens import TokenCounter
from dynogen.report import Stats
from dynogen.store.journal import Commits, JsonlWriter, iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.tasks.filter import TaskFilter
from dynogen.tasks.judge import Judge, Verdict
from dynogen.tasks.parsing import parse_tasks
from dynogen.tasks.task import Task
from dynogen.units import Skipped, SkipReason, Unit, is_final, safe_text, skip_reason, transient

__all__ = ["EngineResult", "OnCommit", "Progress", "TaskEngine"]

class Progress(Protocol):
    """What the engine tells a progress display; the display owns formatting."""

    def unit_done(self, n: int = 1) -> None: ...
    def request_done(self, tokens: int, cost_usd: float) -> None: ...


# Told of each unit once its journal line and tasks are written (``units.jsonl``'s record,
# with ``tasks_start``/``tasks_end``): the instance stage builds it while the engine goes on.
OnCommit = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class VariantResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    malformed: int = 0
    invalid: str | None = None
    failed: str | None = None
    acct: Accounting = field(default_factory=Accounting)


@dataclass(slots=True)
class _Job:
    seq: int
    unit: Unit | None
    skip: tuple[str, str, str] | None  # (reason, dataset, config)
    key: str
    remaining: int
    results: dict[str, VariantResult] = field(default_factory=dict)
    # Set once the job is filtered (in source order); written once its judging is done.
    rec: dict[str, Any] | None = None
    kept: list[Task] = field(default_factory=list)
    judging: int = 0
    verdicts: dict[int, Verdict | str | None] = field(default_factory=dict)
    judge_acct: Accounting = field(default_factory=Accounting)


@dataclass(slots=True)
class EngineResult:
    stop_reason: str | None  # None: finished; "budget" | "interrupted" | "fatal"
    error: BaseException | None
    committed: int
    resumed: int
    wall_seconds: float
    session: dict[str, Any]


def _key_hash(key: str) -> int:
    return xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"))


def _take(it: Iterator[Unit | Skipped], n: int) -> list[Unit | Skipped]:
    return list(itertools.islice(it, n))


class TaskEngine:
    """Runs task generation for one run directory.

    Its parts are handed in by the composition root (``dynogen.compose.make_engine``):

    >>> async with open_executor(cfg, stage="tasks", ...) as stack:
    ...     engine = make_engine(cfg, stack, counter, rundir)
    ...     result = await engine.run(FolderSource("metadata/"))
    """

    def __init__(
        self,
        config: Config,
        *,
        executor: Executor,
        counter: TokenCounter,
        rundir: RunDir,
        prompts: PromptBuilder,
        task_filter: TaskFilter,
        judge: Judge | None = None,
        spend: JsonlWriter | None = None,
        progress: Progress | None = None,
        stats: Stats | None = None,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.cfg = config
        self.on_commit = on_commit
        self.executor = executor
        self.counter = counter
        self.prompts = prompts
        self.rundir = rundir
        self.progress: Progress = progress or Quiet()
        self.stats = stats or Stats(retry_skipped=config.retry_skipped)
        self.filter = task_filter
        self.dialect = Dialect(format=config.response_format)
        self.workers = max(1, executor.concurrency)
        self.window = max(256, 2 * self.workers)  # workers = limiter.max_senders: up to 4,096
        self._queue: asyncio.Queue[tuple[_Job, str] | None] = asyncio.Queue(
            maxsize=2 * self.workers)
        self._jobs: dict[int, _Job] = {}
        self.judge = judge
        self._tg: asyncio.TaskGroup | None = None
        self._next_filter = 0
        self._next_commit = 0
        self._committed = 0
        self._resumed = 0
        self._advance = asyncio.Event()
        self._stop_reason: str | None = None
        self._error: BaseException | None = None
        self._done_keys = HashSet()  # hashes of committed keys: 8 bytes a unit on resume
        self._fed_keys = HashSet()
        self._repeats: dict[str, int] = {}
        self.session: Counter[str] = Counter()
        self.lengths = Lengths()  # completion lengths per variant: calibration.json
        self._load_journal()
        self._units = JsonlWriter(rundir.units)
        self._tasks = JsonlWriter(rundir.tasks)
        # Commit order on disk: the spend journal and tasks first, the unit's line last.
        self._journals = Commits(self._units, data=[self._tasks],
                                 side=[spend] if spend is not None else [],
                                 durability=config.durability)

    # ----------------------------------------------------------------- resume
    def _load_journal(self) -> None:
        for rec in iter_jsonl(self.rundir.units):
            self.stats.add_unit(rec)
            # failed and retryable units, and skips --retry-skipped names, are redone
            if is_final(rec, self.cfg.retry_skipped):
                self._done_keys.add(_key_hash(str(rec.get("key"))))
        for rec in iter_jsonl(self.rundir.tasks):
            self.filter.remember(rec)

    # ------------------------------------------------------------------ control
    def stop(self, reason: str, error: BaseException | None = None) -> None:
        """Stop dispatch; in-flight requests finish. Safe to call repeatedly."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._error = error
        self.executor.stop()
        self._advance.set()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    # ---------------------------------------------------------------------- run
    async def run(self, source: Iterable[Unit | Skipped], *,
                  plan: Iterable[Unit | Skipped] | None = None) -> EngineResult:
        """Process ``source``; ``plan`` is a second pass over the same source that a
        batch executor reads ahead (an online executor ignores it)."""
        t0 = time.perf_counter()
        if plan is not None:
            self.executor.plan(self.first_requests(plan))
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for _ in range(self.workers):
                    tg.create_task(self._worker())
                tg.create_task(self._feed(source))
        finally:
            self._flush()
        self.session.update(self.executor.session)
        return EngineResult(self._stop_reason, self._error, self._committed, self._resumed,
                            time.perf_counter() - t0, dict(self.session))

    async def _feed(self, source: Iterable[Unit | Skipped]) -> None:
        it = iter(source)
        seq = 0
        # Chunks grow 1, 2, 4, ... 64: reading a unit may open its rows (the data
        # policies' check), so the first requests go out after one unit, not 64.
        size = 1
        while not self.stopping:
            chunk = await asyncio.to_thread(_take, it, size)
            size = min(64, 2 * size)
            if not chunk:
                break
            for item in chunk:
                if self.stopping:
                    break
                key = self._journal_key(item)
                if _key_hash(key) in self._done_keys:
                    self._resumed += 1
                    self.progress.unit_done()
                    continue
                while seq - self._next_commit >= self.window and not self.stopping:
                    self._advance.clear()
                    await self._advance.wait()
                if self.stopping:
                    break
                job = self._admit(seq, item, key)
                seq += 1
                if job.remaining == 0:
                    self._try_commit()
                else:
                    for v in self.cfg.variants:
                        await self._queue.put((job, v))
        # Only a feeder that ran out of work releases the workers; one that failed or was
        # cancelled leaves that to the TaskGroup, which cancels them (a put into a full
        # queue nobody drains would hang there).
        for _ in range(self.workers):
            await self._queue.put(None)

    def _journal_key(self, item: Unit | Skipped) -> str:
        """One journal key per source item, the same on every resume.

        The first item with a key claims it; a repeat, or a source's own
        "duplicate" marker (which may come before the unit it refers to), gets
        ``key#n``. Sharing the unit's key would let a marker committed first hide
        the unit (never processed, or lost on resume) and flip its status in the report.
        """
        marker = isinstance(item, Skipped) and item.reason == SkipReason.DUPLICATE
        if not marker and self._fed_keys.add(
                _key_hash(item.key)):
            return item.key
        n = self._repeats[item.key] = self._repeats.get(item.key, 0) + 1
        return f"{item.key}#{n}"

    def first_requests(self, source: Iterable[Unit | Skipped]) -> Iterator[Request]:
        """Every first-try request ``run`` would send for ``source``, in order.

        Built with its own prompt builder (a batch executor may consume this in a
        thread) and the run's starting dialect; units already done are left out.
        """
        prompts = PromptBuilder(self.cfg, self.counter)
        for item in source:
            if isinstance(item, Skipped) or skip_reason(item) is not None:
                continue
            if _key_hash(item.key) in self._done_keys:
                continue
            for v in self.cfg.variants:
                yield self._request(prompts, item, v, self.cfg.max_tokens_for(v),
                                    self.dialect)

    @staticmethod
    def _request(prompts: PromptBuilder, unit: Unit, variant: str, max_tokens: int,
                 dialect: Dialect) -> Request:
        req = prompts.request(unit, variant, max_tokens=max_tokens, dialect=dialect)
        return Request(orjson.dumps(req.body), req.prompt_tokens, req.max_tokens,
                       variant=variant)

    def _admit(self, seq: int, item: Unit | Skipped, key: str) -> _Job:
        skip: tuple[str, str, str] | None
        if key != item.key:
            skip = (SkipReason.DUPLICATE, item.dataset, item.config)
        elif isinstance(item, Skipped):
            skip = (item.reason, item.dataset, item.config)
        else:
            reason = skip_reason(item)
            skip = (reason, item.dataset, item.config) if reason else None
        unit = item if isinstance(item, Unit) and skip is None else None
        job = _Job(seq, unit, skip, key, 0 if skip else len(self.cfg.variants))
        self._jobs[seq] = job
        return job

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            job, variant = item
            if self.stopping:
                continue  # abandoned: the unit stays uncommitted and is redone on resume
            assert job.unit is not None
            res = await self._execute(job.unit, variant)
            if res is None:
                continue
            job.results[variant] = res
            job.remaining -= 1
            if job.remaining == 0:
                self._try_commit()

    # ------------------------------------------------------------- one request
    async def _execute(self, unit: Unit, variant: str) -> VariantResult | None:
        """One variant's answer: sent (or cached), length-retried, parsed.

        Returns ``None`` only when the run stopped before an answer was had.
        """
        res = VariantResult()
        max_tokens = self.cfg.max_tokens_for(variant)
        while True:
            dialect = self.dialect
            req = self._request(self.prompts, unit, variant, max_tokens, dialect)
            try:
                comp = await self.executor.complete(req, res.acct)
            except RequestFailed as e:
                res.failed = e.reason
                return res
            except Stopped:
                return None
            except BadRequestError as e:
                # The server refused a parameter: adapt once (other workers may have
                # already), then re-send; a 400 nothing answers stops the run.
                if self.dialect is not dialect:
                    continue
                nxt = adapt(dialect, str(e))
                if nxt is None:
                    self.stop("fatal", e)
                    return None
                self.dialect = nxt
                self.session[f"adapted:{nxt.describe()}"] += 1
                continue
            except (FatalAPIError, UserError) as e:
                # UserError here: a request larger than the TPM limit can ever admit.
                self.stop("fatal", e)
                return None
            except BudgetExceeded as e:
                self.stop("budget", e)
                return None
            if comp.finish_reason == "length":
                if max_tokens < self.cfg.max_tokens_retry:
                    max_tokens = self.cfg.max_tokens_retry
                    self.session["length_retries"] += 1
                    continue
                # Cut even on the retry: counted as cut (its length is unknown).
                self.lengths.observe(variant, comp.usage, comp.finish_reason)
                res.invalid = "truncated_at_max_tokens"
                return res
            if comp.finish_reason == "content_filter":
                res.invalid = "content_filter"
                return res
            # An answer cut at max_tokens and asked again is counted once, at its full length.
            self.lengths.observe(variant, comp.usage, comp.finish_reason)
            parsed = parse_tasks(comp.content)
            if parsed.error:
                res.invalid = parsed.error
            res.records = parsed.tasks
            res.malformed = parsed.malformed
            return res

    # ------------------------------------------------------------------ commit
    def _try_commit(self) -> None:
        """Filter finished jobs in source order (so run-wide dedup is deterministic), send
        their tasks to the judge if asked, and write them in source order once judged."""
        while True:
            job = self._jobs.get(self._next_filter)
            if job is None or job.remaining:
                break
            self._next_filter += 1
            self._prepare(job)
        advanced = False
        while True:
            job = self._jobs.get(self._next_commit)
            if job is None or job.rec is None or job.judging:
                break
            del self._jobs[self._next_commit]
            self._commit(job)
            self._next_commit += 1
            advanced = True
        if advanced:
            self._advance.set()

    def _prepare(self, job: _Job) -> None:
        rec: dict[str, Any] = {"key": safe_text(job.key)}
        if job.skip is not None:
            reason, dataset, config = job.skip
            # A transient reason (the Hub busy or away) is no verdict on the unit: redo it.
            rec.update(dataset=safe_text(dataset), config=safe_text(config),
                       status="retryable" if transient(reason) else "skipped", reason=reason)
        else:
            assert job.unit is not None
            filtered, job.kept = self._filter(job.unit, job.results)
            rec.update(filtered)
            if self.judge is not None and job.kept and self._tg is not None:
                job.judging = len(job.kept)
                unit = job.unit  # the metadata is the same for each of its tasks: render once
                meta = render_metadata(dataset=unit.dataset, config=unit.config,
                                       description=unit.description, fields=unit.fields,
                                       counter=self.counter, budget=self.cfg.metadata_token_budget)
                for i in range(len(job.kept)):
                    self._tg.create_task(self._judge_one(job, i, meta))
        job.rec = rec

    async def _judge_one(self, job: _Job, i: int, meta: str) -> None:
        assert self.judge is not None and job.unit is not None
        unit, task = job.unit, job.kept[i]
        try:
            if not self.stopping:
                job.verdicts[i] = await self.judge.verdict(
                    meta, task, _sample_instances(unit, task), job.judge_acct, self.dialect,
                    [f.name for f in unit.fields])
        except RequestFailed as e:
            job.verdicts[i] = e.reason
        except Stopped:
            pass
        except (FatalAPIError, UserError) as e:
            self.stop("fatal", e)
        except BudgetExceeded as e:
            self.stop("budget", e)
        finally:
            job.judging -= 1
            if self.stopping:
                job.judging = max(job.judging, 1)  # never written: redone on resume
            elif job.judging == 0:
                self._try_commit()

    def _commit(self, job: _Job) -> None:
        rec = job.rec
        assert rec is not None
        if job.skip is None:
            rec["tasks_start"] = self._tasks.tell()  # the journal line names its bytes
            self._write_tasks(job, rec)
            rec["tasks_end"] = self._tasks.tell()
        self._units.write(rec)
        try:
            self._journals.commit()
        except StorageError as e:  # disk full or failing: stop; the unit is redone on resume
            self.stop("fatal", e)
            return
        self.stats.add_unit(rec)
        self._committed += 1
        self.progress.unit_done()
        if self.on_commit is not None and rec.get("tasks_kept"):
            self.on_commit(rec)

    def _write_tasks(self, job: _Job, rec: dict[str, Any]) -> None:
        """Kept tasks, less those the judge found invalid (each with the judge's reason)."""
        invalid: list[dict[str, str]] = []
        dropped: Counter[str] = Counter(rec.get("dropped") or {})
        for i, task in enumerate(job.kept):
            verdict = job.verdicts.get(i) if self.judge is not None else None
            if isinstance(verdict, Verdict) and not verdict.valid:
                dropped["judge_invalid"] += 1
                invalid.append({"id": task.id, "reason": verdict.reason})
                continue
            if self.judge is not None and not isinstance(verdict, Verdict):
                # No verdict (unreadable answer, or retries ran out): kept, and counted.
                self.session["judge_no_verdict"] += 1
                rec.setdefault("judge_no_verdict", 0)
                rec["judge_no_verdict"] += 1
            self._tasks.write(task.to_dict())
        if invalid:
            rec["judge_invalid"] = invalid
            rec["tasks_kept"] = rec.get("tasks_kept", 0) - len(invalid)
        if dropped:
            rec["dropped"] = dict(dropped)
        a = job.judge_acct
        if a.requests or a.responses:
            for k, v in (("requests", a.requests), ("responses", a.responses),
                         ("tokens_in", a.tokens_in), ("tokens_out", a.tokens_out),
                         ("tokens_cached", a.tokens_cached)):
                rec[k] = rec.get(k, 0) + v
            rec["cost_micro_usd"] = rec.get("cost_micro_usd", 0) + round(a.cost * 1e6)
            rec["judge_requests"] = a.requests

    def _filter(self, unit: Unit,
                results: dict[str, VariantResult]) -> tuple[dict[str, Any], list[Task]]:
        unit_seen: set[int] = set()
        dropped: Counter[str] = Counter()
        invalid: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        kept_all: list[Task] = []
        for v in self.cfg.variants:
            r = results[v]
            a = r.acct
            totals.update(requests=a.requests, responses=a.responses, tokens_in=a.tokens_in,
                          tokens_out=a.tokens_out, tokens_cached=a.tokens_cached)
            totals["cost_micro_usd"] += round(a.cost * 1e6)
            if r.failed:
                failed[r.failed] += 1
                continue
            if r.invalid:
                invalid[r.invalid] += 1
            if r.malformed:
                dropped["malformed_task"] += r.malformed
            totals["tasks_generated"] += len(r.records) + r.malformed
            kept, drops = self.filter.filter(unit, v, r.records, unit_seen)
            dropped.update(drops)
            totals["tasks_kept"] += len(kept)
            kept_all.extend(kept)
        all_failed = len(failed) > 0 and sum(failed.values()) == len(self.cfg.variants)
        rec: dict[str, Any] = {
            "dataset": unit.dataset,
            "config": unit.config,
            "status": "failed" if all_failed else "done",
            "data_ref": unit.data_ref,
            "splits": list(unit.splits),
            "license": unit.license,
            **totals,
        }
        if all_failed:
            rec["reason"] = failed.most_common(1)[0][0]
        if dropped:
            rec["dropped"] = dict(dropped)
        if invalid:
            rec["invalid"] = dict(invalid)
        if failed:
            rec["failed"] = dict(failed)
        return rec, kept_all

    def _flush(self) -> None:
        try:
            self._journals.sync()
        except StorageError as e:
            self.stop("fatal", e)

    def close(self) -> None:
        self._journals.close()


def _sample_instances(unit: Unit, task: Task, n: int = 3) -> list[dict[str, Any]]:
    """Up to ``n`` instances of ``task`` built from the unit's sample rows, for the judge."""
    labels = {f.name: f.labels for f in unit.fields if f.labels}
    out: list[dict[str, Any]] = []
    for row in unit.samples:
        inst = build_instance(task, row, labels)
        if isinstance(inst, Instance):
            out.append({"input": inst.input, "output": inst.output})
            if len(out) == n:
                break
    return out
