"""Issue #4: a run where 10% of answers fail, in every way a server fails, loses no unit.

``python -m bench.faults [--corpus PATH] [--units 1500] [--fault-rate 0.1]`` runs
``python -m dynogen run`` (the CLI, in its own process) over dataset cards
copied from the reference corpus plus small datasets with rows, against a fake
server that answers ``--fault-rate`` of requests with a fault drawn evenly from:
timeout (past a 1 s client ``request_timeout``), HTTP 500 (typed and bare),
502 (an HTML gateway page), 503, connection reset, a 200 that is not JSON, a
200 of the wrong shape, empty ``choices``, ``finish_reason`` length and
content_filter, a refusal, a 429 with retry-after, and a slow answer.

Checks, from ``report.json``, ``units.jsonl`` and the server's own counts:
the run exits 0; every unit the source yields has a journal line; units seen
== processed + skipped + failed; every request the server received is
counted in ``requests``; each terminal fault (content_filter, refusal) is
counted under its own reason; requests that ran out of retries are counted by
reason. Prints a JSON summary and saves ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.kill import DEFAULT_CORPUS, RESULTS, build_source, lines
from dynogen.io.folder import FolderSource
from dynogen.testing import FakeOpenAI, Fault, Latency, serve
from dynogen.testing.fake_answers import Reply

__all__ = ["MIXED_FAULTS", "MixedFaults", "main"]

REQUEST_TIMEOUT = 1.0

# (label, fault): every way the fake can fail an answer, plus 502 and a bare 500,
# which are HTTP statuses rather than kinds of their own.
MIXED_FAULTS: tuple[tuple[str, Fault], ...] = (
    ("timeout", Fault.timeout(30.0)),
    ("http_500", Fault("server_error")),
    ("http_500_bare", Fault.http(500)),
    ("http_502", Fault.http(502, "<html><body><h1>502 Bad Gateway</h1></body></html>",
                            {"content-type": "text/html"})),
    ("http_503", Fault("unavailable")),
    ("reset", Fault("reset")),
    ("not_json", Fault("not_json")),
    ("wrong_shape", Fault("wrong_shape")),
    ("empty_choices", Fault("empty_choices")),
    ("length", Fault("length")),
    ("content_filter", Fault("content_filter")),
    ("refusal", Fault("refusal")),
    ("rate_limit", Fault("rate_limit", retry_after=0.05)),
    ("slow", Fault.slow(0.5)),
)


class MixedFaults(FakeOpenAI):
    """A fake that fails ``rate`` of chat requests with a fault drawn from ``MIXED_FAULTS``
    (the stock draw takes kind names only, so it cannot send a 502), counting each label."""

    def __init__(self, rate: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.mixed_rate = rate
        self.drawn: Counter[str] = Counter()

    def reply(self, raw: bytes, headers: Mapping[str, str]) -> Reply:
        if not self.queue and self.rng.random() < self.mixed_rate:
            label, fault = self.rng.choice(MIXED_FAULTS)
            self.drawn[label] += 1
            self.enqueue(fault)
        return super().reply(raw, headers)

    def stats_dict(self) -> dict[str, Any]:
        return {**super().stats_dict(), "drawn": dict(self.drawn)}


async def _serve(rate: float, latency: float, seed: int) -> None:
    fake = MixedFaults(rate, latency=Latency(latency, 0.5), seed=seed, keep_history=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(fake) as server:
        print(json.dumps({"url": server.url}), flush=True)
        await stop.wait()


def _get(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _start_server(rate: float, latency: float, seed: int) -> tuple[subprocess.Popen[bytes], str]:
    p = subprocess.Popen([sys.executable, "-m", "bench.faults", "--serve", "--fault-rate",
                          str(rate), "--latency", str(latency), "--seed", str(seed)],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(20):
            p.kill()
            raise SystemExit("the fault server did not start")
    return p, json.loads(p.stdout.readline())["url"]


def check(out: Path, src: Path, stats: dict[str, Any]) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    records = [json.loads(x) for x in lines(out / "units.jsonl")]
    last = {r["key"]: r for r in records}
    journal = Counter(f"{r['dataset']}::{r['config']}" for r in last.values())
    source = Counter(item.key for item in FolderSource(src))
    u = report["units"]
    failed_req = Counter[str]()
    for r in records:
        failed_req.update(r.get("failed") or {})
    faults = stats["totals"]["faults"]
    invalid = report["responses_invalid_by_reason"]
    checks = {
        "every_source_unit_in_journal": journal == source,
        "units_add_up": u["seen"] == len(last) == u["processed"] + u["skipped"] + u["failed"],
        "every_request_counted": report["requests"] == stats["totals"]["requests"],
        "content_filter_counted": invalid.get("content_filter", 0) == faults.get(
            "content_filter", 0),
        "refusals_counted": invalid.get("empty_answer", 0) == faults.get("refusal", 0),
        "failed_requests_by_reason_match_journal": report["requests_failed_by_reason"] == dict(
            failed_req),
    }
    if journal != source:
        checks["missing"] = sorted((source - journal).elements())[:20]
        checks["unexpected"] = sorted((journal - source).elements())[:20]
    return {"checks": checks, "report": {
        "units": u,
        "requests": report["requests"],
        "responses": report["responses"],
        "responses_invalid_by_reason": invalid,
        "requests_failed_by_reason": report["requests_failed_by_reason"],
        "tasks": {k: report["tasks"][k] for k in ("generated", "kept", "dropped")},
        "instances_written": report["instances"]["written"],
        "session": {k: report["session"].get(k) for k in (
            "requests", "retries", "length_retries", "wall_seconds", "requests_per_second")},
    }}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--units", type=int, default=1500)
    ap.add_argument("--with-rows", type=int, default=60)
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--max-in-flight", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.fault_rate, args.latency, args.seed))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="dynogen-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "src", work / "out"
    shutil.rmtree(out, ignore_errors=True)
    summary: dict[str, Any] = {"source": build_source(args.corpus, src, args.units,
                                                      args.with_rows)}
    cfg = work / "dynogen.toml"
    cfg.write_text(f"request_timeout = {REQUEST_TIMEOUT}\nretry_base_delay = 0.1\n"
                   "retry_max_delay = 2.0\n")
    server, url = _start_server(args.fault_rate, args.latency, args.seed)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("OPENAI_API_KEY", None)
    try:
        t0 = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "dynogen", "run", "--source", str(src), "--out", str(out),
             "--base-url", url, "--free", "--quiet", "--max-in-flight", str(args.max_in_flight),
             "--config", str(cfg), "--licenses", "any", "--languages", "any", "--splits", "all"],
            env=env, capture_output=True, text=True, timeout=1800)
        summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
        stats = _get(url.removesuffix("/v1") + "/stats")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    summary["exit_code"] = run.returncode
    summary["message"] = (run.stdout + run.stderr).strip().splitlines()[-1:]
    summary["server"] = {"requests": stats["totals"]["requests"], "by_status":
                         stats["totals"]["by_status"], "faults_drawn": stats["drawn"]}
    summary.update(check(out, src, stats) if run.returncode == 0 else {"checks": {}})
    ok = run.returncode == 0 and all(v is True for v in summary["checks"].values())
    summary["ok"] = ok
    print(json.dumps(summary, indent=1))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "faults.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.work is None and ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
