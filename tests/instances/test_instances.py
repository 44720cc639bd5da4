"""Row -> instance rendering rules, skip reasons, hashing and the held-out split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynogen.instances.render import (
    INPUT_CHAR_CAP,
    OUTPUT_CHAR_CAP,
    Instance,
    InstanceSkip,
    build_instance,
    instance_hash,
    is_heldout,
    split_heldout,
)
from dynogen.tasks.task import Task, task_id

SKIPS = {v for k, v in vars(InstanceSkip).items() if k.isupper()}


def make_task(inputs: tuple[str, ...], output: str, *, split: str = "train",
              instruction: str = "Do the thing.") -> Task:
    return Task(
        id=task_id("ds", "default", "description", instruction, inputs, output),
        dataset="ds", config="default", variant="description", instruction=instruction,
        input_fields=inputs, output_field=output, license="apache-2.0", split=split,
    )


def build(inputs: tuple[str, ...], output: str, row: dict[str, Any],
          labels: Mapping[str, Sequence[str]] | None = None) -> Instance | str:
    return build_instance(make_task(inputs, output), row, labels or {})


def test_one_input_is_its_raw_text_and_label_ids_become_names() -> None:
    inst = build(("review",), "label", {"review": "  Lovely scones.  ", "label": 2},
                 {"label": ("negative", "neutral", "positive")})
    assert isinstance(inst, Instance)
    assert (inst.input, inst.output) == ("Lovely scones.", "positive")
    assert inst.to_dict() == {
        "instruction": "Do the thing.", "input": "Lovely scones.", "output": "positive",
        "task_id": make_task(("review",), "label").id, "dataset": "ds", "config": "default",
        "split": "train", "license": "apache-2.0",
    }


def test_several_inputs_are_labelled_lines_and_choices_are_lettered() -> None:
    row = {"question": "Which is a gas?", "choices": ["Iron", "Neon", "Salt"], "answer": 1}
    inst = build(("question", "choices"), "answer", row, {"answer": ("A", "B", "C")})
    assert isinstance(inst, Instance)
    assert inst.input == "question: Which is a gas?\nchoices:\nA. Iron\nB. Neon\nC. Salt"
    assert inst.output == "B"


def test_label_text_struct_choices_use_their_own_letters() -> None:
    row = {"question": "Q?", "choices": {"label": ["A", "B"], "text": ["yes", "no"]},
           "answerKey": "B"}
    inst = build(("choices",), "answerKey", row)
    assert isinstance(inst, Instance)
    assert inst.input == "A. yes\nB. no"
    assert inst.output == "B"


def test_squad_answers_output_is_the_first_answer_text() -> None:
    row = {"context": "Paris is in France.", "question": "Where is Paris?",
           "answers": {"text": ["", "France", "in France"], "answer_start": [0, 12, 9]}}
    inst = build(("context", "question"), "answers", row)
    assert isinstance(inst, Instance)
    assert inst.output == "France"
    assert build(("context",), "answers", {**row, "answers": {"text": [], "answer_start": []}}) \
        == InstanceSkip.EMPTY_OUTPUT


def test_scalars_lists_and_structs_render_deterministically() -> None:
    row: dict[str, Any] = {
        "flag": True, "score": 4.0, "ratio": 0.25, "count": 7,
        "tokens": ["Ada", "wrote", "code"], "summary": ["First point.", "Second point."],
        "translation": {"en": "cat", "fr": "chat"}, "meta": {"a": [1, 2], "b": {"c": None}},
    }
    out = {name: build(("flag",), name, row) for name in row}
    assert {k: v.output for k, v in out.items() if isinstance(v, Instance)} == {
        "flag": "true", "score": "4", "ratio": "0.25", "count": "7",
        "tokens": "Ada wrote code", "summary": "First point.\nSecond point.",
        "translation": "en: cat\nfr: chat", "meta": "a: [1, 2]\nb: {c: }",
    }


def test_list_of_label_ids_becomes_names() -> None:
    inst = build(("tokens",), "tags", {"tokens": ["Ada", "wrote"], "tags": [1, 0]},
                 {"tags": ("O", "PER")})
    assert isinstance(inst, Instance) and inst.output == "PER, O"


def test_skip_reasons() -> None:
    labels = {"label": ("neg", "pos")}
    assert build(("text",), "label", {"text": "x", "label": -1}, labels) == InstanceSkip.UNLABELLED
    assert build(("text",), "label", {"text": "x", "label": 5}, labels) == InstanceSkip.BAD_LABEL
    assert build(("text",), "label", {"label": 1}, labels) == InstanceSkip.MISSING_FIELD
    assert build(("text",), "label", {"text": None, "label": 1}, labels) == InstanceSkip.EMPTY_INPUT
    assert build(("text",), "label", {"text": "  ", "label": 1}, labels) == InstanceSkip.EMPTY_INPUT
    assert build(("text",), "summary", {"text": "x", "summary": ""}) == InstanceSkip.EMPTY_OUTPUT
    assert build(("text",), "summary", {"text": "x", "summary": float("nan")}) \
        == InstanceSkip.EMPTY_OUTPUT
    assert build(("image",), "caption", {"image": b"\x89PNG", "caption": "c"}) \
        == InstanceSkip.BINARY_FIELD
    assert build(("text",), "o", {"text": "x", "o": "y" * (OUTPUT_CHAR_CAP + 1)}) \
        == InstanceSkip.OUTPUT_TOO_LONG
    assert build(("text",), "o", {"text": "x", "o": object()}) == InstanceSkip.UNSUPPORTED_VALUE


def test_long_inputs_are_cut_around_the_answer_or_dropped() -> None:
    # The answer sits at the very end of a long passage: the cut keeps it.
    passage = "p " * 10_000 + "The harbour opened in 1832."
    row = {"passage": passage, "question": "When did it open?", "answer": "1832"}
    inst = build(("passage", "question"), "answer", row)
    assert isinstance(inst, Instance) and inst.truncated
    assert len(inst.input) <= INPUT_CHAR_CAP
    assert inst.input.endswith("The harbour opened in 1832.\nquestion: When did it open?")
    assert inst.input.startswith("passage: …")
    short = build(("passage", "question"), "answer", {**row, "passage": "short"})
    assert isinstance(short, Instance) and not short.truncated
    single = build(("passage",), "answer", row)
    assert isinstance(single, Instance) and len(single.input) <= INPUT_CHAR_CAP
    assert "1832" in single.input
    # An answer that cannot be located in the text to cut may depend on what the
    # cut removes: no instance rather than a wrong one.
    lost = build(("passage", "question"), "answer", {**row, "answer": "in spring"})
    assert lost == InstanceSkip.INPUT_TOO_LONG


def test_split_comes_from_the_task() -> None:
    task = make_task(("t",), "o", split="heldout")
    inst = build_instance(task, {"t": "a", "o": "b"}, {})
    assert isinstance(inst, Instance) and inst.split == "heldout"


def test_instance_hash_is_over_content_only() -> None:
    a = build(("t",), "o", {"t": "a", "o": "b"})
    b = build_instance(make_task(("t",), "o", split="heldout"), {"t": "a", "o": "b"}, {})
    c = build(("t",), "o", {"t": "a", "o": "c"})
    assert isinstance(a, Instance) and isinstance(b, Instance) and isinstance(c, Instance)
    assert instance_hash(a) == instance_hash(b) != instance_hash(c)
    assert isinstance(instance_hash(a), int) and 0 <= instance_hash(a) < 2**64
    # field boundaries count: moving text between input and output changes the hash
    d = Instance("i", "ab", "c", "t", "d", "c", "train")
    e = Instance("i", "a", "bc", "t", "d", "c", "train")
    assert instance_hash(d) != instance_hash(e)


def test_split_heldout_is_deterministic_by_task_and_stable_under_subsets() -> None:
    tasks = [make_task(("t",), "o", instruction=f"task {i}") for i in range(1000)]
    train, held = split_heldout(tasks, 0.2, seed=1)
    assert split_heldout(tasks, 0.2, seed=1) == (train, held)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 1000
    assert 150 <= len(held) <= 250
    sub_train, sub_held = split_heldout(tasks[::3], 0.2, seed=1)
    assert set(sub_held) == set(held) & {t.id for t in tasks[::3]}
    assert split_heldout(tasks, 0.2, seed=2)[1] != held
    assert split_heldout(tasks, 0.0)[1] == []
    assert all(is_heldout(t, 0.2, 1) for t in held)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=25,
)
names = st.sampled_from(["text", "choices", "answers", "tokens", "label", "meta"])


@settings(max_examples=200, deadline=None)
@given(
    row=st.dictionaries(names, json_values, max_size=6),
    inputs=st.lists(names, min_size=0, max_size=3, unique=True),
    output=names,
    label_names=st.lists(st.text(min_size=1, max_size=5), max_size=4),
)
def test_any_row_gives_an_instance_or_a_known_reason(
    row: dict[str, Any], inputs: list[str], output: str, label_names: list[str]
) -> None:
    labels = {"label": tuple(label_names)} if label_names else {}
    got = build(tuple(inputs), output, row, labels)
    if isinstance(got, Instance):
        assert got.output and len(got.output) <= OUTPUT_CHAR_CAP
        assert len(got.input) <= INPUT_CHAR_CAP + 100
    else:
        assert got in SKIPS


def test_translation_subfields_resolve_into_the_dict_column() -> None:
    from dynogen.tasks.task import Task

    t = Task("t", "wmt", "de-en", "description", "Translate German to English.",
             ("translation.de",), "translation.en")
    inst = build_instance(t, {"translation": {"de": "Guten Morgen", "en": "Good morning"}}, {})
    assert not isinstance(inst, str)
    assert (inst.input, inst.output) == ("Guten Morgen", "Good morning")
    assert build_instance(t, {"translation": {"de": "x"}}, {}) == "missing_field"
