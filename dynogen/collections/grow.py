"""Growing a collection by one version, pricing the next step, exporting the merged view.

A grow step is a run: ``api.arun`` with the version directory as ``out``, the
collection's request cache as ``cache_path``, the version's plan as the
source and the collection's dedup state as the seed. So it resumes after a
kill (a version still ``running`` in ``collection.json`` is resumed, never
started twice), honours ``--budget-usd`` (per version, across its resumes),
uses the shared cache (units already answered cost nothing) and runs in
whatever mode the config names.

A unit's fingerprint is its user message, which no prompt layout changes
(``dynogen.prompts.layout``): a new default layout asks no unit again. Each
version records the layout it sent in ``collection.json`` (its config's
``prompt_layout``); a new version picks its own (``auto``: the server's), a
running one keeps the one it began with.

>>> outcome = await agrow("data/coll", Config(source="metadata/", model="gpt-4o-mini"))
>>> outcome.extra["version"], outcome.extra["plan"]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from dynogen.collections.memory import collection_seed, unit_fingerprint
from dynogen.commands.estimate import Estimate, estimate
from dynogen.commands.run import arun
from dynogen.compose import counter_for, resolve_layout, resolve_price
from dynogen.config import Config
from dynogen.engine.calibration import Calibration
from dynogen.engine.lengths import MIN_ANSWERS
from dynogen.errors import ConfigError, RunDirError
from dynogen.io.shards import JsonlSource
from dynogen.io.sources import Source, source_for
from dynogen.outcome import EXIT, RunOutcome
from dynogen.prompts.builder import PromptBuilder
from dynogen.store.collection import PLAN, Collection, Fingerprint, Plan
from dynogen.store.journal import iter_jsonl
from dynogen.units import Skipped, Unit, is_final

if TYPE_CHECKING:
    from dynogen.execute.transport import Transport

__all__ = ["EXPORT_FORMATS", "agrow", "estimate_next", "export_collection", "open_grow_source"]

EXPORT_FORMATS = ("jsonl", "parquet", "datasets")


def open_grow_source(cfg: Config, *, since: str | None) -> Source:
    """The source a grow step reads: ``cfg``'s, with a Hub listing starting at ``since``.

    ``since`` is when the newest complete version started reading (ISO 8601 UTC),
    so a dataset modified while that version ran is listed again. An explicit
    ``hub_modified_since`` wins. This is the one place grow talks to the Hub
    source's options (``Config.hub_modified_since``, ``sources.source_for``);
    with neither present it reads the whole listing, and the fingerprints still
    keep unchanged datasets from being sent.
    """
    if cfg.source == "hub" and since is not None and not cfg.hub_modified_since:
        cfg = cfg.with_(hub_modified_since=since)
    return source_for(cfg)


def _fingerprint(cfg: Config) -> Fingerprint:
    prompts = PromptBuilder(cfg, counter_for(cfg, resolve_price(cfg)))
    return lambda item: unit_fingerprint(item, prompts)


def _source_name(cfg: Config) -> str:
    if cfg.source in ("hub", "samples"):
        return cfg.source
    return str(Path(cfg.source).expanduser().resolve())


async def agrow(
    collection: str | Path,
    cfg: Config,
    *,
    source: Iterable[Unit | Skipped] | None = None,
    transport: Transport | None = None,
    handle_signals: bool = False,
    build: bool = True,
) -> RunOutcome:
    """Add one version holding what is new or changed in ``cfg.source`` (or ``source``).

    ``build=False``: stop after the tasks; the version stays unfinished and the next
    grow (which resumes it), or ``dynogen.collections.build.build`` of the collection on
    either engine, builds its instances and completes it.
    """
    cfg = cfg.validate()
    coll = Collection(collection).create()
    with coll.locked():
        coll.load()
        entry = coll.running_version()
        resumed = entry is not None
        if entry is None:
            # The layout this version sends, recorded in collection.json with its config;
            # a running version keeps its own (arun follows its manifest).
            cfg = resolve_layout(cfg, resolve_price(cfg), follow_run=False)
            src = source if source is not None else open_grow_source(
                cfg, since=coll.last_started())
            plan, staging = coll.stage(src, _fingerprint(cfg))
            if plan.items == 0:
                staging_rmtree(staging)
                last = coll.complete_versions()
                where = f"version {last[-1]['version']}" if last else "an empty collection"
                msg = (f"nothing new: {plan.unchanged} units unchanged since {where}; no "
                       f"requests sent, no version written ({coll.path})")
                return RunOutcome(EXIT["ok"], coll.path, {}, msg,
                                  extra={"version": None, "plan": plan.to_dict()})
            entry = coll.begin(staging, plan, _source_name(cfg), cfg.public_dict(),
                               listed_since=coll.last_started() if cfg.source == "hub" else None)
        vdir = coll.version_dir(entry)
        seed = collection_seed(coll, coll.changed_keys(entry))
        run_cfg = cfg.with_(out=str(vdir), cache_path=str(coll.cache), source=str(vdir / PLAN),
                            limit=None)
        if cfg.max_tokens_auto and not cfg.calibration:
            run_cfg = run_cfg.with_(calibration=_last_calibration(coll))
        try:
            outcome = await arun(run_cfg, source=JsonlSource(vdir / PLAN), transport=transport,
                                 handle_signals=handle_signals, seed=seed, build=build,
                                 status_also=coll.path)
        except RunDirError as e:
            if not resumed:
                raise
            raise RunDirError(
                f"version {entry['version']} of {coll.path} is unfinished and was started with "
                f"other prompt settings ({e}). Grow with the settings it began with (see "
                f"{vdir / 'manifest.json'}) to finish it first") from None
        number = int(entry["version"])
        outcome.extra.update(version=number, plan=dict(entry.get("units") or {}),
                             resumed=resumed)
        if outcome.exit_code != EXIT["ok"]:
            outcome.message = f"version {number} unfinished: {outcome.message}"
            return outcome
        if not build:
            outcome.message = (f"version {number}: tasks done, instances not built; `dynogen "
                               f"build {coll.path}` (or grow again with the same settings) builds "
                               "them and completes the version")
            outcome.out = coll.path
            return outcome
        entry = coll.complete(entry, outcome.report)
        p = entry["units"]
        outcome.message = (
            f"version {number}{' (resumed)' if resumed else ''}: {p['new']} new and "
            f"{p['changed']} changed units ({p['unchanged']} unchanged); {entry['tasks']} tasks "
            f"kept, {len(entry['supersedes'])} older tasks superseded, {entry['instances']} "
            f"instances; ${entry['cost_usd']:.4f} spent, {entry['requests_paid']} requests paid. "
            f"Collection: {coll.data['totals']['tasks']} live tasks in "
            f"{coll.data['totals']['versions']} versions ({coll.path})")
        outcome.out = coll.path
        return outcome


def staging_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _pending(coll: Collection, entry: dict[str, Any]) -> Iterator[Unit | Skipped]:
    """A running version's planned items not yet committed (what resuming it would send)."""
    vdir = coll.version_dir(entry)
    done = {str(r.get("key")) for r in iter_jsonl(vdir / "units.jsonl") if is_final(r)}
    for item in JsonlSource(vdir / PLAN):
        if item.key not in done:
            yield item


def _last_calibration(coll: Collection) -> str | None:
    """The newest complete version's calibration.json, if it holds enough answer lengths
    to size ``--max-tokens auto`` (else the step sizes from its own first answers)."""
    for entry in reversed(coll.complete_versions()):
        path = coll.version_dir(entry) / "calibration.json"
        try:
            if Calibration.load(path).lengths.answers() >= MIN_ANSWERS:
                return str(path)
        except ConfigError:
            continue
    return None


def estimate_next(collection: str | Path, cfg: Config, *, calibration: str | Path | None = None,
                  source: Iterable[Unit | Skipped] | None = None) -> Estimate:
    """Price the next grow step only: its new and changed units (or a running version's rest)."""
    coll = Collection(collection)
    if coll.exists():
        coll.load()
        entry = coll.running_version()
        if entry is not None:
            return estimate(cfg, calibration=calibration, source=_pending(coll, entry))
    else:
        coll.data = {"versions": []}
    src = source if source is not None else open_grow_source(cfg, since=coll.last_started())
    cfg = cfg.validate()
    plan = Plan()
    selected = (item for item, _fp, _kind in coll.select(src, _fingerprint(cfg), plan))
    return estimate(cfg, calibration=calibration, source=selected)


def export_collection(collection: str | Path, *, fmt: str = "jsonl",
                      dest: str | Path | None = None) -> tuple[Path, int]:
    """The merged view (every version, superseded tasks left out) as JSONL, Parquet or
    a ``datasets`` folder, with its dataset card beside it; returns the path and the number
    of instances."""
    from dynogen.instances.card import export_card
    from dynogen.instances.export import export_instances

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    coll = Collection(collection).load()
    default = {"jsonl": "instances.jsonl", "parquet": "instances.parquet", "datasets": "dataset"}
    target = Path(dest) if dest else coll.path / "export" / default[fmt]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".merged-", suffix=".jsonl", dir=target.parent)
    tmp = Path(tmp_name)
    n = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for rec in coll.iter_instances():
                fh.write(orjson.dumps(rec) + b"\n")
                n += 1
        if fmt == "jsonl":
            os.replace(tmp, target)
        else:
            export_instances(tmp, target, fmt, overwrite=True)  # type: ignore[arg-type]
    finally:
        tmp.unlink(missing_ok=True)
    export_card(coll.path, target)
    return target, n
