"""The hand-written judge set: the rules drop its mechanical kinds, and the judge's prompt
renders each task and its answers parse.

The set (tests/fixtures/judge_set.jsonl, see ``bench.judge_set``) holds good and
bad tasks written over real and invented schemas, each with its unit's
metadata, three sample rows, the expected verdict and the kind of mistake.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bench.judge_set import Item, judged_task, load_set, rule_outcome, sample_instances
from dynogen.api import arun
from dynogen.config import Config, Secret
from dynogen.prompts.builder import render_metadata
from dynogen.prompts.dialect import Dialect
from dynogen.tasks.answers import find_lists, known_answers, stated_answers
from dynogen.tasks.judge import JUDGE_SYSTEM, judge_body, judge_messages, parse_verdict
from dynogen.testing import FakeOpenAI, serve

ITEMS = load_set()
MECHANICAL = {"answer_list", "instance_specific", "no_content", "choice_key"}


def test_the_set_has_thirty_bad_and_thirty_good_tasks_of_every_kind() -> None:
    kinds = Counter(i.kind for i in ITEMS)
    assert sum(not i.expect_valid for i in ITEMS) >= 30
    assert sum(i.expect_valid for i in ITEMS) >= 30
    assert set(kinds) == MECHANICAL | {"not_inferable", "description_match", "good"}
    assert len({i.id for i in ITEMS}) == len(ITEMS)


@pytest.mark.parametrize("item", ITEMS, ids=[i.id for i in ITEMS])
def test_the_rules_drop_the_mechanical_kinds_and_keep_the_rest(item: Item) -> None:
    kept, reason = rule_outcome(item)
    if item.expect_rule in ("kept", "rewritten"):
        assert kept is not None, reason
    else:
        assert reason == item.expect_rule
    if kept is None:
        return
    # Whatever is kept states the output's answers at most once, and truly.
    out = item.unit.field(kept.output_field)
    assert out is not None
    known = known_answers(out, item.unit.extra["facts"])
    lists = find_lists(kept.instruction, known[0], closed=True) if known else []
    assert len(lists) <= 1, kept.instruction
    if kept.labels:  # "0 for the first" names 0
        stated = stated_answers(kept.instruction) or tuple(
            re.sub(r"\s(for|if|when|means)\s.*$", "", x) for x in lists[0].items)
        assert {x.casefold() for x in stated} == {x.casefold() for x in kept.labels}
    if item.expect_rule == "rewritten":
        assert kept.instruction != item.record["instruction"] and kept.labels


@pytest.mark.parametrize("item", ITEMS, ids=[i.id for i in ITEMS])
def test_the_judge_prompt_renders_each_task_and_its_answers_parse(item: Item) -> None:
    u = item.unit
    task = judged_task(item)
    meta = render_metadata(dataset=u.dataset, config=u.config, description=u.description,
                           fields=u.fields)
    instances = sample_instances(item, task)
    msgs = judge_messages(meta, task, instances, [f.name for f in u.fields])
    assert msgs[0] == {"role": "system", "content": JUDGE_SYSTEM}
    user = msgs[1]["content"]
    assert f"instruction: {task.instruction}" in user and f"Dataset: {u.dataset}" in user
    withheld = [f.name for f in u.fields
                if f.name not in task.input_fields and f.name != task.output_field]
    assert (f"fields not given to the model: {', '.join(withheld)}" in user) == bool(withheld)
    assert instances and all(f"output: {inst['output'][:50]}" in user for inst in instances)
    body = judge_body(Config(model="m"), msgs, Dialect())
    schema = body["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["reason", "output_from_inputs", "valid"]
    # An answer in the schema's shape, saying what the set expects, parses to that verdict.
    answer = {"reason": "The output follows from the inputs." if item.expect_valid else
              "The output cannot be inferred from the inputs.",
              "output_from_inputs": item.expect_valid, "valid": item.expect_valid}
    v = parse_verdict(orjson.dumps(answer).decode())
    assert v is not None and v.valid is item.expect_valid
    assert v.inferable is item.expect_valid


def test_an_output_not_inferable_from_the_inputs_is_invalid_whatever_else_is_said() -> None:
    v = parse_verdict('{"reason": "clear, but the date is not in the headline", '
                      '"output_from_inputs": false, "valid": true}')
    assert v is not None and not v.valid and v.inferable is False
    old = parse_verdict('{"valid": true, "reason": "fine"}')  # answers without the field
    assert old is not None and old.valid and old.inferable is None


async def test_a_judged_run_shows_the_judge_the_fields_a_task_is_not_given(
        tmp_path: Path) -> None:
    item = next(i for i in ITEMS if i.id == "good-07")  # answerKey from question + choices
    fake = FakeOpenAI(seed=1)
    answer = {"tasks": [item.record]}
    fake.enqueue(orjson.dumps(answer).decode(), orjson.dumps(answer).decode())
    cfg = Config(out=str(tmp_path / "run"), base_url="x", free=True, quiet=True,
                 api_key=Secret("sk-test"), judge=True, licenses="any", languages="any",
                 splits="all", max_in_flight=1)
    async with serve(fake) as server:
        out = await arun(cfg.with_(base_url=server.url), source=[item.unit], build=False)
    assert out.exit_code == 0, out.message
    judged = [r.body for r in fake.history if "verdict" in orjson.dumps(r.body).decode()]
    assert judged
    user = judged[0]["messages"][-1]["content"]
    assert "fields not given to the model: id, question_concept" in user
    assert "output_field: answerKey" in user and "A. cupboard" in user


async def test_the_bench_judges_the_set_on_a_server_and_reports_agreement_per_kind() -> None:
    from bench.judge_set import judge_all, report

    async with serve(FakeOpenAI(seed=1)) as server:  # one verdict in four "invalid"
        verdicts = await judge_all(ITEMS, server.url, "fake", timeout=30.0)
    doc = report(ITEMS, verdicts)
    assert doc["tasks"] == len(ITEMS) and doc["judge"]["no_verdict"] == 0
    by = doc["by_kind"]
    assert sum(k["judge_agree"] for k in by.values()) == doc["total"]["judge_agree"]
    assert all(k["rules_agree"] == k["tasks"] for k in by.values())
    assert {r["id"] for r in doc["items"]} == {i.id for i in ITEMS}
