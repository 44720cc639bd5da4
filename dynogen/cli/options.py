"""The command line's options, declared once per group and stacked onto commands.

Each group is a heading in ``--help`` (``Source and Hub``, ``Model and server``,
``Generation``, ``Data policies and instances``, ``Limits``, ``Cost``,
``Batch mode``, ``Output and durability``). A command takes whole groups, or
named parts of one (``COST.without("budget_usd")``), with ``@settings(...)``;
an option is never written out twice, so ``run`` and ``grow`` cannot drift.

Every option in a group is a ``Config`` key: ``--max-tasks-per-unit`` sets
``max_tasks_per_unit``, the name a TOML config file uses, and the command gets
its value under that key, ready for ``load_config(path, **values)``. Unset
options are ``None``, so the config file and the defaults still apply. A
boolean key is a pair (``--free/--no-free``) so a command line can undo the
config file; an old spelling (``--max-tasks``) still parses and is left out of
``--help``.

The directory a command works on (a run directory or a collection) is its
positional argument, ``directory(...)``; the ``--out``/``--collection`` it
once took stays as a hidden alias.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import click

__all__ = [
    "BATCH", "COST", "DATA", "GENERATION", "LIMITS", "MODEL", "OUTPUT", "SOURCE", "Command",
    "Group", "Setting", "config_option", "directory", "settings",
]

F = TypeVar("F", bound=Callable[..., Any])


class CountOrAll(click.ParamType[int | str, Any]):
    """A count (0 or more) or ``all``: ``--rows-per-split``."""

    name = "N|all"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or str(value).strip().lower() == "all":
            return value if isinstance(value, int) else "all"
        try:
            n = int(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a count or 'all'", param, ctx)
        if n < 0:
            self.fail(f"{n} is below 0", param, ctx)
        return n


class Setting(click.Option):
    """An option that sets the ``Config`` key of its name, listed under its group's heading.

    >>> opt = Setting(["--max-tasks-per-unit", "--max-tasks", "max_tasks_per_unit"],
    ...               old=("--max-tasks",), section="Generation")
    >>> opt.name, opt.opts
    ('max_tasks_per_unit', ['--max-tasks-per-unit', '--max-tasks'])
    """

    def __init__(self, *args: Any, section: str = "Options", old: Sequence[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section
        self.old = tuple(old)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if not self.old:
            return super().get_help_record(ctx)
        shown = copy.copy(self)  # old spellings parse, but --help shows the current one
        shown.opts = [o for o in self.opts if o not in self.old]
        return click.Option.get_help_record(shown, ctx)


class Command(click.Command):
    """A command whose ``--help`` lists its options under their group's heading, in the
    order they were declared (click lists the positional arguments itself)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for p in self.get_params(ctx):
            record = None if isinstance(p, click.Argument) else p.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(p, "section", "Options"), []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


@dataclass(frozen=True, slots=True)
class Spec:
    """One option: its ``Config`` key, the names it answers to and click's attributes."""

    key: str
    decls: tuple[str, ...]
    attrs: dict[str, Any] = field(hash=False)
    old: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    """Options that belong together, under one heading in ``--help``."""

    title: str
    specs: tuple[Spec, ...]

    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.specs)

    def pick(self, *keys: str) -> Group:
        self._known(keys)
        return Group(self.title, tuple(s for s in self.specs if s.key in keys))

    def without(self, *keys: str) -> Group:
        self._known(keys)
        return Group(self.title, tuple(s for s in self.specs if s.key not in keys))

    def _known(self, keys: Sequence[str]) -> None:
        unknown = set(keys) - set(self.keys())
        if unknown:
            raise KeyError(f"{self.title} has no option {', '.join(sorted(unknown))}")


def _opt(key: str, help: str, type: Any = str, *, metavar: str | None = None,
         old: Sequence[str] = (), short: Sequence[str] = (), flag: bool = False) -> Spec:
    name = "--" + key.replace("_", "-")
    if flag:  # a pair, unset (None) unless given: the config file's value stands
        return Spec(key, (*short, f"{name}/--no-{name[2:]}", key), {"help": help,
                                                                   "default": None})
    attrs = {"help": help, "type": type, "default": None, "metavar": metavar}
    return Spec(key, (*short, name, *old, key), attrs, tuple(old))


def settings(*groups: Group) -> Callable[[F], F]:
    """Add every option of ``groups`` to a command, in order; each reaches the command
    as a keyword argument named for its ``Config`` key (``None`` when not given)."""
    def decorate(f: F) -> F:
        # click lists the options of the last-applied decorator first: apply in reverse.
        for group in reversed(groups):
            for spec in reversed(group.specs):
                f = click.option(*spec.decls, cls=Setting, section=group.title, old=spec.old,
                                 **spec.attrs)(f)
        return f
    return decorate


config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="TOML config file: flat keys named as the options (max_tasks_per_unit = 3); "
    "options given here win over it.")


def directory(name: str, help: str, *, metavar: str | None = None, default: str | None = None,
              required: bool = False, old: Sequence[str] = ()) -> Callable[[F], F]:
    """The run directory or collection a command works on, as its positional argument
    ``name`` (``run_dir`` shows as RUN_DIR); each of ``old`` (``--out``) is a hidden
    option meaning the same. The command gets the one path, or ``default``."""
    metavar = metavar or name.upper()
    olds = {o: f"{name}__{o.lstrip('-').replace('-', '_')}" for o in old}

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def merged(*args: Any, **kwargs: Any) -> Any:
            given = {kwargs.pop(dest) for dest in olds.values()} | {kwargs.pop(name)}
            given.discard(None)
            if len(given) > 1:
                raise click.UsageError(f"{metavar} given twice ({', '.join(sorted(given))})")
            value = given.pop() if given else default
            if value is None and required:
                raise click.UsageError(f"Missing argument '{metavar}'.")
            return f(*args, **kwargs, **{name: value})

        for o, dest in reversed(olds.items()):
            click.option(o, dest, type=click.Path(), default=None, hidden=True)(merged)
        shown = metavar if required else f"[{metavar}]"
        click.argument(name, required=False, default=None, metavar=shown,
                       type=click.Path(), help=help)(merged)
        return cast(F, merged)
    return decorate


SOURCE = Group("Source and Hub", (
    _opt("source", "Folder of dataset folders, a .jsonl metadata shard, 'samples' (bundled, "
         "the default) or 'hub'.", metavar="PATH|samples|hub"),
    _opt("limit", "Read at most N units from the source.", int, metavar="N"),
    _opt("hub_search", "Hub: only datasets whose id contains this text.", metavar="TEXT"),
    _opt("hub_task_categories", "Hub: comma-separated task categories, e.g. "
         "text-classification,question-answering.", metavar="LIST"),
    _opt("hub_modified_since", "Hub: only datasets modified since this ISO date/time "
         "(incremental listing).", metavar="DATE"),
    _opt("hub_datasets", "Hub: list at most N datasets.", int, metavar="N"),
    _opt("hub_sort", "Hub: downloads or last_modified (newest first).",
         metavar="ORDER"),
    _opt("hub_rpm", "Hub calls per minute for each Hub rate-limit bucket (API, file "
         "resolves, viewer); lowered by the Hub's RateLimit headers (default 300).", float,
         metavar="N"),
    _opt("hub_concurrency", "Hub and viewer calls in flight, all buckets together, for "
         "listing and row reads (default 8).", int, metavar="N"),
    _opt("hub_viewer_url", "Dataset viewer API base URL.", metavar="URL"),
))

MODEL = Group("Model and server", (
    _opt("model", "Model name sent to the server (default gpt-4o-mini).", metavar="NAME"),
    _opt("base_url", "OpenAI-compatible base URL (default: OPENAI_BASE_URL or OpenAI).",
         metavar="URL"),
    _opt("local", "Start the bundled llama.cpp server with SmolLM2-135M and use it.",
         flag=True),
    _opt("mode", "online (rate-limited calls, default) or batch (OpenAI Batch API jobs: half "
         "the price, answers within 24h).", metavar="online|batch"),
    _opt("provider", "API the model is reached through: openai (any OpenAI-compatible server) "
         "or anthropic (Messages and Message Batches). Default: the price map's provider for "
         "the model's exact key (or --price-key's), else openai.", metavar="openai|anthropic"),
    _opt("api_key_env", "Read the API key from environment variable NAME instead of "
         "OPENAI_API_KEY (e.g. OPENROUTER_API_KEY).", metavar="NAME"),
))

GENERATION = Group("Generation", (
    _opt("variants", "Prompt variants: description,no_description (default both).",
         metavar="LIST"),
    _opt("max_tasks_per_unit", "Tasks asked per unit and variant (default 3).", int,
         metavar="N", old=("--max-tasks",)),
    _opt("response_format", "json_schema (default), json_object or none.", metavar="FORMAT"),
    _opt("prompt_layout", "auto (default): shared for OpenAI's API, online, with a model whose "
         "OpenAI price has a cached-input rate, else per_unit; a begun run keeps its own. "
         "shared: one schema, system prompt and few-shot prefix for every unit, billed at the "
         "cached price by OpenAI's prompt cache. per_unit: the schema enumerates each unit's "
         "fields, so grammar-constrained servers cannot name a missing field.",
         metavar="auto|shared|per_unit"),
    _opt("max_tokens", "max_tokens per request (default 640), or auto: sized once from an "
         "earlier run's answers (--calibration) or this run's first 16, then recorded.",
         metavar="N|auto"),
    _opt("max_tokens_retry", "max_tokens of the one retry of an answer cut at max_tokens "
         "(default 1536).", int, metavar="N"),
    _opt("calibration", "An earlier run directory or its calibration.json: what --max-tokens "
         "auto sizes from (and, for estimate, the expected output tokens).",
         click.Path(), metavar="PATH"),
    _opt("temperature", "Sampling temperature sent with each request (default 0).", float,
         metavar="T"),
    _opt("seed", "Seed sent with each request (default 0).", int, metavar="N"),
    _opt("metadata_token_budget", "Prompt tokens a unit's metadata may take; longer "
         "metadata is cut (default 900).", int, metavar="N"),
    _opt("encoding", "Tokenizer that counts and cuts prompts when the model's price entry "
         "names none (default o200k_base).", metavar="NAME"),
    _opt("judge", "One more request per kept task: the model judges whether it is valid; "
         "invalid tasks are dropped with its reason.", flag=True),
))

DATA = Group("Data policies and instances", (
    _opt("licenses", "Licence allow-list: classes (permissive, share-alike, non-commercial, "
         "unknown, other) and SPDX ids, comma-separated, or 'any' "
         "(default permissive,share-alike).", metavar="LIST"),
    _opt("languages", "Language codes to keep (default en), or 'any'.", metavar="LIST"),
    _opt("splits", "Splits rows are read from: train, validation (default both), split names, "
         "or 'all' (test splits included).", metavar="LIST"),
    _opt("max_share", "Largest share of kept tasks one source dataset may have (0-1].", float,
         metavar="X"),
    _opt("rows_per_split", "Rows read per split (default 200), or 'all': every row of the "
         "allowed splits.", CountOrAll(), metavar="N|all"),
    _opt("heldout_fraction", "Fraction of tasks held out (by task, not row; default 0).", float,
         metavar="X"),
))

LIMITS = Group("Limits", (
    _opt("rpm", "Requests per minute limit.", float, metavar="N"),
    _opt("tpm", "Tokens per minute limit.", float, metavar="N"),
    _opt("itpm", "Anthropic: input tokens per minute (uncached input and cache writes); the "
         "server's headers lower it.", float, metavar="N"),
    _opt("otpm", "Anthropic: output tokens per minute (max_tokens held while a request runs, "
         "then what it generated).", float, metavar="N"),
    _opt("max_in_flight", "Cap on requests in flight (default: from the limits and answer "
         "times).", int, metavar="N"),
))

COST = Group("Cost", (
    _opt("budget_usd", "Hard budget in dollars for this run (a grow step is a run), across "
         "its resumes; for call and replay, for this invocation.", float, metavar="USD"),
    _opt("price_in", "$ per 1M input tokens (default: the price table's entry for the model).",
         float, metavar="USD"),
    _opt("price_out", "$ per 1M output tokens (default: the price table's entry for the "
         "model).", float, metavar="USD"),
    _opt("batch_price_in", "With --price-in: $ per 1M input tokens in batch mode (default "
         "half --price-in).", float, metavar="USD"),
    _opt("batch_price_out", "With --price-out: $ per 1M output tokens in batch mode (default "
         "half --price-out).", float, metavar="USD"),
    _opt("free", "Declare the server free (local models).", flag=True),
    _opt("prices_file", "Prices file (TOML or JSON, the shape of dynogen/data/prices.json): "
         "its rows win over the built-in tables.", click.Path(dir_okay=False), metavar="PATH",
         old=("--prices",)),
    _opt("price_key", "Price the model as this exact key of the price tables (e.g. "
         "deepseek/deepseek-r1), when its name is not a key or is another provider's.",
         metavar="KEY"),
))

BATCH = Group("Batch mode", (
    _opt("poll_seconds", "Longest wait between polls of running batches (default 60; "
         "polling backs off up to it).", float, metavar="S"),
    _opt("batch_rounds", "Follow-up batches for failed or expired requests (default 3).", int,
         metavar="N"),
    _opt("batch_max_requests", "Requests per input file or batch (at most 50,000 for OpenAI, "
         "100,000 for Anthropic).", int, metavar="N"),
    _opt("batch_enqueued_tokens", "Prompt tokens allowed in running batches at once (your "
         "model's enqueued-token limit; default no cap).", int, metavar="N"),
))

OUTPUT = Group("Output and durability", (
    _opt("force_new", "Discard an existing run in RUN_DIR whose settings differ.", flag=True),
    _opt("retry_skipped", "On resume, also retry units skipped for these final reasons, e.g. "
         "rows_gated,gated after access is granted (transient ones, such as "
         "rows_rate_limited or rows_server_error, are always retried).", metavar="LIST"),
    _opt("cache_path", "Request cache file to share across runs (default: a run's "
         "RUN_DIR/cache.sqlite; call: none).", click.Path(dir_okay=False), metavar="PATH",
         old=("--cache",)),
    _opt("durability", "batched (default: synced about once a second) or always (every "
         "commit synced).", metavar="batched|always"),
    _opt("quiet", "No progress bars.", flag=True, short=("-q",)),
))
