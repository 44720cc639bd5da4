"""The instance stage: kept tasks × dataset rows → (instruction, input, output).

Reads ``tasks.jsonl`` as written (a unit's tasks are contiguous), loads each
unit's rows once through ``datasets`` streaming (capped per split), applies
every task to them, drops duplicate instances by xxhash, and journals each
unit in ``builds.jsonl`` with the ``instances.jsonl`` offset after it, so a
killed build resumes without duplicating or losing instances.

Label outputs that are not ClassLabel but take at most ``MAX_CLASSES``
distinct short values over the rows read get the same deterministic
"Answers must be one of …" suffix as ClassLabel tasks; a task whose output
never varies is degenerate and dropped.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from dynogen.config import Config
from dynogen.dedup import HashSet
from dynogen.instances import Instance, build_instance, instance_hash
from dynogen.io.rows import RowsUnavailable, open_rows
from dynogen.progress import make_progress
from dynogen.report import Stats
from dynogen.store.journal import JsonlWriter, iter_jsonl
from dynogen.store.rundir import RunDir
from dynogen.tasks import Task
from dynogen.validate import label_suffix

__all__ = ["build_instances", "instance_dict_hash", "MAX_CLASSES"]

MAX_CLASSES = 10
MAX_CLASS_CHARS = 40
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
    suffix = ""
    if built and not task.labels:
        outputs = {i.output for _, i in built}
        if len(outputs) == 1 and len(built) >= MIN_ROWS_FOR_DEGENERATE:
            skipped["degenerate_constant_output"] += len(built)
            return []
        if (2 <= len(outputs) <= MAX_CLASSES and len(built) > len(outputs)
                and all(len(o) <= MAX_CLASS_CHARS for o in outputs)):
            suffix = label_suffix(sorted(outputs))
    out = []
    for split, inst in built:
        d = inst.to_dict()
        if suffix:
            d["instruction"] = inst.instruction + suffix
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
    todo = sum(1 for k in units if k not in done)
    bar = make_progress(cfg.quiet, "instances", total=todo)
    try:
        for key, tasks in _task_groups(rundir):
            if key in done:
                continue
            rec = _build_unit(cfg, key, tasks, units.get(key, {}), seen, out, opener,
                              str(rundir.path / ".hf-cache"))
            rec["instances_end"] = out.tell()
            journal.write(rec)
            out.flush()
            journal.flush()
            stats.add_build(rec)
            bar.unit_done()
    finally:
        bar.close()
        out.close()
        journal.close()
    return stats


def _build_unit(cfg: Config, key: str, tasks: list[Task], unit: dict[str, Any], seen: HashSet,
                out: JsonlWriter, opener: Callable[..., Any], cache_dir: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": key, "tasks": len(tasks)}
    data_ref = unit.get("data_ref")
    if not data_ref:
        rec.update(status="no_rows", reason="no_data_ref")
        return rec
    try:
        rows_obj = opener(data_ref, tasks[0].config, splits=unit.get("splits") or None,
                          rows_per_split=cfg.rows_per_split, cache_dir=cache_dir)
        rows = list(rows_obj)
    except RowsUnavailable as e:
        rec.update(status="unavailable", reason=e.reason, detail=e.detail[:300])
        return rec
    labels = dict(rows_obj.info.labels)
    skipped: Counter[str] = Counter()
    written = dup = 0
    for task in tasks:
        for d in _apply(task, rows, labels, skipped):
            if seen.add(_dict_hash(d)):
                out.write(d)
                written += 1
            else:
                dup += 1
    rec.update(status="built", rows=len(rows), instances=written, duplicates=dup)
    if skipped:
        rec["skipped"] = dict(skipped)
    return rec


def instance_dict_hash(d: dict[str, Any]) -> int:
    """The dedup hash of an ``instances.jsonl`` record (instruction, input, output)."""
    return _dict_hash(d)


def _dict_hash(d: dict[str, Any]) -> int:
    return instance_hash(Instance(str(d.get("instruction", "")), str(d.get("input", "")),
                                  str(d.get("output", "")), "", "", "", ""))
