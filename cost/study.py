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

Every model is priced with the prompt layout ``auto`` gives it (``dynogen.prompts.layout``:
the shared, cacheable prefix online at OpenAI for a model with a cached-input price,
per_unit otherwise and in batch mode) and, for those with a cached price, with the
per-unit layout everywhere too: the prompts before layouts existed.

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
from dynogen.config import Config
from dynogen.engine.calibration import DEFAULT_EXPECTED_OUTPUT
from dynogen.execute.prices import PriceTable
from dynogen.io.sources import open_source
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
# The data policies lifted: the study prices every usable unit of the corpus (what a
# unit costs does not depend on its licence; README's policy table says what they cut).
LIFTED = {"licenses": "any", "languages": "any", "splits": "all"}
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
                   calibration: Path | None, layout: str = "auto",
                   **price: Any) -> dict[str, Any]:
    """The dry run for ``model`` with prompt layout ``layout`` (``auto``: what a run at
    OpenAI would pick, per mode; ``per_unit``: the prompts before layouts existed)."""
    cfg = Config(source=str(corpus), model=model, prompt_layout=layout, **LIFTED, **price)
    e = estimate(cfg, calibration=calibration, source=items).to_dict()
    c = e["cost_usd"]["by_output"]
    return {
        "model": model,
        "price_override": price or None,
        "prompt_layout": e["prompt_layout"],
        "units": e["units"],
        "units_skipped": sum(e["units_skipped"].values()),
        "requests": e["requests"],
        "input_tokens": e["input_tokens"],
        "input_tokens_by_mode": e["input_tokens_by_mode"],
        "cached_input_tokens": e["cached_input_tokens"],
        "cached_share": e["cached_share"],
        "output_tokens": e["output_tokens"],
        "cost_online": {k: round(v["online"], 4) for k, v in c.items()},
        "cost_batch": {k: round(v["batch"], 4) for k, v in c.items()},
        "prefix_tokens": e["prefix_tokens"],
    }


def caching(before: dict[str, Any], after: dict[str, Any],
            table: PriceTable) -> dict[str, Any] | None:
    """The shared prompt layout against the per-unit one for one model, from two dry runs of
    the corpus (``before``: per_unit everywhere; ``after``: what ``auto`` picks).

    OpenAI puts a json_schema *before* the system message; the per-unit schema holds
    the unit's field names, so its prompts share no cacheable prefix (the dry run counts
    none; against the caching fake, units of one dataset with the same fields do share
    one, see bench/results/prompt_cache.json). The shared layout's schema, system prompt
    and few-shot turns are one prefix over 1,024 tokens, cached for every request after
    the first; the dry run assumes every such request hits (OpenAI caches best effort).
    """
    price = table.lookup(after["model"])
    if not price.supports_prompt_cache:
        return None
    b, a = before["cost_online"]["expected"], after["cost_online"]["expected"]
    return {
        "model": after["model"],
        "input_price": price.input, "cached_input_price": price.cached_input,
        "layout_online": after["prompt_layout"]["online"],
        "input_tokens_per_request": {
            "per_unit": round(before["input_tokens"] / before["requests"], 1),
            "shared": round(after["input_tokens"] / after["requests"], 1)},
        "cached_share_shared": round(after["cached_share"], 4),
        "online_expected_usd": {"per_unit": b, "shared": a},
        "online_expected_usd_per_request": {"per_unit": round(b / before["requests"], 8),
                                            "shared": round(a / after["requests"], 8)},
        "saving_pct": round(100 * (b - a) / b, 1) if b else None,
        # The cache discount does not reach batch lines (dynogen bills them uncached), so
        # auto keeps per_unit for --mode batch: its cost is unchanged.
        "batch_expected_usd": after["cost_batch"]["expected"],
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
                  output_tokens: int = DEFAULT_EXPECTED_OUTPUT,
                  layout: str = "per_unit") -> dict[str, Any]:
    """A real ``--mode batch`` run over ``items`` against the exact-token fake's Batch API,
    priced as ``model``: what the ledger and the server bill at batch prices, per unit,
    and that cost per unit scaled to a Dynosaur-size run (800K instances).

    The fake answers ``output_tokens`` tokens a request (the default calibration), so
    this checks batch mode's billing against the estimate rather than guessing output.
    Its prompt cache is on, so the lines report ``cached_tokens``; dynogen bills batch
    lines at batch prices without the cache discount, as the ledger does. ``layout``:
    the prompt layout sent (``per_unit`` is what ``auto`` picks for batch mode).
    """
    import asyncio
    import tempfile

    from dynogen.api import arun
    from dynogen.testing import FakeBatches, FakeOpenAI, serve

    async def go(out: Path) -> dict[str, Any]:
        fake = FakeOpenAI(model=model, exact_tokens=True, prompt_cache=True,
                          output_tokens=output_tokens)
        batches = FakeBatches(fake, validating=0.05, in_progress=0.5, finalizing=0.05)
        async with serve(fake) as server:
            outcome = await arun(Config(source="unused", out=str(out), base_url=server.url,
                                        model=model, mode="batch", poll_seconds=0.2,
                                        prompt_layout=layout, quiet=True, **LIFTED),
                                 source=items, build=False)
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
                "prompt_tokens": billed["billed"]["prompt_tokens"],
                "cached_tokens": billed["billed"]["cached_tokens"],
                "usd_per_request": round(server_usd / max(billed["billed"]["lines"], 1), 8),
                "usd_per_1k_units": round(1000 * server_usd / max(units, 1), 4)}

    with tempfile.TemporaryDirectory() as tmp:
        run = asyncio.run(go(Path(tmp) / "run"))
    per_unit = run["server_billed_usd"] / max(run["units"], 1)
    units_800k = TARGET_INSTANCES / (TASKS_PER_UNIT["expected"] * rows_per_unit)
    return {"model": model, "prompt_layout": layout, "output_tokens_per_request": output_tokens,
            "run": run,
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

    # The prompts before layouts existed (per_unit everywhere), for the models with a
    # cached-input price: what the shared layout changes.
    before = {m: estimate_model(items, args.corpus, m, None, layout="per_unit")
              for m in MODELS if table.lookup(m).supports_prompt_cache}

    # Dynosaur-size run, from the default calibration (the higher of the two).
    def dynosaur_scale(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        scale: dict[str, Any] = {}
        for label, r in rows.items():
            n = r["units"]
            per_unit = {"online_expected": r["cost_online"]["expected"] / n,
                        "online_high": r["cost_online"]["high"] / n,
                        "batch_expected": r["cost_batch"]["expected"] / n}
            scale[label] = {
                "prompt_layout": r["prompt_layout"],
                "cost_per_1k_units": {k: round(1000 * v, 4) for k, v in per_unit.items()},
                "dynogen_rows": extrapolate(per_unit, corpus_rows["mean_rows_per_unit"]),
                "dynosaur_rows": extrapolate(per_unit,
                                             corpus_rows["mean_rows_per_unit_dynosaur_rule"]),
                # As many tasks as the paper kept (~5.7K), at 3 tasks per unit.
                "paper_task_count": {k: round(PAPER["tasks_approx"] / 3 * v, 2)
                                     for k, v in per_unit.items()},
            }
        return scale

    scale = dynosaur_scale(models["default"])
    scale_before = dynosaur_scale(before)
    reasoning = {m: {"requests": models["default"][m]["requests"],
                     f"extra_usd_per_{REASONING_STEP}_reasoning_tokens_per_request": round(
                         models["default"][m]["requests"] * REASONING_STEP
                         * table.lookup(m).output / 1e6, 4)}
                 for m in MODELS if m.startswith("gpt-5")}
    cache = [c for m in before if (c := caching(before[m], models["default"][m], table))]
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
            # the same with the per-unit prompt layout everywhere (before prompt layouts)
            "by_model_per_unit": scale_before,
        },
        "paper": {**PAPER, "tokens_implied_at_2023_price": round(paper_tokens),
                  "instances_per_task": round(PAPER["instances"] / PAPER["tasks_approx"], 1)},
        "reasoning_sensitivity": reasoning,
        "prompt_caching": cache,
        "estimates_per_unit": before,
    }
    if args.batch_units:
        # Measured, not estimated: a --mode batch run billed at gpt-4o-mini's batch prices.
        result["batch_mode_measured"] = measure_batch(
            items[:args.batch_units], "gpt-4o-mini",
            corpus_rows["mean_rows_per_unit_dynosaur_rule"])
        # The shared layout in batch mode, for comparison: more tokens, none discounted.
        result["batch_mode_measured_shared"] = measure_batch(
            items[:args.batch_units], "gpt-4o-mini",
            corpus_rows["mean_rows_per_unit_dynosaur_rule"], layout="shared")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("corpus", "calibrations")}, indent=2))
    for label, r in models["default"].items():
        at_800k = scale[label]["dynosaur_rows"]["tasks_per_unit_3"]["online_expected"]
        was = scale_before.get(label, scale[label])["dynosaur_rows"]["tasks_per_unit_3"][
            "online_expected"]
        print(f"{label:30s} {r['prompt_layout']['online']:8s} req {r['requests']:6d} in "
              f"{r['input_tokens']:9,d} cached {r['cached_share']:.0%} online "
              f"${r['cost_online']['expected']:.3f} batch ${r['cost_batch']['expected']:.3f}"
              f"  800K (3 tasks/unit): ${at_800k:.2f} (per_unit ${was:.2f})")
    for key in ("batch_mode_measured", "batch_mode_measured_shared"):
        if key in result:
            b = result[key]
            print(f"batch mode measured ({b['model']}, {b['prompt_layout']}): {b['run']}; 800K "
                  f"instances (Dynosaur rows, 3 tasks/unit): "
                  f"${b['dynosaur_size_800k']['batch_usd']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
