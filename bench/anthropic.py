"""Anthropic as a provider, over the reference corpus, against the fake Anthropic server.

``python -m bench.anthropic [--corpus PATH] [--file-requests N] [--only equal,kill,budget,limits]``
runs ``dynogen`` as the CLI, in its own process, against
``dynogen.testing.fake_anthropic`` in another (Messages and Message Batches, a
batch answered over 4 s instead of hours, Claude Sonnet 4.5's prices for the
server's bill). The model is ``claude-sonnet-4-5``, so the provider comes from
the price map's entry, with no flag. It measures:

- equal: an online run and a batch run of the corpus write byte-identical
  ``tasks.jsonl``;
- kill: SIGKILL while Message Batches are in flight, with the last batch's id
  dropped from the journal (its intent kept: what a kill between the create and
  its journal line leaves), then the same command again: no request submitted
  or answered twice (the server's count per ``custom_id``), every unit done,
  ``tasks.jsonl`` identical to the online run's;
- budget: ``--budget-usd`` online and in batch mode: what the server bills never
  exceeds it;
- limits: the limit bench's 3,000 RPM scenario (``bench.realistic``: answers of
  ~3 s, a 1 % tail of 15 s more, 4,500 requests through ``dynogen call``) against
  the fake's Anthropic limits and headers: steady throughput >= 95 % of the
  limit, <= 0.5 % of requests answered 429, nothing lost.

Saves ``bench/results/anthropic.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.batch import accounted, batch_events, batch_flags, read_report, run_child
from bench.realistic import REALISTIC, cycled, judge
from bench.scenarios import (
    BIG,
    DEFAULT_CORPUS,
    _count_output,
    build_workload,
    machine_info,
    save_result,
)
from dynogen.execute.prices import PriceTable
from dynogen.testing.fake_anthropic_process import FakeAnthropicProcess, start_fake_anthropic

__all__ = ["main", "run_all"]

KEY = "sk-ant-bench"
MODEL = "claude-sonnet-4-5"
PROCESSING = 4.0
BUDGET_USD = 1.0
RPM, N_LIMITS = 3000, 4_500


def _prices() -> list[float]:
    p = PriceTable.load().lookup(MODEL)
    return [p.input, p.output, p.cache_write or p.input, p.cached_input]


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY",
                                                            "ANTHROPIC_API_KEY")}
    return {**env, "ANTHROPIC_API_KEY": KEY, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf")}


def _dynogen(*args: str) -> list[str]:
    return [sys.executable, "-m", "dynogen", *args]


def _run_argv(corpus: Path, out: Path, url: str, *extra: str) -> list[str]:
    # Every unit of the corpus, as the OpenAI batch bench sends them (the data policies
    # would leave out four in five: see the README's "Data a user can train on").
    return _dynogen("run", "--source", str(corpus), "--out", str(out), "--base-url", url,
                    "--model", MODEL, "--quiet", "--no-build", "--licenses", "any",
                    "--languages", "any", "--splits", "all", *extra)


def _fresh(fake: FakeAnthropicProcess) -> None:
    fake.reset()
    fake.batches(reset=True, processing_seconds=PROCESSING)


def equal_and_kill(corpus: Path, work: Path, file_requests: int,
                   env: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    with start_fake_anthropic(seed=7, api_key=KEY, prices=_prices(), ready_timeout=180) as fake:
        online = work / "online"
        doc["online_run"] = run_child(_run_argv(corpus, online, fake.url), env)
        billed_online = fake.stats()["bill"]
        _fresh(fake)
        batch = work / "batch"
        doc["batch_run"] = run_child(
            _run_argv(corpus, batch, fake.url, *batch_flags(file_requests)), env)
        counts = fake.batches()
        ref = (online / "tasks.jsonl").read_bytes()
        rep, brep = read_report(online), read_report(batch)
        doc["equal"] = {
            "online_wall_s": doc["online_run"]["wall_seconds"],
            "batch_wall_s": doc["batch_run"]["wall_seconds"], "server": counts,
            "requests": rep.get("requests_paid"), "tasks_lines": ref.count(b"\n"),
            "tasks_identical": bool(ref) and (batch / "tasks.jsonl").read_bytes() == ref,
            "online_usd": {"ledger": (rep.get("cost") or {}).get("spent_usd_total"),
                           "server": billed_online["usd"]},
            "batch_usd": {"ledger": (brep.get("cost") or {}).get("spent_usd_total"),
                          "server": fake.stats()["bill"]["batch"]["usd"]},
            "online_cache": {k: billed_online["online"][k]
                             for k in ("input", "cache_write", "cache_read")},
        }

        _fresh(fake)
        killed = work / "killed"
        argv = _run_argv(corpus, killed, fake.url, *batch_flags(file_requests))
        life = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 900
        submitted = 0
        while life.poll() is None and time.monotonic() < deadline:
            evs = batch_events(killed)
            submitted = sum(e["ev"] == "batch" for e in evs)
            if submitted >= 3 and not any(e["ev"] == "done" for e in evs):
                break
            time.sleep(0.01)
        time.sleep(1.0)  # some requests answered at the server, no batch ended
        life.send_signal(signal.SIGKILL)
        life.wait()
        evs = batch_events(killed)
        dropped = False
        if [e["ev"] for e in evs[-2:]] == ["intent", "batch"]:
            journal = killed / "batches.jsonl"
            journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[:-1]))
            dropped = True
        before = fake.batches()
        doc["kill_life2"] = run_child(argv, env)
        after = fake.batches()
        krep = read_report(killed)
        doc["kill"] = {
            "batches_in_flight_at_kill": before["by_status"].get("live", 0),
            "batch_id_dropped_from_journal": dropped, "server_before": before,
            "server_after": after,
            "batches_created_after_restart": after["batches_created"] - before["batches_created"],
            "max_submitted_per_custom_id": after["max_submitted_per_custom_id"],
            "max_answered_per_custom_id": after["max_answered_per_custom_id"],
            "lost_batches_found": (krep.get("session") or {}).get("batch_lost_batches_found"),
            "answers_collected": krep.get("requests_paid"),
            "tasks_identical": (killed / "tasks.jsonl").read_bytes() == ref,
            "units_accounted": accounted(krep),
        }
    return doc


def budget(corpus: Path, work: Path, file_requests: int, env: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"budget_usd": BUDGET_USD}
    with start_fake_anthropic(seed=7, api_key=KEY, prices=_prices(), ready_timeout=180) as fake:
        for mode, extra in (("online", []), ("batch", batch_flags(file_requests))):
            _fresh(fake)
            out = work / f"budget-{mode}"
            run = run_child(_run_argv(corpus, out, fake.url, "--budget-usd", str(BUDGET_USD),
                                 *extra), env)
            bill = fake.stats()["bill"]
            rep = read_report(out)
            doc[mode] = {"exit": run["exit"], "server_billed_usd": round(bill["usd"], 6),
                         "ledger_spent_usd": (rep.get("cost") or {}).get("spent_usd_total"),
                         "within_budget": bill["usd"] <= BUDGET_USD,
                         "requests_billed": bill["online"]["requests"]
                         + bill["batch"]["requests"], "units": rep.get("units")}
    return doc


def limits(corpus: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """The 3,000 RPM scenario of ``bench.realistic``, against Anthropic's headers."""
    base = build_workload(corpus, work / "workload.jsonl")
    wl = cycled(base, N_LIMITS, work / "rpm3000.jsonl", None)
    fake_opts = {"rpm": RPM, "itpm": BIG, "otpm": BIG, "api_key": KEY, "seed": 7,
                 **{k: v for k, v in REALISTIC.items() if k != "exact_tokens"}}
    out = work / "rpm3000.out.jsonl"
    with start_fake_anthropic(ready_timeout=180, **fake_opts) as fake:
        argv = _dynogen("call", str(wl.path), "--out", str(out), "--base-url", fake.url,
                        "--model", MODEL, "--free", "--quiet", "--rpm", str(RPM))
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, capture_output=True, timeout=N_LIMITS / 50 * 3 + 240)
        wall = time.perf_counter() - t0
        stats = fake.stats()
    ok, _ = _count_output(out)
    totals = stats["totals"]
    sent = totals["requests"]
    row: dict[str, Any] = {
        "rpm": RPM, "requests": N_LIMITS, "completed": ok, "lost": N_LIMITS - ok,
        "server_requests": sent, "answered_429": totals["429"],
        "pct_429": round(100.0 * totals["429"] / max(sent, 1), 3),
        "wall_seconds": round(wall, 2), "exit": p.returncode,
        "stderr_tail": p.stderr.decode("utf-8", "replace")[-300:],
        "fake": fake_opts, "timeline": stats["timeline"],
    }
    row.update(judge(row, stats, "rpm", RPM, wl.mean_cost, N_LIMITS))
    steady = row.get("steady", {}).get("fraction", 0.0)
    row["bars"] = {"steady_ge_95pct": steady >= 0.95, "429_le_0.5pct": row["pct_429"] <= 0.5,
                   "nothing_lost": ok == N_LIMITS}
    return row


def run_all(corpus: Path, work: Path, file_requests: int, only: set[str]) -> dict[str, Any]:
    env = _env(work)
    doc: dict[str, Any] = {"corpus": str(corpus), "file_requests": file_requests,
                           "model": MODEL, "batch_processing_seconds": PROCESSING}
    checks: dict[str, bool] = {}
    if only & {"equal", "kill"}:
        doc.update(equal_and_kill(corpus, work, file_requests, env))
        checks["equal_tasks"] = doc["equal"]["tasks_identical"]
        k = doc["kill"]
        checks["kill_nothing_twice"] = (k["max_submitted_per_custom_id"] == 1
                                        and k["max_answered_per_custom_id"] == 1)
        checks["kill_identical"] = k["tasks_identical"] and doc["kill_life2"]["exit"] == 0
        save_result({**doc, "partial": True}, "anthropic")
    if "budget" in only:
        doc["budget"] = budget(corpus, work, file_requests, env)
        checks["budget_held"] = all(doc["budget"][m]["within_budget"]
                                    and doc["budget"][m]["exit"] == 3 for m in ("online", "batch"))
        save_result({**doc, "partial": True}, "anthropic")
    if "limits" in only:
        doc["limits"] = limits(corpus, work, env)
        checks["limits_bars"] = all(doc["limits"]["bars"].values())
    doc["checks"] = checks
    return {**doc, **machine_info()}


def print_doc(doc: dict[str, Any]) -> None:
    print(f"\n== Anthropic over {doc['corpus']} ({doc['file_requests']} requests a batch)")
    if "equal" in doc:
        e, k = doc["equal"], doc["kill"]
        print(f"  equal: online {e['online_wall_s']} s, batch {e['batch_wall_s']} s; "
              f"{e['server']['batches_created']} batches, {e['requests']} requests; tasks "
              f"identical: {e['tasks_identical']} ({e['tasks_lines']} lines); $ online "
              f"{e['online_usd']}, batch {e['batch_usd']}")
        print(f"  kill: {k['batches_in_flight_at_kill']} batches in flight, id dropped: "
              f"{k['batch_id_dropped_from_journal']}; after restart "
              f"{k['batches_created_after_restart']} new batches, max submitted/answered "
              f"per request {k['max_submitted_per_custom_id']}/"
              f"{k['max_answered_per_custom_id']}, lost found {k['lost_batches_found']}, "
              f"identical: {k['tasks_identical']}")
    if "budget" in doc:
        b = doc["budget"]
        for m in ("online", "batch"):
            print(f"  budget {m}: server billed ${b[m]['server_billed_usd']} of "
                  f"${b['budget_usd']} (ledger ${b[m]['ledger_spent_usd']}), exit {b[m]['exit']}")
    if "limits" in doc:
        r = doc["limits"]
        print(f"  limits: steady {100 * r.get('steady', {}).get('fraction', 0):.1f}% of "
              f"{r['rpm']} RPM, 429s {r['answered_429']} ({r['pct_429']}%), done "
              f"{r['completed']}/{r['requests']}, wall {r['wall_seconds']} s")
    print("  checks: " + ", ".join(f"{n}={'PASS' if v else 'MISS'}"
                                   for n, v in doc["checks"].items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.anthropic",
                                description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--file-requests", type=int, default=400,
                   help="requests per Message Batch, so the corpus makes several")
    p.add_argument("--only", default="equal,kill,budget,limits")
    args = p.parse_args(argv)
    if not args.corpus.is_dir():
        p.error(f"corpus {args.corpus} not found: pass --corpus PATH")
    work = Path(tempfile.mkdtemp(prefix="dynogen-anthropic-"))
    try:
        doc = run_all(args.corpus, work, args.file_requests, set(args.only.split(",")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_doc(doc)
    save_result(doc, "anthropic")
    return 0 if all(doc["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
