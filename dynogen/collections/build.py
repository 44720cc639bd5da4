"""``dynogen build`` of a run directory or a collection.

A run directory is built by ``dynogen.commands.build``. A collection is built
by its running version: ``dynogen grow --no-build`` leaves one with its tasks
done and no instances. Its instances are built on either engine from the
collection's dedup seed (the instances of the complete versions, less those of
the units this version re-does), so what an earlier version holds counts as a
duplicate here, exactly as a grow step that builds would have it; then the
version is completed as grow completes it (``Collection.complete``), under the
collection's lock. A version whose task stage did not finish (a budget stop,
Ctrl-C) is not built: ``dynogen grow`` sends what it still owes first.

>>> build("data/coll", engine="ray").message  # doctest: +SKIP
'version 3: built 1204 instances into data/coll/versions/0003/instances; ...'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynogen.collections.memory import collection_seed
from dynogen.commands.build import build as build_run
from dynogen.commands.build import check_engine
from dynogen.errors import RunDirError
from dynogen.outcome import EXIT, RunOutcome
from dynogen.store.collection import PLAN_INDEX, Collection
from dynogen.store.journal import iter_jsonl

if TYPE_CHECKING:
    from dynogen.instances.sharded import Runner

__all__ = ["build", "build_collection"]


def build(target: str | Path, *, rows_per_split: int | str | None = None, quiet: bool = False,
          retry_skipped: tuple[str, ...] | None = None, handle_signals: bool = True,
          engine: str = "local", ray_address: str | None = None,
          runner: Runner | None = None) -> RunOutcome:
    """Build instances from the tasks of a run directory, or of a collection's unfinished
    version (no LLM calls). The arguments are ``dynogen.commands.build.build``'s."""
    kw: dict[str, Any] = dict(rows_per_split=rows_per_split, quiet=quiet,
                              retry_skipped=retry_skipped, handle_signals=handle_signals,
                              engine=engine, ray_address=ray_address, runner=runner)
    if Collection(target).exists():
        return build_collection(target, **kw)
    return build_run(target, **kw)


def build_collection(collection: str | Path, *, rows_per_split: int | str | None = None,
                     quiet: bool = False, retry_skipped: tuple[str, ...] | None = None,
                     handle_signals: bool = True, engine: str = "local",
                     ray_address: str | None = None, runner: Runner | None = None,
                     ) -> RunOutcome:
    """Build the running version's instances against the earlier versions and complete it.

    With no running version, says so and builds nothing. ``extra["version"]`` is the
    version built (``None``: none).
    """
    check_engine(engine, ray_address, runner)
    coll = Collection(collection).load()
    with coll.locked():
        coll.load()  # as the lock holder saw it last
        entry = coll.running_version()
        if entry is None:
            why = (f"every version of {coll.path} is complete" if coll.versions
                   else f"{coll.path} has no version yet: grow it first")
            return RunOutcome(EXIT["ok"], coll.path, {}, f"nothing to build: {why}",
                              extra={"version": None})
        number = int(entry["version"])
        missing = _units_without_tasks(coll, entry)
        if missing:
            raise RunDirError(
                f"version {number} of {coll.path} has not finished its tasks ({missing} "
                f"planned units not answered yet): `dynogen grow {coll.path}` with the "
                "settings it began with finishes them and builds the version")
        seed = collection_seed(coll, coll.changed_keys(entry))
        outcome = build_run(coll.version_dir(entry), rows_per_split=rows_per_split, quiet=quiet,
                            retry_skipped=retry_skipped, handle_signals=handle_signals,
                            engine=engine, ray_address=ray_address, seen=seed.instances,
                            runner=runner)
        outcome.extra.update(version=number)
        outcome.out = coll.path
        if outcome.exit_code != EXIT["ok"]:
            outcome.message = f"version {number} unfinished: {outcome.message}"
            return outcome
        entry = coll.complete(entry, outcome.report)
        totals = coll.data["totals"]
        outcome.message = (f"version {number}: {outcome.message}; the version is complete. "
                           f"Collection: {totals['tasks']} live tasks in {totals['versions']} "
                           f"versions ({coll.path})")
        return outcome


def _units_without_tasks(coll: Collection, entry: dict[str, Any]) -> int:
    """Planned units the version's task stage has not committed (not even as failed)."""
    vdir = coll.version_dir(entry)
    committed = {str(r.get("key")) for r in iter_jsonl(vdir / "units.jsonl")}
    return len({str(r.get("key")) for r in iter_jsonl(vdir / PLAN_INDEX)} - committed)
