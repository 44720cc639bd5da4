"""The ledger: reservations, settlement, the hard budget and what goes into report.json."""

from __future__ import annotations

import json
import math
import random
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dynogen.errors import BudgetExceeded, ConfigError
from dynogen.execute.ledger import Ledger, Reservation
from dynogen.execute.prices import Price, PriceTable

TABLE = PriceTable.load()
MINI = TABLE.lookup("gpt-4o-mini")  # 0.15 in, 0.075 cached, 0.60 out, batch 0.075 / 0.30


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, object]:
    u: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def test_reserve_settle_release_move_money() -> None:
    led = Ledger(MINI, budget_usd=1.0)
    r = led.reserve(1_000, 500)
    assert r.amount == MINI.worst_case_pico(1_000, 500) and r.usd == pytest.approx(0.00045)
    assert led.reserved == pytest.approx(0.00045) and led.in_flight == 1
    assert led.remaining == pytest.approx(1.0 - 0.00045)
    charged = led.settle(r, usage(1_000, 200, cached=400))
    # 600 * 0.15 + 400 * 0.075 + 200 * 0.60, per 1M
    assert charged == pytest.approx(0.00024)
    assert led.spent == pytest.approx(0.00024) and led.reserved == 0 and led.in_flight == 0
    r2 = led.reserve(10, 10)
    led.release(r2)
    assert led.reserved == 0 and led.spent == pytest.approx(0.00024)


def test_batch_ledger_uses_batch_prices() -> None:
    led = Ledger(MINI, budget_usd=1.0, batch=True)
    r = led.reserve(1_000, 500)
    assert r.amount == MINI.worst_case_pico(1_000, 500, batch=True)
    assert led.settle(r, usage(1_000, 500)) == pytest.approx(0.000225)


def test_closing_twice_is_a_bug() -> None:
    led = Ledger(MINI, budget_usd=1.0)
    r = led.reserve(1, 1)
    led.settle(r, usage(1, 1))
    with pytest.raises(ValueError, match="already closed"):
        led.settle(r, usage(1, 1))
    with pytest.raises(ValueError, match="already closed"):
        led.release(r)
    assert led.reserved_pico == 0
    with pytest.raises(ValueError):
        led.reserve(-1, 10)


def test_budget_is_hard() -> None:
    price = Price(input=1.0, cached_input=1.0, output=1.0, batch_input=1.0, batch_output=1.0)
    led = Ledger(price, budget_usd=0.001)  # 1,000 tokens' worth
    r = led.reserve(600, 0)
    assert led.can_reserve(400, 0) and not led.can_reserve(401, 0)
    with pytest.raises(BudgetExceeded) as ei:
        led.reserve(401, 0)
    assert ei.value.needed == pytest.approx(0.000401) and ei.value.budget == pytest.approx(0.001)
    assert "--budget-usd" in str(ei.value)
    led.reserve(400, 0)
    assert led.remaining == 0
    led.release(r)
    assert led.can_reserve(600, 0)
    assert led.totals()["requests"]["refused"] == 1


def test_budget_as_given_is_never_crossed_by_float_rounding() -> None:
    price = Price(input=0.1, cached_input=0.1, output=0.2, batch_input=0.1, batch_output=0.2)
    led = Ledger(price, budget_usd=0.0003)  # 0.1 + 0.2 is not 0.3 in floats; here it is
    n = 0
    while led.can_reserve(1, 1):
        led.settle(led.reserve(1, 1), usage(1, 1))
        n += 1
    assert n == 1_000
    assert led.spent_pico == led.budget_pico == 300_000_000


def test_no_budget_never_refuses() -> None:
    led = Ledger(MINI)
    led.settle(led.reserve(10**7, 10**6), usage(10**7, 10**6))
    assert led.remaining is None and led.budget is None and led.can_reserve(10**9, 10**9)
    assert led.totals()["left_usd"] is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_budget(bad: float) -> None:
    with pytest.raises(ConfigError, match="budget"):
        Ledger(MINI, budget_usd=bad)


def test_missing_usage_is_charged_its_reservation() -> None:
    led = Ledger(MINI, budget_usd=1.0)
    r = led.reserve(1_000, 500)
    assert led.settle(r, None) == pytest.approx(r.usd)
    t = led.totals()
    assert t["requests"]["usage_missing"] == 1 and t["spent_usd"] == pytest.approx(r.usd)
    assert t["tokens"] == {"prompt": 0, "completion": 0, "cached": 0}


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"prompt_tokens": 10},
        {"prompt_tokens": "10", "completion_tokens": 5},
        {"prompt_tokens": -1, "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": True},
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 11},
        },
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": "x"},
        },
    ],
)
def test_invalid_usage_is_counted_and_charged_conservatively(bad: dict[str, object]) -> None:
    led = Ledger(MINI, budget_usd=1.0)
    r = led.reserve(100, 100)
    assert led.settle(r, bad) == pytest.approx(r.usd)
    assert led.totals()["requests"]["usage_invalid"] == 1


def test_null_cached_details_are_accepted() -> None:
    led = Ledger(MINI, budget_usd=1.0)
    u = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": None},
    }
    assert led.settle(led.reserve(100, 10), u) == pytest.approx(MINI.cost(100, 10))
    u2 = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": None}
    assert led.settle(led.reserve(100, 10), u2) == pytest.approx(MINI.cost(100, 10))


def test_over_reporting_server_is_billed_as_reported() -> None:
    led = Ledger(MINI, budget_usd=MINI.worst_case(1_000, 100))  # room for exactly one request
    r = led.reserve(1_000, 100)
    charged = led.settle(r, usage(1_200, 150))
    assert charged == pytest.approx(MINI.cost(1_200, 150)) and charged > r.usd
    assert led.spent > led.budget  # what the provider will charge; documented, not clamped
    assert led.totals()["requests"]["over_reservation"] == 1
    assert not led.can_reserve(0, 0)
    with pytest.raises(BudgetExceeded):
        led.reserve(1, 1)


def test_totals_by_stage_and_variant_are_json_safe_and_add_up() -> None:
    led = Ledger(MINI, budget_usd=2.0)
    led.settle(led.reserve(100, 50), usage(100, 40, cached=0), stage="tasks", variant="description")
    led.settle(
        led.reserve(200, 50), usage(200, 50, cached=100), stage="tasks", variant="no_description"
    )
    led.settle(led.reserve(300, 50), usage(300, 10), stage="retry")
    led.release(led.reserve(5, 5))
    t = json.loads(json.dumps(led.totals()))
    assert (
        t["requests"]["settled"] == 3
        and t["requests"]["released"] == 1
        and t["requests"]["in_flight"] == 0
    )
    assert t["tokens"] == {"prompt": 600, "completion": 100, "cached": 100}
    assert set(t["by_stage"]) == {"tasks", "retry"} and t["by_stage"]["tasks"]["requests"] == 2
    assert set(t["by_variant"]) == {"description", "no_description"}
    assert sum(b["usd"] for b in t["by_stage"].values()) == pytest.approx(t["spent_usd"])
    assert t["left_usd"] == pytest.approx(2.0 - t["spent_usd"])
    assert t["price"]["source"].startswith("https://") and t["budget_usd"] == 2.0


# -- invariant: spent + reserved never exceeds the budget -------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Random reserve/settle/release with honest servers (usage <= reservation)."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger: Ledger | None = None
        self.open: list[Reservation] = []

    @precondition(lambda self: self.ledger is None)
    @rule(
        budget=st.floats(1e-4, 5.0),
        model=st.sampled_from(["gpt-4o-mini", "gpt-3.5-turbo", "gpt-4.1", "gpt-5-nano", "o4-mini"]),
        batch=st.booleans(),
    )
    def start(self, budget: float, model: str, batch: bool) -> None:
        self.ledger = Ledger(TABLE.lookup(model), budget_usd=budget, batch=batch)

    @precondition(lambda self: self.ledger is not None)
    @rule(prompt=st.integers(0, 50_000), max_tokens=st.integers(0, 8_000))
    def reserve(self, prompt: int, max_tokens: int) -> None:
        assert self.ledger is not None
        fits = self.ledger.can_reserve(prompt, max_tokens)
        try:
            self.open.append(self.ledger.reserve(prompt, max_tokens))
            assert fits
        except BudgetExceeded:
            assert not fits

    @precondition(lambda self: self.ledger is not None and self.open)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        assert self.ledger is not None
        r = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        if data.draw(st.booleans()):
            p = data.draw(st.integers(0, r.prompt_tokens))
            u = usage(p, data.draw(st.integers(0, r.max_tokens)), data.draw(st.integers(0, p)))
        else:
            u = None
        charged = self.ledger.settle(r, u, variant=data.draw(st.sampled_from([None, "a", "b"])))
        assert 0 <= charged <= r.usd

    @precondition(lambda self: self.ledger is not None and self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        assert self.ledger is not None
        self.ledger.release(self.open.pop(data.draw(st.integers(0, len(self.open) - 1))))

    @invariant()
    def within_budget(self) -> None:
        if self.ledger is None:
            return
        led = self.ledger
        assert led.budget_pico is not None
        assert led.spent_pico + led.reserved_pico <= led.budget_pico
        assert led.reserved_pico == sum(r.amount for r in self.open)
        assert led.in_flight == len(self.open)
        assert led.remaining is not None and led.remaining >= 0


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- 100 randomized budget runs --------------------------------------------------------


def _run(seed: int) -> tuple[Ledger, float]:
    """A dispatch loop the way the engine is meant to drive the ledger.

    Requests come in order, forever (work always remains). Up to ``k`` are in
    flight; when the next one does not fit, the oldest in-flight one is settled
    and the same request is tried again; when it does not fit with nothing in
    flight, the run stops. Each request's worst case is at most 10% of the budget.
    """
    rng = random.Random(seed)
    price = TABLE.lookup(rng.choice(TABLE.models()))
    batch = rng.random() < 0.3
    max_prompt, max_out = rng.randint(100, 4_000), rng.randint(50, 2_000)
    biggest = price.worst_case(max_prompt, max_out, batch)
    budget = biggest * rng.uniform(10.0, 300.0)
    led = Ledger(price, budget_usd=budget, batch=batch)
    k = rng.randint(1, 32)
    flying: deque[Reservation] = deque()
    pending: tuple[int, int] | None = None
    while True:
        if pending is None:
            pending = (rng.randint(1, max_prompt), rng.randint(1, max_out))
        if led.can_reserve(*pending) and len(flying) < k:
            flying.append(led.reserve(*pending))
            pending = None
        elif flying:
            r = flying.popleft()
            # the answer: between 50% and 100% of what was reserved
            out = rng.randint(math.ceil(r.max_tokens / 2), r.max_tokens)
            cached = rng.randint(0, r.prompt_tokens) if price.supports_prompt_cache else 0
            led.settle(r, usage(r.prompt_tokens, out, cached))
        else:
            with pytest.raises(BudgetExceeded):
                led.reserve(*pending)
            break
        assert led.spent_pico + led.reserved_pico <= led.budget_pico  # type: ignore[operator]
    return led, budget


@pytest.mark.parametrize("block", range(4))
def test_randomized_runs_spend_at_least_90_percent_never_more_than_budget(block: int) -> None:
    for seed in range(block * 25, block * 25 + 25):
        led, budget = _run(seed)
        assert led.spent <= budget, seed
        assert led.spent >= 0.9 * budget, (seed, led.spent / budget)
        assert led.in_flight == 0 and led.reserved == 0
