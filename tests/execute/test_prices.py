"""Price table, lookup rules, user overrides and cost arithmetic."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynogen.errors import ConfigError, UnknownPriceError, UserError
from dynogen.execute.prices import PICO, Price, PriceTable, price_for, snapshot_base

REQUIRED = [
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0613",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0125",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5-mini",
    "gpt-5-nano",
    "o4-mini",
]

_TABLE = PriceTable.load()


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return _TABLE


# -- the built-in table ------------------------------------------------------------


@pytest.mark.parametrize("model", REQUIRED)
def test_builtin_rows_are_sourced_and_dated(table: PriceTable, model: str) -> None:
    p = table.lookup(model)
    assert p.source.startswith("https://developers.openai.com/api/docs/")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.date)
    assert 0 < p.input < p.output
    assert p.batch_input <= p.input and p.batch_output <= p.output
    assert p.cached_input <= p.input


def test_encoding_and_cache_support_by_family(table: PriceTable) -> None:
    for name in table.models():
        p = table.lookup(name)
        if name.startswith(("gpt-3.5", "gpt-4-")) or name == "gpt-4":
            assert p.encoding == "cl100k_base", name
            assert not p.supports_prompt_cache, name
        else:
            assert p.encoding == "o200k_base", name
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-nano", "gpt-5-mini", "o4-mini"):
        assert table.lookup(name).supports_prompt_cache, name
    # The first gpt-4o snapshot had no cache discount and a higher price.
    assert not table.lookup("gpt-4o-2024-05-13").supports_prompt_cache


def test_legacy_gpt35_snapshots_differ(table: PriceTable) -> None:
    assert (
        table.lookup("gpt-3.5-turbo-0613").input,
        table.lookup("gpt-3.5-turbo-0613").output,
    ) == (1.5, 2.0)
    assert (
        table.lookup("gpt-3.5-turbo-1106").input,
        table.lookup("gpt-3.5-turbo-1106").output,
    ) == (1.0, 2.0)
    assert (
        table.lookup("gpt-3.5-turbo-0125").input,
        table.lookup("gpt-3.5-turbo-0125").output,
    ) == (0.5, 1.5)


# -- lookup ------------------------------------------------------------------------


def test_lookup_exact_then_snapshot_prefix(table: PriceTable) -> None:
    assert table.lookup("gpt-4o-mini-2024-07-18") == table.lookup("gpt-4o-mini")
    assert table.lookup("gpt-4.1-nano-2025-04-14") == table.lookup("gpt-4.1-nano")
    assert table.lookup("gpt-4-0613") == table.lookup("gpt-4")
    # An exact row beats the prefix rule.
    assert table.lookup("gpt-4o-2024-05-13").input == 5.0
    assert table.lookup("gpt-4o-2024-08-06").input == table.lookup("gpt-4o").input == 2.5


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-mini-foo",
        "gpt-4o-min",
        "openai/gpt-4o-mini",
        "GPT-4O-MINI",
        "gpt-4o-mini-2024",
        "gpt-4o-mini-2024-13-01",
        "llama-3",
    ],
)
def test_no_partial_name_sniffing(table: PriceTable, model: str) -> None:
    assert table.find(model) is None
    assert model not in table
    with pytest.raises(UnknownPriceError):
        table.lookup(model)


def test_snapshot_base() -> None:
    assert snapshot_base("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert snapshot_base("gpt-3.5-turbo-0125") == "gpt-3.5-turbo"
    assert snapshot_base("gpt-4o-mini") is None
    assert snapshot_base("gpt-4-1106-preview") is None
    assert snapshot_base("2024-07-18") is None


# -- price_for -----------------------------------------------------------------------


def test_unknown_model_error_is_one_actionable_line(table: PriceTable) -> None:
    with pytest.raises(UnknownPriceError) as ei:
        price_for("my-local-llama", table)
    assert isinstance(ei.value, UserError)
    assert str(ei.value) == (
        "no price for model 'my-local-llama': pass --price-in and --price-out (dollars per "
        "million tokens), add it to a prices file (--prices FILE), or --free for a local server"
    )


def test_free_is_explicit_zero(table: PriceTable) -> None:
    p = price_for("whatever-local", table, free=True)
    assert p.is_free and p.cost(10**6, 10**6) == 0.0 and p.worst_case(10**6, 10**6) == 0.0
    assert p.encoding == "o200k_base"
    # A known model keeps its encoding, for reservations.
    assert price_for("gpt-3.5-turbo", table, free=True).encoding == "cl100k_base"
    assert not table.lookup("gpt-4o-mini").is_free


def test_price_flags_override_table(table: PriceTable) -> None:
    p = price_for("my-model", table, price_in=1.0, price_out=3.0)
    assert p.cost(1_000_000, 1_000_000) == pytest.approx(4.0)
    # No cache discount is assumed for a hand-given price; Batch is half unless given.
    assert p.cost(1_000_000, 0, cached_tokens=500_000) == pytest.approx(1.0)
    assert p.cost(1_000_000, 1_000_000, batch=True) == pytest.approx(2.0)
    given = price_for("my-model", table, price_in=1.0, price_out=3.0, batch_price_in=0.8,
                      batch_price_out=2.0)
    assert given.cost(1_000_000, 1_000_000, batch=True) == pytest.approx(2.8)
    assert price_for("gpt-4o-mini", table, price_in=9.0, price_out=9.0).input == 9.0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"price_in": 1.0}, "both"),
        ({"price_out": 1.0}, "both"),
        ({"price_in": -1.0, "price_out": 1.0}, "--price-in"),
        ({"price_in": 1.0, "price_out": float("nan")}, "--price-out"),
        ({"price_in": 1.0, "price_out": 1.0, "free": True}, "--free"),
    ],
)
def test_bad_price_flags(table: PriceTable, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        price_for("gpt-4o-mini", table, **kwargs)  # type: ignore[arg-type]


# -- user files and overrides --------------------------------------------------------------


def test_toml_file_changes_a_field_and_adds_a_model(tmp_path) -> None:
    f = tmp_path / "prices.toml"
    f.write_text(
        '[models."gpt-4o-mini"]\ninput = 0.10\n\n'
        '[models."my-finetune"]\ninput = 0.30\noutput = 1.20\nencoding = "cl100k_base"\n'
    )
    t = PriceTable.load(f)
    p = t.lookup("gpt-4o-mini")
    assert p.input == 0.10 and p.output == 0.60 and p.cached_input == 0.075
    assert p.source == str(f)
    new = t.lookup("my-finetune-2025-01-01")
    assert (new.input, new.output, new.encoding) == (0.30, 1.20, "cl100k_base")
    # Nothing given for cache or Batch: billed at the standard price (upper bound).
    assert new.cached_input == new.batch_input == 0.30 and new.batch_output == 1.20
    assert not new.supports_prompt_cache


def test_json_file_and_overrides_apply_in_order(tmp_path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"models": {"m": {"input": 1, "output": 2, "source": "mine"}}}))
    t = PriceTable.load(f, overrides={"m": {"output": 5}})
    assert (t.lookup("m").input, t.lookup("m").output) == (1, 5)
    # A bare mapping (no "models" key) is accepted too.
    t2 = PriceTable.load(overrides={"m2": {"input": 0.5, "output": 0.5}})
    assert t2.lookup("m2").output == 0.5
    assert t.lookup("gpt-4.1").input == 2.0  # the built-in rows stay


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("a.toml", "[models.x\ninput=1", "not valid TOML"),
        ("a.json", "{not json", "not valid JSON"),
        ("a.toml", '[models."x"]\ninput = 1.0\n', "needs output"),
        ("a.toml", '[models."x"]\ninput = 1.0\noutput = 2.0\ninptu = 3\n', "unknown field"),
        ("a.toml", '[models."x"]\ninput = -1.0\noutput = 2.0\n', "non-negative"),
        (
            "a.toml",
            '[models."x"]\ninput = 1.0\noutput = 2.0\nencoding = "p50k"\n',
            "unknown encoding",
        ),
        ("a.toml", "models = 3\n", "table"),
    ],
)
def test_bad_user_files_are_config_errors(tmp_path, name: str, text: str, needle: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        PriceTable.load(f)


def test_missing_user_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        PriceTable.load(tmp_path / "nope.toml")


# -- cost arithmetic -------------------------------------------------------------------


def test_cost_against_hand_computed_numbers(table: PriceTable) -> None:
    mini = table.lookup("gpt-4o-mini")
    assert (mini.input, mini.cached_input, mini.output, mini.batch_input, mini.batch_output) == (
        0.15,
        0.075,
        0.60,
        0.075,
        0.30,
    )
    # 7,000 uncached * 0.15 + 3,000 cached * 0.075 + 2,000 out * 0.60, per 1M
    assert mini.cost(10_000, 2_000, cached_tokens=3_000) == pytest.approx(0.002475, abs=1e-15)
    assert mini.cost(10_000, 2_000) == pytest.approx(0.0027, abs=1e-15)
    # Batch: 10,000 * 0.075 + 2,000 * 0.30; the cache discount is not stacked on it.
    assert mini.cost(10_000, 2_000, cached_tokens=3_000, batch=True) == pytest.approx(
        0.00135, abs=1e-15
    )

    turbo = table.lookup("gpt-3.5-turbo")
    assert (turbo.input, turbo.output) == (0.50, 1.50)
    # No prompt cache on gpt-3.5: cached tokens are billed at the full price.
    assert turbo.cost(10_000, 2_000, cached_tokens=5_000) == pytest.approx(0.008, abs=1e-15)

    g41 = table.lookup("gpt-4.1")
    assert (g41.input, g41.output) == (2.0, 8.0)
    assert g41.worst_case(1_000, 640) == pytest.approx(0.00712, abs=1e-15)
    assert g41.worst_case(1_000, 640, batch=True) == pytest.approx(0.00356, abs=1e-15)

    nano = table.lookup("gpt-5-nano")
    assert nano.cost_pico(1, 0, cached_tokens=1) == 5_000  # $0.005/1M = 5,000 pico-dollars/token


def test_cached_tokens_beyond_prompt_are_clamped(table: PriceTable) -> None:
    mini = table.lookup("gpt-4o-mini")
    assert mini.cost(100, 0, cached_tokens=500) == mini.cost(100, 0, cached_tokens=100)


def test_prices_round_up_to_whole_pico_dollars() -> None:
    p = Price(1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3)
    assert p.cost_pico(3, 0) >= PICO // 1_000_000  # never under-bills 3 tokens at $1/3 per 1M
    with pytest.raises(ConfigError):
        Price(-0.1, 0, 0, 0, 0)


@given(
    prompt=st.integers(0, 200_000),
    completion=st.integers(0, 100_000),
    extra=st.integers(0, 100_000),
    cached=st.integers(0, 300_000),
    batch=st.booleans(),
    model=st.sampled_from(REQUIRED),
)
def test_cost_never_exceeds_worst_case(
    prompt: int, completion: int, extra: int, cached: int, batch: bool, model: str
) -> None:
    p = _TABLE.lookup(model)
    max_tokens = completion + extra
    assert p.cost_pico(prompt, completion, cached, batch) <= p.worst_case_pico(
        prompt, max_tokens, batch
    )
    assert (
        p.cost(prompt, completion, cached, batch)
        == p.cost_pico(prompt, completion, cached, batch) / PICO
    )
