"""The ``response_format`` that makes invalid tasks impossible where it is honoured.

With ``json_schema``, field names are enums of the unit's real fields, so a
server that constrains decoding (OpenAI strict mode, llama.cpp grammars)
cannot name a field the dataset lacks. Bounds (``maxItems``, ``maxLength``)
matter on small local models: without them a grammar lets the model loop until
``max_tokens`` and return cut-off JSON.

Each task is one ``anyOf`` branch per field that may be the output: the
branch's ``output_field`` is that one name and its ``input_fields`` enum
leaves it out, so "the output is also an input" cannot be decoded either
(on the local model it was the cause of 98 of 111 dropped tasks). Id-like and
media fields are never outputs. The branches multiply enum values (fields ×
outputs); OpenAI allows 1,000 enum values a schema, so past
``MAX_ENUM_VALUES`` only the likeliest outputs (labels first, then text) keep a
branch, and a dataset too wide for even one branch gets the flat schema.

Servers that refuse a schema get ``json_object``, then nothing; the client
steps down this ladder on a 400 that names ``response_format`` (see
``FORMAT_LADDER``), and tolerant parsing covers what the server did not enforce.

``shared_response_format`` is the other schema, the same for every unit (the
``shared`` prompt layout, ``dynogen.prompts.layout``): field names are free
strings of at most ``MAX_FIELD_NAME_CHARS`` characters, so a server that puts
the schema first in what it hashes for its prompt cache (OpenAI) sees one
prefix for every request of a variant. Nothing stops a model from naming a
field the dataset lacks, or the output among the inputs; the task filter
(``dynogen.tasks.filter``) drops such tasks, each under its reason, as it does
for answers no schema constrained.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMAT_LADDER", "MAX_ENUM_VALUES", "MAX_FIELD_NAME_CHARS", "MAX_INSTRUCTION_CHARS",
           "next_format", "response_format", "shared_response_format"]

FORMAT_LADDER = ("json_schema", "json_object", "none")
MAX_INSTRUCTION_CHARS = 400
MAX_INPUT_FIELDS = 4
MAX_ENUM_VALUES = 900  # OpenAI strict mode: at most 1,000 enum values in one schema
# The shared schema's bound on a field name: the 2022 corpus's longest is 35 characters.
MAX_FIELD_NAME_CHARS = 128


def _task(inputs: list[str], outputs: list[str], n_names: int) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["instruction", "input_fields", "output_field"],
        "properties": {
            "instruction": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTION_CHARS},
            "input_fields": {
                "type": "array",
                "minItems": 1,
                "maxItems": min(MAX_INPUT_FIELDS, max(1, n_names - 1)),
                "items": {"type": "string", "enum": inputs},
            },
            "output_field": {"type": "string", "enum": outputs},
        },
    }


def response_format(kind: str, field_names: list[str], max_tasks: int,
                    outputs: list[str] | None = None) -> dict[str, Any] | None:
    """The request's ``response_format``; ``outputs`` are the fields that may be the output,
    likeliest first (``None``: every field)."""
    if kind == "none":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    names = list(dict.fromkeys(field_names))  # exact names, order kept, no repeats
    cands = [o for o in dict.fromkeys(outputs if outputs is not None else names) if o in names]
    cands = cands[: MAX_ENUM_VALUES // max(1, len(names))]
    task: dict[str, Any]
    if len(names) < 2 or not cands:
        task = _task(names, names, len(names))
    elif len(cands) == 1:
        task = _task([n for n in names if n != cands[0]], cands, len(names))
    else:
        task = {"anyOf": [_task([n for n in names if n != o], [o], len(names)) for o in cands]}
    return _envelope(task, max_tasks)


def _envelope(task: dict[str, Any], max_tasks: int) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "tasks",
            "strict": True,
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["tasks"],
                "properties": {
                    "tasks": {"type": "array", "minItems": 1, "maxItems": max_tasks, "items": task}
                },
            },
        },
    }


def shared_response_format(kind: str, max_tasks: int) -> dict[str, Any] | None:
    """The request's ``response_format`` under the shared layout: the same bytes for every
    unit (field names are bounded free strings, checked after the answer)."""
    if kind != "json_schema":
        return response_format(kind, [], max_tasks)
    name = {"type": "string", "maxLength": MAX_FIELD_NAME_CHARS}
    task = {
        "type": "object",
        "additionalProperties": False,
        "required": ["instruction", "input_fields", "output_field"],
        "properties": {
            "instruction": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTION_CHARS},
            "input_fields": {"type": "array", "minItems": 1, "maxItems": MAX_INPUT_FIELDS,
                             "items": name},
            "output_field": name,
        },
    }
    return _envelope(task, max_tasks)


def next_format(kind: str) -> str | None:
    """The next, less demanding format after a server refused ``kind``."""
    i = FORMAT_LADDER.index(kind)
    return FORMAT_LADDER[i + 1] if i + 1 < len(FORMAT_LADDER) else None
