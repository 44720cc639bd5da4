"""Kills: online, a resume pays for nothing twice; Message Batches carry no metadata, so a
batch whose id a kill lost is found by its intent.

A restart adopts the batch created after the file's intent with the same number
of requests; several such batches are told apart by their results' custom_ids
once they end, and until then nothing is submitted for that file. The fake's
record (requests submitted per custom_id) shows nothing went twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from dynogen.execute.anthropic_batches import AnthropicBatches
from dynogen.execute.batch_files import custom_id_of
from dynogen.execute.batch_state import BatchJournal
from dynogen.store.journal import iter_jsonl
from dynogen.testing.fake_anthropic import FakeAnthropic, serve
from dynogen.testing.fake_anthropic_process import start_fake_anthropic
from dynogen.units import Field, Unit


def write_shard(path: Path, n: int) -> Path:
    units = [Unit(f"set{i:03d}", "default", f"Sentences about subject {i}.",
                  (Field("sentence", "string"), Field("label", "class_label", ("no", "yes"))),
                  license="mit") for i in range(n)]
    path.write_bytes(b"".join(orjson.dumps(u.to_dict()) + b"\n" for u in units))
    return path


def events(out: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(out / "batches.jsonl"))


def cli(config: Path, source: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dynogen", "run", "--config", str(config), "--source",
            str(source), "--out", str(out), "--base-url", url, "--free", "--quiet",
            "--no-build", "--poll-seconds", "0.05", "--batch-max-requests", "10", *extra]


def test_kill_9_while_batches_run_then_restart_submits_nothing_twice(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "units.jsonl", 30)  # 60 requests: 6 batches
    config = tmp_path / "anthropic.toml"
    config.write_text('provider = "anthropic"\n')
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant", "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    with start_fake_anthropic(api_key="sk-ant", ready_timeout=90) as fake:
        ref = tmp_path / "online"
        done = subprocess.run(cli(config, shard, ref, fake.url, "--mode", "online"), env=env,
                              capture_output=True, timeout=180)
        assert done.returncode == 0, done.stderr.decode()[-500:]
        fake.batches(processing_seconds=3.0)
        out = tmp_path / "batch"
        life = subprocess.Popen(cli(config, shard, out, fake.url, "--mode", "batch"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while sum(e["ev"] == "batch" for e in events(out)) < 6:
            assert life.poll() is None and time.monotonic() < deadline, "life 1 ended early"
            time.sleep(0.005)
        life.send_signal(signal.SIGKILL)
        life.wait()
        evs = events(out)
        assert not any(e["ev"] == "done" for e in evs)
        # What a kill between a create and its journal line leaves: the intent is written,
        # the batch exists at the server, its id is not.
        assert [e["ev"] for e in evs[-2:]] == ["intent", "batch"]
        journal = out / "batches.jsonl"
        journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[:-1]))
        before = fake.batches()
        assert before["batches_created"] == 6
        again = subprocess.run(cli(config, shard, out, fake.url, "--mode", "batch"), env=env,
                               capture_output=True, timeout=180)
        assert again.returncode == 0, again.stderr.decode()[-800:]
        after = fake.batches()
    assert after["batches_created"] == 6 and after["requests_submitted"] == 60
    assert after["max_submitted_per_custom_id"] == after["max_answered_per_custom_id"] == 1
    assert (out / "tasks.jsonl").read_bytes() == (ref / "tasks.jsonl").read_bytes() != b""
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["requests_paid"] == 60 and report["units"]["processed"] == 30
    assert report["session"]["batch_lost_batches_found"] == 1


def test_kill_9_online_then_resume_writes_what_an_uninterrupted_run_writes(
        tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "units.jsonl", 40)  # 80 requests
    config = tmp_path / "anthropic.toml"
    config.write_text('provider = "anthropic"\n')
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant", "HF_HUB_OFFLINE": "1"}
    with start_fake_anthropic(api_key="sk-ant", latency_median=0.2, ready_timeout=90) as fake:
        ref = tmp_path / "ref"
        done = subprocess.run(cli(config, shard, ref, fake.url, "--max-in-flight", "8"),
                              env=env, capture_output=True, timeout=180)
        assert done.returncode == 0, done.stderr.decode()[-500:]
        fake.reset()
        out = tmp_path / "run"
        argv = cli(config, shard, out, fake.url, "--max-in-flight", "8")
        life = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while fake.stats()["totals"]["2xx"] < 30:
            assert life.poll() is None and time.monotonic() < deadline, "ended before the kill"
            time.sleep(0.02)
        life.send_signal(signal.SIGKILL)
        life.wait()
        again = subprocess.run(argv, env=env, capture_output=True, timeout=180)
        assert again.returncode == 0, again.stderr.decode()[-500:]
        billed = fake.stats()["bill"]["online"]["requests"]
    assert (out / "tasks.jsonl").read_bytes() == (ref / "tasks.jsonl").read_bytes() != b""
    assert 80 <= billed <= 80 + 8  # at most the requests in flight at the kill, again
    report = orjson.loads((out / "report.json").read_bytes())
    # Answers lost with the killed process were billed but never seen: at most those in flight.
    assert report["units"]["processed"] == 40 and billed - 8 <= report["requests_paid"] <= billed


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def local_file(journal: BatchJournal, name: str, n: int, salt: str) -> list[str]:
    """An input file of ``n`` requests as the executor writes it, journaled with an intent."""
    ids, lines = [], []
    for i in range(n):
        key = bytes.fromhex(f"{i:08x}{salt:0>24}")
        body = {"model": "claude-sonnet-4-5", "max_tokens": 50,
                "messages": [{"role": "user", "content": f"Fields: a, b ({salt} {i})"}]}
        ids.append(custom_id_of(key))
        lines.append(orjson.dumps({"custom_id": ids[-1], "method": "POST",
                                   "url": "/v1/chat/completions", "body": body}) + b"\n")
    journal.local(name).write_bytes(b"".join(lines))
    journal.record("file", name, endpoint="/chat/completions", round=0, parent=None,
                   requests=n, prompt_tokens=0, max_tokens=0)
    journal.record("intent", name)
    return ids


async def test_an_ambiguous_lost_batch_stays_unresolved_until_its_results_decide(
        tmp_path: Path) -> None:
    clock = Clock(time.time())
    fake = FakeAnthropic(wall=clock)
    fake.batches.configure(processing_seconds=100.0)
    journal = BatchJournal(tmp_path).open()
    local_file(journal, "input-000001.jsonl", 3, "aa")
    async with serve(fake) as server:
        remote = AnthropicBatches(server.url, "k", run_id="r", journal=journal)
        lost = journal.load()
        assert await remote.find_batches(lost) == {}  # nothing made: it may be submitted
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        foreign = [{"custom_id": f"other{i}", "params": {
            "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}}
            for i in range(3)]
        await client.messages.batches.create(requests=foreign)  # type: ignore[arg-type]
        mine = await client.post("/v1/messages/batches", cast_to=anthropic.types.messages
                                 .MessageBatch, content=remote.request_body(
                                     journal.local("input-000001.jsonl")),
                                 options={"headers": {"content-type": "application/json"}})
        await client.messages.batches.create(requests=foreign[:2])  # type: ignore[arg-type]
        # Two batches of 3 since the intent, both running: which one is ours is not known.
        assert await remote.find_batches(lost) == {"input-000001.jsonl": None}
        clock.t += 200
        assert await remote.find_batches(lost) == {"input-000001.jsonl": mine.id}
        # A batch this run already journaled is never adopted for another file.
        journal.record("batch", "input-000001.jsonl", batch_id=mine.id)
        local_file(journal, "input-000002.jsonl", 3, "bb")
        rest = {k: v for k, v in journal.load().items() if v.batch_id is None}
        assert await remote.find_batches(rest) == {}  # the foreign one does not match
        await remote.aclose()
    journal.close()


def test_a_missing_sdk_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dynogen.errors import ConfigError
    from dynogen.execute.anthropic_batches import import_sdk

    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(ConfigError, match=r"pip install 'dynogen\[anthropic\]'"):
        import_sdk()
