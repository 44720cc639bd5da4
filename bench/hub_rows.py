"""Rows of Hub units: the instance stage concurrent and limited, and beside the task stage.

``python -m bench.hub_rows [--units 1000] [--latency 0.3] [--faults 0.05] [--rpm 1200]``

A fake Hub (``dynogen.testing.fake_hub``, in this process's background thread)
holds ``--units`` datasets with rows (a train split of 300 rows; one in ten is
large enough that its first row groups are a second ranged call). Every call
takes ``--latency`` seconds, ``--faults`` of them are answered 429 or 503 with
``Retry-After: 1``, and each bucket has the free-user quota of the real Hub
(per 5 minutes: API 1,000, resolvers 5,000; the viewer 1,000), announced in
``RateLimit``/``RateLimit-Policy`` headers and enforced. A fake LLM
(``fake_openai`` in its own process, at ``--rpm`` requests a minute) answers.
Units come from a snapshot shard (Hub units with sample rows, as ``collect``
writes them), so the data policies read no rows and what is measured is the
instance stage. ``dynogen`` runs as the CLI, in its own process:

1. ``run`` (the build beside the task stage): the whole run's wall time, the
   units left ``retryable`` by transient errors, then a resume if any are;
2. ``run --no-build``: the task stage alone;
3. ``build`` of (2): the instance stage alone, concurrent (``--hub-concurrency 8``);
4. the same build one unit and one call at a time (``window=1``, concurrency 1):
   what reading rows one dataset after another costs with the same reader.

For each, the Hub calls per bucket against the quota: the most calls in any
5-minute span and in any minute, and the 429s the quota itself caused.
Prints a JSON summary and saves ``bench/results/hub_rows.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from huggingface_hub import constants

from dynogen.testing import start_fake_process
from dynogen.testing.fake_hub import FakeHub, HubServer
from dynogen.units import Field, Unit

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
FEATURES = {"text": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["negative", "positive"], "_type": "ClassLabel"}}
QUOTAS = {"api": (1000, 300.0), "resolvers": (5000, 300.0), "viewer": (1000, 300.0)}
WORDS = ("good", "bad", "fine", "slow", "quick", "cheap", "kind", "loud", "calm", "warm", "cold",
         "fresh", "stale", "clean", "dusty", "bright", "dull", "sweet", "sour", "plain", "odd",
         "neat", "rough", "soft")


def _review(rng: random.Random, shop: int, j: int, sentences: int) -> str:
    said = [f"The {rng.choice(('staff', 'food', 'room', 'coffee', 'music'))} was "
            f"{rng.choice(WORDS)} and the {rng.choice(('price', 'service', 'table', 'menu'))} "
            f"was {rng.choice(WORDS)}, so we would {rng.choice(('', 'not '))}go there again."
            for _ in range(sentences)]
    return f"Review {j} of shop {shop}: " + " ".join(said)


def make_hub(n: int, seed: int = 7) -> tuple[FakeHub, list[Unit]]:
    rng = random.Random(seed)
    fake = FakeHub()
    units = []
    for i in range(n):
        repo = f"org{i % 37}/reviews-{i:05d}"
        large = i % 10 == 0
        rows = [{"text": _review(rng, i, j, 6 if large else 1), "label": j % 2}
                for j in range(3000 if large else 300)]
        fake.add_rows(repo, "default", "train", rows, FEATURES, row_group_size=100)
        fake.add_rows(repo, "default", "test", rows[:30], FEATURES)
        units.append(Unit(repo, "default", f"Customer reviews of shop {i}, each labelled by "
                          "sentiment.", (Field("text", "string"),
                                         Field("label", "class_label",
                                               ("negative", "positive"))),
                          license="cc-by-4.0", tags=("language:en",), splits=("train", "test"),
                          samples=tuple(rows[:5]), data_ref=repo, origin="hub"))
    for (repo, config), cfg in fake.data.configs.items():  # made before the clock starts
        for split in cfg.splits:
            for path in fake.data.file_names(repo, config, split):
                fake.data.parquet(repo, path)
    return fake, units


def _calls(fake: FakeHub) -> dict[str, Any]:
    out = {}
    for bucket, (quota, window) in QUOTAS.items():
        out[bucket] = {"calls": sum(1 for _, b in fake.limits.log if b == bucket),
                       "quota_per_5_min": quota,
                       "most_in_any_5_min": fake.limits.busiest(bucket, window),
                       "most_in_any_minute": fake.limits.busiest(bucket, 60.0),
                       "refused_by_quota": fake.limits.refused.get(bucket, 0)}
    return out


def _dynogen(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dynogen", *args], env=env, capture_output=True,
                       text=True)
    return time.perf_counter() - t0, r.returncode, r.stderr.strip().splitlines()[-1:][0] \
        if r.stderr.strip() else ""


def _report(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((out / "report.json").read_bytes())
    return data


def _build_one_at_a_time(out: str) -> None:
    """(Child process) ``out``'s instance stage reading one unit, one call, at a time."""
    import asyncio

    from dynogen.compose import run_identity
    from dynogen.config import Config
    from dynogen.instances.build import abuild_instances
    from dynogen.io.hub_rows import HubRowReader
    from dynogen.io.row_reader import RowReader
    from dynogen.store.rundir import RunDir

    saved = orjson.loads((Path(out) / "manifest.json").read_bytes())["config"]
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    rundir = RunDir(out).open(cfg, identity=run_identity(cfg), stage="build")

    async def main() -> None:
        hub = HubRowReader.open(rpm=None, concurrency=1, viewer_url=cfg.hub_viewer_url)
        async with RowReader(hub) as reader:
            await abuild_instances(cfg, rundir, reader=reader, window=1)

    try:
        asyncio.run(main())
    finally:
        rundir.close()


def measure(units: int, latency: float, faults: float, rpm: float, work: Path) -> dict[str, Any]:
    fake, listed = make_hub(units)
    shard = work / "units.jsonl"
    shard.write_bytes(b"".join(orjson.dumps(u.to_dict()) + b"\n" for u in listed))
    fake.latency = latency
    fake.fault_rate = faults
    fake.fault_retry_after = 1.0
    fake.limits.quotas = dict(QUOTAS)
    results: dict[str, Any] = {"units": units, "latency_s": latency, "fault_rate": faults,
                               "llm_rpm": rpm, "quotas": {k: {"calls": q, "seconds": w}
                                                          for k, (q, w) in QUOTAS.items()}}
    with fake.running() as hub, start_fake_process(rpm=rpm, seed=1) as llm:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI_"))}
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url, HF_HOME=str(work / "hf-home"))
        common = ["--source", str(shard), "--base-url", llm.url, "--free", "--quiet",
                  "--rpm", str(rpm), "--hub-viewer-url", hub.viewer_url,
                  "--hub-rpm", "100000", "--hub-concurrency", "8"]
        results["run_beside"] = _phase_run(fake, hub, env, common, work / "beside")
        fake.limits.reset()
        wall, code, last = _dynogen(["run", "--out", str(work / "tasks"), "--no-build", *common],
                                    env)
        results["task_stage_alone"] = {"wall_s": round(wall, 1), "exit": code}
        shutil.copytree(work / "tasks", work / "serial")
        fake.limits.reset()
        wall, code, last = _dynogen(["build", str(work / "tasks")], env)
        rep = _report(work / "tasks")
        results["build_concurrent"] = {"wall_s": round(wall, 1), "exit": code,
                                       "instances": rep["instances"]["written"],
                                       "retryable": rep["instances"]["retryable_by_reason"],
                                       "hub_calls": _calls(fake)}
        fake.limits.reset()
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "bench.hub_rows", "--one-at-a-time",
                            str(work / "serial")], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        results["build_one_at_a_time"] = {
            "wall_s": round(wall, 1), "exit": r.returncode,
            "instances": sum(1 for _ in (work / "serial" / "instances.jsonl").open("rb")),
            "hub_calls": _calls(fake)}
    beside, alone = results["run_beside"], results["task_stage_alone"]
    beside["same_lines_as_build_after"] = sorted(
        (work / "beside" / "instances.jsonl").read_bytes().splitlines()) == sorted(
        (work / "tasks" / "instances.jsonl").read_bytes().splitlines())
    results["summary"] = {
        "instance_stage_concurrent_s": results["build_concurrent"]["wall_s"],
        "instance_stage_one_at_a_time_s": results["build_one_at_a_time"]["wall_s"],
        "speedup": round(results["build_one_at_a_time"]["wall_s"]
                         / max(results["build_concurrent"]["wall_s"], 1e-9), 1),
        "run_with_build_beside_s": beside["wall_s"],
        "task_stage_alone_s": alone["wall_s"],
        "run_then_build_after_s": round(alone["wall_s"]
                                        + results["build_concurrent"]["wall_s"], 1),
        "units_lost_after_one_run": beside["retryable_after_run"],
        "units_lost_after_one_resume": beside["retryable_after_resume"],
        "same_instances_as_build_after": beside["same_lines_as_build_after"],
    }
    return results


def _phase_run(fake: FakeHub, hub: HubServer, env: dict[str, str], common: list[str],
               out: Path) -> dict[str, Any]:
    fake.limits.reset()
    wall, code, last = _dynogen(["run", "--out", str(out), *common], env)
    rep = _report(out)
    stage = rep["session"].get("instance_stage", {})
    phase: dict[str, Any] = {
        "wall_s": round(wall, 1), "exit": code, "message": last,
        "task_stage_s": rep["session"]["task_stage_seconds"],
        "instance_stage_s": stage.get("seconds"), "instances": rep["instances"]["written"],
        "hub_retries": stage.get("hub", {}).get("retries"),
        "faults_injected": dict(fake.faults),
        "retryable_after_run": rep["units"]["retryable"] + sum(
            rep["instances"]["retryable_by_reason"].values()),
        "hub_calls": _calls(fake)}
    phase["retryable_after_resume"] = phase["retryable_after_run"]
    if phase["retryable_after_run"]:
        _dynogen(["run", "--out", str(out), *common], env)
        rep = _report(out)
        phase["retryable_after_resume"] = rep["units"]["retryable"] + sum(
            rep["instances"]["retryable_by_reason"].values())
    return phase


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--faults", type=float, default=0.05)
    p.add_argument("--rpm", type=float, default=1200.0, help="the fake LLM's requests a minute")
    p.add_argument("--one-at-a-time", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_at_a_time:
        _build_one_at_a_time(args.one_at_a_time)
        return 0
    constants.HF_HUB_OFFLINE = False  # the fake is in this process
    with tempfile.TemporaryDirectory(prefix="dynogen-hub-rows-") as tmp:
        results = measure(args.units, args.latency, args.faults, args.rpm, Path(tmp))
    s = results["summary"]
    checks = {
        "no_unit_lost_after_one_resume": s["units_lost_after_one_resume"] == 0,
        "within_every_quota": all(
            c["most_in_any_5_min"] <= c["quota_per_5_min"] and c["refused_by_quota"] == 0
            for phase in ("run_beside", "build_concurrent", "build_one_at_a_time")
            for c in results[phase]["hub_calls"].values()),
        "same_instances": bool(s["same_instances_as_build_after"]),
    }
    results["checks"] = checks
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hub_rows.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
