"""The fake server's Batch API (/v1/files, /v1/batches), driven by the real openai SDK."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from dynogen.testing import FakeOpenAI, FakeServer, Fault, serve, start_fake_process
from dynogen.testing.fake_answers import count_prompt_tokens
from dynogen.testing.fake_batches import FakeBatches, batches_of


class Clock:
    """Unix time that moves only when told to."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def chat_body(user: str, max_tokens: int = 64) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": "Fields: sentence, label"},
                         {"role": "user", "content": user}]}


def jsonl(n: int, prefix: str = "r", url: str = "/v1/chat/completions") -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": url,
                                  "body": chat_body(f"{prefix} number {i}")}) + b"\n"
                    for i in range(n))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def served(clock: Clock) -> AsyncIterator[tuple[FakeServer, FakeBatches, openai.AsyncOpenAI]]:
    fake = FakeOpenAI()
    batches = FakeBatches(fake, clock=clock, validating=10, in_progress=100, finalizing=10)
    async with serve(fake) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0)
        try:
            yield server, batches, client
        finally:
            await client.close()


async def submit(client: openai.AsyncOpenAI, data: bytes, **meta: str) -> Any:
    f = await client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                       completion_window="24h", metadata=meta or None)


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [orjson.loads(x) for x in content.content.splitlines() if x.strip()]


async def test_a_batch_moves_through_its_states_and_answers_like_the_chat_route(
        served: Any, clock: Clock) -> None:
    server, batches, client = served
    b = await submit(client, jsonl(10), run="r1", input="in-1")
    assert (b.status, b.metadata, b.request_counts.total) == ("validating", {"run": "r1",
                                                                              "input": "in-1"}, 0)
    clock.t += 10
    b = await client.batches.retrieve(b.id)
    assert b.status == "in_progress" and b.request_counts.total == 10
    assert b.request_counts.completed == 0
    clock.t += 50  # half the in_progress time: half the lines answered
    b = await client.batches.retrieve(b.id)
    assert (b.status, b.request_counts.completed) == ("in_progress", 5)
    clock.t += 50
    b = await client.batches.retrieve(b.id)
    assert (b.status, b.request_counts.completed, b.output_file_id) == ("finalizing", 10, None)
    clock.t += 10
    b = await client.batches.retrieve(b.id)
    assert b.status == "completed" and b.error_file_id is None
    assert b.completed_at == int(clock.t) and b.in_progress_at == b.created_at + 10
    out = await lines_of(client, b.output_file_id)
    assert [x["custom_id"] for x in out] == [f"r{i}" for i in range(10)]
    # The same body bytes through the chat route get the same content (the auto answer is
    # a function of the body) and the same usage.
    async with aiohttp.ClientSession() as s, s.post(
            server.url + "/chat/completions", data=orjson.dumps(chat_body("r number 3"))) as r:
        direct = orjson.loads(await r.read())
    line = out[3]
    assert line["error"] is None and line["response"]["status_code"] == 200
    assert line["id"].startswith("batch_req_") and line["response"]["request_id"]
    body = line["response"]["body"]
    assert body["choices"] == direct["choices"] and body["usage"] == direct["usage"]
    assert b.usage is not None and b.usage.input_tokens == sum(
        x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
    c = batches.counts()
    assert (c["files_created"], c["batches_created"], c["lines_processed"]) == (1, 1, 10)
    assert c["billed"]["lines"] == 10


async def test_lines_take_scripted_answers_and_are_not_rate_limited(clock: Clock) -> None:
    fake = FakeOpenAI(rpm=1)  # the chat route would refuse all but the first
    FakeBatches(fake, clock=clock, validating=0, in_progress=0, finalizing=0)
    fake.enqueue("first", Fault("server_error"))
    async with serve(fake) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0)
        b = await submit(client, jsonl(4))
        b = await client.batches.retrieve(b.id)
        assert b.status == "completed"
        assert (b.request_counts.completed, b.request_counts.failed) == (3, 1)
        out = await lines_of(client, b.output_file_id)
        err = await lines_of(client, b.error_file_id)
        assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "first"
        assert [x["custom_id"] for x in err] == ["r1"]
        assert err[0]["response"]["status_code"] == 500 and err[0]["error"] is None
        assert err[0]["response"]["body"]["error"]["type"] == "server_error"
        await client.close()


async def test_files_retrieve_list_download_delete(served: Any) -> None:
    _, batches, client = served
    data = jsonl(3)
    f = await client.files.create(file=("mine.jsonl", io.BytesIO(data)), purpose="batch")
    assert (f.object, f.purpose, f.bytes, f.filename, f.status) == (
        "file", "batch", len(data), "mine.jsonl", "processed")
    assert (await client.files.retrieve(f.id)).id == f.id
    assert (await client.files.content(f.id)).content == data
    listed = [x.id async for x in client.files.list(purpose="batch")]
    assert listed == [f.id]
    deleted = await client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.files.create(file=("x.jsonl", io.BytesIO(data)), purpose="nonsense")  # type: ignore[arg-type]
    await client.files.create(file=("again.jsonl", io.BytesIO(data)), purpose="batch")
    assert batches.counts()["duplicate_uploads"] == 1


async def test_list_pages_with_after_and_limit_newest_first(served: Any) -> None:
    _, _, client = served
    made = [(await submit(client, jsonl(1, f"b{i}-"), run="x", n=str(i))).id for i in range(7)]
    page = await client.batches.list(limit=3)
    assert [b.id for b in page.data] == made[::-1][:3] and page.has_more
    page2 = await client.batches.list(limit=3, after=page.data[-1].id)
    assert [b.id for b in page2.data] == made[::-1][3:6]
    every = [b async for b in client.batches.list(limit=2)]  # the SDK follows the cursor
    assert [b.id for b in every] == made[::-1]
    assert [b.metadata["n"] for b in every if b.metadata] == [str(i) for i in range(6, -1, -1)]


async def test_cancel_keeps_what_finished(served: Any, clock: Clock) -> None:
    _, batches, client = served
    b = await submit(client, jsonl(10))
    clock.t += 10 + 30  # 3 of 10 answered
    b = await client.batches.cancel(b.id)
    assert b.status == "cancelled" and b.request_counts.completed == 3
    out = await lines_of(client, b.output_file_id)
    err = await lines_of(client, b.error_file_id)
    assert [x["custom_id"] for x in out] == ["r0", "r1", "r2"]
    assert len(err) == 7 and {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert all(x["response"] is None for x in err)
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(b.id)
    batches.configure(cancelling=5)
    b2 = await submit(client, jsonl(2, "c"))
    b2 = await client.batches.cancel(b2.id)
    assert b2.status == "cancelling"
    clock.t += 5
    assert (await client.batches.retrieve(b2.id)).status == "cancelled"
    assert batches.counts()["lines_processed"] == 3


async def test_failed_lines_expired_and_failed_batches(clock: Clock) -> None:
    fake = FakeOpenAI()
    batches = FakeBatches(fake, clock=clock, validating=1, in_progress=10, finalizing=1,
                          line_fail_rate=0.2, expire_every=3, fail_every=4, expire_fraction=0.5,
                          seed=3)
    async with serve(fake) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0)
        made = [await submit(client, jsonl(20, f"b{i}-")) for i in range(4)]
        clock.t += 100
        done = [await client.batches.retrieve(b.id) for b in made]
        assert [b.status for b in done] == ["completed", "completed", "expired", "failed"]
        failed = done[3]
        assert failed.errors is not None and failed.errors.data
        assert failed.errors.data[0].code == "server_error" and failed.output_file_id is None
        expired = done[2]
        assert expired.expired_at is not None
        out = await lines_of(client, expired.output_file_id)
        err = await lines_of(client, expired.error_file_id)
        assert len(out) + len(err) == 20
        gone = [x for x in err if x["error"] is not None]
        assert len(gone) == 10 and {x["error"]["code"] for x in gone} == {"batch_expired"}
        for i, b in enumerate(done[:2]):
            out = await lines_of(client, b.output_file_id)
            err = await lines_of(client, b.error_file_id)
            assert b.request_counts.failed == len(err) and b.request_counts.completed == len(out)
            assert sorted(x["custom_id"] for x in out + err) == sorted(
                f"b{i}-{j}" for j in range(20))
            assert {x["response"]["status_code"] for x in err} <= {500}
        c = batches.counts()
        total_err = sum(b.request_counts.failed for b in done[:3])
        assert 0 < total_err < 30
        assert c["lines_processed"] == 20 + 20 + 10 and c["batches_created"] == 4
        assert c["max_processed_per_custom_id"] == 1
        assert c["by_status"] == {"completed": 2, "expired": 1, "failed": 1}
        await client.close()


async def test_validation_failures_name_the_line(served: Any, clock: Clock) -> None:
    _, _, client = served
    dup = jsonl(2) + jsonl(1)
    wrong_url = jsonl(2, url="/v1/embeddings")
    not_json = jsonl(1) + b"{oops\n"
    made = [await submit(client, data) for data in (dup, wrong_url, not_json)]
    clock.t += 10
    got = [await client.batches.retrieve(b.id) for b in made]
    assert [b.status for b in got] == ["failed"] * 3
    assert [(b.errors.data[0].code, b.errors.data[0].line) for b in got if b.errors] == [
        ("duplicate_custom_id", 3), ("mismatched_endpoint", 1), ("invalid_json_line", 2)]


async def test_enqueued_token_limit_fails_the_batch_that_crosses_it(clock: Clock) -> None:
    fake = FakeOpenAI()
    one_file = sum(count_prompt_tokens(chat_body(f"a number {i}")) for i in range(5))
    FakeBatches(fake, clock=clock, validating=1, in_progress=100,
                enqueued_token_limit=one_file * 3 // 2)
    async with serve(fake) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0)
        first = await submit(client, jsonl(5, "a"))
        clock.t += 1
        assert (await client.batches.retrieve(first.id)).status == "in_progress"
        second = await submit(client, jsonl(5, "b"))
        clock.t += 1
        second = await client.batches.retrieve(second.id)
        assert second.status == "failed" and second.errors and second.errors.data
        assert second.errors.data[0].code == "token_limit_exceeded"
        await client.close()


async def test_refusals_on_upload_and_create(clock: Clock) -> None:
    fake = FakeOpenAI(api_key="sk-right")
    batches = FakeBatches(fake, clock=clock)
    async with serve(fake) as server:
        wrong = openai.AsyncOpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.files.create(file=("a.jsonl", io.BytesIO(jsonl(1))), purpose="batch")
        await wrong.close()
        client = openai.AsyncOpenAI(base_url=server.url, api_key="sk-right", max_retries=0)
        batches.configure(upload_error=429)
        with pytest.raises(openai.RateLimitError, match="quota"):
            await client.files.create(file=("a.jsonl", io.BytesIO(jsonl(1))), purpose="batch")
        batches.configure(upload_error=None, create_error=400)
        f = await client.files.create(file=("a.jsonl", io.BytesIO(jsonl(1))), purpose="batch")
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        batches.configure(create_error=None)
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(input_file_id="file-none",
                                        endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.BadRequestError, match="metadata"):
            await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"k" * 65: "v"})
        with pytest.raises(ValueError, match="unknown batch settings"):
            batches.configure(nonsense=1)
        c = batches.counts()
        assert (c["files_created"], c["batches_created"]) == (1, 0)
        await client.close()


def test_batches_of_attaches_defaults_once() -> None:
    fake = FakeOpenAI()
    first = batches_of(fake)
    assert batches_of(fake) is first
    mine = FakeBatches(fake, in_progress=5)
    assert batches_of(fake) is mine


async def test_a_fake_in_its_own_process_is_configured_over_http() -> None:
    with start_fake_process() as proc:
        settings = {"validating": 0, "in_progress": 0.2, "finalizing": 0, "line_fail_rate": 1.0}
        proc._call("/admin/batches", settings)
        client = openai.AsyncOpenAI(base_url=proc.url, api_key="test", max_retries=0)
        b = await submit(client, jsonl(3))
        for _ in range(100):
            b = await client.batches.retrieve(b.id)
            if b.status == "completed":
                break
            await asyncio.sleep(0.05)
        assert b.status == "completed" and b.request_counts.failed == 3
        counts = proc._call("/admin/batches")
        assert counts["lines_processed"] == 3 and counts["billed"]["lines"] == 0
        await client.close()
