"""The judge: one more request per kept task, asking the model whether the task is valid.

The rules (``rules``, ``answers``) catch what can be checked mechanically; what
a task *means* (does the instruction ask for what the output field holds? can
the output be inferred from the inputs, or is it a publish date asked of a
headline?) needs a reader. ``--judge`` shows the model the dataset's metadata,
the task, the fields it is not given, and up to three of its instances built
from the unit's sample rows, and asks for a structured verdict that says
apart whether the output can be inferred from the inputs (reason first, so a
model that writes in order gives its reason before its verdict). Tasks judged
invalid are dropped with the model's reason (``judge_invalid`` in the report,
the reasons in ``units.jsonl``).

The request goes through the same executor as task generation, so it is
paced, budgeted, cached and journaled alike, online or in a Batch API job.
A judge answer that cannot be read is not a verdict: the task is kept and
counted as ``judge_no_verdict`` (a broken judge must not silently empty a run).

Pure parts (``judge_messages``, ``parse_verdict``) are apart from sending
(``Judge``) so they test without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from dynogen.config import Config
from dynogen.execute.base import Accounting, Executor, Request
from dynogen.prompts.dialect import Dialect
from dynogen.prompts.tokens import TokenCounter
from dynogen.tasks.task import Task

__all__ = ["JUDGE_MAX_TOKENS", "JUDGE_SYSTEM", "Judge", "Verdict", "judge_body",
           "judge_messages", "parse_verdict"]

JUDGE_MAX_TOKENS = 160
MAX_REASON_CHARS = 200
INSTANCE_CHARS = 600

JUDGE_SYSTEM = (
    "You review instruction-tuning tasks made from a dataset's metadata. A model will be "
    "trained to read a task's instruction and its input fields and to write its output "
    "field. A task is valid only when all of these hold:\n"
    "1. The instruction is a clear, self-contained command that fits every row of the "
    "dataset, not the content of one example row.\n"
    "2. It asks for what the output field actually holds (look at the examples).\n"
    "3. The output can be inferred from the input fields alone: a careful reader given "
    "only the inputs could write it. Facts the inputs do not state (a date, a source, an "
    "author or annotator, an id, a score) cannot be inferred, nor can a choice's letter "
    "when the choices are not given.\n"
    "4. The inputs hold content to read, not only ids, turn numbers, links or dates.\n"
    "5. Any answers the instruction lists are the answers the output takes.\n"
    "6. It does not merely describe the dataset.\n"
    "Answer with JSON only: "
    '{"reason": "one short sentence", "output_from_inputs": true or false, '
    '"valid": true or false}, where output_from_inputs says whether the output can be '
    "inferred from the input fields alone."
)

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
        "output_from_inputs": {"type": "boolean"},
        "valid": {"type": "boolean"},
    },
    "required": ["reason", "output_from_inputs", "valid"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judge's answer. ``valid`` is false when the judge said the output cannot be
    inferred from the inputs (``inferable``), whatever it said of the rest."""

    valid: bool
    reason: str
    inferable: bool | None = None  # None: the answer did not say


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def judge_messages(metadata: str, task: Task, instances: Sequence[Mapping[str, Any]],
                   fields: Sequence[str] = ()) -> list[dict[str, str]]:
    """The judge's conversation: the shared system prompt first, byte-identical, so a
    server's prompt cache serves it; the task and its examples last.

    ``fields``: the unit's field names; those the task neither gives nor asks for are
    named as not given (an answer key asked for without its choices shows there).
    """
    withheld = [f for f in fields if f not in task.input_fields and f != task.output_field]
    lines = [
        "Dataset metadata:", metadata.strip(), "",
        "Task:",
        f"instruction: {task.instruction}",
        f"input_fields: {', '.join(task.input_fields)}",
        f"output_field: {task.output_field}",
    ]
    if withheld:
        lines.append(f"fields not given to the model: {', '.join(withheld)}")
    if instances:
        lines += ["", "Examples built from the dataset's rows:"]
        for i, inst in enumerate(instances[:3], 1):
            lines.append(f"{i}. input: {_clip(str(inst.get('input', '')), INSTANCE_CHARS)}")
            lines.append(f"   output: {_clip(str(inst.get('output', '')), INSTANCE_CHARS)}")
    else:
        lines += ["", "(No rows were available to show examples.)"]
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": "\n".join(lines)}]


def judge_body(cfg: Config, messages: list[dict[str, str]], dialect: Dialect) -> dict[str, Any]:
    """The request body, shaped by the run's dialect like every other request."""
    body: dict[str, Any] = {"model": cfg.model, "messages": messages}
    body[dialect.token_param] = JUDGE_MAX_TOKENS
    if dialect.temperature:
        body["temperature"] = cfg.temperature
    if cfg.seed is not None:
        body["seed"] = cfg.seed
    if dialect.format == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "verdict", "strict": True, "schema": _SCHEMA}}
    elif dialect.format == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


def parse_verdict(content: str | None) -> Verdict | None:
    """The verdict in an answer, or ``None`` when the answer holds none."""
    if not content:
        return None
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("valid"), bool):
        return None
    reason = obj.get("reason")
    reason = " ".join(reason.split()) if isinstance(reason, str) else ""
    inferable = obj.get("output_from_inputs")
    inferable = inferable if isinstance(inferable, bool) else None
    return Verdict(obj["valid"] and inferable is not False,
                   _clip(reason, MAX_REASON_CHARS) or "no reason given", inferable)


class Judge:
    """Asks the executor for one verdict per task.

    >>> judge = Judge(cfg, executor, counter)
    >>> verdict = await judge.verdict(render_metadata(unit), task, instances, acct, dialect,
    ...                               [f.name for f in unit.fields])
    """

    def __init__(self, cfg: Config, executor: Executor, counter: TokenCounter) -> None:
        self.cfg = cfg
        self.executor = executor
        self.counter = counter

    def request(self, metadata: str, task: Task, instances: Sequence[Mapping[str, Any]],
                dialect: Dialect, fields: Sequence[str] = ()) -> Request:
        messages = judge_messages(metadata, task, instances, fields)
        body = judge_body(self.cfg, messages, dialect)
        prompt_tokens = self.counter.count_messages(messages,
                                                    response_format=body.get("response_format"))
        return Request(orjson.dumps(body), prompt_tokens, JUDGE_MAX_TOKENS, variant="judge")

    async def verdict(self, metadata: str, task: Task, instances: Sequence[Mapping[str, Any]],
                      acct: Accounting, dialect: Dialect,
                      fields: Sequence[str] = ()) -> Verdict | None:
        """The verdict, or ``None`` when the answer held none (the caller keeps the task).

        Raises what the executor raises (``RequestFailed``, ``Stopped``, ...)."""
        comp = await self.executor.complete(
            self.request(metadata, task, instances, dialect, fields), acct)
        if comp.finish_reason not in ("stop", None):
            return None
        return parse_verdict(comp.content)
