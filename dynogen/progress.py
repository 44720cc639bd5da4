"""The live progress bar: units done, requests/s, tokens/min against the limits, dollars.

A display only: the engine informs it (``unit_done``, ``request_done``) and
never reads from it, and it reads the limiter and ledger only to print them.
Redraws are throttled by tqdm (``mininterval``), so informing it is cheap on
the hot path. ``quiet`` gives a display that prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["Bar", "Quiet", "make_progress"]


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
                 spent_before: float = 0.0) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="unit", file=sys.stderr, mininterval=0.5,
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


def make_progress(quiet: bool, desc: str, **kw: Any) -> Bar | Quiet:
    return Quiet() if quiet else Bar(desc, **kw)
