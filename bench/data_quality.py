"""Issue #10's bars: what the data policies and task rules leave a user to train on.

    python -m bench.data_quality [--corpus ../shared/hf-metadata-2022/datasets] [--source samples]

Runs ``dynogen run`` with the default policies against the in-process fake
server over a metadata source, and checks from the run's own files:
- every unit is accounted for: seen = processed + skipped + failed, each skip
  and each dropped task under a reason;
- 0 kept tasks (and instances) from no-derivatives or unknown licences, judged
  again here from each task's recorded licence;
- 0 instances from a test-like split;
- every instance whose instruction lists allowed answers has its output among them;
- how many units and datasets the default licence policy leaves out, by class.
Prints one JSON object; writes it to bench/results/data_quality.json.
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
from dynogen.config import Config, Secret
from dynogen.io.sources import open_source
from dynogen.policy.licenses import license_class, license_ids
from dynogen.policy.splits import split_kind
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, serve
from dynogen.units import Unit

ROOT = Path(__file__).resolve().parent.parent
_ANSWERS = re.compile(r"Answers must be one of: (.*)\.$")


def _classes(raw: str | None) -> set[str]:
    return {license_class(i) for i in license_ids(raw)} or {"unknown"}


async def measure(source: str, work: Path) -> dict[str, Any]:
    fake = FakeOpenAI(seed=11)
    async with serve(fake) as server:
        cfg = Config(source=source, out=str(work / "run"), base_url=server.url, free=True,
                     quiet=True, api_key=Secret("sk-fake"), max_in_flight=32)
        t0 = time.perf_counter()
        outcome = await arun(cfg)
        wall = time.perf_counter() - t0
    rep = outcome.report
    run = work / "run"
    tasks = list(iter_jsonl(run / "tasks.jsonl"))
    insts = list(iter_jsonl(run / "instances.jsonl"))
    bad_licence = sum(1 for t in tasks if _classes(t.get("license")) & {"no-derivatives",
                                                                          "unknown", "other"})
    test_rows = sum(1 for i in insts if split_kind(str(i.get("split"))) == "test")
    listed = outside = 0
    for i in insts:
        m = _ANSWERS.search(i["instruction"])
        if m:
            listed += 1
            outside += i["output"] not in m.group(1).split(", ")
    # How much the default licence policy leaves out, per dataset and per unit.
    per_dataset: dict[str, str | None] = {}
    units = 0
    for u in open_source(source):
        if isinstance(u, Unit):
            units += 1
            per_dataset.setdefault(u.dataset, u.license)
    ds_classes = Counter(
        "+".join(sorted(_classes(lic))) for lic in per_dataset.values())
    u_ = rep["units"]
    return {
        "source": source,
        "units": u_,
        "accounted": u_["seen"] == u_["processed"] + u_["skipped"] + u_["failed"],
        "requests": rep["requests"],
        "tasks": rep["tasks"],
        "instances": rep["instances"],
        "kept_tasks_with_nd_unknown_or_other_licence": bad_licence,
        "instances_from_test_splits": test_rows,
        "instances_listing_answers": listed,
        "instances_outside_listed_answers": outside,
        "datasets_by_licence_class": dict(ds_classes.most_common()),
        "datasets": len(per_dataset),
        "wall_seconds": round(wall, 1),
        "exit_code": outcome.exit_code,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/hf-metadata-2022/datasets"))
    ap.add_argument("--source", action="append", default=None,
                    help="sources to measure (default: samples and the corpus)")
    args = ap.parse_args()
    results = {}
    for source in args.source or ["samples", args.corpus]:
        with TemporaryDirectory() as tmp:
            results[source] = asyncio.run(measure(source, Path(tmp)))
    doc = {"date": time.strftime("%Y-%m-%d"), "results": results}
    out = ROOT / "bench" / "results" / "data_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
