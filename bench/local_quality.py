"""Issues #2 and #10's quality bars on the real bundled LLM (llama.cpp + SmolLM2-135M).

    python -m bench.local_quality [--units 40] [--corpus ../shared/hf-metadata-2022/datasets]
    python -m bench.local_quality --tasks OLD_RUN/tasks.jsonl   # judge another run's tasks

Runs ``dynogen run --local`` over the first N usable units of the reference
corpus (policies lifted: the same units whatever their licence, so runs stay
comparable) and checks, from the run's own files:
- the share of responses that became schema-valid task lists (bar: >= 95%);
- kept tasks that name a field the dataset lacks (bar: exactly 0), checked
  against the source metadata, not against dynogen's own filter;
- kept tasks per request, and the share of kept tasks that pass issue #10's
  task rules when checked again one by one (``rules_pass_share``), with the
  reasons of those that fail. ``--tasks`` computes the same for a tasks.jsonl
  written by another version (e.g. before the rules existed);
- a sample of 20 kept tasks.
Prints one JSON object; writes it to bench/results/local_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from dynogen.api import arun
from dynogen.config import Config
from dynogen.io.sources import open_source
from dynogen.store.journal import iter_jsonl
from dynogen.tasks.filter import TaskFilter
from dynogen.units import Unit, skip_reason

ROOT = Path(__file__).resolve().parent.parent
_SUFFIX = re.compile(r"\s*Answers must be one of: .*$")


def rules_check(tasks: list[dict[str, Any]], units: dict[str, Unit]) -> dict[str, Any]:
    """Each kept task checked alone against today's rules (no run-wide dedup)."""
    fails: Counter[str] = Counter()
    for t in tasks:
        unit = units[f"{t['dataset']}::{t['config']}"]
        rec = {"instruction": _SUFFIX.sub("", t["instruction"]),
               "input_fields": t["input_fields"], "output_field": t["output_field"]}
        kept, drops = TaskFilter(1).filter(unit, t["variant"], [rec], set())
        if not kept:
            fails.update(drops)
        elif t.get("labels") and not kept[0].labels:
            fails["label_suffix_untrue"] += 1  # a suffix where none can list every answer
    n = len(tasks)
    return {"tasks": n, "pass": n - sum(fails.values()),
            "rules_pass_share": round((n - sum(fails.values())) / n, 4) if n else None,
            "fail_by_reason": dict(fails.most_common())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=40)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/hf-metadata-2022/datasets"))
    ap.add_argument("--tasks", help="judge this tasks.jsonl instead of running")
    ap.add_argument("--out", help="keep the run directory here (default: a temporary one)")
    ap.add_argument("--judge", action="store_true",
                    help="also ask the model to judge each kept task (dynogen run --judge)")
    ap.add_argument("--request-timeout", type=float, default=120.0,
                    help="seconds; raise it on a loaded machine, where answers queue in llama.cpp")
    ap.add_argument("--prompt-layout", default="auto", choices=("auto", "shared", "per_unit"),
                    help="auto gives the local server per_unit (grammar enums); shared tries "
                         "the one-prefix layout on it (writes local_quality_shared.json)")
    args = ap.parse_args()
    units = []
    for u in open_source(args.corpus):
        if isinstance(u, Unit) and skip_reason(u) is None:
            units.append(u)
            if len(units) >= args.units:
                break
    by_key = {u.key: u for u in units}
    if args.tasks:
        tasks = list(iter_jsonl(Path(args.tasks)))
        print(json.dumps(rules_check(tasks, by_key), indent=2))
        return
    fields = {u.key: {f.name for f in u.fields} for u in units}
    with TemporaryDirectory() as scratch:
        tmp = args.out or scratch
        t0 = time.perf_counter()
        cfg = Config(out=tmp, local=True, quiet=True, licenses="any", languages="any",
                     splits="all", request_timeout=args.request_timeout, judge=args.judge,
                     prompt_layout=args.prompt_layout)
        outcome = asyncio.run(arun(cfg, source=units, build=False))
        wall = time.perf_counter() - t0
        tasks = list(iter_jsonl(Path(tmp) / "tasks.jsonl"))
        judged = [i for r in iter_jsonl(Path(tmp) / "units.jsonl")
                  for i in r.get("judge_invalid", [])]
    rep = outcome.report
    invalid = sum(rep["responses_invalid_by_reason"].values())
    bad_fields = sum(
        1 for t in tasks
        if not set(t["input_fields"]) <= fields[f"{t['dataset']}::{t['config']}"]
        or t["output_field"] not in fields[f"{t['dataset']}::{t['config']}"]
    )
    step = max(1, len(tasks) // 20)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "units": len(units),
        "requests": rep["requests"],
        "responses": rep["responses"],
        "schema_valid_share": round((rep["responses"] - invalid) / max(1, rep["responses"]), 4),
        "invalid_by_reason": rep["responses_invalid_by_reason"],
        "requests_failed_by_reason": rep["requests_failed_by_reason"],
        "tasks_generated": rep["tasks"]["generated"],
        "tasks_kept": rep["tasks"]["kept"],
        "kept_per_request": round(rep["tasks"]["kept"] / max(1, rep["requests"]), 3),
        "dropped_by_reason": rep["tasks"]["dropped_by_reason"],
        "kept_tasks_naming_missing_fields": bad_fields,
        "rules": rules_check(tasks, by_key),
        "sample": [{k: t[k] for k in ("dataset", "config", "instruction", "input_fields",
                                      "output_field")} for t in tasks[::step][:20]],
        "wall_seconds": round(wall, 1),
        "exit_code": outcome.exit_code,
    }
    if args.judge:
        result["judge_invalid"] = judged
    result["prompt_layout"] = args.prompt_layout
    name = "local_quality_judge.json" if args.judge else (
        "local_quality_shared.json" if args.prompt_layout == "shared" else "local_quality.json")
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
