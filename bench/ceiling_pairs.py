"""Zero-latency ceiling of two checkouts, in alternating pairs (CPU per request, requests/s).

``python -m bench.ceiling_pairs OLD_CHECKOUT [--pairs 3]``

This machine's speed drifts within minutes (a shared VM), so two versions are
compared only run against run: each pair runs ``dynogen call`` on the reference
workload (9,366 requests) and ``dynogen run`` over the whole corpus (data
policies lifted, as ``python -m bench ceiling`` does), first with ``OLD_CHECKOUT``
on ``PYTHONPATH``, then with this one, each against a fresh zero-latency fake.
CPU is the client process's (``wait4``), requests are the fake's count.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.scenarios import DEFAULT_CORPUS, build_workload, cleanup, new_workdir
from dynogen.testing.fake_openai import start_fake_process

__all__ = ["main"]

HERE = Path(__file__).resolve().parent.parent
LIFT = ["--licenses", "any", "--languages", "any", "--splits", "all"]


def measure(checkout: Path, what: str, workload: Path, corpus: Path, work: Path,
            lift: bool) -> dict[str, Any]:
    out = work / f"out-{what}"
    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True)
    # `python -m dynogen` from a neutral folder: the venv's `dynogen` script names one
    # layout's entry point, and `-m` from inside a checkout would import that checkout.
    exe = [sys.executable, "-m", "dynogen"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout)}
    with start_fake_process(seed=7, ready_timeout=90) as fake:
        common = ["--base-url", fake.url, "--free", "--quiet", "--rpm", "1e6", "--tpm", "1e10"]
        argv = ([*exe, "call", str(workload), "--out", str(out), *common] if what == "call" else
                [*exe, "run", "--source", str(corpus), "--out", str(out), *common,
                 *(LIFT if lift else [])])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                              cwd=work)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        n = fake.stats()["totals"]["requests"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"checkout": str(checkout), "what": what, "returncode": proc.returncode,
            "requests": n, "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 1),
            "cpu_ms_per_request": round(1000 * cpu / max(n, 1), 3),
            "error": proc.stderr.strip().splitlines()[-1][:200] if proc.returncode else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ceiling_pairs",
                                description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path, help="another checkout (e.g. a git worktree)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--old-lifts-policies", action="store_true",
                   help="pass --licenses any ... to the old checkout's run too (it has them)")
    args = p.parse_args(argv)
    work = new_workdir()
    try:
        wl = build_workload(args.corpus, work / "workload.jsonl")
        print("pair | what | old CPU ms/req | new | old req/s | new")
        for i in range(1, args.pairs + 1):
            for what in ("call", "run"):
                old = measure(args.old, what, wl.path, args.corpus, work, args.old_lifts_policies)
                new = measure(HERE, what, wl.path, args.corpus, work, True)
                print(f"{i} | {what} | {old['cpu_ms_per_request']} | {new['cpu_ms_per_request']}"
                      f" | {old['requests_per_s']} | {new['requests_per_s']}"
                      + "".join(f"  ERROR {r['checkout']}: {r['error']}" for r in (old, new)
                                if r["error"]), flush=True)
    finally:
        cleanup(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
