"""A grow step killed with SIGKILL mid-flight is resumed, not duplicated (issue #9)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from dynogen.api import agrow
from dynogen.config import Config
from dynogen.store.collection import Collection
from dynogen.testing import start_fake_process
from tests.helpers import REPO, wait_until


def write_shard(path: Path, n: int) -> None:
    fields = [{"name": "premise", "type": "string"}, {"name": "hypothesis", "type": "string"},
              {"name": "label", "type": "class_label", "labels": ["yes", "no"]}]
    with path.open("wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"dataset": f"ds{i:03d}", "config": "default",
                                   "description": f"Pairs of sentences number {i}.",
                                   "fields": fields}) + b"\n")


def grow_cmd(coll: Path, shard: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "dynogen", "grow", str(coll), "--source", str(shard),
            "--base-url", url, "--free", "--quiet", "--max-in-flight", "4", "--licenses", "any",
            "--languages", "any"]


def committed(coll: Path) -> int:
    units = coll / "versions" / "0001" / "units.jsonl"
    return units.read_bytes().count(b"\n") if units.exists() else 0


def test_sigkill_mid_grow_then_grow_again_finishes_the_same_version(tmp_path: Path) -> None:
    shard = tmp_path / "units.jsonl"
    write_shard(shard, 40)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with start_fake_process(latency_median=0.1, ready_timeout=120) as fake:
        clean = tmp_path / "clean"
        cfg = Config(source=str(shard), base_url=fake.url, free=True, quiet=True,
                     max_in_flight=8, licenses="any", languages="any")
        assert asyncio.run(agrow(clean, cfg)).exit_code == 0
        coll = tmp_path / "coll"
        proc = subprocess.Popen(grow_cmd(coll, shard, fake.url), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ten_committed() -> bool:
            assert proc.poll() is None, "the grow finished before it could be killed"
            return committed(coll) >= 10

        wait_until(ten_committed, "the grow to commit ten units", timeout=120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = committed(coll)
        assert 10 <= killed_at < 40
        assert Collection(coll).load().running_version() is not None
        again = subprocess.run(grow_cmd(coll, shard, fake.url), env=env, capture_output=True,
                               text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("version 1 (resumed):")
    c = Collection(coll).load()
    assert [v["status"] for v in c.versions] == ["complete"]
    assert sorted(p.name for p in (coll / "versions").iterdir()) == ["0001"]
    tasks = [t["id"] for t in c.iter_tasks()]
    assert len(tasks) == len(set(tasks))
    assert tasks == [t["id"] for t in Collection(clean).load().iter_tasks()]
