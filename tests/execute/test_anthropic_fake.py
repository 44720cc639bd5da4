"""The fake Anthropic server, driven through the real ``anthropic`` SDK over HTTP.

If the fake drifted from Anthropic's wire format, the SDK's own models would
refuse its answers here; batch states move on an injected clock, never a sleep.
"""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest

from dynogen.testing.fake_answers import Fault
from dynogen.testing.fake_anthropic import FakeAnthropic, serve

TOOL = {"name": "tasks", "input_schema": {
    "type": "object", "required": ["tasks"], "properties": {"tasks": {
        "type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
            "instruction": {"type": "string"},
            "input_fields": {"type": "array", "items": {"enum": ["sentence", "source"]}},
            "output_field": {"enum": ["label", "sentence"]}}}}}}}
PREFIX = "You design tasks. " * 400  # about 1,600 tokens: cacheable


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ask(client: anthropic.AsyncAnthropic, user: str = "Fields: sentence, label, source",
        **kw: Any) -> Any:
    args: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 400, "tools": [TOOL],
                            "tool_choice": {"type": "tool", "name": "tasks"},
                            "messages": [{"role": "user", "content": user}]}
    args.update(kw)
    return client.messages.with_raw_response.create(**args)


async def parsed(call: Any) -> Any:
    return await (await call).parse()


async def test_tool_answers_fill_the_schema_deterministically() -> None:
    fake = FakeAnthropic()
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        a = (await parsed(ask(client)))
        b = (await parsed(ask(client)))
        c = (await parsed(ask(client, user="Fields: sentence, label, source, extra")))
    assert a.stop_reason == "tool_use" and a.content[0].type == "tool_use"
    tasks = a.content[0].input["tasks"]
    assert tasks and all(t["output_field"] in ("label", "sentence") for t in tasks)
    assert a.content[0].input == b.content[0].input != c.content[0].input
    assert a.usage.input_tokens > 346 and a.usage.output_tokens > 0  # tools + tool prompt


async def test_a_repeated_cache_control_prefix_is_written_then_read() -> None:
    fake = FakeAnthropic(prices={"input": 3, "output": 15, "cache_write": 3.75,
                                 "cache_read": 0.3})
    system = [{"type": "text", "text": PREFIX, "cache_control": {"type": "ephemeral"}}]
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        first = (await parsed(ask(client, system=system, user="one"))).usage
        second = (await parsed(ask(client, system=system, user="two"))).usage
        unmarked = (await parsed(ask(client, system=[{"type": "text", "text": PREFIX}],
                              user="three"))).usage
    assert first.cache_creation_input_tokens > 1024 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert unmarked.cache_read_input_tokens == unmarked.cache_creation_input_tokens == 0
    total = first.input_tokens + first.cache_creation_input_tokens
    assert second.input_tokens + second.cache_read_input_tokens == total  # same prompt size
    bill = fake.bill()["online"]
    assert bill["cache_write"] == first.cache_creation_input_tokens
    assert bill["cache_read"] == second.cache_read_input_tokens and bill["requests"] == 3
    expected = (bill["input"] * 3 + bill["output"] * 15 + bill["cache_write"] * 3.75
                + bill["cache_read"] * 0.3) / 1e6
    assert fake.bill()["usd"] == pytest.approx(expected)


async def test_rate_limit_headers_and_a_429_with_retry_after() -> None:
    clock = Clock(0.0)
    fake = FakeAnthropic(rpm=60, itpm=1_000_000, otpm=100_000, clock=clock,
                         wall=lambda: 1_800_000_000.0 + clock.t, round_remaining=False)
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        ok = await ask(client)
        with pytest.raises(anthropic.RateLimitError) as e:
            await ask(client)  # 60 RPM holds one request a second; the clock has not moved
        clock.t += 1.0
        again = await ask(client)
    h = ok.headers
    assert h["anthropic-ratelimit-requests-limit"] == "60"
    assert h["anthropic-ratelimit-requests-remaining"] == "59"
    assert h["anthropic-ratelimit-input-tokens-limit"] == "1000000"
    assert h["anthropic-ratelimit-output-tokens-limit"] == "100000"
    assert h["anthropic-ratelimit-requests-reset"].endswith("Z") and "date" in h
    assert e.value.response.headers["retry-after"] == "1"
    assert "60 requests per minute" in e.value.message
    assert (await again.parse()).stop_reason == "tool_use"
    assert fake.stats_dict()["totals"]["429"] == 1


async def test_overloaded_is_529_and_openai_keys_are_refused() -> None:
    fake = FakeAnthropic(api_key="sk-ant")
    fake.enqueue(Fault("unavailable"))
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-ant", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as e:
            await ask(client)
        assert e.value.status_code == 529
        with pytest.raises(anthropic.BadRequestError, match="seed"):
            await ask(client, extra_body={"seed": 0})
        wrong = anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-openai",
                                         max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await ask(wrong)


def batch_requests(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "params": {
        "model": "claude-sonnet-4-5", "max_tokens": 300, "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "tasks"},
        "messages": [{"role": "user", "content": f"Fields: sentence, label, source ({i})"}]}}
        for i in range(n)]


async def test_message_batches_move_on_the_clock_and_answer_by_custom_id() -> None:
    clock = Clock()
    fake = FakeAnthropic(wall=clock, prices={"input": 3, "output": 15})
    fake.batches.configure(processing_seconds=100.0)
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        b = await client.messages.batches.create(requests=batch_requests(4))  # type: ignore[arg-type]
        assert b.processing_status == "in_progress" and b.request_counts.processing == 4
        clock.t += 60
        mid = await client.messages.batches.retrieve(b.id)
        assert mid.processing_status == "in_progress" and mid.results_url is None
        clock.t += 60
        done = await client.messages.batches.retrieve(b.id)
        assert done.processing_status == "ended" and done.request_counts.succeeded == 4
        results = {r.custom_id: r.result async for r in
                   await client.messages.batches.results(b.id)}
        listed = [x.id async for x in client.messages.batches.list(limit=1)]
    assert set(results) == {"r0", "r1", "r2", "r3"} and listed == [b.id]
    assert all(r.type == "succeeded" and r.message.content[0].type == "tool_use"
               for r in results.values())
    bill = fake.bill()
    assert bill["batch"]["requests"] == 4 and bill["online"]["requests"] == 0
    full = (bill["batch"]["input"] * 3 + bill["batch"]["output"] * 15) / 1e6
    assert bill["batch"]["usd"] == pytest.approx(full / 2)  # Batches at half price


async def test_cancel_expiry_failures_and_the_server_record() -> None:
    clock = Clock()
    fake = FakeAnthropic(wall=clock)
    fake.batches.configure(processing_seconds=100.0, expire_every=2, expire_fraction=0.5)
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        a = await client.messages.batches.create(requests=batch_requests(10, "a"))  # type: ignore[arg-type]
        b = await client.messages.batches.create(requests=batch_requests(10, "b"))  # type: ignore[arg-type]
        clock.t += 50  # half of each answered
        cancelling = await client.messages.batches.cancel(a.id)
        assert cancelling.processing_status == "canceling"
        clock.t += 10
        ended = await client.messages.batches.retrieve(a.id)
        assert ended.processing_status == "ended" and ended.cancel_initiated_at is not None
        assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (5, 5)
        clock.t += 1000
        stuck = await client.messages.batches.retrieve(b.id)  # every 2nd batch stops at half
        assert stuck.processing_status == "in_progress"
        clock.t += 86_400
        expired = await client.messages.batches.retrieve(b.id)
        assert (expired.request_counts.succeeded, expired.request_counts.expired) == (5, 5)
        kinds = {r.custom_id: r.result.type async for r in
                 await client.messages.batches.results(b.id)}
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.create(requests=[*batch_requests(1), *batch_requests(1)])  # type: ignore[arg-type]
    assert sorted(kinds.values()) == ["expired"] * 5 + ["succeeded"] * 5
    counts = fake.batches.counts()
    assert counts["batches_created"] == 2 and counts["requests_submitted"] == 20
    assert counts["max_submitted_per_custom_id"] == 1 and counts["requests_answered"] == 10
    fake.batches.configure(line_fail_rate=1.0, expire_every=0)
    async with serve(fake) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0)
        c = await client.messages.batches.create(requests=batch_requests(2, "c"))  # type: ignore[arg-type]
        clock.t += 200
        failed = [r.result async for r in await client.messages.batches.results(c.id)]
    assert [r.type for r in failed] == ["errored", "errored"]
    assert failed[0].error.error.type == "overloaded_error"


def test_results_are_jsonl_in_anthropic_shape() -> None:
    clock = Clock()
    fake = FakeAnthropic(wall=clock)
    fake.batches.configure(processing_seconds=1.0)
    b = fake.batches.create(orjson.dumps({"requests": batch_requests(2)}))
    clock.t += 5
    lines = fake.batches.results(b["id"]).splitlines()
    assert [orjson.loads(x)["result"]["type"] for x in lines] == ["succeeded"] * 2
