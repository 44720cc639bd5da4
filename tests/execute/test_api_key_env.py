"""``api_key_env``: the API key read from a variable the user names (an OpenRouter, Gemini
or Anthropic key), never from another one, and never written anywhere."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from dynogen.compose import check_key
from dynogen.config import Config, load_config
from dynogen.errors import ConfigError
from dynogen.testing import FakeOpenAI, serve

CANARY = "sk-or-canary-5e1d0c9b8a7f6e5d-never-written"
VAR = "DYNOGEN_TEST_ROUTER_KEY"


def test_the_key_comes_from_the_named_variable() -> None:
    env = {VAR: CANARY, "OPENAI_API_KEY": "sk-openai"}
    assert load_config(env=env, api_key_env=VAR).api_key.get() == CANARY
    assert load_config(env=env).api_key.get() == "sk-openai"
    assert load_config(env=env, api_key_env=VAR).key_env == VAR
    assert load_config(env=env).key_env == "OPENAI_API_KEY"


def test_a_config_file_names_the_variable(tmp_path: Path) -> None:
    f = tmp_path / "dynogen.toml"
    f.write_text(f'api_key_env = "{VAR}"\napi_key = "sk-from-file"\n')
    # The named variable and nothing else: not the file's key, not OPENAI_API_KEY.
    assert load_config(f, env={VAR: CANARY}).api_key.get() == CANARY
    assert not load_config(f, env={"OPENAI_API_KEY": "sk-openai"}).api_key


def test_an_unset_variable_is_an_error_naming_it_and_never_a_fallback() -> None:
    cfg = load_config(env={"OPENAI_API_KEY": "sk-openai"}, api_key_env=VAR,
                      base_url="https://openrouter.ai/api/v1")
    assert not cfg.api_key  # another provider's key is not sent to this server
    with pytest.raises(ConfigError, match=f"{VAR} .*--api-key-env.* not set"):
        check_key(cfg)
    # Without api_key_env a server other than OpenAI's may need no key, as before.
    check_key(load_config(env={}, base_url="http://127.0.0.1:8080/v1"))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        check_key(load_config(env={}))


@pytest.mark.parametrize("bad", ["", "MY-KEY", "1KEY", "KEY NAME", "$KEY"])
def test_a_variable_name_is_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="--api-key-env"):
        load_config(env={}, api_key_env=bad) if bad else Config(api_key_env=bad).validate()


def test_the_name_is_recorded_and_the_value_is_not() -> None:
    cfg = load_config(env={VAR: CANARY}, api_key_env=VAR)
    public = orjson.dumps(cfg.public_dict()).decode()
    assert f'"api_key_env":"{VAR}"' in public and CANARY not in public
    assert CANARY not in repr(cfg) and CANARY not in str(cfg.server)
    assert CANARY not in orjson.dumps(cfg.identity()).decode()


async def test_a_run_with_api_key_env_writes_the_key_nowhere(tmp_path: Path) -> None:
    """The real CLI in a subprocess against a server that wants the key: every request
    carries it, and no file the run writes, nor its output, holds it."""
    conf = tmp_path / "dynogen.toml"
    conf.write_text(f'api_key_env = "{VAR}"\n')
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HF_"))}
    env.update({VAR: CANARY, "OPENAI_API_KEY": "sk-openai-must-not-be-sent",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "HF_HOME": str(tmp_path / "hf-home")})
    fake = FakeOpenAI(api_key=CANARY)
    async with serve(fake) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dynogen", "run", "--limit", "2", "--quiet",
            "--max-in-flight", "2", "--budget-usd", "1", "--base-url", server.url,
            "--config", str(conf), "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
            env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    assert fake.history and all(r.headers["authorization"] == f"Bearer {CANARY}"
                                for r in fake.history)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != conf]
    assert len(written) > 3
    leaks = [str(p) for p in written if CANARY.encode() in p.read_bytes()]
    assert leaks == [] and CANARY not in stdout.decode() + stderr.decode()
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["config"]["api_key_env"] == VAR
