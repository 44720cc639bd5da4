"""Anthropic's three per-minute limits, paced by the SplitLimiter, on a fake clock (no sleeps).

The fake server and the limiter read the same ``FakeClock``; requests reach the
fake through a ``MockTransport``, so a minute of traffic runs in a second and
every count is the server's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from dynogen.config import Config
from dynogen.execute.anthropic_client import AnthropicClient
from dynogen.execute.anthropic_headers import split
from dynogen.execute.anthropic_wire import prompt_figures
from dynogen.execute.base import Accounting, Request
from dynogen.execute.ledger import Ledger
from dynogen.execute.limits import SplitLimiter
from dynogen.execute.online import OnlineExecutor
from dynogen.execute.prices import PriceTable
from dynogen.execute.transport import MockTransport, RawResponse, SentRequest
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.tokens import TokenCounter
from dynogen.ratelimit import FakeClock, Limiter, RetryPolicy
from dynogen.testing.fake_anthropic import FakeAnthropic
from dynogen.units import Field, Unit

EPOCH = 1_800_000_000.0


def units(n: int, shared: bool) -> list[Unit]:
    """``shared``: the same fields (so the same schema) in every unit, else each its own."""
    return [Unit(f"set{i:04d}", "default", f"Short sentences about topic {i}, each labelled.",
                 (Field("sentence" if shared else f"sentence_{i}", "string"),
                  Field("label", "class_label", ("no", "yes")),
                  Field("source", "string")), license="mit") for i in range(n)]


def requests(n: int, shared: bool = False) -> list[Request]:
    pb = PromptBuilder(Config(model="claude-sonnet-4-5"), TokenCounter("o200k_base"))
    out = []
    for u in units(n, shared):
        p = pb.request(u, "description")
        out.append(Request(orjson.dumps(p.body), p.prompt_tokens, p.max_tokens))
    return out


def rig(fake: FakeAnthropic, clock: FakeClock, **limits: float | None) -> OnlineExecutor:
    def handler(sent: SentRequest) -> RawResponse:
        reply = fake.reply(sent.body, sent.headers)
        fake.finished(reply, orjson.loads(sent.body)["max_tokens"])
        return RawResponse(reply.status, reply.headers, reply.body)

    client = AnthropicClient("http://fake", "key", transport=MockTransport(handler))
    main = Limiter(rpm=limits.get("rpm"), tpm=limits.get("itpm"), clock=clock)
    out = Limiter(tpm=limits.get("otpm"), max_in_flight=main.max_senders, clock=clock)
    pacing = SplitLimiter(main, out, split=split)
    return OnlineExecutor(client, pacing, Ledger(PriceTable.load().lookup("claude-sonnet-4-5")),
                          None, RetryPolicy(), concurrency=main.max_senders,
                          figures=prompt_figures)


async def drive(ex: OnlineExecutor, reqs: list[Request], clock: FakeClock) -> list[Any]:
    sem = asyncio.Semaphore(64)

    async def one(r: Request) -> Any:
        async with sem:
            return await ex.complete(r, Accounting())

    return await clock.run(asyncio.gather(*(one(r) for r in reqs)))


async def test_split_permits_refund_input_and_output_apart() -> None:
    clock = FakeClock()
    main = Limiter(rpm=6_000, tpm=600_000, clock=clock)
    out = Limiter(tpm=600_000, clock=clock)
    limits = SplitLimiter(main, out, split=split)
    permit = await clock.run(limits.acquire(1_000 + 500, 500))
    limits.answered(permit, prompt=1_000, cached=800, completion=100)
    assert main.snapshot()["tokens_in_window"] == 200  # cache reads are free
    assert out.snapshot()["tokens_in_window"] == 100   # output: what was generated
    p2 = await clock.run(limits.acquire(700, 200))
    limits.release(p2, 0)  # never counted: everything comes back
    assert main.snapshot()["requests_in_window"] == 1
    limits.pause(2.0, "output_tokens")
    assert out.paused_until == 2.0 and main.paused_until is None
    limits.pause(1.0, "requests")
    assert main.paused_until == 1.0


async def test_a_rate_limited_answer_is_retried_after_its_retry_after() -> None:
    clock = FakeClock()
    fake = FakeAnthropic(clock=clock.now, wall=lambda: EPOCH + clock.now())
    from dynogen.testing.fake_answers import Fault

    fake.enqueue(Fault("rate_limit", retry_after=2.0), Fault("unavailable"))
    ex = rig(fake, clock, rpm=6000)
    [comp] = await drive(ex, requests(1), clock)
    assert comp.finish_reason == "stop" and orjson.loads(comp.content)["tasks"]
    assert clock.now() >= 2.0  # waited what retry-after said
    assert fake.stats.by_status == {429: 1, 529: 1, 200: 1}
    assert ex.session["http_429"] == ex.session["http_529"] == 1


async def test_output_tokens_bind_and_are_paced_without_429s() -> None:
    """OTPM 60,000 with max_tokens 640 held per request and ~100 generated: refunds let
    ~6x more requests through than max_tokens alone would, and none is refused."""
    clock = FakeClock()
    fake = FakeAnthropic(rpm=100_000, itpm=50_000_000, otpm=60_000, clock=clock.now,
                         wall=lambda: EPOCH + clock.now())
    ex = rig(fake, clock, rpm=100_000, itpm=50_000_000, otpm=60_000)
    reqs = requests(600)
    await drive(ex, reqs, clock)
    stats = fake.stats_dict()["totals"]
    assert stats["429"] == 0 and stats["completions"] == 600
    out_per_min = fake.bill()["online"]["output"] / clock.now() * 60
    assert 0.9 * 60_000 <= out_per_min <= 60_000 * 1.05


async def test_input_tokens_bind_and_the_limit_is_learnt_from_headers() -> None:
    """Told nothing, the client learns ITPM from the headers and stays under it."""
    clock = FakeClock()
    fake = FakeAnthropic(rpm=100_000, itpm=300_000, otpm=10_000_000, clock=clock.now,
                         wall=lambda: EPOCH + clock.now(), round_remaining=False)
    ex = rig(fake, clock)
    await drive(ex, requests(400), clock)
    stats = fake.stats_dict()["totals"]
    assert stats["completions"] == 400
    assert stats["429"] <= 4  # the first answers teach the limits; at most a burst is refused
    assert isinstance(ex.limiter, SplitLimiter)
    assert ex.limiter.main.snapshot()["tpm"] == 300_000
    assert ex.limiter.output.snapshot()["tpm"] == 10_000_000
    in_per_min = fake.bill()["online"]["input"] / clock.now() * 60
    assert in_per_min <= 300_000 * 1.05


async def test_a_shared_prefix_is_cached_and_its_reads_do_not_count_against_itpm() -> None:
    """Units with the same schema share tools, system prompt and few-shot turns: from the
    second request on the prefix is marked, written once and read after; reads are billed
    at the cached price and are not input tokens for the limit, so the run is faster."""
    clock = FakeClock()
    fake = FakeAnthropic(rpm=100_000, itpm=300_000, otpm=10_000_000, clock=clock.now,
                         wall=lambda: EPOCH + clock.now(), round_remaining=False)
    ex = rig(fake, clock, rpm=100_000, itpm=300_000, otpm=10_000_000)
    await drive(ex, requests(200, shared=True), clock)
    bill = fake.bill()["online"]
    assert fake.stats_dict()["totals"]["429"] == 0
    assert bill["cache_read"] > 10 * bill["input"] and 0 < bill["cache_write"] < bill["cache_read"]
    totals = ex.ledger.totals()["tokens"]
    assert totals["cached"] == bill["cache_read"] and totals["cache_write"] == bill["cache_write"]
    assert totals["prompt"] == bill["input"] + bill["cache_read"] + bill["cache_write"]
    # Had reads counted against ITPM, the run would need at least this long:
    assert clock.now() < 0.5 * totals["prompt"] / (300_000 / 60)
