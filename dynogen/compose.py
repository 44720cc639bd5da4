"""The composition root: the one module that builds a run's parts from its settings.

Every command gets its parts here, in one order, so no two commands assemble
them differently: the model's price, the provider (``resolve_provider``: the
one place that knows there is more than one), the API key, that the server
answers (``open_executor``), the limiter, ledger, request cache, spend journal
and the executor ``cfg.mode`` names (``open_stack``), the source behind its data
policies (``open_sources``, ``gated``), the row reader of the gate and the
instance stage (``open_row_reader``: local folders, and Hub datasets under the
Hub's rate-limit buckets with ``HF_TOKEN``), the prompt layout ``auto`` stands
for (``resolve_layout``), the run's identity (``run_identity``), the task engine
with its prompts, filter and judge (``make_engine``), the bundled local server
(``local_server``) and the signal handling every long command shares
(``signals``). ``run``, ``build``, ``call``, ``grow``, ``estimate``, ``replay``
and the judge all reach the model through it; the stages below (engine,
executors, store) receive their parts and never look for them.

>>> async with open_executor(cfg, stage="call", cache_path=None) as stack:
...     comp = await stack.executor.complete(request, Accounting())
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import xxhash

from dynogen.config import BASE_URLS, DEFAULT_BASE_URL, Config, Secret
from dynogen.dedup import HashSet
from dynogen.engine.engine import OnCommit, Progress, TaskEngine
from dynogen.errors import AuthenticationError, ConfigError
from dynogen.execute import anthropic_headers
from dynogen.execute.anthropic_client import AnthropicClient
from dynogen.execute.anthropic_wire import ANTHROPIC_VERSION, estimate_tokens, prompt_figures
from dynogen.execute.base import Executor
from dynogen.execute.client import ChatClient
from dynogen.execute.ledger import Ledger
from dynogen.execute.limits import SplitLimiter
from dynogen.execute.online import Client, Meter, OnlineExecutor
from dynogen.execute.prices import Price, PriceTable, price_for
from dynogen.execute.transport import AiohttpTransport, Transport
from dynogen.io.hub_rows import HubRowReader, environment_token
from dynogen.io.row_reader import RowReader
from dynogen.io.sources import source_for
from dynogen.policy.gate import Policies, gate
from dynogen.prompts.builder import PromptBuilder
from dynogen.prompts.layout import LEGACY_LAYOUT, choose_layout
from dynogen.prompts.tokens import TokenCounter
from dynogen.ratelimit import Limiter, RetryPolicy
from dynogen.report import Stats
from dynogen.store.cache import RequestCache
from dynogen.store.journal import JsonlWriter
from dynogen.store.rundir import RunDir
from dynogen.tasks.filter import TaskFilter
from dynogen.tasks.judge import Judge
from dynogen.units import Field, Skipped, Unit

__all__ = [
    "BATCH_CONCURRENCY", "EXIT_INTERRUPTED", "SIGNAL_GRACE_SECONDS", "Stack", "batch_remote_for",
    "check_key", "counter_for", "gated", "hub_token", "local_server", "make_engine",
    "open_executor", "open_row_reader", "open_sources", "open_stack", "preflight",
    "prompt_count", "resolve_layout", "resolve_price", "resolve_provider", "run_identity",
    "signals", "speaking",
]

BATCH_CONCURRENCY = 1024  # answers a batch run waits on at once: futures, not sockets
# After a first SIGINT/SIGTERM, in-flight answers get this long to settle before the
# command exits as if signalled twice (a stuck write or a long 429 pause must not hold it).
SIGNAL_GRACE_SECONDS = 30.0
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------- before money is spent

def resolve_price(cfg: Config) -> Price:
    """The model's price, from the highest layer that has it: hand-given prices (or free),
    ``prices_file``, the hand-checked table, LiteLLM's map (``dynogen.execute.prices``);
    ``price_key`` names the key to look up instead of the model's name."""
    cost = cfg.cost
    table = PriceTable.load(cost.prices_file)
    return price_for(cfg.model, table, price_in=cost.price_in, price_out=cost.price_out,
                     free=cost.free or cfg.local, batch_price_in=cost.batch_price_in,
                     batch_price_out=cost.batch_price_out, price_key=cost.price_key)


def resolve_provider(cfg: Config) -> str:
    """The API the model is reached through: ``--provider``, else the provider LiteLLM's
    price map names for the model's exact key (``--price-key``'s, if given):
    ``anthropic`` for Anthropic's own keys, ``openai`` (any OpenAI-compatible server)
    for everything else. Never guessed from the model's name."""
    if cfg.provider:
        return cfg.provider
    if cfg.local:
        return "openai"
    table = PriceTable.load(cfg.cost.prices_file)
    known = table.find_key(cfg.price_key) if cfg.price_key else table.find(cfg.model)
    return "anthropic" if known is not None and known.provider == "anthropic" else "openai"


def speaking(cfg: Config) -> Config:
    """``cfg`` with its provider settled, and that provider's key and server where the
    user named neither (``Config.for_provider``). Idempotent."""
    return cfg.for_provider(resolve_provider(cfg))


def prompt_count(cfg: Config) -> Callable[[int, dict[str, Any]], int] | None:
    """How the provider counts a prompt dynogen counted (``estimate``): ``None`` where the
    count is the provider's own (OpenAI's encodings), else an approximation of it."""
    return estimate_tokens if speaking(cfg).provider == "anthropic" else None


def resolve_layout(cfg: Config, price: Price, *, follow_run: bool = True) -> Config:
    """``cfg`` with ``prompt_layout = "auto"`` made concrete (``dynogen.prompts.layout``).

    A run directory that has begun (``follow_run`` and a manifest in ``cfg.out``; not
    with ``--force-new``) keeps the layout it recorded, ``per_unit`` if it was written
    before layouts existed, so a resume sends the bytes it started with. Otherwise
    ``shared`` when the request goes to OpenAI's own API (the default base URL), online,
    for a model whose OpenAI price entry has a cached-input discount; else ``per_unit``.
    The model's name is never looked at: the price entry says whether cached tokens are
    cheaper, and whose price it is.
    """
    if cfg.prompt_layout != "auto":
        return cfg
    recorded = _recorded_layout(Path(cfg.out)) if (
        follow_run and cfg.out and not cfg.force_new) else None
    if recorded is not None:
        return cfg.with_(prompt_layout=recorded)
    # An OpenAI price: the hand-checked table's or a file's rows (no provider named), or a
    # LiteLLM key of provider openai. Claude's cache, say, needs cache_control markers.
    openai_price = price.provider in ("", "openai")
    layout = choose_layout(
        "auto", openai_server=cfg.provider in (None, "openai")
        and cfg.base_url.rstrip("/") == DEFAULT_BASE_URL,
        online=cfg.mode == "online",
        cache_discount=openai_price and price.supports_prompt_cache
        and price.cached_input < price.input)
    return cfg.with_(prompt_layout=layout)


def _recorded_layout(out: Path) -> str | None:
    """The layout a run in ``out`` began with (``None``: none has begun there)."""
    try:
        ident = orjson.loads((out / "manifest.json").read_bytes())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # fresh, or spoiled (RunDir.open says so in its own words)
    if not isinstance(ident, dict):
        return None
    layout = ident.get("prompt_layout", LEGACY_LAYOUT)
    return layout if layout in ("shared", "per_unit") else None


def counter_for(cfg: Config, price: Price) -> TokenCounter:
    """The tokenizer the model's price names (its own encoding), else ``cfg.encoding``."""
    return TokenCounter(price.encoding or cfg.encoding)


def check_key(cfg: Config) -> None:
    """A key where one is needed: the provider's own server, or any server once
    ``api_key_env`` names a variable (the user said a key is needed); the error names
    the variable."""
    cfg = speaking(cfg)
    if cfg.api_key:
        return
    if cfg.api_key_env is not None:
        raise ConfigError(
            f"no API key: the environment variable {cfg.api_key_env} (named by "
            "--api-key-env) is not set or empty"
        )
    if cfg.provider == "anthropic" and cfg.base_url.rstrip("/") == BASE_URLS["anthropic"]:
        raise ConfigError(
            "no API key: set ANTHROPIC_API_KEY (or name another variable with --api-key-env)")
    if cfg.base_url.rstrip("/") == BASE_URLS["openai"]:
        raise ConfigError(
            "no API key: set OPENAI_API_KEY (or api_key in the config file, or name another "
            "variable with --api-key-env), or point --base-url at another "
            "OpenAI-compatible server, or use --local"
        )


async def preflight(cfg: Config, transport: Transport | None) -> None:
    """Fail fast on an unreachable server or a refused key, before any paid request."""
    if transport is not None:
        return  # injected transports (tests, in-process fakes) are reachable by construction
    cfg = speaking(cfg)
    if cfg.provider == "anthropic":
        url = cfg.base_url.rstrip("/").removesuffix("/v1") + "/v1/models"
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if cfg.api_key:
            headers["x-api-key"] = cfg.api_key.get() or ""
    else:
        url = cfg.base_url.rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {cfg.api_key.get()}"} if cfg.api_key else {}
    host = url.split("//", 1)[-1].split("/", 1)[0]
    try:
        async with aiohttp.ClientSession() as s, s.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=15)
        ) as r:
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ConfigError(
            f"cannot reach the LLM server at {host} ({type(e).__name__}): is it running? "
            "Check --base-url / OPENAI_BASE_URL, or use --local"
        ) from None
    if status in (401, 403):
        raise AuthenticationError(
            f"the server at {host} refused the API key (HTTP {status}): check {cfg.key_env}"
        )


# ------------------------------------------------------------------ the execution stack

@dataclass
class Stack:
    """An open executor and the parts a caller may report on or journal with."""

    executor: Executor
    ledger: Ledger
    limiter: Limiter
    cache: RequestCache | None
    spend: JsonlWriter | None
    price: Price

    def cache_entries(self) -> int:
        return len(self.cache) if self.cache is not None else 0


@contextlib.asynccontextmanager
async def open_executor(
    cfg: Config,
    *,
    stage: str,
    price: Price | None = None,
    budget_usd: float | None = None,
    cache_path: Path | None = None,
    spend_path: Path | None = None,
    state_dir: Path | None = None,
    transport: Transport | None = None,
    meter: Meter | None = None,
) -> AsyncIterator[Stack]:
    """Price, key and server checked, then the stack ``open_stack`` builds.

    The one sequence every caller of the model goes through; ``price`` when the
    caller resolved it already (it needs the tokenizer first).
    """
    price = price if price is not None else resolve_price(cfg)
    check_key(cfg)
    await preflight(cfg, transport)
    async with open_stack(cfg, price=price, stage=stage, budget_usd=budget_usd,
                          cache_path=cache_path, spend_path=spend_path, state_dir=state_dir,
                          transport=transport, meter=meter) as stack:
        yield stack


@contextlib.asynccontextmanager
async def open_stack(
    cfg: Config,
    *,
    price: Price,
    stage: str,
    budget_usd: float | None = None,
    cache_path: Path | None = None,
    spend_path: Path | None = None,
    state_dir: Path | None = None,
    transport: Transport | None = None,
    meter: Meter | None = None,
) -> AsyncIterator[Stack]:
    """Limiter, ledger, cache, spend journal and the executor ``cfg.mode`` names, with no
    checks (``open_executor`` makes them); closed in the right order however the caller
    leaves.

    ``budget_usd`` is what is left of the budget for this session (a resumed run has
    already spent part of it); ``state_dir`` is where a batch executor keeps its files
    and journal.
    """
    cfg = speaking(cfg)
    limits, server = cfg.limits, cfg.server
    anthropic = cfg.provider == "anthropic"
    if anthropic and stage == "embed":
        raise ConfigError("Anthropic serves no embeddings: give --embed-model a model of an "
                          "OpenAI-compatible server (--base-url), or leave it out for the "
                          "local embeddings")
    tpm = limits.tpm if not anthropic else min(
        (t for t in (limits.tpm, limits.itpm) if t is not None), default=None)
    limiter = Limiter(rpm=limits.rpm, tpm=tpm, max_in_flight=limits.max_in_flight)
    ledger = Ledger(price, budget_usd, batch=cfg.mode == "batch")
    # A cache has one writer at a time (a shared --cache too); a spoiled one is moved aside.
    cache = RequestCache(cache_path, lock=True) if cache_path is not None else None
    spend = JsonlWriter(spend_path) if spend_path is not None else None
    executor: Executor
    try:
        if cfg.mode == "batch":
            executor = _batch_executor(cfg, limiter=limiter, ledger=ledger, cache=cache,
                                       spend=spend, meter=meter, stage=stage,
                                       state_dir=state_dir, transport=transport)
        else:
            wire = transport or AiohttpTransport(limit=limiter.max_senders,
                                                 max_body=server.max_response_bytes)
            client: Client
            pacing: Limiter | SplitLimiter = limiter
            if anthropic:
                client = AnthropicClient(server.base_url, server.api_key.get(), transport=wire,
                                         timeout=server.request_timeout, key_env=cfg.key_env)
                # Output tokens are paced apart; requests in flight follow the first limiter.
                pacing = SplitLimiter(limiter, Limiter(tpm=limits.otpm,
                                                       max_in_flight=limiter.max_senders),
                                      split=anthropic_headers.split)
            else:
                client = ChatClient(server.base_url, server.api_key.get(), transport=wire,
                                    timeout=server.request_timeout)
            policy = RetryPolicy(max_retries=limits.max_retries, base=limits.retry_base_delay,
                                 cap=limits.retry_max_delay)
            executor = OnlineExecutor(client, pacing, ledger, cache, policy, spend=spend,
                                      meter=meter, stage=stage, secret=server.api_key.get(),
                                      concurrency=limiter.max_senders,
                                      figures=prompt_figures if anthropic else None)
    except BaseException:
        _close_files(cache, spend)
        raise
    try:
        yield Stack(executor, ledger, limiter, cache, spend, price)
    finally:
        try:
            await executor.aclose()
        finally:
            _close_files(cache, spend)


def _close_files(cache: RequestCache | None, spend: JsonlWriter | None) -> None:
    try:
        if spend is not None:
            spend.close()
    finally:
        if cache is not None:
            cache.close()


def batch_remote_for(cfg: Config) -> Callable[[str, Any], Any] | None:
    """What makes a batch run's remote from its run id and journal: Message Batches for
    Anthropic, ``None`` (OpenAI's Files and Batches, the executor's default) otherwise."""
    cfg = speaking(cfg)
    if cfg.provider != "anthropic":
        return None
    server = cfg.server

    def make(run_id: str, journal: Any) -> Any:
        from dynogen.execute.anthropic_batches import AnthropicBatches  # needs the SDK

        return AnthropicBatches(server.base_url, server.api_key.get(), run_id=run_id,
                                journal=journal, max_retries=cfg.max_retries,
                                timeout=server.request_timeout, key_env=cfg.key_env)

    return make


def _batch_executor(cfg: Config, **parts: Any) -> Executor:
    try:
        from dynogen.execute.batch import BatchExecutor  # only batch runs pay for its import
    except ImportError:
        raise ConfigError("--mode batch is not available in this build; use --mode online") \
            from None
    anthropic = cfg.provider == "anthropic"
    if not anthropic and cfg.batch_max_requests > 50_000:
        raise ConfigError("--batch-max-requests: OpenAI's Batch API takes at most 50,000 "
                          "requests a batch")
    executor: Executor = BatchExecutor(cfg.batch, cfg.server, max_retries=cfg.max_retries,
                                       quiet=cfg.quiet, concurrency=BATCH_CONCURRENCY,
                                       remote=batch_remote_for(cfg),
                                       figures=prompt_figures if anthropic else None, **parts)
    return executor


# -------------------------------------------------------------------- a run's own parts

_PROBE = Unit("probe/identity", "default", "Short sentences, each with a label.",
              (Field("sentence", "string"), Field("label", "class_label", ("no", "yes"))),
              license="mit")


def run_identity(cfg: Config) -> dict[str, Any]:
    """Everything that shapes a run's outputs: ``Config.identity()`` plus a digest of the
    request bodies it sends for a fixed unit, per variant.

    The digest catches what no config field names: the prompt text, the few-shot
    turns, the schema and how metadata is rendered; a run may not be resumed across
    a change to any of them. The store is handed this; it does not build prompts.
    """
    pb = PromptBuilder(cfg, TokenCounter(cfg.encoding))
    bodies = [pb.request(_PROBE, v).body for v in cfg.variants]
    digest = xxhash.xxh3_64_hexdigest(orjson.dumps(bodies, option=orjson.OPT_SORT_KEYS))
    # The layout the bodies were built with (an unresolved "auto" builds per_unit).
    return {**cfg.identity(), "prompt_layout": pb.layout, "prompts": digest}


def open_sources(cfg: Config, source: Iterable[Unit | Skipped] | None, *, plan: bool = False,
                 ) -> tuple[Iterable[Unit | Skipped], Iterable[Unit | Skipped] | None]:
    """The run's source (``source``, else the one ``cfg.source`` names), and with
    ``plan`` a second, independent pass over it for a batch executor to read ahead.

    Opened before the run directory, so a bad source leaves nothing behind. A
    one-shot iterator cannot be read twice, so a plan refuses it.
    """
    src = source if source is not None else source_for(cfg)
    if not plan:
        return src, None
    if source is None:
        return src, source_for(cfg)
    if iter(source) is source:
        raise ConfigError("--mode batch needs a source it can read twice (a list, or a "
                          "--source path), not a one-shot iterator")
    return src, source


def gated(cfg: Config, items: Iterable[Unit | Skipped], *, cache_dir: str | None = None,
          ) -> Iterable[Unit | Skipped]:
    """``items`` behind the run's data policies (licence, splits, language, readable
    rows), applied before any request is sent. The row checks get a reader of their own
    (they run on the gate's loop), with the same buckets' settings as the build's."""
    return gate(items, Policies.from_config(cfg.policies), rows_per_split=cfg.rows_to_read,
                cache_dir=cache_dir, reader=lambda: open_row_reader(cfg, cache_dir=cache_dir))


def hub_token() -> Secret:
    """``HF_TOKEN`` (or a stored ``huggingface-cli login``) as a ``Secret``: sent in the
    ``Authorization`` header of Hub calls, never written anywhere."""
    return environment_token()


def open_row_reader(cfg: Config, *, cache_dir: str | None = None) -> RowReader:
    """The reader of a run's rows (one per event loop; ``aclose`` it): local folders
    through ``datasets``, Hub datasets by viewer pages or Parquet ranges under the Hub's
    buckets at ``--hub-rpm``/``--hub-concurrency``, with ``HF_TOKEN`` for gated ones."""
    hub = HubRowReader.open(rpm=cfg.hub_rpm, concurrency=cfg.hub_concurrency,
                            token=hub_token(), viewer_url=cfg.hub_viewer_url)
    return RowReader(hub, cache_dir=cache_dir)


def make_engine(cfg: Config, stack: Stack, counter: TokenCounter, rundir: RunDir, *,
                progress: Progress | None = None, stats: Stats | None = None,
                seen: HashSet | None = None, on_commit: OnCommit | None = None) -> TaskEngine:
    """The task stage with its parts: prompts, the task filter, the judge (``--judge``)
    on the same executor, and the spend journal it commits beside each unit;
    ``on_commit`` hears of each committed unit (the instance stage, overlapped)."""
    task_filter = TaskFilter(cfg.max_tasks_per_unit, cfg.heldout_fraction, seen=seen,
                             sample_path=rundir.path / "dropped_tasks.jsonl")
    judge = Judge(cfg, stack.executor, counter) if cfg.judge else None
    return TaskEngine(cfg, executor=stack.executor, counter=counter, rundir=rundir,
                      prompts=PromptBuilder(cfg, counter), task_filter=task_filter,
                      judge=judge, spend=stack.spend, progress=progress, stats=stats,
                      on_commit=on_commit)


@contextlib.asynccontextmanager
async def local_server(cfg: Config) -> AsyncIterator[Config]:
    """``--local``: the bundled llama.cpp server started, and ``cfg`` pointed at it."""
    from dynogen.execute.local_server import LocalServer  # only --local pays for it

    server = LocalServer()
    async with server:
        # More requests in flight than the server has slots only queue inside
        # llama.cpp, where they run into the request timeout and are re-sent.
        yield cfg.with_(base_url=server.base_url, model=server.model, free=True, local=False,
                        max_in_flight=min(cfg.max_in_flight or server.n_parallel,
                                          server.n_parallel))


@contextlib.contextmanager
def signals(stop: Callable[[], None], *, enabled: bool = True) -> Iterator[None]:
    """Ctrl-C and SIGTERM for every long command, the same way.

    The first stops dispatch (``stop``): answers in flight are written, journals
    committed, and the command ends with its report; if that takes longer than
    ``SIGNAL_GRACE_SECONDS`` it counts as a second signal. The second exits at once
    (files are line-complete up to the last flush; a restart repairs the rest).
    Outside a running loop's main thread (a notebook's worker) nothing is installed.
    """
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    hits = 0

    def handler() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            stop()
            loop.call_later(SIGNAL_GRACE_SECONDS, handler)
        else:
            os._exit(EXIT_INTERRUPTED)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
