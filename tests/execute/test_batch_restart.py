"""Batch mode across kills, lost journal lines, a user's cancel, and `call --mode batch`.

The server-side record of the fake (files and batches created, lines processed
per custom_id) is what shows that nothing was submitted or paid twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, arun
from dynogen.config import Config
from dynogen.execute.batch_admin import acancel, astatus, format_status
from dynogen.execute.batch_state import BatchJournal
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, serve, start_fake_process
from dynogen.testing.fake_batches import FakeBatches
from dynogen.units import Field, Unit
from tests.helpers import wait_until, wait_until_async

FIELDS = (Field("sentence", "string"), Field("label", "class_label", ("no", "yes")))


def write_shard(path: Path, n: int) -> list[Unit]:
    units = [Unit(f"set{i:03d}", "default", f"Sentences about subject {i}.", FIELDS,
                  license="mit") for i in range(n)]
    path.write_bytes(b"".join(orjson.dumps(u.to_dict()) + b"\n" for u in units))
    return units


def cfg(out: Path, url: str, source: Path, **kw: Any) -> Config:
    base = dict(out=str(out), base_url=url, source=str(source), model="gpt-4o-mini",
                quiet=True, free=True, poll_seconds=0.05, batch_max_requests=10, mode="batch")
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


class ServerClock:
    """The fake Batch API's clock, in Unix seconds: it moves only when the test moves it."""

    def __init__(self) -> None:
        self.t = 1_767_225_600.0

    def __call__(self) -> float:
        return self.t


def events(out: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(out / "batches.jsonl"))


def cli(source: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dynogen", "run", "--source", str(source), "--out", str(out),
            "--base-url", url, "--free", "--quiet", "--mode", "batch", "--no-build",
            "--poll-seconds", "0.05", "--batch-max-requests", "10", *extra]


def test_kill_9_while_batches_run_then_restart_submits_nothing_twice(tmp_path: Path) -> None:
    shard = tmp_path / "units.jsonl"
    write_shard(shard, 30)  # 60 requests: 6 files
    env = {**os.environ, "OPENAI_API_KEY": "test", "HF_HUB_OFFLINE": "1"}
    with start_fake_process(ready_timeout=90) as fake:  # a loaded machine starts it slowly
        ref = tmp_path / "online"
        done = subprocess.run(cli(shard, ref, fake.url)[:-7] + ["--mode", "online", "--no-build"],
                              env=env,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-500:]
        # A batch answers a line every 0.6 s and finishes after 6 s: the kill lands after
        # its first line, long before its last.
        fake._call("/admin/batches", {"validating": 0.05, "in_progress": 6.0,
                                      "finalizing": 0.05})
        out = tmp_path / "batch"
        life = subprocess.Popen(cli(shard, out, fake.url), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

        def submitted(n: int) -> bool:
            assert life.poll() is None, "life 1 ended early"
            return sum(e["ev"] == "batch" for e in events(out)) >= n

        wait_until(lambda: submitted(6), "life 1 to submit six batches")
        wait_until(lambda: submitted(6) and fake._call("/admin/batches")["lines_processed"] > 0,
                   "the server to answer a first batch line")
        life.send_signal(signal.SIGKILL)  # batches in flight, partly answered, none finished
        life.wait()
        evs = events(out)
        assert not any(e["ev"] == "done" for e in evs)
        # What a kill between create (or upload) and its journal line leaves: the last
        # file's upload and batch were made at the server but never written down.
        assert [e["ev"] for e in evs[-2:]] == ["upload", "batch"]
        journal = out / "batches.jsonl"
        kept = journal.read_bytes().splitlines(keepends=True)[:-2]
        journal.write_bytes(b"".join(kept))
        before = fake._call("/admin/batches")
        assert before["batches_created"] == 6 and 0 < before["lines_processed"] < 60
        # The batches left running finish at the restart's first look.
        fake._call("/admin/batches", {"in_progress": 0.05})
        again = subprocess.run(cli(shard, out, fake.url), env=env, capture_output=True,
                               timeout=120)
        assert again.returncode == 0, again.stderr.decode()[-800:]
        after = fake._call("/admin/batches")
    assert after["files_created"] == after["batches_created"] == 6
    assert after["duplicate_uploads"] == 0 and after["lines_submitted"] == 60
    assert after["lines_processed"] == 60 and after["max_processed_per_custom_id"] == 1
    assert (out / "tasks.jsonl").read_bytes() == (ref / "tasks.jsonl").read_bytes() != b""
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["requests_paid"] == 60 and report["units"]["processed"] == 30
    assert report["session"]["batch_lost_uploads_found"] == 1
    assert report["session"]["batch_lost_batches_found"] == 1


async def test_cancel_from_outside_is_noticed_and_a_resume_finishes(tmp_path: Path) -> None:
    shard = tmp_path / "units.jsonl"
    write_shard(shard, 20)
    fake = FakeOpenAI()
    clock = ServerClock()
    batches = FakeBatches(fake, clock=clock, validating=1.0, in_progress=8.0, finalizing=1.0)
    out = tmp_path / "run"
    async with serve(fake) as server:
        c = cfg(out, server.url, shard)
        run = asyncio.create_task(arun(c, build=False))

        def submitted() -> bool:
            assert not run.done(), run.result().message if run.done() else ""
            return sum(e["ev"] == "batch" for e in events(out)) >= 4

        await wait_until_async(submitted, "the run to submit four batches")
        clock.t += 1.0 + 8.0 / 2  # validated, and half of each batch's lines answered
        rows = await astatus(out, server.url, None)
        assert {r["status"] for r in rows} <= {"validating", "in_progress"} and len(rows) == 4
        assert "4 batches, 4 running" in format_status(rows)
        cancelled = await acancel(out, server.url, None)
        assert [r["status"] for r in cancelled] == ["cancelled"] * 4
        first = await asyncio.wait_for(run, 30)
        assert first.report["session"]["batch_cancelled_by_user"] >= 1
        assert first.report["units"]["failed_by_reason"].get("batch_cancelled", 0) >= 1
        kept = batches.counts()["lines_processed"]
        assert 0 < kept < 40
        # The server's clock stands still: the resumed run's batches finish at once.
        batches.configure(validating=0, in_progress=0, finalizing=0)
        second = await arun(c, build=False)
    assert second.exit_code == EXIT["ok"], second.message
    assert second.report["units"]["failed"] == 0
    c2 = batches.counts()
    # Nothing answered before the cancel was sent again.
    assert c2["max_processed_per_custom_id"] == 1


async def test_call_mode_batch_writes_one_answer_per_custom_id(tmp_path: Path) -> None:
    from dynogen.commands.call import acall

    lines = []
    for i in range(25):
        body = {"model": "gpt-4o-mini", "max_tokens": 400,
                "messages": [{"role": "user", "content": f"Fields: a, b. Question {i % 20}"}]}
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": body})
    src = tmp_path / "requests.jsonl"
    src.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    fake = FakeOpenAI()
    batches = FakeBatches(fake, validating=0.01, in_progress=0.05, finalizing=0.01,
                          line_fail_rate=0.1, seed=2)
    out = tmp_path / "answers.jsonl"
    async with serve(fake) as server:
        c = Config(base_url=server.url, model="gpt-4o-mini", quiet=True, free=True, mode="batch",
                   poll_seconds=0.05, batch_max_requests=8)
        res = await acall(c, src, out)
        again = await acall(c, src, out)
    got = {r["custom_id"]: r for r in iter_jsonl(out)}
    assert sorted(got) == sorted(x["custom_id"] for x in lines)
    assert all(r["response"]["status_code"] == 200 for r in got.values())
    # Lines 20..24 repeat bodies 0..4: one request each, answered once, written twice.
    assert got["req-21"]["response"]["body"] == got["req-1"]["response"]["body"]
    c2 = batches.counts()
    assert c2["custom_ids_processed"] == 20 and c2["billed"]["lines"] == 20
    assert res.written == 25 and again.already_done == 25
    assert BatchJournal(tmp_path / "answers.jsonl.batches").exists()


async def test_malformed_and_unknown_output_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    shard = tmp_path / "units.jsonl"
    write_shard(shard, 4)
    fake = FakeOpenAI()
    FakeBatches(fake, validating=0.01, in_progress=0.05, finalizing=0.01, junk_lines=True)
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "r", server.url, shard), build=False)
    assert out.exit_code == EXIT["ok"], out.message
    s = out.report["session"]
    assert s["batch_malformed_line"] == 1 and s["batch_unknown_custom_id"] == 1
    assert out.report["units"]["processed"] == 4 and out.report["units"]["failed"] == 0


@pytest.mark.parametrize("status", [401, 429])
async def test_a_refused_create_names_what_to_do(tmp_path: Path, status: int) -> None:
    shard = tmp_path / "units.jsonl"
    write_shard(shard, 2)
    fake = FakeOpenAI()
    batches = FakeBatches(fake, create_error=status)
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "r", server.url, shard, max_retries=0), build=False)
    assert out.exit_code == EXIT["fatal"]
    assert ("OPENAI_API_KEY" if status == 401 else "out of quota") in out.message
    assert batches.counts()["batches_created"] == 0
    assert not list(iter_jsonl(tmp_path / "r" / "units.jsonl"))
