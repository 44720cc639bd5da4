"""The Python API behind every CLI command, under the same names.

>>> from dynogen import Config, run
>>> outcome = run(Config(source="metadata/", out="runs/a", model="gpt-4o-mini", budget_usd=5))
>>> outcome.exit_code, outcome.report["tasks"]["kept"]

A thin layer, as httpx's ``_api.py`` is over its ``Client``: each function hands
its arguments to the command that does the work (``dynogen.commands``,
``dynogen.collections``, ``dynogen.selection``), and each command builds its
parts from the one composition root, ``dynogen.compose``. The synchronous
functions run their coroutine on one event loop at the boundary
(``dynogen.eventloop.run``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dynogen.collections.build import build as build
from dynogen.collections.grow import agrow as _agrow
from dynogen.collections.grow import estimate_next, export_collection
from dynogen.commands.batch import batch_cancel, batch_status
from dynogen.commands.call import call
from dynogen.commands.estimate import Estimate
from dynogen.commands.estimate import estimate as _estimate
from dynogen.commands.inspect import inspect_run
from dynogen.commands.run import arun
from dynogen.compose import resolve_price
from dynogen.config import Config
from dynogen.errors import ConfigError
from dynogen.eventloop import run as run_on_loop
from dynogen.io.shards import collect as _collect
from dynogen.io.sources import open_source
from dynogen.outcome import EXIT, RunOutcome, exit_code
from dynogen.outcome import load_dataset as dataset
from dynogen.store.instance_files import has_instances
from dynogen.store.status import read_status
from dynogen.units import Skipped, Unit

__all__ = [
    "EXIT", "RunOutcome", "agrow", "areplay", "arun", "batch_cancel", "batch_status", "build",
    "call", "collect", "dataset", "estimate", "exit_code", "export", "grow", "inspect",
    "publish", "replay", "resolve_price", "run", "status",
]


def status(out: str | Path) -> dict[str, Any] | None:
    """What a run (or a growing collection) is doing now, from its ``status.json``:
    read without the lock, from any process; ``None`` if there is none yet."""
    return read_status(out)


def run(cfg: Config, **kwargs: Any) -> RunOutcome:
    """Synchronous ``arun``: generate tasks (and, unless ``build=False``, instances)."""
    return run_on_loop(arun(cfg, **kwargs))


def collect(source: str, out: str | Path, *, limit: int | None = None,
            shard_size: int = 1000, hub: Any = None) -> Any:
    """Read a metadata source and write JSONL shards that ``run --source`` accepts."""
    return _collect(open_source(source, limit=limit, hub=hub), Path(out), shard_size=shard_size)


def export(out: str | Path | None = None, *, fmt: str = "parquet",
           dest: str | Path | None = None, collection: str | Path | None = None) -> Path:
    """Export a run's instances to Parquet (one file) or a ``datasets`` folder; re-runnable.
    The dataset card goes beside it (``README.md``; see ``dynogen.instances.card``).

    With ``collection``: the collection's merged view (every version, superseded
    tasks left out), also as ``jsonl``.
    """
    if collection is not None:
        return export_collection(collection, fmt=fmt, dest=dest)[0]
    from dynogen.instances.card import export_card
    from dynogen.instances.export import export_instances  # pyarrow only when exporting

    if out is None:
        raise ConfigError("export needs a run directory (--out) or a --collection")
    run = Path(out)
    if not has_instances(run):  # instances.jsonl, or a sharded build's instances/
        raise ConfigError(f"{run} has no instances (no instances.jsonl or instances/): run "
                          "`dynogen run` or `dynogen build` first")
    default = "instances.parquet" if fmt == "parquet" else "dataset"
    target = Path(dest) if dest else run / "export" / default
    export_instances(run, target, fmt, overwrite=True)  # type: ignore[arg-type]
    export_card(run, target)
    return target


def publish(target: str | Path, *, repo: str, public: bool = False, dry_run: bool = False,
            allow_restricted_licenses: bool = False, **kwargs: Any) -> Any:
    """Upload a run's or a collection's instances to the Hub dataset repository ``repo``
    (``ORG/NAME``) as Parquet shards with a dataset card; only what changed is sent.

    A new repository is private unless ``public``; a public one refuses sources that may
    not allow redistribution unless ``allow_restricted_licenses``. ``dry_run``: what would
    be sent, and the card. Returns a ``dynogen.publishing.PublishResult`` (see
    ``dynogen.publishing.push`` for ``endpoint``, ``token`` and shard sizes).
    """
    from dynogen.publishing import publish as _publish  # huggingface_hub only when publishing

    return _publish(target, repo=repo, public=public, dry_run=dry_run,
                    allow_restricted_licenses=allow_restricted_licenses, **kwargs)


def inspect(out: str | Path, *, kept: int = 10, per_reason: int = 3) -> Any:
    """What the filters did in a run: kept and dropped tasks with instances, shares per source.

    Returns an ``Inspection`` (``to_dict()`` for data,
    ``dynogen.commands.inspect.format_inspection`` for the text ``dynogen inspect`` prints).
    """
    return inspect_run(out, kept=kept, per_reason=per_reason)


def estimate(cfg: Config, *, calibration: str | Path | None = None,
             source: Iterable[Unit | Skipped] | None = None,
             collection: str | Path | None = None) -> Estimate:
    """Dry run: units, requests, exact prompt tokens, cost online and batch; no LLM call.

    With ``collection``: only the next grow step (its new and changed units).
    """
    if collection is not None:
        return estimate_next(collection, cfg, calibration=calibration, source=source)
    return _estimate(cfg, calibration=calibration, source=source)


async def agrow(collection: str | Path, cfg: Config, **kwargs: Any) -> RunOutcome:
    """Add one version to ``collection`` with what is new or changed in ``cfg.source``."""
    return await _agrow(collection, cfg, **kwargs)


def grow(collection: str | Path, cfg: Config, **kwargs: Any) -> RunOutcome:
    """Synchronous ``agrow`` (see ``dynogen.collections.grow``)."""
    return run_on_loop(agrow(collection, cfg, **kwargs))


async def areplay(collection: str | Path, *, k: int, strategy: str, out: str | Path,
                  ratio: float = 0.1, mixed: str | Path | None = None,
                  embed: Config | None = None, dims: int = 256, batch: int = 128,
                  seed: int = 0, per_task: int = 3) -> Any:
    """Pick ``k`` tasks of a collection's earlier versions to replay beside its newest one.

    ``embed``: the embedding endpoint (``model``, ``base_url``, limits, budget) for
    the diverse strategies; ``None`` embeds locally (lexical TF-IDF). Returns a
    ``dynogen.selection.mix.ReplayResult``.
    """
    from dynogen.selection.mix import areplay as _areplay  # numpy only when replaying

    return await _areplay(collection, k=k, strategy=strategy, out=out, ratio=ratio,
                          mixed=mixed, embed=embed, dims=dims, batch=batch, seed=seed,
                          per_task=per_task)


def replay(collection: str | Path, **kwargs: Any) -> Any:
    """Synchronous ``areplay``."""
    return run_on_loop(areplay(collection, **kwargs))
