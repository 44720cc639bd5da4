"""A task applied to rows: the one rule both builds follow.

``built_rows`` renders every row it can and counts why it could not render the
others; ``is_degenerate`` says whether a task without a label list produced one
output for every row (it is then dropped: there is nothing to learn); and
``instance_record`` is the ``instances.jsonl`` line. The single-process build
applies them to a unit's rows at once; the sharded build to a piece of them,
deciding ``is_degenerate`` from every piece's counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dynogen.instances.render import Instance, build_instance
from dynogen.tasks.task import Task

__all__ = ["MIN_ROWS_FOR_DEGENERATE", "built_rows", "instance_record", "is_degenerate",
           "render_rows"]

MIN_ROWS_FOR_DEGENERATE = 5


def built_rows(task: Task, rows: Iterable[tuple[str, Mapping[str, Any]]],
               labels: Mapping[str, Sequence[str]],
               skipped: Counter[str]) -> list[tuple[str, Instance]]:
    """``(split, instance)`` for every row the task renders; the others counted in ``skipped``."""
    return [(split, inst) for _, split, inst in render_rows(task, rows, labels, skipped)]


def render_rows(task: Task, rows: Iterable[tuple[str, Mapping[str, Any]]],
                labels: Mapping[str, Sequence[str]],
                skipped: Counter[str]) -> Iterator[tuple[int, str, Instance]]:
    """``(position in rows, split, instance)`` for every row the task renders."""
    for i, (split, row) in enumerate(rows):
        inst = build_instance(task, row, labels)
        if isinstance(inst, str):
            skipped[inst] += 1
        else:
            yield i, split, inst


def is_degenerate(task: Task, built: int, distinct_outputs: int) -> bool:
    """A task with no label list whose every one of at least five instances has one output."""
    return (not task.labels and distinct_outputs == 1
            and built >= MIN_ROWS_FOR_DEGENERATE)


def instance_record(task: Task, split: str, inst: Instance) -> dict[str, Any]:
    """The ``instances.jsonl`` line of one instance."""
    d = inst.to_dict()
    d["split"] = split
    d["task_split"] = task.split
    if inst.truncated:
        d["input_truncated"] = True
    return d
