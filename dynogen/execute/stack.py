"""The composition root: one place that turns a ``Config`` into a working executor.

``run``, ``call``, the judge and the embedder all reach the model through
``open_stack``: it checks what can be checked before money is spent (the
model's price, the API key, that the server answers), then assembles limiter,
ledger, request cache, spend journal and the executor for ``cfg.mode``, and
closes them in the right order however the caller leaves.

>>> async with open_stack(cfg, price=resolve_price(cfg), stage="tasks",
...                       cache_path=run / "cache.sqlite", spend_path=run / "spend.jsonl") as st:
...     comp = await st.executor.complete(request, Accounting())
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from dynogen.config import DEFAULT_BASE_URL, Config
from dynogen.errors import AuthenticationError, ConfigError
from dynogen.execute.base import Executor
from dynogen.execute.client import ChatClient
from dynogen.execute.ledger import Ledger
from dynogen.execute.online import Meter, OnlineExecutor
from dynogen.execute.prices import Price, PriceTable, price_for
from dynogen.execute.transport import AiohttpTransport, Transport
from dynogen.ratelimit import Limiter, RetryPolicy
from dynogen.store.cache import RequestCache
from dynogen.store.journal import JsonlWriter

__all__ = ["Stack", "check_key", "open_stack", "preflight", "resolve_price"]

BATCH_CONCURRENCY = 1024  # answers a batch run waits on at once: futures, not sockets


def resolve_price(cfg: Config) -> Price:
    table = PriceTable.load(cfg.prices_file)
    return price_for(cfg.model, table, price_in=cfg.price_in, price_out=cfg.price_out,
                     free=cfg.free or cfg.local, batch_price_in=cfg.batch_price_in,
                     batch_price_out=cfg.batch_price_out)


def check_key(cfg: Config) -> None:
    if cfg.base_url.rstrip("/") == DEFAULT_BASE_URL and not cfg.api_key:
        raise ConfigError(
            "no API key: set OPENAI_API_KEY (or api_key in the config file), or point "
            "--base-url at another OpenAI-compatible server, or use --local"
        )


async def preflight(cfg: Config, transport: Transport | None) -> None:
    """Fail fast on an unreachable server or a refused key, before any paid request."""
    if transport is not None:
        return  # injected transports (tests, in-process fakes) are reachable by construction
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
            f"the server at {host} refused the API key (HTTP {status}): check OPENAI_API_KEY"
        )


@dataclass
class Stack:
    """What a caller of the seam may look at besides the executor (for its report)."""

    executor: Executor
    ledger: Ledger
    limiter: Limiter
    cache: RequestCache | None

    def cache_entries(self) -> int:
        return len(self.cache) if self.cache is not None else 0


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
    """Limiter, ledger, cache, spend journal and the executor ``cfg.mode`` names.

    ``budget_usd`` is what is left of the budget for this session (a resumed
    run has already spent part of it); ``state_dir`` is where a batch executor
    keeps its files and journal.
    """
    limiter = Limiter(rpm=cfg.rpm, tpm=cfg.tpm, max_in_flight=cfg.max_in_flight)
    ledger = Ledger(price, budget_usd, batch=cfg.mode == "batch")
    # A cache has one writer at a time (a shared --cache too); a spoiled one is moved aside.
    cache = RequestCache(cache_path, lock=True) if cache_path is not None else None
    spend = JsonlWriter(spend_path) if spend_path is not None else None
    executor: Any
    try:
        if cfg.mode == "batch":
            executor = _batch_executor(cfg, limiter=limiter, ledger=ledger, cache=cache,
                                       spend=spend, meter=meter, stage=stage,
                                       state_dir=state_dir, transport=transport)
        else:
            client = ChatClient(cfg.base_url, cfg.api_key.get(),
                                transport=transport or AiohttpTransport(
                                    limit=limiter.max_senders, max_body=cfg.max_response_bytes),
                                timeout=cfg.request_timeout)
            policy = RetryPolicy(max_retries=cfg.max_retries, base=cfg.retry_base_delay,
                                 cap=cfg.retry_max_delay)
            executor = OnlineExecutor(client, limiter, ledger, cache, policy, spend=spend,
                                      meter=meter, stage=stage, secret=cfg.api_key.get(),
                                      concurrency=limiter.max_senders)
    except BaseException:
        _close_files(cache, spend)
        raise
    try:
        yield Stack(executor, ledger, limiter, cache)
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


def _batch_executor(cfg: Config, **parts: Any) -> Executor:
    try:
        from dynogen.execute.batch import BatchExecutor
    except ImportError:
        raise ConfigError("--mode batch is not available in this build; use --mode online") \
            from None
    executor: Executor = BatchExecutor(cfg, concurrency=BATCH_CONCURRENCY, **parts)
    return executor
