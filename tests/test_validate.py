from __future__ import annotations

from dynogen.dedup import HashSet
from dynogen.units import Field, Unit
from dynogen.validate import DropReason, TaskFilter, label_suffix


def rec(instr: str, inputs: list[str], out: str) -> dict[str, object]:
    return {"instruction": instr, "input_fields": inputs, "output_field": out}


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


def test_every_drop_reason(glue_unit: Unit) -> None:
    f = TaskFilter(max_tasks=10)
    records = [
        rec("   ", ["sentence"], "label"),
        rec("x" * 5000, ["sentence"], "label"),
        rec("No inputs.", [], "label"),
        rec("Bad input.", ["sentense"], "label"),
        rec("Bad output.", ["sentence"], "labels"),
        rec("Output is input.", ["sentence", "label"], "label"),
        rec("Predict the index.", ["sentence"], "idx"),
        rec("predict the INDEX!", ["sentence"], "idx"),
    ]
    kept, drops = f.filter(glue_unit, "description", records, set())
    assert [t.instruction for t in kept] == ["Predict the index."]
    assert drops == {
        DropReason.EMPTY_INSTRUCTION: 1,
        DropReason.INSTRUCTION_TOO_LONG: 1,
        DropReason.NO_INPUT_FIELDS: 1,
        DropReason.UNKNOWN_INPUT_FIELD: 1,
        DropReason.UNKNOWN_OUTPUT_FIELD: 1,
        DropReason.OUTPUT_IN_INPUTS: 1,
        DropReason.DUPLICATE_IN_UNIT: 1,
    }


def test_duplicates_across_the_run_and_max_tasks(glue_unit: Unit) -> None:
    seen = HashSet()
    f = TaskFilter(max_tasks=1, seen=seen)
    other = Unit("other", "default", "", glue_unit.fields)
    kept1, _ = f.filter(glue_unit, "description", [rec("Predict idx.", ["sentence"], "idx")], set())
    kept2, drops = f.filter(other, "description",
                            [rec("Predict idx.", ["sentence"], "idx"),
                             rec("Write a sentence.", ["idx"], "sentence"),
                             rec("Another.", ["idx"], "sentence")], set())
    assert len(kept1) == 1
    assert [t.instruction for t in kept2] == ["Write a sentence."]
    assert drops == {DropReason.DUPLICATE_IN_RUN: 1, DropReason.TOO_MANY_TASKS: 1}


def test_degenerate_and_media() -> None:
    u = Unit("d", "c", "", (Field("text", "string"), Field("one", "class_label", ("only",)),
                            Field("img", "image", media=True)))
    kept, drops = TaskFilter(5).filter(u, "description", [
        rec("Label it.", ["text"], "one"), rec("Caption.", ["img"], "text")], set())
    assert kept == []
    assert drops == {DropReason.DEGENERATE_LABEL: 1, DropReason.MEDIA_FIELD: 1}


def test_field_names_kept_exactly() -> None:
    u = Unit("d", "c", "", (Field("question_id", "string"), Field("Antwort (de)", "string")))
    kept, _ = TaskFilter(3).filter(u, "no_description",
                                   [rec("Answer.", ["question_id"], "Antwort (de)")], set())
    assert kept[0].output_field == "Antwort (de)"


def test_task_ids_are_content_addressed(glue_unit: Unit) -> None:
    one = [rec("Predict idx.", ["sentence"], "idx")]
    a, _ = TaskFilter(3).filter(glue_unit, "description", one, set())
    b, _ = TaskFilter(3).filter(glue_unit, "description", one, set())
    c, _ = TaskFilter(3).filter(glue_unit, "no_description", one, set())
    assert a[0].id == b[0].id != c[0].id


def test_heldout_is_by_task(glue_unit: Unit) -> None:
    f = TaskFilter(50, heldout_fraction=0.5)
    recs = [rec(f"Task number {i}.", ["sentence"], "idx") for i in range(40)]
    kept, _ = f.filter(glue_unit, "description", recs, set())
    splits = {t.split for t in kept}
    assert splits == {"train", "heldout"}


def test_label_suffix_is_deterministic() -> None:
    assert label_suffix(["a", "b"]) == " Answers must be one of: a, b."
