"""The instance stage: kept tasks × dataset rows → (instruction, input, output).

Reads ``tasks.jsonl`` as written (a unit's tasks are contiguous), loads each
unit's rows once through ``datasets`` streaming (capped per split), applies
every task to them, drops duplicate instances by xxhash, and journals each
unit in ``builds.jsonl`` with the ``instances.jsonl`` byte range it wrote
and its line count, data synced before journal (``store.journal.Commits``),
so a killed build, or one that lost writes, resumes without duplicating or
losing instances.

Rows come only from the splits the split policy allows (never a test split
by default); each instance records its row's ``split``. A task that lists its
allowed answers gets no instance whose output is not among them
(``output_not_in_labels``); a task whose output never varies is degenerate and
dropped. With ``max_share``, no source dataset keeps more than that share of
the run's tasks (``policy.share.share_caps``); the tasks over the cap build no
instances and are counted as ``over_max_share``.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dynogen.config import Config
from dynogen.dedup import HashSet
from dynogen.instances.render import Instance, build_instance, instance_hash
from dynogen.io.rows import RowsUnavailable, open_rows
from dynogen.policy.share import share_caps
from dynogen.policy.splits import SplitPolicy
from dynogen.progress import make_progress
from dynogen.report import Stats
from dynogen.store.journal import Commits, JsonlWriter, iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.store.storage import storage_error
from dynogen.tasks.task import Task

__all__ = ["build_instances", "instance_dict_hash"]

MIN_ROWS_FOR_DEGENERATE = 5


def _task_groups(rundir: RunDir) -> Iterator[tuple[str, list[Task]]]:
    rows = (Task.from_dict(r) for r in iter_jsonl(rundir.tasks))
    for key, group in itertools.groupby(rows, key=lambda t: f"{t.dataset}::{t.config}"):
        yield key, list(group)


def _apply(task: Task, rows: list[tuple[str, dict[str, Any]]],
           labels: dict[str, tuple[str, ...]], skipped: Counter[str]) -> list[dict[str, Any]]:
    built: list[tuple[str, Instance]] = []
    for split, row in rows:
        inst = build_instance(task, row, labels)
        if isinstance(inst, str):
            skipped[inst] += 1
        else:
            built.append((split, inst))
    if built and not task.labels:
        outputs = {i.output for _, i in built}
        if len(outputs) == 1 and len(built) >= MIN_ROWS_FOR_DEGENERATE:
            skipped["degenerate_constant_output"] += len(built)
            return []
    out = []
    for split, inst in built:
        d = inst.to_dict()
        d["split"] = split
        d["task_split"] = task.split
        if inst.truncated:
            d["input_truncated"] = True
        out.append(d)
    return out


def build_instances(cfg: Config, rundir: RunDir, *, stats: Stats | None = None,
                    opener: Callable[..., Any] = open_rows, seen: HashSet | None = None) -> Stats:
    """Build every unit not yet built. ``opener`` is ``open_rows`` (injectable for tests).

    ``seen`` holds instance hashes already taken elsewhere (a collection's earlier
    versions), so those instances count as duplicates here too.
    """
    stats = stats or Stats()
    # Only what building needs, and only for units that kept tasks (bounded memory).
    units = {str(r.get("key")): {"data_ref": r.get("data_ref"), "splits": r.get("splits")}
             for r in iter_jsonl(rundir.units) if r.get("tasks_kept")}
    done = set()
    for rec in iter_jsonl(rundir.builds):
        stats.add_build(rec)
        done.add(str(rec.get("key")))
    seen = seen if seen is not None else HashSet()
    for rec in iter_jsonl(rundir.instances):
        seen.add(_dict_hash(rec))
    out = JsonlWriter(rundir.instances)
    journal = JsonlWriter(rundir.builds)
    commits = Commits(journal, data=[out], durability=cfg.durability)
    caps = _caps(rundir, cfg.max_share)
    taken: Counter[str] = Counter()
    todo = sum(1 for k in units if k not in done)
    bar = make_progress(cfg.quiet, "instances", total=todo)
    try:
        for key, tasks in _task_groups(rundir):
            capped = 0
            if caps is not None:
                ds = tasks[0].dataset
                keep = max(0, min(len(tasks), caps.get(ds, 0) - taken[ds]))
                taken[ds] += len(tasks)
                tasks, capped = tasks[:keep], len(tasks) - keep
            if key in done:
                continue
            if not tasks:
                rec = {"key": key, "tasks": 0, "status": "capped", "tasks_over_max_share": capped,
                       "instances_start": out.tell(), "instances_end": out.tell()}
                journal.write(rec)
                commits.commit()
                stats.add_build(rec)
                bar.unit_done()
                continue
            start = out.tell()
            rec = _build_unit(cfg, key, tasks, units.get(key, {}), seen, out, opener,
                              str(rundir.path / ".hf-cache"))
            rec["instances_start"] = start
            if capped:
                rec["tasks_over_max_share"] = capped
            rec["instances_end"] = out.tell()
            journal.write(rec)
            commits.commit()  # StorageError (disk full) ends the build; resume redoes the rest
            stats.add_build(rec)
            bar.unit_done()
    finally:
        bar.close()
        commits.close()
    return stats


def _build_unit(cfg: Config, key: str, tasks: list[Task], unit: dict[str, Any], seen: HashSet,
                out: JsonlWriter, opener: Callable[..., Any], cache_dir: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": key, "tasks": len(tasks)}
    data_ref = unit.get("data_ref")
    if not data_ref:
        rec.update(status="no_rows", reason="no_data_ref")
        return rec
    policy = SplitPolicy.parse(cfg.splits)
    try:
        rows_obj = opener(data_ref, tasks[0].config, splits=unit.get("splits") or None,
                          rows_per_split=cfg.rows_per_split, cache_dir=cache_dir,
                          allow=policy.allows)
        rows = list(rows_obj)
    except RowsUnavailable as e:
        _raise_if_disk(e.detail, cache_dir)  # a full disk is not the dataset's fault
        rec.update(status="unavailable", reason=e.reason, detail=e.detail[:300])
        return rec
    labels = dict(rows_obj.info.labels)
    skipped: Counter[str] = Counter()
    written = dup = truncated = 0
    for task in tasks:
        for d in _apply(task, rows, labels, skipped):
            if seen.add(_dict_hash(d)):
                out.write(d)
                written += 1
                truncated += bool(d.get("input_truncated"))
            else:
                dup += 1
    rec.update(status="built", rows=len(rows), instances=written, duplicates=dup)
    if truncated:
        rec["truncated_around_answer"] = truncated
    if skipped:
        rec["skipped"] = dict(skipped)
    return rec


def instance_dict_hash(d: dict[str, Any]) -> int:
    """The dedup hash of an ``instances.jsonl`` record (instruction, input, output)."""
    return _dict_hash(d)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _raise_if_disk(detail: str, cache_dir: str) -> None:
    """Rows that could not be read because the run's own disk is full (the ``datasets``
    cache lives in the run directory) stop the build to be resumed, rather than being
    journaled as an unavailable dataset for good."""
    for code in _DISK_ERRNOS:
        if f"[Errno {code}]" in detail or os.strerror(code) in detail:
            raise storage_error(OSError(code, os.strerror(code)), Path(cache_dir))


def _caps(rundir: RunDir, max_share: float | None) -> dict[str, int] | None:
    """Tasks each source dataset may keep under ``max_share`` (``None``: no cap)."""
    if max_share is None or max_share >= 1.0:
        return None
    counts: Counter[str] = Counter(str(r.get("dataset")) for r in iter_jsonl(rundir.tasks))
    return share_caps(counts, max_share)


def _dict_hash(d: dict[str, Any]) -> int:
    return instance_hash(Instance(str(d.get("instruction", "")), str(d.get("input", "")),
                                  str(d.get("output", "")), "", "", "", ""))
