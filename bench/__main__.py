"""``python -m bench [SCENARIO ...] [--quick]``: run the benchmarks, print tables, save results.

Scenarios: requests-bound, tokens-bound, limits-lowered, heavy-tail, faults
(dynogen and the peers against the fake's limits), ceiling (raw engine speed
and CPU per request), corpus (``dynogen run`` over the reference corpus) and
scale (100,000 synthetic units, memory over time). No name runs them all.

Results go to ``bench/results/<name>.json`` and ``.png``; ``--quick`` shortens
every run (30 s windows, 20,000 units for scale) for a smoke check.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from bench import corpus_run, scale
from bench.plot import plot_scenario
from bench.scenarios import (
    DEFAULT_CORPUS,
    RESULTS,
    SCENARIOS,
    cleanup,
    new_workdir,
    prepare,
    print_ceiling,
    print_table,
    run_ceiling,
    run_scenario,
    save_result,
)

__all__ = ["main"]

ALL = [*SCENARIOS, "ceiling", "corpus", "scale"]
ALL_CLIENTS = ["dynogen", "openai-sdk", "curator", "litellm"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"any of: {', '.join(ALL)} (default: all)")
    p.add_argument("--quick", action="store_true", help="short runs for a smoke check")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                   help="folder of dataset folders (default: ../shared/hf-metadata-2022/datasets)")
    p.add_argument("--clients", default=",".join(ALL_CLIENTS),
                   help="comma-separated: dynogen,openai-sdk,curator,litellm")
    p.add_argument("--serial", action="store_true",
                   help="run clients one after another in the limit-bound scenarios")
    p.add_argument("--units", type=int, default=None, help="scale: synthetic units (100,000)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = p.parse_args(argv)
    names = args.scenarios or ALL
    if set(names) - set(ALL):
        p.error(f"unknown scenarios: {', '.join(sorted(set(names) - set(ALL)))}; any of {ALL}")
    clients = [c for c in args.clients.split(",") if c]
    unknown = set(clients) - set(ALL_CLIENTS)
    if unknown:
        p.error(f"unknown clients: {', '.join(sorted(unknown))}")
    # SIGTERM unwinds like Ctrl-C, so fake servers and clients (own sessions) are ended too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    work = new_workdir()
    try:
        needs_workload = any(n in SCENARIOS or n == "ceiling" for n in names)
        if needs_workload:
            wl, runnable, skipped = prepare(work, args.corpus, clients)
            for c, why in skipped.items():
                print(f"  {c}: cannot run: {why}")
        for name in names:
            if name in SCENARIOS:
                sc = SCENARIOS[name].quick() if args.quick else SCENARIOS[name]
                doc = run_scenario(sc, wl, work, [c for c in runnable if c in sc.clients],
                                   serial=args.serial)
                doc["quick"] = args.quick
                doc["skipped_clients"] = skipped
                print_table(doc)
                save_result(doc, name)
                plot_scenario(doc, RESULTS / f"{name}.png")
            elif name == "ceiling":
                doc = run_ceiling(wl, args.corpus, work, runnable)
                doc["quick"] = args.quick
                doc["skipped_clients"] = skipped
                print_ceiling(doc)
                save_result(doc, "ceiling")
                plot_scenario(doc, RESULTS / "ceiling.png")
            elif name == "corpus":
                corpus_run.main(["--corpus", str(args.corpus)])
            elif name == "scale":
                units = args.units or (20_000 if args.quick else 100_000)
                scale.main(["--corpus", str(args.corpus), "--units", str(units)])
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            cleanup(work)
    print(f"\nbench done in {time.perf_counter() - started:.0f}s; results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
