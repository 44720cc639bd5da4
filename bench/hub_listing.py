"""Issue #9: the Hub as a source that scales, against the fake Hub and viewer.

``python -m bench.hub_listing [--datasets 600] [--latency 0.05] [--concurrency 8] [--rpm 1200]``
lists ``--datasets`` generated datasets (every kind: plain, multi-config,
gated, private, disabled, script-only, viewer-invalid, near-copies, 503/429
first) from ``dynogen.testing.fake_hub`` served in this process's background
thread, reads them through ``HubSource`` and checks:

* every listed dataset is accounted for (a unit, or a skip by the expected reason);
* Hub calls ran concurrently (peak in flight > 1) and never past ``--concurrency``;
* the call rate stayed within ``--rpm`` (plus the limiter's one-second burst);
* the same listing read with one call in flight, for the speed-up ratio.

Prints a JSON summary and saves ``bench/results/hub_listing.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import constants

from dynogen.io.hub import HubSource
from dynogen.io.hub_options import HubOptions
from dynogen.ratelimit import RetryPolicy
from dynogen.testing.fake_hub import synthetic_hub
from dynogen.units import Unit

__all__ = ["main", "measure"]

RESULTS = Path(__file__).parent / "results"


def measure(n: int, latency: float, concurrency: int, rpm: float | None) -> dict[str, Any]:
    fake, expected = synthetic_hub(n, seed=5, page_size=100)
    fake.latency = latency
    with fake.running() as server:
        src = HubSource(
            options=HubOptions(endpoint=server.url, viewer_url=server.viewer_url, rpm=rpm,
                               concurrency=concurrency),
            retry=RetryPolicy(max_retries=3, base=0.05, cap=0.2),
        )
        t0 = time.perf_counter()
        items = list(src)
        wall = time.perf_counter() - t0
    outcome: dict[str, set[str]] = {}
    for item in items:
        outcome.setdefault(item.dataset, set()).add(
            "unit" if isinstance(item, Unit) else item.reason)
    wrong = {d: sorted(outcome.get(d, {"missing"})) for d, e in expected.items()
             if outcome.get(d) != {e}}
    calls = len(fake.requests)
    return {
        "datasets": n, "latency_s": latency, "concurrency": concurrency, "rpm": rpm,
        "wall_s": round(wall, 2), "hub_calls": calls,
        "calls_per_min": round(calls / wall * 60, 1),
        "peak_in_flight": fake.peak_in_flight, "retries": src.stats.http.retries,
        "outcomes": dict(Counter(e for e in expected.values())),
        "unaccounted": len(wrong), "wrong": dict(list(wrong.items())[:5]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=int, default=600)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rpm", type=float, default=1200.0)
    args = p.parse_args(argv)
    constants.HF_HUB_OFFLINE = False  # the fake is in this process
    concurrent = measure(args.datasets, args.latency, args.concurrency, None)
    paced = measure(min(args.datasets, 200), args.latency, args.concurrency, args.rpm)
    serial = measure(min(args.datasets, 200), args.latency, 1, None)
    per_ds_conc = concurrent["wall_s"] / concurrent["datasets"]
    per_ds_serial = serial["wall_s"] / serial["datasets"]
    summary = {
        "concurrent": concurrent, "paced": paced, "serial": serial,
        "speedup_vs_serial": round(per_ds_serial / per_ds_conc, 1),
        "checks": {
            "every_dataset_accounted": concurrent["unaccounted"] == 0
            and paced["unaccounted"] == 0,
            "concurrent_under_cap": 1 < concurrent["peak_in_flight"] <= args.concurrency,
            # the limiter allows the minute's rate plus a one-second burst
            "rate_within_rpm": paced["calls_per_min"] <= args.rpm * (1 + 1 / 60) + 60
            / max(paced["wall_s"], 1e-9),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hub_listing.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(summary["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
