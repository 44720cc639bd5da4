"""Runs with ``provider = "anthropic"`` against the fake over real HTTP: online and Message
Batches give the same tasks, the key comes from ANTHROPIC_API_KEY only, the budget holds
against what the server bills, failed lines get follow-up rounds, and batch status/cancel
speak Message Batches."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, arun
from dynogen.compose import batch_remote_for
from dynogen.config import Config
from dynogen.execute.batch_admin import acancel, astatus, format_status
from dynogen.execute.prices import PriceTable
from dynogen.store.journal import iter_jsonl
from dynogen.testing.fake_anthropic import FakeAnthropic, serve
from dynogen.units import Field, Unit

KEY = "sk-ant-test"
SONNET = PriceTable.load().lookup("claude-sonnet-4-5")
PRICES = {"input": SONNET.input, "output": SONNET.output, "cache_write": SONNET.cache_write or 0,
          "cache_read": SONNET.cached_input}


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-never-be-sent")


def write_shard(path: Path, n: int) -> Path:
    units = [Unit(f"set{i:03d}", "default", f"Sentences about subject {i}, labelled.",
                  (Field("sentence", "string"), Field(f"label_{i % 3}", "class_label",
                                                      ("no", "yes"))), license="mit")
             for i in range(n)]
    path.write_bytes(b"".join(orjson.dumps(u.to_dict()) + b"\n" for u in units))
    return path


def cfg(out: Path, url: str, source: Path, **kw: Any) -> Config:
    base: dict[str, Any] = dict(out=str(out), base_url=url, source=str(source),
                                model="claude-sonnet-4-5", quiet=True, poll_seconds=0.05,
                                batch_max_requests=10)
    base.update(kw)
    return Config(**base)


def events(out: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(out / "batches.jsonl"))


async def test_online_and_batch_runs_write_the_same_tasks(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "units.jsonl", 12)  # 24 requests
    fake = FakeAnthropic(api_key=KEY, prices=PRICES)
    fake.batches.configure(processing_seconds=0.0)
    async with serve(fake) as server:
        online = await arun(cfg(tmp_path / "online", server.url, shard), build=False)
        assert online.exit_code == EXIT["ok"], online.message
        billed_online = fake.bill()["online"]
        batch = await arun(cfg(tmp_path / "batch", server.url, shard, mode="batch"),
                           build=False)
        assert batch.exit_code == EXIT["ok"], batch.message
    tasks = (tmp_path / "online" / "tasks.jsonl").read_bytes()
    assert tasks and (tmp_path / "batch" / "tasks.jsonl").read_bytes() == tasks
    counts = fake.batches.counts()
    assert counts["requests_submitted"] == 24 and counts["max_submitted_per_custom_id"] == 1
    assert counts["batches_created"] == 3  # 10 requests a batch
    # Usage in OpenAI's meaning: prompt tokens include the cache's writes and reads.
    tokens = online.report["cost"]["ledger"]["tokens"]
    assert tokens["prompt"] == (billed_online["input"] + billed_online["cache_write"]
                                + billed_online["cache_read"])
    assert tokens["cached"] == billed_online["cache_read"] > 0  # the units share a prefix
    assert online.report["cost"]["ledger"]["spent_usd"] == pytest.approx(
        fake.bill()["online"]["usd"], rel=1e-9)
    assert batch.report["cost"]["ledger"]["spent_usd"] == pytest.approx(
        fake.bill()["batch"]["usd"], rel=1e-9)
    assert (tmp_path / "batch" / "batches" / "provider").read_text().strip() == "anthropic"


@pytest.mark.parametrize("mode", ["online", "batch"])
async def test_the_budget_holds_against_what_the_server_bills(tmp_path: Path, mode: str) -> None:
    shard = write_shard(tmp_path / "units.jsonl", 30)
    fake = FakeAnthropic(api_key=KEY, prices=PRICES)
    fake.batches.configure(processing_seconds=0.0)
    budget = 0.05
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / mode, server.url, shard, mode=mode, budget_usd=budget,
                             batch_max_requests=4), build=False)
    billed = fake.bill()["usd"]
    assert out.exit_code == EXIT["budget"], out.message
    assert 0 < billed <= budget
    assert out.report["cost"]["ledger"]["spent_usd"] == pytest.approx(billed, rel=1e-9)


async def test_failed_and_expired_lines_get_follow_up_rounds(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "units.jsonl", 10)
    clock = Clock()
    fake = FakeAnthropic(api_key=KEY, wall=clock)
    fake.batches.configure(processing_seconds=60.0, line_fail_rate=0.3, expire_every=2)
    async with serve(fake) as server:
        run = asyncio.create_task(arun(cfg(tmp_path / "run", server.url, shard, mode="batch",
                                           batch_rounds=6), build=False))
        while not run.done():  # a day passes at every poll: batches end or expire
            clock.t += 43_200
            await asyncio.sleep(0.02)
        out = run.result()
    assert out.exit_code == EXIT["ok"], out.message
    counts = fake.batches.counts()
    assert counts["custom_ids_answered"] == 20
    assert counts["results"].get("expired", 0) > 0 and counts["results"].get("errored", 0) > 0
    session = out.report["session"]
    assert session["batch_resubmitted"] > 0
    assert out.report["units"]["processed"] == 10
    rounds = {e.get("round") for e in events(tmp_path / "run") if e["ev"] == "file"}
    assert max(rounds) >= 1


async def test_batch_status_and_cancel_speak_message_batches(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "units.jsonl", 10)
    clock = Clock()
    fake = FakeAnthropic(api_key=KEY, wall=clock)
    fake.batches.configure(processing_seconds=600.0)
    out = tmp_path / "run"
    async with serve(fake) as server:
        c = cfg(out, server.url, shard, mode="batch")
        run = asyncio.create_task(arun(c, build=False))
        while sum(e["ev"] == "batch" for e in events(out)) < 2:
            assert not run.done(), run.result().message if run.done() else ""
            await asyncio.sleep(0.01)
        clock.t += 300  # half way
        remote = batch_remote_for(c.with_(api_key=c.api_key))
        rows = await astatus(out, server.url, KEY, remote_for=remote)
        assert [r["status"] for r in rows] == ["in_progress"] * 2
        assert "2 batches, 2 running" in format_status(rows)
        cancelled = await acancel(out, server.url, KEY, remote_for=remote)
        assert {r["status"] for r in cancelled} == {"cancelling"}
        clock.t += 5
        done = await run
    assert done.exit_code == EXIT["ok"] and done.report["units"]["failed"] > 0
    assert done.report["session"]["batch_cancelled_by_user"] >= 1
    assert fake.batches.counts()["batches_created"] == 2  # nothing new after the cancel


async def test_a_create_whose_answer_is_lost_is_found_not_made_again(tmp_path: Path) -> None:
    """The server made the batch, the answer never came back: the next try looks for the
    batch by the file's intent and adopts it instead of creating a second one."""
    shard = write_shard(tmp_path / "units.jsonl", 10)
    fake = FakeAnthropic(api_key=KEY)
    fake.batches.configure(processing_seconds=0.0, create_lost=1)
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "run", server.url, shard, mode="batch", max_retries=0),
                         build=False)
    assert out.exit_code == EXIT["ok"], out.message
    counts = fake.batches.counts()
    assert counts["batches_created"] == 2 and counts["max_submitted_per_custom_id"] == 1
    assert out.report["session"]["batch_create_errors"] == 1
    assert out.report["session"]["batch_lost_batches_found"] == 1
    assert out.report["units"]["processed"] == 10
