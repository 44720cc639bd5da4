"""``dynogen run`` and ``dynogen build``: a run directory from a source, built from the
composition root's parts (``dynogen.compose``), and the report every run ends with.

Everything that can be checked before money is spent is checked first: the
config, the model's price, the API key, the source, the output directory, and
that the server answers at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from dynogen.commands.build import switch_engine
from dynogen.commands.watch import Watch, close_run_log, open_run_log, watching
from dynogen.compose import (
    check_key,
    counter_for,
    gated,
    hub_token,
    local_server,
    make_engine,
    open_row_reader,
    open_sources,
    open_stack,
    preflight,
    resolve_layout,
    resolve_price,
    run_identity,
    signals,
)
from dynogen.config import Config
from dynogen.dedup import DedupSeed, HashSet
from dynogen.engine import max_tokens as autosize
from dynogen.engine.calibration import write_calibration
from dynogen.engine.engine import EngineResult, TaskEngine
from dynogen.engine.lengths import Lengths
from dynogen.errors import BudgetExceeded, DynogenError, StorageError
from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import Price
from dynogen.execute.transport import Transport
from dynogen.instances.build import InstanceBuilder, abuild_instances
from dynogen.io.row_reader import RowReader
from dynogen.io.sources import open_source
from dynogen.outcome import EXIT, RunOutcome, exit_code
from dynogen.progress import Bar, Plain, Quiet, make_progress
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.tokens import TokenCounter
from dynogen.report import Stats
from dynogen.store.journal import iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.units import Skipped, Unit
from dynogen.version import __version__

__all__ = ["arun"]


def _paid(rundir: RunDir) -> dict[str, Any]:
    """What was paid over the whole run, every session and kill included (spend.jsonl)."""
    out = {"requests": 0, "usd": 0.0, "in": 0, "out": 0, "cached": 0, "unconfirmed": 0}
    for r in iter_jsonl(rundir.path / "spend.jsonl"):
        out["requests"] += 1
        out["usd"] += float(r.get("usd") or 0.0)
        for k in ("in", "out", "cached"):
            out[k] += int(r.get(k) or 0)
        out["unconfirmed"] += bool(r.get("unconfirmed"))
    return out



async def arun(
    cfg: Config,
    *,
    source: Iterable[Unit | Skipped] | None = None,
    transport: Transport | None = None,
    handle_signals: bool = False,
    build: bool = True,
    seed: DedupSeed | None = None,
    status_also: Path | None = None,
) -> RunOutcome:
    """Generate tasks (and, unless ``build=False``, instances) into ``cfg.out``.

    ``seed``: task and instance hashes taken before this run (a collection's
    earlier versions), so what they hold counts as a duplicate here.
    ``status_also``: another directory that gets ``status.json`` (a growing collection).
    """
    cfg = cfg.validate()
    t0 = time.perf_counter()
    if cfg.local:
        async with local_server(cfg) as local_cfg:
            return await arun(local_cfg, source=source, transport=transport,
                              handle_signals=handle_signals, build=build, seed=seed,
                              status_also=status_also)
    price = resolve_price(cfg)
    cfg = resolve_layout(cfg, price)  # prompt_layout auto: the run's own, else the server's
    check_key(cfg)
    src, plan = open_sources(cfg, source, plan=cfg.mode == "batch")
    cfg, sizing = autosize.plan(cfg)  # --max-tokens auto: recorded or from a calibration
    rundir = RunDir(cfg.out).open(cfg, identity=run_identity(cfg))  # takes the write lock
    # Data policies before any request is sent; a batch plan reads the same units, so it
    # sees the same policies.
    hf_cache = str(rundir.path / ".hf-cache")
    src = gated(cfg, src, cache_dir=hf_cache)
    if plan is not None:
        plan = gated(cfg, plan, cache_dir=hf_cache)
    try:
        return await _arun_locked(cfg, rundir, src, price, transport, handle_signals, build, t0,
                                  plan=plan, counted=source is None, seed=seed, sizing=sizing,
                                  status_also=status_also)
    finally:
        rundir.close()  # the lock: the next writer may start


async def _arun_locked(cfg: Config, rundir: RunDir, src: Iterable[Unit | Skipped], price: Price,
                       transport: Transport | None, handle_signals: bool, build: bool,
                       t0: float, *, plan: Iterable[Unit | Skipped] | None,
                       counted: bool, seed: DedupSeed | None = None,
                       sizing: autosize.Sizing | None = None,
                       status_also: Path | None = None) -> RunOutcome:
    log = open_run_log(rundir.path, name="run", secrets=(cfg.api_key.get(), hub_token().get()))
    try:
        log.info("start: dynogen %s, run %s%s; settings %s", __version__, rundir.path,
                 " (resumed)" if rundir.resumed else "",
                 orjson.dumps(cfg.public_dict()).decode())  # public_dict holds no secret
        outcome = await _arun_watched(cfg, rundir, src, price, transport, handle_signals,
                                      build, t0, log, plan=plan, counted=counted, seed=seed,
                                      sizing=sizing, status_also=status_also)
        log.info("end (exit %d): %s", outcome.exit_code, outcome.message)
        return outcome
    except BaseException as e:
        log.error("end: %s: %s", type(e).__name__, e)
        raise
    finally:
        close_run_log(log)


async def _arun_watched(cfg: Config, rundir: RunDir, src: Iterable[Unit | Skipped],
                        price: Price, transport: Transport | None, handle_signals: bool,
                        build: bool, t0: float, log: logging.Logger, *,
                        plan: Iterable[Unit | Skipped] | None, counted: bool,
                        seed: DedupSeed | None, sizing: autosize.Sizing | None,
                        status_also: Path | None) -> RunOutcome:
    await preflight(cfg, transport)  # the price and key were checked before the lock

    spent_before = _paid(rundir)["usd"]
    budget_left = None if cfg.budget_usd is None else max(0.0, cfg.budget_usd - spent_before)
    counter = counter_for(cfg, price)
    stats = Stats(retry_skipped=cfg.retry_skipped)
    progress = make_progress(cfg.quiet, "tasks", rpm=cfg.rpm, tpm=cfg.tpm,
                             budget=cfg.budget_usd, spent_before=spent_before)
    watch = Watch((rundir.path, *((status_also,) if status_also else ())), "run", stats, log,
                  budget_usd=cfg.budget_usd, spent_before=spent_before, rpm=cfg.rpm,
                  tpm=cfg.tpm)
    counting = None
    if counted and cfg.source != "hub" and not cfg.quiet:
        # Units are counted on the other core while the run starts, for the ETA.
        def count() -> None:
            total = sum(1 for _ in open_source(cfg.source, limit=cfg.limit))
            watch.total_units = total
            progress.set_total(total)

        counting = asyncio.create_task(asyncio.to_thread(count))
    async with watching(watch):
        result, ledger, cache_entries, engine, cfg, sizing = await _stages(
            cfg, rundir, src, price, transport, handle_signals, build, plan=plan, seed=seed,
            sizing=sizing, counter=counter, stats=stats, progress=progress, watch=watch,
            counting=counting, budget_left=budget_left)
        watch.stage = result.stop_reason or "done"
        if result.error is not None:
            watch.note_error(str(result.error))
    return _finish(cfg, rundir, stats, result, ledger, spent_before, cache_entries,
                   time.perf_counter() - t0, lengths=engine.lengths, sizing=sizing)


async def _stages(cfg: Config, rundir: RunDir, src: Iterable[Unit | Skipped], price: Price,
                  transport: Transport | None, handle_signals: bool, build: bool, *,
                  plan: Iterable[Unit | Skipped] | None, seed: DedupSeed | None,
                  sizing: autosize.Sizing | None, counter: TokenCounter, stats: Stats,
                  progress: Bar | Plain | Quiet, watch: Watch, counting: asyncio.Task[None] | None,
                  budget_left: float | None,
                  ) -> tuple[EngineResult, Ledger, int, TaskEngine, Config,
                             autosize.Sizing | None]:
    """The task stage on the composition root's stack, and the instance stage beside it.

    Units are built as the task stage commits them (in commit order, so the outputs
    are those of a build after it), unless ``--max-share`` needs every task first:
    then the build runs after. The first Ctrl-C or SIGTERM stops both.
    """
    hf_cache = str(rundir.path / ".hf-cache")
    if build:  # this build writes instances.jsonl: a sharded build's instances/ would be read too
        switch_engine(rundir, "local")
    reader = open_row_reader(cfg, cache_dir=hf_cache)
    instances = _Instances(cfg, rundir, stats, reader, seed.instances if seed else None,
                           build=build, overlap=cfg.max_share is None or cfg.max_share >= 1.0)
    engine: TaskEngine | None = None

    def stop() -> None:
        instances.stop()
        if engine is not None:
            engine.stop("interrupted")

    try:
        with signals(stop, enabled=handle_signals):
            try:
                async with open_stack(
                    cfg, price=price, stage="tasks",
                    budget_usd=budget_left if budget_left is None or budget_left > 0 else 1e-12,
                    cache_path=Path(cfg.cache_path) if cfg.cache_path
                    else rundir.path / "cache.sqlite",
                    spend_path=rundir.path / "spend.jsonl", state_dir=rundir.path,
                    transport=transport, meter=progress,
                ) as stack:
                    watch.attach(ledger=stack.ledger, executor=stack.executor)
                    watch.stage = "tasks"
                    if sizing is None:  # --max-tokens auto with nothing to go on: a pilot first
                        cfg, sizing, src = await autosize.pilot(
                            cfg, stack.executor, PromptBuilder(cfg, counter), src)
                        rundir.record(cfg, run_identity(cfg))
                    instances.start()
                    engine = make_engine(cfg, stack, counter, rundir, progress=progress,
                                         stats=stats, seen=seed.tasks if seed else None,
                                         on_commit=instances.add)
                    try:
                        result = await engine.run(src, plan=plan)
                    finally:
                        engine.close()
                    ledger = stack.ledger
                    cache_entries = stack.cache_entries()
                    if stack.cache is not None and stack.cache.recovered:
                        rundir.repairs["cache"] = stack.cache.recovered
            finally:
                if counting is not None:
                    counting.cancel()
                progress.close()
            watch.stage = "instances"
            await instances.finish(result)
    finally:
        await instances.aclose()
    result.session["instance_stage"] = instances.report()
    return result, ledger, cache_entries, engine, cfg, sizing


class _Instances:
    """The instance stage of a run: beside the task stage (``overlap``), or after it."""

    def __init__(self, cfg: Config, rundir: RunDir, stats: Stats, reader: RowReader,
                 seen: HashSet | None, *, build: bool, overlap: bool) -> None:
        self.build = build
        self.cfg = cfg
        self.rundir = rundir
        self.stats = stats
        self.reader = reader
        self.seen = seen
        self.overlap = overlap
        self.builder: InstanceBuilder | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self.seconds = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        """Overlapped: build what is committed already, then each unit as it commits."""
        if not (self.build and self.overlap) or self.builder is not None:
            return
        self._t0 = time.perf_counter()
        self.builder = InstanceBuilder(self.cfg, self.rundir, reader=self.reader,
                                       stats=self.stats, seen=self.seen)
        self.builder.add_committed()
        self.task = asyncio.create_task(self.builder.run())

    def add(self, rec: dict[str, Any]) -> None:
        if self.builder is not None:
            self.builder.add(rec)

    def stop(self) -> None:
        self.stopped = True
        if self.builder is not None:
            self.builder.stop()

    async def finish(self, result: EngineResult) -> None:
        """After the task stage: let the overlapped build end, or build now (``max_share``).

        An interrupted run or a failing disk stops the build where it is; a run stopped by
        its budget or a fatal API error still builds what it committed."""
        storage = isinstance(result.error, StorageError)
        try:
            if self.builder is not None and self.task is not None:
                if result.stop_reason == "interrupted" or storage:
                    self.builder.stop()
                self.builder.close_input()
                await self.task
            elif (self.build and not self.overlap and result.stop_reason is None
                  and not self.stopped):
                self._t0 = time.perf_counter()

                def hold(builder: InstanceBuilder) -> None:
                    self.builder = builder
                    if self.stopped:
                        builder.stop()

                await abuild_instances(self.cfg, self.rundir, reader=self.reader,
                                       stats=self.stats, seen=self.seen, on_builder=hold)
        except StorageError as e:
            if result.error is None:
                result.stop_reason, result.error = "fatal", e
        if self.stopped and result.stop_reason is None:
            result.stop_reason = "interrupted"  # Ctrl-C during the build

    async def aclose(self) -> None:
        try:
            if self.task is not None and not self.task.done():
                assert self.builder is not None
                self.builder.stop()
                await asyncio.gather(self.task, return_exceptions=True)
            if self.builder is not None and self.task is not None:
                self.builder.close()  # abuild_instances closes its own
        finally:
            if self._t0:
                self.seconds = time.perf_counter() - self._t0
            await self.reader.aclose()

    def report(self) -> dict[str, Any]:
        """What ``report.json``'s session says of the instance stage (and its Hub calls)."""
        out: dict[str, Any] = {"overlapped": self.task is not None,
                               "seconds": round(self.seconds, 3),
                               "units_built": self.builder.built if self.builder else 0}
        if self.reader.hub is not None and self.reader.hub.http.stats.calls:
            out["hub"] = {**self.reader.hub.http.stats.to_dict(),
                          "buckets": self.reader.hub.http.buckets.snapshot()}
        return out


def _finish(cfg: Config, rundir: RunDir, stats: Stats, result: EngineResult, ledger: Ledger,
            spent_before: float, cache_entries: int, wall: float, *,
            lengths: Lengths | None = None, sizing: autosize.Sizing | None = None) -> RunOutcome:
    report = stats.to_dict()
    session = dict(result.session)
    reqs = session.get("requests", 0)
    # "requests"/"responses" are those of committed units (cached answers count as
    # responses); what was paid, every session and kill included, comes from spend.jsonl.
    paid = _paid(rundir)
    report["requests_paid"] = paid["requests"]
    report["tokens"] = {"in": paid["in"], "out": paid["out"], "cached": paid["cached"]}
    if paid["unconfirmed"]:
        report["tokens"]["requests_without_usage"] = paid["unconfirmed"]
    report["cost"] = {
        "spent_usd_total": round(spent_before + ledger.spent, 6),
        "spent_usd_this_session": round(ledger.spent, 6),
        "budget_usd": cfg.budget_usd,
        "ledger": ledger.totals(),
    }
    report["session"] = {
        **session,
        "units_committed": result.committed,
        "units_already_done": result.resumed,
        "wall_seconds": round(wall, 3),
        "task_stage_seconds": round(result.wall_seconds, 3),
        "requests_per_second": round(reqs / result.wall_seconds, 2) if result.wall_seconds else 0,
        "cache_entries": cache_entries,
        "stop_reason": result.stop_reason,
    }
    report["config"] = cfg.public_dict()
    if sizing is not None and cfg.max_tokens_auto:
        report["max_tokens"] = sizing.to_dict()
    try:
        rundir.write_report(report)
        write_calibration(rundir.path / "calibration.json", model=cfg.model,
                          requests=stats.flat["responses"],
                          output_tokens=stats.flat["tokens_out"],
                          input_tokens=stats.flat["tokens_in"], lengths=lengths)
    except StorageError as e:
        first = result.error if isinstance(result.error, StorageError) else e
        return RunOutcome(exit_code(first), rundir.path, report, str(first), "storage")
    reason = result.stop_reason
    if reason is None:
        t = report["tasks"]
        msg = (f"done: {report['units']['seen']} units, {t['kept']} tasks kept "
               f"({t['dropped']} dropped), {report['instances']['written']} instances; "
               f"${report['cost']['spent_usd_total']:.4f} spent. Output: {rundir.path}")
        return RunOutcome(EXIT["ok"], rundir.path, report, msg)
    if reason == "budget":
        err = result.error
        needed = (f" (next request up to ${err.needed:.4f})"
                  if isinstance(err, BudgetExceeded) else "")
        msg = (f"budget reached: spent ${spent_before + ledger.spent:.4f} of "
               f"${cfg.budget_usd:.4f}{needed}; {result.committed} units committed this "
               f"session, the rest left undone. Resume with a larger --budget-usd and the "
               f"same --out ({rundir.path}).")
        if isinstance(err, BudgetExceeded) and cfg.budget_usd and err.needed > cfg.budget_usd / 10:
            # Each request reserves its worst case, so up to one worst case stays unspent.
            msg += (f" Note: one request may cost up to ${err.needed:.4f}, over a tenth of the "
                    "budget, so a share of it could not be used.")
        return RunOutcome(EXIT["budget"], rundir.path, report, msg, reason)
    if isinstance(result.error, StorageError):
        # A full or failing disk: one line, and the exit code of an interrupted run.
        return RunOutcome(exit_code(result.error), rundir.path, report, str(result.error),
                          "storage")
    if reason == "interrupted":
        msg = (f"interrupted: {result.committed} units committed this session; outputs and "
               f"report written. Run the same command again to resume ({rundir.path}).")
        return RunOutcome(EXIT["interrupted"], rundir.path, report, msg, reason)
    err = result.error
    text = str(err) if isinstance(err, DynogenError) else repr(err)
    msg = f"stopped: {text}. Outputs so far are in {rundir.path}; fix this and run again to resume."
    return RunOutcome(exit_code(err), rundir.path, report, msg, reason)
