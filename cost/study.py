"""The cost study: what dynogen's task generation costs on the reference corpus,
and what a Dynosaur-size (800K-instance) run would cost, set against the paper.

Everything priced here comes from ``dynogen.api.estimate`` (the dry run: exact
prompt tokens from the real prompts, output tokens from a calibration) and
dynogen's price table. Writes ``cost/results.json``; ``cost/README.md`` reads
the numbers from it.

    .venv/bin/python cost/study.py [--corpus DIR] [--out cost/results.json]

Output-token calibrations (no real API was called; they bracket what a model
writes):

- ``default``: ``DEFAULT_EXPECTED_OUTPUT`` (150 tokens per request);
- ``fewshot``: the mean length of dynogen's own few-shot answers (a model that
  imitates its examples: 2-3 tasks of one-sentence instructions).

The 800K extrapolation multiplies three numbers; only the first is measured:

1. rows per unit: from each config's split sizes in ``dataset_infos.json``,
   ``sum(min(rows_per_split, n) for each split)`` with dynogen's default 200;
2. tasks kept per unit: an assumption (2 / 3 / 4), since no real model ran;
3. cost per unit: the dry run's expected cost divided by its units.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from dynogen.api import estimate
from dynogen.commands.estimate import CACHE_MIN_TOKENS
from dynogen.config import Config
from dynogen.engine.calibration import DEFAULT_EXPECTED_OUTPUT
from dynogen.execute.prices import PriceTable
from dynogen.io.sources import open_source
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.schema import response_format
from dynogen.prompts.tokens import TokenCounter
from dynogen.units import Skipped, Unit, skip_reason

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "hf-metadata-2022" / "datasets"

MODELS = ("gpt-3.5-turbo", "gpt-4o-mini", "gpt-4.1-nano", "gpt-4.1-mini", "gpt-5-nano",
          "gpt-5-mini")
# The paper's era: gpt-3.5-turbo(-0301) at its March 2023 launch price, $0.002 per 1K
# tokens in and out (= $2 per 1M). Dynosaur's code calls model='gpt-3.5-turbo'.
PAPER_ERA_MODEL = "gpt-3.5-turbo-0301"
PAPER_ERA_PRICE = 2.0
# Sources: the Dynosaur README ("$11.5 for generating 800K instruction tuning data"),
# the abstract ("800K"), and instruction_data/instructions-full.json (~1.91 MB at ~330
# bytes a task, so ~5.7K tasks).
PAPER: dict[str, float] = {
    "cost_usd": 11.5,
    "instances": 800_000,
    "tasks_approx": 5_700,
    "max_rows_per_config": 200,  # download_data.py: up to 100 rows from train + 100 from validation
    "max_tokens": 256,           # generate_tasks_*.py
    "requests_per_config": 2,    # with and without description, one call each
}
TARGET_INSTANCES = 800_000
TASKS_PER_UNIT = {"low": 2, "expected": 3, "high": 4}
REASONING_STEP = 100  # reasoning tokens per request, for the gpt-5 sensitivity


def fewshot_calibration(encoding: str) -> float:
    """Mean tokens of the few-shot answers, as a model imitating them would write."""
    from importlib import resources

    ex = json.loads(resources.files("dynogen").joinpath("data/fewshot.json").read_text("utf-8"))
    tc = TokenCounter(encoding)
    lens = [tc.count(orjson.dumps({"tasks": e["tasks"]}).decode()) for e in ex["examples"]]
    return statistics.mean(lens)


def write_calibration(path: Path, mean: float, note: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": "", "requests": 1, "mean_output_tokens": mean,
                                "note": note}, indent=2) + "\n")
    return path


def split_rows(corpus: Path, rows_per_split: int) -> dict[tuple[str, str], dict[str, int]]:
    """(dataset, config) -> {split: rows dynogen would read}, from dataset_infos.json."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for info in corpus.rglob("dataset_infos.json"):
        dataset = str(info.parent.relative_to(corpus))
        try:
            d = json.loads(info.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        for config, meta in d.items():
            splits = meta.get("splits") or {}
            out[(dataset, config)] = {
                s: min(rows_per_split, int(v.get("num_examples") or 0))
                for s, v in splits.items() if isinstance(v, dict)}
    return out


def rows_stats(units: list[Unit], sizes: dict[tuple[str, str], dict[str, int]],
               rows_per_split: int) -> dict[str, Any]:
    known = []
    dyno = []
    for u in units:
        s = sizes.get((u.dataset, u.config))
        if s is None:
            continue
        known.append(sum(s.values()))
        # What Dynosaur read: up to 100 rows of train and of validation.
        dyno.append(sum(min(100, n) for k, n in s.items() if "train" in k or "validation" in k))
    return {
        "units_with_split_sizes": len(known),
        "units_without": len(units) - len(known),
        "rows_per_split": rows_per_split,
        "mean_rows_per_unit": round(statistics.mean(known), 1),
        "median_rows_per_unit": statistics.median(known),
        "mean_rows_per_unit_dynosaur_rule": round(statistics.mean(dyno), 1),
    }


def estimate_model(items: list[Unit | Skipped], corpus: Path, model: str,
                   calibration: Path | None, **price: Any) -> dict[str, Any]:
    cfg = Config(source=str(corpus), model=model, **price)
    e = estimate(cfg, calibration=calibration, source=items).to_dict()
    c = e["cost_usd"]["by_output"]
    return {
        "model": model,
        "price_override": price or None,
        "units": e["units"],
        "units_skipped": sum(e["units_skipped"].values()),
        "requests": e["requests"],
        "input_tokens": e["input_tokens"],
        "cached_input_tokens": e["cached_input_tokens"],
        "output_tokens": e["output_tokens"],
        "cost_online": {k: round(v["online"], 4) for k, v in c.items()},
        "cost_batch": {k: round(v["batch"], 4) for k, v in c.items()},
        "prefix_tokens": e["prefix_tokens"],
    }


def _drop_enums(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_enums(v) for k, v in node.items() if k != "enum"}
    if isinstance(node, list):
        return [_drop_enums(v) for v in node]
    return node


def shared_schema_tokens(tc: TokenCounter) -> int:
    """Tokens of a unit-independent schema: dynogen's, with field names as plain strings."""
    rf = response_format("json_schema", ["a", "b", "c"], Config().max_tasks_per_unit)
    assert rf is not None
    return tc.count(json.dumps(_drop_enums(rf["json_schema"]), ensure_ascii=False))


def caching(items: list[Unit | Skipped], model: str, requests: int, input_tokens: int,
            table: PriceTable) -> dict[str, Any] | None:
    """What padding the shared prefix to 1,024 tokens would save or cost (online prices).

    OpenAI puts a json_schema *before* the system message, and dynogen's schema
    holds the unit's field names, so today no two units share a prefix at all.
    Scenarios, per request: ``pad_only`` pads the few-shot prefix to 1,024 tokens
    but keeps the per-unit schema (no hit possible: pure cost); ``pad_and_shared_schema``
    also makes the schema unit-independent (field names checked after the answer,
    as ``validate`` already does), so schema + system + few-shot is one cached prefix.
    """
    price = table.lookup(model)
    if not price.supports_prompt_cache:
        return None
    cfg = Config(model=model)
    pb = PromptBuilder(cfg, TokenCounter(price.encoding))
    tc = TokenCounter(price.encoding)
    shared_schema = shared_schema_tokens(tc)
    prefix = {v: pb._prefixes[v][1] for v in cfg.variants}
    per_variant_pad = {v: max(0, CACHE_MIN_TOKENS - (shared_schema + n)) for v, n in prefix.items()}
    pad_tokens = round(requests / len(cfg.variants)) * sum(per_variant_pad.values())
    cached_per_request = CACHE_MIN_TOKENS  # the padded prefix, exactly one cache step
    base = price.cost(input_tokens, 0)
    pad_only = price.cost(input_tokens + pad_tokens, 0)
    first = len(cfg.variants)  # the first request of each variant writes the cache
    hit = (requests - first) * cached_per_request
    shared = price.cost(input_tokens + pad_tokens, 0, hit)
    # Hit rate at which the padded, shared-schema prompt breaks even with today's.
    saving_per_hit = CACHE_MIN_TOKENS * (price.input - price.cached_input) / 1e6
    pad_cost_per_request = (pad_tokens / requests) * price.input / 1e6
    return {
        "model": model,
        "input_price": price.input, "cached_input_price": price.cached_input,
        "prefix_tokens_today": prefix,
        "shared_schema_tokens": shared_schema,
        "pad_tokens_per_request": {v: p for v, p in per_variant_pad.items()},
        "input_cost_today": round(base, 4),
        "input_cost_pad_only": round(pad_only, 4),
        "input_cost_pad_and_shared_schema_all_hits": round(shared, 4),
        "saving_vs_today_usd": round(base - shared, 4),
        "saving_vs_today_pct_of_input": round(100 * (base - shared) / base, 1),
        "break_even_hit_rate": round(pad_cost_per_request / saving_per_hit, 3),
    }


def extrapolate(per_unit_cost: dict[str, float], rows_per_unit: float) -> dict[str, Any]:
    """Units and dollars for 800K instances, for each tasks-per-unit assumption."""
    out: dict[str, Any] = {}
    for tasks in TASKS_PER_UNIT.values():
        units = TARGET_INSTANCES / (tasks * rows_per_unit)
        out[f"tasks_per_unit_{tasks}"] = {
            "units_needed": round(units),
            "requests": round(2 * units),
            **{k: round(units * v, 2) for k, v in per_unit_cost.items()},
        }
    return out


def measure_batch(items: list[Unit | Skipped], model: str, rows_per_unit: float,
                  output_tokens: int = DEFAULT_EXPECTED_OUTPUT) -> dict[str, Any]:
    """A real ``--mode batch`` run over ``items`` against the exact-token fake's Batch API,
    priced as ``model``: what the ledger and the server bill at batch prices, per unit,
    and that cost per unit scaled to a Dynosaur-size run (800K instances).

    The fake answers ``output_tokens`` tokens a request (the default calibration), so
    this checks batch mode's billing against the estimate rather than guessing output.
    """
    import asyncio
    import tempfile

    from dynogen.api import arun
    from dynogen.testing import FakeBatches, FakeOpenAI, serve

    async def go(out: Path) -> dict[str, Any]:
        fake = FakeOpenAI(model=model, exact_tokens=True, output_tokens=output_tokens)
        batches = FakeBatches(fake, validating=0.05, in_progress=0.5, finalizing=0.05)
        async with serve(fake) as server:
            outcome = await arun(Config(source="unused", out=str(out), base_url=server.url,
                                        model=model, mode="batch", poll_seconds=0.2,
                                        quiet=True), source=items, build=False)
        billed = batches.counts()
        price = PriceTable.load().lookup(model)
        server_usd = price.cost(billed["billed"]["prompt_tokens"],
                                billed["billed"]["completion_tokens"], batch=True)
        units = outcome.report["units"]["processed"]
        return {"exit": outcome.exit_code, "units": units,
                "requests": outcome.report["requests_paid"],
                "batches": billed["batches_created"],
                "ledger_usd": outcome.report["cost"]["ledger"]["spent_usd"],
                "server_billed_usd": round(server_usd, 6),
                "usd_per_1k_units": round(1000 * server_usd / max(units, 1), 4)}

    with tempfile.TemporaryDirectory() as tmp:
        run = asyncio.run(go(Path(tmp) / "run"))
    per_unit = run["server_billed_usd"] / max(run["units"], 1)
    units_800k = TARGET_INSTANCES / (TASKS_PER_UNIT["expected"] * rows_per_unit)
    return {"model": model, "output_tokens_per_request": output_tokens, "run": run,
            "dynosaur_size_800k": {"rows_per_unit": rows_per_unit,
                                   "tasks_kept_per_unit": TASKS_PER_UNIT["expected"],
                                   "units": round(units_800k),
                                   "batch_usd": round(units_800k * per_unit, 2)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument("--batch-units", type=int, default=400,
                   help="units of the corpus run in --mode batch against the fake for the "
                        "measured batch figure (0: skip)")
    args = p.parse_args(argv)
    items = list(open_source(str(args.corpus)))
    units = [u for u in items if isinstance(u, Unit) and not skip_reason(u)]
    table = PriceTable.load()
    calib = {
        "default": None,
        "fewshot": write_calibration(
            HERE / "calibration" / "fewshot.json", fewshot_calibration("o200k_base"),
            "mean o200k tokens of dynogen's few-shot answers (data/fewshot.json)"),
    }
    calib_means = {"default": DEFAULT_EXPECTED_OUTPUT,
                   "fewshot": round(fewshot_calibration("o200k_base"), 1)}
    corpus_rows = rows_stats(units, split_rows(args.corpus, Config().rows_per_split),
                             Config().rows_per_split)
    corpus = {"datasets": len({u.dataset for u in items if isinstance(u, Unit)}),
              "items": len(items), "usable_units": len(units),
              "rows": corpus_rows}

    models: dict[str, dict[str, Any]] = {}
    for name, path in calib.items():
        rows = [estimate_model(items, args.corpus, m, path) for m in MODELS]
        rows.append(estimate_model(items, args.corpus, PAPER_ERA_MODEL, path,
                                   price_in=PAPER_ERA_PRICE, price_out=PAPER_ERA_PRICE))
        models[name] = {r["model"] + (" @2023 price" if r["price_override"] else ""): r
                        for r in rows}

    # Dynosaur-size run, from the default calibration (the higher of the two).
    scale: dict[str, Any] = {}
    for label, r in models["default"].items():
        n = r["units"]
        per_unit = {"online_expected": r["cost_online"]["expected"] / n,
                    "online_high": r["cost_online"]["high"] / n,
                    "batch_expected": r["cost_batch"]["expected"] / n}
        scale[label] = {
            "cost_per_1k_units": {k: round(1000 * v, 4) for k, v in per_unit.items()},
            "dynogen_rows": extrapolate(per_unit, corpus_rows["mean_rows_per_unit"]),
            "dynosaur_rows": extrapolate(per_unit, corpus_rows["mean_rows_per_unit_dynosaur_rule"]),
            # As many tasks as the paper kept (~5.7K), at 3 tasks per unit.
            "paper_task_count": {k: round(PAPER["tasks_approx"] / 3 * v, 2)
                                 for k, v in per_unit.items()},
        }
    reasoning = {m: {"requests": models["default"][m]["requests"],
                     f"extra_usd_per_{REASONING_STEP}_reasoning_tokens_per_request": round(
                         models["default"][m]["requests"] * REASONING_STEP
                         * table.lookup(m).output / 1e6, 4)}
                 for m in MODELS if m.startswith("gpt-5")}
    cache = [c for m in MODELS if (c := caching(
        items, m, models["default"][m]["requests"], models["default"][m]["input_tokens"], table))]
    paper_tokens = PAPER["cost_usd"] / (PAPER_ERA_PRICE / 1e6)
    result = {
        "corpus": corpus,
        "calibrations": calib_means,
        "estimates": models,
        "dynosaur_size": {
            "target_instances": TARGET_INSTANCES,
            "assumptions": {
                "rows_per_unit": {"dynogen_rows": corpus_rows["mean_rows_per_unit"],
                                  "dynosaur_rows": corpus_rows["mean_rows_per_unit_dynosaur_rule"]},
                "tasks_kept_per_unit": TASKS_PER_UNIT,
                "requests_per_unit": 2,
                "output_calibration": "default (150 tokens per request)",
            },
            "by_model": scale,
        },
        "paper": {**PAPER, "tokens_implied_at_2023_price": round(paper_tokens),
                  "instances_per_task": round(PAPER["instances"] / PAPER["tasks_approx"], 1)},
        "reasoning_sensitivity": reasoning,
        "prompt_caching": cache,
    }
    if args.batch_units:
        # Measured, not estimated: a --mode batch run billed at gpt-4o-mini's batch prices.
        result["batch_mode_measured"] = measure_batch(
            items[:args.batch_units], "gpt-4o-mini",
            corpus_rows["mean_rows_per_unit_dynosaur_rule"])
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("corpus", "calibrations")}, indent=2))
    for label, r in models["default"].items():
        at_800k = scale[label]["dynosaur_rows"]["tasks_per_unit_3"]["online_expected"]
        print(f"{label:30s} req {r['requests']:6d} in {r['input_tokens']:9,d} "
              f"online ${r['cost_online']['expected']:.3f} batch ${r['cost_batch']['expected']:.3f}"
              f"  800K (3 tasks/unit): ${at_800k:.2f}")
    if "batch_mode_measured" in result:
        b = result["batch_mode_measured"]
        print(f"batch mode measured ({b['model']}): {b['run']}; 800K instances "
              f"(Dynosaur rows, 3 tasks/unit): ${b['dynosaur_size_800k']['batch_usd']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
