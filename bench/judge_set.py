"""The judge and the task rules on a hand-written set of good and bad tasks.

    python -m bench.judge_set --local                      # the bundled SmolLM2-135M
    python -m bench.judge_set --base-url URL --model M     # any OpenAI-compatible server
    python -m bench.judge_set --rules-only                 # no server: what the rules do

The set (``tests/fixtures/judge_set.jsonl``) holds tasks written for it over
real dataset schemas and invented ones, each with the unit's metadata, three
sample rows, the expected verdict and its kind: doubled or wrong answer lists,
instructions about one example row, inputs without content, a choice key
without its choices, outputs that cannot be inferred from the inputs, good
instructions that match the dataset's description, and good tasks.

Each task first goes through ``TaskFilter`` as in a run (the rows stand for
the sampled rows, as for a Hub unit); then the judge sees what a run would
show it: the kept task (its answer list rewritten), or, for a task the rules
drop, the instruction as the model wrote it, so the judge is measured on the
mechanical kinds too. Reports, per kind, how often the rules and the judge
agree with the expected verdict, and writes bench/results/judge_set-NAME.json.
``API key``: ``OPENAI_API_KEY`` when the server needs one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "tests" / "fixtures" / "judge_set.jsonl"

__all__ = ["Item", "judged_task", "load_set", "main", "rule_outcome", "sample_instances"]


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    expect_valid: bool
    expect_rule: str  # a drop reason, "kept", or "rewritten" (kept with its answer list mended)
    unit: Any  # dynogen.units.Unit, its rows as samples and as sampled-row facts
    record: dict[str, Any]
    rows: list[dict[str, Any]]


def load_set(path: Path = SET) -> list[Item]:
    from dynogen.instances.render import row_facts
    from dynogen.units import Unit

    items = []
    for line in path.read_bytes().splitlines():
        d = orjson.loads(line)
        u = Unit.from_dict({**d["unit"], "samples": d["rows"]})
        labels = {f.name: f.labels for f in u.fields if f.labels}
        u = dataclasses.replace(u, extra={"facts": row_facts(d["rows"], labels)})
        items.append(Item(d["id"], d["kind"], d["expect_valid"], d["expect_rule"], u,
                          d["task"], d["rows"]))
    return items


def rule_outcome(item: Item) -> tuple[Any, str | None]:
    """``(kept task or None, drop reason or None)`` of the task filter on the item alone."""
    from dynogen.tasks.filter import TaskFilter

    kept, drops = TaskFilter(3).filter(item.unit, "description", [item.record], set())
    return (kept[0], None) if kept else (None, next(iter(drops)))


def judged_task(item: Item) -> Any:
    """What the judge is shown: the kept task, else the task as the model wrote it."""
    from dynogen.tasks.task import Task

    kept, _ = rule_outcome(item)
    if kept is not None:
        return kept
    r = item.record
    return Task(item.id, item.unit.dataset, item.unit.config, "description",
                " ".join(r["instruction"].split()), tuple(r["input_fields"]), r["output_field"])


def sample_instances(item: Item, task: Any) -> list[dict[str, str]]:
    from dynogen.instances.render import Instance, build_instance

    labels = {f.name: f.labels for f in item.unit.fields if f.labels}
    out = []
    for row in item.rows:
        inst = build_instance(task, row, labels)
        if isinstance(inst, Instance):
            out.append({"input": inst.input, "output": inst.output})
    return out[:3]


def rules_agree(item: Item, kept: Any, reason: str | None) -> bool:
    if item.expect_rule in ("kept", "rewritten"):
        return kept is not None
    return reason == item.expect_rule


async def judge_all(items: list[Item], base_url: str | None, model: str | None,
                    timeout: float) -> list[Any]:
    import contextlib

    from dynogen.compose import local_server, open_executor
    from dynogen.config import Config, Secret
    from dynogen.execute.base import Accounting
    from dynogen.prompts.builder import render_metadata
    from dynogen.prompts.dialect import Dialect
    from dynogen.prompts.tokens import TokenCounter
    from dynogen.tasks.judge import Judge

    key = os.environ.get("OPENAI_API_KEY") or "sk-none"
    cfg = Config(local=base_url is None, free=True, quiet=True, request_timeout=timeout,
                 api_key=Secret(key), **({"base_url": base_url} if base_url else {}),
                 **({"model": model} if model else {}))
    counter = TokenCounter(cfg.encoding)
    async with contextlib.AsyncExitStack() as stack:
        if base_url is None:
            cfg = await stack.enter_async_context(local_server(cfg))
        ex = await stack.enter_async_context(open_executor(cfg, stage="judge"))
        judge = Judge(cfg, ex.executor, counter)
        dialect = Dialect(format=cfg.response_format)
        sem = asyncio.Semaphore(cfg.max_in_flight or 4)

        async def one(item: Item) -> Any:
            u = item.unit
            task = judged_task(item)
            meta = render_metadata(dataset=u.dataset, config=u.config,
                                   description=u.description, fields=u.fields,
                                   counter=counter, budget=cfg.metadata_token_budget)
            async with sem:
                return await judge.verdict(meta, task, sample_instances(item, task),
                                           Accounting(), dialect, [f.name for f in u.fields])

        return list(await asyncio.gather(*(one(i) for i in items)))


def report(items: list[Item], verdicts: list[Any] | None) -> dict[str, Any]:
    per: dict[str, Counter[str]] = defaultdict(Counter)
    rows = []
    for n, item in enumerate(items):
        kept, reason = rule_outcome(item)
        c = per[item.kind]
        c["tasks"] += 1
        c["rules_agree"] += rules_agree(item, kept, reason)
        row: dict[str, Any] = {"id": item.id, "kind": item.kind,
                               "expect_valid": item.expect_valid,
                               "rules": reason or ("kept" if kept else None),
                               "instruction": item.record["instruction"]}
        if kept is not None and kept.instruction != item.record["instruction"]:
            row["kept_as"] = kept.instruction
        if verdicts is not None:
            v = verdicts[n]
            if v is None:
                c["judge_no_verdict"] += 1
            else:
                c["judge_agree"] += v.valid == item.expect_valid
                c["judge_said_valid"] += v.valid
                row.update(judge_valid=v.valid, judge_inferable=v.inferable, reason=v.reason)
        rows.append(row)
    total: Counter[str] = Counter()
    for c in per.values():
        total.update(c)
    bad = [i for i in items if not i.expect_valid]
    out: dict[str, Any] = {
        "tasks": len(items), "bad": len(bad), "good": len(items) - len(bad),
        "by_kind": {k: dict(v) for k, v in sorted(per.items())}, "total": dict(total),
    }
    if verdicts is not None:
        answered = [(i, v) for i, v in zip(items, verdicts, strict=True) if v is not None]
        out["judge"] = {
            "agreement": round(total["judge_agree"] / max(1, len(answered)), 3),
            "bad_caught": sum(1 for i, v in answered if not i.expect_valid and not v.valid),
            "good_passed": sum(1 for i, v in answered if i.expect_valid and v.valid),
            "no_verdict": total["judge_no_verdict"],
        }
    out["items"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.judge_set",
                                 description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="the bundled llama.cpp model")
    where.add_argument("--base-url", help="an OpenAI-compatible server (e.g. .../v1)")
    where.add_argument("--rules-only", action="store_true", help="no judge, no server")
    ap.add_argument("--model", help="the model name the server expects")
    ap.add_argument("--set", type=Path, default=SET)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--save", help="write bench/results/judge_set-NAME.json (default: the "
                                   "model's name, or 'local')")
    args = ap.parse_args(argv)
    items = load_set(args.set)
    t0 = time.perf_counter()
    verdicts = None if args.rules_only else asyncio.run(
        judge_all(items, args.base_url, args.model, args.request_timeout))
    doc = {"date": time.strftime("%Y-%m-%d"), "set": str(args.set),
           "server": "local" if args.local else args.base_url, "model": args.model,
           "wall_seconds": round(time.perf_counter() - t0, 1), **report(items, verdicts)}
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    print(text)
    name = args.save or ("rules" if args.rules_only else "local" if args.local
                         else (args.model or "server").replace("/", "_"))
    (ROOT / "bench" / "results" / f"judge_set-{name}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
