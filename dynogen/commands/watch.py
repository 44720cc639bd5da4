"""Runs a user can watch: ``status.json`` every few seconds, and ``run.log``.

A second terminal reads ``status.json`` (``dynogen status``) without the run's
lock: the stage; units done, left, skipped and failed by reason; requests/s and
tokens/min against the limits; dollars against the budget; what is out at the
server (requests online, batches in batch mode); an ETA; the last error. The
watcher only reads what the run's parts already count (the stats the engine
keeps, the ledger, the executor's session counters), so the request path pays
nothing for it.

``run.log`` (stdlib ``logging``, in the run directory) gets the start-up
settings without secrets, a line a minute summarising requests, retries and
skips, and how the command stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynogen.execute.base import Executor
from dynogen.execute.ledger import Ledger
from dynogen.report import Stats
from dynogen.store.status import write_status
from dynogen.version import __version__

__all__ = ["STATUS_SECONDS", "Watch", "close_run_log", "format_status", "open_run_log",
           "watching"]

STATUS_SECONDS = 2.0   # how often status.json is rewritten
LOG_SECONDS = 60.0     # how often run.log gets a summary line
RUN_LOG = "run.log"


def open_run_log(directory: Path, *, name: str, secrets: tuple[str | None, ...] = (),
                 ) -> logging.Logger:
    """A logger writing to ``directory/run.log`` (appended across resumes); any of
    ``secrets`` that reaches a message is masked."""
    logger = logging.getLogger(f"dynogen.run.{name}.{id(directory)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    try:
        handler: logging.Handler = _QuietFileHandler(directory / RUN_LOG, encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()  # a read-only or full disk: the run's files say why
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_Mask(tuple(s for s in secrets if s)))
    logger.addHandler(handler)
    return logger


class _QuietFileHandler(logging.FileHandler):
    """A log line the disk refuses is dropped, not printed as a traceback: run.log is a
    record for people, and a full disk is already reported by the run's own files."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self.dropped = getattr(self, "dropped", 0) + 1

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the last flush found the disk full
            super().close()


class _Mask(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            for s in self.secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, None
        return True


def close_run_log(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


@dataclass
class Watch:
    """What ``status.json`` says, assembled from the parts a command already has."""

    directories: tuple[Path, ...]  # the run directory (and a growing collection's)
    command: str
    stats: Stats
    log: logging.Logger
    budget_usd: float | None = None
    spent_before: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    total_units: int | None = None
    stage: str = "starting"
    ledger: Ledger | None = None
    executor: Executor | None = None
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _t0: float = 0.0
    _window: list[tuple[float, int, int]] = field(default_factory=list)
    _logged: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._t0 = self.clock()

    def attach(self, *, ledger: Ledger, executor: Executor) -> None:
        self.ledger, self.executor = ledger, executor

    def note_error(self, text: str) -> None:
        self.last_error = text[:500]

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        report = self.stats.to_dict()
        u = report["units"]
        session: Counter[str] = self.executor.session if self.executor is not None else Counter()
        requests = int(session.get("requests", 0))
        tokens = report["tokens"]["in"] + report["tokens"]["out"]
        # Rates over the last ~30 s, so a slow start or a pause does not blur them.
        self._window.append((now, requests, tokens))
        while len(self._window) > 2 and now - self._window[0][0] > 30.0:
            self._window.pop(0)
        t_old, r_old, k_old = self._window[0]
        span = now - t_old
        rps = (requests - r_old) / span if span > 0 else 0.0
        tpm = (tokens - k_old) / span * 60 if span > 0 else 0.0
        spent = self.spent_before + (self.ledger.spent if self.ledger is not None else 0.0)
        done = u["seen"]
        left = None if self.total_units is None else max(0, self.total_units - done)
        elapsed = now - self._t0
        eta = None
        if left is not None and done and elapsed > 0:
            eta = round(left / (done / elapsed), 1)
        return {
            "command": self.command, "stage": self.stage, "pid": os.getpid(),
            "dynogen_version": __version__,
            "updated_unix": round(time.time(), 3), "elapsed_seconds": round(elapsed, 1),
            "units": {"done": done, "total": self.total_units, "left": left,
                      "kept_tasks": report["tasks"]["kept"],
                      "skipped": u["skipped"], "skipped_by_reason": u["skipped_by_reason"],
                      "failed": u["failed"], "failed_by_reason": u["failed_by_reason"],
                      "retryable": u["retryable"] + sum(
                          report["instances"]["retryable_by_reason"].values()),
                      "retryable_by_reason": _merged(
                          u["retryable_by_reason"], report["instances"]["retryable_by_reason"])},
            "instances": report["instances"]["written"],
            "rates": {"requests_per_second": round(rps, 2), "tokens_per_minute": round(tpm),
                      "rpm_limit": self.rpm, "tpm_limit": self.tpm},
            "cost": {"spent_usd": round(spent, 6), "budget_usd": self.budget_usd},
            "in_flight": self.executor.in_flight() if self.executor is not None else {},
            "requests": {"sent": requests, "retries": int(session.get("retries", 0)),
                         "cache_hits": int(session.get("cache_hits", 0))},
            "eta_seconds": eta, "last_error": self.last_error, **self.extra,
        }

    def write(self) -> dict[str, Any]:
        snap = self.snapshot()
        for d in self.directories:
            write_status(d, snap)
        return snap

    def log_summary(self, snap: dict[str, Any]) -> None:
        """One line a minute: what changed since the last one (retries and skips summed)."""
        now = {"units": snap["units"]["done"], "requests": snap["requests"]["sent"],
               "retries": snap["requests"]["retries"], "skipped": snap["units"]["skipped"],
               "failed": snap["units"]["failed"]}
        delta = {k: v - self._logged[k] for k, v in now.items()}
        self._logged.update(delta)
        self.log.info("%s: %d units (+%d), %d requests (+%d), %d retries (+%d), %d skipped "
                      "(+%d), %d failed; $%.4f spent", self.stage, now["units"], delta["units"],
                      now["requests"], delta["requests"], now["retries"], delta["retries"],
                      now["skipped"], delta["skipped"], now["failed"],
                      snap["cost"]["spent_usd"])


@contextlib.asynccontextmanager
async def watching(watch: Watch, *, every: float = STATUS_SECONDS,
                   log_every: float = LOG_SECONDS) -> AsyncIterator[Watch]:
    """Rewrite ``status.json`` every ``every`` seconds until the block ends, then once more
    with the final stage."""
    async def tick() -> None:
        last_log = watch.clock()
        while True:
            await asyncio.sleep(every)
            snap = watch.write()
            if watch.clock() - last_log >= log_every:
                last_log = watch.clock()
                watch.log_summary(snap)

    watch.write()
    task = asyncio.create_task(tick())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        watch.log_summary(watch.write())


def _merged(units: dict[str, int], builds: dict[str, int]) -> dict[str, int]:
    """Units left for the next resume by transient errors: before their requests (the
    rows check, ``rows_*``) and at the build (the bare reason, marked ``build_*``)."""
    return {**units, **{f"build_{k}": v for k, v in builds.items()}}


def format_status(data: dict[str, Any] | None, where: Path) -> str:
    """``dynogen status``'s text: what ``status.json`` says, for a person."""
    if data is None:
        return (f"{where}: no status yet (no run has written status.json there, or it "
                "could not be read)")
    u, r, c = data.get("units") or {}, data.get("rates") or {}, data.get("cost") or {}
    alive = data.get("written_by_pid_alive")
    stage = str(data.get("stage"))
    if not alive and stage in ("starting", "tasks", "instances"):
        stage += " (its process is gone: killed? run the same command again to resume)"
    total = f"/{u['total']:,}" if u.get("total") is not None else ""
    lines = [f"{data.get('command', 'run')} in {where}: {stage}",
             f"  units      {u.get('done', 0):,}{total} done, {u.get('kept_tasks', 0):,} tasks "
             f"kept, {data.get('instances', 0):,} instances"]
    for key in ("skipped", "failed", "retryable"):
        by = u.get(f"{key}_by_reason") or {}
        if by:
            lines.append(f"  {key:10} " + ", ".join(f"{k} {v:,}" for k, v in by.items()))
    rpm = f" (limit {r['rpm_limit']:,.0f}/min)" if r.get("rpm_limit") else ""
    tpm = f" (limit {r['tpm_limit']:,.0f})" if r.get("tpm_limit") else ""
    lines.append(f"  rate       {r.get('requests_per_second', 0):,.1f} requests/s{rpm}, "
                 f"{r.get('tokens_per_minute', 0):,} tokens/min{tpm}")
    budget = f" of ${c['budget_usd']:.2f}" if c.get("budget_usd") else ""
    lines.append(f"  cost       ${c.get('spent_usd', 0):.4f}{budget}")
    out = data.get("in_flight") or {}
    if out:
        lines.append("  in flight  " + ", ".join(f"{v:,} {k}" for k, v in out.items()))
    if data.get("eta_seconds") is not None:
        lines.append(f"  eta        {data['eta_seconds']:,.0f} s")
    if data.get("last_error"):
        lines.append(f"  last error {data['last_error']}")
    return "\n".join(lines)
