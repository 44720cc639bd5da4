"""The fake OpenAI server, over real HTTP on 127.0.0.1 (in-process, and once as a subprocess)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

import dynogen.testing
from dynogen.testing import (
    FAULT_KINDS,
    FakeOpenAI,
    FakeServer,
    Fault,
    Latency,
    serve,
    start_fake_process,
)
from dynogen.testing.fake_answers import count_prompt_tokens
from dynogen.testing.fake_limits import TokenBucket, format_duration

NAMES = ["sentence", "label", "idx"]
SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["tasks"],
    "properties": {"tasks": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "additionalProperties": False,
        "required": ["instruction", "input_fields", "output_field"],
        "properties": {
            "instruction": {"type": "string", "maxLength": 400},
            "input_fields": {"type": "array", "minItems": 1, "maxItems": 4,
                             "items": {"type": "string", "enum": NAMES}},
            "output_field": {"type": "string", "enum": NAMES}}}}}}


def request_body(user: str = "Dataset glue/sst2.", *, max_tokens: int = 640,
                 fmt: str = "json_schema", names: list[str] = NAMES) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini", "temperature": 0, "seed": 0, "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": "You write tasks."},
                     {"role": "user", "content": user}]}
    if fmt == "json_schema":
        schema = orjson.loads(orjson.dumps(SCHEMA).replace(
            orjson.dumps(NAMES), orjson.dumps(names)))
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "tasks", "strict": True, "schema": schema}}
    elif fmt == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(s: aiohttp.ClientSession, server: FakeServer, body: Any = None,
               headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body or request_body())
    async with s.post(server.url + "/chat/completions", data=data,
                      headers={"content-type": "application/json", **(headers or {})}, **kw) as r:
        raw = await r.read()
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        return r.status, parsed, r.headers


def content_of(resp: dict[str, Any]) -> Any:
    return orjson.loads(resp["choices"][0]["message"]["content"])


def check_valid(tasks: dict[str, Any], names: list[str], max_items: int = 3) -> None:
    assert set(tasks) == {"tasks"}
    assert 1 <= len(tasks["tasks"]) <= max_items
    for t in tasks["tasks"]:
        assert set(t) == {"instruction", "input_fields", "output_field"}
        assert t["output_field"] in names
        assert t["input_fields"] and set(t["input_fields"]) <= set(names)
        assert len(t["input_fields"]) == len(set(t["input_fields"])) <= 4
        assert t["output_field"] not in t["input_fields"]
        assert 0 < len(t["instruction"]) <= 400


# ---- scripted answers --------------------------------------------------------------------------

async def test_scripted_answers_in_order_then_auto(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    whole = {"id": "x", "object": "chat.completion", "choices": [], "custom": True}
    fake.enqueue('{"tasks": []}', whole)
    async with serve(fake) as server:
        s1, r1, _ = await post(session, server)
        s2, r2, _ = await post(session, server)
        s3, r3, _ = await post(session, server)
    assert (s1, s2, s3) == (200, 200, 200)
    assert r1["choices"][0]["message"]["content"] == '{"tasks": []}'
    assert r1["choices"][0]["finish_reason"] == "stop"
    assert r2 == whole
    check_valid(content_of(r3), NAMES)  # queue empty: auto answer


async def test_each_http_fault_kind(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    fake.enqueue(
        Fault("rate_limit", limit_type="tokens", retry_after=0.25),
        Fault("insufficient_quota"),
        Fault("server_error"),
        Fault("unavailable"),
        Fault.http(502, b"bad gateway", {"x-custom": "1"}),
        Fault("not_json"),
        Fault("wrong_shape"),
        Fault("empty_choices"),
        Fault("length"),
        Fault("content_filter"),
        Fault("refusal"),
    )
    async with serve(fake) as server:
        got = [await post(session, server) for _ in range(11)]
        stats = fake.stats_dict()
    (rl, quota, e500, e503, e502, notjson, shape, empty, length, cfilter, refusal) = got
    assert rl[0] == 429 and rl[1]["error"]["type"] == "tokens"
    assert rl[1]["error"]["code"] == "rate_limit_exceeded"
    assert "Please try again in 250ms." in rl[1]["error"]["message"]
    assert rl[2]["retry-after-ms"] == "250" and rl[2]["retry-after"] == "1"
    assert quota[0] == 429 and quota[1]["error"]["code"] == "insufficient_quota"
    assert quota[1]["error"]["type"] == "insufficient_quota"
    assert e500[0] == 500 and e500[1]["error"]["type"] == "server_error"
    assert e503[0] == 503
    assert e502[0] == 502 and e502[1] == b"bad gateway" and e502[2]["x-custom"] == "1"
    assert notjson[0] == 200 and isinstance(notjson[1], bytes)
    assert shape[0] == 200 and "choices" not in shape[1]
    assert empty[0] == 200 and empty[1]["choices"] == []
    assert length[1]["choices"][0]["finish_reason"] == "length"
    with pytest.raises(orjson.JSONDecodeError):
        content_of(length[1])  # cut off mid-JSON
    assert cfilter[1]["choices"][0]["finish_reason"] == "content_filter"
    assert cfilter[1]["choices"][0]["message"]["content"] is None
    assert refusal[1]["choices"][0]["message"]["refusal"]
    assert refusal[1]["choices"][0]["message"]["content"] is None
    assert stats["totals"]["faults"] == {
        k: 1 for k in ("rate_limit", "insufficient_quota", "server_error", "unavailable", "http",
                       "not_json", "wrong_shape", "empty_choices", "length", "content_filter",
                       "refusal")}
    assert stats["totals"]["by_status"] == {"200": 6, "429": 2, "500": 1, "502": 1, "503": 1}


async def test_slow_reset_and_timeout_faults(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    fake.enqueue(Fault.slow(0.05, content="late"), Fault("reset"), Fault.timeout(30.0))
    async with serve(fake) as server:
        status, resp, _ = await post(session, server)
        assert status == 200 and resp["choices"][0]["message"]["content"] == "late"
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, server)
        with pytest.raises(asyncio.TimeoutError):
            await post(session, server, timeout=aiohttp.ClientTimeout(total=0.1))
    # Leaving the block at all shows the 30 s hang ends at shutdown (no clock read here).
    assert fake.stats_dict()["totals"]["faults"] == {"slow": 1, "reset": 1, "timeout": 1}


async def test_history_records_bodies_and_headers_but_repr_masks_the_key(
        session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        await post(session, server, headers={"content-type": "application/json",
                                             "Authorization": "Bearer sk-secret-123"})
        await post(session, server, b"not json")
    assert fake.history[0].body == request_body()
    assert fake.history[0].headers["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in repr(fake.history[0])
    assert len(fake.history) == 2


async def test_bad_requests_and_api_key(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI(api_key="sk-right")
    ok_headers = {"content-type": "application/json", "Authorization": "Bearer sk-right"}
    async with serve(fake) as server:
        s_noauth, r_noauth, _ = await post(session, server)
        s_ok, _, _ = await post(session, server, headers=ok_headers)
        s_nomsg, r_nomsg, _ = await post(session, server, {"model": "m"}, headers=ok_headers)
        async with session.post(server.url + "/chat/completions", data=b"{", headers=ok_headers
                                ) as r:
            s_bad = r.status
    assert s_noauth == 401 and r_noauth["error"]["code"] == "invalid_api_key"
    assert s_ok == 200
    assert s_nomsg == 400 and r_nomsg["error"]["param"] == "messages"
    assert s_bad == 400


async def test_insufficient_quota_mode(session: aiohttp.ClientSession) -> None:
    async with serve(FakeOpenAI(insufficient_quota=True)) as server:
        status, resp, _ = await post(session, server)
    assert status == 429 and resp["error"]["code"] == "insufficient_quota"


async def test_openai_sdk_reads_answers_and_typed_429() -> None:
    fake = FakeOpenAI()
    fake.enqueue(Fault("rate_limit", limit_type="requests"))
    async with serve(fake) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.RateLimitError) as err:
            await client.chat.completions.create(**request_body())
        assert err.value.body["type"] == "requests"  # type: ignore[index]
        done = await client.chat.completions.create(**request_body())
        await client.close()
    assert done.usage is not None and done.usage.prompt_tokens > 0
    check_valid(orjson.loads(done.choices[0].message.content or ""), NAMES)
    assert fake.history[-1].headers["authorization"] == "Bearer sk-test"


# ---- auto answers ------------------------------------------------------------------------------

async def test_auto_answers_are_valid_varied_and_deterministic(
        session: aiohttp.ClientSession) -> None:
    names = ["premise", "hypothesis", "label", "idx", "source"]
    async with serve(FakeOpenAI()) as server:
        answers = [content_of((await post(session, server, request_body(
            f"unit {i}", names=names)))[1]) for i in range(30)]
        again = content_of((await post(session, server, request_body("unit 0", names=names)))[1])
        status, resp, _ = await post(session, server, request_body(names=names))
    for a in answers:
        check_valid(a, names)
    assert again == answers[0]
    assert {len(a["tasks"]) for a in answers} == {1, 2, 3}
    firsts = {a["tasks"][0]["instruction"] for a in answers}
    assert len(firsts) == len(answers)  # every unit gets its own instruction
    usage = resp["usage"]
    content = resp["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == len(content) // 4 + 1
    assert usage["prompt_tokens"] == count_prompt_tokens(request_body(names=names))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    for key in ("id", "object", "created", "model", "system_fingerprint"):
        assert resp[key]


async def test_auto_answers_without_a_schema(session: aiohttp.ClientSession) -> None:
    fields_line = request_body("Describe tasks.\nFields: title, body (string), stars\n",
                               fmt="json_object")
    embedded = request_body('{"fields": [{"name": "q", "type": "string"}, '
                            '{"name": "a", "type": "string"}]}', fmt="none")
    unreadable = request_body("no field names anywhere", fmt="json_object")
    async with serve(FakeOpenAI()) as server:
        a = content_of((await post(session, server, fields_line))[1])
        b = content_of((await post(session, server, embedded))[1])
        c = content_of((await post(session, server, unreadable))[1])
    check_valid(a, ["title", "body", "stars"])
    check_valid(b, ["q", "a"])
    assert c == {"tasks": []}


async def test_output_tokens_pads_valid_json_and_max_tokens_cuts_it(
        session: aiohttp.ClientSession) -> None:
    async with serve(FakeOpenAI(output_tokens=500)) as server:
        _, padded, _ = await post(session, server, request_body(max_tokens=640))
        _, cut, _ = await post(session, server, request_body(max_tokens=100))
    check_valid(content_of(padded), NAMES)
    assert padded["usage"]["completion_tokens"] == 500
    assert padded["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] == 100
    assert cut["choices"][0]["finish_reason"] == "length"
    with pytest.raises(orjson.JSONDecodeError):
        content_of(cut)


async def test_output_tokens_range_is_drawn_per_request(session: aiohttp.ClientSession) -> None:
    async with serve(FakeOpenAI(output_tokens=(200, 300))) as server:
        used = [(await post(session, server, request_body(f"u{i}")))[1]["usage"]
                ["completion_tokens"] for i in range(10)]
    assert all(200 <= u <= 300 for u in used) and len(set(used)) > 1


# ---- rate limits -------------------------------------------------------------------------------

async def test_rpm_burst_then_429_then_refill(session: aiohttp.ClientSession) -> None:
    clock = Clock()
    fake = FakeOpenAI(rpm=600, clock=clock)  # 10/s, a 1 s burst holds 10
    async with serve(fake) as server:
        first = [await post(session, server) for _ in range(10)]
        status, resp, headers = await post(session, server)
        clock.t += 0.1  # one request's worth of refill
        refilled, _, _ = await post(session, server)
        again, _, _ = await post(session, server)
    assert [s for s, _, _ in first] == [200] * 10
    assert first[0][2]["x-ratelimit-limit-requests"] == "600"
    assert first[0][2]["x-ratelimit-remaining-requests"] == "599"
    assert first[0][2]["x-ratelimit-reset-requests"] == "100ms"
    assert status == 429
    assert resp["error"]["type"] == "requests" and resp["error"]["code"] == "rate_limit_exceeded"
    assert resp["error"]["param"] is None
    assert resp["error"]["message"].startswith(
        "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): "
        "Limit 600, Used 10, Requested 1. Please try again in 100ms.")
    assert headers["retry-after-ms"] == "100" and headers["retry-after"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert (refilled, again) == (200, 429)
    totals = fake.stats_dict()["totals"]
    assert totals["rate_limited"] == {"requests": 2} and totals["2xx"] == 11


async def test_rpm_refills_as_its_clock_moves(session: aiohttp.ClientSession) -> None:
    now = [1000.0]
    fake = FakeOpenAI(rpm=600, burst_seconds=0.5, clock=lambda: now[0])  # 10/s, holds 5
    async with serve(fake) as server:
        burst = await asyncio.gather(*(post(session, server) for _ in range(20)))
        now[0] += 0.11  # refills one request
        after, _, _ = await post(session, server)
    statuses = [s for s, _, _ in burst]
    assert 5 <= statuses.count(200) < 20 and 429 in statuses and after == 200


async def test_tpm_is_charged_prompt_plus_max_tokens(session: aiohttp.ClientSession) -> None:
    clock = Clock()
    fake = FakeOpenAI(tpm=60_000, clock=clock)  # 1000 tokens/s, holds 1000
    body = request_body(max_tokens=400)
    cost = count_prompt_tokens(body) + 400
    async with serve(fake) as server:
        s1, _, h1 = await post(session, server, body)
        s2, _, _ = await post(session, server, body)
        s3, r3, h3 = await post(session, server, body)
        big_status, big, _ = await post(session, server, request_body(max_tokens=70_000))
    assert (s1, s2, s3) == (200, 200, 429)
    assert h1["x-ratelimit-remaining-tokens"] == str(60_000 - cost)
    assert r3["error"]["type"] == "tokens"
    assert "on tokens per min (TPM): Limit 60000, Used " in r3["error"]["message"]
    assert f"Requested {cost}." in r3["error"]["message"]
    wait_ms = round((cost - (1000 - 2 * cost)) / 1000 * 1000)
    assert h3["retry-after-ms"] == str(wait_ms)
    assert big_status == 429 and big["error"]["message"].startswith("Request too large")


async def test_admin_limits_change_mid_run_and_reset(session: aiohttp.ClientSession) -> None:
    clock = Clock()
    fake = FakeOpenAI(clock=clock)
    async with serve(fake) as server:
        assert (await post(session, server))[0] == 200
        async with session.post(server.root + "/admin/limits", json={"rpm": 60}) as r:
            assert r.status == 200 and (await r.json())["rpm"] == 60
        statuses = [(await post(session, server))[0] for _ in range(3)]
        async with session.post(server.root + "/admin/limits", json={"rpm": -1}) as r:
            assert r.status == 400
        async with session.post(server.root + "/admin/limits", json={"burst": 1}) as r:
            assert r.status == 400
        async with session.post(server.root + "/admin/limits", json={"rpm": None}) as r:
            assert (await r.json())["rpm"] is None
        unlimited = [(await post(session, server))[0] for _ in range(5)]
        async with session.get(server.root + "/stats") as r:
            before = await r.json()
        async with session.post(server.root + "/admin/reset") as r:
            assert r.status == 200
        async with session.get(server.root + "/stats") as r:
            after = await r.json()
    assert statuses == [200, 429, 429]
    assert unlimited == [200] * 5
    assert before["totals"]["requests"] == 9 and before["totals"]["429"] == 2
    assert after["totals"]["requests"] == 0 and fake.history == []


async def test_stats_timeline_and_other_routes(session: aiohttp.ClientSession) -> None:
    clock = Clock()
    fake = FakeOpenAI(rpm=120, clock=clock)  # 2/s, holds 2
    async with serve(fake) as server:
        for _ in range(3):
            await post(session, server)
        clock.t += 2.5
        await post(session, server)
        async with session.get(server.root + "/stats") as r:
            stats = await r.json()
        async with session.get(server.root + "/health") as r:
            assert (await r.json()) == {"status": "ok"}
        async with session.get(server.url + "/models") as r:
            assert (await r.json())["data"][0]["id"] == "gpt-4o-mini"
    tl = stats["timeline"]
    assert tl["completions"] == [2, 0, 1] and tl["rate_limited"] == [1, 0, 0]
    assert sum(tl["tokens"]) == stats["totals"]["tokens"] > 0
    assert stats["totals"]["completions"] == 3
    assert stats["limits"]["rpm"] == 120 and stats["limits"]["tpm"] is None


# ---- injected faults and latency ---------------------------------------------------------------

async def test_injected_faults_follow_the_seed(session: aiohttp.ClientSession) -> None:
    async def run(seed: int) -> list[int]:
        fake = FakeOpenAI(fault_rate=0.5, fault_kinds=["server_error", "unavailable"], seed=seed)
        async with serve(fake) as server:
            return [(await post(session, server))[0] for _ in range(40)]

    a, b = await run(7), await run(7)
    assert a == b
    assert {200, 500, 503} == set(a)


def test_latency_model() -> None:
    lat = Latency(median=0.3, sigma=0.5, per_token=0.01, tail_p=0.1, tail_seconds=10)
    draws = [lat.sample(random.Random(i), 10) for i in range(2000)]
    assert draws == [lat.sample(random.Random(i), 10) for i in range(2000)]
    body = sorted(d for d in draws if d < 10)
    assert 0.35 < body[len(body) // 2] < 0.45  # median 0.3 plus 10 tokens at 10 ms
    assert 0.05 < sum(d >= 10 for d in draws) / len(draws) < 0.15
    assert Latency().sample(random.Random(0), 1000) == 0.0


def test_latency_delays_answers() -> None:
    # The delay is decided with the reply (the server then waits it out, as for a slow
    # fault): no clock is read here.
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert FakeOpenAI().reply(body, {}).delay == 0
    assert FakeOpenAI(latency=Latency(median=0.05)).reply(body, {}).delay >= 0.05


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("meteor")
    with pytest.raises(ValueError, match="fault_rate"):
        FakeOpenAI(fault_rate=2.0)
    with pytest.raises(ValueError, match="positive"):
        FakeOpenAI(rpm=0)
    with pytest.raises(ValueError, match="output_tokens"):
        FakeOpenAI(output_tokens=(300, 200))
    with pytest.raises(TypeError):
        FakeOpenAI().enqueue(3)  # type: ignore[arg-type]


# ---- pure pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0s"), (0.0004, "1ms"), (0.12, "120ms"), (1.0, "1s"), (18.642, "18.642s"),
    (360.0, "6m0s"), (86.4, "1m26.4s"), (3725.0, "1h2m5s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_bucket_admits_a_request_larger_than_its_burst_by_going_into_debt() -> None:
    b = TokenBucket(6000, burst_seconds=1.0, now=0.0)  # 100/s, holds 100
    assert b.wait(250, now=0.0) == 0.0
    b.take(250)
    assert b.wait(1, now=0.0) == pytest.approx(1.51)
    assert b.wait(1, now=1.51) == 0.0


def test_public_api() -> None:
    # Each advertised name resolves lazily to the object its home module exports, and
    # nothing else is reachable through the package.
    import importlib

    from dynogen.testing import _HOME

    assert set(dynogen.testing.__all__) == set(_HOME)
    for name, home in _HOME.items():
        mod = importlib.import_module(f"dynogen.testing.{home}")
        assert name in mod.__all__
        assert getattr(dynogen.testing, name) is getattr(mod, name)
    with pytest.raises(AttributeError):
        _ = dynogen.testing.not_a_name
    assert "timeout" in FAULT_KINDS


# ---- its own process ---------------------------------------------------------------------------

async def test_subprocess_serves_and_stops_cleanly(session: aiohttp.ClientSession) -> None:
    with start_fake_process(rpm=6000, output_tokens=(300, 320)) as proc:
        async with session.post(proc.url + "/chat/completions",
                                data=orjson.dumps(request_body())) as r:
            assert r.status == 200
            assert 300 <= (await r.json())["usage"]["completion_tokens"] <= 320
        assert proc.set_limits(rpm=60)["rpm"] == 60
        stats = proc.stats()
    assert stats["totals"]["2xx"] == 1 and stats["limits"]["tpm"] is None
    assert proc.proc.returncode == 0


def test_subprocess_with_bad_options_says_why() -> None:
    with pytest.raises(RuntimeError, match="fault_rate"):
        start_fake_process(fault_rate=3)


# ---- exact token counting and the prompt cache ------------------------------------------------

def _long_system(n_words: int) -> str:
    rng = random.Random(n_words)
    words = ["dataset", "field", "label", "task", "answer", "row", "input", "output", "model"]
    return " ".join(rng.choice(words) + str(rng.randint(0, 99)) for _ in range(n_words))


async def test_exact_tokens_bill_messages_schema_and_content_as_counted(
        session: aiohttp.ClientSession) -> None:
    from dynogen.prompts.tokens import RESPONSE_FORMAT_OVERHEAD, TokenCounter

    counter = TokenCounter("o200k_base")
    fake = FakeOpenAI(exact_tokens=True, output_tokens=(30, 200), seed=3)
    bodies = [request_body(f"Dataset glue/{k}: {'long text ' * k}", fmt=fmt)
              for k in (1, 7, 40) for fmt in ("json_schema", "json_object", "none")]
    async with serve(fake) as server:
        answers = [await post(session, server, b) for b in bodies]
    for body, (status, resp, _) in zip(bodies, answers, strict=True):
        assert status == 200
        rf = body.get("response_format")
        # What dynogen reserves, less the slack it adds for OpenAI's undocumented schema form.
        slack = RESPONSE_FORMAT_OVERHEAD if rf and rf["type"] == "json_schema" else 0
        want = counter.count_messages(body["messages"], response_format=rf) - slack
        assert resp["usage"]["prompt_tokens"] == want
        content = resp["choices"][0]["message"]["content"]
        assert resp["usage"]["completion_tokens"] == counter.count(content)
        assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        if slack:
            check_valid(orjson.loads(content), NAMES)
        else:
            assert "tasks" in orjson.loads(content)  # valid JSON at any length
    # The same request without exact counting is billed differently (chars / 4).
    assert count_prompt_tokens(bodies[0]) != answers[0][1]["usage"]["prompt_tokens"]


async def test_exact_tokens_meet_the_target_length_and_cut_at_max_tokens(
        session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI(exact_tokens=True, output_tokens=300)
    async with serve(fake) as server:
        _, long, _ = await post(session, server, request_body("a"))
        _, cut, _ = await post(session, server, request_body("b", max_tokens=50))
    assert 0.85 * 300 <= long["usage"]["completion_tokens"] <= 1.15 * 300
    check_valid(content_of(long), NAMES)
    assert cut["choices"][0]["finish_reason"] == "length"
    assert 45 <= cut["usage"]["completion_tokens"] <= 50


async def test_prompt_cache_reports_repeated_prefixes_in_128_token_steps(
        session: aiohttp.ClientSession) -> None:
    from dynogen.prompts.tokens import TokenCounter

    counter = TokenCounter("o200k_base")
    system = _long_system(900)
    shared = counter.count_prefix([{"role": "system", "content": system}])
    assert shared > 1200

    def body(user: str, fmt: str = "none", names: list[str] = NAMES) -> dict[str, Any]:
        b = request_body(user, fmt=fmt, names=names)
        b["messages"][0]["content"] = system
        return b

    fake = FakeOpenAI(exact_tokens=True, prompt_cache=True)
    async with serve(fake) as server:
        usage = [(await post(session, server, b))[1]["usage"] for b in (
            body("first"), body("second, another unit"), body("third", fmt="json_schema"),
            body("fourth", fmt="json_schema"),
            body("fifth", fmt="json_schema", names=["question", "answer"]))]
        fake.reset()
        after_reset = (await post(session, server, body("sixth")))[1]["usage"]
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usage]
    assert cached[0] == 0  # nothing seen yet
    assert cached[1] % 128 == 0 and 1024 <= cached[1] <= shared < cached[1] + 128 + 8
    # The schema comes before the system message: a new schema misses, the same one hits.
    assert cached[2] == 0 and cached[3] >= 1024 and cached[4] == 0
    assert after_reset["prompt_tokens_details"]["cached_tokens"] == 0
    # Short prompts are never cached, however often they repeat.
    short = FakeOpenAI(exact_tokens=True, prompt_cache=True)
    async with serve(short) as server:
        again = [(await post(session, server))[1]["usage"] for _ in range(2)]
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in again] == [0, 0]


def test_exact_token_options_and_flags() -> None:
    from dynogen.testing.fake_openai import _fake_from_args, _parser

    with pytest.raises(ValueError, match="prompt_cache needs exact_tokens"):
        FakeOpenAI(prompt_cache=True)
    fake = _fake_from_args(_parser().parse_args(
        ["--exact-tokens", "--prompt-cache", "--model", "gpt-3.5-turbo"]))
    assert fake.exact is not None and fake.exact.prompt_cache
    assert fake.exact.counter.encoding == "cl100k_base"  # the model's, from the price table
    assert _fake_from_args(_parser().parse_args([])).exact is None
