"""The ledger bills Anthropic's cache writes and reads, and OpenAI's bills do not move."""

from __future__ import annotations

from dynogen.execute.ledger import Ledger
from dynogen.execute.prices import PICO, PriceTable


def test_an_openai_bill_is_pinned_to_the_pico_dollar() -> None:
    price = PriceTable.load().lookup("gpt-4o-mini")  # 0.15 in, 0.075 cached, 0.60 out
    ledger = Ledger(price)
    usage = {"prompt_tokens": 1_800, "completion_tokens": 250,
             "prompt_tokens_details": {"cached_tokens": 1_024}}
    ledger.settle(ledger.reserve(2_000, 640), usage)
    # 776 * 150,000 + 1,024 * 75,000 + 250 * 600,000 pico-dollars
    assert ledger.spent_pico == 776 * 150_000 + 1_024 * 75_000 + 250 * 600_000 == 343_200_000
    batch = Ledger(price, batch=True)
    batch.settle(batch.reserve(2_000, 640), usage)
    assert batch.spent_pico == 1_800 * 75_000 + 250 * 300_000
    t = ledger.totals()["tokens"]
    assert t == {"prompt": 1_800, "completion": 250, "cached": 1_024}  # no cache_write key


def test_cache_writes_and_reads_are_billed_at_their_prices() -> None:
    price = PriceTable.load().lookup("claude-sonnet-4-5")  # 3 in, 0.30 read, 3.75 write, 15 out
    ledger = Ledger(price)
    # Anthropic: input 300 uncached, 1,200 written, 0 read; mapped to OpenAI's meaning.
    usage = {"prompt_tokens": 1_500, "completion_tokens": 100,
             "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 1_200}}
    cost = ledger.settle(ledger.reserve(4_000, 640), usage)
    assert round(cost * PICO) == 300 * 3_000_000 + 1_200 * 3_750_000 + 100 * 15_000_000
    read = {"prompt_tokens": 1_500, "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 1_200, "cache_write_tokens": 0}}
    cost2 = ledger.settle(ledger.reserve(4_000, 640), read)
    assert round(cost2 * PICO) == 300 * 3_000_000 + 1_200 * 300_000 + 100 * 15_000_000
    t = ledger.totals()["tokens"]
    assert (t["prompt"], t["cached"], t["cache_write"]) == (3_000, 1_200, 1_200)
    assert ledger.totals()["requests"]["over_reservation"] == 0


def test_impossible_cache_counts_are_usage_invalid() -> None:
    ledger = Ledger(PriceTable.load().lookup("claude-sonnet-4-5"))
    r = ledger.reserve(100, 10)
    bad = {"prompt_tokens": 100, "completion_tokens": 5,
           "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 60}}
    assert ledger.settle(r, bad) == r.usd  # charged its whole reservation
    assert ledger.totals()["requests"]["usage_invalid"] == 1


def test_a_batch_share_covers_its_cache_writes() -> None:
    price = PriceTable.load().lookup("claude-sonnet-4-5")
    ledger = Ledger(price, budget_usd=1.0, batch=True)
    group = ledger.reserve(10_000, 1_000)
    share = ledger.split(group, 2_000, 100, cache_write_tokens=1_500)
    usage = {"prompt_tokens": 2_000, "completion_tokens": 100,
             "prompt_tokens_details": {"cache_write_tokens": 1_500}}
    ledger.settle(share, usage)
    assert ledger.totals()["requests"]["over_reservation"] == 0
    ledger.release(group)
    assert ledger.spent_pico == 500 * 1_500_000 + 1_500 * 1_875_000 + 100 * 7_500_000
