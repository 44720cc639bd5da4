"""Issue #8's bars for ``--mode batch``, over the reference corpus, against the in-repo fake.

``python -m bench.batch [--corpus PATH] [--file-requests N]`` runs ``dynogen run``
(as the CLI, in its own process) against the fake server in another process,
whose Batch API compresses a 24 h job into seconds (validating 0.5 s,
in_progress 4 s, finalizing 0.5 s), and measures:

- equal: an online run and a batch run of the same corpus on the same fake
  write byte-identical ``tasks.jsonl``;
- kill: SIGKILL while batches are in flight, restart with the same command:
  0 files or batches submitted twice, no line processed twice, every answer
  collected, ``tasks.jsonl`` identical to the online run's;
- faults: 5% of lines failed and one batch in three expired: every unit
  accounted for, and the server processed at most requests + failed lines;
- budget: a run with ``--budget-usd`` at gpt-4o-mini's batch prices (exact
  token counts on the fake): the server-billed cost never exceeds the budget.

Saves ``bench/results/batch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import DEFAULT_CORPUS, machine_info, save_result
from dynogen.testing.fake_openai import FakeProcess, start_fake_process

__all__ = ["main", "run_all"]

TIMING = {"validating": 0.5, "in_progress": 4.0, "finalizing": 0.5}
BUDGET_USD = 0.02


def _argv(corpus: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("dynogen")), "run", "--source", str(corpus),
            "--out", str(out), "--base-url", url, "--quiet", "--no-build", *extra]


def batch_flags(file_requests: int) -> list[str]:
    return ["--mode", "batch", "--poll-seconds", "1", "--batch-max-requests", str(file_requests)]


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": "bench", "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(work / "hf")}


def run_child(argv: list[str], env: dict[str, str], timeout: float = 3600) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    return {"exit": p.returncode, "wall_seconds": round(time.perf_counter() - t0, 2),
            "stderr_tail": p.stderr.decode("utf-8", "replace")[-400:]}


def read_report(out: Path) -> dict[str, Any]:
    path = out / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def batch_events(out: Path) -> list[dict[str, Any]]:
    path = out / "batches.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def _fresh(fake: FakeProcess, **settings: Any) -> None:
    fake.reset()
    fake._call("/admin/batches", {**TIMING, "line_fail_rate": 0.0, "expire_every": 0,
                                  "reset": True, **settings})


def accounted(rep: dict[str, Any]) -> bool:
    u = rep.get("units", {})
    return bool(u) and u.get("seen") == u.get("processed", 0) + u.get("skipped", 0) + u.get(
        "failed", 0)


def run_all(corpus: Path, work: Path, file_requests: int) -> dict[str, Any]:
    env = _env(work)
    doc: dict[str, Any] = {"corpus": str(corpus), "file_requests": file_requests,
                           "fake_timing": TIMING}
    # A fresh fake per scenario keeps the server-side counts apart; one fake per kind
    # (the same seed) keeps its answers the same, so tasks can be compared across runs.
    # A loaded machine can take a while to start the fake: wait for it rather than fail.
    with start_fake_process(seed=7, ready_timeout=180) as fake:
        online = work / "online"
        doc["online"] = run_child(_argv(corpus, online, fake.url, "--free"), env)
        _fresh(fake)
        batch = work / "batch"
        doc["batch"] = run_child(
            _argv(corpus, batch, fake.url, "--free", *batch_flags(file_requests)), env)
        counts = fake._call("/admin/batches")
        ref = (online / "tasks.jsonl").read_bytes()
        rep = read_report(batch)
        doc["equal"] = {
            "online_wall_s": doc["online"]["wall_seconds"],
            "batch_wall_s": doc["batch"]["wall_seconds"], "server": counts,
            "tasks_lines": ref.count(b"\n"),
            "tasks_identical": (batch / "tasks.jsonl").read_bytes() == ref and bool(ref),
            "requests": rep.get("requests_paid"),
        }

        _fresh(fake)
        killed = work / "killed"
        argv = _argv(corpus, killed, fake.url, "--free", *batch_flags(file_requests))
        life = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        submitted = 0
        while life.poll() is None and time.monotonic() < deadline:
            evs = batch_events(killed)
            submitted = sum(e["ev"] == "batch" for e in evs)
            if submitted >= 2 and not any(e["ev"] == "done" for e in evs):
                break
            time.sleep(0.01)
        time.sleep(1.0)  # some lines answered at the server, no batch finished
        life.send_signal(signal.SIGKILL)
        life.wait()
        before = fake._call("/admin/batches")
        doc["kill_life2"] = run_child(argv, env)
        after = fake._call("/admin/batches")
        krep = read_report(killed)
        doc["kill"] = {
            "batches_submitted_before_kill": submitted, "server_before": before,
            "server_after": after,
            "files_or_batches_submitted_twice": after["duplicate_uploads"] + max(
                0, after["batches_created"] - after["files_created"]),
            "max_lines_processed_per_request": after["max_processed_per_custom_id"],
            "answers_collected": krep.get("requests_paid"),
            "tasks_identical": (killed / "tasks.jsonl").read_bytes() == ref,
            "units_accounted": accounted(krep),
        }

        _fresh(fake, line_fail_rate=0.05, expire_every=3)
        faulty = work / "faults"
        doc["faults_run"] = run_child(_argv(corpus, faulty, fake.url, "--free",
                                       *batch_flags(file_requests), "--batch-rounds", "4"), env)
        c = fake._call("/admin/batches")
        frep = read_report(faulty)
        failed_lines = c["lines_processed"] - c["billed"]["lines"]
        doc["faults"] = {
            "server": c, "failed_lines": failed_lines,
            "requests": c["custom_ids_processed"],
            "lines_le_requests_plus_failed": c["lines_processed"] <= c[
                "custom_ids_processed"] + failed_lines,
            "answered_once": c["billed"]["lines"] == c["custom_ids_processed"] or None,
            "units": frep.get("units"), "units_accounted": accounted(frep),
            "session": {k: v for k, v in (frep.get("session") or {}).items()
                        if k.startswith("batch")},
        }

    save_result({**doc, "partial": True}, "batch")  # what is measured so far survives a crash
    with start_fake_process(seed=7, exact_tokens=True, ready_timeout=180) as fake:
        _fresh(fake)
        budget = work / "budget"
        doc["budget_run"] = run_child(
            _argv(corpus, budget, fake.url, "--model", "gpt-4o-mini", "--budget-usd",
                  str(BUDGET_USD), *batch_flags(file_requests)), env)
        c = fake._call("/admin/batches")
        from dynogen.execute.prices import PriceTable

        price = PriceTable.load().lookup("gpt-4o-mini")
        billed = price.cost(c["billed"]["prompt_tokens"], c["billed"]["completion_tokens"],
                            batch=True)
        brep = read_report(budget)
        doc["budget"] = {
            "budget_usd": BUDGET_USD, "server_billed_usd": round(billed, 6),
            "within_budget": billed <= BUDGET_USD,
            "ledger_spent_usd": (brep.get("cost") or {}).get("spent_usd_total"),
            "exit": doc["budget_run"]["exit"], "units": brep.get("units"),
            "lines_billed": c["billed"]["lines"],
        }
    doc["checks"] = {
        "equal_tasks": doc["equal"]["tasks_identical"],
        "kill_nothing_twice": doc["kill"]["files_or_batches_submitted_twice"] == 0
        and doc["kill"]["max_lines_processed_per_request"] == 1,
        "kill_identical": doc["kill"]["tasks_identical"] and doc["kill_life2"]["exit"] == 0,
        "faults_accounted": doc["faults"]["units_accounted"]
        and doc["faults"]["lines_le_requests_plus_failed"],
        "budget_held": doc["budget"]["within_budget"] and doc["budget"]["exit"] == 3,
    }
    return {**doc, **machine_info()}


def print_doc(doc: dict[str, Any]) -> None:
    e, k, f, b = doc["equal"], doc["kill"], doc["faults"], doc["budget"]
    print(f"\n== batch mode over {doc['corpus']} ({doc['file_requests']} requests a file)")
    print(f"  equal: online {e['online_wall_s']} s, batch {e['batch_wall_s']} s; "
          f"{e['server']['batches_created']} batches, {e['server']['lines_processed']} lines; "
          f"tasks identical: {e['tasks_identical']} ({e['tasks_lines']} lines)")
    print(f"  kill: {k['batches_submitted_before_kill']} batches in flight at the kill; "
          f"submitted twice: {k['files_or_batches_submitted_twice']}, max lines per request "
          f"{k['max_lines_processed_per_request']}, answers {k['answers_collected']}, "
          f"identical: {k['tasks_identical']}")
    print(f"  faults: {f['failed_lines']} failed lines, "
          f"{f['server']['by_status']} batches; lines {f['server']['lines_processed']} <= "
          f"requests {f['requests']} + failed {f['failed_lines']}: "
          f"{f['lines_le_requests_plus_failed']}; units accounted: {f['units_accounted']}")
    print(f"  budget: ${b['server_billed_usd']} billed of ${b['budget_usd']} "
          f"(ledger ${b['ledger_spent_usd']}); exit {b['exit']}")
    print("  checks: " + ", ".join(f"{n}={'PASS' if v else 'MISS'}"
                                   for n, v in doc["checks"].items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch",
                                description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--file-requests", type=int, default=400,
                   help="requests per input file, so the corpus makes several batches")
    args = p.parse_args(argv)
    if not args.corpus.is_dir():
        p.error(f"corpus {args.corpus} not found: pass --corpus PATH")
    work = Path(tempfile.mkdtemp(prefix="dynogen-batch-"))
    try:
        doc = run_all(args.corpus, work, args.file_requests)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_doc(doc)
    save_result(doc, "batch")
    return 0 if all(doc["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
