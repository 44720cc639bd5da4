"""What a batch run has submitted, written down the moment it exists.

``RUN_DIR/batches.jsonl`` is an append-only journal of events, one line each,
fsynced before the run moves on::

    {"ev": "file",   "name": "input-000001.jsonl", "endpoint": ..., "round": 0,
     "parent": null, "requests": N, "prompt_tokens": P, "max_tokens": M, "at": T}
    {"ev": "upload", "name": ..., "file_id": "file-..."}
    {"ev": "intent", "name": ..., "at": T}       (a provider without metadata: see below)
    {"ev": "batch",  "name": ..., "batch_id": "batch_..."}
    {"ev": "done",   "name": ..., "batch_id": ..., "status": "completed", "answered": A,
     "failed": F, "usd": C}

and ``RUN_DIR/batches/`` holds a local copy of every input file, so a request
can be resubmitted (or a restart can tell which requests a batch holds) without
asking the server. Each step is journaled after it happened and before the
next, so a kill leaves at most one step whose result is unknown: a file
written but not journaled (discarded: it was never uploaded), an upload or a
batch whose id was not journaled (found again by listing the server's files by
name and its batches by the run's metadata, see ``batch.py``). ``run_id``
(``RUN_DIR/batches/run_id``) names the run in every file name and batch's
metadata, so the listing never adopts another run's batch. Anthropic's Message
Batches carry no metadata: an ``intent`` event, written before each create,
dates the attempt, and a restart adopts the batch created after it with the
same number of requests (``anthropic_batches``). ``RUN_DIR/batches/provider``
names the API the batches were sent to, so a resume cannot poll them elsewhere.

Readers (``dynogen batch status``) read the journal while the run appends;
``iter_jsonl`` skips a torn last line, so they never see half an event.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynogen.errors import ConfigError
from dynogen.store.journal import JsonlWriter, iter_jsonl, repair

__all__ = ["JOURNAL", "BatchJournal", "FileState", "TERMINAL"]

JOURNAL = "batches.jsonl"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(slots=True)
class FileState:
    """One input file and the batch that runs it, as far as the journal knows."""

    name: str
    endpoint: str
    round: int
    parent: str | None
    requests: int
    prompt_tokens: int
    max_tokens: int
    at: float
    file_id: str | None = None
    batch_id: str | None = None
    intent_at: float | None = None  # when a create was last attempted (intent-keeping remotes)
    status: str | None = None     # the last status seen (journaled only when done)
    done: bool = False
    answered: int = 0
    failed: int = 0
    usd: float = 0.0

    @property
    def live(self) -> bool:
        """Submitted or about to be, and its results not yet collected."""
        return not self.done

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "endpoint": self.endpoint, "round": self.round,
                "parent": self.parent, "requests": self.requests, "file_id": self.file_id,
                "batch_id": self.batch_id, "status": self.status, "done": self.done,
                "answered": self.answered, "failed": self.failed, "usd": self.usd,
                "at": self.at}


class BatchJournal:
    """The journal and local files of one run directory's batches."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / JOURNAL
        self.dir = self.run_dir / "batches"
        self._writer: JsonlWriter | None = None

    # ---- reading (also from another process) ---------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, FileState]:
        """Every file the journal names, in the order written."""
        files: dict[str, FileState] = {}
        for ev in iter_jsonl(self.path):
            kind, name = ev.get("ev"), ev.get("name")
            if not isinstance(name, str):
                continue
            if kind == "file":
                files[name] = FileState(
                    name, str(ev.get("endpoint") or "/chat/completions"),
                    int(ev.get("round") or 0), ev.get("parent"), int(ev.get("requests") or 0),
                    int(ev.get("prompt_tokens") or 0), int(ev.get("max_tokens") or 0),
                    float(ev.get("at") or 0.0))
                continue
            f = files.get(name)
            if f is None:
                continue
            if kind == "upload":
                f.file_id = ev.get("file_id")
            elif kind == "intent":
                at = ev.get("at")
                f.intent_at = float(at) if isinstance(at, int | float) else 0.0
            elif kind == "batch":
                f.batch_id, f.status, f.done = ev.get("batch_id"), "validating", False
            elif kind == "done":
                f.done = True
                f.status = ev.get("status")
                f.answered = int(ev.get("answered") or 0)
                f.failed = int(ev.get("failed") or 0)
                f.usd = float(ev.get("usd") or 0.0)
        return files

    def run_id(self, create: bool = False) -> str | None:
        """This run's id (16 hex digits), made on first use when ``create``."""
        p = self.dir / "run_id"
        if p.exists():
            return p.read_text("ascii").strip() or None
        if not create:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        rid = secrets.token_hex(8)
        tmp = p.with_name("run_id.tmp")
        tmp.write_text(rid + "\n", "ascii")
        os.replace(tmp, p)
        return rid

    def check_provider(self, provider: str) -> None:
        """Record which API this run's batches go to, or refuse another one (a directory
        from before providers existed used OpenAI's)."""
        p = self.dir / "provider"
        if p.exists():
            was = p.read_text("ascii").strip() or "openai"
        elif self.path.exists() and any(True for _ in iter_jsonl(self.path)):
            was = "openai"
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name("provider.tmp")
            tmp.write_text(provider + "\n", "ascii")
            os.replace(tmp, p)
            return
        if was != provider:
            raise ConfigError(f"this run's batches were sent to {was}'s API: resume it with "
                              f"--provider {was} (or start another --out)")

    def provider(self) -> str:
        """The API this run's batches were sent to."""
        p = self.dir / "provider"
        return (p.read_text("ascii").strip() if p.exists() else "") or "openai"

    def local(self, name: str) -> Path:
        return self.dir / name

    # ---- writing (the run only) ----------------------------------------------------------------

    def open(self) -> BatchJournal:
        """Repair a torn tail, drop unjournaled partial files, and start appending."""
        self.dir.mkdir(parents=True, exist_ok=True)
        repair(self.path)
        known = set(self.load())
        for p in self.dir.glob("input-*"):
            base = p.name.split(".jsonl", 1)[0] + ".jsonl"
            if base not in known or p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # written but never journaled: never uploaded
        self._writer = JsonlWriter(self.path)
        return self

    def record(self, ev: str, name: str, **fields: Any) -> None:
        """Append one event and make it durable before returning."""
        assert self._writer is not None, "open() the journal before recording"
        self._writer.write({"ev": ev, "name": name, **fields, "at": round(time.time(), 3)})
        self._writer.flush(fsync=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
