"""The ledger's hot path: one ``reserve`` and one ``settle`` per request.

``python -m bench.ledger [--requests N]`` times N reserve/settle pairs (20,000 by
default) and exits 1 under the goal of 10,000 a second, which even a slow machine
should clear (the ledger sits on every request's path). This was a wall-clock
assertion in tests/; timing goals live in bench/.
"""

from __future__ import annotations

import argparse
import time

from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import PriceTable

GOAL_PER_SECOND = 10_000


def measure(requests: int) -> float:
    """Reserve/settle pairs per second on one ledger with a budget it never reaches."""
    led = Ledger(PriceTable.load().lookup("gpt-4o-mini"), budget_usd=1e6)
    usage = {"prompt_tokens": 900, "completion_tokens": 300, "total_tokens": 1200,
             "prompt_tokens_details": {"cached_tokens": 512}}
    t0 = time.perf_counter()
    for _ in range(requests):
        led.settle(led.reserve(900, 640), usage, variant="description")
    return requests / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000)
    args = p.parse_args(argv)
    rate = measure(args.requests)
    ok = rate >= GOAL_PER_SECOND
    print(f"ledger: {rate:,.0f} reserve+settle a second over {args.requests:,} "
          f"(goal {GOAL_PER_SECOND:,}): {'ok' if ok else 'TOO SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
