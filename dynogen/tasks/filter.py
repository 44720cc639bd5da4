"""Which generated tasks are kept, and why each of the others is dropped.

Pure but for an optional sample file: given raw task records for one unit, it
returns kept ``Task`` objects and a count per drop reason. Dedup state for the
whole run is passed in, so the same function serves live runs, resumes and
re-derivation from cache.

Rules, in order (the first that fails is counted):
- shape: the instruction is non-empty and not huge; every input field and the
  output field exist in the dataset, exactly; the output is not an input; no
  media field; a label output with a single class is degenerate;
- row rules on sampled rows (``rules.row_rule``): id-like, constant,
  imbalanced outputs, an output equal to an input;
- field rules (``rules.field_rule``): no input that carries content, a choice
  key asked for without its choices;
- text rules (``rules.text_rule``): too short, no verb, copied from the
  description, a few-shot example or field values, quoting a sample row,
  generation/label mismatch;
- the answer list (``answers.state_answers``): a list the model wrote that
  disagrees with the output's answers and cannot be taken out;
- dedup: the same instruction *on the same fields* (names and types) is kept
  once, within the unit and across the run, first come first kept (units
  commit in source order, so "first" is deterministic). The same words on
  other fields are another task and are kept.

A label output with a small single-valued answer set states every answer once,
deterministically: the lists the model wrote are taken out and "Answers must be
one of …" is appended (``rules.answer_options``, ``answers.state_answers``).

Dropped tasks are counted; up to ``SAMPLE_PER_REASON`` of each reason per
session are also written to ``dropped_tasks.jsonl`` for ``dynogen inspect``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import xxhash

from dynogen.dedup import HashSet, normalize_text
from dynogen.instances.render import is_heldout
from dynogen.tasks.answers import label_suffix, state_answers
from dynogen.tasks.rules import Facts, UnitText, field_rule, row_rule, text_rule
from dynogen.tasks.task import Task, task_id
from dynogen.units import Unit, safe_text

__all__ = ["DropReason", "SAMPLE_PER_REASON", "TaskFilter", "label_suffix", "task_signature"]

MAX_INSTRUCTION_CHARS = 2000
SAMPLE_PER_REASON = 20


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


def task_signature(instruction: str, inputs: tuple[str, ...] | list[str],
                   input_types: tuple[str, ...] | list[str], output: str, output_type: str) -> int:
    """Dedup key: the normalised instruction and the fields' names and types."""
    h = xxhash.xxh3_64()
    for part in (normalize_text(instruction), *inputs, "\x1d", *input_types, "\x1d", output,
                 output_type):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.intdigest()


def _examples(facts: Facts | None, inputs: list[str], output: str,
              n: int = 2) -> list[dict[str, str]]:
    """What the dropped task's first rows would have been (inputs and output, shortened)."""
    if not facts or output not in facts or not all(i in facts for i in inputs):
        return []
    out = []
    for i in range(min(n, len(facts[output]))):
        shown = {name: facts[name][i][:200] for name in inputs}
        out.append({"input": "\n".join(f"{k}: {v}" for k, v in shown.items()),
                    "output": facts[output][i][:200]})
    return out


class TaskFilter:
    """Keeps the run-wide dedup state; ``filter`` is called once per unit and variant."""

    __slots__ = ("seen", "max_tasks", "heldout_fraction", "sample_path", "_sampled", "_view")

    def __init__(self, max_tasks: int, heldout_fraction: float = 0.0,
                 seen: HashSet | None = None, sample_path: Path | None = None) -> None:
        self.seen = seen if seen is not None else HashSet()
        self.max_tasks = max_tasks
        self.heldout_fraction = heldout_fraction
        self.sample_path = sample_path
        self._sampled: Counter[str] = Counter()
        self._view: UnitText | None = None  # the last unit's, for its other variants

    def remember(self, rec: dict[str, Any]) -> None:
        """Add a task already in ``tasks.jsonl`` (a resumed run) to the dedup state."""
        try:
            t = Task.from_dict(rec)
        except (KeyError, TypeError):
            return
        self.seen.add(task_signature(t.instruction, t.input_fields, t.input_types,
                                     t.output_field, t.output_type))

    def filter(self, unit: Unit, variant: str, records: list[dict[str, Any]],
               unit_seen: set[int]) -> tuple[list[Task], Counter[str]]:
        kept: list[Task] = []
        drops: Counter[str] = Counter()
        facts = unit.extra.get("facts")
        view = self._view
        if view is None or not view.is_for(unit, facts):
            view = self._view = UnitText(unit, facts)
        for rec in records:
            if len(kept) >= self.max_tasks:
                drops[DropReason.TOO_MANY_TASKS] += 1
                continue
            reason, task = self._check(unit, variant, rec, view)
            if reason is None:
                assert task is not None
                h = task_signature(task.instruction, task.input_fields, task.input_types,
                                   task.output_field, task.output_type)
                if h in unit_seen:
                    reason = DropReason.DUPLICATE_IN_UNIT
                elif not self.seen.add(h):
                    reason = DropReason.DUPLICATE_IN_RUN
                else:
                    unit_seen.add(h)
                    kept.append(task)
                    continue
            drops[reason] += 1
            self._sample(reason, unit, variant, rec)
        return kept, drops

    def _sample(self, reason: str, unit: Unit, variant: str, rec: dict[str, Any]) -> None:
        if self.sample_path is None or self._sampled[reason] >= SAMPLE_PER_REASON:
            return
        self._sampled[reason] += 1
        inputs = [safe_text(str(x)) for x in rec.get("input_fields") or () if isinstance(x, str)]
        output = safe_text(str(rec.get("output_field", "")))
        line: dict[str, Any] = {"reason": reason, "dataset": safe_text(unit.dataset),
                "config": safe_text(unit.config), "variant": variant,
                "instruction": safe_text(str(rec.get("instruction", ""))[:1000]),
                "input_fields": inputs, "output_field": output}
        examples = _examples(unit.extra.get("facts"), inputs, output)
        if examples:
            line["examples"] = examples
        with open(self.sample_path, "ab") as f:
            f.write(orjson.dumps(line) + b"\n")

    def _check(self, unit: Unit, variant: str, rec: dict[str, Any],
               view: UnitText) -> tuple[str | None, Task | None]:
        instr = " ".join(str(rec.get("instruction", "")).split())
        if not instr:
            return DropReason.EMPTY_INSTRUCTION, None
        if len(instr) > MAX_INSTRUCTION_CHARS:
            return DropReason.INSTRUCTION_TOO_LONG, None
        raw_inputs = rec.get("input_fields") or ()
        if not isinstance(raw_inputs, (list, tuple)):
            raw_inputs = (raw_inputs,)
        inputs = tuple(dict.fromkeys(str(x) for x in raw_inputs))
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
        if out_field.labels and len(set(out_field.labels)) < 2:
            return DropReason.DEGENERATE_LABEL, None
        facts: Facts | None = unit.extra.get("facts")
        reason = (row_rule(inputs, out_field, facts) or field_rule(inputs, out_field, view)
                  or text_rule(instr, unit, inputs, out_field, facts, view))
        if reason:
            return reason, None
        stated = state_answers(instr, out_field, facts)
        if isinstance(stated, str):
            return stated, None
        instr, answers = stated
        tid = task_id(unit.dataset, unit.config, variant, instr, inputs, out_field.name)
        split = "heldout" if is_heldout(tid, self.heldout_fraction) else "train"
        types = tuple(f.type for f in in_fields if f is not None)
        return None, Task(tid, unit.dataset, unit.config, variant, instr, inputs,
                          out_field.name, unit.license, answers, split, types, out_field.type)
