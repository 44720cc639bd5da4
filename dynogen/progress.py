"""The live progress bar: units done, requests/s, tokens/min against the limits, dollars.

A display only: the engine informs it (``unit_done``, ``request_done``) and
never reads from it, and it reads the limiter and ledger only to print them.
Redraws are throttled by tqdm (``mininterval``), so informing it is cheap on
the hot path. ``quiet`` gives a display that prints nothing; a stderr that is
not a terminal (nohup, cron, Slurm, a CI log) gets ``Plain``: one line every
``PLAIN_SECONDS``, with no carriage returns to fill the log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["PLAIN_SECONDS", "Bar", "Plain", "Quiet", "make_progress"]

PLAIN_SECONDS = 30.0


class Quiet:
    def unit_done(self, n: int = 1) -> None:
        pass

    def request_done(self, tokens: int, cost_usd: float) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class Bar:
    """tqdm over units, with rates and spend in the postfix."""

    def __init__(self, desc: str, total: int | None = None, *, rpm: float | None = None,
                 tpm: float | None = None, budget: float | None = None,
                 spent_before: float = 0.0, unit: str = "unit") -> None:
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5,
                        dynamic_ncols=True, leave=True)
        self.rpm, self.tpm, self.budget = rpm, tpm, budget
        self.requests = 0
        self.tokens = 0
        self.spent = spent_before
        self.t0 = time.monotonic()
        self._last = 0.0

    def unit_done(self, n: int = 1) -> None:
        self.bar.update(n)
        if self.requests:
            self._postfix()

    def request_done(self, tokens: int, cost_usd: float) -> None:
        self.requests += 1
        self.tokens += tokens
        self.spent += cost_usd
        self._postfix()

    def set_total(self, total: int) -> None:
        """Known later than the start (counted in the background): gives the bar its ETA."""
        self.bar.total = total
        self.bar.refresh()

    def _postfix(self) -> None:
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        dt = max(1e-6, now - self.t0)
        parts: dict[str, Any] = {"req/s": f"{self.requests / dt:.1f}"}
        tpm = self.tokens / dt * 60
        parts["tok/min"] = f"{tpm:,.0f}" + (f"/{self.tpm:,.0f}" if self.tpm else "")
        if self.rpm:
            parts["rpm"] = f"{self.requests / dt * 60:,.0f}/{self.rpm:,.0f}"
        parts["$"] = f"{self.spent:.4f}" + (f"/{self.budget:.2f}" if self.budget else "")
        self.bar.set_postfix(parts, refresh=False)

    def close(self) -> None:
        if self.requests:
            self._last = 0.0
            self._postfix()
        self.bar.close()


class Plain:
    """The same figures as ``Bar``, as a plain line every ``every`` seconds and at the end."""

    def __init__(self, desc: str, total: int | None = None, *, rpm: float | None = None,
                 tpm: float | None = None, budget: float | None = None,
                 spent_before: float = 0.0, every: float = PLAIN_SECONDS,
                 file: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 unit: str = "unit") -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.rpm, self.tpm, self.budget = rpm, tpm, budget
        self.units = self.requests = self.tokens = 0
        self.spent = spent_before
        self.every, self.clock = every, clock
        self.file = file if file is not None else sys.stderr
        self.t0 = self._last = clock()

    def unit_done(self, n: int = 1) -> None:
        self.units += n
        self._maybe()

    def request_done(self, tokens: int, cost_usd: float) -> None:
        self.requests += 1
        self.tokens += tokens
        self.spent += cost_usd
        self._maybe()

    def set_total(self, total: int) -> None:
        self.total = total

    def line(self) -> str:
        dt = max(1e-6, self.clock() - self.t0)
        of = f"/{self.total:,}" if self.total is not None else ""
        if self.unit != "unit":  # not LLM work: only how far and how long
            return f"{self.desc}: {self.units:,}{of} {self.unit}s, {dt:,.0f}s"
        parts = [f"{self.desc}: {self.units:,}{of} units", f"{self.requests / dt:.1f} req/s",
                 f"{self.tokens / dt * 60:,.0f}" + (f"/{self.tpm:,.0f}" if self.tpm else "")
                 + " tok/min"]
        if self.rpm:
            parts.append(f"{self.requests / dt * 60:,.0f}/{self.rpm:,.0f} rpm")
        parts.append(f"${self.spent:.4f}" + (f"/{self.budget:.2f}" if self.budget else ""))
        parts.append(f"{dt:,.0f}s")
        return ", ".join(parts)

    def _maybe(self) -> None:
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self._print()

    def _print(self) -> None:
        print(self.line(), file=self.file, flush=True)

    def close(self) -> None:
        self._print()


def make_progress(quiet: bool, desc: str, **kw: Any) -> Bar | Plain | Quiet:
    if quiet:
        return Quiet()
    return Bar(desc, **kw) if sys.stderr.isatty() else Plain(desc, **kw)
