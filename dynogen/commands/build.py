"""``dynogen build``: instances from a run directory's tasks, on one engine or another.

``engine="local"`` is the single-process ``InstanceBuilder`` (``instances.jsonl``,
resumable unit by unit). ``engine="ray"`` is the sharded build on a Ray cluster
(``instances/part-*.parquet``, resumable piece by piece and partition by
partition; see ``dynogen.instances.sharded``). Both give the same set of
instances. A run holds one engine's output: building with the other starts the
instances over, and the report says so (``repairs.rebuilt_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from dynogen.compose import open_row_reader, run_identity, signals
from dynogen.config import IDENTITY_BEFORE, Config
from dynogen.dedup import HashSet
from dynogen.errors import ConfigError
from dynogen.eventloop import run as run_on_loop
from dynogen.instances.build import InstanceBuilder, abuild_instances
from dynogen.outcome import EXIT, RunOutcome
from dynogen.report import Stats
from dynogen.store.instance_files import SHARD_DIR
from dynogen.store.journal import iter_jsonl
from dynogen.store.rundir import RunDir

if TYPE_CHECKING:
    from dynogen.instances.sharded import Runner

__all__ = ["ENGINES", "build", "check_engine"]

ENGINES = ("local", "ray")


def _saved_config(rundir: RunDir) -> Config:
    saved = orjson.loads(rundir.manifest.read_bytes()).get("config", {})
    known = {f.name for f in dataclasses.fields(Config)} - {"api_key"}
    # A manifest written before a field existed used what IDENTITY_BEFORE says.
    values: dict[str, Any] = {**IDENTITY_BEFORE, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known
    }}
    return Config(**values)


def build(out: str | Path, *, rows_per_split: int | str | None = None, quiet: bool = False,
          retry_skipped: tuple[str, ...] | None = None, handle_signals: bool = True,
          engine: str = "local", ray_address: str | None = None, seen: HashSet | None = None,
          runner: Runner | None = None) -> RunOutcome:
    """Build instances from an existing run directory's tasks (no LLM calls).

    ``rows_per_split``: a count or ``"all"``; ``retry_skipped``: build again units whose
    rows were unavailable for these reasons. ``engine``: ``local`` (one process) or
    ``ray`` (a Ray cluster: ``ray_address``, else a local Ray instance). Ctrl-C or
    SIGTERM stops it as it stops ``run``, and the same command builds the rest.

    ``seen``: instance hashes taken before this build (a collection's earlier versions,
    ``dynogen.collections.build``), so what they hold counts as a duplicate here.
    ``runner``: where the ``ray`` engine's steps run instead of Ray
    (``dynogen.instances.sharded.InlineRunner``: in this process).
    """
    check_engine(engine, ray_address, runner)
    rundir = RunDir(out)
    if not rundir.manifest.exists() or not rundir.tasks.exists():
        raise ConfigError(f"{rundir.path} holds no run (no manifest.json/tasks.jsonl): run "
                          f"`dynogen run --out {rundir.path}` first")
    cfg = _saved_config(rundir).with_(quiet=quiet, force_new=False)
    if rows_per_split is not None:
        cfg = cfg.with_(rows_per_split=rows_per_split)
    if retry_skipped is not None:
        cfg = cfg.with_(retry_skipped=tuple(retry_skipped))
    cfg = cfg.validate()
    # the write lock; a new --rows-per-split rebuilds
    rundir.open(cfg, identity=run_identity(cfg), stage="build")
    try:
        stats = Stats(retry_skipped=cfg.retry_skipped)
        for rec in iter_jsonl(rundir.units):
            stats.add_unit(rec)
        t0 = time.perf_counter()
        written: dict[str, int] = {}  # the sharded build's files written this session
        if engine == "ray":
            stopped = run_on_loop(_build_sharded(cfg, rundir, stats, handle_signals,
                                                 ray_address, seen, runner, written))
            where = rundir.path / SHARD_DIR
        else:
            stopped = run_on_loop(_build(cfg, rundir, stats, handle_signals, seen))
            where = rundir.instances
        report = stats.to_dict()
        if rundir.report.exists():
            with contextlib.suppress(ValueError):  # a spoiled old report: not needed
                old = orjson.loads(rundir.report.read_bytes())
                for k in ("cost", "config", "requests_paid"):  # the task stage's
                    if k in old:
                        report[k] = old[k]
        report["session"] = {"wall_seconds": round(time.perf_counter() - t0, 3),
                             "command": "build", "engine": engine, "stop_reason": stopped}
        if engine == "ray":  # what this session wrote; a resumed build skips the rest
            report["session"]["written"] = written
        rundir.write_report(report)
    finally:
        rundir.close()
    if stopped:
        msg = (f"interrupted: {report['instances']['written']} instances so far in "
               f"{where}. Run the same command again to build the rest.")
        return RunOutcome(EXIT["interrupted"], rundir.path, report, msg, "interrupted")
    msg = f"built {report['instances']['written']} instances into {where}"
    return RunOutcome(EXIT["ok"], rundir.path, report, msg)


def check_engine(engine: str, ray_address: str | None, runner: Runner | None = None) -> None:
    """Refuse an unknown engine, and Ray settings for the local one."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    if ray_address is not None and engine != "ray":
        raise ConfigError("--ray-address is for --engine ray")
    if runner is not None and (engine != "ray" or ray_address is not None):
        raise ConfigError("a runner is for --engine ray, in place of --ray-address")


async def _build(cfg: Config, rundir: RunDir, stats: Stats, handle_signals: bool,
                 seen: HashSet | None) -> str | None:
    """The single-process instance stage under the run's signal handling; ``"interrupted"``
    when a signal stopped it."""
    held: list[InstanceBuilder] = []
    hit: list[bool] = []

    def stop() -> None:
        hit.append(True)
        for builder in held:
            builder.stop()

    reader = open_row_reader(cfg, cache_dir=str(rundir.path / ".hf-cache"))
    try:
        with signals(stop, enabled=handle_signals):
            await abuild_instances(cfg, rundir, reader=reader, stats=stats, seen=seen,
                                   on_builder=held.append)
    finally:
        await reader.aclose()
    return "interrupted" if hit else None


async def _build_sharded(cfg: Config, rundir: RunDir, stats: Stats, handle_signals: bool,
                         address: str | None, seen: HashSet | None,
                         runner: Runner | None, written: dict[str, int]) -> str | None:
    """The sharded build on Ray (or on ``runner``); ``written`` gets the candidate files
    and partitions this session wrote."""
    if runner is not None:
        return await _run_sharded(cfg, rundir, stats, handle_signals, seen, runner, written)
    from dynogen.instances.ray_runner import RayRunner

    ray = RayRunner(address)  # on the main thread: Ray installs its handlers there
    try:
        return await _run_sharded(cfg, rundir, stats, handle_signals, seen, ray, written)
    finally:
        await asyncio.to_thread(ray.close)


async def _run_sharded(cfg: Config, rundir: RunDir, stats: Stats, handle_signals: bool,
                       seen: HashSet | None, runner: Runner,
                       written: dict[str, int]) -> str | None:
    """The driver's work runs in a thread so signals land here."""
    from dynogen.instances.sharded import ShardedBuild

    job = ShardedBuild(cfg, rundir, runner, seen=seen)
    with signals(job.stop, enabled=handle_signals):
        records = await asyncio.to_thread(job.run)
    written.update(job.written)
    for rec in records or ():
        stats.add_build(rec)
    return None if records is not None else "interrupted"
