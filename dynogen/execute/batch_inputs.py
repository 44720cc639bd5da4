"""The input files of a batch run, from the first line written until their results are read.

``InputFiles`` writes requests into open files (one per purpose: the plan, the
pool of unplanned requests, each batch's follow-up round), closes them when a
cap or the budget says so (journaling each before anything is uploaded), and
answers "which live file holds this request?" with 8 bytes a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from dynogen.dedup import HashSet
from dynogen.errors import BudgetExceeded, DynogenError
from dynogen.execute.base import Request
from dynogen.execute.batch_files import Caps, InputFile
from dynogen.execute.batch_state import BatchJournal, FileState
from dynogen.execute.ledger import Ledger, Reservation

__all__ = ["InputFiles", "LiveFile", "Slot"]

Slot = tuple[str, str]
"""An open file's purpose: ("plan" | "pool", endpoint) or ("retry", parent file name)."""


class LiveFile:
    """An input file from the moment it is opened until its results are collected."""

    __slots__ = ("name", "state", "keys", "writer", "reservation", "done", "error", "remote",
                 "opened", "round", "parent", "endpoint", "usd", "unresolved")

    def __init__(self, name: str, endpoint: str, round_: int, parent: str | None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.round = round_
        self.parent = parent
        self.state: FileState | None = None      # set once the file is closed and journaled
        self.keys = HashSet()
        self.writer: InputFile | None = None
        self.reservation: Reservation | None = None
        self.done = asyncio.Event()
        self.error: DynogenError | None = None
        self.remote: Any = None
        self.opened = time.monotonic()
        self.usd = 0.0
        # A create was attempted and which batch (if any) it made is not known yet: nothing
        # is submitted for this file until the remote can tell (intent-keeping remotes).
        self.unresolved = False

    @property
    def submitted(self) -> bool:
        return self.state is not None and self.state.batch_id is not None


class InputFiles:
    """Every file of the run that is not yet collected (``live``), and the journal's view of
    all of them (``files``)."""

    def __init__(self, journal: BatchJournal, caps: Caps, ledger: Ledger,
                 session: Counter[str]) -> None:
        self.journal = journal
        self.caps = caps
        self.ledger = ledger
        self.session = session
        self.files: dict[str, FileState] = journal.load()
        self.live: dict[str, LiveFile] = {}
        self.open: dict[Slot, LiveFile] = {}
        self._seq = max((int(n[6:12]) for n in self.files if n[6:12].isdigit()), default=0)

    def write(self, slot: Slot, key: bytes, h: int, req: Request, round_: int,
               parent: str | None) -> bool:
        """Append ``req`` to the open file of ``slot``, closing it first when full or when the
        budget cannot take one more line; ``False`` if not even a file of one fits."""
        live = self.open.get(slot)
        line = b""
        for _ in range(2):
            if live is None:
                if not self.ledger.can_reserve(req.prompt_tokens, req.max_tokens):
                    return False
                live = self.open_file(slot, req.endpoint, round_, parent)
            writer = live.writer
            assert writer is not None
            line = writer.line(key, req.body)
            fits = writer.fits(line, req.prompt_tokens) and self.ledger.can_reserve(
                writer.prompt_tokens + req.prompt_tokens, writer.max_tokens + req.max_tokens)
            if fits:
                break
            self.close_file(slot)
            live = None
        assert live is not None and live.writer is not None
        live.writer.add(key, line, req.prompt_tokens, req.max_tokens)
        live.keys.add(h)
        return True

    def open_file(self, slot: Slot, endpoint: str, round_: int,
                   parent: str | None) -> LiveFile:
        self._seq += 1
        name = f"input-{self._seq:06d}.jsonl"
        live = LiveFile(name, endpoint, round_, parent)
        live.writer = InputFile(self.journal.local(name), endpoint, self.caps)
        self.live[name] = live
        self.open[slot] = live
        return live

    def close_file(self, slot: Slot) -> None:
        live = self.open.pop(slot, None)
        if live is None or live.writer is None:
            return
        w, live.writer = live.writer, None
        if w.requests == 0:
            w.discard()
            del self.live[live.name]
            return
        w.close()
        self.journal.record("file", live.name, endpoint=live.endpoint, round=live.round,
                            parent=live.parent, requests=w.requests,
                            prompt_tokens=w.prompt_tokens, max_tokens=w.max_tokens)
        st = FileState(live.name, live.endpoint, live.round, live.parent, w.requests,
                       w.prompt_tokens, w.max_tokens, time.time())
        self.files[live.name] = st
        live.state = st
        with contextlib.suppress(BudgetExceeded):
            live.reservation = self.ledger.reserve(w.prompt_tokens, w.max_tokens)
        self.session["batch_files"] += 1
        self.session["batch_lines_written"] += w.requests

    def close_kind(self, kind: str) -> None:
        for slot in [s for s in self.open if s[0] == kind]:
            self.close_file(slot)

    def write_line(self, slot: Slot, key: bytes, h: int, line: bytes, pt: int,
                    mt: int, parent: FileState) -> None:
        """A failed line, copied as it was into the follow-up file of ``parent``'s next round."""
        live = self.open.get(slot)
        if live is None or not live.writer or not live.writer.fits(line, pt):
            self.close_file(slot)
            live = self.open_file(slot, parent.endpoint, parent.round + 1, parent.name)
        assert live.writer is not None
        live.writer.add(key, line, pt, mt)
        live.keys.add(h)
        self.session["batch_resubmitted"] += 1

    def holder(self, h: int) -> LiveFile | None:
        """The newest live file holding the request whose key hash is ``h``."""
        for live in reversed(self.live.values()):
            if h in live.keys:
                return live
        return None

    def enqueued(self) -> int:
        """Prompt tokens in submitted batches not yet collected."""
        return sum(lv.state.prompt_tokens for lv in self.live.values()
                   if lv.submitted and lv.state is not None)

