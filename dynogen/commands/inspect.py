"""``dynogen inspect RUN_DIR`` (quality report): what the filters did, readable before training.

Reads a run directory's files only (no LLM, no rows): the policies, units
skipped by reason, the share of kept tasks per source dataset, a sample of
kept tasks with a few of their instances, and a sample of dropped tasks per
reason (``dropped_tasks.jsonl``, with the rows they would have used when the
rows were known). Memory stays small whatever the run's size: counts are
streamed and only the sampled tasks' instances are kept.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import ConfigError
from dynogen.store.instance_files import iter_instances
from dynogen.store.journal import iter_jsonl

__all__ = ["Inspection", "inspect_run", "format_inspection"]

TOP_SOURCES = 15


@dataclass
class Inspection:
    """What ``inspect`` shows, as data (``to_dict``) and as text (``format_inspection``)."""

    path: Path
    policies: dict[str, Any]
    units_skipped: dict[str, int]
    tasks_kept: int
    tasks_dropped: dict[str, int]
    share_by_dataset: list[tuple[str, int, float]]
    kept_sample: list[dict[str, Any]]
    dropped_sample: dict[str, list[dict[str, Any]]]
    instances_skipped: dict[str, int] = field(default_factory=dict)
    instances_by_split: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "policies": self.policies,
            "units_skipped_by_reason": self.units_skipped, "tasks_kept": self.tasks_kept,
            "tasks_dropped_by_reason": self.tasks_dropped,
            "share_by_dataset": [{"dataset": d, "tasks": n, "share": s}
                                 for d, n, s in self.share_by_dataset],
            "kept_sample": self.kept_sample, "dropped_sample": self.dropped_sample,
            "instances_skipped_by_reason": self.instances_skipped,
            "instances_by_split": self.instances_by_split,
        }


def inspect_run(out: str | Path, *, kept: int = 10, per_reason: int = 3,
                instances_per_task: int = 2) -> Inspection:
    path = Path(out)
    tasks_path = path / "tasks.jsonl"
    if not (path / "manifest.json").exists() or not tasks_path.exists():
        raise ConfigError(f"{path} holds no run (no manifest.json/tasks.jsonl): give the --out "
                          "of a `dynogen run`")
    report: dict[str, Any] = {}
    if (path / "report.json").exists():
        report = orjson.loads((path / "report.json").read_bytes())
    cfg: dict[str, Any] = report.get("config") or orjson.loads(
        (path / "manifest.json").read_bytes()).get("config", {})
    policies = {k: cfg.get(k) for k in ("licenses", "languages", "splits", "max_share")}
    per_ds: Counter[str] = Counter()
    total = sum(1 for _ in iter_jsonl(tasks_path))
    step = max(1, total // max(1, kept))
    sample: list[dict[str, Any]] = []
    for i, t in enumerate(iter_jsonl(tasks_path)):
        per_ds[str(t.get("dataset"))] += 1
        if i % step == 0 and len(sample) < kept:
            sample.append({**t, "instances": []})
    by_id = {t["id"]: t for t in sample}
    splits: Counter[str] = Counter()
    for inst in iter_instances(path):  # instances.jsonl or a sharded build's instances/
        splits[str(inst.get("split"))] += 1
        found = by_id.get(str(inst.get("task_id")))
        if found is not None and len(found["instances"]) < instances_per_task:
            found["instances"].append({k: inst.get(k) for k in ("input", "output", "split")})
    dropped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in iter_jsonl(path / "dropped_tasks.jsonl"):
        r = str(d.get("reason"))
        if len(dropped[r]) < per_reason:
            dropped[r].append(d)
    shares = [(ds, n, round(n / total, 4)) for ds, n in per_ds.most_common()]
    units = report.get("units", {})
    return Inspection(path, policies, units.get("skipped_by_reason", {}), total,
                      report.get("tasks", {}).get("dropped_by_reason", {}), shares, sample,
                      dict(sorted(dropped.items())),
                      report.get("instances", {}).get("skipped_by_reason", {}), dict(splits))


def _indent(text: str, pad: str = "      ", limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return "\n".join(pad + line for line in text.splitlines() or [""])


def format_inspection(ins: Inspection) -> str:
    lines = [f"run: {ins.path}",
             "policies: " + ", ".join(f"{k}={v}" for k, v in ins.policies.items()),
             "units skipped: " + (", ".join(f"{k} {v}" for k, v in ins.units_skipped.items())
                                  or "none"),
             f"tasks kept: {ins.tasks_kept}; dropped: "
             + (", ".join(f"{k} {v}" for k, v in ins.tasks_dropped.items()) or "none"),
             "instances by split: " + (", ".join(f"{k} {v}" for k, v in
                                                 sorted(ins.instances_by_split.items())) or "none"),
             "instances skipped: " + (", ".join(f"{k} {v}" for k, v in
                                                ins.instances_skipped.items()) or "none"),
             "", f"share of kept tasks per source dataset (top {TOP_SOURCES}):"]
    for ds, n, share in ins.share_by_dataset[:TOP_SOURCES]:
        lines.append(f"  {share:6.1%}  {n:5d}  {ds}")
    if len(ins.share_by_dataset) > TOP_SOURCES:
        lines.append(f"  … {len(ins.share_by_dataset) - TOP_SOURCES} more datasets")
    lines += ["", f"kept tasks (a sample of {len(ins.kept_sample)}):"]
    for t in ins.kept_sample:
        lines.append(f"- [{t.get('dataset')}/{t.get('config')}, licence {t.get('license')}] "
                     f"{', '.join(t.get('input_fields') or [])} -> {t.get('output_field')}")
        lines.append(_indent(str(t.get("instruction")), "    "))
        for inst in t["instances"]:
            lines.append(f"    instance ({inst.get('split')}):")
            lines.append(_indent(str(inst.get("input"))))
            lines.append(_indent(str(inst.get("output")), "      => ", 200))
    lines += ["", "dropped tasks (a sample per reason):"]
    for reason, items in ins.dropped_sample.items():
        lines.append(f"* {reason} ({ins.tasks_dropped.get(reason, len(items))} in all)")
        for d in items:
            lines.append(f"  - [{d.get('dataset')}/{d.get('config')}] "
                         f"{', '.join(d.get('input_fields') or [])} -> {d.get('output_field')}")
            lines.append(_indent(str(d.get("instruction")), "    "))
            for ex in d.get("examples") or []:
                lines.append(_indent(str(ex.get("input")), "      row: ", 200))
                lines.append(_indent(str(ex.get("output")), "      => ", 200))
    return "\n".join(lines)
