"""``--max-tokens auto`` on a TPM-bound run: requests per minute before and after (issue #11).

``python -m bench.max_tokens [--units 150] [--tpm 200000]``

A low account tier is bound by tokens per minute, and OpenAI charges
``max_tokens`` at admission. The fake here does the same (exact prompt tokens +
``max_tokens``, never refunded) with realistic answer times (``bench.realistic``).
``dynogen run`` goes over the first ``--units`` corpus units twice, each time in a
fresh run directory against a fresh fake: with the default ``max_tokens`` (640), and
with ``--max-tokens auto`` (sized from a pilot of its first answers). Measured from the
fake's own record: requests per minute and TPM use between 5 % and 90 % of the work,
wall time, 429s, and what the pilot cost.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.peers.harness import run_measured
from bench.realistic import REALISTIC
from bench.scenarios import DEFAULT_CORPUS, machine_info, new_workdir, save_result
from dynogen.testing.fake_openai import start_fake_process

__all__ = ["main"]


def _steady(timeline: dict[str, Any], n: int) -> dict[str, float]:
    done = timeline["completions"]
    tokens = timeline["tokens"]
    cum = list(itertools.accumulate(done))
    t5 = next(i for i, c in enumerate(cum) if c >= 0.05 * n)
    t90 = next(i for i, c in enumerate(cum) if c >= 0.90 * n)
    secs = max(1, t90 - t5)
    return {"from_s": t5, "to_s": t90,
            "requests_per_min": round((cum[t90] - cum[t5]) / secs * 60, 1),
            "usage_tokens_per_min": round(sum(tokens[t5 + 1:t90 + 1]) / secs * 60, 0)}


def one(label: str, extra: list[str], corpus: Path, units: int, tpm: float, rpm: float,
        work: Path) -> dict[str, Any]:
    out = work / f"run-{label}"
    shutil.rmtree(out, ignore_errors=True)
    with start_fake_process(ready_timeout=90, rpm=rpm, tpm=tpm, seed=7, **REALISTIC) as fake:
        argv = [str(Path(sys.executable).with_name("dynogen")), "run", "--source", str(corpus),
                "--limit", str(units), "--out", str(out), "--base-url", fake.url, "--free",
                "--quiet", "--no-build", "--rpm", str(rpm), "--tpm", str(tpm),
                "--licenses", "any", "--languages", "any", "--splits", "all", *extra]
        m = run_measured(argv, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1800,
                         log_dir=work / "logs")
        stats = fake.stats()
    report = orjson.loads((out / "report.json").read_bytes()) if (out / "report.json").exists() \
        else {}
    totals = stats["totals"]
    row = {"label": label, "argv_extra": extra, "returncode": m.returncode,
           "wall_seconds": round(m.wall_seconds, 1), "server_requests": totals["requests"],
           "answered_429": totals["429"], "completions": totals["completions"],
           "tokens_charged": totals.get("tokens"), "max_tokens": report.get("max_tokens"),
           "length_retries": report.get("session", {}).get("length_retries", 0),
           "tasks_kept": report.get("tasks", {}).get("kept"),
           "steady": _steady(stats["timeline"], totals["completions"]),
           "timeline": stats["timeline"]}
    print(f"  {label:8s} {row['steady']['requests_per_min']:7.1f} req/min steady, "
          f"{row['steady']['usage_tokens_per_min']:9.0f} usage tokens/min, "
          f"wall {row['wall_seconds']}s, "
          f"{row['server_requests']} requests, 429s {row['answered_429']}, length retries "
          f"{row['length_retries']}, max_tokens {row['max_tokens']}")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.max_tokens",
                                description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=150)
    p.add_argument("--tpm", type=float, default=200_000)
    p.add_argument("--rpm", type=float, default=5_000)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = p.parse_args(argv)
    work = new_workdir()
    try:
        print(f"== max_tokens: {args.units} units, {args.tpm:,.0f} TPM, {args.rpm:,.0f} RPM, "
              "answers of ~3 s")
        rows = [one("default", [], args.corpus, args.units, args.tpm, args.rpm, work),
                one("auto", ["--max-tokens", "auto"], args.corpus, args.units, args.tpm,
                    args.rpm, work)]
        a, b = (r["steady"]["requests_per_min"] for r in rows)
        doc = {"scenario": "max-tokens-auto", "units": args.units, "tpm": args.tpm,
               "rpm": args.rpm, "fake": REALISTIC, "clients": rows,
               "requests_per_min_ratio": round(b / a, 3) if a else None, **machine_info()}
        save_result(doc, "max-tokens-auto")
        print(f"  auto / default requests per minute: {doc['requests_per_min_ratio']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
