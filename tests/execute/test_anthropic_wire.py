"""Translating OpenAI-shaped requests and answers to Anthropic's Messages API and back (pure)."""

from __future__ import annotations

import orjson

from dynogen.config import Config
from dynogen.errors import (
    AuthenticationError,
    BadRequestError,
    InsufficientQuotaError,
    RateLimitError,
    ServerError,
)
from dynogen.execute.anthropic_headers import parse_time, split
from dynogen.execute.anthropic_wire import (
    BOUND_OVERHEAD,
    TOOL_PROMPT_TOKENS,
    classify,
    prompt_figures,
    result_line,
    to_completion,
    to_messages,
    usage_of,
)
from dynogen.execute.base import Request
from dynogen.execute.batch_files import parse_result_line
from dynogen.execute.client import parse_completion
from dynogen.execute.transport import RawResponse
from dynogen.io.sources import open_source
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.tokens import TokenCounter
from dynogen.testing.fake_anthropic import FakeAnthropic
from dynogen.testing.fake_anthropic_wire import layout
from dynogen.units import Unit, skip_reason
from tests.helpers import need_corpus


def prompts(glue_unit: Unit) -> list[dict]:  # type: ignore[type-arg]
    pb = PromptBuilder(Config(model="claude-sonnet-4-5"), TokenCounter("o200k_base"))
    return [pb.request(glue_unit, v).body for v in ("description", "no_description")]


def test_a_request_becomes_system_turns_and_one_forced_tool(glue_unit: Unit) -> None:
    body = prompts(glue_unit)[0]
    out = to_messages(body)
    assert out["model"] == "claude-sonnet-4-5" and out["max_tokens"] == body["max_tokens"]
    assert out["system"] == [{"type": "text", "text": body["messages"][0]["content"]}]
    assert [m["role"] for m in out["messages"]] == [m["role"] for m in body["messages"][1:]]
    assert out["messages"][-1]["content"] == body["messages"][-1]["content"]
    schema = body["response_format"]["json_schema"]
    assert out["tools"] == [{"name": schema["name"], "description": out["tools"][0]["description"],
                             "input_schema": schema["schema"]}]
    assert out["tool_choice"] == {"type": "tool", "name": schema["name"]}
    assert "seed" not in out and "response_format" not in out and out["temperature"] == 0.0
    assert "cache_control" not in orjson.dumps(out).decode()


def test_cache_control_marks_the_last_shared_block_and_nothing_after_it(glue_unit: Unit) -> None:
    body = prompts(glue_unit)[0]
    out = to_messages(body, cache=True)
    marked = [i for i, m in enumerate(out["messages"]) if isinstance(m["content"], list)]
    assert marked == [len(out["messages"]) - 2]  # the last few-shot turn; the unit's is last
    block = out["messages"][-2]["content"][0]
    assert block["cache_control"] == {"type": "ephemeral"}
    assert block["text"] == body["messages"][-2]["content"]
    # No few-shot turns (the judge): the system prompt is the shared part.
    judge = {"model": "m", "messages": [{"role": "system", "content": "S"},
                                        {"role": "user", "content": "U"}]}
    assert to_messages(judge, cache=True)["system"][-1]["cache_control"] == {"type": "ephemeral"}


def test_other_formats_and_parameters() -> None:
    body = {"model": "m", "max_completion_tokens": 77, "temperature": 1.7,
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "D"}]},
                         {"role": "user", "content": "U"}],
            "response_format": {"type": "json_object"}}
    out = to_messages(body)
    assert out["max_tokens"] == 77 and out["temperature"] == 1.0  # Anthropic's range is 0..1
    assert out["system"] == [{"type": "text", "text": "D"}] and "tools" not in out
    assert to_messages({"model": "m", "messages": []})["max_tokens"] == 1024


def test_an_answer_becomes_a_chat_completion_with_openai_usage() -> None:
    msg = {"id": "msg_1", "type": "message", "model": "claude", "stop_reason": "tool_use",
           "content": [{"type": "text", "text": "ignored"},
                       {"type": "tool_use", "id": "t", "name": "tasks",
                        "input": {"tasks": [{"instruction": "Do it."}]}}],
           "usage": {"input_tokens": 300, "output_tokens": 90,
                     "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 0}}
    comp = parse_completion(RawResponse(200, {}, orjson.dumps(to_completion(msg))))
    assert orjson.loads(comp.content or "") == {"tasks": [{"instruction": "Do it."}]}
    assert comp.finish_reason == "stop"
    assert comp.usage == {"prompt_tokens": 1500, "completion_tokens": 90, "total_tokens": 1590,
                          "prompt_tokens_details": {"cached_tokens": 0,
                                                    "cache_write_tokens": 1200}}
    cut = {**msg, "stop_reason": "max_tokens", "content": [{"type": "text", "text": "{\"ta"}]}
    c2 = parse_completion(RawResponse(200, {}, orjson.dumps(to_completion(cut))))
    assert (c2.content, c2.finish_reason) == ('{"ta', "length")
    refused = {**msg, "stop_reason": "refusal", "content": []}
    assert to_completion(refused)["choices"][0]["finish_reason"] == "content_filter"
    assert usage_of({"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 100})[
        "prompt_tokens"] == 105
    assert "choices" not in to_completion({"type": "error"})


def test_errors_are_classified_by_what_helps() -> None:
    def err(status: int, kind: str, message: str, **headers: str) -> RawResponse:
        body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
        return RawResponse(status, headers, body)

    e = classify(err(429, "rate_limit_error", "would exceed your organization's rate limit of "
                     "8,000 output tokens per minute", **{"retry-after": "7"}))
    assert isinstance(e, RateLimitError) and e.kind == "output_tokens" and e.retry_after == 7.0
    e = classify(err(429, "rate_limit_error", "rate limit of 50,000 input tokens per minute"))
    assert isinstance(e, RateLimitError) and e.kind == "input_tokens"
    e = classify(err(429, "rate_limit_error", "slow down", **{
        "anthropic-ratelimit-requests-remaining": "0"}))
    assert isinstance(e, RateLimitError) and e.kind == "requests"
    assert isinstance(classify(err(529, "overloaded_error", "Overloaded")), ServerError)
    assert isinstance(classify(err(500, "api_error", "x")), ServerError)
    auth = classify(err(401, "authentication_error", "invalid x-api-key"), "MY_KEY")
    assert isinstance(auth, AuthenticationError) and "MY_KEY" in str(auth)
    assert isinstance(classify(err(400, "invalid_request_error", "Your credit balance is too "
                                   "low to access the Anthropic API.")), InsufficientQuotaError)
    assert isinstance(classify(err(400, "invalid_request_error", "seed: Extra inputs")),
                      BadRequestError)


def test_batch_results_become_openai_output_lines() -> None:
    cid = "dg-" + "ab" * 16
    ok = {"custom_id": cid, "result": {"type": "succeeded", "message": {
        "type": "message", "id": "m", "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}}}
    res = parse_result_line(result_line(orjson.dumps(ok)))
    assert not isinstance(res, str) and res.status == 200 and res.usage is not None
    assert res.usage["prompt_tokens"] == 3
    bad = {"custom_id": cid, "result": {"type": "errored", "error": {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}}}
    res = parse_result_line(result_line(orjson.dumps(bad)))
    assert not isinstance(res, str) and res.reason == "http_529_overloaded_error"
    for kind, reason in (("expired", "batch_expired"), ("canceled", "batch_cancelled")):
        res = parse_result_line(result_line(orjson.dumps(
            {"custom_id": cid, "result": {"type": kind}})))
        assert not isinstance(res, str) and res.reason == reason
    assert parse_result_line(result_line(b"{torn")) == "malformed_line"


def test_headers_split_into_the_limiters_two_views() -> None:
    h = {"Date": "Tue, 08 Dec 2026 10:15:30 GMT",
         "anthropic-ratelimit-requests-limit": "4000",
         "anthropic-ratelimit-requests-remaining": "3999",
         "anthropic-ratelimit-requests-reset": "2026-12-08T10:15:30.250Z",
         "anthropic-ratelimit-input-tokens-limit": "2000000",
         "anthropic-ratelimit-input-tokens-remaining": "1998000",
         "anthropic-ratelimit-input-tokens-reset": "2026-12-08T10:15:31Z",
         "anthropic-ratelimit-output-tokens-limit": "400000",
         "anthropic-ratelimit-output-tokens-remaining": "399000",
         "anthropic-ratelimit-output-tokens-reset": "not a time",
         "anthropic-ratelimit-tokens-limit": "2400000",
         "retry-after": "3"}
    main, out = split(h)
    assert main == {"x-ratelimit-limit-requests": "4000", "x-ratelimit-remaining-requests": "3999",
                    "x-ratelimit-reset-requests": "0.250s", "x-ratelimit-limit-tokens": "2000000",
                    "x-ratelimit-remaining-tokens": "1998000", "x-ratelimit-reset-tokens": "1.000s",
                    "retry-after": "3"}
    assert out == {"x-ratelimit-limit-tokens": "400000", "x-ratelimit-remaining-tokens": "399000",
                   "retry-after": "3"}
    assert parse_time("2026-12-08T10:15:30Z") == parse_time("2026-12-08T10:15:30+00:00")
    assert split({"anthropic-ratelimit-requests-reset": "2026-12-08T10:15:30Z"}) == ({}, {})


def test_the_ledger_bound_holds_over_every_corpus_prompt() -> None:
    """No tokenizer counts more tokens than a prompt has bytes; the bound adds the tool-use
    system prompt. Checked against the fake's count of the translated request, and the
    pacing figure against dynogen's own count."""
    corpus = need_corpus()  # fails under CI when shared/ is missing
    cfg = Config(model="claude-sonnet-4-5")
    pb = PromptBuilder(cfg, TokenCounter("o200k_base"))
    fake = FakeAnthropic(cache_min_tokens=10**9)
    n = 0
    for unit in open_source(str(corpus), limit=150):
        if not isinstance(unit, Unit) or skip_reason(unit) is not None:
            continue
        for v in cfg.variants:
            p = pb.request(unit, v)
            raw = orjson.dumps(p.body)
            paced, bound = prompt_figures(Request(raw, p.prompt_tokens, p.max_tokens))
            translated = orjson.dumps(to_messages(p.body, cache=True))
            billed = layout(orjson.loads(translated), fake.counter, fake.tool_prompt_tokens).total
            assert bound >= len(translated) + BOUND_OVERHEAD // 2 >= billed
            assert paced == p.prompt_tokens + TOOL_PROMPT_TOKENS
            n += 1
    assert n > 100
