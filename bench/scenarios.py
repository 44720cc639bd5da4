"""Throughput scenarios: dynogen and its peers against the fake server's limits.

Every client gets the same workload (a Batch API input file built from
dynogen's own prompts for the reference corpus, see ``build_workload``) and its
own fake server process with the same settings, so one client's 429 storm does
not eat another's budget. In the limit-bound scenarios the clients run at the
same time (each sends ~10 requests/s, far from what two cores can do, and CPU
is read per process); ``--serial`` runs them one after another instead. The
raw-ceiling scenario always runs them one at a time: there CPU is the limit.

What is measured, per client, comes from two places that do not trust the
client: the fake's ``/stats`` (per-second completions, 429s) and the kernel's
rusage of the client process (CPU seconds, peak RSS).

The bars (issues #2, #3, #5): in the requests-, tokens- and lowered-limit
scenarios, sustained throughput over a 60 s window >= 95 % of the binding
limit, <= 1 % of requests answered 429, every request completed.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.peers import CLIENTS, Job, ensure_peers_venv, peer_env, peer_versions
from bench.peers.harness import Measured, run_measured
from dynogen.testing.fake_answers import ExactTokens
from dynogen.testing.fake_openai import start_fake_process

__all__ = ["SCENARIOS", "Scenario", "Workload", "build_workload", "machine_info",
           "print_table", "run_scenario", "save_result", "steady_rate"]

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPO = BENCH.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "hf-metadata-2022" / "datasets"
BIG = 1e9  # "very high" limit: present, so rate-limit headers are sent, but never binding


@dataclass(frozen=True)
class Workload:
    """A Batch API input file and what the fake will charge for each line."""

    path: Path
    count: int
    mean_cost: float  # fake's prompt-token count + max_tokens: what its TPM bucket takes


def build_workload(corpus: Path, dest: Path, *, limit: int | None = None) -> Workload:
    """Write the Batch API input file from dynogen's prompts for the corpus' units.

    Units that ``skip_reason`` rejects are left out, as ``dynogen run`` leaves
    them out; each kept unit gives one request per prompt variant.
    """
    from dynogen.config import Config
    from dynogen.io.sources import open_source
    from dynogen.prompts.builder import PromptBuilder
    from dynogen.prompts.tokens import TokenCounter
    from dynogen.units import Unit, skip_reason

    cfg = Config()
    builder = PromptBuilder(cfg, TokenCounter(cfg.encoding))
    exact = ExactTokens(cfg.encoding)  # what the fake (exact_tokens) charges, as OpenAI does
    n, cost = 0, 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f:
        for unit in open_source(str(corpus)):
            if not isinstance(unit, Unit) or skip_reason(unit) is not None:
                continue
            for variant in cfg.variants:
                body = builder.request(unit, variant).body
                f.write(orjson.dumps({"custom_id": f"req-{n:06d}", "method": "POST",
                                      "url": "/v1/chat/completions", "body": body}) + b"\n")
                cost += exact.prompt_tokens(body)[0] + body["max_tokens"]
                n += 1
                if limit is not None and n >= limit:
                    return Workload(dest, n, cost / n)
    return Workload(dest, n, cost / max(n, 1))


def head(workload: Workload, n: int, dest: Path) -> Workload:
    """The first ``n`` lines of a workload (the limit-bound scenarios need ~100 s of work)."""
    if n >= workload.count:
        return workload
    cost = 0
    exact = ExactTokens("o200k_base")
    with workload.path.open("rb") as src, dest.open("wb") as out:
        for _, line in zip(range(n), src, strict=False):
            out.write(line)
            body = orjson.loads(line)["body"]
            cost += exact.prompt_tokens(body)[0] + body["max_tokens"]
    return Workload(dest, n, cost / n)


@dataclass(frozen=True)
class Scenario:
    """Fake-server settings, the limits clients are told, and how long to run.

    ``seconds`` is the run length at the binding limit; the workload is sized
    for it. ``window`` is the steady window ``(start, length)`` in seconds from
    the client's first completion; ``change`` lowers the fake's limits at that
    second (clients are not told).
    """

    name: str
    title: str
    fake: dict[str, Any]
    binding: str  # "rpm" or "tpm" or "none"
    seconds: float
    window: tuple[float, float] = (10.0, 60.0)
    change: tuple[float, dict[str, float]] | None = None
    bars: bool = True
    clients: tuple[str, ...] = ("dynogen", "openai-sdk", "curator", "litellm")

    def limit_after(self, t: float) -> float:
        base = float(self.fake[self.binding])
        if self.change and t >= self.change[0]:
            return float(self.change[1].get(self.binding, base))
        return base

    def quick(self) -> Scenario:
        """A ~45 s variant: a 30 s window, the change (if any) at 20 s."""
        change = None
        if self.change:
            change = (20.0, self.change[1])
        start = 30.0 if change else 8.0
        seconds = 60.0 if change else 45.0
        return Scenario(self.name, self.title, self.fake, self.binding, seconds, (start, 30.0),
                        change, self.bars, self.clients)


# exact_tokens: the fake counts prompt tokens as OpenAI does (not characters / 4).
LAT = {"latency_median": 0.3, "latency_sigma": 0.3, "exact_tokens": True}
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("requests-bound", "RPM binding: rpm=600, tpm very high, 300 ms median latency",
             {"rpm": 600, "tpm": BIG, **LAT}, "rpm", 95.0),
    Scenario("tokens-bound", "TPM binding: tpm=400k, rpm very high, 300 ms median latency",
             {"rpm": 100_000, "tpm": 400_000, **LAT}, "tpm", 95.0),
    Scenario("limits-lowered", "rpm=600 lowered to 300 at t=40 s (clients not told)",
             {"rpm": 600, "tpm": BIG, **LAT}, "rpm", 125.0, (50.0, 60.0),
             (40.0, {"rpm": 300})),
    Scenario("heavy-tail", "rpm=600, 300 ms median, 2 % of answers take 30 s more",
             {"rpm": 600, "tpm": BIG, **LAT, "tail_p": 0.02, "tail_seconds": 30.0}, "rpm",
             95.0, bars=False),
    Scenario("faults", "rpm=600, 300 ms median, 5 % faults (5xx, resets, timeouts, bad JSON...)",
             {"rpm": 600, "tpm": BIG, **LAT, "fault_rate": 0.05}, "rpm", 95.0, bars=False),
)}


def requests_for(sc: Scenario, wl: Workload) -> int:
    """Enough requests to keep the client busy for ``sc.seconds`` at the binding limit."""
    per_second = []
    for s in range(int(sc.seconds)):
        limit = sc.limit_after(float(s))
        per_second.append(limit / 60.0 if sc.binding == "rpm" else limit / 60.0 / wl.mean_cost)
    return max(1, math.ceil(sum(per_second)))


# ---- analysis ----------------------------------------------------------------------------------

def steady_rate(stats: dict[str, Any], sc: Scenario, mean_cost: float,
                change_at: float | None) -> dict[str, Any]:
    """Throughput in the steady window, in the binding limit's unit per minute.

    Seconds are the fake's; the window starts ``sc.window[0]`` after the first
    completion (the client's start-up is not its fault), or after the limit
    change. TPM use is completions x the workload's mean cost (prompt tokens as
    the fake counts them + max_tokens): what the fake's bucket takes.
    """
    done = stats["timeline"]["completions"]
    first = next((i for i, c in enumerate(done) if c), None)
    if first is None:
        return {"window": None, "achieved": 0.0, "limit": None, "fraction": 0.0}
    if change_at is not None and sc.change:
        start = int(math.ceil(change_at)) + int(sc.window[0] - sc.change[0])
        limit = sc.limit_after(sc.change[0])
    else:
        start = first + int(sc.window[0])
        limit = sc.limit_after(0.0)
    length = int(sc.window[1])
    series = done[start:start + length]
    full = len(series) == length
    per_min = sum(series) / length * 60.0  # seconds past the client's end count as zero
    if sc.binding == "tpm":
        per_min *= mean_cost
    return {"window": [start, start + len(series)], "window_full": full,
            "achieved": round(per_min, 1), "limit": limit, "fraction": round(per_min / limit, 4)}


def _count_output(path: Path) -> tuple[int, int]:
    """(completed, failed) lines in a client's output: Batch output or the peers' ok/error."""
    ok = failed = 0
    if not path.exists():
        return 0, 0
    with path.open("rb") as f:
        for line in f:
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                failed += 1
                continue
            if rec.get("ok") is True or (rec.get("response") or {}).get("status_code") == 200:
                ok += 1
            else:
                failed += 1
    return ok, failed


@dataclass
class ClientRun:
    client: str
    measured: Measured | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    change_at: float | None = None
    error: str | None = None


def _run_client(name: str, sc: Scenario, wl: Workload, work: Path, env: dict[str, str],
                timeout: float, fake_overrides: dict[str, Any] | None = None,
                job_limits: dict[str, float | None] | None = None) -> ClientRun:
    run = ClientRun(name)
    out = work / f"{sc.name}-{name}.out.jsonl"
    out.unlink(missing_ok=True)
    opts = {**sc.fake, **(fake_overrides or {}), "seed": 7}
    with start_fake_process(ready_timeout=90, **opts) as fake:
        limits = job_limits if job_limits is not None else {
            "rpm": sc.fake.get("rpm"), "tpm": sc.fake.get("tpm")}
        job = Job(wl.path, out, fake.url, **limits)
        timer = None
        if sc.change:
            at, new = sc.change

            def lower() -> None:
                fake.set_limits(**new)
                run.change_at = float(fake.stats()["uptime"])

            timer = threading.Timer(at, lower)
            timer.start()
        try:
            run.measured = run_measured(CLIENTS[name].argv(job), env=env, timeout=timeout,
                                        log_dir=work / "logs")
        finally:
            if timer is not None:
                timer.cancel()
        run.stats = fake.stats()
    if run.measured.returncode != 0:
        lines = [ln for ln in run.measured.stderr_tail.strip().splitlines() if ln.strip()]
        run.error = (f"exit {run.measured.returncode}" + (" (timed out)" if run.measured.timed_out
                     else "") + (f": {lines[-1][:300]}" if lines else ""))
    return run


def summarize(run: ClientRun, sc: Scenario, wl: Workload) -> dict[str, Any]:
    m = run.measured
    assert m is not None
    totals = run.stats["totals"]
    ok, failed = _count_output(Path(m.argv[m.argv.index("--out") + 1]))
    sent = totals["requests"]
    limited = sum(totals["rate_limited"].values())
    row: dict[str, Any] = {
        "client": run.client, "label": CLIENTS[run.client].label,
        "requests": wl.count, "completed": ok, "lost": wl.count - ok,
        "server_requests": sent, "answered_429": totals["429"], "rate_limited_429": limited,
        "pct_429": round(100.0 * totals["429"] / max(sent, 1), 2),
        "wall_seconds": round(m.wall_seconds, 2), "cpu_seconds": round(m.cpu_seconds, 2),
        "cpu_ms_per_request": round(1000 * m.cpu_seconds / max(ok, 1), 3),
        "peak_rss_mb": round(m.peak_rss_mb, 1), "error": run.error,
        "faults_served": totals["faults"],
    }
    if sc.binding in ("rpm", "tpm"):
        steady = steady_rate(run.stats, sc, wl.mean_cost, run.change_at)
        row["steady"] = steady
        row["pct_of_limit"] = round(100 * steady["fraction"], 1)
        if sc.bars:
            row["bars"] = {
                "throughput_ge_95pct": steady["fraction"] >= 0.95 and bool(steady["window_full"]),
                "429_le_1pct": row["pct_429"] <= 1.0,
                "all_completed": ok == wl.count,
            }
    row["timeline"] = run.stats["timeline"]
    row["change_at"] = run.change_at
    return row


def run_scenario(sc: Scenario, wl_all: Workload, work: Path, clients: Sequence[str], *,
                 serial: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every client on the scenario; returns the result document (also saved)."""
    n = requests_for(sc, wl_all)
    wl = head(wl_all, n, work / f"{sc.name}.requests.jsonl")
    env = peer_env(work)
    timeout = sc.seconds * 3 + 120
    log(f"\n== {sc.name}: {sc.title} — {wl.count} requests, clients: {', '.join(clients)}")
    runs: dict[str, ClientRun] = {}

    def go(name: str) -> None:
        try:
            runs[name] = _run_client(name, sc, wl, work, env, timeout)
        except Exception as e:  # noqa: BLE001 -- one client's harness failure must not end the bench
            runs[name] = ClientRun(name, error=f"harness: {type(e).__name__}: {e}")

    if serial:
        for name in clients:
            go(name)
    else:
        threads = [threading.Thread(target=go, args=(name,)) for name in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = []
    for name in clients:
        run = runs[name]
        rows.append(summarize(run, sc, wl) if run.measured else
                    {"client": name, "label": CLIENTS[name].label, "error": run.error})
    doc = {"scenario": sc.name, "title": sc.title, "binding": sc.binding,
           "fake": sc.fake, "change": sc.change, "window": sc.window, "requests": wl.count,
           "mean_rate_limit_cost": round(wl.mean_cost, 1), "serial": serial,
           "clients": rows, **machine_info()}
    return doc


# ---- output ------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import os

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        dyn = version("dynogen")
    except Exception:  # noqa: BLE001 -- a version string is decoration
        dyn = "?"
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {
        "nproc": os.cpu_count(), "cpu": model or platform.processor(),
        "python": platform.python_version(), "dynogen": dyn, "peers": peer_versions()}}


def save_result(doc: dict[str, Any], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(doc: dict[str, Any], out: Callable[[str], None] = print) -> None:
    cols = [("client", "label"), ("% limit", "pct_of_limit"), ("429s", "answered_429"),
            ("429 %", "pct_429"), ("done", "completed"), ("lost", "lost"),
            ("wall s", "wall_seconds"), ("CPU s", "cpu_seconds"),
            ("CPU ms/req", "cpu_ms_per_request"), ("RSS MB", "peak_rss_mb"), ("bars", "bars")]
    rows = []
    for r in doc["clients"]:
        cells = []
        for _, key in cols:
            v = r.get(key)
            if key == "bars" and isinstance(v, dict):
                v = "PASS" if all(v.values()) else "miss: " + ",".join(k for k, ok in v.items()
                                                                       if not ok)
            cells.append(_fmt(v))
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(cols)]
    out(" | ".join(h.ljust(w) for (h, _), w in zip(cols, widths, strict=True)))
    out("-+-".join("-" * w for w in widths))
    for r in rows:
        out(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for r in doc["clients"]:
        if r.get("error"):
            out(f"  {r['client']}: {r['error']}")


def prepare(work: Path, corpus: Path, clients: Sequence[str],
            log: Callable[[str], None] = print) -> tuple[Workload, list[str], dict[str, str]]:
    """Build the workload and the peers' venv; returns the clients that can run and why not."""
    if not corpus.is_dir():
        sys.exit(f"corpus {corpus} not found: pass --corpus PATH (a folder of dataset folders)")
    t = time.perf_counter()
    wl = build_workload(corpus, work / "workload.jsonl")
    log(f"workload: {wl.count} requests from {corpus} in {time.perf_counter() - t:.1f}s "
        f"(mean rate-limit cost {wl.mean_cost:.0f} tokens)")
    skipped: dict[str, str] = {}
    if any(CLIENTS[c].is_peer for c in clients):
        err = ensure_peers_venv(log)
        if err:
            skipped = {c: err for c in clients if CLIENTS[c].is_peer}
    return wl, [c for c in clients if c not in skipped], skipped


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dynogen-bench-"))


# ---- raw engine ceiling ------------------------------------------------------------------------

CEILING = Scenario("ceiling", "raw engine ceiling: no server limits, zero latency", {},
                   "none", 0.0, bars=False)
# Told to every client: present (curator needs some), never binding.
HUGE = {"rpm": 1e6, "tpm": 1e10}


def _fake_cpu(fake: Any) -> float:
    import psutil

    try:
        t = psutil.Process(fake.pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _ceiling_row(name: str, label: str, m: Measured, stats: dict[str, Any], fake_cpu: float,
                 completed: int, expected: int, error: str | None) -> dict[str, Any]:
    totals = stats["totals"]
    sent = totals["requests"]
    done = stats["timeline"]["completions"]
    busy = [i for i, c in enumerate(done) if c]
    span = (busy[-1] - busy[0] + 1) if busy else 0
    peak5 = max((sum(done[i:i + 5]) / 5 for i in range(max(1, len(done) - 4))), default=0.0)
    return {"client": name, "label": label, "requests": expected, "completed": completed,
            "lost": expected - completed, "server_requests": sent,
            "answered_429": totals["429"], "wall_seconds": round(m.wall_seconds, 2),
            "requests_per_s_end_to_end": round(sent / m.wall_seconds, 1),
            "requests_per_s_busy": round(sent / span, 1) if span else 0.0,
            "requests_per_s_peak_5s": round(peak5, 1),
            "cpu_seconds": round(m.cpu_seconds, 2),
            "cpu_ms_per_request": round(1000 * m.cpu_seconds / max(sent, 1), 3),
            "server_cpu_ms_per_request": round(1000 * fake_cpu / max(sent, 1), 3),
            "peak_rss_mb": round(m.peak_rss_mb, 1), "error": error, "timeline": stats["timeline"]}


def run_ceiling(wl: Workload, corpus: Path, work: Path, clients: Sequence[str], *,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each client alone against an unlimited, zero-latency fake; then ``dynogen run``."""
    env = peer_env(work)
    log(f"\n== ceiling: {CEILING.title} — {wl.count} requests, clients: {', '.join(clients)}"
        " + dynogen run")
    rows = []
    for name in clients:
        out = work / f"ceiling-{name}.out.jsonl"
        out.unlink(missing_ok=True)
        with start_fake_process(seed=7, ready_timeout=90) as fake:
            job = Job(wl.path, out, fake.url, rpm=HUGE["rpm"], tpm=HUGE["tpm"])
            m = run_measured(CLIENTS[name].argv(job), env=env, timeout=420, log_dir=work / "logs")
            stats, cpu = fake.stats(), _fake_cpu(fake)
        ok, _ = _count_output(out)
        err = None if m.returncode == 0 else f"exit {m.returncode}" + (
            " (timed out after 420 s)" if m.timed_out else "") + ": " + (
            m.stderr_tail.strip().splitlines() or [""])[-1][:300]
        rows.append(_ceiling_row(name, CLIENTS[name].label, m, stats, cpu, ok, wl.count, err))
        log(f"  {name}: {rows[-1]['requests_per_s_end_to_end']} req/s, "
            f"{rows[-1]['cpu_ms_per_request']} CPU ms/req")
    run_dir = work / "ceiling-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    with start_fake_process(seed=7, ready_timeout=90) as fake:
        argv = [str(Path(sys.executable).with_name("dynogen")), "run", "--source", str(corpus),
                "--out", str(run_dir), "--base-url", fake.url, "--free", "--quiet",
                "--rpm", str(HUGE["rpm"]), "--tpm", str(HUGE["tpm"]),
                "--licenses", "any", "--languages", "any", "--splits", "all"]
        m = run_measured(argv, env=env, timeout=420, log_dir=work / "logs")
        stats, cpu = fake.stats(), _fake_cpu(fake)
    report = _read_json(run_dir / "report.json")
    err = None if m.returncode == 0 else f"exit {m.returncode}: " + (
        m.stderr_tail.strip().splitlines() or [""])[-1][:300]
    row = _ceiling_row("dynogen-run", "dynogen run (full pipeline)", m, stats, cpu,
                       stats["totals"]["2xx"], stats["totals"]["requests"], err)
    row["report"] = {k: report.get(k) for k in ("units", "requests", "tasks", "wall_seconds")
                     if k in report}
    rows.append(row)
    log(f"  dynogen run: {row['requests_per_s_end_to_end']} req/s, "
        f"{row['cpu_ms_per_request']} CPU ms/req")
    by = {r["client"]: r for r in rows}
    bars: dict[str, Any] = {"run_ge_1000_rps_end_to_end":
                            by["dynogen-run"]["requests_per_s_end_to_end"] >= 1000}
    if "openai-sdk" in by and not by["openai-sdk"]["error"]:
        sdk = by["openai-sdk"]["cpu_ms_per_request"]
        for k in ("dynogen", "dynogen-run"):
            if k in by:
                ratio = sdk / max(by[k]["cpu_ms_per_request"], 1e-9)
                by[k]["cpu_advantage_vs_sdk"] = round(ratio, 2)
                bars[f"{k}_cpu_5x_lower_than_sdk"] = ratio >= 5
    return {"scenario": "ceiling", "title": CEILING.title, "binding": "none", "fake": {},
            "change": None, "requests": wl.count, "clients": rows, "bars": bars,
            **machine_info()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def print_ceiling(doc: dict[str, Any], out: Callable[[str], None] = print) -> None:
    cols = [("client", "label"), ("req/s e2e", "requests_per_s_end_to_end"),
            ("req/s busy", "requests_per_s_busy"), ("done", "completed"), ("lost", "lost"),
            ("wall s", "wall_seconds"), ("CPU s", "cpu_seconds"),
            ("CPU ms/req", "cpu_ms_per_request"),
            ("server CPU ms/req", "server_cpu_ms_per_request"),
            ("x SDK CPU", "cpu_advantage_vs_sdk"), ("RSS MB", "peak_rss_mb")]
    _table(doc["clients"], cols, out)
    out("  bars: " + ", ".join(f"{k}={'PASS' if v else 'MISS'}" for k, v in doc["bars"].items()))
    for r in doc["clients"]:
        if r.get("error"):
            out(f"  {r['client']}: {r['error']}")


def _table(rows_in: list[dict[str, Any]], cols: list[tuple[str, str]],
           out: Callable[[str], None]) -> None:
    rows = [[_fmt(r.get(key)) for _, key in cols] for r in rows_in]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(cols)]
    out(" | ".join(h.ljust(w) for (h, _), w in zip(cols, widths, strict=True)))
    out("-+-".join("-" * w for w in widths))
    for r in rows:
        out(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
