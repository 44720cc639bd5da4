"""Issue #2's quality bar on the real bundled LLM (llama.cpp + SmolLM2-135M).

    python -m bench.local_quality [--units 40] [--corpus ../shared/hf-metadata-2022/datasets]

Runs ``dynogen run --local`` over the first N usable units of the reference
corpus and checks, from the run's own files:
- the share of responses that became schema-valid task lists (bar: >= 95%);
- kept tasks that name a field the dataset lacks (bar: exactly 0), checked
  against the source metadata, not against dynogen's own filter.
Prints one JSON object; writes it to bench/results/local_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from dynogen.api import arun
from dynogen.config import Config
from dynogen.io.sources import open_source
from dynogen.store.journal import iter_jsonl
from dynogen.units import Unit, skip_reason

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=40)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/hf-metadata-2022/datasets"))
    args = ap.parse_args()
    units = []
    for u in open_source(args.corpus):
        if isinstance(u, Unit) and skip_reason(u) is None:
            units.append(u)
            if len(units) >= args.units:
                break
    fields = {u.key: {f.name for f in u.fields} for u in units}
    with TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outcome = asyncio.run(arun(Config(out=tmp, local=True, quiet=True), source=units,
                                   build=False))
        wall = time.perf_counter() - t0
        tasks = list(iter_jsonl(Path(tmp) / "tasks.jsonl"))
    rep = outcome.report
    invalid = sum(rep["responses_invalid_by_reason"].values())
    bad_fields = sum(
        1 for t in tasks
        if not set(t["input_fields"]) <= fields[f"{t['dataset']}::{t['config']}"]
        or t["output_field"] not in fields[f"{t['dataset']}::{t['config']}"]
    )
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
        "dropped_by_reason": rep["tasks"]["dropped_by_reason"],
        "kept_tasks_naming_missing_fields": bad_fields,
        "wall_seconds": round(wall, 1),
        "exit_code": outcome.exit_code,
    }
    out = ROOT / "bench" / "results" / "local_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
