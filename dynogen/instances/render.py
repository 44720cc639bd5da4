"""Turning a dataset row into an (instruction, input, output) instance under a task.

Pure and total: any row, however odd its values, gives either an ``Instance``
or a skip reason (an ``InstanceSkip`` label the engine counts), never an
exception. Rendering rules, applied the same way every time:

Values
    - text is stripped; ``None``, ``""``, NaN and empty lists/dicts are empty;
    - ``True``/``False`` become ``true``/``false``; integers print as is;
      floats print shortest-form, integral floats without ``.0``;
    - ClassLabel ids become label names (``labels`` maps column -> names);
      ``-1`` means the row is unlabelled (skip ``unlabelled``), another id out
      of range is ``bad_label``; a value already given as a name is kept;
    - lists of ClassLabel ids become names joined with ``", "``;
    - bytes (undecoded media) skip the row as ``binary_field``.
Lists
    - a list of choices (column named like choices/options/endings/candidates,
      or a struct of parallel ``label``/``text`` lists as in CommonsenseQA) is
      lettered one per line ``A. ...``, ``B. ...`` (numbered past 26 items);
    - ``tokens``/``words`` columns are joined with spaces;
    - any other list gives one item per line.
Structs (dicts)
    - a ``text`` key holding a list (SQuAD ``answers``): its first non-empty
      text; a ``text`` key holding a string: that string;
    - otherwise one ``key: value`` line per key, in the row's key order;
      values nested deeper are written inline as ``[a, b]`` and ``{k: v}``.
Input
    - one input field: its value as text; several: ``name: value`` lines
      (``name:`` then the value on the next lines when it spans lines);
    - an input field absent from the row is ``missing_field``; present but
      empty is ``empty_input``;
    - an input longer than ``INPUT_CHAR_CAP`` is cut, longest fields first,
      but only around what the output depends on: each field to cut must hold
      the output text (an extractive answer), and keeps a window around it
      marked with ``…``; the instance says ``truncated=True``. When the output
      cannot be located there, the cut could remove what it depends on, and
      the row is ``input_too_long``.
Output
    - empty is ``empty_output``; longer than ``OUTPUT_CHAR_CAP`` is
      ``output_too_long`` (an answer cut short would teach a wrong answer).

The instance's ``split`` is the task's (``train`` or ``heldout``): held-out
data is decided per task, never per row (see ``split_heldout``).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from dynogen.tasks.task import Task

__all__ = [
    "FACT_CHARS",
    "INPUT_CHAR_CAP",
    "OUTPUT_CHAR_CAP",
    "Instance",
    "InstanceSkip",
    "build_instance",
    "instance_hash",
    "is_heldout",
    "render_value",
    "row_facts",
    "split_heldout",
]

INPUT_CHAR_CAP = 8000
OUTPUT_CHAR_CAP = 4000
_MAX_DEPTH = 8
_ELLIPSIS = "…"
_CHOICE_NAMES = ("choice", "option", "ending", "candidate", "alternative")
_TOKEN_NAMES = ("tokens", "words")


class InstanceSkip:
    """Counted reasons a row gives no instance (labels used in report.json)."""

    MISSING_FIELD = "missing_field"
    EMPTY_INPUT = "empty_input"
    EMPTY_OUTPUT = "empty_output"
    UNLABELLED = "unlabelled"
    BAD_LABEL = "bad_label"
    BINARY_FIELD = "binary_field"
    UNSUPPORTED_VALUE = "unsupported_value"
    OUTPUT_TOO_LONG = "output_too_long"
    INPUT_TOO_LONG = "input_too_long"
    NOT_AN_ANSWER = "output_not_in_labels"


@dataclass(frozen=True, slots=True)
class Instance:
    """One training example. ``truncated`` tells the engine the input was cut (not exported)."""

    instruction: str
    input: str
    output: str
    task_id: str
    dataset: str
    config: str
    split: str
    license: str | None = None
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "input": self.input,
            "output": self.output,
            "task_id": self.task_id,
            "dataset": self.dataset,
            "config": self.config,
            "split": self.split,
            "license": self.license,
        }


_MISSING = object()


def lookup(row: Mapping[str, Any], name: str) -> Any:
    """``row[name]``, or for a dotted name a key of a dict column ("translation.de")."""
    if name in row:
        return row[name]
    head, dot, tail = name.partition(".")
    if dot:
        inner = row.get(head)
        if isinstance(inner, Mapping) and tail in inner:
            return inner[tail]
    return _MISSING


class _Skip(Exception):
    """Internal: carries a skip reason out of nested rendering."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def build_instance(
    task: Task, row: Mapping[str, Any], labels: Mapping[str, Sequence[str]]
) -> Instance | str:
    """The instance for ``row`` under ``task``, or the reason it has none."""
    try:
        values = {}
        for name in (*task.input_fields, task.output_field):
            value = lookup(row, name)
            if value is _MISSING:
                return InstanceSkip.MISSING_FIELD
            values[name] = value
        output = _render_value(values[task.output_field], task.output_field,
                              labels.get(task.output_field))
        if not output:
            return InstanceSkip.EMPTY_OUTPUT
        if len(output) > OUTPUT_CHAR_CAP:
            return InstanceSkip.OUTPUT_TOO_LONG
        parts = []
        for name in task.input_fields:
            text = _render_value(values[name], name, labels.get(name))
            if not text:
                return InstanceSkip.EMPTY_INPUT
            parts.append(text)
        if task.labels and output not in task.labels:
            return InstanceSkip.NOT_AN_ANSWER  # the instruction lists every allowed answer
        parts, truncated = _fit(parts, task.input_fields, output)
    except _Skip as s:
        return s.reason
    if len(parts) == 1:
        input_text = parts[0]
    else:
        input_text = "\n".join(
            f"{name}:\n{text}" if "\n" in text else f"{name}: {text}"
            for name, text in zip(task.input_fields, parts, strict=True)
        )
    return Instance(
        instruction=task.instruction,
        input=input_text,
        output=output,
        task_id=task.id,
        dataset=task.dataset,
        config=task.config,
        split=task.split,
        license=task.license,
        truncated=truncated,
    )


def render_value(value: Any, name: str = "", names: Sequence[str] | None = None) -> str | None:
    """One column's value as an instance would show it, or ``None`` if it has a skip reason."""
    try:
        return _render_value(value, name, names)
    except _Skip:
        return None


def _render_value(value: Any, name: str = "", names: Sequence[str] | None = None) -> str:
    """One column's value as text by the module's rules; raises ``_Skip`` for skip reasons."""
    if names:
        value = _decode_labels(value, names)
    if isinstance(value, Mapping):
        return _render_struct(value, name)
    if isinstance(value, (list, tuple)):
        return _render_list(value, name)
    return _scalar(value)


def _decode_labels(value: Any, names: Sequence[str], top: bool = True) -> Any:
    """ClassLabel ids to names: a column's value, or the items of a list of ids."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value == -1:
            raise _Skip(InstanceSkip.UNLABELLED)
        if not 0 <= value < len(names):
            raise _Skip(InstanceSkip.BAD_LABEL)
        return str(names[value])
    if top and isinstance(value, (list, tuple)):
        decoded = [_decode_labels(v, names, top=False) for v in value]
        if decoded and all(isinstance(v, str) for v in decoded):
            return ", ".join(decoded)
        return decoded
    return value


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int_text(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "infinity" if value > 0 else "-infinity"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise _Skip(InstanceSkip.BINARY_FIELD)
    if isinstance(value, (_dt.date, _dt.time, _dt.timedelta, decimal.Decimal)):
        return str(value)
    raise _Skip(InstanceSkip.UNSUPPORTED_VALUE)


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # beyond Python's int->str digit limit: not a real dataset value
        raise _Skip(InstanceSkip.UNSUPPORTED_VALUE) from None


def _render_list(items: Sequence[Any], name: str) -> str:
    key = name.lower()
    texts = [t for t in (_inline(v, 1) for v in items) if t]
    if not texts:
        return ""
    if any(n in key for n in _CHOICE_NAMES):
        return _lettered(texts)
    if key in _TOKEN_NAMES or key.endswith(tuple("_" + n for n in _TOKEN_NAMES)):
        return " ".join(texts)
    return "\n".join(texts)


def _render_struct(value: Mapping[Any, Any], name: str) -> str:
    text = value.get("text")
    if isinstance(text, str):
        return text.strip()
    if isinstance(text, (list, tuple)):
        label = value.get("label")
        if (isinstance(label, (list, tuple)) and len(label) == len(text) and len(text) > 0
                and all(isinstance(x, str) and x.strip() for x in label)):
            return "\n".join(
                f"{lab.strip()}. {_inline(t, 1)}" for lab, t in zip(label, text, strict=True)
            )
        for t in text:
            first = _inline(t, 1)
            if first:
                return first
        return ""
    lines = []
    for k, v in value.items():
        rendered = _inline(v, 2)
        if rendered:
            lines.append(f"{_key(k)}: {rendered}")
    return "\n".join(lines)


def _inline(value: Any, depth: int) -> str:
    """A nested value on one line: lists as ``[a, b]``, structs as ``{k: v}``."""
    if depth > _MAX_DEPTH:
        return _ELLIPSIS
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)}: {_inline(v, depth + 1)}" for k, v in value.items())
        return "{" + inner + "}" if depth > 1 else inner
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_inline(v, depth + 1) for v in value)
        return "[" + inner + "]" if depth > 1 else inner
    return " ".join(_scalar(value).split()) if depth > 1 else _scalar(value)


def _key(k: Any) -> str:
    return k if isinstance(k, str) else _scalar(k)


def _lettered(texts: Sequence[str]) -> str:
    if len(texts) <= 26:
        return "\n".join(f"{chr(65 + i)}. {t}" for i, t in enumerate(texts))
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))


def _fit(parts: list[str], names: Sequence[str], output: str = "") -> tuple[list[str], bool]:
    """Cut the longest fields to a common length so the input fits ``INPUT_CHAR_CAP``.

    Labels (``name: ``) and newlines count too; short fields are never cut, so
    a question after a long passage survives. A field is cut around the
    output's first occurrence; a field to cut that does not hold the output
    raises ``input_too_long`` (see the module docstring).
    """
    overhead = 0 if len(parts) == 1 else sum(len(n) + 3 for n in names)
    budget = max(len(parts), INPUT_CHAR_CAP - overhead)
    if sum(len(p) for p in parts) <= budget:
        return parts, False
    lengths = sorted(len(p) for p in parts)
    remaining, level = budget, 0
    for i, n in enumerate(lengths):
        share = remaining // (len(lengths) - i)
        if n <= share:
            remaining -= n
            continue
        level = share
        break
    return [p if len(p) <= level else _window(p, level, output) for p in parts], True


def _window(text: str, level: int, output: str) -> str:
    """``text`` cut to ``level`` characters around ``output``; ``input_too_long`` if absent."""
    pos = text.lower().find(output.lower()) if len(output) >= 3 else -1
    if pos < 0 or len(output) > level - 2:
        raise _Skip(InstanceSkip.INPUT_TOO_LONG)
    room = level - 2 - len(output)
    start = max(0, min(pos - room // 2, len(text) - (level - 2)))
    end = start + level - 2
    head = _ELLIPSIS if start > 0 else ""
    tail = _ELLIPSIS if end < len(text) else ""
    return head + text[start:end].strip() + tail


def instance_hash(inst: Instance) -> int:
    """Content hash for dedup: same instruction, input and output, same hash."""
    h = xxhash.xxh3_64()
    for part in (inst.instruction, inst.input, inst.output):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.intdigest()


def is_heldout(task_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a task is held out, from its id alone.

    Deciding per task (not by sorting all tasks) keeps the answer stable when
    tasks arrive in any order, or when a resumed run adds more.
    """
    if fraction <= 0.0:
        return False
    point = xxhash.xxh3_64_intdigest(f"{seed}\x1f{task_id}".encode()) / 2.0**64
    return point < fraction


def split_heldout(
    tasks: Iterable[Task], fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train_ids, heldout_ids)`` in the tasks' order; about ``fraction`` are held out."""
    train: list[str] = []
    heldout: list[str] = []
    for t in tasks:
        (heldout if is_heldout(t.id, fraction, seed) else train).append(t.id)
    return train, heldout


FACT_CHARS = 300  # longer rendered values are cut, with a hash of the whole kept


def _compact(text: str) -> str:
    if len(text) <= FACT_CHARS:
        return text
    return text[:FACT_CHARS] + "…" + xxhash.xxh3_64_hexdigest(text.encode("utf-8", "replace"))


def row_facts(rows: Iterable[Mapping[str, Any]],
              labels: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each column's rendered values over ``rows`` (long ones cut, with a hash kept).

    Rendered as instances render them (label ids to names), so a rule sees
    what an instance would hold; values that cannot be rendered are ``""``.
    """
    rows = list(rows)
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    out: dict[str, list[str]] = {n: [] for n in names}
    for r in rows:
        for n in names:
            text = render_value(r.get(n), n, labels.get(n)) if n in r else ""
            out[n].append(_compact(text or ""))
    return out
