"""``dynogen batch status`` and ``dynogen batch cancel``: a batch run seen from outside.

Both read the run directory's journal (``batch_state``) and ask the server
about the batches it names, so they work from another terminal while the run
itself polls: the journal is append-only and read without a lock. ``cancel``
only asks the server to cancel; the run notices at its next poll, keeps what
finished and submits nothing new (see ``batch.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynogen.errors import APIError, ConfigError
from dynogen.execute.batch_remote import BatchRemote
from dynogen.execute.batch_state import TERMINAL, BatchJournal
from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import Price

__all__ = ["acancel", "astatus", "format_status", "live_status_line"]


def _journal(run_dir: Path) -> BatchJournal:
    journal = BatchJournal(run_dir)
    if not journal.exists():
        raise ConfigError(f"{run_dir} holds no batches (no batches.jsonl): give the --out of a "
                          "run started with --mode batch (for `call`, OUT.batches)")
    return journal


Remote = Callable[[str, BatchJournal], Any]
"""Makes the run's remote from its run id and journal (``BatchRemote`` when not given)."""


def _remote(journal: BatchJournal, base_url: str, api_key: str | None,
            remote: Remote | None) -> Any:
    if remote is not None:
        return remote(journal.run_id() or "", journal)
    return BatchRemote(base_url, api_key, run_id=journal.run_id() or "")


async def astatus(run_dir: Path, base_url: str, api_key: str | None,
                  price: Price | None = None, *, remote_for: Remote | None = None,
                  ) -> list[dict[str, Any]]:
    """One row per input file: its batch's state, counts, age and cost so far (the cost
    where the API reports a batch's usage: OpenAI's; else what the journal has settled)."""
    journal = _journal(run_dir)
    remote = _remote(journal, base_url, api_key, remote_for)
    rows = []
    now = time.time()
    try:
        for st in journal.load().values():
            row = st.to_dict()
            row["age_seconds"] = round(now - st.at, 1)
            row["total"] = st.requests
            row["completed"], row["failed_lines"] = st.answered, st.failed
            if st.batch_id and not st.done:
                try:
                    b = await remote.retrieve(st.batch_id)
                except APIError as e:
                    row["error"] = str(e)
                else:
                    row["status"] = b.status
                    if b.request_counts is not None:
                        row["completed"] = b.request_counts.completed
                        row["failed_lines"] = b.request_counts.failed
                    if b.usage is not None and price is not None:
                        row["usd"] = price.cost(b.usage.input_tokens, b.usage.output_tokens,
                                                batch=True)
            elif not st.batch_id:
                row["status"] = "not submitted"
            rows.append(row)
    finally:
        await remote.aclose()
    return rows


async def acancel(run_dir: Path, base_url: str, api_key: str | None, *,
                  remote_for: Remote | None = None) -> list[dict[str, Any]]:
    """Cancel every batch of the run still running; finished ones (and their answers) stay."""
    journal = _journal(run_dir)
    remote = _remote(journal, base_url, api_key, remote_for)
    out = []
    try:
        for st in journal.load().values():
            if not st.batch_id or st.done:
                continue
            b = await remote.retrieve(st.batch_id)
            if b.status in TERMINAL or b.status == "cancelling":
                out.append({"name": st.name, "batch_id": st.batch_id, "status": b.status})
                continue
            try:
                b = await remote.cancel(st.batch_id)
            except APIError as e:
                if e.status != 409:
                    raise
                b = await remote.retrieve(st.batch_id)  # it finished meanwhile
            out.append({"name": st.name, "batch_id": st.batch_id, "status": b.status})
    finally:
        await remote.aclose()
    return out


def _age(seconds: float) -> str:
    m = int(seconds // 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{int(seconds % 60):02d}s"


def format_status(rows: list[dict[str, Any]]) -> str:
    """The status rows as a table a person reads, with a totals line."""
    if not rows:
        return "no batches yet"
    lines = []
    for r in rows:
        usd = f"${r['usd']:.4f}" if r.get("usd") is not None else "$?"
        lines.append(f"{r['name']}  {r.get('batch_id') or '-':<30} {r['status'] or '?':<13} "
                     f"{r['completed']:>7,}/{r['total']:<7,} done, {r['failed_lines']:,} failed"
                     f"  round {r['round']}  age {_age(r['age_seconds'])}  {usd}")
    live = sum(1 for r in rows if r["status"] not in TERMINAL and r["status"] != "not submitted")
    usd_total = sum(r.get("usd") or 0.0 for r in rows)
    lines.append(f"{len(rows)} batches, {live} running; ${usd_total:.4f} so far")
    return "\n".join(lines)


def live_status_line(batches: list[tuple[Any, bool]], collected: int, ledger: Ledger) -> str:
    """The running run's one-line status: (last polled batch or ``None``, still being
    written) per live file, how many are collected, and the ledger's answers and dollars."""
    states: Counter[str] = Counter()
    done = total = 0
    for b, writing in batches:
        states[b.status if b is not None else "writing" if writing else "queued"] += 1
        if b is not None and b.request_counts is not None:
            done += b.request_counts.completed + b.request_counts.failed
            total += b.request_counts.total
    parts = [f"{n} {s}" for s, n in sorted(states.items())]
    if collected:
        parts.append(f"{collected} collected")
    return (f"batches: {', '.join(parts) or 'none'}; lines {done:,}/{total:,} in live batches; "
            f"{ledger.totals()['requests']['settled']:,} answers; ${ledger.spent:.4f}")
