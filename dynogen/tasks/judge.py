"""The judge: one more request per kept task, asking the model whether the task is valid.

The rules in ``validate`` catch what can be checked mechanically; what a task
*means* (does the instruction ask for what the output field holds? can the
answer be found from the inputs?) needs a reader. ``--judge`` shows the model
the dataset's metadata, the task, and up to three of its instances built from
the unit's sample rows, and asks for a structured verdict. Tasks judged
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
    "You review instruction-tuning tasks made from a dataset's metadata. A task is valid "
    "when: the instruction is a clear, self-contained command; it asks for what the output "
    "field actually holds; the output can be produced from the input fields; and the "
    "instruction does not merely describe the dataset. Judge the task and its examples, "
    'then answer with JSON only: {"valid": true or false, "reason": "one short sentence"}.'
)

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "valid": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
    },
    "required": ["valid", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    reason: str


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def judge_messages(metadata: str, task: Task,
                   instances: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The judge's conversation: the shared system prompt first, byte-identical, so a
    server's prompt cache serves it; the task and its examples last."""
    lines = [
        "Dataset metadata:", metadata.strip(), "",
        "Task:",
        f"instruction: {task.instruction}",
        f"input_fields: {', '.join(task.input_fields)}",
        f"output_field: {task.output_field}",
    ]
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
    return Verdict(obj["valid"], _clip(reason, MAX_REASON_CHARS) or "no reason given")


class Judge:
    """Asks the executor for one verdict per task.

    >>> judge = Judge(cfg, executor, counter)
    >>> verdict = await judge.verdict(render_metadata(unit), task, instances, acct, dialect)
    """

    def __init__(self, cfg: Config, executor: Executor, counter: TokenCounter) -> None:
        self.cfg = cfg
        self.executor = executor
        self.counter = counter

    def request(self, metadata: str, task: Task, instances: Sequence[Mapping[str, Any]],
                dialect: Dialect) -> Request:
        messages = judge_messages(metadata, task, instances)
        body = judge_body(self.cfg, messages, dialect)
        prompt_tokens = self.counter.count_messages(messages,
                                                    response_format=body.get("response_format"))
        return Request(orjson.dumps(body), prompt_tokens, JUDGE_MAX_TOKENS, variant="judge")

    async def verdict(self, metadata: str, task: Task, instances: Sequence[Mapping[str, Any]],
                      acct: Accounting, dialect: Dialect) -> Verdict | None:
        """The verdict, or ``None`` when the answer held none (the caller keeps the task).

        Raises what the executor raises (``RequestFailed``, ``Stopped``, ...)."""
        comp = await self.executor.complete(self.request(metadata, task, instances, dialect),
                                            acct)
        if comp.finish_reason not in ("stop", None):
            return None
        return parse_verdict(comp.content)
