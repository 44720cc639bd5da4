"""A generated task: an instruction over some input fields and one output field.

Tasks are what the LLM produces per unit; instances are what rows become under
a task. A task's ``id`` is derived from its content, so the same task generated
again (after a resume, or from a cached answer) gets the same id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import xxhash

__all__ = ["Task", "task_id"]


def task_id(dataset: str, config: str, variant: str, instruction: str, inputs: tuple[str, ...],
            output: str) -> str:
    h = xxhash.xxh3_64()
    for part in (dataset, config, variant, instruction, "\x1f".join(inputs), output):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Task:
    """One kept task.

    ``labels`` are the answers the instruction lists ("Answers must be one of …"),
    every one of them, or ``()`` when it lists none. ``input_types`` and
    ``output_type`` are the fields' types: run-wide dedup compares them.
    """

    id: str
    dataset: str
    config: str
    variant: str
    instruction: str
    input_fields: tuple[str, ...]
    output_field: str
    license: str | None = None
    labels: tuple[str, ...] = ()
    split: str = "train"  # "train" or "heldout": held-out is decided per task, never per row
    input_types: tuple[str, ...] = ()
    output_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "config": self.config,
            "variant": self.variant,
            "instruction": self.instruction,
            "input_fields": list(self.input_fields),
            "output_field": self.output_field,
            "license": self.license,
            "labels": list(self.labels),
            "split": self.split,
            "input_types": list(self.input_types),
            "output_type": self.output_type,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(
            id=str(d["id"]),
            dataset=str(d["dataset"]),
            config=str(d["config"]),
            variant=str(d["variant"]),
            instruction=str(d["instruction"]),
            input_fields=tuple(d["input_fields"]),
            output_field=str(d["output_field"]),
            license=d.get("license"),
            labels=tuple(d.get("labels") or ()),
            split=str(d.get("split") or "train"),
            input_types=tuple(str(t) for t in d.get("input_types") or ()),
            output_type=str(d.get("output_type") or ""),
        )
