"""The ``response_format`` that makes invalid tasks impossible where it is honoured.

With ``json_schema``, field names are enums of the unit's real fields, so a
server that constrains decoding (OpenAI strict mode, llama.cpp grammars)
cannot name a field the dataset lacks. Bounds (``maxItems``, ``maxLength``)
matter on small local models: without them a grammar lets the model loop until
``max_tokens`` and return cut-off JSON.

Servers that refuse a schema get ``json_object``, then nothing; the client
steps down this ladder on a 400 that names ``response_format`` (see
``FORMAT_LADDER``), and tolerant parsing covers what the server did not enforce.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMAT_LADDER", "MAX_INSTRUCTION_CHARS", "response_format", "next_format"]

FORMAT_LADDER = ("json_schema", "json_object", "none")
MAX_INSTRUCTION_CHARS = 400
MAX_INPUT_FIELDS = 4


def response_format(kind: str, field_names: list[str], max_tasks: int) -> dict[str, Any] | None:
    if kind == "none":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    names = list(dict.fromkeys(field_names))  # exact names, order kept, no repeats
    name_schema = {"type": "string", "enum": names}
    task = {
        "type": "object",
        "additionalProperties": False,
        "required": ["instruction", "input_fields", "output_field"],
        "properties": {
            "instruction": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTION_CHARS},
            "input_fields": {
                "type": "array",
                "minItems": 1,
                "maxItems": min(MAX_INPUT_FIELDS, max(1, len(names) - 1)),
                "items": name_schema,
            },
            "output_field": name_schema,
        },
    }
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


def next_format(kind: str) -> str | None:
    """The next, less demanding format after a server refused ``kind``."""
    i = FORMAT_LADDER.index(kind)
    return FORMAT_LADDER[i + 1] if i + 1 < len(FORMAT_LADDER) else None
