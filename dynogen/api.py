"""The Python API behind every CLI command, under the same names.

>>> from dynogen import Config, run
>>> outcome = run(Config(source="metadata/", out="runs/a", model="gpt-4o-mini", budget_usd=5))
>>> outcome.exit_code, outcome.report["tasks"]["kept"]

Everything that can be checked before money is spent is checked first: the
config, the model's price, the API key, the source, the output directory, and
that the server answers at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dynogen import eventloop
from dynogen.commands.estimate import Calibration, Estimate, estimate_units, write_calibration
from dynogen.config import Config
from dynogen.dedup import DedupSeed
from dynogen.engine import max_tokens as autosize
from dynogen.engine.engine import EngineResult, TaskEngine
from dynogen.engine.lengths import Lengths
from dynogen.errors import (
    APIConnectionError,
    BudgetExceeded,
    ConfigError,
    DynogenError,
    FatalAPIError,
    StorageError,
)
from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import Price
from dynogen.execute.stack import check_key, open_stack, preflight, resolve_price
from dynogen.execute.transport import Transport
from dynogen.instances.build import build_instances
from dynogen.io.sources import open_source, source_for
from dynogen.policy import Policies, gate
from dynogen.progress import make_progress
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.tokens import TokenCounter
from dynogen.report import Stats
from dynogen.store.journal import iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.units import Skipped, Unit

__all__ = [
    "EXIT", "RunOutcome", "agrow", "areplay", "arun", "batch_cancel", "batch_status", "build",
    "call", "collect", "estimate", "exit_code", "export", "grow", "inspect", "replay",
    "resolve_price", "run",
]

EXIT = {"ok": 0, "error": 1, "budget": 3, "fatal": 4, "interrupted": 130}
# After a first SIGINT/SIGTERM, in-flight answers get this long to settle before the run
# exits as if signalled twice (a stuck write or a long 429 pause must not hold it).
SIGNAL_GRACE_SECONDS = 30.0


def exit_code(err: BaseException | None) -> int:
    """The one mapping from an error that ended a command to its exit code."""
    if isinstance(err, StorageError):
        return EXIT["interrupted"]  # a full disk stops a run like Ctrl-C: resume later
    if isinstance(err, FatalAPIError | APIConnectionError):
        return EXIT["fatal"]
    return EXIT["error"]


@dataclass
class RunOutcome:
    exit_code: int
    out: Path
    report: dict[str, Any]
    message: str
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


@contextlib.asynccontextmanager
async def _signals(engine: TaskEngine) -> AsyncIterator[None]:
    """First SIGINT/SIGTERM: stop dispatch and finish cleanly; second: exit at once."""
    loop = asyncio.get_running_loop()
    hits = 0

    def handler() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            engine.stop("interrupted")
            loop.call_later(SIGNAL_GRACE_SECONDS, handler)
        else:
            # Files are line-complete up to the last flush; a restart repairs the rest.
            import os

            os._exit(EXIT["interrupted"])

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def arun(
    cfg: Config,
    *,
    source: Iterable[Unit | Skipped] | None = None,
    transport: Transport | None = None,
    handle_signals: bool = False,
    build: bool = True,
    seed: DedupSeed | None = None,
) -> RunOutcome:
    """Generate tasks (and, unless ``build=False``, instances) into ``cfg.out``.

    ``seed``: task and instance hashes taken before this run (a collection's
    earlier versions), so what they hold counts as a duplicate here.
    """
    cfg = cfg.validate()
    t0 = time.perf_counter()
    if cfg.local:
        from dynogen.execute.local_server import LocalServer

        server = LocalServer()
        async with server:
            # More requests in flight than the server has slots only queue inside
            # llama.cpp, where they run into the request timeout and are re-sent.
            local_cfg = cfg.with_(base_url=server.base_url, model=server.model, free=True,
                                  max_in_flight=min(cfg.max_in_flight or server.n_parallel,
                                                    server.n_parallel))
            return await arun(local_cfg.with_(local=False), source=source, transport=transport,
                              handle_signals=handle_signals, build=build, seed=seed)
    price = resolve_price(cfg)
    check_key(cfg)
    src = source if source is not None else source_for(cfg)
    plan = _plan_source(cfg, source) if cfg.mode == "batch" else None
    cfg, sizing = autosize.plan(cfg)  # --max-tokens auto: recorded or from a calibration
    rundir = RunDir(cfg.out).open(cfg)  # takes the directory's write lock
    # Data policies (licence, splits, language, readable rows) before any request is sent;
    # a batch plan reads the same units, so it sees the same policies.
    policies, hf_cache = Policies.from_config(cfg), str(rundir.path / ".hf-cache")
    src = gate(src, policies, rows_per_split=cfg.rows_per_split, cache_dir=hf_cache)
    if plan is not None:
        plan = gate(plan, policies, rows_per_split=cfg.rows_per_split, cache_dir=hf_cache)
    try:
        return await _arun_locked(cfg, rundir, src, price, transport, handle_signals, build, t0,
                                  plan=plan, counted=source is None, seed=seed, sizing=sizing)
    finally:
        rundir.close()  # the lock: the next writer may start


async def _arun_locked(cfg: Config, rundir: RunDir, src: Iterable[Unit | Skipped], price: Price,
                       transport: Transport | None, handle_signals: bool, build: bool,
                       t0: float, *, plan: Iterable[Unit | Skipped] | None,
                       counted: bool, seed: DedupSeed | None = None,
                       sizing: autosize.Sizing | None = None) -> RunOutcome:
    await preflight(cfg, transport)

    spent_before = _paid(rundir)["usd"]
    budget_left = None if cfg.budget_usd is None else max(0.0, cfg.budget_usd - spent_before)
    counter = TokenCounter(price.encoding or cfg.encoding)
    stats = Stats()
    progress = make_progress(cfg.quiet, "tasks", rpm=cfg.rpm, tpm=cfg.tpm,
                             budget=cfg.budget_usd, spent_before=spent_before)
    counting = None
    if counted and cfg.source != "hub" and not cfg.quiet:
        # Units are counted on the other core while the run starts, for the bar's ETA.
        def count() -> None:
            progress.set_total(sum(1 for _ in open_source(cfg.source, limit=cfg.limit)))

        counting = asyncio.create_task(asyncio.to_thread(count))
    try:
        async with open_stack(
            cfg, price=price, stage="tasks",
            budget_usd=budget_left if budget_left is None or budget_left > 0 else 1e-12,
            cache_path=Path(cfg.cache_path) if cfg.cache_path else rundir.path / "cache.sqlite",
            spend_path=rundir.path / "spend.jsonl", state_dir=rundir.path,
            transport=transport, meter=progress,
        ) as stack:
            if sizing is None:  # --max-tokens auto with nothing to go on: a pilot first
                cfg, sizing, src = await autosize.pilot(
                    cfg, stack.executor, PromptBuilder(cfg, counter), src)
                rundir.record(cfg)
            engine = TaskEngine(cfg, executor=stack.executor, counter=counter, rundir=rundir,
                                progress=progress, stats=stats,
                                seen=seed.tasks if seed else None)
            try:
                async with _signals(engine) if handle_signals else contextlib.nullcontext():
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
        try:
            await asyncio.to_thread(build_instances, cfg, rundir, stats=stats,
                                    seen=seed.instances if seed else None)
        except StorageError as e:
            result.stop_reason, result.error = "fatal", e
    return _finish(cfg, rundir, stats, result, ledger, spent_before, cache_entries,
                   time.perf_counter() - t0, lengths=engine.lengths, sizing=sizing)


def _plan_source(cfg: Config,
                 source: Iterable[Unit | Skipped] | None) -> Iterable[Unit | Skipped]:
    """A second, independent pass over the run's source, for a batch executor to read
    ahead. A one-shot iterator cannot be read twice, so batch mode refuses it."""
    if source is None:
        return source_for(cfg)
    if iter(source) is source:
        raise ConfigError("--mode batch needs a source it can read twice (a list, or a "
                          "--source path), not a one-shot iterator")
    return source


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


def run(cfg: Config, **kwargs: Any) -> RunOutcome:
    """Synchronous ``arun``: the one event loop at the boundary (``eventloop.run``)."""
    return eventloop.run(arun(cfg, **kwargs))


def build(out: str | Path, *, rows_per_split: int | None = None,
          quiet: bool = False) -> RunOutcome:
    """Build instances from an existing run directory's tasks (no LLM calls)."""
    rundir = RunDir(out)
    if not rundir.manifest.exists() or not rundir.tasks.exists():
        raise ConfigError(f"{rundir.path} holds no run (no manifest.json/tasks.jsonl): run "
                          f"`dynogen run --out {rundir.path}` first")
    saved = orjson.loads(rundir.manifest.read_bytes()).get("config", {})
    known = {f.name for f in dataclasses.fields(Config)} - {"api_key"}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known
    }
    cfg = Config(**values).with_(quiet=quiet, force_new=False)
    if rows_per_split is not None:
        cfg = cfg.with_(rows_per_split=rows_per_split)
    rundir.open(cfg, stage="build")  # the write lock; a new --rows-per-split rebuilds
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


def collect(source: str, out: str | Path, *, limit: int | None = None,
            shard_size: int = 1000, hub: Any = None) -> Any:
    """Read a metadata source and write JSONL shards that ``run --source`` accepts."""
    from dynogen.io.shards import collect as _collect

    return _collect(open_source(source, limit=limit, hub=hub), Path(out), shard_size=shard_size)


def export(out: str | Path | None = None, *, fmt: str = "parquet",
           dest: str | Path | None = None, collection: str | Path | None = None) -> Path:
    """Export a run's instances to Parquet (one file) or a ``datasets`` folder; re-runnable.

    With ``collection``: the collection's merged view (every version, superseded
    tasks left out), also as ``jsonl``.
    """
    if collection is not None:
        from dynogen.collections.grow import export_collection

        return export_collection(collection, fmt=fmt, dest=dest)[0]
    from dynogen.instances.export import export_instances

    if out is None:
        raise ConfigError("export needs a run directory (--out) or a --collection")
    rundir = RunDir(out)
    if not rundir.instances.exists():
        raise ConfigError(f"{rundir.path} has no instances.jsonl: run `dynogen run` or "
                          "`dynogen build` first")
    default = "instances.parquet" if fmt == "parquet" else "dataset"
    target = Path(dest) if dest else rundir.path / "export" / default
    export_instances(rundir.instances, target, fmt, overwrite=True)  # type: ignore[arg-type]
    return target


def inspect(out: str | Path, *, kept: int = 10, per_reason: int = 3) -> Any:
    """What the filters did in a run: kept and dropped tasks with instances, shares per source.

    Returns an ``Inspection`` (``to_dict()`` for data,
    ``dynogen.commands.inspect.format_inspection`` for the text ``dynogen inspect`` prints).
    """
    from dynogen.commands.inspect import inspect_run

    return inspect_run(out, kept=kept, per_reason=per_reason)


def estimate(cfg: Config, *, calibration: str | Path | None = None,
             source: Iterable[Unit | Skipped] | None = None,
             collection: str | Path | None = None) -> Estimate:
    """Dry run: units, requests, exact prompt tokens, cost online and batch; no LLM call.

    With ``collection``: only the next grow step (its new and changed units).
    """
    if collection is not None:
        from dynogen.collections.grow import estimate_next

        return estimate_next(collection, cfg, calibration=calibration, source=source)
    cfg = cfg.validate()
    cal = Calibration.load(calibration)
    if cfg.max_tokens_auto and calibration is not None:
        # The figure a run with this calibration would use: its worst case is this one's.
        cfg, _ = autosize.plan(cfg.with_(calibration=str(calibration), out=""))
    price = resolve_price(cfg)
    src = source if source is not None else source_for(cfg)
    src = gate(src, Policies.from_config(cfg), rows_per_split=cfg.rows_per_split)
    counter = TokenCounter(price.encoding or cfg.encoding)
    return estimate_units(cfg, src, price, counter, cal)


async def agrow(collection: str | Path, cfg: Config, **kwargs: Any) -> RunOutcome:
    """Add one version to ``collection`` with what is new or changed in ``cfg.source``."""
    from dynogen.collections.grow import agrow as _agrow

    return await _agrow(collection, cfg, **kwargs)


def grow(collection: str | Path, cfg: Config, **kwargs: Any) -> RunOutcome:
    """Synchronous ``agrow`` (see ``dynogen.collections.grow``)."""
    return eventloop.run(agrow(collection, cfg, **kwargs))


async def areplay(collection: str | Path, *, k: int, strategy: str, out: str | Path,
                  ratio: float = 0.1, mixed: str | Path | None = None,
                  embed: Config | None = None, dims: int = 256, batch: int = 128,
                  seed: int = 0, per_task: int = 3) -> Any:
    """Pick ``k`` tasks of a collection's earlier versions to replay beside its newest one.

    ``embed``: the embedding endpoint (``model``, ``base_url``, limits, budget) for
    the diverse strategies; ``None`` embeds locally (lexical TF-IDF). Returns a
    ``dynogen.selection.mix.ReplayResult``.
    """
    from dynogen.selection.mix import areplay as _areplay
    from dynogen.selection.mix import open_embedder
    from dynogen.store.collection import Collection

    coll = Collection(collection).load()
    async with open_embedder(None if strategy == "random" else embed, coll, dims=dims,
                             batch=batch) as embedder:
        return await _areplay(coll.path, k=k, strategy=strategy, out=out, ratio=ratio,
                              mixed=mixed, embedder=embedder, seed=seed, per_task=per_task)


def replay(collection: str | Path, **kwargs: Any) -> Any:
    """Synchronous ``areplay``."""
    return eventloop.run(areplay(collection, **kwargs))


def call(cfg: Config, requests: str | Path, out: str | Path, *,
         transport: Transport | None = None, handle_signals: bool = False) -> RunOutcome:
    """Send a Batch API input file's requests (online or as Batch API jobs); answers in
    the Batch API output format."""
    from dynogen.commands.call import acall

    cfg = cfg.validate()
    res = eventloop.run(acall(cfg, requests, out, transport=transport,
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


# ---- `dynogen batch status|cancel`: a batch run's jobs, seen from another terminal ----------

def _batch_config(out: str | Path, base_url: str | None) -> Config:
    """The server and prices a run directory's batches were sent with (its manifest), the
    API key from the environment."""
    manifest = RunDir(out).manifest
    saved = orjson.loads(manifest.read_bytes()).get("config", {}) if manifest.exists() else {}
    keep = ("base_url", "model", "price_in", "price_out", "batch_price_in", "batch_price_out",
            "prices_file", "free")
    values = {k: saved[k] for k in keep if saved.get(k) is not None}
    if base_url:
        values["base_url"] = base_url
    from dynogen.config import load_config

    return load_config(None, **values)


def batch_status(out: str | Path, *, base_url: str | None = None) -> list[dict[str, Any]]:
    """Every batch of a ``--mode batch`` run directory: state, counts, age, cost so far."""
    from dynogen.execute.batch_admin import astatus

    cfg = _batch_config(out, base_url)
    try:
        price = resolve_price(cfg)
    except DynogenError:
        price = None  # the table does not know the model: show counts without dollars
    return eventloop.run(astatus(Path(out), cfg.base_url, cfg.api_key.get(), price))


def batch_cancel(out: str | Path, *, base_url: str | None = None) -> list[dict[str, Any]]:
    """Cancel a batch run's running batches; what finished is kept, and the run (if it is
    polling) notices, submits nothing new and marks the rest failed for a later resume."""
    from dynogen.execute.batch_admin import acancel

    cfg = _batch_config(out, base_url)
    return eventloop.run(acancel(Path(out), cfg.base_url, cfg.api_key.get()))
