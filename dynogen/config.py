"""One typed configuration object for every command.

``Config`` is frozen and plain so it can be hashed into a run manifest: the
fields that change prompts or requests form ``prompt_fingerprint()``, which
decides whether a run directory may be resumed. The API key is held in a
``Secret`` that never prints, never serialises, and never enters a hash.

Precedence (lowest first): defaults, a TOML config file, environment
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``), command-line flags. With
``api_key_env`` (``--api-key-env NAME``) the key is read from the variable
``NAME`` instead of ``OPENAI_API_KEY`` (an OpenRouter, Gemini or Anthropic key),
and from nowhere else: an unset ``NAME`` is an error when the key is needed
(``dynogen.compose.check_key``), never a silent fall back to another provider's
key. The variable's name is part of the config (manifests record it); its value
is not.

``provider`` names the wire protocol (``PROVIDERS``): ``openai`` (any
OpenAI-compatible server) or ``anthropic`` (the Messages and Message Batches
APIs). Left unset, ``dynogen.compose`` takes it from the price map's provider
for the model's exact key, never from the model's name. Each provider reads its
key from its own variable (``KEY_ENVS``), so a key read for OpenAI is dropped,
not sent, when the provider turns out to be Anthropic (``Config.for_provider``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import orjson
import xxhash

from dynogen.errors import ConfigError
from dynogen.policy.languages import LanguagePolicy
from dynogen.policy.licenses import LicensePolicy
from dynogen.policy.splits import SplitPolicy

__all__ = [
    "ALL_ROWS", "BASE_URLS", "BUILD_FIELDS", "DEFAULT_BASE_URL", "DEFAULT_KEY_ENV", "DURABILITY",
    "IDENTITY_BEFORE", "IDENTITY_FIELDS", "KEY_ENVS", "PROMPT_LAYOUTS", "PROVIDERS", "SECTIONS",
    "VARIANTS",
    "BatchSettings", "Config", "CostSettings", "GenerationSettings", "InstanceSettings",
    "LimitSettings", "OutputSettings", "PolicySettings", "Secret", "ServerSettings",
    "SourceSettings", "format_by_variant", "load_config", "parse_by_variant",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
PROVIDERS = ("openai", "anthropic")
# Each provider's key variable and server, used when neither is given.
KEY_ENVS = {"openai": DEFAULT_KEY_ENV, "anthropic": "ANTHROPIC_API_KEY"}
BASE_URLS = {"openai": DEFAULT_BASE_URL, "anthropic": "https://api.anthropic.com"}
VARIANTS = ("description", "no_description")
# auto | shared | per_unit: see dynogen.prompts.layout
PROMPT_LAYOUTS = ("auto", "shared", "per_unit")
ALL_ROWS = "all"  # --rows-per-split all: every row of the allowed splits
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Secret:
    """A string that refuses to be shown: repr, str and format all mask it.

    ``source`` is the environment variable it was read from (``None``: given in a
    file or in code), so a key read for one provider is never sent to another.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str | None, source: str | None = None) -> None:
        self._value = value or None
        self.source = source

    def get(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return 0


# ---- sections ------------------------------------------------------------------------
# ``Config`` is the flat aggregate TOML, the CLI and the manifest read and write (its
# keys are the TOML keys and the option names). Each component receives its own
# section: a frozen view of the fields it needs (``cfg.limits``, ``cfg.batch``...).
# A section declares, next to its fields, which of them are part of a run's identity
# (everything that shapes its outputs: a resume whose identity differs refuses and
# says what differs) and which of those change what is sent to the model.


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """What to read: a folder, a shard, the bundled samples or the Hub (``hub_*``)."""

    source: str
    limit: int | None
    hub_search: str | None
    hub_task_categories: tuple[str, ...]
    hub_modified_since: str | None
    hub_datasets: int | None
    hub_sort: str | None
    hub_rpm: float | None
    hub_concurrency: int
    hub_viewer_url: str
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    PROMPT: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The model and the server that answers: where, with which key, how long to wait."""

    model: str
    base_url: str
    api_key: Secret
    api_key_env: str | None
    local: bool
    request_timeout: float
    max_response_bytes: int
    provider: str | None = None
    IDENTITY: ClassVar[tuple[str, ...]] = ("model",)
    PROMPT: ClassVar[tuple[str, ...]] = ("model",)


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """What each request asks for: prompt variants, tasks per unit, sampling, max_tokens."""

    variants: tuple[str, ...]
    max_tasks_per_unit: int
    temperature: float
    seed: int | None
    max_tokens: int
    max_tokens_retry: int
    max_tokens_auto: bool
    max_tokens_by_variant: str
    calibration: str | None
    metadata_token_budget: int
    response_format: str
    prompt_layout: str
    encoding: str
    judge: bool
    PROMPT: ClassVar[tuple[str, ...]] = (
        "variants", "max_tasks_per_unit", "temperature", "seed", "max_tokens",
        "max_tokens_by_variant", "metadata_token_budget", "response_format", "prompt_layout",
        "encoding", "judge")
    IDENTITY: ClassVar[tuple[str, ...]] = (*PROMPT, "max_tokens_retry")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Data policies: which units are sent and which rows are kept (``dynogen.policy``)."""

    licenses: str
    languages: str
    splits: str
    max_share: float | None
    PROMPT: ClassVar[tuple[str, ...]] = ("licenses", "languages", "splits", "max_share")
    IDENTITY: ClassVar[tuple[str, ...]] = PROMPT


@dataclass(frozen=True, slots=True)
class InstanceSettings:
    """The instance stage: rows read per split, the share of tasks held out."""

    rows_per_split: int | str  # a count, or "all" (every row of the allowed splits)
    heldout_fraction: float
    IDENTITY: ClassVar[tuple[str, ...]] = ("heldout_fraction", "rows_per_split")
    PROMPT: ClassVar[tuple[str, ...]] = ()
    # identity fields ``dynogen build`` may change: it then rebuilds every instance
    BUILD: ClassVar[tuple[str, ...]] = ("rows_per_split",)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The account's limits and the retry policy (``dynogen.ratelimit``)."""

    rpm: float | None
    tpm: float | None
    max_in_flight: int | None
    max_retries: int
    retry_base_delay: float
    retry_max_delay: float
    # Anthropic's separate input- and output-token limits per minute (``tpm`` still caps
    # input tokens there); an OpenAI-compatible server has one token limit, ``tpm``.
    itpm: float | None = None
    otpm: float | None = None
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    PROMPT: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class CostSettings:
    """The budget and where prices come from (``dynogen.execute.prices``)."""

    budget_usd: float | None
    price_in: float | None
    price_out: float | None
    free: bool
    prices_file: str | None
    price_key: str | None
    batch_price_in: float | None
    batch_price_out: float | None
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    PROMPT: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How requests reach the model (``mode``) and, in batch mode, how jobs are run."""

    mode: str
    poll_seconds: float
    batch_rounds: int
    batch_max_requests: int
    batch_enqueued_tokens: int | None
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    PROMPT: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """Where a run writes, its cache, and how hard it syncs (``dynogen.store``)."""

    out: str
    cache_path: str | None
    force_new: bool
    retry_skipped: tuple[str, ...]
    quiet: bool
    durability: str
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    PROMPT: ClassVar[tuple[str, ...]] = ()


SECTIONS: dict[str, Any] = {
    "sources": SourceSettings, "server": ServerSettings, "generation": GenerationSettings,
    "policies": PolicySettings, "instances": InstanceSettings, "limits": LimitSettings,
    "cost": CostSettings, "batch": BatchSettings, "output": OutputSettings,
}
# Fields whose change alters what is sent to the LLM, then the rest of a run's identity;
# a new field that shapes outputs joins by naming it in its section's IDENTITY (a run
# directory written before it existed is taken to have used its default).
PROMPT_FIELDS = (*ServerSettings.PROMPT, *GenerationSettings.PROMPT, *PolicySettings.PROMPT)
IDENTITY_FIELDS = (*PROMPT_FIELDS, *(
    f for s in SECTIONS.values() for f in s.IDENTITY if f not in PROMPT_FIELDS))
BUILD_FIELDS = InstanceSettings.BUILD
# Identity values a run directory written before the field existed had, where they are
# not the field's default: runs before prompt layouts sent the per-unit schema.
IDENTITY_BEFORE: dict[str, Any] = {"prompt_layout": "per_unit"}
DURABILITY = ("batched", "always")
POLICY_FIELDS = ("licenses", "languages", "splits")


S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a run needs. Build with ``Config(...)`` or ``load_config(...)``.

    >>> cfg = Config(model="gpt-4o-mini", rpm=500, budget_usd=2.0)
    >>> cfg.with_(rpm=1000).rpm
    1000
    """

    # what to read
    source: str = "samples"
    limit: int | None = None
    # the LLM
    model: str = "gpt-4o-mini"
    base_url: str = DEFAULT_BASE_URL
    api_key: Secret = field(default_factory=lambda: Secret(None), compare=False)
    # the environment variable the key is read from (None: the provider's, KEY_ENVS); its
    # name only
    api_key_env: str | None = None
    local: bool = False
    # the wire protocol: "openai" | "anthropic"; None: the price map's provider of the
    # model's exact key (dynogen.compose.resolve_provider), else openai
    provider: str | None = None
    # generation
    variants: tuple[str, ...] = VARIANTS
    max_tasks_per_unit: int = 3
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 640
    max_tokens_retry: int = 1536
    # --max-tokens auto (dynogen.engine.lengths): resolved once per run from earlier answers into
    # max_tokens_by_variant ("description:384,no_description:352"; "" = max_tokens for
    # all), which is recorded in the manifest; `calibration` names where the earlier
    # answers are (a calibration.json or a run directory; None: a pilot of first answers)
    max_tokens_auto: bool = False
    max_tokens_by_variant: str = ""
    calibration: str | None = None
    metadata_token_budget: int = 900
    response_format: str = "json_schema"  # json_schema | json_object | none
    # auto | shared | per_unit (dynogen.prompts.layout): one schema, system prompt and
    # few-shot prefix for every unit, over 1,024 tokens, that OpenAI's prompt cache bills
    # at its cached price ("shared"), or the schema that enumerates each unit's fields
    # ("per_unit"); "auto" picks shared for OpenAI's own API, online, with a model whose
    # OpenAI price has a cached-input discount, per_unit elsewhere (--local too). A run records
    # the layout it resolved to and keeps it on resume.
    prompt_layout: str = "auto"
    encoding: str = "o200k_base"
    # one more request per kept task asking the model whether it is valid (dynogen.tasks.judge)
    judge: bool = False
    # data policies (issue #10): "any"/"all" lift them; see dynogen.policy
    licenses: str = "permissive,share-alike"
    languages: str = "en"
    splits: str = "train,validation"
    max_share: float | None = None
    # instances: rows read per split, or "all" (every row of the allowed splits; the run
    # identity and the manifest record the string "all", so a count and "all" never mix)
    rows_per_split: int | str = 200
    heldout_fraction: float = 0.0
    # how requests reach the model: "online" (rate-limited calls) or "batch" (Batch API jobs)
    mode: str = "online"
    # limits and cost
    rpm: float | None = None
    tpm: float | None = None
    # Anthropic: input and output tokens per minute (learnt from its headers too)
    itpm: float | None = None
    otpm: float | None = None
    max_in_flight: int | None = None  # None: from the limits and answer times (Limiter)
    max_retries: int = 6
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    request_timeout: float = 120.0
    budget_usd: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    free: bool = False
    # a user's prices file (--prices FILE): wins over the built-in tables, not over
    # --price-in/--price-out; price_key: the exact price-table key to bill the model at
    # (one of LiteLLM's provider keys, say), see dynogen.execute.prices
    prices_file: str | None = None
    price_key: str | None = None
    # the Hugging Face Hub as a source (--source hub); see dynogen.io.hub_options
    hub_search: str | None = None
    hub_task_categories: tuple[str, ...] = ()
    hub_modified_since: str | None = None  # ISO date/time: only datasets modified since
    hub_datasets: int | None = None  # how many datasets to list
    hub_sort: str | None = None  # downloads | last_modified
    hub_rpm: float | None = 300.0
    hub_concurrency: int = 8
    hub_viewer_url: str = "https://datasets-server.huggingface.co"
    # --mode batch (dynogen.execute.batch): poll interval ceiling, follow-up rounds for
    # failed lines, requests per input file (the API allows 50,000), prompt tokens allowed
    # in live batches at once (the model's enqueued-token limit; None: no cap), and Batch
    # prices for a hand-given --price-in/--price-out (None: half of those)
    poll_seconds: float = 60.0
    batch_rounds: int = 3
    batch_max_requests: int = 50_000
    batch_enqueued_tokens: int | None = None
    batch_price_in: float | None = None
    batch_price_out: float | None = None
    # output
    out: str = "runs/latest"
    cache_path: str | None = None
    force_new: bool = False
    # skip reasons a resume tries again although they are final (``rows_gated`` after being
    # granted access, ``rows_not_found`` after a fix on the Hub); transient ones always are
    retry_skipped: tuple[str, ...] = ()
    quiet: bool = False
    # safety (issue #12): sync policy, and the largest answer body read from a server
    durability: str = "batched"  # batched | always
    max_response_bytes: int = 8 * 2**20

    def with_(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def section(self, kind: type[S]) -> S:
        """The frozen view of this config a component receives."""
        return kind(*(getattr(self, f.name) for f in dataclasses.fields(kind)))  # type: ignore[arg-type]

    @property
    def sources(self) -> SourceSettings:
        return self.section(SourceSettings)

    @property
    def server(self) -> ServerSettings:
        return self.section(ServerSettings)

    @property
    def generation(self) -> GenerationSettings:
        return self.section(GenerationSettings)

    @property
    def policies(self) -> PolicySettings:
        return self.section(PolicySettings)

    @property
    def instances(self) -> InstanceSettings:
        return self.section(InstanceSettings)

    @property
    def limits(self) -> LimitSettings:
        return self.section(LimitSettings)

    @property
    def cost(self) -> CostSettings:
        return self.section(CostSettings)

    @property
    def batch(self) -> BatchSettings:
        return self.section(BatchSettings)

    @property
    def output(self) -> OutputSettings:
        return self.section(OutputSettings)

    @property
    def rows_to_read(self) -> int:
        """Rows to read per split, a count for every reader (``all``: ``sys.maxsize``)."""
        return sys.maxsize if self.rows_per_split == ALL_ROWS else int(self.rows_per_split)

    def max_tokens_for(self, variant: str) -> int:
        """The variant's ``max_tokens``: the resolved ``--max-tokens auto`` figure, if
        any, else ``max_tokens``."""
        if not self.max_tokens_by_variant:
            return self.max_tokens
        return _by_variant(self.max_tokens_by_variant).get(variant, self.max_tokens)

    def prompt_fingerprint(self) -> str:
        return xxhash.xxh3_64_hexdigest(orjson.dumps(self.prompt_settings()))

    def prompt_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in PROMPT_FIELDS}

    def identity(self) -> dict[str, Any]:
        """The config's share of the run identity (JSON-safe), see ``IDENTITY_FIELDS``."""
        return {k: list(v) if isinstance(v := getattr(self, k), tuple) else v
                for k in IDENTITY_FIELDS}

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-safe data, without the secret (for manifests and reports)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "api_key":
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @property
    def key_env(self) -> str:
        """The environment variable the API key is read from."""
        return self.api_key_env or KEY_ENVS.get(self.provider or "openai", DEFAULT_KEY_ENV)

    def for_provider(self, provider: str, env: Mapping[str, str] | None = None) -> Config:
        """This config speaking ``provider``: its key from that provider's variable when the
        key came from another provider's (or none was given), its server when none was
        named. A key given in a file or in code, or through ``api_key_env``, is kept."""
        if provider not in PROVIDERS:
            raise ConfigError(f"--provider must be one of {', '.join(PROVIDERS)} "
                              f"(got {provider!r})")
        changes: dict[str, Any] = {}
        if provider != self.provider:
            changes["provider"] = provider
        want = KEY_ENVS[provider]
        src = self.api_key.source
        if (provider != "openai" and self.api_key_env is None and src != want
                and (src is not None or not self.api_key)):
            env = os.environ if env is None else env
            changes["api_key"] = Secret(env.get(want), source=want)
        if self.base_url.rstrip("/") == DEFAULT_BASE_URL and provider != "openai":
            changes["base_url"] = BASE_URLS[provider]
        return dataclasses.replace(self, **changes) if changes else self

    def validate(self) -> Config:
        if self.api_key_env is not None and not (
                isinstance(self.api_key_env, str) and _ENV_NAME.fullmatch(self.api_key_env)):
            raise ConfigError(f"--api-key-env takes the name of an environment variable, like "
                              f"OPENROUTER_API_KEY (got {self.api_key_env!r})")
        if self.price_key is not None and not (
                isinstance(self.price_key, str) and self.price_key.strip()):
            raise ConfigError("--price-key must name a key of the price tables")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(
                f"unknown prompt variant(s) {bad or '(none)'}: use one or both of "
                f"{', '.join(VARIANTS)}"
            )
        if self.provider is not None and self.provider not in PROVIDERS:
            raise ConfigError(f"--provider must be one of {', '.join(PROVIDERS)} "
                              f"(got {self.provider!r})")
        if self.mode not in ("online", "batch"):
            raise ConfigError(f"--mode must be online or batch (got {self.mode!r})")
        # OpenAI takes 50,000 requests a batch, Anthropic 100,000 (compose checks which).
        if self.poll_seconds <= 0 or self.batch_rounds < 0 or not (
                1 <= self.batch_max_requests <= 100_000) or (
                self.batch_enqueued_tokens is not None and self.batch_enqueued_tokens < 1):
            raise ConfigError("batch settings: --poll-seconds must be positive, --batch-rounds "
                              "0 or more, --batch-max-requests from 1 to 50,000 (100,000 "
                              "for Anthropic) and "
                              "--batch-enqueued-tokens positive")
        if self.response_format not in ("json_schema", "json_object", "none"):
            raise ConfigError("--response-format must be json_schema, json_object or none")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ConfigError(f"prompt_layout must be one of {', '.join(PROMPT_LAYOUTS)} "
                              f"(got {self.prompt_layout!r})")
        if self.max_tasks_per_unit < 1:
            raise ConfigError("--max-tasks-per-unit must be at least 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError("--max-in-flight must be at least 1")
        for name in ("rpm", "tpm", "itpm", "otpm", "budget_usd"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive (got {v})")
        if self.max_retries < 0:
            raise ConfigError("--max-retries must be 0 or more")
        if not 0 < self.retry_base_delay <= self.retry_max_delay:
            raise ConfigError("retry delays must satisfy 0 < retry_base_delay <= retry_max_delay")
        if self.max_tokens < 1 or self.max_tokens_retry < self.max_tokens:
            raise ConfigError("--max-tokens must be positive and not above max_tokens_retry")
        if self.max_tokens_by_variant:
            by = _by_variant(self.max_tokens_by_variant)  # ConfigError if malformed
            if set(by) - set(VARIANTS) or any(n > self.max_tokens_retry for n in by.values()):
                raise ConfigError(
                    f"max_tokens_by_variant {self.max_tokens_by_variant!r}: variants are "
                    f"{', '.join(VARIANTS)}, each figure at most max_tokens_retry "
                    f"({self.max_tokens_retry})")
        if self.calibration is not None and not self.max_tokens_auto:
            raise ConfigError("--calibration sizes --max-tokens auto: add --max-tokens auto, "
                              "or leave --calibration out")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError("--heldout-fraction must be in [0, 1)")
        if self.rows_per_split != ALL_ROWS and not (
                isinstance(self.rows_per_split, int) and not isinstance(self.rows_per_split, bool)
                and self.rows_per_split >= 0):
            raise ConfigError(f"--rows-per-split takes a count (0 or more) or 'all' "
                              f"(got {self.rows_per_split!r})")
        if self.durability not in DURABILITY:
            raise ConfigError(f"--durability must be one of {', '.join(DURABILITY)}")
        if self.max_response_bytes < 1024:
            raise ConfigError("max_response_bytes must be at least 1024")
        if self.max_share is not None and not 0.0 < self.max_share <= 1.0:
            raise ConfigError("--max-share must be in (0, 1]")
        # ConfigError on an empty or odd list (the vocabularies' parsers import nothing above)
        LicensePolicy.parse(self.licenses)
        LanguagePolicy.parse(self.languages)
        SplitPolicy.parse(self.splits)
        if self.hub_sort not in (None, "downloads", "last_modified"):
            raise ConfigError("--hub-sort must be downloads or last_modified")
        if self.hub_concurrency < 1 or (self.hub_rpm is not None and self.hub_rpm <= 0):
            raise ConfigError("--hub-concurrency must be at least 1 and --hub-rpm positive")
        if any(not isinstance(r, str) or not r.strip() or "," in r for r in self.retry_skipped):
            raise ConfigError("--retry-skipped takes skip reasons as report.json names them, "
                              "comma-separated (e.g. rows_gated,rows_not_found)")
        if self.hub_datasets is not None and self.hub_datasets < 0:
            raise ConfigError("--hub-datasets must be 0 or more")
        if self.hub_modified_since is not None:
            try:
                datetime.fromisoformat(self.hub_modified_since.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(
                    f"--hub-modified-since {self.hub_modified_since!r} is not an ISO date: "
                    "use 2026-11-01 or 2026-11-01T12:00:00Z"
                ) from None
        return self


@functools.lru_cache(maxsize=8)
def _by_variant(text: str) -> Mapping[str, int]:
    return MappingProxyType(parse_by_variant(text))


def format_by_variant(by_variant: Mapping[str, int]) -> str:
    """``{"description": 384}`` -> ``"description:384"``: a plain string in configs and
    manifests (stable under JSON and TOML)."""
    return ",".join(f"{v}:{n}" for v, n in sorted(by_variant.items()))


def parse_by_variant(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, num = part.partition(":")
        if not sep or not num.strip().isdigit() or int(num) < 1:
            raise ConfigError(f"max_tokens_by_variant {text!r}: expected variant:tokens pairs "
                              "like description:384,no_description:352")
        out[name.strip()] = int(num)
    return out


def load_config(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Defaults < TOML file < environment < explicit overrides (``None`` means unset)."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        data = data.get("dynogen", data)
        values.update(data)
    file_key = values.pop("api_key", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if env.get("OPENAI_BASE_URL") and values.get("provider") != "anthropic":
        values.setdefault("base_url", env["OPENAI_BASE_URL"])
    key_env = values.get("api_key_env")
    source: str | None
    if isinstance(key_env, str) and key_env:
        # The named variable and nothing else: another provider's key must not leak to it.
        key, source = env.get(key_env), key_env
    else:
        source = KEY_ENVS.get(str(values.get("provider") or "openai"), DEFAULT_KEY_ENV)
        key = file_key or env.get(source)
        if file_key:
            source = None
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    for name in ("hub_task_categories", "retry_skipped"):  # TOML lists and comma strings
        if isinstance(values.get(name), (list, str)):
            v = values[name]
            values[name] = tuple(
                x.strip() for x in (v.split(",") if isinstance(v, str) else v) if x.strip())
    if "variants" in values and isinstance(values["variants"], (list, str)):
        v = values["variants"]
        values["variants"] = tuple(v.split(",") if isinstance(v, str) else v)
    for name in POLICY_FIELDS:  # TOML lists and comma strings alike
        if isinstance(values.get(name), list):
            values[name] = ",".join(str(x) for x in values[name])
    if isinstance(values.get("api_key"), str):
        key, source = values.pop("api_key"), None
    mt = values.get("max_tokens")
    if isinstance(mt, str):  # --max-tokens auto | N (the CLI passes text)
        if mt.strip().lower() == "auto":
            values.pop("max_tokens")
            values["max_tokens_auto"] = True
        elif mt.strip().isdigit():
            values["max_tokens"] = int(mt)
        else:
            raise ConfigError(f"--max-tokens must be a whole number or auto (got {mt!r})")
    return Config(api_key=Secret(key, source), **values).validate()
