"""The running account of a run: what was spent, what is promised, what is left.

Pure bookkeeping, fed by the engine: no I/O, no clock, no locks (the engine is
one asyncio thread). Before sending a request the engine ``reserve``s its worst
case (prompt tokens plus all of ``max_tokens``, no cache discount); when the
answer comes it ``settle``s with the server's ``usage``; when the request was
never sent or failed unbilled (429, connection refused) it ``release``s.

Guarantee: ``spent + reserved <= budget`` at every instant, as long as servers
report no more tokens than were reserved (``usage.prompt_tokens`` at most the
reserved prompt count and ``completion_tokens`` at most ``max_tokens``). Money
is held in integer pico-dollars, so the sums are exact, not float-rounded.

Not guaranteed: a server that reports more than was reserved (a non-OpenAI
tokenizer counting the prompt differently, say) is billed what it reports —
the ledger records what the provider will charge, it does not clamp — and
``over_reservation`` counts those requests. ``spent`` can then pass the budget
by that excess; every later ``reserve`` refuses.

Usage is read in OpenAI's shape: ``prompt_tokens`` counts every prompt token,
cached ones included, ``prompt_tokens_details.cached_tokens`` those read from a
prompt cache and ``prompt_tokens_details.cache_write_tokens`` those written to
it (Anthropic's ``cache_creation_input_tokens``, billed at ``Price.cache_write``;
OpenRouter reports the same field). An answer without writes is billed exactly
as before writes were counted.

An answer that arrived without ``usage`` (or with one that does not parse) is
charged its full reservation, a conservative guess, and counted as
``usage_missing`` / ``usage_invalid``; its tokens are not added to token totals.

Dispatch policy the engine should follow to use the budget well: requests are
tried in order; when ``can_reserve`` is false and requests are in flight, wait
for them to settle (they usually cost less than reserved) and try again; when
it is false with nothing in flight, stop — ``BudgetExceeded`` is then final.
Smaller requests later in the queue are not tried out of order. Under this
policy a run whose requests each cost at most 10% of the budget in the worst
case ends having spent at least 90% of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from dynogen.errors import BudgetExceeded, ConfigError
from dynogen.execute.prices import PICO, Price

__all__ = ["Ledger", "Reservation"]

_OPEN, _SETTLED, _RELEASED = 0, 1, 2


class Reservation:
    """Money set aside for one request until it is settled or released."""

    __slots__ = ("amount", "prompt_tokens", "max_tokens", "_state")

    def __init__(self, amount: int, prompt_tokens: int, max_tokens: int) -> None:
        self.amount = amount  # pico-dollars
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self._state = _OPEN

    @property
    def usd(self) -> float:
        return self.amount / PICO

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    def __repr__(self) -> str:
        state = ("open", "settled", "released")[self._state]
        return (
            f"Reservation(${self.usd:.6f}, prompt={self.prompt_tokens}, "
            f"max={self.max_tokens}, {state})"
        )


class _Bucket:
    """Tokens and money for one stage or one variant."""

    __slots__ = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                 "cache_write_tokens", "pico")

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.pico = 0

    def add(self, prompt: int, completion: int, cached: int, pico: int, written: int = 0) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached
        self.cache_write_tokens += written
        self.pico += pico

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "usd": self.pico / PICO,
        }
        if self.cache_write_tokens:
            out["cache_write_tokens"] = self.cache_write_tokens
        return out


def _to_pico_floor(usd: float) -> int:
    return int(Decimal(repr(usd)).scaleb(12).to_integral_value(rounding=ROUND_FLOOR))


def _count(d: Mapping[str, Any], key: str) -> int | None:
    """A non-negative integer token count from a usage mapping, else ``None``."""
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return None
    return v


def _parse_usage(usage: Mapping[str, Any]) -> tuple[int, int, int, int] | None:
    """(prompt, completion, cached, written to the cache) from OpenAI-shaped usage."""
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    if (completion is None and "completion_tokens" not in usage and prompt is not None
            and _count(usage, "total_tokens") == prompt):
        completion = 0  # an embeddings answer: {"prompt_tokens": n, "total_tokens": n}
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = written = 0
    if isinstance(details, Mapping) and details.get("cached_tokens") is not None:
        c = _count(details, "cached_tokens")
        if c is None or c > prompt:
            return None
        cached = c
    if isinstance(details, Mapping) and details.get("cache_write_tokens") is not None:
        w = _count(details, "cache_write_tokens")
        if w is None or cached + w > prompt:
            return None
        written = w
    return prompt, completion, cached, written


class Ledger:
    """Spent, reserved and left of one run's budget.

    >>> from dynogen.execute.prices import PriceTable
    >>> ledger = Ledger(PriceTable.load().lookup("gpt-4o-mini"), budget_usd=1.0)
    >>> r = ledger.reserve(prompt_tokens=1000, max_tokens=500)
    >>> ledger.settle(r, {"prompt_tokens": 1000, "completion_tokens": 200})
    0.00027
    >>> round(ledger.spent, 8), ledger.reserved
    (0.00027, 0.0)
    """

    __slots__ = (
        "price",
        "batch",
        "_budget",
        "_spent",
        "_reserved",
        "_in_flight",
        "_total",
        "_stages",
        "_variants",
        "_settled",
        "_released",
        "_usage_missing",
        "_usage_invalid",
        "_over",
        "_refused",
    )

    def __init__(
        self, price: Price, budget_usd: float | None = None, *, batch: bool = False
    ) -> None:
        if budget_usd is not None and (not math.isfinite(budget_usd) or budget_usd <= 0):
            raise ConfigError(
                f"--budget-usd must be a positive number of dollars (got {budget_usd})"
            )
        self.price = price
        self.batch = batch
        # Round the budget down: the guarantee is against the user's number.
        self._budget = None if budget_usd is None else _to_pico_floor(budget_usd)
        self._spent = 0
        self._reserved = 0
        self._in_flight = 0
        self._total = _Bucket()
        self._stages: dict[str, _Bucket] = {}
        self._variants: dict[str, _Bucket] = {}
        self._settled = 0
        self._released = 0
        self._usage_missing = 0
        self._usage_invalid = 0
        self._over = 0
        self._refused = 0

    # -- reading --------------------------------------------------------------

    @property
    def budget(self) -> float | None:
        return None if self._budget is None else self._budget / PICO

    @property
    def spent(self) -> float:
        return self._spent / PICO

    @property
    def reserved(self) -> float:
        return self._reserved / PICO

    @property
    def remaining(self) -> float | None:
        """What new reservations may still take: budget - spent - reserved (``None``: no budget)."""
        if self._budget is None:
            return None
        return (self._budget - self._spent - self._reserved) / PICO

    @property
    def in_flight(self) -> int:
        """Reservations neither settled nor released."""
        return self._in_flight

    @property
    def spent_pico(self) -> int:
        return self._spent

    @property
    def reserved_pico(self) -> int:
        return self._reserved

    @property
    def budget_pico(self) -> int | None:
        return self._budget

    # -- the hot path ---------------------------------------------------------

    def worst_case_pico(self, prompt_tokens: int, max_tokens: int) -> int:
        return self.price.worst_case_pico(prompt_tokens, max_tokens, self.batch)

    def can_reserve(self, prompt_tokens: int, max_tokens: int) -> bool:
        if self._budget is None:
            return True
        need = self.price.worst_case_pico(prompt_tokens, max_tokens, self.batch)
        return self._spent + self._reserved + need <= self._budget

    def reserve(self, prompt_tokens: int, max_tokens: int, *, force: bool = False) -> Reservation:
        """Set aside the worst case of one request, or raise ``BudgetExceeded``.

        ``force`` never refuses: for money already committed at the server (a batch an
        earlier session submitted), which will be billed whatever the budget says.
        """
        if prompt_tokens < 0 or max_tokens < 0:
            raise ValueError(
                f"token counts must be >= 0 (prompt={prompt_tokens}, max={max_tokens})"
            )
        need = self.price.worst_case_pico(prompt_tokens, max_tokens, self.batch)
        if (not force and self._budget is not None
                and self._spent + self._reserved + need > self._budget):
            self._refused += 1
            raise BudgetExceeded(
                spent=self._spent / PICO,
                budget=self._budget / PICO,
                needed=need / PICO,
            )
        self._reserved += need
        self._in_flight += 1
        return Reservation(need, prompt_tokens, max_tokens)

    def split(self, r: Reservation, prompt_tokens: int, completion_tokens: int,
              cache_write_tokens: int = 0) -> Reservation:
        """Carve one answered request's share out of an open group reservation.

        A batch reserves the worst case of all its requests at once and is billed line
        by line as its output arrives: each line takes its cost (at most what ``r``
        still holds) into a reservation of its own, to ``settle``; the budget does not
        move. ``release`` the group when its output is read, freeing what was not used.
        """
        if r._state != _OPEN:
            raise ValueError(f"{r!r} is already closed")
        take = min(r.amount, self.price.cost_pico(prompt_tokens, completion_tokens, 0,
                                                  self.batch, cache_write_tokens))
        r.amount -= take
        self._in_flight += 1
        return Reservation(take, prompt_tokens, completion_tokens)

    def _close(self, r: Reservation, state: int) -> None:
        if r._state != _OPEN:
            # Settling twice would free money twice: a bug in the caller.
            raise ValueError(f"{r!r} is already closed")
        r._state = state
        self._reserved -= r.amount
        self._in_flight -= 1

    def settle(
        self,
        r: Reservation,
        usage: Mapping[str, Any] | None,
        *,
        stage: str = "tasks",
        variant: str | None = None,
    ) -> float:
        """Bill an answered request from its ``usage``; returns the dollars charged."""
        self._close(r, _SETTLED)
        self._settled += 1
        parsed = _parse_usage(usage) if isinstance(usage, Mapping) else None
        if parsed is None:
            if usage is None:
                self._usage_missing += 1
            else:
                self._usage_invalid += 1
            charged = r.amount
            prompt = completion = cached = written = 0
        else:
            prompt, completion, cached, written = parsed
            charged = self.price.cost_pico(prompt, completion, cached, self.batch, written)
            if charged > r.amount:
                self._over += 1
        self._spent += charged
        self._total.add(prompt, completion, cached, charged, written)
        bucket = self._stages.get(stage)
        if bucket is None:
            bucket = self._stages[stage] = _Bucket()
        bucket.add(prompt, completion, cached, charged, written)
        if variant is not None:
            vb = self._variants.get(variant)
            if vb is None:
                vb = self._variants[variant] = _Bucket()
            vb.add(prompt, completion, cached, charged, written)
        return charged / PICO

    def release(self, r: Reservation) -> None:
        """Give back a reservation for a request that was not sent or not billed."""
        self._close(r, _RELEASED)
        self._released += 1

    # -- the report -----------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        """JSON-safe summary for report.json."""
        left = None if self._budget is None else (self._budget - self._spent) / PICO
        return {
            "budget_usd": self.budget,
            "spent_usd": self.spent,
            "reserved_usd": self.reserved,
            "left_usd": left,
            "batch": self.batch,
            "price": self.price.to_dict(),
            "requests": {
                "settled": self._settled,
                "released": self._released,
                "in_flight": self._in_flight,
                "refused": self._refused,
                "usage_missing": self._usage_missing,
                "usage_invalid": self._usage_invalid,
                "over_reservation": self._over,
            },
            "tokens": {
                "prompt": self._total.prompt_tokens,
                "completion": self._total.completion_tokens,
                "cached": self._total.cached_tokens,
                **({"cache_write": self._total.cache_write_tokens}
                   if self._total.cache_write_tokens else {}),
            },
            "by_stage": {k: b.to_dict() for k, b in sorted(self._stages.items())},
            "by_variant": {k: b.to_dict() for k, b in sorted(self._variants.items())},
        }
