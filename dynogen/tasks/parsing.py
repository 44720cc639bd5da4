"""Turn an LLM's answer text into raw task records, tolerantly.

Where the server honoured the JSON schema this is one ``orjson.loads``. Where
it did not (``json_object`` or plain text) answers come wrapped in code fences,
prose, a bare list, or with keys spelled differently; we recover what is
unambiguous and report a reason for the rest. Nothing here raises on content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ParseResult", "parse_tasks"]

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_INPUT_KEYS = ("input_fields", "inputs", "input_field", "input", "input_columns")
_OUTPUT_KEYS = ("output_field", "output", "outputs", "output_fields", "output_column", "target")
_INSTR_KEYS = ("instruction", "task", "prompt", "description")


@dataclass(frozen=True, slots=True)
class ParseResult:
    """``tasks`` holds normalised records; ``error`` a reason label when none could be read."""

    tasks: list[dict[str, Any]]
    error: str | None = None
    malformed: int = 0  # records inside a readable answer that had the wrong shape


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _NOT_JSON


_NOT_JSON = object()


def _extract(text: str) -> Any:
    obj = _loads(text)
    if obj is not _NOT_JSON:
        return obj
    for m in _FENCE.finditer(text):
        obj = _loads(m.group(1).strip())
        if obj is not _NOT_JSON:
            return obj
    # The outermost {...} or [...] span in surrounding prose.
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            obj = _loads(text[i : j + 1])
            if obj is not _NOT_JSON:
                return obj
    return _NOT_JSON


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def _names(v: Any) -> list[str] | None:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    return None


def _normalise(rec: Any) -> dict[str, Any] | None:
    if not isinstance(rec, dict):
        return None
    instr = _first(rec, _INSTR_KEYS)
    inputs = _names(_first(rec, _INPUT_KEYS))
    out = _first(rec, _OUTPUT_KEYS)
    if isinstance(out, list) and len(out) == 1 and isinstance(out[0], str):
        out = out[0]
    if not isinstance(instr, str) or inputs is None or not isinstance(out, str):
        return None
    return {"instruction": instr, "input_fields": inputs, "output_field": out}


def parse_tasks(content: str | None) -> ParseResult:
    if content is None or not content.strip():
        return ParseResult([], "empty_answer")
    obj = _extract(content)
    if obj is _NOT_JSON:
        return ParseResult([], "not_json")
    if isinstance(obj, dict):
        recs = obj.get("tasks")
        if recs is None and _normalise(obj) is not None:
            recs = [obj]
    else:
        recs = obj
    if not isinstance(recs, list):
        return ParseResult([], "wrong_shape")
    tasks = []
    bad = 0
    for rec in recs:
        t = _normalise(rec)
        if t is None:
            bad += 1
        else:
            tasks.append(t)
    if not tasks and bad:
        return ParseResult([], "wrong_shape", bad)
    return ParseResult(tasks, None, bad)
