from __future__ import annotations

import orjson

from dynogen.config import Config
from dynogen.prompts.builder import PromptBuilder, render_metadata
from dynogen.prompts.tokens import TokenCounter
from dynogen.units import Field, Unit


def builder(**kw: object) -> PromptBuilder:
    return PromptBuilder(Config(**kw), TokenCounter("o200k_base"))  # type: ignore[arg-type]


def test_two_variants_by_default(glue_unit: Unit) -> None:
    reqs = builder().requests(glue_unit)
    assert [r.variant for r in reqs] == ["description", "no_description"]
    desc, nodesc = (r.body["messages"][-1]["content"] for r in reqs)
    assert "Description: The Corpus of Linguistic Acceptability" in desc
    assert "Description:" not in nodesc
    for r in reqs:
        assert r.body["temperature"] == 0 and r.body["seed"] == 0


def test_shared_prefix_is_byte_identical_across_units(glue_unit: Unit) -> None:
    pb = builder()
    other = Unit("ag_news", "default", "News topics.", (Field("text", "string"),
                 Field("label", "class_label", ("World", "Sports"))))
    a = pb.request(glue_unit, "description").body["messages"][:-1]
    b = pb.request(other, "description").body["messages"][:-1]
    assert orjson.dumps(a) == orjson.dumps(b)
    # The few-shot turns never come from the target data.
    assert "glue" not in orjson.dumps(a).decode()


def test_schema_enumerates_exact_field_names() -> None:
    u = Unit("d", "c", "", (Field("question_id", "string"), Field("Antwort (de)", "string"),
                            Field("idx", "int32")))
    body = builder(max_tasks_per_unit=2).request(u, "description").body
    schema = body["response_format"]["json_schema"]["schema"]
    item = schema["properties"]["tasks"]["items"]
    # id-like fields are never outputs; the one possible output is not an input.
    assert item["properties"]["output_field"]["enum"] == ["Antwort (de)"]
    assert item["properties"]["input_fields"]["items"]["enum"] == ["question_id", "idx"]
    assert schema["properties"]["tasks"]["maxItems"] == 2
    content = body["messages"][-1]["content"]
    assert "- question_id: string" in content and "- Antwort (de): string" in content


def test_metadata_is_cut_by_tokens_not_chars(glue_unit: Unit) -> None:
    counter = TokenCounter("o200k_base")
    long = Unit("big", "default", "word " * 20000, glue_unit.fields)
    for budget in (120, 300, 800):
        text = render_metadata(dataset=long.dataset, config=long.config,
                               description=long.description, fields=long.fields,
                               counter=counter, budget=budget)
        assert counter.count(text) <= budget
        assert "- sentence: string" in text  # fields survive truncation
    short = render_metadata(dataset="x", config="y", description="tiny", fields=glue_unit.fields,
                            counter=counter, budget=800)
    assert "Description: tiny" in short


def test_prompt_tokens_are_exact_for_the_messages(glue_unit: Unit) -> None:
    counter = TokenCounter("o200k_base")
    pb = PromptBuilder(Config(response_format="json_object"), counter)
    r = pb.request(glue_unit, "no_description")
    assert r.prompt_tokens == counter.count_messages(r.body["messages"])
    assert r.max_tokens == Config().max_tokens


def test_formats() -> None:
    u = Unit("d", "c", "", (Field("a", "string"), Field("b", "string")))
    assert builder(response_format="json_object").request(u, "description").body[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in builder(response_format="none").request(u, "description").body
