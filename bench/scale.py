"""Scale: a streaming ``dynogen run`` over 100,000 synthetic units, memory sampled over time.

``python -m bench.scale [--units N] [--corpus PATH]`` writes N units shaped
like the reference corpus' (each a real unit's fields, license, description
and samples under a new dataset name, so every prompt and every answer is
distinct) as JSONL shards of ``Unit.to_dict()`` lines in a temp folder, runs
``dynogen run --variants description --no-build`` over them against a
zero-latency fake, and samples the client's RSS every half second.

The bars: peak RSS under 400 MB and flat (the second half of the run grows by
less than 10 % of the first half's level), and dedup memory bounded, reported
as ``dynogen.dedup.HashSet.nbytes()`` per million hashes. One prompt variant
keeps the run to ~N requests (a few minutes here); the memory behaviour does
not depend on the variant count.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.peers import peer_env
from bench.peers.harness import run_measured
from bench.plot import plot_rss
from bench.scenarios import DEFAULT_CORPUS, RESULTS, machine_info, save_result
from dynogen.testing.fake_openai import start_fake_process

__all__ = ["dedup_memory", "main", "write_shards"]

RSS_BAR_MB = 400.0


def write_shards(corpus: Path, dest: Path, units: int, *, per_shard: int = 10_000,
                 seed: int = 0) -> int:
    """Write ``units`` synthetic units cycled from the corpus' shapes; returns shards written."""
    from dynogen.io.sources import open_source
    from dynogen.units import Unit

    shapes = [u.to_dict() for u in open_source(str(corpus)) if isinstance(u, Unit)]
    if not shapes:
        raise SystemExit(f"no units in {corpus}")
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    shards = 0
    f: Any = None
    try:
        for i in range(units):
            if i % per_shard == 0:
                if f is not None:
                    f.close()
                f = (dest / f"shard-{shards:05d}.jsonl").open("wb")
                shards += 1
            shape = dict(shapes[rng.randrange(len(shapes))])
            shape["dataset"] = f"synthetic/{shape['dataset'].replace('/', '__')}-{i:06d}"
            shape["description"] = f"(variant {i}) {shape.get('description') or ''}"
            shape["data_ref"] = None
            f.write(orjson.dumps(shape) + b"\n")
    finally:
        if f is not None:
            f.close()
    return shards


def dedup_memory(n: int = 1_000_000, seed: int = 0) -> dict[str, Any]:
    """``HashSet.nbytes()`` after ``n`` distinct random hashes, per million."""
    from dynogen.dedup import HashSet

    rng = random.Random(seed)
    hs = HashSet()
    checkpoints = {}
    for i in range(1, n + 1):
        hs.add(rng.getrandbits(64))
        if i in (10_000, 100_000, n):
            checkpoints[i] = hs.nbytes()
    return {"hashes": n, "nbytes": hs.nbytes(),
            "bytes_per_hash": round(hs.nbytes() / n, 2),
            "mb_per_million_hashes": round(hs.nbytes() / n * 1e6 / 2**20, 2),
            "nbytes_at": {str(k): v for k, v in checkpoints.items()}}


def _flatness(curve: list[tuple[float, float]]) -> dict[str, Any]:
    if len(curve) < 4:
        return {"samples": len(curve)}
    mbs = [m for _, m in curve]
    half = len(mbs) // 2
    first_peak, second_peak = max(mbs[:half]), max(mbs[half:])
    return {"samples": len(curve), "first_half_peak_mb": round(first_peak, 1),
            "second_half_peak_mb": round(second_peak, 1),
            "growth_second_half_pct": round(100 * (second_peak - first_peak) / first_peak, 1),
            "at_pct": {str(p): round(mbs[min(len(mbs) - 1, len(mbs) * p // 100)], 1)
                       for p in (10, 25, 50, 75, 90)}}


def run_scale(corpus: Path, units: int, work: Path) -> dict[str, Any]:
    shard_dir = work / "shards"
    shards = write_shards(corpus, shard_dir, units)
    run_dir = work / "scale-run"
    with start_fake_process(seed=7) as fake:
        argv = [str(Path(sys.executable).with_name("dynogen")), "run", "--source",
                str(shard_dir), "--out", str(run_dir), "--base-url", fake.url, "--free",
                "--quiet", "--variants", "description", "--no-build",
                "--licenses", "any", "--languages", "any", "--splits", "all"]
        m = run_measured(argv, env=peer_env(work), timeout=1500, sample_every=0.5,
                         log_dir=work / "logs")
        server = fake.stats()["totals"]
    report = json.loads((run_dir / "report.json").read_text()) if (
        run_dir / "report.json").exists() else {}
    flat = _flatness(m.rss_curve)
    dedup = dedup_memory()
    kept = (report.get("tasks") or {}).get("kept", 0)
    checks = {
        "exit_0": m.returncode == 0,
        "all_units_accounted": (report.get("units") or {}).get("seen") == units,
        "peak_rss_lt_400mb": m.peak_rss_mb < RSS_BAR_MB,
        "rss_flat": flat.get("growth_second_half_pct", 100.0) < 10.0,
    }
    return {
        "scenario": "scale", "units": units, "shards": shards, "report_units": report.get("units"),
        "requests": server["requests"], "tasks": report.get("tasks"),
        "wall_seconds": round(m.wall_seconds, 1),
        "requests_per_s_end_to_end": round(server["requests"] / m.wall_seconds, 1),
        "cpu_seconds": round(m.cpu_seconds, 1),
        "cpu_ms_per_request": round(1000 * m.cpu_seconds / max(server["requests"], 1), 3),
        "peak_rss_mb": round(m.peak_rss_mb, 1), "rss": flat,
        "rss_curve": [(round(t, 1), round(mb, 1)) for t, mb in m.rss_curve],
        "dedup": dedup,
        "dedup_bytes_for_this_run_estimate": round(kept * dedup["bytes_per_hash"]),
        "checks": checks, "error": None if m.returncode == 0 else m.stderr_tail[-600:],
        **machine_info(),
    }


def print_scale(doc: dict[str, Any]) -> None:
    print(f"\n== scale: dynogen run over {doc['units']:,} synthetic units ({doc['shards']} shards)")
    print(f"  {doc['requests']:,} requests in {doc['wall_seconds']} s "
          f"({doc['requests_per_s_end_to_end']} req/s), {doc['cpu_ms_per_request']} CPU ms/req")
    r = doc["rss"]
    print(f"  RSS: peak {doc['peak_rss_mb']} MB; by progress {r.get('at_pct')}; second half grew "
          f"{r.get('growth_second_half_pct')} % over the first half's peak")
    d = doc["dedup"]
    print(f"  dedup: HashSet.nbytes() = {d['mb_per_million_hashes']} MB per million hashes "
          f"({d['bytes_per_hash']} B/hash)")
    print("  checks: " + ", ".join(f"{k}={'PASS' if v else 'MISS'}"
                                   for k, v in doc["checks"].items()))
    if doc.get("error"):
        print(f"  error: {doc['error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--units", type=int, default=100_000)
    args = p.parse_args(argv)
    if not args.corpus.is_dir():
        p.error(f"corpus {args.corpus} not found: pass --corpus PATH")
    work = Path(tempfile.mkdtemp(prefix="dynogen-scale-"))
    try:
        doc = run_scale(args.corpus, args.units, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_scale(doc)
    save_result(doc, "scale")
    plot_rss(doc["rss_curve"], RESULTS / "scale.png",
             f"dynogen run over {doc['units']:,} synthetic units: RSS over time "
             f"(peak {doc['peak_rss_mb']} MB)", RSS_BAR_MB)
    return 0 if all(doc["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
