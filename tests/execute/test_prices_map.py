"""Prices for any model: LiteLLM's vendored map under the hand-checked table, the order
of the layers, provider keys, where a price came from, its age, cache-write billing,
embeddings, and the script that refreshes the map."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dynogen.cli.main import app
from dynogen.commands.estimate import estimate, format_estimate
from dynogen.compose import open_stack, resolve_price
from dynogen.config import Config
from dynogen.errors import ConfigError, UnknownPriceError, UserError
from dynogen.execute.price_map import PriceMap
from dynogen.execute.prices import PICO, PRICE_MAX_AGE_DAYS, Price, PriceTable, price_for
from dynogen.selection.embed import APIEmbedder, EmbeddingStore
from dynogen.testing import FakeOpenAI, serve
from tests.helpers import REPO

ROOT = REPO
SCRIPT = ROOT / "scripts" / "refresh_prices.py"
VENDORED = PriceMap.load()

# A tiny LiteLLM file, in LiteLLM's own units (dollars per token).
TINY = {
    "sample_spec": {"mode": "one of: chat, embedding", "input_cost_per_token": 0.0},
    "claude-x": {"litellm_provider": "anthropic", "mode": "chat",
                 "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                 "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
                 "input_cost_per_token_batches": 1.5e-06, "output_cost_per_token_batches": 7.5e-06,
                 "cache_creation_input_token_cost_batches": 1.875e-06, "max_tokens": 8192},
    "bedrock/claude-x": {"litellm_provider": "bedrock", "mode": "chat",
                         "input_cost_per_token": 3.3e-06, "output_cost_per_token": 1.65e-05},
    "router-a/vendor/open-model": {"litellm_provider": "router-a", "mode": "chat",
                                   "input_cost_per_token": 2e-07, "output_cost_per_token": 6e-07},
    "router-b/open-model": {"litellm_provider": "router-b", "mode": "chat",
                            "input_cost_per_token": 1e-07, "output_cost_per_token": 4e-07,
                            "cache_creation_input_token_cost": 0.0},
    "embed-x": {"litellm_provider": "openai", "mode": "embedding",
                "input_cost_per_token": 2e-08},
    "gpt-4o-mini": {"litellm_provider": "openai", "mode": "chat",
                    "input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06},
    "picture-x": {"litellm_provider": "openai", "mode": "image_generation",
                  "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
    "no-price-x": {"litellm_provider": "someone", "mode": "chat"},
}


@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY through the real refresh script: the round trip every other test here trusts."""
    d = tmp_path_factory.mktemp("map")
    src = d / "model_prices_and_context_window.json"
    src.write_text(json.dumps(TINY))
    out = d / "model_prices.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--json", str(src), "--out", str(out),
                        "--date", "2026-01-02"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "5 models" not in r.stdout and "6 models" in r.stdout
    return out


# -- the refresh script ------------------------------------------------------------------


def test_refresh_round_trip_keeps_prices_exact_and_records_the_source(tiny_map: Path) -> None:
    data = json.loads(tiny_map.read_text())
    src = tiny_map.parent / "model_prices_and_context_window.json"
    assert data["_source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert data["_source"]["date"] == "2026-01-02"
    assert data["_source"]["file"] == src.name
    assert data["_source"]["left_out"] == {"no_token_price": 1, "not_a_model": 1,
                                           "other_mode": 1}
    assert sorted(data["models"]) == ["bedrock/claude-x", "claude-x", "embed-x", "gpt-4o-mini",
                                      "router-a/vendor/open-model", "router-b/open-model"]
    m = PriceMap.load(tiny_map)
    assert (m.version, m.date) == (src.name, "2026-01-02")
    row = m.row("claude-x")
    assert row is not None
    # $3e-06 per token is exactly $3 per 1M; no float noise on the way.
    assert (row["input"], row["output"], row["cached_input"], row["cache_write"],
            row["batch_input"], row["batch_output"], row["batch_cache_write"]) == (
        3, 15, 0.3, 3.75, 1.5, 7.5, 1.875)
    assert (row["mode"], row["provider"]) == ("chat", "anthropic")
    # An embedding model without an output price costs 0 per output token.
    assert m.row("embed-x") == {**m.row("embed-x"), "output": 0, "mode": "embedding"}  # type: ignore[dict-item]
    # LiteLLM's 0 for "no cache-write figure" is not kept as a free write.
    assert m.row("router-b/open-model")["cache_write"] is None  # type: ignore[index]
    # Run again on the same input: the same bytes (reviewable diffs).
    again = tiny_map.parent / "again.json"
    subprocess.run([sys.executable, str(SCRIPT), "--json", str(src), "--out", str(again),
                    "--date", "2026-01-02"], check=True, capture_output=True, timeout=60)
    assert again.read_bytes() == tiny_map.read_bytes()


def test_a_map_dynogen_cannot_read_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": 99, "columns": [], "models": {}}))
    with pytest.raises(ConfigError, match="refresh_prices"):
        PriceMap.load(bad)


# -- any model, with no flags ----------------------------------------------------------------


@pytest.mark.parametrize("model, provider", [("claude-sonnet-4-5", "anthropic"),
                                             ("gemini/gemini-2.5-flash", "gemini")])
def test_claude_and_gemini_price_with_no_flags_and_say_where_from(model: str,
                                                                  provider: str) -> None:
    price = resolve_price(Config(model=model))
    assert price.origin == "litellm" and price.key == model and price.provider == provider
    assert price.date == VENDORED.date and price.source == VENDORED.source
    assert 0 < price.input < price.output
    assert price.encoding == ""  # no tokenizer named: the run's --encoding counts
    est = estimate(Config(model=model))
    text = format_estimate(est, today=date.fromisoformat(VENDORED.date))
    assert f"LiteLLM's price map for {model}, provider {provider}" in text
    assert f"vendored {VENDORED.date}" in text
    assert "counted with o200k_base, not the model's own tokenizer" in text
    assert "warning" not in text
    # The numbers are the map's prices applied to the exact counts.
    assert est.cost_usd["expected"]["online"] == round(
        price.cost(est.input_tokens, est.output_tokens["expected"]), 6)
    assert est.to_dict()["price"]["key"] == model


def test_the_cli_estimates_a_gemini_model_with_no_price_flags() -> None:
    r = CliRunner().invoke(app, ["estimate", "--model", "gemini-2.5-flash", "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert "price source       LiteLLM's price map for gemini-2.5-flash" in r.output


def test_hand_checked_estimate_is_unchanged() -> None:
    """Pinned before the map existed: gpt-4o-mini on the bundled samples (with the prompts
    of then, the per-unit layout; auto now sends OpenAI the shared one)."""
    est = estimate(Config(model="gpt-4o-mini", prompt_layout="per_unit"))
    assert (est.input_tokens, est.output_tokens) == (
        11_017, {"low": 600, "expected": 1_500, "high": 6_400})
    assert est.cost_usd == {"low": {"online": 0.002013, "batch": 0.001006},
                            "expected": {"online": 0.002553, "batch": 0.001276},
                            "high": {"online": 0.005493, "batch": 0.002746}}
    assert est.price is not None and est.price.origin == "hand-checked"
    text = format_estimate(est, today=date(2026, 12, 4))
    assert text.splitlines()[1] == (
        "price source       dynogen's hand-checked table for gpt-4o-mini "
        "(https://developers.openai.com/api/docs/models/gpt-4o-mini, read 2026-11-25)")
    assert "11,017 exact" in text


# -- which layer wins ------------------------------------------------------------------------


def test_override_order(tmp_path: Path, tiny_map: Path) -> None:
    # hand-checked > map: the map's gpt-4o-mini (9/9 here) is not used, nor its snapshots.
    table = PriceTable.load(price_map=tiny_map)
    assert table.lookup("gpt-4o-mini").origin == "hand-checked"
    assert table.lookup("gpt-4o-mini").input == 0.15
    assert table.lookup("gpt-4o-mini-2024-07-18").key == "gpt-4o-mini"
    assert table.lookup("claude-x").origin == "litellm"
    # a prices file > both: a whole row, or only the fields it names of a map model.
    f = tmp_path / "p.toml"
    f.write_text('[models."gpt-4o-mini"]\ninput = 0.2\n\n[models."claude-x"]\ninput = 2.0\n')
    table = PriceTable.load(f, price_map=tiny_map)
    mini, claude = table.lookup("gpt-4o-mini"), table.lookup("claude-x")
    assert (mini.input, mini.output, mini.origin, mini.source) == (0.2, 0.6, "file", str(f))
    assert (claude.input, claude.output, claude.cache_write, claude.origin) == (
        2.0, 15, 3.75, "file")
    assert claude.describe() == f"prices file {f} for claude-x"
    # --price-in/--price-out > everything.
    flags = price_for("claude-x", table, price_in=1.0, price_out=1.0)
    assert (flags.input, flags.origin) == (1.0, "flags")
    assert flags.describe() == "--price-in/--price-out, given by hand"
    # ... through the composition root too, with the vendored map.
    cfg = Config(model="claude-sonnet-4-5")
    vendored = resolve_price(cfg)
    g = tmp_path / "q.json"
    g.write_text(json.dumps({"models": {"claude-sonnet-4-5": {"input": 2.0}}}))
    cfg = cfg.with_(prices_file=str(g))
    assert (resolve_price(cfg).input, resolve_price(cfg).output) == (2.0, vendored.output)
    assert resolve_price(cfg).origin == "file" and vendored.origin == "litellm"
    assert resolve_price(cfg.with_(price_in=0.5, price_out=0.7)).origin == "flags"
    assert resolve_price(cfg.with_(free=True)).is_free


def test_an_ambiguous_name_lists_the_keys_and_price_key_picks_one(tiny_map: Path) -> None:
    table = PriceTable.load(price_map=tiny_map)
    with pytest.raises(UnknownPriceError) as ei:
        price_for("open-model", table)
    assert isinstance(ei.value, UserError)
    msg = str(ei.value)
    assert "router-a/vendor/open-model, router-b/open-model" in msg and "--price-key" in msg
    p = price_for("open-model", table, price_key="router-b/open-model")
    assert (p.input, p.key, p.provider) == (0.1, "router-b/open-model", "router-b")
    # An exact key wins over its providers' copies, and price_key overrides even that.
    assert table.lookup("claude-x").provider == "anthropic"
    assert table.lookup("claude-x", "bedrock/claude-x").input == 3.3
    # No provider is guessed from a name: a prefix or a partial key is not a key.
    for name in ("vendor/open", "claude", "anthropic/claude-x", "claude-x-2025-01-01"):
        assert table.find(name) is None, name
    with pytest.raises(UnknownPriceError, match="no key of"):
        price_for("anything", table, price_key="claude")


def test_the_vendored_map_refuses_a_name_several_providers_serve() -> None:
    table = PriceTable.load()
    keys = table.price_map.candidates("deepseek-r1")
    assert "deepseek-r1" not in table.price_map and len(keys) >= 2
    with pytest.raises(UnknownPriceError) as ei:
        resolve_price(Config(model="deepseek-r1"))
    assert all(k in str(ei.value) for k in keys[:12])
    assert resolve_price(Config(model="deepseek-r1", price_key=keys[0])).key == keys[0]


def test_an_unknown_model_still_says_what_to_do() -> None:
    with pytest.raises(UnknownPriceError) as ei:
        resolve_price(Config(model="my-own-finetune-v3"))
    msg = str(ei.value)
    assert "'my-own-finetune-v3'" in msg
    assert all(s in msg for s in ("--price-in", "--prices FILE", "--free"))


def test_price_key_is_validated() -> None:
    with pytest.raises(ConfigError, match="--price-key"):
        Config(price_key=" ").validate()


# -- the price's age ---------------------------------------------------------------------------


def test_an_old_price_is_flagged_by_estimate() -> None:
    est = estimate(Config(model="gpt-4o-mini", limit=1))
    checked = date(2026, 11, 25)  # the hand-checked table's date for gpt-4o-mini
    fresh = format_estimate(est, today=date.fromordinal(checked.toordinal() + PRICE_MAX_AGE_DAYS))
    assert "warning" not in fresh
    old = format_estimate(est,
                          today=date.fromordinal(checked.toordinal() + PRICE_MAX_AGE_DAYS + 1))
    assert (f"warning: these prices were read {PRICE_MAX_AGE_DAYS + 1} days ago (2026-11-25, "
            f"over {PRICE_MAX_AGE_DAYS})") in old
    # Hand-given prices carry no date, so no warning.
    flags = estimate(Config(model="gpt-4o-mini", limit=1, price_in=1.0, price_out=2.0))
    assert "warning" not in format_estimate(flags, today=date(2100, 1, 1))


# -- cache reads and writes (Anthropic) ------------------------------------------------------


def test_cache_writes_and_reads_are_billed_at_their_prices(tiny_map: Path) -> None:
    claude = PriceTable.load(price_map=tiny_map).lookup("claude-x")
    # 10,000 prompt tokens: 2,000 read from the cache, 3,000 written to it, 5,000 plain;
    # 1,000 out.  $ per 1M: 3 in, 0.3 read, 3.75 write, 15 out.
    assert claude.cost_pico(10_000, 1_000, cached_tokens=2_000, cache_write_tokens=3_000) == (
        5_000 * 3_000_000 + 2_000 * 300_000 + 3_000 * 3_750_000 + 1_000 * 15_000_000)
    # Batch: written tokens at the Batch write price; a row with a Batch write price says
    # the cache discounts stack with the Batch one (Anthropic's do), so reads are at the
    # cached price halved; the rest at the Batch input price.
    assert claude.cost_pico(10_000, 1_000, 2_000, True, cache_write_tokens=3_000) == (
        5_000 * 1_500_000 + 2_000 * 150_000 + 3_000 * 1_875_000 + 1_000 * 7_500_000)
    # The worst case assumes every prompt token may be written.
    assert claude.worst_case_pico(1_000, 10) == 1_000 * 3_750_000 + 10 * 15_000_000
    # No write price: written tokens cost what input tokens cost; OpenAI is unchanged.
    mini = PriceTable.load().lookup("gpt-4o-mini")
    assert mini.cost_pico(10_000, 0, cache_write_tokens=4_000) == mini.cost_pico(10_000, 0)
    assert mini.worst_case_pico(1_000, 640) == 1_000 * 150_000 + 640 * 600_000


_SAMPLE_KEYS = sorted(VENDORED._models)[::37]


@given(key=st.sampled_from(_SAMPLE_KEYS), prompt=st.integers(0, 100_000),
       completion=st.integers(0, 10_000), extra=st.integers(0, 10_000),
       cached=st.integers(0, 120_000), written=st.integers(0, 120_000), batch=st.booleans())
def test_no_map_price_bills_more_than_its_worst_case(key: str, prompt: int, completion: int,
                                                      extra: int, cached: int, written: int,
                                                      batch: bool) -> None:
    p = PriceTable.load().find_key(key)
    assert p is not None
    assert p.cost_pico(prompt, completion, cached, batch, written) <= p.worst_case_pico(
        prompt, completion + extra, batch)
    assert p.cost(prompt, completion, cached, batch, written) == p.cost_pico(
        prompt, completion, cached, batch, written) / PICO


def test_a_negative_cache_write_price_is_refused() -> None:
    with pytest.raises(ConfigError, match="cache_write"):
        Price(1, 1, 1, 1, 1, cache_write=-1.0)


# -- embeddings --------------------------------------------------------------------------------


async def test_an_embedding_model_runs_with_no_price_flags(tmp_path: Path) -> None:
    cfg = Config(model="text-embedding-3-small", max_in_flight=2)
    price = resolve_price(cfg)
    assert (price.origin, price.provider, price.output) == ("litellm", "openai", 0)
    assert price.input > 0
    fake = FakeOpenAI()
    texts = [f"instruction {i} about topic {i % 5}" for i in range(20)]
    async with serve(fake) as server:
        store = EmbeddingStore(tmp_path / "emb.sqlite")
        async with open_stack(cfg.with_(base_url=server.url), price=price, stage="embed",
                              budget_usd=1.0) as stack:
            vecs = await APIEmbedder(stack.executor, cfg.model, store, dims=32,
                                     batch=8).embed(texts)
            spent, totals = stack.ledger.spent, stack.ledger.totals()
        store.close()
    assert vecs.shape == (20, 32) and np.isfinite(vecs).all()
    # Billed from the answers' usage ({"prompt_tokens", "total_tokens"}, no completion),
    # not charged each request's reservation as if the usage were unreadable.
    billed = sum(len(t) // 4 + 1 for t in texts)  # what the fake reports
    assert totals["requests"]["usage_invalid"] == 0
    assert totals["tokens"]["prompt"] == billed and spent == price.cost(billed, 0)


# -- cost of having the map ------------------------------------------------------------------


def test_help_does_not_read_the_map() -> None:
    code = ("import sys\n"
            "from dynogen.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "m = sys.modules.get('dynogen.execute.price_map')\n"
            "print('LOADED' if m is not None and m._load.cache_info().currsize else 'CLEAN')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.stdout.strip().endswith("CLEAN"), r.stdout + r.stderr


def test_openai_models_are_priced_without_reading_the_map(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-map.json"  # reading it would be a ConfigError
    table = PriceTable.load(price_map=missing)
    assert table.lookup("gpt-4o-mini-2024-07-18").origin == "hand-checked"
    with pytest.raises(ConfigError, match="cannot be read"):
        table.lookup("claude-x")
