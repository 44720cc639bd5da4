"""Issue #4 at scale: ``kill -9`` a long ``dynogen run`` again and again; nothing is lost.

``python -m bench.kill [--corpus PATH] [--units 600] [--kills 25]`` builds a
source of real dataset cards copied from the reference corpus plus small
synthetic datasets with rows (so instance building is killed too), then:

1. runs ``python -m dynogen run`` once, uninterrupted, against a fake server
   in its own process (with latency, so kills land while requests are in
   flight) — the reference, and the number of distinct requests a run needs;
2. runs it again into a new directory, SIGKILLing it ``--kills`` times at
   random points spread over the whole run (a point is "N units committed or
   built", plus a random instant up to ``--jitter`` s), restarting each time,
   until it exits 0;
3. compares: tasks.jsonl and instances.jsonl as sets and as sequences,
   duplicated lines, lost lines, journal keys, report totals, and requests
   re-sent against the allowance (``max_in_flight`` per kill).

Torn-file rounds (issue #12, ``--torn N``): after N of the kills, chosen at
random, the run's files are also torn as a power loss tears them — each of
units, tasks, builds, instances and spend independently loses a random tail
of up to ``--torn-bytes`` (sometimes replaced by zeros, as when a file's new
size reached the disk and its data did not) — before the next life starts.
The resume must still equal the reference, with every redo served from the
request cache (which a real power loss may also set back; the bench keeps it,
so re-sent requests stay within the same allowance).

Prints one JSON summary and saves ``bench/results/kill.json``; exits 1 if any
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dynogen.io.folder import FolderSource
from dynogen.testing.fake_openai import FakeProcess, start_fake_process

__all__ = ["build_source", "compare_runs", "kill_run", "main", "progress", "tear",
           "write_row_datasets"]

TORN_FILES = ("units.jsonl", "tasks.jsonl", "builds.jsonl", "instances.jsonl", "spend.jsonl")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "hf-metadata-2022" / "datasets"
RESULTS = REPO / "bench" / "results"


# ----------------------------------------------------------------------------- the source


def write_row_datasets(root: Path, n: int, seed: int = 0) -> None:
    """``n`` small dataset folders with a card and ``data/train.jsonl`` rows."""
    rng = random.Random(seed)
    topics = ["weather", "sports", "markets", "science", "music", "travel"]
    for i in range(n):
        d = root / f"rows_{i:04d}"
        (d / "data").mkdir(parents=True, exist_ok=True)
        text = f"sentence_{i}"
        (d / "README.md").write_text(
            "---\nlicense: cc-by-4.0\ndataset_info:\n  features:\n"
            f"  - name: {text}\n    dtype: string\n  - name: topic\n    dtype: string\n"
            "  - name: label\n    dtype:\n      class_label:\n        names:\n"
            "          '0': negative\n          '1': positive\n"
            "configs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: data/train.jsonl\n---\n\n"
            f"# Synthetic set {i}\n\nShort news sentences about {topics[i % 6]}, each with a "
            "topic and a sentiment label.\n", encoding="utf-8")
        rows = [{text: f"{rng.choice(topics)} item {j} of set {i}: {rng.random():.4f}",
                 "topic": rng.choice(topics), "label": rng.randrange(2)} for j in range(8)]
        (d / "data" / "train.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build_source(corpus: Path, dest: Path, units: int, with_rows: int) -> dict[str, int]:
    """Copy corpus dataset folders (sorted) under ``dest/corpus`` until about ``units``
    units, and write ``with_rows`` row-bearing datasets under ``dest/rows``."""
    shutil.rmtree(dest, ignore_errors=True)
    got = 0
    copied = 0
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir()):
        if got >= units - with_rows:
            break
        n = sum(1 for _ in FolderSource(folder))
        if n > 60:  # one giant multi-config card would make kill points lumpy
            continue
        shutil.copytree(folder, dest / "corpus" / folder.name)
        got += n
        copied += 1
    write_row_datasets(dest / "rows", with_rows)
    items = sum(1 for _ in FolderSource(dest))
    return {"corpus_datasets": copied, "row_datasets": with_rows, "source_items": items}


# ----------------------------------------------------------------------------- running


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def progress(out: Path) -> int:
    """Units committed plus units built."""
    return len(lines(out / "units.jsonl")) + len(lines(out / "builds.jsonl"))


def run_argv(source: Path, out: Path, url: str, max_in_flight: int) -> list[str]:
    return [sys.executable, "-m", "dynogen", "run", "--source", str(source), "--out", str(out),
            "--base-url", url, "--free", "--quiet", "--max-in-flight", str(max_in_flight),
            "--licenses", "any", "--languages", "any", "--splits", "all"]  # engine, not policies


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("OPENAI_API_KEY", None)
    return env


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_env())


def requests_seen(fake: FakeProcess) -> int:
    return int(fake.stats()["totals"]["requests"])


def tear(out: Path, rng: random.Random, max_bytes: int) -> dict[str, int]:
    """Cut a random tail (up to ``max_bytes``) off each run file, independently, as a power
    loss does; a third of the cuts leave zeros where the data was. Returns bytes cut."""
    cut = {}
    for name in TORN_FILES:
        p = out / name
        if not p.exists() or rng.random() < 0.3:
            continue
        size = p.stat().st_size
        n = min(size, rng.randrange(1, max_bytes + 1))
        if n == 0:
            continue
        with p.open("rb+") as f:
            f.truncate(size - n)
            if rng.random() < 0.33:
                f.seek(size - n)
                f.write(b"\0" * rng.randrange(1, n + 1))
        cut[name] = n
    return cut


def kill_run(argv: list[str], out: Path, fake: FakeProcess, targets: list[int],
             rng: random.Random, jitter: float, log: Path, torn: set[int] | None = None,
             torn_bytes: int = 65536) -> dict[str, Any]:
    """One life per target, SIGKILLed once ``progress(out)`` reaches it (plus jitter);
    then a last life runs to the end. After the kills numbered in ``torn`` the files are
    torn too (``tear``). Returns what happened at each kill."""
    kills = []
    for i, target in enumerate(targets):
        p = _start(argv, log)
        t0 = time.monotonic()
        while progress(out) < target:
            if p.poll() is not None:
                raise RuntimeError(f"a life ended (exit {p.returncode}) before progress "
                                   f"{target}; see {log}")
            time.sleep(0.005)
        time.sleep(rng.uniform(0, jitter))
        before = fake.stats()["totals"]
        at = progress(out)
        p.send_signal(signal.SIGKILL)
        p.wait()
        after = fake.stats()["totals"]
        kills.append({"target": target, "progress": at, "life_seconds": round(
            time.monotonic() - t0, 3), "in_flight": after["requests"] - sum(
            before["by_status"].values())})
        if torn and i in torn:
            kills[-1]["torn"] = tear(out, rng, torn_bytes)
    p = _start(argv, log)
    code = p.wait()
    if code != 0:
        raise RuntimeError(f"the last life exited {code}; see {log}")
    return {"kills": kills}


# ----------------------------------------------------------------------------- comparing


def _report_totals(out: Path) -> dict[str, Any]:
    r = json.loads((out / "report.json").read_text())
    return {"units": r["units"], "tasks": r["tasks"],
            "instances": {k: r["instances"][k] for k in ("written", "duplicates",
                                                          "units_by_status")}}


def compare_runs(got: Path, want: Path) -> dict[str, Any]:
    """Duplicates, losses and extras of ``got`` against the reference ``want``."""
    res: dict[str, Any] = {}
    for name in ("tasks.jsonl", "instances.jsonl"):
        g, w = lines(got / name), lines(want / name)
        res[name] = {
            "reference_lines": len(w),
            "lines": len(g),
            "duplicates": sum(c - 1 for c in Counter(g).values() if c > 1),
            "losses": len(set(w) - set(g)),
            "extras": len(set(g) - set(w)),
            "same_order": g == w,
        }
    gk = [json.loads(x)["key"] for x in lines(got / "units.jsonl")]
    wk = [json.loads(x)["key"] for x in lines(want / "units.jsonl")]
    res["units.jsonl"] = {"reference_lines": len(wk), "lines": len(gk),
                          "duplicates": len(gk) - len(set(gk)),
                          "losses": len(set(wk) - set(gk)), "extras": len(set(gk) - set(wk))}
    res["report_totals_equal"] = _report_totals(got) == _report_totals(want)
    if not res["report_totals_equal"]:
        res["report_totals"] = {"killed": _report_totals(got), "reference": _report_totals(want)}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kill", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--units", type=int, default=600, help="about this many units in the source")
    ap.add_argument("--with-rows", type=int, default=80, help="of which datasets with rows")
    ap.add_argument("--kills", type=int, default=25)
    ap.add_argument("--max-in-flight", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05, help="fake server median latency (s)")
    ap.add_argument("--jitter", type=float, default=0.3, help="max seconds after a kill point")
    ap.add_argument("--torn", type=int, default=10,
                    help="of the kills, how many also tear the run's files (power loss)")
    ap.add_argument("--torn-bytes", type=int, default=65536,
                    help="most bytes a torn file loses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp one)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="dynogen-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    src, ref, out, log = work / "src", work / "ref", work / "killed", work / "runs.log"
    for d in (ref, out):
        shutil.rmtree(d, ignore_errors=True)
    summary: dict[str, Any] = {"source": build_source(args.corpus, src, args.units,
                                                      args.with_rows)}
    rng = random.Random(args.seed)
    with start_fake_process(latency_median=args.latency, latency_sigma=0.5,
                            seed=args.seed) as fake:
        n0 = requests_seen(fake)
        t0 = time.perf_counter()
        code = _start(run_argv(src, ref, fake.url, args.max_in_flight), log).wait()
        if code != 0:
            raise SystemExit(f"the reference run exited {code}; see {log}")
        summary["reference_seconds"] = round(time.perf_counter() - t0, 2)
        needed = requests_seen(fake) - n0
        total = progress(ref)
        targets = sorted(rng.randrange(1, total) for _ in range(args.kills))
        n1 = requests_seen(fake)
        t1 = time.perf_counter()
        torn = set(rng.sample(range(len(targets)), min(args.torn, len(targets))))
        killed = kill_run(run_argv(src, out, fake.url, args.max_in_flight), out, fake, targets,
                          rng, args.jitter, log, torn, args.torn_bytes)
        summary["killed_run_seconds"] = round(time.perf_counter() - t1, 2)
        sent = requests_seen(fake) - n1
    ref_units = len(lines(ref / "units.jsonl"))
    kills = killed["kills"]
    summary.update({
        "units_seen": json.loads((ref / "report.json").read_text())["units"]["seen"],
        "kills": len(kills),
        "kills_in_task_stage": sum(k["progress"] < ref_units for k in kills),
        "kills_in_build_stage": sum(k["progress"] >= ref_units for k in kills),
        "torn_rounds": sum("torn" in k for k in kills),
        "torn_bytes_cut": sum(sum(k.get("torn", {}).values()) for k in kills),
        "requests_needed": needed,
        "requests_sent": sent,
        "requests_repaid": sent - needed,
        "requests_repaid_allowed": len(kills) * args.max_in_flight,
        "in_flight_at_kills_seen_by_server": sum(k["in_flight"] for k in kills),
        "compare": compare_runs(out, ref),
        "kill_points": kills,
        "work": str(work),
    })
    c = summary["compare"]
    ok = (len(kills) >= args.kills
          and 0 <= summary["requests_repaid"] <= summary["requests_repaid_allowed"]
          and c["report_totals_equal"]
          and all(c[n]["duplicates"] == c[n]["losses"] == c[n]["extras"] == 0
                  for n in ("tasks.jsonl", "instances.jsonl", "units.jsonl"))
          and c["tasks.jsonl"]["reference_lines"] > 0
          and c["instances.jsonl"]["reference_lines"] > 0)
    summary["ok"] = ok
    print(json.dumps({k: v for k, v in summary.items() if k != "kill_points"}, indent=1))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "kill.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.work is None and ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
