"""Which generated tasks are kept, and why each of the others is dropped.

Pure: given raw task records for one unit, it returns kept ``Task`` objects
and a count per drop reason. Dedup state for the whole run is passed in, so
the same function serves live runs, resumes and re-derivation from cache.

Rules (the paper's, made explicit):
- the instruction is non-empty and not huge;
- every input field and the output field exist in the dataset, exactly;
- the output field is not among the inputs, and no input is a media column;
- a task whose output is a label with a single class is degenerate;
- duplicate instructions (normalised) are dropped within the unit and across
  the run, first come first kept (the engine commits units in source order, so
  "first" is deterministic);
- a label output gets a deterministic "Answers must be one of …" suffix.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dynogen.dedup import HashSet, text_hash
from dynogen.instances import is_heldout
from dynogen.tasks import Task, task_id
from dynogen.units import Unit

__all__ = ["DropReason", "TaskFilter", "label_suffix"]

MAX_INSTRUCTION_CHARS = 2000
MAX_SUFFIX_LABELS = 30


class DropReason:
    EMPTY_INSTRUCTION = "empty_instruction"
    INSTRUCTION_TOO_LONG = "instruction_too_long"
    NO_INPUT_FIELDS = "no_input_fields"
    UNKNOWN_INPUT_FIELD = "unknown_input_field"
    UNKNOWN_OUTPUT_FIELD = "unknown_output_field"
    OUTPUT_IN_INPUTS = "output_in_inputs"
    MEDIA_FIELD = "media_field"
    DEGENERATE_LABEL = "degenerate_single_label"
    DUPLICATE_IN_UNIT = "duplicate_in_unit"
    DUPLICATE_IN_RUN = "duplicate_in_run"
    TOO_MANY_TASKS = "over_max_tasks"


def label_suffix(labels: tuple[str, ...] | list[str]) -> str:
    shown = [str(x) for x in labels[:MAX_SUFFIX_LABELS]]
    return " Answers must be one of: " + ", ".join(shown) + "."


class TaskFilter:
    """Keeps the run-wide dedup state; ``filter`` is called once per unit and variant."""

    __slots__ = ("seen", "max_tasks", "heldout_fraction")

    def __init__(self, max_tasks: int, heldout_fraction: float = 0.0,
                 seen: HashSet | None = None) -> None:
        self.seen = seen if seen is not None else HashSet()
        self.max_tasks = max_tasks
        self.heldout_fraction = heldout_fraction

    def filter(self, unit: Unit, variant: str, records: list[dict[str, Any]],
               unit_seen: set[int]) -> tuple[list[Task], Counter[str]]:
        kept: list[Task] = []
        drops: Counter[str] = Counter()
        for rec in records:
            if len(kept) >= self.max_tasks:
                drops[DropReason.TOO_MANY_TASKS] += 1
                continue
            reason, task = self._check(unit, variant, rec)
            if reason is None:
                assert task is not None
                h = text_hash(task.instruction)
                if h in unit_seen:
                    reason = DropReason.DUPLICATE_IN_UNIT
                elif not self.seen.add(h):
                    reason = DropReason.DUPLICATE_IN_RUN
                else:
                    unit_seen.add(h)
                    kept.append(task)
                    continue
            drops[reason] += 1
        return kept, drops

    def _check(self, unit: Unit, variant: str,
               rec: dict[str, Any]) -> tuple[str | None, Task | None]:
        instr = " ".join(str(rec.get("instruction", "")).split())
        if not instr:
            return DropReason.EMPTY_INSTRUCTION, None
        if len(instr) > MAX_INSTRUCTION_CHARS:
            return DropReason.INSTRUCTION_TOO_LONG, None
        inputs = tuple(dict.fromkeys(rec.get("input_fields") or ()))
        out = rec.get("output_field")
        if not inputs:
            return DropReason.NO_INPUT_FIELDS, None
        in_fields = [unit.field(n) for n in inputs]
        if any(f is None for f in in_fields):
            return DropReason.UNKNOWN_INPUT_FIELD, None
        out_field = unit.field(out) if isinstance(out, str) else None
        if out_field is None:
            return DropReason.UNKNOWN_OUTPUT_FIELD, None
        if out in inputs:
            return DropReason.OUTPUT_IN_INPUTS, None
        if out_field.media or any(f is not None and f.media for f in in_fields):
            return DropReason.MEDIA_FIELD, None
        labels = out_field.labels
        if labels and len(set(labels)) < 2:
            return DropReason.DEGENERATE_LABEL, None
        if labels:
            instr = instr.rstrip() + label_suffix(labels)
        tid = task_id(unit.dataset, unit.config, variant, instr, inputs, out_field.name)
        split = "heldout" if is_heldout(tid, self.heldout_fraction) else "train"
        return None, Task(tid, unit.dataset, unit.config, variant, instr, inputs,
                          out_field.name, unit.license, labels, split)
