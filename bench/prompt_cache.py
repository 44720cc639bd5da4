"""What each prompt layout is billed on a server with OpenAI's prompt cache, over the corpus.

    python -m bench.prompt_cache [--units N] [--corpus DIR] [--modes online,batch]

Runs ``dynogen run`` (the Python API, ``build=False``) over the reference corpus's
usable units (data policies lifted, so every layout sees the same units) against
the in-repo fake with exact token counts and OpenAI's prefix cache
(``FakeOpenAI(exact_tokens=True, prompt_cache=True)``: ``cached_tokens`` for
repeated prefixes of 1,024+ tokens in 128-token steps, the ``json_schema`` first),
once per prompt layout (``per_unit``: today's prompts, byte for byte; ``shared``)
and mode (online; ``--mode batch`` through the fake's Batch API), priced as
gpt-4o-mini. Answers are 150 tokens (the default calibration), so the layouts
differ in what they send, not in what comes back.

Per run: requests, prompt and cached tokens, the share billed as cached, the
ledger's dollars and dollars per request (online at ``cached_input`` for cached
tokens; batch at batch prices, which dynogen never stacks with the cache
discount), tasks kept and dropped by reason, and the estimate's expected cached
share for the same units. Writes ``bench/results/prompt_cache.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import DEFAULT_CORPUS, machine_info
from dynogen.api import arun, estimate
from dynogen.config import Config
from dynogen.io.sources import open_source
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.tokens import TokenCounter
from dynogen.testing import FakeBatches, FakeOpenAI, serve
from dynogen.units import Skipped, Unit

__all__ = ["main", "measure"]

RESULTS = Path(__file__).resolve().parent / "results" / "prompt_cache.json"
MODEL = "gpt-4o-mini"
OUTPUT_TOKENS = 150
LAYOUTS = ("per_unit", "shared")
LIFTED = {"licenses": "any", "languages": "any", "splits": "all"}


def prefix_tokens() -> dict[str, dict[str, int]]:
    """Per layout and variant: the leading messages' tokens, and what a cache that hashes
    the schema first can reuse across units (schema + messages; 0 under per_unit)."""
    out: dict[str, dict[str, int]] = {}
    for layout in LAYOUTS:
        pb = PromptBuilder(Config(prompt_layout=layout), TokenCounter("o200k_base"))
        for v in Config().variants:
            out[f"{layout}/{v}"] = {"messages": pb.prefix_tokens(v),
                                   "shared_with_schema": pb.shared_prefix_tokens(v)}
    return out


async def _run(items: list[Unit | Skipped], layout: str, mode: str) -> dict[str, Any]:
    fake = FakeOpenAI(model=MODEL, exact_tokens=True, prompt_cache=True,
                      output_tokens=OUTPUT_TOKENS, keep_history=False)
    batches = FakeBatches(fake, validating=0.05, in_progress=0.5, finalizing=0.05)
    t0 = time.perf_counter()
    async with serve(fake) as server:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config(source="unused", out=tmp, base_url=server.url, model=MODEL,
                         prompt_layout=layout, mode=mode, poll_seconds=0.2, quiet=True,
                         **LIFTED)
            outcome = await arun(cfg, source=items, build=False)
    rep = outcome.report
    ledger = rep["cost"]["ledger"]
    tok = ledger["tokens"]
    n = ledger["requests"]["settled"]
    out = {
        "exit": outcome.exit_code, "units": rep["units"]["processed"], "requests": n,
        "prompt_tokens": tok["prompt"], "cached_tokens": tok["cached"],
        "cached_share": round(tok["cached"] / tok["prompt"], 4) if tok["prompt"] else None,
        "completion_tokens": tok["completion"],
        "prompt_tokens_per_request": round(tok["prompt"] / n, 1) if n else None,
        "usd": round(ledger["spent_usd"], 6),
        "usd_per_request": round(ledger["spent_usd"] / n, 8) if n else None,
        "usd_per_1k_units": round(1000 * ledger["spent_usd"] / max(1, rep["units"]["processed"]),
                                  4),
        "tasks_kept": rep["tasks"]["kept"], "tasks_generated": rep["tasks"]["generated"],
        "dropped_by_reason": rep["tasks"]["dropped_by_reason"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    if mode == "batch":
        out["server_billed"] = batches.counts()["billed"]
    return out


def measure(items: list[Unit | Skipped], modes: tuple[str, ...]) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for mode in modes:
        for layout in LAYOUTS:
            runs[f"{mode}/{layout}"] = asyncio.run(_run(items, layout, mode))
            print(f"{mode}/{layout}: {json.dumps(runs[f'{mode}/{layout}'])}", flush=True)
    expected = {}
    for layout in LAYOUTS:
        e = estimate(Config(source="unused", model=MODEL, prompt_layout=layout, **LIFTED),
                     source=items)
        expected[layout] = {"requests": e.requests, "input_tokens": e.input_tokens,
                            "cached_input_tokens": e.cached_input_tokens,
                            "cached_share": round(e.cached_share, 4)}
    return {"runs": runs, "estimate": expected}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--units", type=int, default=0, help="first N items of the corpus (0: all)")
    ap.add_argument("--modes", default="online,batch")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    items: list[Unit | Skipped] = []
    for item in open_source(args.corpus):
        items.append(item)
        if args.units and len(items) >= args.units:
            break
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "model": MODEL,
              "corpus": args.corpus, "items": len(items), "output_tokens": OUTPUT_TOKENS,
              "prefix_tokens": prefix_tokens(),
              **measure(items, tuple(m for m in args.modes.split(",") if m))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("prefix_tokens", "estimate")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
