"""Batch mode end to end: `run --mode batch` against the fake's Batch API, through the real
openai SDK; compared with an online run of the same source on the same fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, arun
from dynogen.config import Config
from dynogen.execute.batch_state import BatchJournal
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, serve
from dynogen.testing.fake_batches import FakeBatches
from dynogen.units import Field, Skipped, Unit

FIELDS = (
    Field("premise", "string"),
    Field("hypothesis", "string"),
    Field("label", "class_label", ("entailment", "neutral", "contradiction")),
)
FAST = {"validating": 0.01, "in_progress": 0.05, "finalizing": 0.01}


def units(n: int) -> list[Unit | Skipped]:
    out: list[Unit | Skipped] = [
        Unit(f"ds{i}", "default", f"Dataset number {i} about topic {i}.", FIELDS, license="mit")
        for i in range(n)
    ]
    return out


def cfg(out: Path, url: str, **kw: Any) -> Config:
    base = dict(out=str(out), base_url=url, model="gpt-4o-mini", quiet=True, max_in_flight=8,
                retry_base_delay=0.01, retry_max_delay=0.05, poll_seconds=0.05,
                batch_max_requests=10)
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def tasks(out: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(out / "tasks.jsonl"))


def unit_lines(out: Path) -> list[dict[str, Any]]:
    drop = {"requests", "responses", "cost_micro_usd", "tokens_cached"}
    return [{k: v for k, v in r.items() if k not in drop} for r in iter_jsonl(out / "units.jsonl")]


async def test_batch_run_gives_the_online_run_s_tasks(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    batches = FakeBatches(fake, **FAST)
    src = units(23) + [Skipped("broken", "default", "invalid_metadata", "bad yaml")]
    async with serve(fake) as server:
        online = await arun(cfg(tmp_path / "online", server.url), source=src, build=False)
        batch = await arun(cfg(tmp_path / "batch", server.url, mode="batch"), source=src,
                           build=False)
    assert online.exit_code == batch.exit_code == EXIT["ok"], batch.message
    assert tasks(tmp_path / "batch") == tasks(tmp_path / "online") != []
    assert unit_lines(tmp_path / "batch") == unit_lines(tmp_path / "online")
    counts = batches.counts()
    # 23 units x 2 variants, 10 to a file: 5 files and batches, every line once.
    assert (counts["files_created"], counts["batches_created"]) == (5, 5)
    assert counts["lines_processed"] == 46 and counts["max_processed_per_custom_id"] == 1
    rep = batch.report
    assert rep["units"]["processed"] == online.report["units"]["processed"] == 23
    assert rep["requests_paid"] == 46 and rep["cost"]["ledger"]["batch"] is True
    # Billed at batch prices: half the online price for the same tokens.
    assert rep["cost"]["spent_usd_total"] == pytest.approx(
        online.report["cost"]["spent_usd_total"] / 2, rel=0.01)
    journal = BatchJournal(tmp_path / "batch").load()
    assert len(journal) == 5 and all(f.done and f.status == "completed" for f in journal.values())


async def test_a_second_batch_run_is_answered_from_the_cache(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    batches = FakeBatches(fake, **FAST)
    async with serve(fake) as server:
        c = cfg(tmp_path / "a", server.url, mode="batch")
        first = await arun(c, source=units(5), build=False)
        cache = str(tmp_path / "a" / "cache.sqlite")
        second = await arun(c.with_(out=str(tmp_path / "b"), cache_path=cache),
                            source=units(5), build=False)
    assert first.exit_code == second.exit_code == EXIT["ok"]
    assert tasks(tmp_path / "a") == tasks(tmp_path / "b")
    assert batches.counts()["batches_created"] == 1
    assert not BatchJournal(tmp_path / "b").load()  # nothing left to submit


async def test_failed_lines_and_expired_batches_are_resubmitted_in_rounds(
        tmp_path: Path) -> None:
    fake = FakeOpenAI()
    batches = FakeBatches(fake, line_fail_rate=0.05, expire_every=3, seed=7, **FAST)
    n = 60
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "r", server.url, mode="batch", batch_rounds=4),
                         source=units(n), build=False)
    assert out.exit_code == EXIT["ok"], out.message
    rep = out.report
    assert rep["units"]["processed"] == n
    c = batches.counts()
    failed_lines = c["lines_processed"] - c["billed"]["lines"]
    expired = c["by_status"].get("expired", 0)
    assert expired >= 1 and failed_lines >= 1
    # Only failed requests were resubmitted: every line processed is a first try or a retry
    # of a failed line; no answered request was sent again.
    assert c["lines_processed"] <= 2 * n + failed_lines
    assert c["custom_ids_processed"] == 2 * n
    assert c["billed"]["lines"] == 2 * n == rep["requests_paid"]
    session = rep["session"]
    assert session["batch_resubmitted"] >= 1 and session.get("batch_expired", 0) == expired


async def test_rounds_exhausted_fail_units_with_a_counted_reason_and_resume_retries(
        tmp_path: Path) -> None:
    fake = FakeOpenAI()
    batches = FakeBatches(fake, line_fail_rate=1.0, **FAST)
    async with serve(fake) as server:
        c = cfg(tmp_path / "r", server.url, mode="batch", batch_rounds=1)
        out = await arun(c, source=units(3), build=False)
        assert out.report["units"]["failed"] == 3
        lines = list(iter_jsonl(tmp_path / "r" / "units.jsonl"))
        assert {r["status"] for r in lines} == {"failed"}
        assert {r["reason"] for r in lines} == {"http_500_server_error"}
        assert batches.counts()["lines_processed"] == 12  # 6 requests, 2 tries each
        batches.configure(line_fail_rate=0.0)
        again = await arun(c, source=units(3), build=False)
    assert again.exit_code == EXIT["ok"]
    assert (again.report["units"]["processed"], again.report["units"]["failed"]) == (3, 0)
    assert batches.counts()["billed"]["lines"] == 6


async def test_budget_run_never_bills_more_than_the_budget(tmp_path: Path) -> None:
    fake = FakeOpenAI(output_tokens=400)
    batches = FakeBatches(fake, **FAST)
    budget = 0.002
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "b", server.url, mode="batch", budget_usd=budget,
                             max_tokens=600, max_tokens_retry=600),
                         source=units(40), build=False)
    assert out.exit_code == EXIT["budget"], out.message
    billed = batches.counts()["billed"]
    from dynogen.compose import resolve_price

    price = resolve_price(Config(model="gpt-4o-mini"))
    server_cost = price.cost(billed["prompt_tokens"], billed["completion_tokens"], batch=True)
    assert 0 < server_cost <= budget
    assert out.report["cost"]["ledger"]["spent_usd"] == pytest.approx(server_cost, rel=1e-9)
    assert 0 < out.report["units"]["processed"] < 40


async def test_a_refused_upload_stops_with_one_line_and_marks_nothing_done(
        tmp_path: Path) -> None:
    fake = FakeOpenAI()
    FakeBatches(fake, upload_error=400, **FAST)
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "x", server.url, mode="batch"), source=units(3),
                         build=False)
    assert out.exit_code == EXIT["fatal"]
    assert "refused the upload of input-000001.jsonl" in out.message
    assert "\n" not in out.message
    assert not list(iter_jsonl(tmp_path / "x" / "units.jsonl"))


def test_journal_names_every_file_and_batch(tmp_path: Path) -> None:
    j = BatchJournal(tmp_path).open()
    j.record("file", "input-000001.jsonl", endpoint="/chat/completions", round=0, parent=None,
             requests=3, prompt_tokens=30, max_tokens=90)
    j.record("upload", "input-000001.jsonl", file_id="file-1")
    j.record("batch", "input-000001.jsonl", batch_id="batch_1")
    with (tmp_path / "batches.jsonl").open("ab") as f:
        f.write(b'{"ev":"done","name":"input-0000')  # torn by a kill
    (tmp_path / "batches" / "input-000002.jsonl.tmp").write_bytes(b"partial")
    j.close()
    again = BatchJournal(tmp_path).open()
    files = again.load()
    assert list(files) == ["input-000001.jsonl"]
    f = files["input-000001.jsonl"]
    assert (f.file_id, f.batch_id, f.done, f.requests) == ("file-1", "batch_1", False, 3)
    assert not (tmp_path / "batches" / "input-000002.jsonl.tmp").exists()
    assert orjson.loads((tmp_path / "batches.jsonl").read_bytes().splitlines()[-1])["ev"] == "batch"
    again.close()


async def test_the_enqueued_token_cap_keeps_batches_under_the_server_s_limit(
        tmp_path: Path) -> None:
    fake = FakeOpenAI(exact_tokens=True)
    FakeBatches(fake, **FAST)
    async with serve(fake) as server:
        await arun(cfg(tmp_path / "probe", server.url, mode="batch"), source=units(20),
                   build=False)
    per_file = max(f.prompt_tokens for f in BatchJournal(tmp_path / "probe").load().values())
    cap = per_file * 5 // 2  # two files in flight at once, never three
    fake = FakeOpenAI(exact_tokens=True)
    batches = FakeBatches(fake, enqueued_token_limit=cap, **{**FAST, "in_progress": 1.5})
    async with serve(fake) as server:
        out = await arun(cfg(tmp_path / "capped", server.url, mode="batch",
                             batch_enqueued_tokens=cap), source=units(20), build=False)
    assert out.exit_code == EXIT["ok"], out.message
    c = batches.counts()
    assert c["by_status"] == {"completed": 4} and c["lines_processed"] == 40
