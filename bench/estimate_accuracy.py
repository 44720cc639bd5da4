"""Bar: the dry run's expected cost is within ±5% of what a run then bills.

"On a run whose outputs follow the calibration, the dry run's expected cost is
within ±5% of the ledger's actual cost." Against the fake server in exact-token
mode (billed like OpenAI: real prompt and completion tokens, priced as a real
model, never ``--free``):

1. run a *calibration* slice of the reference corpus; the run writes
   ``calibration.json`` (mean completion tokens per request);
2. ``estimate --calibration`` over a *different* slice (every other unit of the
   corpus, so both slices sample the same mix of datasets);
3. run that slice and compare the estimate's expected online cost with
   ``report.json``'s actual cost.

Prints one JSON summary; exits 1 if the error is outside ±5%. Besides the
total it splits the error into its input and output parts, which is where to
look when the bar fails: input tokens are exact up to the schema allowance
(``RESPONSE_FORMAT_OVERHEAD`` per request, which the fake does not bill), output
tokens are only as good as the calibration.

    .venv/bin/python bench/estimate_accuracy.py [--corpus DIR] [--units 150]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynogen.api import arun, estimate
from dynogen.config import Config, Secret
from dynogen.io.sources import open_source
from dynogen.prompts.tokens import RESPONSE_FORMAT_OVERHEAD
from dynogen.testing import FakeOpenAI, serve
from dynogen.units import Skipped, Unit

__all__ = ["main", "measure"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "hf-metadata-2022" / "datasets"
BAR = 0.05


def load(corpus: Path) -> list[Unit | Skipped]:
    return list(open_source(str(corpus)))


async def measure(items: list[Unit | Skipped], *, model: str, units: int, work: Path,
                  output_tokens: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Calibrate on the even units, estimate and run the odd ones; the comparison as a dict."""
    calib_items = items[0::2][:units]
    eval_items = items[1::2][:units]
    fake = FakeOpenAI(model=model, exact_tokens=True, prompt_cache=True, keep_history=False,
                      output_tokens=output_tokens)
    async with serve(fake) as server:
        base = Config(model=model, base_url=server.url, api_key=Secret("sk-fake"), quiet=True,
                      max_in_flight=16, licenses="any", languages="any",
                      splits="all")  # the engine, not the data policies
        calib_dir = work / "calibration"
        t0 = time.perf_counter()
        calib = await arun(base.with_(out=str(calib_dir)), source=calib_items)
        est = estimate(base.with_(out=str(work / "eval")), calibration=calib_dir,
                       source=eval_items)
        actual = await arun(base.with_(out=str(work / "eval")), source=eval_items)
        wall = time.perf_counter() - t0
    if calib.exit_code or actual.exit_code:
        raise SystemExit(f"a run failed: {calib.message} / {actual.message}")
    led = actual.report["cost"]["ledger"]
    price = led["price"]
    e = est.to_dict()
    expected = e["cost_usd"]["online"]
    spent = actual.report["cost"]["spent_usd_total"]
    tok = led["tokens"]
    in_est, in_act = e["input_tokens"], tok["prompt"]
    out_est, out_act = e["output_tokens"]["expected"], tok["completion"]
    calib_json = json.loads((calib_dir / "calibration.json").read_text())
    # Dollar parts: what the input and output tokens contribute to the error.
    in_usd_err = (in_est - in_act) * price["input"] / 1e6
    out_usd_err = (out_est - out_act) * price["output"] / 1e6
    return {
        "model": model,
        "units": {"calibration": calib.report["units"]["seen"], "estimated": e["units"],
                  "run": actual.report["units"]["seen"]},
        "requests": {"estimated": e["requests"], "billed": led["requests"]["settled"]},
        "calibration_mean_output_tokens": round(calib_json["mean_output_tokens"], 2),
        "run_mean_output_tokens": round(out_act / max(1, led["requests"]["settled"]), 2),
        "input_tokens": {"estimated": in_est, "billed": in_act,
                         "error_pct": round(100 * (in_est - in_act) / in_act, 3),
                         "schema_allowance": RESPONSE_FORMAT_OVERHEAD * e["requests"]},
        "cached_tokens": {"estimated": e["cached_input_tokens"], "billed": tok["cached"]},
        "output_tokens": {"estimated": out_est, "billed": out_act,
                          "error_pct": round(100 * (out_est - out_act) / out_act, 3)},
        "cost_usd": {"estimated_online": expected, "actual": spent,
                     "error_pct": round(100 * (expected - spent) / spent, 3),
                     "from_input": round(in_usd_err, 6), "from_output": round(out_usd_err, 6),
                     "low": e["cost_usd"]["by_output"]["low"]["online"],
                     "high": e["cost_usd"]["by_output"]["high"]["online"]},
        "within_bar": abs(expected - spent) <= BAR * spent,
        "wall_seconds": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--units", type=int, default=150, help="items per slice (default 150)")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--output-tokens", default=None,
                   help="fake answer length N or LO:HI (default: the natural auto answer)")
    args = p.parse_args(argv)
    out: int | tuple[int, int] | None = None
    if args.output_tokens:
        lo, _, hi = args.output_tokens.partition(":")
        out = (int(lo), int(hi)) if hi else int(lo)
    items = load(args.corpus)
    with tempfile.TemporaryDirectory(prefix="dynogen-estimate-") as tmp:
        result = asyncio.run(measure(items, model=args.model, units=args.units, work=Path(tmp),
                                     output_tokens=out))
    print(json.dumps(result, indent=2))
    return 0 if result["within_bar"] else 1


if __name__ == "__main__":
    sys.exit(main())
