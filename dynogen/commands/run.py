"""``dynogen run`` and ``dynogen build``: a run directory from a source, built from the
composition root's parts (``dynogen.compose``), and the report every run ends with.

Everything that can be checked before money is spent is checked first: the
config, the model's price, the API key, the source, the output directory, and
that the server answers at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from dynogen.commands.watch import Watch, close_run_log, open_run_log, watching
from dynogen.compose import (
    check_key,
    counter_for,
    gated,
    local_server,
    make_engine,
    open_sources,
    open_stack,
    preflight,
    resolve_layout,
    resolve_price,
    run_identity,
    signals,
)
from dynogen.config import IDENTITY_BEFORE, Config
from dynogen.dedup import DedupSeed
from dynogen.engine import max_tokens as autosize
from dynogen.engine.calibration import write_calibration
from dynogen.engine.engine import EngineResult, TaskEngine
from dynogen.engine.lengths import Lengths
from dynogen.errors import BudgetExceeded, ConfigError, DynogenError, StorageError
from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import Price
from dynogen.execute.transport import Transport
from dynogen.instances.build import build_instances
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

__all__ = ["arun", "build"]


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
    log = open_run_log(rundir.path, name="run", secrets=(cfg.api_key.get(),))
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
    stats = Stats()
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
    """The task stage on the composition root's stack, then the instance stage."""
    try:
        async with open_stack(
            cfg, price=price, stage="tasks",
            budget_usd=budget_left if budget_left is None or budget_left > 0 else 1e-12,
            cache_path=Path(cfg.cache_path) if cfg.cache_path else rundir.path / "cache.sqlite",
            spend_path=rundir.path / "spend.jsonl", state_dir=rundir.path,
            transport=transport, meter=progress,
        ) as stack:
            watch.attach(ledger=stack.ledger, executor=stack.executor)
            watch.stage = "tasks"
            if sizing is None:  # --max-tokens auto with nothing to go on: a pilot first
                cfg, sizing, src = await autosize.pilot(
                    cfg, stack.executor, PromptBuilder(cfg, counter), src)
                rundir.record(cfg, run_identity(cfg))
            engine = make_engine(cfg, stack, counter, rundir, progress=progress, stats=stats,
                                 seen=seed.tasks if seed else None)
            try:
                with signals(lambda: engine.stop("interrupted"), enabled=handle_signals):
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
    if build and result.stop_reason is None:
        watch.stage = "instances"
        try:
            await asyncio.to_thread(build_instances, cfg, rundir, stats=stats,
                                    seen=seed.instances if seed else None)
        except StorageError as e:
            result.stop_reason, result.error = "fatal", e
    return result, ledger, cache_entries, engine, cfg, sizing


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


def build(out: str | Path, *, rows_per_split: int | None = None,
          quiet: bool = False) -> RunOutcome:
    """Build instances from an existing run directory's tasks (no LLM calls)."""
    rundir = RunDir(out)
    if not rundir.manifest.exists() or not rundir.tasks.exists():
        raise ConfigError(f"{rundir.path} holds no run (no manifest.json/tasks.jsonl): run "
                          f"`dynogen run --out {rundir.path}` first")
    saved = orjson.loads(rundir.manifest.read_bytes()).get("config", {})
    known = {f.name for f in dataclasses.fields(Config)} - {"api_key"}
    # A manifest written before a field existed used what IDENTITY_BEFORE says.
    values: dict[str, Any] = {**IDENTITY_BEFORE, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known
    }}
    cfg = Config(**values).with_(quiet=quiet, force_new=False)
    if rows_per_split is not None:
        cfg = cfg.with_(rows_per_split=rows_per_split)
    # the write lock; a new --rows-per-split rebuilds
    rundir.open(cfg, identity=run_identity(cfg), stage="build")
    try:
        stats = Stats()
        for rec in iter_jsonl(rundir.units):
            stats.add_unit(rec)
        t0 = time.perf_counter()
        build_instances(cfg, rundir, stats=stats)
        report = stats.to_dict()
        if rundir.report.exists():
            with contextlib.suppress(ValueError):  # a spoiled old report: not needed
                old = orjson.loads(rundir.report.read_bytes())
                for k in ("cost", "config"):
                    if k in old:
                        report[k] = old[k]
        report["session"] = {"wall_seconds": round(time.perf_counter() - t0, 3),
                             "command": "build"}
        rundir.write_report(report)
    finally:
        rundir.close()
    msg = f"built {report['instances']['written']} instances into {rundir.instances}"
    return RunOutcome(EXIT["ok"], rundir.path, report, msg)
