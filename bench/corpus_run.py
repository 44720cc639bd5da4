"""Issue #2's bar: ``dynogen run`` over the whole reference corpus, against the in-repo fake.

``python -m bench.corpus_run [--corpus PATH]`` runs the full pipeline (read
metadata → prompt → request → parse → validate → dedup → write) against a
zero-latency fake in its own process and checks:

- every unit the source yields is accounted for: processed + skipped + failed
  == units seen, and units seen == what an independent pass over the source
  counts (``Unit`` or ``Skipped``, each once);
- wall time under 60 s on this machine, peak RSS under 400 MB;

and reports requests/s and client CPU ms per request. Saves
``bench/results/corpus.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import peer_env
from bench.peers.harness import run_measured
from bench.scenarios import DEFAULT_CORPUS, machine_info, save_result
from dynogen.testing.fake_openai import start_fake_process

__all__ = ["count_source", "main", "run_corpus"]

WALL_BAR_S = 60.0
RSS_BAR_MB = 400.0


def count_source(corpus: Path) -> dict[str, int]:
    """Units and skips the source yields, counted without dynogen's engine."""
    from dynogen.io.sources import open_source
    from dynogen.units import Unit, skip_reason

    out = {"yielded": 0, "units": 0, "source_skipped": 0, "sendable": 0}
    for item in open_source(str(corpus)):
        out["yielded"] += 1
        if isinstance(item, Unit):
            out["units"] += 1
            out["sendable"] += skip_reason(item) is None
        else:
            out["source_skipped"] += 1
    return out


def run_corpus(corpus: Path, work: Path) -> dict[str, Any]:
    run_dir = work / "corpus-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    expected = count_source(corpus)
    with start_fake_process(seed=7) as fake:
        argv = [str(Path(sys.executable).with_name("dynogen")), "run", "--source", str(corpus),
                "--out", str(run_dir), "--base-url", fake.url, "--free", "--quiet",
                # the engine's bar, not the data policies' (see bench/data_quality.py)
                "--licenses", "any", "--languages", "any", "--splits", "all"]
        m = run_measured(argv, env=peer_env(work), timeout=600, log_dir=work / "logs")
        server = fake.stats()["totals"]
    report = json.loads((run_dir / "report.json").read_text()) if (
        run_dir / "report.json").exists() else {}
    units = report.get("units", {})
    seen = units.get("seen", 0)
    accounted = units.get("processed", 0) + units.get("skipped", 0) + units.get("failed", 0)
    requests = server["requests"]
    checks = {
        "exit_0": m.returncode == 0,
        "units_sum_checks_out": seen == accounted == expected["yielded"],
        "every_sendable_unit_processed": units.get("processed") == expected["sendable"],
        "wall_lt_60s": m.wall_seconds < WALL_BAR_S,
        "peak_rss_lt_400mb": m.peak_rss_mb < RSS_BAR_MB,
    }
    return {
        "scenario": "corpus", "corpus": str(corpus), "source_counts": expected,
        "units": units, "requests": requests, "server_2xx": server["2xx"],
        "tasks": report.get("tasks"), "wall_seconds": round(m.wall_seconds, 2),
        "engine_seconds": (report.get("session") or {}).get("wall_seconds"),
        "requests_per_s_end_to_end": round(requests / m.wall_seconds, 1),
        "cpu_seconds": round(m.cpu_seconds, 2),
        "cpu_ms_per_request": round(1000 * m.cpu_seconds / max(requests, 1), 3),
        "peak_rss_mb": round(m.peak_rss_mb, 1), "checks": checks,
        "error": None if m.returncode == 0 else m.stderr_tail[-600:], **machine_info(),
    }


def print_corpus(doc: dict[str, Any]) -> None:
    u, c = doc["units"], doc["source_counts"]
    print(f"\n== corpus: dynogen run over {doc['corpus']}")
    print(f"  units: source yielded {c['yielded']} (sendable {c['sendable']}); run saw "
          f"{u.get('seen')} = processed {u.get('processed')} + skipped {u.get('skipped')} "
          f"{u.get('skipped_by_reason')} + failed {u.get('failed')}")
    print(f"  {doc['requests']:,} requests in {doc['wall_seconds']} s wall "
          f"({doc['requests_per_s_end_to_end']} req/s end to end), "
          f"{doc['cpu_ms_per_request']} CPU ms/request, peak RSS {doc['peak_rss_mb']} MB")
    print("  checks: " + ", ".join(f"{k}={'PASS' if v else 'MISS'}"
                                   for k, v in doc["checks"].items()))
    if doc.get("error"):
        print(f"  error: {doc['error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corpus_run", description=__doc__.split(
        "\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = p.parse_args(argv)
    if not args.corpus.is_dir():
        p.error(f"corpus {args.corpus} not found: pass --corpus PATH")
    work = Path(tempfile.mkdtemp(prefix="dynogen-corpus-"))
    try:
        doc = run_corpus(args.corpus, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_corpus(doc)
    save_result(doc, "corpus")
    return 0 if all(doc["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
