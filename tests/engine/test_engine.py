"""The engine end to end against a real in-process HTTP fake of the OpenAI API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, arun
from dynogen.config import Config, Secret
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, Fault, serve
from dynogen.units import Field, Skipped, Unit
from tests.helpers import wait_until_async

FIELDS = (
    Field("premise", "string"),
    Field("hypothesis", "string"),
    Field("label", "class_label", ("entailment", "neutral", "contradiction")),
)


def units(n: int) -> list[Unit | Skipped]:
    out: list[Unit | Skipped] = [
        Unit(f"ds{i}", "default", f"Dataset number {i} about topic {i}.", FIELDS, license="mit")
        for i in range(n)
    ]
    return out


def cfg(tmp_path: Path, url: str, **kw: Any) -> Config:
    base = dict(out=str(tmp_path / "run"), base_url=url, model="gpt-4o-mini", quiet=True,
                max_in_flight=8, retry_base_delay=0.01, retry_max_delay=0.05)
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def read(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


async def test_run_writes_tasks_and_a_report_that_adds_up(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    src = units(6) + [
        Unit("pics", "default", "", (Field("image", "image", media=True), Field("cap", "string"))),
        Unit("single", "default", "", (Field("text", "string"),)),
        Skipped("broken", "default", "invalid_metadata", "bad yaml"),
    ]
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True), source=src)
    assert outcome.exit_code == EXIT["ok"], outcome.message
    rep = outcome.report
    u = rep["units"]
    assert u["seen"] == 9
    assert u["processed"] + u["skipped"] + u["failed"] == u["seen"]
    assert u["skipped_by_reason"] == {"fewer_than_2_fields": 1, "invalid_metadata": 1,
                                      "media_fields": 1}
    assert rep["requests"] == 12 == rep["responses"]  # 6 units x 2 variants
    tasks = read(outcome.out / "tasks.jsonl")
    assert len(tasks) == rep["tasks"]["kept"] > 0
    assert rep["tasks"]["generated"] == rep["tasks"]["kept"] + rep["tasks"]["dropped"]
    for t in tasks:
        assert {"id", "dataset", "config", "variant", "instruction", "input_fields",
                "output_field"} <= set(t)
        assert isinstance(t["input_fields"], list) and isinstance(t["output_field"], str)
        names = {f.name for f in FIELDS}
        assert set(t["input_fields"]) <= names and t["output_field"] in names
    assert {t["variant"] for t in tasks} == {"description", "no_description"}
    assert rep["tokens"]["in"] > 0 and rep["tokens"]["out"] > 0
    saved = orjson.loads((outcome.out / "report.json").read_bytes())
    assert saved["tasks"] == rep["tasks"]


async def test_faults_are_retried_or_recorded_never_lost(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    fake.enqueue(
        Fault("server_error"), Fault("rate_limit"), Fault("not_json"), Fault("empty_choices"),
        Fault("reset"), Fault("wrong_shape"),
    )
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True, max_in_flight=1),
                             source=units(3))
    rep = outcome.report
    assert outcome.exit_code == 0, outcome.message
    assert rep["units"]["processed"] == 3
    assert rep["responses"] == 6
    assert rep["session"]["http_500"] == 1 and rep["session"]["http_429"] == 1


async def test_length_is_retried_with_more_tokens_then_recorded(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    cut = '{"tasks": [{"instruction": "Decide wheth'
    fake.enqueue(Fault("length", content=cut), Fault("length", content=cut),
                 Fault("content_filter"))
    async with serve(fake) as server:
        outcome = await arun(
            cfg(tmp_path, server.url, free=True, max_in_flight=1, variants=("description",)),
            source=units(2))
    rep = outcome.report
    assert rep["responses_invalid_by_reason"] == {"content_filter": 1,
                                                  "truncated_at_max_tokens": 1}
    bodies = [h.body for h in fake.history]
    assert bodies[0]["max_tokens"] == Config().max_tokens
    assert bodies[1]["max_tokens"] == Config().max_tokens_retry


async def test_retries_exhausted_marks_unit_failed_and_resume_retries_it(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    fake.enqueue(*[Fault("server_error")] * 3)
    c = cfg(tmp_path, None, free=True, max_in_flight=1, max_retries=2, variants=("description",))
    async with serve(fake) as server:
        first = await arun(c.with_(base_url=server.url), source=units(2))
        assert first.report["units"]["failed_by_reason"] == {"ServerError": 1}
        second = await arun(c.with_(base_url=server.url), source=units(2))
    assert second.report["units"]["failed"] == 0
    assert second.report["units"]["processed"] == 2
    assert second.report["session"]["units_already_done"] == 1


async def test_resume_and_cache_never_pay_twice(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(tmp_path, server.url, free=True, cache_path=str(tmp_path / "shared.sqlite"))
        a = await arun(c, source=units(5))
        sent = len(fake.history)
        again = await arun(c, source=units(5))  # same dir: everything already done
        other = await arun(c.with_(out=str(tmp_path / "run2")), source=units(5))  # shared cache
    assert sent == 10
    assert len(fake.history) == sent
    assert again.report["session"]["units_already_done"] == 5
    assert other.report["session"]["cache_hits"] == 10
    same = read(a.out / "tasks.jsonl")
    assert read(other.out / "tasks.jsonl") == same
    assert read(a.out / "tasks.jsonl") == same  # nothing written twice


async def test_budget_stops_dispatch_and_resume_finishes(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    full_dir = tmp_path / "full"
    async with serve(fake) as server:
        base = cfg(tmp_path, server.url, price_in=1000.0, price_out=1000.0, max_in_flight=2)
        full = await arun(base.with_(out=str(full_dir)), source=units(8))
        total = full.report["cost"]["spent_usd_total"]
        part = await arun(base.with_(budget_usd=total / 3), source=units(8))
        assert part.exit_code == EXIT["budget"]
        assert part.report["cost"]["spent_usd_total"] <= total / 3 + 1e-9
        assert "budget reached" in part.message and "Resume" in part.message
        rest = await arun(base.with_(budget_usd=total * 2), source=units(8))
    assert rest.exit_code == 0, rest.message
    assert read(rest.out / "tasks.jsonl") == read(full_dir / "tasks.jsonl")


async def test_insufficient_quota_stops_at_once(tmp_path: Path) -> None:
    fake = FakeOpenAI(insufficient_quota=True)
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True), source=units(20))
    assert outcome.exit_code == EXIT["fatal"]
    assert "insufficient_quota" in outcome.message
    assert len(fake.history) <= 8 + 1  # only what was already in flight


async def test_schema_refused_steps_down_to_json_object(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    fake.enqueue(Fault.http(400, {"error": {"message": "Invalid parameter: 'response_format' "
                                            "of type 'json_schema' is not supported with this "
                                            "model.", "type": "invalid_request_error",
                                            "code": None}}))
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True, max_in_flight=1),
                             source=units(2))
    assert outcome.exit_code == 0
    assert outcome.report["session"][
        "adapted:format=json_object, max_tokens, temperature=sent"] == 1
    formats = [h.body.get("response_format", {}).get("type") for h in fake.history]
    assert formats[0] == "json_schema" and set(formats[1:]) == {"json_object"}


async def test_api_key_never_reaches_disk(tmp_path: Path) -> None:
    canary = "sk-canary-7f3e9a"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(tmp_path, server.url, free=True).with_(api_key=Secret(canary))
        outcome = await arun(c, source=units(2))
    for p in outcome.out.rglob("*"):
        if p.is_file():
            assert canary.encode() not in p.read_bytes(), p
    assert canary not in repr(c) and canary not in str(outcome.report)


async def test_changed_prompt_settings_refuse_to_resume(tmp_path: Path) -> None:
    from dynogen.errors import RunDirError

    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(tmp_path, server.url, free=True)
        await arun(c, source=units(1))
        with pytest.raises(RunDirError, match="max_tasks_per_unit"):
            await arun(c.with_(max_tasks_per_unit=5), source=units(1))
        forced = await arun(c.with_(max_tasks_per_unit=5, force_new=True), source=units(1))
    assert forced.exit_code == 0


async def test_force_new_rederives_from_the_cache_at_zero_cost(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(tmp_path, server.url, price_in=1.0, price_out=1.0)
        first = await arun(c, source=units(3))
        first_tasks = read(first.out / "tasks.jsonl")
        sent = len(fake.history)
        again = await arun(c.with_(force_new=True, max_tasks_per_unit=2,
                                   response_format="json_schema"), source=units(3))
        # A different max_tasks changes the schema, so those are new requests...
        assert len(fake.history) == 2 * sent
        # ...but re-running the original settings after a forced restart costs nothing.
        third = await arun(c.with_(force_new=True), source=units(3))
    assert len(fake.history) == 2 * sent
    assert third.report["cost"]["spent_usd_total"] == 0
    assert third.report["session"]["cache_hits"] == sent
    assert read(third.out / "tasks.jsonl") == first_tasks != []
    assert again.exit_code == 0


async def test_a_request_bigger_than_the_tpm_limit_stops_with_a_clear_message(
        tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True, tpm=100), source=units(2))
    assert outcome.exit_code == EXIT["error"]
    assert "tpm" in outcome.message.lower() and "stopped" in outcome.message
    assert fake.history == []


async def test_reasoning_model_refusals_adapt_the_request(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    fake.enqueue(
        Fault.http(400, {"error": {"message": "Unsupported parameter: 'max_tokens' is not "
                                   "supported with this model. Use 'max_completion_tokens' "
                                   "instead.", "type": "invalid_request_error"}}),
        Fault.http(400, {"error": {"message": "Unsupported value: 'temperature' does not "
                                   "support 0 with this model. Only the default (1) value is "
                                   "supported.", "type": "invalid_request_error"}}),
    )
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True, max_in_flight=1),
                             source=units(2))
    assert outcome.exit_code == 0, outcome.message
    last = fake.history[-1].body
    assert "max_tokens" not in last and last["max_completion_tokens"] == Config().max_tokens
    assert "temperature" not in last


async def test_a_400_that_nothing_answers_stops_the_run(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    fake.enqueue(Fault.http(400, {"error": {"message": "model 'x' does not exist"}}))
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True, max_in_flight=1),
                             source=units(2))
    assert outcome.exit_code == EXIT["fatal"]
    assert "does not exist" in outcome.message


async def test_lone_surrogates_from_the_python_api_are_a_counted_skip(tmp_path: Path) -> None:
    bad = Unit("bad\ud800", "default", "x", (Field("a\udcff", "string"), Field("b", "string")))
    fake = FakeOpenAI()
    async with serve(fake) as server:
        outcome = await arun(cfg(tmp_path, server.url, free=True), source=[bad, *units(1)])
    assert outcome.exit_code == 0, outcome.message
    assert outcome.report["units"]["skipped_by_reason"] == {"invalid_metadata": 1}
    assert outcome.report["units"]["processed"] == 1


async def test_judge_drops_the_tasks_it_finds_invalid_with_its_reason(tmp_path: Path) -> None:
    # The same answers with and without the judge: the judged run keeps exactly the tasks
    # the judge passed, records each drop's reason, and pays one request per kept task.
    fake = FakeOpenAI()
    async with serve(fake) as server:
        plain = await arun(cfg(tmp_path, server.url, free=True, out=str(tmp_path / "a")),
                           source=units(8), build=False)
        fake.history.clear()
        judged = await arun(cfg(tmp_path, server.url, free=True, judge=True,
                                out=str(tmp_path / "b")), source=units(8), build=False)
    assert plain.exit_code == judged.exit_code == EXIT["ok"], judged.message
    before = read(plain.out / "tasks.jsonl")
    after = read(judged.out / "tasks.jsonl")
    verdict_requests = [r for r in fake.history
                        if r.body.get("response_format", {}).get("json_schema", {})
                        .get("name") == "verdict"]
    assert len(verdict_requests) == len(before) > 0
    invalid = [i for rec in read(judged.out / "units.jsonl") for i in rec.get("judge_invalid", [])]
    assert invalid, "the fake judges one task in four invalid"
    assert all(i["reason"] for i in invalid)
    assert {t["id"] for t in after} == {t["id"] for t in before} - {i["id"] for i in invalid}
    assert judged.report["tasks"]["dropped_by_reason"]["judge_invalid"] == len(invalid)
    assert judged.report["tasks"]["kept"] == len(after)
    # The judge's answers are cached like any request: a second judged run pays nothing.
    fake.history.clear()
    async with serve(fake) as server:
        again = await arun(cfg(tmp_path, server.url, free=True, judge=True, force_new=True,
                               out=str(tmp_path / "b")), source=units(8), build=False)
    assert fake.history == []
    assert read(again.out / "tasks.jsonl") == after


async def test_a_worker_that_crashes_ends_the_run_instead_of_hanging_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug (here: the transport raising a plain ValueError) must surface, not leave the
    # feeder blocked on a full queue that no cancelled worker will ever drain.
    import asyncio

    from dynogen.engine.engine import TaskEngine
    from dynogen.execute.transport import MockTransport, SentRequest

    engines: list[TaskEngine] = []
    real_run = TaskEngine.run

    async def run(self: TaskEngine, *args: Any, **kw: Any) -> Any:
        engines.append(self)
        return await real_run(self, *args, **kw)

    monkeypatch.setattr(TaskEngine, "run", run)

    async def broken(req: SentRequest) -> Any:
        # The crash comes once the feeder has filled the queue and waits on it.
        await wait_until_async(lambda: engines[0]._queue.full(), "the feeder to fill the queue")
        raise ValueError("a bug, not a network fault")

    config = cfg(tmp_path, "http://fake.invalid/v1", free=True, max_in_flight=2)
    run = asyncio.ensure_future(arun(config, source=units(40), transport=MockTransport(broken),
                                     build=False))
    # Not wait_for: cancelling a hung run waits for the hang (a feeder stuck on a full queue).
    done, _ = await asyncio.wait({run}, timeout=60)
    if not done:
        run.cancel()
        pytest.fail("the run hung after a worker crashed")
    with pytest.raises(BaseException) as info:  # noqa: B017,PT011 - the bug's own exception
        run.result()
    assert "a bug, not a network fault" in repr(info.value.exceptions[0]
                                                if isinstance(info.value, BaseExceptionGroup)
                                                else info.value)
