"""The execution seam: one executor interface; online retries wait on the injected clock."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from dynogen import errors
from dynogen.execute.base import EMBEDDINGS, Accounting, Request, usage_counts
from dynogen.execute.client import ChatClient
from dynogen.execute.ledger import Ledger
from dynogen.execute.online import OnlineExecutor
from dynogen.execute.prices import Price
from dynogen.execute.transport import MockTransport, RawResponse, SentRequest
from dynogen.ratelimit import FakeClock, Limiter, RetryPolicy
from dynogen.store.cache import RequestCache

PRICE = Price(input=1.0, cached_input=0.5, output=2.0, batch_input=0.5, batch_output=1.0)
OK = orjson.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 2}})


def _executor(handler: object, clock: FakeClock, *, cache: RequestCache | None = None,
              max_retries: int = 3) -> OnlineExecutor:
    client = ChatClient("http://fake/v1", "sk-test", transport=MockTransport(handler))  # type: ignore[arg-type]
    return OnlineExecutor(client, Limiter(clock=clock), Ledger(PRICE), cache,
                          RetryPolicy(max_retries=max_retries, base=20.0, cap=60.0))


def test_every_exception_is_rooted_in_the_error_tree() -> None:
    from dynogen.io.cards import CardError
    from dynogen.io.features import FeaturesError

    for cls in (errors.RequestFailed, errors.Stopped, CardError, FeaturesError):
        assert issubclass(cls, errors.DynogenError), cls
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.DynogenError), name


async def test_retry_backoff_waits_on_the_limiters_clock_not_the_wall() -> None:
    clock = FakeClock()
    answers = [RawResponse(500, {}, b'{"error": "boom"}')] * 2 + [RawResponse(200, {}, OK)]
    seen: list[float] = []

    def handler(req: SentRequest) -> RawResponse:
        seen.append(clock.now())
        return answers[len(seen) - 1]

    ex = _executor(handler, clock)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    comp = await clock.run(ex.complete(Request(b'{"m":1}', 10, 5), acct := Accounting()))
    assert comp.content == "hi"
    assert acct.requests == 3 and acct.responses == 1
    assert ex.session["retries"] == 2
    # The waits between tries happened in fake time (base 20 s), not on the wall clock.
    assert seen[2] > seen[0] and clock.now() > 0
    assert loop.time() - t0 < 5


async def test_retries_run_out_into_request_failed_with_the_reason() -> None:
    clock = FakeClock()
    ex = _executor(lambda r: RawResponse(503, {}, b"{}"), clock, max_retries=2)
    with pytest.raises(errors.RequestFailed) as info:
        await clock.run(ex.complete(Request(b"{}", 10, 5), Accounting()))
    assert info.value.reason == "ServerError"
    assert isinstance(info.value.last, errors.ServerError)


async def test_a_stopped_executor_sends_nothing() -> None:
    sent: list[SentRequest] = []
    ex = _executor(lambda r: sent.append(r) or RawResponse(200, {}, OK), FakeClock())
    ex.stop()
    assert ex.stopping
    with pytest.raises(errors.Stopped):
        await ex.complete(Request(b"{}", 10, 5), Accounting())
    assert sent == []


async def test_embeddings_go_to_their_endpoint_and_are_cached_and_paid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    body = orjson.dumps({"data": [{"embedding": [0.1, 0.2], "index": 0}],
                         "usage": {"prompt_tokens": 7, "total_tokens": 7}})
    urls: list[str] = []

    def handler(req: SentRequest) -> RawResponse:
        urls.append(req.url)
        return RawResponse(200, {}, body)

    cache = RequestCache(tmp_path / "c.sqlite")
    ex = _executor(handler, FakeClock(), cache=cache)
    req = Request(b'{"input": ["a"]}', 7, 0, endpoint=EMBEDDINGS)
    first = await ex.complete(req, a1 := Accounting())
    second = await ex.complete(req, a2 := Accounting())
    assert urls == ["http://fake/v1/embeddings"]
    assert first.raw == second.raw == body and ex.session["cache_hits"] == 1
    assert a2.requests == 0 and a2.responses == 1
    assert a1.tokens_in == 7 and a1.tokens_out == 0 and a1.cost > 0
    cache.close()


def test_usage_without_completion_tokens_counts_as_zero_output() -> None:
    assert usage_counts({"prompt_tokens": 3}) == (3, 0, 0)
    assert usage_counts({"prompt_tokens": -1}) is None
    assert usage_counts(None) is None
