"""``max_tokens`` sized from the answers seen (``--max-tokens auto``). Pure.

Why: providers charge ``max_tokens`` against the tokens-per-minute limit when a
request is admitted (OpenAI's rate-limit guide advises setting it close to the
expected answer), and the ledger reserves it against the budget. dynogen's task
answers are about 150 tokens; reserving the default 640 on top of a ~900-token
prompt leaves a TPM-bound run (the usual case on low tiers) sending roughly a
quarter fewer requests than it could.

What: a high quantile (``QUANTILE``) of the completion lengths of earlier answers,
per prompt variant, times ``MARGIN`` (``SMALL_MARGIN`` under ``SMALL`` answers, where
the quantile is little more than the longest answer seen), rounded up to ``STEP`` and
kept within ``[FLOOR, ceiling]`` (the configured ``--max-tokens``). Rules:

* at least ``MIN_ANSWERS`` answers, else the variant's pooled figure, else none;
* answers cut at ``max_tokens`` (``finish_reason == "length"``) hide how long the
  answer would have been: if more than ``1 - QUANTILE`` of them were cut, the
  quantile is unknown and the ceiling stays;
* the rare longer answer is caught by the engine's length retry
  (``max_tokens_retry``), as before.

``max_tokens`` is part of every request body, so of the cache key and of what a
resumed or batch run must reproduce: a run resolves it once (from an earlier run's
``calibration.json``, or from a pilot of its first answers), records it in its
manifest, and never changes it while it runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from dynogen.config import format_by_variant, parse_by_variant

__all__ = ["FLOOR", "MARGIN", "MIN_ANSWERS", "PILOT_REQUESTS", "QUANTILE", "STEP", "Lengths",
           "choose", "format_by_variant", "parse_by_variant"]

QUANTILE = 0.99
MARGIN = 1.25
SMALL = 200
SMALL_MARGIN = 1.5
STEP = 16
FLOOR = 64
MIN_ANSWERS = 8
PILOT_REQUESTS = 16  # answers a run without calibration asks for first (at the ceiling)


class Lengths:
    """Completion lengths per variant: a histogram (token count -> answers), and how
    many answers were cut at ``max_tokens``. Bounded by the largest ``max_tokens``."""

    __slots__ = ("hist", "cut")

    def __init__(self) -> None:
        self.hist: dict[str, Counter[int]] = {}
        self.cut: Counter[str] = Counter()

    def add(self, variant: str, completion_tokens: int, *, truncated: bool = False) -> None:
        self.hist.setdefault(variant, Counter())[int(completion_tokens)] += 1
        if truncated:
            self.cut[variant] += 1

    def observe(self, variant: str, usage: Mapping[str, Any] | None,
                finish_reason: str | None) -> None:
        """One answer's ``usage.completion_tokens``, if the server gave a sound one."""
        n = usage.get("completion_tokens") if usage else None
        if isinstance(n, int) and n >= 0:
            self.add(variant, n, truncated=finish_reason == "length")

    def merge(self, other: Lengths) -> Lengths:
        for v, h in other.hist.items():
            self.hist.setdefault(v, Counter()).update(h)
        self.cut.update(other.cut)
        return self

    def answers(self, variant: str | None = None) -> int:
        if variant is None:
            return sum(sum(h.values()) for h in self.hist.values())
        return sum(self.hist.get(variant, Counter()).values())

    def pooled(self) -> tuple[Counter[int], int]:
        total: Counter[int] = Counter()
        for h in self.hist.values():
            total.update(h)
        return total, sum(self.cut.values())

    def summary(self) -> dict[str, dict[str, float]]:
        """Quantiles per variant, for reports and ``calibration.json`` readers."""
        out = {}
        for v, h in sorted(self.hist.items()):
            n = sum(h.values())
            if n:
                out[v] = {"answers": n, "cut": self.cut[v], "mean": round(
                    sum(k * c for k, c in h.items()) / n, 1),
                    "p50": quantile(h, 0.5), "p90": quantile(h, 0.9),
                    "p99": quantile(h, 0.99), "max": max(h)}
        return out

    def to_json(self) -> dict[str, Any]:
        return {"hist": {v: {str(k): c for k, c in sorted(h.items())}
                         for v, h in sorted(self.hist.items())},
                "cut": dict(sorted(self.cut.items()))}

    @classmethod
    def from_json(cls, data: Any) -> Lengths:
        """Tolerant: a file without lengths (older dynogen) gives an empty histogram;
        anything malformed raises ``ValueError``."""
        out = cls()
        if not data:
            return out
        if not isinstance(data, dict):
            raise ValueError("lengths must be an object")
        for v, h in (data.get("hist") or {}).items():
            for k, c in h.items():
                if int(c) < 0 or int(k) < 0:
                    raise ValueError("negative length or count")
                out.hist.setdefault(str(v), Counter())[int(k)] += int(c)
        for v, c in (data.get("cut") or {}).items():
            out.cut[str(v)] = int(c)
        return out


def quantile(hist: Mapping[int, int], q: float) -> int:
    """The smallest length with at least ``q`` of the answers at or below it."""
    n = sum(hist.values())
    if not n:
        raise ValueError("no answers")
    need = math.ceil(q * n)
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= need:
            return k
    return max(hist)


def choose(hist: Mapping[int, int], cut: int, ceiling: int) -> int | None:
    """``max_tokens`` for answers like these, or ``None`` if too few were seen."""
    n = sum(hist.values())
    if n < MIN_ANSWERS:
        return None
    if cut > (1.0 - QUANTILE) * n:
        return ceiling  # the tail is hidden behind the old cap: nothing is known above it
    want = quantile(hist, QUANTILE) * (MARGIN if n >= SMALL else SMALL_MARGIN)
    return max(FLOOR, min(ceiling, STEP * math.ceil(want / STEP)))


def resolve(lengths: Lengths, variants: Iterable[str], ceiling: int) -> dict[str, int] | None:
    """Per variant: its own figure if it has enough answers, else the pooled one;
    ``None`` when even the pooled answers are too few."""
    pooled_hist, pooled_cut = lengths.pooled()
    pooled = choose(pooled_hist, pooled_cut, ceiling)
    out = {}
    for v in variants:
        own = choose(lengths.hist.get(v, Counter()), lengths.cut[v], ceiling)
        pick = own if own is not None else pooled
        if pick is None:
            return None
        out[v] = pick
    return out
