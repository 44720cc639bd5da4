"""``dynogen batch status|cancel``: a batch run's jobs, seen from another terminal.

They read the run directory's journal (never its lock, so they work while the
run polls) and ask the server with the API key from the environment: OpenAI's
Batch API, or Anthropic's Message Batches for a run whose provider is Anthropic
(``compose.batch_remote_for``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from dynogen.compose import batch_remote_for, resolve_price, speaking
from dynogen.config import Config, load_config
from dynogen.errors import DynogenError
from dynogen.eventloop import run as run_on_loop
from dynogen.execute.batch_state import BatchJournal
from dynogen.store.rundir import RunDir

__all__ = ["batch_cancel", "batch_status"]


def _batch_config(out: str | Path, base_url: str | None) -> Config:
    """The server and prices a run directory's batches were sent with (its manifest), the
    API key from the environment (the variable the run read it from)."""
    manifest = RunDir(out).manifest
    saved = orjson.loads(manifest.read_bytes()).get("config", {}) if manifest.exists() else {}
    keep = ("base_url", "model", "price_in", "price_out", "batch_price_in", "batch_price_out",
            "prices_file", "price_key", "free", "api_key_env", "provider")
    values = {k: saved[k] for k in keep if saved.get(k) is not None}
    # The journal says which API the batches went to (a `call` directory has no manifest).
    values["provider"] = BatchJournal(out).provider()
    if base_url:
        values["base_url"] = base_url
    return speaking(load_config(None, **values))


def batch_status(out: str | Path, *, base_url: str | None = None) -> list[dict[str, Any]]:
    """Every batch of a ``--mode batch`` run directory: state, counts, age, cost so far."""
    from dynogen.execute.batch_admin import astatus  # the openai SDK: only when asked

    cfg = _batch_config(out, base_url)
    try:
        price = resolve_price(cfg)
    except DynogenError:
        price = None  # the table does not know the model: show counts without dollars
    return run_on_loop(astatus(Path(out), cfg.base_url, cfg.api_key.get(), price,
                                 remote_for=batch_remote_for(cfg)))


def batch_cancel(out: str | Path, *, base_url: str | None = None) -> list[dict[str, Any]]:
    """Cancel a batch run's running batches; what finished is kept, and the run (if it is
    polling) notices, submits nothing new and marks the rest failed for a later resume."""
    from dynogen.execute.batch_admin import acancel  # the openai SDK: only when asked

    cfg = _batch_config(out, base_url)
    return run_on_loop(acancel(Path(out), cfg.base_url, cfg.api_key.get(),
                                 remote_for=batch_remote_for(cfg)))
