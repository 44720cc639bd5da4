"""Which provider a run speaks, with which key and server: explicit, or from the price map's
provider of the exact key, never guessed from a name; another provider's key is never sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynogen.commands.estimate import estimate
from dynogen.compose import check_key, open_stack, resolve_price, resolve_provider, speaking
from dynogen.config import BASE_URLS, Config, Secret, load_config
from dynogen.errors import ConfigError
from dynogen.execute.anthropic_client import AnthropicClient
from dynogen.execute.anthropic_wire import TOOL_PROMPT_TOKENS
from dynogen.execute.limits import SplitLimiter
from dynogen.execute.online import OnlineExecutor


def test_the_provider_comes_from_the_flag_or_the_maps_exact_key() -> None:
    assert resolve_provider(Config(model="claude-sonnet-4-5")) == "anthropic"
    assert resolve_provider(Config(model="gpt-4o-mini")) == "openai"
    # A name that merely looks like Claude's is not Anthropic's key: no guess.
    assert resolve_provider(Config(model="claude-sonnet-4-5-my-finetune")) == "openai"
    assert resolve_provider(Config(model="claude-sonnet-4-5",
                                   price_key="vertex_ai/claude-sonnet-4-5")) == "openai"
    assert resolve_provider(Config(model="gpt-4o-mini", provider="anthropic")) == "anthropic"
    assert resolve_provider(Config(model="claude-sonnet-4-5", provider="openai")) == "openai"
    with pytest.raises(ConfigError, match="--provider"):
        Config(provider="gemini").validate()


def test_an_openai_key_is_dropped_not_sent_to_anthropic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    env = {"OPENAI_API_KEY": "sk-openai"}
    cfg = load_config(None, env=env, model="claude-sonnet-4-5")
    assert cfg.api_key.get() == "sk-openai" and cfg.api_key.source == "OPENAI_API_KEY"
    spoken = cfg.for_provider("anthropic", env=env)
    assert not spoken.api_key and spoken.base_url == BASE_URLS["anthropic"]
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        check_key(cfg)
    both = {**env, "ANTHROPIC_API_KEY": "sk-ant"}
    assert cfg.for_provider("anthropic", env=both).api_key.get() == "sk-ant"
    # Said explicitly, the provider's own variable is read from the start.
    explicit = load_config(None, env=both, provider="anthropic")
    assert explicit.api_key.get() == "sk-ant" and explicit.key_env == "ANTHROPIC_API_KEY"
    # --api-key-env names the one variable read, whatever the provider.
    named = load_config(None, env={**both, "GATEWAY_KEY": "gw"}, api_key_env="GATEWAY_KEY",
                        model="claude-sonnet-4-5")
    assert named.for_provider("anthropic", env=both).api_key.get() == "gw"
    # A key given in code stays, and a server named stays.
    given = Config(model="claude-sonnet-4-5", api_key=Secret("sk-code"),
                   base_url="http://127.0.0.1:9/")
    assert given.for_provider("anthropic", env=both).api_key.get() == "sk-code"
    assert given.for_provider("anthropic", env=both).base_url == "http://127.0.0.1:9/"


def test_openai_base_url_is_not_used_for_anthropic() -> None:
    env = {"OPENAI_BASE_URL": "http://proxy/v1", "ANTHROPIC_API_KEY": "k"}
    assert load_config(None, env=env, provider="anthropic").base_url == BASE_URLS["openai"]
    assert speaking(load_config(None, env=env, provider="anthropic")).base_url == BASE_URLS[
        "anthropic"]
    assert load_config(None, env=env).base_url == "http://proxy/v1"


async def test_the_stack_for_anthropic_splits_the_limits(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    cfg = Config(model="claude-sonnet-4-5", rpm=4000, itpm=2_000_000, otpm=400_000,
                 tpm=3_000_000)
    async with open_stack(cfg, price=resolve_price(cfg), stage="tasks") as stack:
        ex = stack.executor
        assert isinstance(ex, OnlineExecutor) and isinstance(ex.client, AnthropicClient)
        assert ex.client.url == "https://api.anthropic.com/v1/messages"
        assert isinstance(ex.limiter, SplitLimiter)
        assert (ex.limiter.main.rpm, ex.limiter.main.tpm) == (4000, 2_000_000)  # min(tpm, itpm)
        assert ex.limiter.output.tpm == 400_000
    with pytest.raises(ConfigError, match="50,000"):
        async with open_stack(Config(mode="batch", batch_max_requests=60_000),
                              price=resolve_price(Config()), stage="tasks",
                              state_dir=tmp_path):
            pass


def test_estimate_counts_anthropics_tool_prompt() -> None:
    claude = estimate(Config(model="claude-sonnet-4-5", source="samples"))
    same = estimate(Config(model="claude-sonnet-4-5", source="samples", provider="openai"))
    assert claude.requests == same.requests
    assert claude.input_tokens == same.input_tokens + claude.requests * TOOL_PROMPT_TOKENS
    assert claude.approx_encoding == "o200k_base"  # it says the count is approximate
