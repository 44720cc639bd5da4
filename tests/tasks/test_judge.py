"""The judge's pure parts: what it shows the model, and what counts as a verdict."""

from __future__ import annotations

import orjson

from dynogen.config import Config
from dynogen.prompts.dialect import Dialect
from dynogen.tasks.judge import (
    JUDGE_MAX_TOKENS,
    JUDGE_SYSTEM,
    judge_body,
    judge_messages,
    parse_verdict,
)
from dynogen.tasks.task import Task

TASK = Task("t1", "imdb", "plain_text", "description", "Classify the review's sentiment.",
            ("text",), "label", "mit", ("neg", "pos"))


def test_messages_share_one_system_prompt_and_show_task_and_at_most_three_examples() -> None:
    insts = [{"input": f"review {i}", "output": "pos"} for i in range(5)]
    a = judge_messages("Dataset: imdb\nFields: text, label", TASK, insts)
    b = judge_messages("Dataset: other", TASK, [])
    assert a[0] == b[0] == {"role": "system", "content": JUDGE_SYSTEM}
    user = a[1]["content"]
    assert "instruction: Classify the review's sentiment." in user
    assert "output_field: label" in user and "review 2" in user and "review 3" not in user
    assert "No rows" in b[1]["content"]


def test_body_follows_the_runs_dialect() -> None:
    cfg = Config(model="m", seed=3)
    msgs = judge_messages("meta", TASK, [])
    strict = judge_body(cfg, msgs, Dialect())
    assert strict["max_tokens"] == JUDGE_MAX_TOKENS
    assert strict["response_format"]["json_schema"]["name"] == "verdict"
    reasoning = judge_body(cfg, msgs, Dialect(format="json_object",
                                              token_param="max_completion_tokens",
                                              temperature=False))
    assert "max_tokens" not in reasoning and reasoning["max_completion_tokens"] == JUDGE_MAX_TOKENS
    assert "temperature" not in reasoning and reasoning["response_format"] == {
        "type": "json_object"}
    assert orjson.dumps(judge_body(cfg, msgs, Dialect())) == orjson.dumps(strict)  # stable bytes


def test_verdicts_are_read_strictly() -> None:
    v = parse_verdict('{"valid": false, "reason": "  asks for a  question, output is a label "}')
    assert v is not None and v.valid is False
    assert v.reason == "asks for a question, output is a label"
    fenced = parse_verdict('```json\n{"valid": true, "reason": ""}\n```')
    assert fenced is not None and fenced.valid and fenced.reason == "no reason given"
    for bad in (None, "", "yes", '{"valid": "yes"}', "[true]", '{"reason": "x"}'):
        assert parse_verdict(bad) is None, bad


def test_the_estimate_prices_the_judge_too() -> None:
    from dynogen.api import estimate
    from dynogen.units import Field, Unit

    fields = (Field("text", "string"), Field("label", "class_label", ("neg", "pos")))
    src = [Unit(f"ds{i}", "default", "Movie reviews.", fields, license="mit",
                samples=({"text": "A fine film.", "label": 1},)) for i in range(5)]
    cfg = Config(model="gpt-4o-mini", free=False, licenses="any", languages="any",
                 splits="all")
    plain = estimate(cfg, source=src)
    judged = estimate(cfg.with_(judge=True), source=src)
    assert plain.judge is None and judged.judge is not None
    # One expected kept task per answer, up to max_tasks_per_unit per answer.
    assert judged.judge["requests_expected"] == 5 * 2
    assert judged.judge["requests_high"] == 5 * 2 * cfg.max_tasks_per_unit
    assert judged.requests == plain.requests + 10
    assert judged.input_tokens > plain.input_tokens
    for tier in ("low", "expected", "high"):
        assert judged.cost_usd[tier]["online"] > plain.cost_usd[tier]["online"]
        assert judged.cost_usd[tier]["batch"] > plain.cost_usd[tier]["batch"]
