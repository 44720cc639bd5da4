"""Where a batch run's answers go, and where ``complete`` finds them.

An answer read from an output file is billed (its share of the batch's
reservation, settled from its ``usage`` at batch prices), written to
``spend.jsonl`` at once (so a resumed run's budget counts it), and put in the
request cache, which is what makes a restart collect nothing twice and a
second run of the same requests free. ``complete`` then takes it from there,
with the tokens and dollars it cost, so the unit journal counts them as an
online run would. An answer the cache refuses (cut at ``max_tokens``) is kept
for the run instead, so a second request with the same body is not paid again.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from dynogen.errors import DynogenError
from dynogen.execute.base import Accounting, usage_counts
from dynogen.execute.batch_files import ResultLine, key_hash
from dynogen.execute.client import Completion, parse_answer
from dynogen.execute.ledger import Ledger, Reservation
from dynogen.execute.transport import RawResponse
from dynogen.store.cache import RequestCache
from dynogen.store.journal import JsonlWriter

__all__ = ["Answers", "Meter"]


class Meter(Protocol):
    def request_done(self, tokens: int, cost_usd: float) -> None: ...


class Answers:
    """The cache, the ledger and the spend journal, as a batch run feeds and reads them."""

    def __init__(self, cache: RequestCache, ledger: Ledger, spend: JsonlWriter | None,
                 meter: Meter | None, stage: str, session: Counter[str]) -> None:
        self.cache = cache
        self.ledger = ledger
        self.spend = spend
        self.meter = meter
        self.stage = stage
        self.session = session
        self._landed: dict[int, tuple[int, int, int, float]] = {}
        self._uncached: dict[int, bytes] = {}

    def has(self, key: bytes, h: int) -> bool:
        return h in self._uncached or self.cache.get(key) is not None

    def land(self, res: ResultLine, reservation: Reservation, endpoint: str) -> tuple[
            str | None, float]:
        """Bill and keep one answer: (the reason it is unusable or ``None``, dollars billed)."""
        assert res.body is not None
        key, h = res.key, key_hash(res.key)
        if self.cache.get(key) is not None:
            self.session["batch_already_collected"] += 1  # by a session a kill ended
            return None, 0.0
        counts = usage_counts(res.usage)
        pin, pout, cached = counts if counts is not None else (0, 0, 0)
        details = (res.usage or {}).get("prompt_tokens_details")
        written = details.get("cache_write_tokens") if isinstance(details, dict) else 0
        share = self.ledger.split(reservation, pin, pout,
                                  written if isinstance(written, int) and written > 0 else 0)
        cost = self.ledger.settle(share, res.usage, stage=self.stage)
        if self.spend is not None:
            self.spend.write({"usd": cost, "in": pin, "out": pout, "cached": cached, "batch": 1}
                             if counts is not None else {"usd": cost, "unconfirmed": True})
            self.spend.flush()
        if self.meter is not None:
            self.meter.request_done(pin + pout, cost)
        try:
            comp = parse_answer(RawResponse(200, {}, res.body), endpoint)
        except DynogenError as e:
            return f"invalid_{getattr(e, 'kind', 'answer')}", cost
        self._landed[h] = (pin, pout, cached, cost)
        if comp.finish_reason in ("stop", None):
            self.cache.put(key, res.body)
        else:
            self._uncached[h] = res.body
        return None, cost

    def take(self, key: bytes, h: int, endpoint: str, acct: Accounting) -> Completion | None:
        """The answer to ``key`` with its cost added to ``acct``, or ``None`` if there is none
        yet. Its tokens and dollars are counted once; a second taker reads it free."""
        body = self._uncached.get(h)
        if body is None:
            body = self.cache.get(key)
        if body is None:
            return None
        landed = self._landed.pop(h, None)
        if landed is None:
            self.session["cache_hits"] += 1
        else:
            pin, pout, cached, cost = landed
            acct.requests += 1
            acct.tokens_in += pin
            acct.tokens_out += pout
            acct.tokens_cached += cached
            acct.cost += cost
        acct.responses += 1
        return parse_answer(RawResponse(200, {}, body), endpoint)
