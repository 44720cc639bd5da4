from __future__ import annotations

import orjson
import pytest

from dynogen.dedup import HashSet
from dynogen.tasks.filter import DropReason, TaskFilter, label_suffix
from dynogen.tasks.rules import TaskRule
from dynogen.units import Field, Unit


def rec(instr: str, inputs: list[str], out: str) -> dict[str, object]:
    return {"instruction": instr, "input_fields": inputs, "output_field": out}


@pytest.fixture
def unit() -> Unit:
    return Unit("glue", "cola", "The Corpus of Linguistic Acceptability: sentences labelled "
                "acceptable or not, drawn from published linguistics literature.",
                (Field("sentence", "string"),
                 Field("label", "class_label", ("unacceptable", "acceptable")),
                 Field("idx", "int32"), Field("topic", "string")),
                license="cc-by-4.0")


def test_keeps_valid_and_adds_label_suffix(glue_unit: Unit) -> None:
    f = TaskFilter(max_tasks=3)
    kept, drops = f.filter(glue_unit, "description",
                           [rec("Judge the sentence.", ["sentence"], "label")], set())
    assert not drops
    (t,) = kept
    assert t.instruction == "Judge the sentence. Answers must be one of: unacceptable, acceptable."
    assert t.labels == ("unacceptable", "acceptable")
    assert t.input_fields == ("sentence",) and t.output_field == "label"
    assert t.license == "cc-by-4.0" and t.split == "train"
    assert t.input_types == ("string",) and t.output_type == "class_label"


def test_every_drop_reason(unit: Unit, tmp_path: object) -> None:
    from pathlib import Path

    sample = Path(str(tmp_path)) / "dropped.jsonl"
    f = TaskFilter(max_tasks=10, sample_path=sample)
    records = [
        rec("   ", ["sentence"], "label"),
        rec("x" * 5000, ["sentence"], "label"),
        rec("No inputs.", [], "label"),
        rec("Bad input.", ["sentense"], "label"),
        rec("Bad output.", ["sentence"], "labels"),
        rec("Output is input.", ["sentence", "label"], "label"),
        rec("Predict the topic of the sentence.", ["sentence"], "topic"),
        rec("predict the TOPIC of the sentence!", ["sentence"], "topic"),
        rec("Predict the index of the sentence.", ["sentence"], "idx"),
        rec("Predict the topic from the index.", ["idx"], "topic"),
    ]
    kept, drops = f.filter(unit, "description", records, set())
    assert [t.instruction for t in kept] == ["Predict the topic of the sentence."]
    assert drops == {
        DropReason.EMPTY_INSTRUCTION: 1,
        DropReason.INSTRUCTION_TOO_LONG: 1,
        DropReason.NO_INPUT_FIELDS: 1,
        DropReason.UNKNOWN_INPUT_FIELD: 1,
        DropReason.UNKNOWN_OUTPUT_FIELD: 1,
        DropReason.OUTPUT_IN_INPUTS: 1,
        DropReason.DUPLICATE_IN_UNIT: 1,
        TaskRule.ID_LIKE: 1,
        TaskRule.ID_INPUT: 1,
    }
    lines = [orjson.loads(x) for x in sample.read_bytes().splitlines()]
    assert sorted(x["reason"] for x in lines) == sorted(drops)  # one sample per reason here


def test_duplicates_across_the_run_need_the_same_fields(unit: Unit) -> None:
    seen = HashSet()
    f = TaskFilter(max_tasks=1, seen=seen)
    same = Unit("other", "default", "", unit.fields)
    retyped = Unit("third", "default", "", (Field("sentence", "string"), Field("topic", "int32")))
    task = rec("Predict the topic of the sentence.", ["sentence"], "topic")
    kept1, _ = f.filter(unit, "description", [task], set())
    kept2, drops = f.filter(same, "description",
                            [task, rec("Write a sentence on the topic.", ["topic"], "sentence"),
                             rec("Another sentence to write.", ["topic"], "sentence")], set())
    kept3, drops3 = f.filter(retyped, "description", [task], set())
    assert len(kept1) == 1
    assert [t.instruction for t in kept2] == ["Write a sentence on the topic."]
    assert drops == {DropReason.DUPLICATE_IN_RUN: 1, DropReason.TOO_MANY_TASKS: 1}
    # The same words on a field of another type are another task: kept.
    assert len(kept3) == 1 and not drops3


def test_resumed_dedup_remembers_written_tasks(unit: Unit) -> None:
    first = TaskFilter(3)
    task = rec("Predict the topic of the sentence.", ["sentence"], "topic")
    (t,), _ = first.filter(unit, "description", [task], set())
    again = TaskFilter(3)
    again.remember(orjson.loads(orjson.dumps(t.to_dict())))
    kept, drops = again.filter(Unit("x", "y", "", unit.fields), "description",
                               [rec("Predict the topic of the sentence.", ["sentence"], "topic")],
                               set())
    assert kept == [] and drops == {DropReason.DUPLICATE_IN_RUN: 1}


def test_degenerate_and_media() -> None:
    u = Unit("d", "c", "", (Field("text", "string"), Field("one", "class_label", ("only",)),
                            Field("img", "image", media=True)))
    kept, drops = TaskFilter(5).filter(u, "description", [
        rec("Label it.", ["text"], "one"), rec("Caption.", ["img"], "text")], set())
    assert kept == []
    assert drops == {DropReason.DEGENERATE_LABEL: 1, DropReason.MEDIA_FIELD: 1}


def test_field_names_kept_exactly() -> None:
    u = Unit("d", "c", "", (Field("question_text", "string"), Field("Antwort (de)", "string")))
    kept, _ = TaskFilter(3).filter(u, "no_description",
                                   [rec("Answer the question.", ["question_text"], "Antwort (de)")],
                                   set())
    assert kept[0].output_field == "Antwort (de)"


def test_task_ids_are_content_addressed(unit: Unit) -> None:
    one = [rec("Predict the topic of the sentence.", ["sentence"], "topic")]
    a, _ = TaskFilter(3).filter(unit, "description", one, set())
    b, _ = TaskFilter(3).filter(unit, "description", one, set())
    c, _ = TaskFilter(3).filter(unit, "no_description", one, set())
    assert a[0].id == b[0].id != c[0].id


def test_heldout_is_by_task(unit: Unit) -> None:
    f = TaskFilter(50, heldout_fraction=0.5)
    recs = [rec(f"Predict the topic, take {i}.", ["sentence"], "topic") for i in range(40)]
    kept, _ = f.filter(unit, "description", recs, set())
    splits = {t.split for t in kept}
    assert splits == {"train", "heldout"}


def test_label_suffix_is_deterministic() -> None:
    assert label_suffix(["a", "b"]) == " Answers must be one of: a, b."
