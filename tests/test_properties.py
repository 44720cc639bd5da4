"""Property tests: whatever metadata and whatever answers arrive, nothing raises (issue #4).

Random units (odd unicode names, empty and giant descriptions, many labels,
media flags, repeated names), random LLM answers (text, JSON of every shape,
task lists naming fields that do not exist, huge instructions) and random rows
go through the same functions a run uses — prompt building, parsing,
validation, instance building — and through the metadata readers, which may
refuse only with their documented error (``FeaturesError``) or a counted skip.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynogen.config import Config
from dynogen.instances.render import Instance, InstanceSkip, build_instance
from dynogen.io.features import FeaturesError, fields_from_features
from dynogen.io.shards import JsonlSource
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.tokens import TokenCounter
from dynogen.tasks.filter import MAX_INSTRUCTION_CHARS, DropReason, TaskFilter
from dynogen.tasks.parsing import parse_tasks
from dynogen.tasks.rules import TaskRule
from dynogen.tasks.task import Task
from dynogen.units import Field, Skipped, SkipReason, Unit

COUNTER = TokenCounter()
CONFIG = Config(metadata_token_budget=300)
BUILDER = PromptBuilder(CONFIG, COUNTER)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Slack for token merges at the seams between the pieces of a message.
SEAM_TOKENS = 8
SKIP_REASONS = {v for k, v in vars(InstanceSkip).items() if not k.startswith("_")}
DROP_REASONS = {v for cls in (DropReason, TaskRule)
                for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, str)}

# ------------------------------------------------------------------------- strategies

# Any Unicode scalar value: controls, combining marks, private use, astral planes.
# (Not lone surrogates: every source's parser — orjson, libyaml — refuses them.)
odd_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
names = st.one_of(
    odd_text,
    st.sampled_from(["text", "label", "Label", "question", "answer", "tokens", "choices",
                     "ångström", "名前", "a b", "", " ", "_type", "\u200b", "x" * 300]),
)
types = st.one_of(st.sampled_from(["string", "int32", "float64", "bool", "class_label",
                                   "list[string]", "struct{a: string}", "image", "audio",
                                   "translation", "json"]), odd_text)
fields = st.builds(Field, name=names, type=types,
                   labels=st.lists(odd_text, max_size=40).map(tuple), media=st.booleans())
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=True), odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(odd_text, inner, max_size=5)), max_leaves=20)
descriptions = st.one_of(st.just(""), odd_text, st.text(max_size=3000),
                         st.integers(1000, 60000).map(lambda n: ("lorem ipsum dolor " * n)[:n * 5]),
                         st.integers(1, 20000).map(lambda n: "\U0001f600" * n))


@st.composite
def units(draw: st.DrawFn) -> Unit:
    fs = draw(st.lists(fields, max_size=70))
    if fs and draw(st.booleans()):
        fs.append(fs[0])  # a repeated field name
    samples = draw(st.lists(st.dictionaries(names, json_values, max_size=6), max_size=3))
    return Unit(dataset=draw(names), config=draw(names), description=draw(descriptions),
                fields=tuple(fs), license=draw(st.none() | odd_text), samples=tuple(samples))


def task_records(unit: Unit) -> st.SearchStrategy[Any]:
    """Task-shaped records: real field names, invented ones, wrong types, huge instructions."""
    real = [f.name for f in unit.fields] or ["text"]
    name = st.one_of(st.sampled_from(real), names)
    instruction = st.one_of(odd_text, st.text(min_size=1, max_size=200),
                            st.integers(1, 20000).map(lambda n: "Classify the text. " * n),
                            json_values)
    return st.fixed_dictionaries(
        {"instruction": instruction,
         "input_fields": st.one_of(st.lists(name, max_size=5), name, json_values),
         "output_field": st.one_of(name, st.lists(name, max_size=2), json_values)},
        optional={"extra": json_values, "inputs": st.lists(name, max_size=3)})


def _dumps(v: Any) -> str:
    # The stdlib also writes what orjson will not read back (NaN, 2**64), as a
    # careless server might.
    return json.dumps(v, ensure_ascii=False, default=str)


@st.composite
def answers(draw: st.DrawFn, unit: Unit) -> str:
    """An LLM answer: prose, JSON of any shape, or a task list, maybe fenced or wrapped."""
    body = draw(st.one_of(
        odd_text,
        json_values.map(_dumps),
        st.lists(task_records(unit), max_size=6).map(lambda t: _dumps({"tasks": t})),
        st.lists(task_records(unit), max_size=4).map(_dumps),
    ))
    wrap = draw(st.sampled_from(["{}", "```json\n{}\n```", "Sure! Here you go:\n{}\nThanks.",
                                 "{}}}", "[{}", "{}"[: draw(st.integers(0, 2))]]))
    return wrap.replace("{}", body) if "{}" in wrap else body[: len(body) // 2]


row_values = st.recursive(
    st.one_of(json_scalars, st.binary(max_size=8), st.integers(-(10**40), 10**40),
              st.just(math.inf), st.text(max_size=20000), st.decimals(allow_nan=True),
              st.datetimes()),
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.one_of(odd_text, st.integers()), inner,
                                            max_size=5)),
    max_leaves=25)

# ------------------------------------------------------------------------- prompts


@SETTINGS
@given(unit=units(), variant=st.sampled_from(CONFIG.variants))
def test_any_unit_gives_a_request_within_the_metadata_budget(unit: Unit, variant: str) -> None:
    req = BUILDER.request(unit, variant)
    assert req.body["messages"][-1]["role"] == "user"
    full = BUILDER.user_message(unit, variant)
    # Name, config and fields are shown whole; description and samples share what
    # is left of the budget and never push the message past it.
    bare = BUILDER.user_message(dataclasses.replace(unit, description="", samples=()), variant)
    assert COUNTER.count(full) <= max(COUNTER.count(bare), CONFIG.metadata_token_budget) + \
        SEAM_TOKENS
    overhead = (COUNTER.count_prefix(BUILDER.prefix_messages(variant))
                + COUNTER.count_response_format(req.body.get("response_format")) + SEAM_TOKENS)
    assert req.prompt_tokens <= overhead + max(COUNTER.count(bare), CONFIG.metadata_token_budget)
    orjson.dumps(req.body)  # the body can be sent


# ------------------------------------------------------------------------- answers


@SETTINGS
@given(data=st.data(), unit=units())
def test_any_answer_parses_and_filters_without_raising(data: st.DataObject, unit: Unit) -> None:
    answer = data.draw(answers(unit))
    parsed = parse_tasks(answer)
    assert parsed.error is None or not parsed.tasks
    for rec in parsed.tasks:
        assert isinstance(rec["instruction"], str) and isinstance(rec["output_field"], str)
        assert all(isinstance(n, str) for n in rec["input_fields"])
    filt = TaskFilter(CONFIG.max_tasks_per_unit)
    kept, drops = filt.filter(unit, "description", parsed.tasks, set())
    assert len(kept) + sum(drops.values()) == len(parsed.tasks)
    assert set(drops) <= DROP_REASONS
    assert len(kept) <= CONFIG.max_tasks_per_unit
    assert len({t.instruction for t in kept}) == len(kept)
    known = {f.name for f in unit.fields}
    for t in kept:
        assert set(t.input_fields) <= known and t.output_field in known
        assert t.output_field not in t.input_fields
        assert t.instruction.strip()
        assert len(t.instruction.split(" Answers must be one of:")[0]) <= MAX_INSTRUCTION_CHARS
        assert Task.from_dict(orjson.loads(orjson.dumps(t.to_dict()))) == t


@SETTINGS
@given(answer=st.one_of(st.none(), st.text(), st.binary().map(
    lambda b: b.decode("utf-8", "replace"))))
def test_any_text_parses_to_tasks_or_a_reason(answer: str | None) -> None:
    parsed = parse_tasks(answer)
    assert parsed.tasks or parsed.error in {"empty_answer", "not_json", "wrong_shape", None}


# ------------------------------------------------------------------------- instances


@st.composite
def tasks_and_rows(draw: st.DrawFn) -> tuple[Task, dict[str, Any], dict[str, tuple[str, ...]]]:
    cols = draw(st.lists(names, min_size=2, max_size=6, unique=True))
    out = cols[-1]
    labels = draw(st.dictionaries(st.sampled_from(cols), st.lists(odd_text, max_size=5).map(
        tuple), max_size=2))
    task = Task("id", "ds", "cfg", "description", draw(odd_text) or "Do it.",
                tuple(cols[:-1]), out, labels=labels.get(out, ()))
    row = draw(st.dictionaries(st.sampled_from(cols), row_values, max_size=len(cols)))
    if draw(st.booleans()):
        row.update({c: draw(row_values) for c in cols})
    return task, row, labels


@SETTINGS
@given(case=tasks_and_rows())
def test_any_row_gives_an_instance_or_a_counted_reason(
        case: tuple[Task, dict[str, Any], dict[str, tuple[str, ...]]]) -> None:
    task, row, labels = case
    got = build_instance(task, row, labels)
    if isinstance(got, str):
        assert got in SKIP_REASONS
        return
    assert isinstance(got, Instance)
    assert got.output and got.input
    orjson.dumps(got.to_dict())  # writable to instances.jsonl


# ------------------------------------------------------------------------- metadata


feature_keys = st.sampled_from(["_type", "dtype", "names", "feature", "names_file", "id",
                                "class_label", "sequence", "list", "struct", "name", "length",
                                "languages", "num_classes", "Value", "ClassLabel", "Sequence",
                                "string", "int64", "Image", "Translation"])
feature_values = st.recursive(
    st.one_of(json_scalars, feature_keys),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(feature_keys, odd_text), inner, max_size=4)),
    max_leaves=30)


@SETTINGS
@given(features=feature_values)
def test_features_give_fields_or_a_features_error(features: Any) -> None:
    try:
        got = fields_from_features(features)
    except FeaturesError:
        return
    assert all(isinstance(f, Field) and isinstance(f.type, str) for f in got)


unit_dicts = st.dictionaries(
    st.sampled_from(["dataset", "config", "description", "fields", "license", "tags", "splits",
                     "samples", "data_ref", "origin", "skipped", "reason", "detail"]),
    st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {"name": st.one_of(names, json_values)},
        optional={"type": st.one_of(types, json_values), "labels": json_values,
                  "media": json_values}), max_size=4)),
    max_size=10)


@SETTINGS
@given(records=st.lists(st.one_of(unit_dicts, json_values), min_size=1, max_size=5))
def test_any_metadata_record_in_a_shard_is_a_unit_or_a_counted_skip(
        tmp_path_factory: Any, records: list[Any]) -> None:
    path: Path = tmp_path_factory.mktemp("shard") / "units.jsonl"
    # The stdlib writes what orjson refuses to read (NaN, 2**64): those lines must
    # come back as counted skips too.
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in records), "utf-8")
    got = list(JsonlSource(path))
    assert len(got) == len(records)
    for item in got:
        assert isinstance(item, Unit | Skipped)
        if isinstance(item, Skipped):
            assert item.reason in {SkipReason.INVALID_METADATA, SkipReason.DUPLICATE,
                                   SkipReason.MEDIA} or isinstance(item.reason, str)
        else:
            assert Unit.from_dict(item.to_dict()) == item
