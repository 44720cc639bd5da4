"""At the limit under real latencies (issue #11): 600 to 30,000 RPM, answers of seconds.

``python -m bench.realistic [rpm600 rpm3000 rpm12000 rpm30000 structured] [--clients ...]``

Real chat completions take seconds: about half a second to the first token,
then 10-15 ms per output token. The fake here answers after a lognormal time
to first token (median 0.5 s, sigma 0.5: a heavy right tail), plus 12 ms per
output token (100-300 of them), plus, for 1 % of answers, 15 s more — a mean
of about 3 s, so a 30,000 RPM account needs ~1,500 requests in flight. The
fake enforces OpenAI-style per-second buckets and charges, as OpenAI
documents, the prompt's tokens plus ``max_tokens`` at admission.

Clients run one at a time (at these rates two cores must measure the client,
not contention) with default limit flags: told the account's RPM/TPM, nothing
else. Every scenario holds enough requests for a steady window of at least
60 s. What is judged (issue #11):

* steady: throughput between 5 % and 90 % of the work done, >= 97 % of the
  binding limit;
* API span: completions over (last answer - first request), >= 95 % of the
  limit where one answer time is under 3 % of that span;
* <= 0.5 % of requests answered 429, nothing lost;
* ``structured`` (2M TPM, 3,000 RPM, 2,000 requests with ``max_tokens`` 256
  and a per-request JSON schema): >= 95 % of the ideal wall time over the
  whole process, ideal = (tokens charged - one burst) / (TPM/60) + median
  answer time.

Results: ``bench/results/realistic-<name>.json`` and ``.png``; the machine's
load average before and after each client is saved with it (2 shared cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.peers import CLIENTS, ensure_peers_venv, peer_env
from bench.plot import plot_scenario
from bench.scenarios import (
    BIG,
    DEFAULT_CORPUS,
    RESULTS,
    Scenario,
    Workload,
    _count_output,
    _run_client,
    build_workload,
    cleanup,
    machine_info,
    new_workdir,
    save_result,
)
from dynogen.testing.fake_answers import ExactTokens

__all__ = ["REALISTIC", "SPECS", "main"]

REALISTIC: dict[str, Any] = {
    "latency_median": 0.5, "latency_sigma": 0.5, "latency_per_token": 0.012,
    "output_tokens": (100, 300), "tail_p": 0.01, "tail_seconds": 15.0, "exact_tokens": True,
}
MEDIAN_ANSWER = 0.5 + 0.012 * 200  # seconds: the fake's median answer time, about

# name: (rpm, tpm, requests, max_tokens override, title)
SPECS: dict[str, tuple[float, float, int, int | None, str]] = {
    "rpm600": (600, BIG, 900, None, "600 RPM, answers of ~3 s (TTFT + 12 ms/token, heavy tail)"),
    "rpm3000": (3000, BIG, 4_500, None, "3,000 RPM, answers of ~3 s"),
    "rpm12000": (12_000, BIG, 18_000, None, "12,000 RPM, answers of ~3 s"),
    "rpm30000": (30_000, BIG, 45_000, None, "30,000 RPM, answers of ~3 s"),
    "structured": (3000, 2_000_000, 2_000, 256,
                   "2M TPM, 3,000 RPM, 2,000 structured requests, max_tokens 256"),
}


def cycled(base: Workload, n: int, dest: Path, max_tokens: int | None) -> Workload:
    """``n`` requests cycling through ``base`` (new custom_ids), ``max_tokens`` set if given."""
    exact = ExactTokens("o200k_base")
    costs: list[tuple[bytes, dict[str, Any], int]] = []
    with base.path.open("rb") as f:
        for line in itertools.islice(f, n):
            rec = orjson.loads(line)
            body = rec["body"]
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            costs.append((line, body, exact.prompt_tokens(body)[0] + body["max_tokens"]))
    total = 0
    with dest.open("wb") as out:
        for i, (_, body, cost) in zip(range(n), itertools.cycle(costs), strict=False):
            out.write(orjson.dumps({"custom_id": f"req-{i:06d}", "method": "POST",
                                    "url": "/v1/chat/completions", "body": body}) + b"\n")
            total += cost
    return Workload(dest, n, total / n)


def judge(row: dict[str, Any], stats: dict[str, Any], binding: str, limit: float,
          mean_cost: float, n: int) -> dict[str, Any]:
    """The issue's measures from the fake's own record (per-second completions, span)."""
    done = stats["timeline"]["completions"]
    unit = mean_cost if binding == "tpm" else 1.0
    per_s_limit = limit / 60.0
    cum = list(itertools.accumulate(done))
    total = cum[-1] if cum else 0
    out: dict[str, Any] = {}
    if total:
        t5 = next(i for i, c in enumerate(cum) if c >= 0.05 * n) if cum[-1] >= 0.05 * n else None
        t90 = next((i for i, c in enumerate(cum) if c >= 0.90 * n), None)
        if t5 is not None and t90 is not None and t90 > t5:
            rate = (cum[t90] - cum[t5]) / (t90 - t5) * unit
            out["steady"] = {"from_s": t5, "to_s": t90, "seconds": t90 - t5,
                             "fraction": round(rate / per_s_limit, 4)}
    first, last = stats.get("first_request"), stats.get("last_answer")
    last_req = stats.get("last_request")
    if first is not None and last is not None and last > first:
        span = last - first
        # The drain: from the last request to the last answer. With 1 % of answers taking
        # 15 s more, one of the last second's requests is nearly always one of them, so
        # the span ends with a ~18 s answer no client can shorten. The issue judges the
        # span "wherever one answer time is under 3 % of it": that answer is this one.
        drain = (last - last_req) if last_req is not None else MEDIAN_ANSWER
        out["api_span"] = {"seconds": round(span, 2),
                           "fraction": round(total * unit / span / per_s_limit, 4),
                           "drain_seconds": round(drain, 2),
                           "applies": 0.03 * span > drain}
        if last_req is not None and last_req > first:
            # While sending: completions over (last request - first request + a median
            # answer), the part of the span the client decides.
            sending = last_req - first + MEDIAN_ANSWER
            out["sending_span"] = {"seconds": round(sending, 2),
                                   "fraction": round(total * unit / sending / per_s_limit, 4)}
    return out


def run_one(name: str, client: str, wl: Workload, work: Path, env: dict[str, str],
            log: Any = print) -> dict[str, Any]:
    rpm, tpm, n, _, title = SPECS[name]
    binding = "tpm" if tpm < BIG else "rpm"
    limit = tpm if binding == "tpm" else rpm
    fake = {"rpm": rpm, "tpm": tpm, **REALISTIC}
    seconds = n / (rpm / 60.0) if binding == "rpm" else n * wl.mean_cost / (tpm / 60.0)
    sc = Scenario(f"realistic-{name}", title, fake, binding, seconds)
    load_before = os.getloadavg()
    run = _run_client(client, sc, wl, work, env, timeout=seconds * 3 + 240)
    load_after = os.getloadavg()
    m = run.measured
    row: dict[str, Any] = {"client": client, "label": CLIENTS[client].label, "error": run.error,
                           "load_before": [round(x, 2) for x in load_before],
                           "load_after": [round(x, 2) for x in load_after]}
    if m is None:
        return row
    totals = run.stats["totals"]
    ok, _ = _count_output(Path(m.argv[m.argv.index("--out") + 1]))
    sent = totals["requests"]
    row.update({
        "requests": n, "completed": ok, "lost": n - ok, "server_requests": sent,
        "answered_429": totals["429"], "pct_429": round(100.0 * totals["429"] / max(sent, 1), 2),
        "wall_seconds": round(m.wall_seconds, 2), "cpu_seconds": round(m.cpu_seconds, 2),
        "cpu_ms_per_request": round(1000 * m.cpu_seconds / max(ok, 1), 3),
        "peak_rss_mb": round(m.peak_rss_mb, 1), "timeline": run.stats["timeline"],
        "first_request": run.stats.get("first_request"),
        "last_answer": run.stats.get("last_answer"),
    })
    row.update(judge(row, run.stats, binding, limit, wl.mean_cost, n))
    if name == "structured":
        ideal = max(0.0, n * wl.mean_cost - tpm / 60.0) / (tpm / 60.0) + MEDIAN_ANSWER
        row["ideal_wall_seconds"] = round(ideal, 2)
        row["fraction_of_ideal_wall"] = round(ideal / m.wall_seconds, 4)
        # The same ideal ending with the answer time the fake actually drew for the last
        # requests (the drain) instead of a median one: what a perfect client would get.
        drain = row.get("api_span", {}).get("drain_seconds")
        if drain is not None:
            ideal_d = ideal - MEDIAN_ANSWER + max(MEDIAN_ANSWER, drain)
            row["fraction_of_ideal_wall_with_drain"] = round(ideal_d / m.wall_seconds, 4)
    steady = row.get("steady", {}).get("fraction", 0.0)
    span = row.get("api_span", {})
    sending = row.get("sending_span", {}).get("fraction", 0.0)
    row["bars"] = {
        "steady_ge_97pct": steady >= 0.97,
        "api_span_ge_95pct": (span.get("fraction", 0.0) >= 0.95) or not span.get("applies", True),
        "sending_span_ge_95pct": sending >= 0.95,
        "429_le_0.5pct": row["pct_429"] <= 0.5,
        "nothing_lost": ok == n,
    }
    if name == "structured":
        row["bars"]["wall_ge_95pct_of_ideal"] = row["fraction_of_ideal_wall"] >= 0.95
    log(f"  {client:10s} steady {100 * steady:5.1f}%  span {100 * span.get('fraction', 0):5.1f}%"
        f" (drain {span.get('drain_seconds', 0):.1f}s, sending {100 * sending:5.1f}%)"
        f"  429s {row['answered_429']:>5}  done {ok}/{n}  wall {m.wall_seconds:6.1f}s"
        f"  CPU {row['cpu_ms_per_request']:.2f} ms/req  RSS {row['peak_rss_mb']:.0f} MB"
        f"  load {load_before[0]:.1f}->{load_after[0]:.1f}"
        + (f"  ideal {row['fraction_of_ideal_wall']:.1%}"
           f" (with the drawn drain {row.get('fraction_of_ideal_wall_with_drain', 0):.1%})"
           if name == "structured" else "")
        + (f"  ERROR {run.error}" if run.error else ""))
    return row


def markdown(doc: dict[str, Any]) -> str:
    """The README's table for one saved result."""
    head = ("| client | steady (5-90 % of work) | API span (drain) | sending span | 429s "
            "| done / lost | wall s | CPU ms/req | peak RSS MB "
            "| load avg (1 min) before → after |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in doc["clients"]:
        if "completed" not in r:
            rows.append(f"| {r['label']} | error: {r.get('error')} ||||||||")
            continue
        span = r.get("api_span", {})
        extra = (f" (ideal wall: {100 * r['fraction_of_ideal_wall']:.1f} %, with the drawn "
                 f"drain {100 * r.get('fraction_of_ideal_wall_with_drain', 0):.1f} %)"
                 if "fraction_of_ideal_wall" in r else "")
        rows.append(
            f"| {r['label']} | {100 * r.get('steady', {}).get('fraction', 0):.1f} %{extra} "
            f"| {100 * span.get('fraction', 0):.1f} % of {span.get('seconds', 0):.0f} s "
            f"({span.get('drain_seconds', 0):.0f} s) "
            f"| {100 * r.get('sending_span', {}).get('fraction', 0):.1f} % "
            f"| {r['answered_429']} ({r['pct_429']:.2f} %) | {r['completed']:,} / {r['lost']} "
            f"| {r['wall_seconds']:.1f} | {r['cpu_ms_per_request']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.realistic",
                                description=__doc__.splitlines()[0])
    p.add_argument("scenarios", nargs="*", default=list(SPECS), help=f"of {', '.join(SPECS)}")
    p.add_argument("--clients", default="dynogen", help="comma-separated (default: dynogen)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--tag", default="", help="suffix for the result files (e.g. -before)")
    p.add_argument("--client-pythonpath", default=None,
                   help="PYTHONPATH for the clients only (e.g. an export of another commit)")
    p.add_argument("--tables", action="store_true", help="print the saved results as markdown")
    args = p.parse_args(argv)
    if args.tables:
        for path in sorted(RESULTS.glob("realistic-*.json")):
            doc = orjson.loads(path.read_bytes())
            print(f"\n### {path.stem}: {doc['title']} ({doc['requests']:,} requests)\n")
            print(markdown(doc))
        return 0
    clients = [c for c in args.clients.split(",") if c]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = new_workdir()
    try:
        base = build_workload(args.corpus, work / "workload.jsonl")
        if any(CLIENTS[c].is_peer for c in clients):
            err = ensure_peers_venv(print)
            if err:
                print(f"peers cannot run: {err}")
                clients = [c for c in clients if not CLIENTS[c].is_peer]
        env = peer_env(work)
        if args.client_pythonpath:
            env["PYTHONPATH"] = args.client_pythonpath
        for name in args.scenarios:
            rpm, tpm, n, max_tokens, title = SPECS[name]
            wl = cycled(base, n, work / f"{name}.jsonl", max_tokens)
            print(f"\n== {name}: {title} — {n} requests, mean rate-limit cost "
                  f"{wl.mean_cost:.0f} tokens")
            path = RESULTS / f"realistic-{name}{args.tag}.json"
            old = orjson.loads(path.read_bytes()) if path.exists() else {"clients": []}
            rows = [r for r in old.get("clients", []) if r.get("client") not in clients]
            for client in clients:
                rows.append(run_one(name, client, wl, work, env))
            binding = "tpm" if tpm < BIG else "rpm"
            doc = {"scenario": f"realistic-{name}", "title": title, "binding": binding,
                   "fake": {"rpm": rpm, "tpm": tpm, **REALISTIC}, "change": None,
                   "requests": n, "mean_rate_limit_cost": round(wl.mean_cost, 1),
                   "serial": True, "clients": rows, **machine_info()}
            save_result(doc, f"realistic-{name}{args.tag}")
            plot_scenario(doc, RESULTS / f"realistic-{name}{args.tag}.png")
    finally:
        cleanup(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
