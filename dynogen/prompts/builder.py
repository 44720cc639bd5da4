"""Prompts that ask an LLM to design tasks from one unit's metadata.

Two variants, as in the Dynosaur paper: ``description`` shows the dataset's
description, ``no_description`` shows only its name, fields and samples (the
paper found the two complementary). Both run by default.

Layout: everything every request shares — the system prompt and the few-shot
turns — comes first and is byte-identical across requests of a variant; only
the last user message is about the unit. That lets a server reuse its prompt
cache (llama.cpp does, as report.json's cached tokens show). OpenAI's
cache needs a shared prefix of 1,024+ tokens and places a ``json_schema``
before the system message, so which schema a request carries decides whether
it can hit: ``Config.prompt_layout`` (``dynogen.prompts.layout``) picks the
per-unit schema (``per_unit``: the unit's fields as enums, two few-shot turns)
or one shared prefix (``shared``: the same schema for every unit, the
conventions spelled out in the system prompt, five more few-shot turns, and a
``prompt_cache_key``). The user message is the same in both, so a collection's
unit fingerprints (``collections.memory``) do not depend on the layout.

Metadata is cut to a *token* budget, never by characters, and field names are
shown exactly as the dataset spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

import orjson

from dynogen.config import Config
from dynogen.prompts.dialect import Dialect
from dynogen.prompts.layout import cache_key, effective
from dynogen.prompts.schema import response_format, shared_response_format
from dynogen.prompts.tokens import TokenCounter
from dynogen.units import ID_NAME, Field, Unit

__all__ = ["CONVENTIONS", "Prompt", "PromptBuilder", "SYSTEM_PROMPT", "fewshot_examples",
           "output_candidates", "render_metadata"]

SYSTEM_PROMPT = (
    "You design instruction-tuning tasks from the metadata of a dataset. "
    "Given a dataset's name, its data fields{desc}, propose up to {n} different tasks that "
    "a model could be trained on using that dataset's rows. For each task give:\n"
    "- instruction: one clear, self-contained command telling a model what to do with the "
    "input; do not name the dataset;\n"
    "- input_fields: the field names the model is given (one or more);\n"
    "- output_field: the one field name the model must produce; it must not be an input.\n"
    "Use only field names listed under Fields, written exactly as shown. Prefer tasks "
    "whose output can be judged from the input. Answer with JSON only, in the form "
    '{{"tasks": [{{"instruction": "...", "input_fields": ["..."], "output_field": "..."}}]}}.'
)

# The shared layout's system prompt names what its few-shot turns show (one prefix serves
# both variants) and adds the conventions: what the per-unit schema cannot say, and
# what the task rules (dynogen.tasks.rules) drop or rewrite when it is not followed.
SHARED_DESC = ", and its description and example rows where they are given"
CONVENTIONS = (
    "\n\nConventions:\n"
    "- Write each instruction for any row of the dataset; never quote or describe the "
    "example rows shown.\n"
    "- Inputs must carry the content a model needs: an id, a URL or a date is never the "
    "only input.\n"
    "- For an output with labels, say what is to be decided without listing the labels: "
    "the allowed answers are appended to the instruction from the dataset's own label "
    "names.\n"
    "- When the output is the key of a choice (a letter or an index), give the field that "
    "holds the choices as an input too.\n"
    "- Propose fewer tasks rather than one whose output cannot be told from its inputs."
)

MAX_LABELS_SHOWN = 20
MAX_FIELDS_SHOWN = 60
SAMPLE_VALUE_CHARS = 300


@dataclass(frozen=True, slots=True)
class Prompt:
    """One unit's chat-completion body for one variant, with its token counts.

    The executor's ``execute.Request`` is this body serialized (its bytes are the
    cache key); this is the form prompts are built and inspected in."""

    unit_key: str
    variant: str
    body: dict[str, Any]
    prompt_tokens: int
    max_tokens: int


def _field_line(f: Field) -> str:
    if f.labels:
        shown = ", ".join(f.labels[:MAX_LABELS_SHOWN])
        more = len(f.labels) - MAX_LABELS_SHOWN
        extra = f", … +{more} more" if more > 0 else ""
        return f"- {f.name}: {f.type} ({shown}{extra})"
    return f"- {f.name}: {f.type}"


def _sample_text(sample: dict[str, Any]) -> str:
    short: dict[str, Any] = {}
    for k, v in sample.items():
        if isinstance(v, str) and len(v) > SAMPLE_VALUE_CHARS:
            v = v[:SAMPLE_VALUE_CHARS] + "…"
        elif not isinstance(v, (str, int, float, bool, type(None))):
            s = json.dumps(v, ensure_ascii=False, default=str)
            v = s if len(s) <= SAMPLE_VALUE_CHARS else s[:SAMPLE_VALUE_CHARS] + "…"
        short[k] = v
    return json.dumps(short, ensure_ascii=False, default=str)


def render_metadata(
    *,
    dataset: str,
    config: str,
    description: str | None,
    fields: tuple[Field, ...] | list[Field],
    samples: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
    counter: TokenCounter | None = None,
    budget: int | None = None,
) -> str:
    """The user message describing one dataset, cut to ``budget`` tokens.

    What is cut, in order: sample rows, then the description; the name and the
    fields are kept whole (a task can only name fields it is shown), except that
    a very wide dataset shows its first ``MAX_FIELDS_SHOWN`` fields.
    """
    head = f"Dataset: {dataset}\nConfig: {config}\n"
    shown = list(fields[:MAX_FIELDS_SHOWN])
    field_lines = "\n".join(_field_line(f) for f in shown)
    if len(fields) > len(shown):
        field_lines += f"\n(+{len(fields) - len(shown)} more fields not shown)"
    tail = f"Fields:\n{field_lines}\n"
    if counter is None or budget is None:
        desc = f"Description: {description.strip()}\n" if description is not None else ""
        samples_txt = "".join(f"Example row: {_sample_text(s)}\n" for s in samples)
        return head + desc + tail + samples_txt

    left = budget - counter.count(head + tail)
    desc_txt = ""
    if description is not None:
        d = description.strip()
        # Cheap pre-cut so a 100 kB card is not tokenised whole; tokens decide the rest.
        d = d[: max(0, left) * 8]
        want = max(0, left - (60 if samples else 0))
        d = counter.truncate(d, want - 3) if want > 3 else ""
        if d:
            desc_txt = f"Description: {d}\n"
            if samples:  # only samples need to know what is left (saves an encode)
                left -= counter.count(desc_txt)
    samples_txt = ""
    for s in samples:
        line = f"Example row: {_sample_text(s)}\n"
        n = counter.count(line)
        if n > left:
            break
        samples_txt += line
        left -= n
    return head + desc_txt + tail + samples_txt


def output_candidates(unit: Unit) -> list[str]:
    """Fields that may be a task's output, likeliest first: labels, then text, then the rest.

    Media and id-like columns are left out: a task cannot output them usefully,
    and the schema then cannot decode such a task at all.
    """
    ok = [f for f in unit.fields if not f.media and not ID_NAME.search(f.name)]
    return [f.name for f in sorted(ok, key=lambda f: (not f.is_label, not f.is_text))]


def fewshot_examples(layout: str) -> list[dict[str, Any]]:
    """The few-shot examples ``layout`` shows, in order (``data/fewshot.json``)."""
    raw = json.loads(resources.files("dynogen").joinpath("data/fewshot.json").read_text("utf-8"))
    by_name = {ex["metadata"]["dataset"]: ex for ex in raw["examples"]}
    return [by_name[name] for name in raw["layouts"][effective(layout)]]


@dataclass(frozen=True, slots=True)
class _Prefix:
    """What every request of one variant starts with, counted once."""

    messages: list[dict[str, str]]
    tokens: int  # the messages' tokens (the schema is counted per request)
    cache_key: str | None  # the shared layout's prompt_cache_key


class PromptBuilder:
    """Builds every request for a run; the shared prefix is rendered and counted once.

    >>> pb = PromptBuilder(Config(), TokenCounter("o200k_base"))
    >>> reqs = pb.requests(unit)          # one Prompt per configured variant
    """

    def __init__(self, config: Config, counter: TokenCounter) -> None:
        self.config = config
        self.counter = counter
        self.layout = effective(config.prompt_layout)

    @cached_property
    def _prefixes(self) -> dict[str, _Prefix]:
        n = self.config.max_tasks_per_unit
        if self.layout == "shared":
            # One prefix for both variants: the variant shows only in the unit's message
            # (its Description line), so every request of the run can reuse one cache entry.
            system = SYSTEM_PROMPT.format(desc=SHARED_DESC, n=n) + CONVENTIONS
            msgs = self._fewshot_turns(system, descriptions=True)
            schema = self._shared_format(self.config.response_format)
            key = cache_key(self.layout, orjson.dumps([schema, msgs]))
            shared = _Prefix(msgs, self.counter.count_prefix(msgs), key)
            return dict.fromkeys(self.config.variants, shared)
        out = {}
        for variant in self.config.variants:
            with_desc = variant == "description"
            system = SYSTEM_PROMPT.format(desc=" and its description" if with_desc else "", n=n)
            msgs = self._fewshot_turns(system, descriptions=with_desc)
            out[variant] = _Prefix(msgs, self.counter.count_prefix(msgs), None)
        return out

    def _fewshot_turns(self, system: str, *, descriptions: bool) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": system}]
        for ex in fewshot_examples(self.layout):
            md = ex["metadata"]
            user = render_metadata(
                dataset=md["dataset"],
                config=md["config"],
                description=md.get("description") if descriptions else None,
                fields=[Field.from_dict(f) for f in md["fields"]],
                samples=md.get("samples") or (),
            )
            msgs.append({"role": "user", "content": user})
            answer = {"tasks": ex["tasks"][:self.config.max_tasks_per_unit]}
            msgs.append({"role": "assistant", "content": orjson.dumps(answer).decode()})
        return msgs

    def _shared_format(self, kind: str) -> dict[str, Any] | None:
        return shared_response_format(kind, self.config.max_tasks_per_unit)

    def prefix_messages(self, variant: str) -> list[dict[str, str]]:
        return self._prefixes[variant].messages

    def prefix_tokens(self, variant: str) -> int:
        """Tokens of the leading messages every request of ``variant`` shares."""
        return self._prefixes[variant].tokens

    def shared_prefix_tokens(self, variant: str) -> int:
        """Tokens a prompt cache that hashes the schema first (OpenAI's) can reuse across
        units: the schema and the leading messages under the shared layout; under the
        per-unit one none with its schema (which differs from unit to unit), else the
        leading messages."""
        if self.layout != "shared":
            return 0 if self.config.response_format == "json_schema" else \
                self._prefixes[variant].tokens
        rf = self._shared_format(self.config.response_format)
        schema = 0 if rf is None else self.counter.count(
            json.dumps(rf["json_schema"], ensure_ascii=False))
        return schema + self._prefixes[variant].tokens

    def user_message(self, unit: Unit, variant: str) -> str:
        return render_metadata(
            dataset=unit.dataset,
            config=unit.config,
            description=unit.description if variant == "description" else None,
            fields=unit.fields,
            samples=unit.samples,
            counter=self.counter,
            budget=self.config.metadata_token_budget,
        )

    def request(self, unit: Unit, variant: str, *, max_tokens: int | None = None,
                dialect: Dialect | None = None, user: str | None = None) -> Prompt:
        """``user``: the unit's message when the caller has it already (``user_message``)."""
        cfg = self.config
        d = dialect or Dialect(format=cfg.response_format)
        prefix = self._prefixes[variant]
        if user is None:
            user = self.user_message(unit, variant)
        mt = max_tokens or cfg.max_tokens_for(variant)
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": [*prefix.messages, {"role": "user", "content": user}],
        }
        if d.temperature:
            body["temperature"] = cfg.temperature
        body[d.token_param] = mt
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if self.layout == "shared":
            rf = self._shared_format(d.format)
            if prefix.cache_key is not None and d.cache_key:
                body["prompt_cache_key"] = prefix.cache_key
        else:
            rf = response_format(d.format, [f.name for f in unit.fields],
                                 cfg.max_tasks_per_unit, output_candidates(unit))
        if rf is not None:
            body["response_format"] = rf
        # The schema's share is an upper-bound estimate (OpenAI does not document how
        # it is billed), so worst-case reservations stay worst-case.
        tokens = self.counter.count_messages([body["messages"][-1]],
                                             prefix_tokens=prefix.tokens, response_format=rf)
        return Prompt(unit.key, variant, body, tokens, mt)

    def requests(self, unit: Unit) -> list[Prompt]:
        return [self.request(unit, v) for v in self.config.variants]
