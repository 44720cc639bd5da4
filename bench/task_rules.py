"""The task rules over real metadata: what each drops (with samples), and their cost a task.

    python -m bench.task_rules generate --answers fake --out /tmp/fake.jsonl [--card-rows]
    python -m bench.task_rules generate --answers local --units 40 --card-rows --out /tmp/l.jsonl
    python -m bench.task_rules measure /tmp/fake.jsonl [--samples 10] [--repeat 3] [--save NAME]

``generate`` asks for tasks for each unit of the reference corpus and keeps the
raw task records the answers hold, before any rule (one line a unit):
- ``--answers fake``: the in-repo fake's deterministic answer to the exact
  request ``dynogen run`` would send (``dynogen.testing.fake_answers``), in
  process, for every sendable unit;
- ``--answers local``: the bundled SmolLM2-135M (llama.cpp), or any server with
  ``--base-url``, for the first ``--units`` units.

``--card-rows`` gives each unit the example rows its dataset card shows ("An
example of 'train' looks as follows.", parsed here, in the bench only): the
prompt then shows sample rows, as it does for Hub and folder sources, and the
rules that read values (instance-specific instructions, inputs without
content, choice keys) have values to read. Units whose card has no example of
their fields are left out under ``--card-rows``.

``measure`` runs ``TaskFilter`` over the records as a run does (variants in
order, run-wide dedup) and reports tasks, kept, drops per reason with evenly
spread samples, instructions whose answer list was rewritten, and the
filter's CPU time per task (best of ``--repeat``). It imports only what every
version of dynogen has, so the same records measure another checkout:
``PYTHONPATH=/path/to/other python -m bench.task_rules measure R.jsonl``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios import DEFAULT_CORPUS

ROOT = Path(__file__).resolve().parent.parent
_EXAMPLE = re.compile(r"An example of '[^']*' looks as follows[.:]?\s*```[a-z]*\n(.*?)```", re.S)


# ------------------------------------------------------------------ card rows

def card_rows(card: str) -> list[dict[str, Any]]:
    """The example rows a dataset card shows, parsed as JSON or as a Python literal."""
    rows = []
    for block in _EXAMPLE.findall(card):
        text = block.strip()
        try:
            row = json.loads(text)
        except ValueError:
            try:
                row = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(row, dict):
            rows.append(_plain(row))
    return rows


def _plain(value: Any) -> Any:
    """A card example as JSON values: ``...`` (cut content) as "…", tuples as lists."""
    if value is Ellipsis:
        return "…"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def corpus_units(corpus: Path, *, with_rows: bool, limit: int | None,
                 one_per_dataset: bool = False) -> list[Any]:
    """Sendable units of the corpus; with ``with_rows``, only those a card example fits,
    given that example as their sample rows; with ``one_per_dataset``, a dataset's first."""
    import dataclasses

    from dynogen.io.sources import open_source
    from dynogen.units import Unit, skip_reason

    units = []
    cards: dict[str, list[dict[str, Any]]] = {}
    for u in open_source(str(corpus)):
        if not isinstance(u, Unit) or skip_reason(u) is not None or (
                one_per_dataset and units and units[-1].dataset == u.dataset):
            continue
        if with_rows:
            if u.dataset not in cards:
                card = corpus / u.dataset / "README.md"
                cards[u.dataset] = card_rows(card.read_text("utf-8", "replace")) if (
                    card.exists()) else []
            names = {f.name for f in u.fields}
            fit = {orjson.dumps(r, option=orjson.OPT_SORT_KEYS): r
                   for r in cards[u.dataset] if set(r) == names}
            rows = list(fit.values())[:3]
            if not rows:
                continue
            u = dataclasses.replace(u, samples=tuple(rows))
        units.append(u)
        if limit is not None and len(units) >= limit:
            break
    return units


# ------------------------------------------------------------------ generate

def fake_answers(units: list[Any]) -> list[dict[str, Any]]:
    import xxhash

    from dynogen.config import Config
    from dynogen.prompts.builder import PromptBuilder
    from dynogen.prompts.tokens import TokenCounter
    from dynogen.tasks.parsing import parse_tasks
    from dynogen.testing.fake_answers import auto_content, task_spec

    cfg = Config()
    pb = PromptBuilder(cfg, TokenCounter(cfg.encoding))
    out = []
    for u in units:
        answers = {}
        for v in cfg.variants:
            body = pb.request(u, v).body
            digest = xxhash.xxh3_64_intdigest(orjson.dumps(body))
            answers[v] = parse_tasks(auto_content(task_spec(body), digest)).tasks
        out.append({"unit": u.to_dict(), "answers": answers})
    return out


async def model_answers(units: list[Any], base_url: str | None, model: str | None,
                        timeout: float) -> list[dict[str, Any]]:
    """Each unit's raw task records from a real model: the bundled one, or ``base_url``."""
    import contextlib

    from dynogen.compose import local_server, open_executor
    from dynogen.config import Config
    from dynogen.execute.base import Accounting, Request
    from dynogen.prompts.builder import PromptBuilder
    from dynogen.prompts.dialect import Dialect
    from dynogen.prompts.tokens import TokenCounter
    from dynogen.tasks.parsing import parse_tasks

    cfg = Config(local=base_url is None, free=True, quiet=True, request_timeout=timeout,
                 **({"base_url": base_url} if base_url else {}),
                 **({"model": model} if model else {}))
    async with contextlib.AsyncExitStack() as stack:
        if base_url is None:
            cfg = await stack.enter_async_context(local_server(cfg))
        ex = await stack.enter_async_context(open_executor(cfg, stage="tasks"))
        pb = PromptBuilder(cfg, TokenCounter(cfg.encoding))
        dialect = Dialect(format=cfg.response_format)
        sem = asyncio.Semaphore(cfg.max_in_flight or 4)

        async def one(u: Any, v: str) -> list[dict[str, Any]]:
            mt = cfg.max_tokens_for(v)
            async with sem:
                while True:
                    p = pb.request(u, v, max_tokens=mt, dialect=dialect)
                    comp = await ex.executor.complete(
                        Request(orjson.dumps(p.body), p.prompt_tokens, p.max_tokens, variant=v),
                        Accounting())
                    if comp.finish_reason == "length" and mt < cfg.max_tokens_retry:
                        mt = cfg.max_tokens_retry
                        continue
                    return parse_tasks(comp.content).tasks

        out = []
        for u in units:
            got = await asyncio.gather(*(one(u, v) for v in cfg.variants))
            out.append({"unit": u.to_dict(), "answers": dict(zip(cfg.variants, got,
                                                                  strict=True))})
            print(f"  {len(out)}/{len(units)} {u.key}", file=sys.stderr)
    return out


# ------------------------------------------------------------------ measure

def load(path: Path) -> list[tuple[Any, dict[str, list[dict[str, Any]]]]]:
    import dataclasses

    from dynogen.instances.render import row_facts
    from dynogen.units import Unit

    out = []
    for line in path.read_bytes().splitlines():
        doc = orjson.loads(line)
        u = Unit.from_dict(doc["unit"])
        if u.samples:  # rows shown as samples stand for the rows sampled, as for the Hub
            labels = {f.name: f.labels for f in u.fields if f.labels}
            u = dataclasses.replace(u, extra={"facts": row_facts(u.samples, labels)})
        out.append((u, doc["answers"]))
    return out


def measure(data: list[tuple[Any, dict[str, list[dict[str, Any]]]]], *, samples: int,
            repeat: int) -> dict[str, Any]:
    from dynogen.tasks.filter import TaskFilter

    tasks = sum(len(recs) for _, answers in data for recs in answers.values())
    best = float("inf")
    kept = 0
    drops: Counter[str] = Counter()
    for _ in range(repeat):
        f = TaskFilter(3)
        kept, drops = 0, Counter()
        t0 = time.process_time()
        for u, answers in data:
            seen: set[int] = set()
            for v, recs in answers.items():
                k, d = f.filter(u, v, recs, seen)
                kept += len(k)
                drops.update(d)
        best = min(best, time.process_time() - t0)
    # One record at a time, to know which reason each dropped task fell under.
    f = TaskFilter(10**6)
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rewritten = []
    for u, answers in data:
        seen = set()
        for v, recs in answers.items():
            for rec in recs:
                k, d = f.filter(u, v, [rec], seen)
                row = {"dataset": u.dataset, "config": u.config,
                       "instruction": rec["instruction"], "inputs": rec["input_fields"],
                       "output": rec["output_field"]}
                if d:
                    by_reason[next(iter(d))].append(row)
                elif k and _rewritten(" ".join(str(rec["instruction"]).split()),
                                      k[0].instruction):
                    rewritten.append({**row, "kept": k[0].instruction})
    return {
        "tasks": tasks, "kept": kept, "dropped_by_reason": dict(drops.most_common()),
        "us_per_task": round(1e6 * best / max(tasks, 1), 1),
        "samples": {r: _spread(rows, samples) for r, rows in sorted(by_reason.items())},
        "answer_lists_rewritten": len(rewritten),
        "answer_list_samples": _spread(rewritten, samples),
    }


def _rewritten(raw: str, kept: str) -> bool:
    """Whether the kept instruction is more than the raw one plus a suffix."""
    return not kept.startswith(raw)


def _spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` rows evenly spread over ``rows`` (so one dataset does not fill the sample)."""
    if len(rows) <= n or n <= 0:
        return rows[:max(n, 0)]
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.task_rules",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--answers", choices=("fake", "local"), default="fake")
    g.add_argument("--base-url", help="with --answers local: this server, not the bundled one")
    g.add_argument("--model")
    g.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    g.add_argument("--units", type=int)
    g.add_argument("--card-rows", action="store_true")
    g.add_argument("--one-per-dataset", action="store_true",
                   help="a dataset's first usable unit only (the corpus is sorted by name)")
    g.add_argument("--request-timeout", type=float, default=300.0)
    g.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("records", type=Path)
    m.add_argument("--samples", type=int, default=10)
    m.add_argument("--repeat", type=int, default=3)
    m.add_argument("--save", help="also write bench/results/task_rules-NAME.json")
    args = ap.parse_args(argv)
    if args.cmd == "generate":
        units = corpus_units(args.corpus, with_rows=args.card_rows, limit=args.units,
                             one_per_dataset=args.one_per_dataset)
        if args.answers == "fake":
            docs = fake_answers(units)
        else:
            docs = asyncio.run(model_answers(units, args.base_url, args.model,
                                             args.request_timeout))
        args.out.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
        print(f"{len(docs)} units, {sum(len(r) for d in docs for r in d['answers'].values())} "
              f"task records -> {args.out}")
        return 0
    doc = {"records": str(args.records), "date": time.strftime("%Y-%m-%d"),
           **measure(load(args.records), samples=args.samples, repeat=args.repeat)}
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    print(text)
    if args.save:
        out = ROOT / "bench" / "results" / f"task_rules-{args.save}.json"
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
