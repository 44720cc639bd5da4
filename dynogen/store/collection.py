"""A collection that grows: numbered versions of runs over a source that changes.

Layout::

    COLLECTION/collection.json      versions (source, dates, counts, cost, status),
                                    sources, the task ids each version supersedes
    COLLECTION/cache.sqlite         the request cache, shared by every version
    COLLECTION/versions/0001/       a complete run directory, as ``run`` writes it,
    COLLECTION/versions/0002/ …     plus plan.jsonl and plan-index.jsonl (below)

A version is planned before any request: the source is read once and each
item gets a fingerprint, the hash of the unit-specific part of the prompt
(``PromptBuilder.user_message`` for every variant), so "changed" means "the
prompt would differ" and nothing else. Items whose key is unknown to the
collection (``new``) or whose fingerprint differs from the last one the
collection answered (``changed``) are written to ``plan.jsonl`` in the shard
format, with ``plan-index.jsonl`` (key, fingerprint, new/changed) beside it.
The version's run reads its plan, not the source, so a resumed version does
exactly what it set out to do and a Hub source is listed once per version.
Nothing new means no version directory at all.

What counts as answered: a unit the version committed ``done`` or
``skipped``. A unit that failed (every request failed) keeps its old
fingerprint and is planned again by the next grow.

A unit that is ``changed`` and ``done`` supersedes every task the older
versions hold for its key (``collection.json`` lists them per version); the
merged view leaves superseded tasks and their instances out. Older version
directories are never rewritten.

Dedup across versions: a grow step's run starts from a ``DedupSeed`` of the
instructions and instances of the live (not superseded) tasks of the complete
versions, leaving out those of the units this version re-does, whose old tasks
it is about to supersede.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

from dynogen.errors import RunDirError
from dynogen.store.instance_files import iter_instances
from dynogen.store.journal import JsonlWriter, iter_jsonl
from dynogen.store.lock import RunLock
from dynogen.units import Skipped, Unit

# What a unit's answer depends on, hashed (handed in by the collections layer).
Fingerprint = Callable[[Unit | Skipped], str]

__all__ = [
    "ANSWERED", "FORMAT", "Collection", "Fingerprint", "Plan", "task_key",
]

FORMAT = "dynogen-collection/1"
MANIFEST = "collection.json"
PLAN = "plan.jsonl"
PLAN_INDEX = "plan-index.jsonl"
ANSWERED = ("done", "skipped")


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _kh(key: str) -> int:
    return xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def task_key(rec: dict[str, Any]) -> str:
    return f"{rec.get('dataset')}::{rec.get('config')}"


@dataclass
class Plan:
    """What one grow step will send: counts, and the keys it re-does."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    repeats: int = 0
    changed_keys: set[str] = field(default_factory=set)

    @property
    def items(self) -> int:
        return self.new + self.changed

    def to_dict(self) -> dict[str, int]:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged,
                "repeats": self.repeats}


class Collection:
    """One collection directory.

    >>> coll = Collection("data/coll").create()
    >>> coll.complete_versions()       # [{"version": 1, "dir": "versions/0001", ...}, ...]
    >>> for task in coll.iter_tasks(): # every live task, each with its "version"
    ...     ...
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = self.path / MANIFEST
        self.cache = self.path / "cache.sqlite"
        self.versions_dir = self.path / "versions"
        self.data: dict[str, Any] = {}

    # ------------------------------------------------------------------ files
    def exists(self) -> bool:
        return self.manifest.is_file()

    def load(self) -> Collection:
        if not self.exists():
            raise RunDirError(f"{self.path} holds no collection (no {MANIFEST}): start one with "
                              f"`dynogen grow {self.path} --source SRC`")
        try:
            data = orjson.loads(self.manifest.read_bytes())
        except orjson.JSONDecodeError as e:
            raise RunDirError(f"{self.manifest} is not valid JSON ({e}); restore it from a "
                              "backup or start a new collection") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunDirError(f"{self.manifest} is not a dynogen collection ({FORMAT})")
        self.data = data
        return self

    def create(self) -> Collection:
        """Open the collection, creating an empty one if the folder holds none."""
        if self.exists():
            return self.load()
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunDirError(f"{self.path} exists and is not a collection: pass an empty or "
                              "new folder")
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create collection {self.path}: {e.strerror or e}") from None
        self.data = {"format": FORMAT, "created": _now(), "versions": [], "sources": []}
        self.save()
        return self

    def save(self) -> None:
        self._refresh_totals()
        _atomic_write(self.manifest, orjson.dumps(self.data, option=orjson.OPT_INDENT_2))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (the run directories' lock, on the collection folder):
        a second grow on the same collection fails at once, naming the holder."""
        self.path.mkdir(parents=True, exist_ok=True)
        with RunLock(self.path, purpose="grow"):
            yield

    # --------------------------------------------------------------- versions
    @property
    def versions(self) -> list[dict[str, Any]]:
        v: list[dict[str, Any]] = self.data.setdefault("versions", [])
        return v

    def complete_versions(self) -> list[dict[str, Any]]:
        return [v for v in self.versions if v.get("status") == "complete"]

    def running_version(self) -> dict[str, Any] | None:
        for v in self.versions:
            if v.get("status") == "running":
                return v
        return None

    def version_dir(self, entry: dict[str, Any]) -> Path:
        return self.path / str(entry["dir"])

    def last_started(self) -> str | None:
        """When the newest complete version began reading its source (for ``modified_since``)."""
        done = self.complete_versions()
        return str(done[-1]["started"]) if done else None

    def superseded(self) -> set[str]:
        out: set[str] = set()
        for v in self.complete_versions():
            out.update(v.get("supersedes") or ())
        return out

    # ------------------------------------------------------------------ index
    def unit_index(self) -> dict[int, str]:
        """Key hash -> fingerprint of the last answer the collection holds for each key."""
        index: dict[int, str] = {}
        for v in self.complete_versions():
            vdir = self.version_dir(v)
            status = {str(r.get("key")): r.get("status") for r in iter_jsonl(vdir / "units.jsonl")}
            for rec in iter_jsonl(vdir / PLAN_INDEX):
                key = str(rec.get("key"))
                if status.get(key) in ANSWERED:
                    index[_kh(key)] = str(rec.get("fp"))
        return index

    def select(self, source: Iterable[Unit | Skipped], fingerprint: Fingerprint,
               plan: Plan, index: dict[int, str] | None = None,
               ) -> Iterator[tuple[Unit | Skipped, str | None, str]]:
        """The source's items that are new or changed, with fingerprint and kind.

        ``fingerprint`` is handed in (``dynogen.collections.grow.unit_fingerprint``: what
        the model would be shown of a unit, hashed); the store builds no prompts.

        A key the source repeats is passed on (``kind == "repeat"``, no fingerprint)
        only when its first occurrence was, so the run counts it as it would.
        """
        index = self.unit_index() if index is None else index
        seen: set[int] = set()
        planned: set[int] = set()
        for item in source:
            kh = _kh(item.key)
            if kh in seen:
                plan.repeats += 1
                if kh in planned:
                    yield item, None, "repeat"
                continue
            seen.add(kh)
            fp = fingerprint(item)
            old = index.get(kh)
            if old == fp:
                plan.unchanged += 1
                continue
            planned.add(kh)
            if old is None:
                plan.new += 1
                yield item, fp, "new"
            else:
                plan.changed += 1
                plan.changed_keys.add(item.key)
                yield item, fp, "changed"

    def stage(self, source: Iterable[Unit | Skipped], fingerprint: Fingerprint,
              ) -> tuple[Plan, Path]:
        """Write the plan of the next version into a staging folder; returns it and the folder."""
        staging = self.versions_dir / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        plan = Plan()
        units = JsonlWriter(staging / PLAN)
        index = JsonlWriter(staging / PLAN_INDEX)
        try:
            for item, fp, kind in self.select(source, fingerprint, plan):
                rec = item.to_dict()
                units.write(rec)
                if fp is not None:
                    index.write({"key": item.key, "fp": fp, "change": kind})
        finally:
            units.close()
            index.close()
        return plan, staging

    def begin(self, staging: Path, plan: Plan, source: str, config: dict[str, Any], *,
              listed_since: str | None = None) -> dict[str, Any]:
        """Turn a staged plan into the next version directory, recorded as running."""
        number = max((int(v["version"]) for v in self.versions), default=0) + 1
        rel = f"versions/{number:04d}"
        target = self.path / rel
        if target.exists():  # left by a crash between the rename and collection.json
            shutil.rmtree(target)
        os.replace(staging, target)
        entry: dict[str, Any] = {
            "version": number, "dir": rel, "status": "running", "source": source,
            "started": _now(), "finished": None, "units": plan.to_dict(),
            "config": {k: config.get(k) for k in ("model", "base_url", "variants",
                                                   "max_tasks_per_unit", "mode",
                                                   "prompt_layout")
                       if k in config},
        }
        if listed_since is not None:
            entry["listed_since"] = listed_since
        self.versions.append(entry)
        sources: list[str] = self.data.setdefault("sources", [])
        if source not in sources:
            sources.append(source)
        self.save()
        return entry

    def changed_keys(self, entry: dict[str, Any]) -> set[str]:
        return {str(r["key"]) for r in iter_jsonl(self.version_dir(entry) / PLAN_INDEX)
                if r.get("change") == "changed"}

    def complete(self, entry: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        """Record a finished version: counts, cost, and the older tasks it supersedes."""
        vdir = self.version_dir(entry)
        status = {str(r.get("key")): r.get("status") for r in iter_jsonl(vdir / "units.jsonl")}
        redone = {k for k in self.changed_keys(entry) if status.get(k) == "done"}
        gone = self.superseded()
        supersedes: list[str] = []
        if redone:
            for v in self.complete_versions():
                for rec in iter_jsonl(self.version_dir(v) / "tasks.jsonl"):
                    tid = rec.get("id")
                    if isinstance(tid, str) and tid not in gone and task_key(rec) in redone:
                        supersedes.append(tid)
        cost = report.get("cost") or {}
        entry.update(
            status="complete", finished=_now(),
            tasks=int((report.get("tasks") or {}).get("kept", 0)),
            instances=int((report.get("instances") or {}).get("written", 0)),
            requests_paid=int(report.get("requests_paid", 0)),
            cost_usd=round(float(cost.get("spent_usd_total", 0.0)), 6),
            units_answered=sum(1 for s in status.values() if s in ANSWERED),
            units_failed=sum(1 for s in status.values() if s == "failed"),
            supersedes=supersedes,
        )
        self.save()
        return entry

    def _refresh_totals(self) -> None:
        done = self.complete_versions()
        superseded = sum(len(v.get("supersedes") or ()) for v in done)
        self.data["totals"] = {
            "versions": len(done),
            "tasks": sum(int(v.get("tasks", 0)) for v in done) - superseded,
            "tasks_superseded": superseded,
            "instances_written": sum(int(v.get("instances", 0)) for v in done),
            "cost_usd": round(sum(float(v.get("cost_usd", 0.0)) for v in self.versions), 6),
            "requests_paid": sum(int(v.get("requests_paid", 0)) for v in self.versions),
        }

    # ------------------------------------------------------------ merged view
    def iter_tasks(self, *, versions: Iterable[int] | None = None) -> Iterator[dict[str, Any]]:
        """Every live task of the complete versions (oldest first), with its ``version``."""
        gone = self.superseded()
        wanted = None if versions is None else set(versions)
        for v in self.complete_versions():
            if wanted is not None and int(v["version"]) not in wanted:
                continue
            for rec in iter_jsonl(self.version_dir(v) / "tasks.jsonl"):
                if rec.get("id") not in gone:
                    rec["version"] = int(v["version"])
                    yield rec

    def iter_instances(self, *, versions: Iterable[int] | None = None,
                       ) -> Iterator[dict[str, Any]]:
        """Every instance of a live task of the complete versions, with its ``version``."""
        gone = self.superseded()
        wanted = None if versions is None else set(versions)
        for v in self.complete_versions():
            if wanted is not None and int(v["version"]) not in wanted:
                continue
            for rec in iter_instances(self.version_dir(v)):  # either engine's output
                if rec.get("task_id") not in gone:
                    rec["version"] = int(v["version"])
                    yield rec
