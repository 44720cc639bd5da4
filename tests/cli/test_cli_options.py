"""The CLI's option groups: declared once, shared, named as Config keys, old spellings kept.

Commands run through click's runner against the fake server in its own process.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner

import dynogen
import dynogen.api
from dynogen.cli.main import Dynogen, app
from dynogen.cli.options import Setting
from dynogen.config import Config
from dynogen.errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigError,
    DynogenError,
    StorageError,
)
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeProcess, start_fake_process

runner = CliRunner()
CONFIG_KEYS = {f.name for f in dataclasses.fields(Config)}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake_process(ready_timeout=120) as proc:
        yield proc


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), catch_exceptions=False, env=env)
    return result.exit_code, result.output


def estimate(*args: str) -> dict[str, Any]:
    code, text = invoke("estimate", "--json", *args)
    assert code == 0, text
    return dict(orjson.loads(text))


def commands() -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, cmd in app.commands.items():
        if isinstance(cmd, click.Group):
            out.update({f"{name} {sub}": c for sub, c in cmd.commands.items()})
        else:
            out[name] = cmd
    return out


def options(name: str) -> dict[str, click.Option]:
    return {p.name: p for p in commands()[name].params
            if isinstance(p, click.Option) and p.name is not None}


def help_record(name: str, opt: click.Option) -> tuple[str, str] | None:
    return opt.get_help_record(click.Context(commands()[name]))


# ---------------------------------------------------------------- declared once, shared

def test_run_and_grow_share_every_option_not_theirs_alone_with_the_same_help() -> None:
    run, grow = options("run"), options("grow")
    # run alone: its directory's old --out, and what a collection decides for itself
    # (one cache per collection; a version in progress is never discarded).
    assert set(run) - set(grow) == {"run_dir__out", "force_new", "cache_path"}
    assert set(grow) - set(run) == set()
    for key in run.keys() & grow.keys():
        a, b = run[key], grow[key]
        assert (a.opts, a.secondary_opts, a.hidden, a.type.name) == (
            b.opts, b.secondary_opts, b.hidden, b.type.name), key
        assert help_record("run", a) == help_record("grow", b), key
        assert getattr(a, "section", None) == getattr(b, "section", None), key
    assert "for this run (a grow step is a run), across its resumes" in str(
        run["budget_usd"].help)


def test_every_setting_is_named_as_its_config_key() -> None:
    seen = 0
    for name in commands():
        for key, opt in options(name).items():
            if isinstance(opt, Setting):
                seen += 1
                assert key in CONFIG_KEYS, (name, key)
                assert "--" + key.replace("_", "-") in opt.opts, (name, opt.opts)
    assert seen > 100


def test_same_option_same_help_in_every_command() -> None:
    records: dict[str, tuple[str, tuple[str, str] | None]] = {}
    for name in commands():
        for key, opt in options(name).items():
            if not isinstance(opt, Setting):
                continue
            rec = help_record(name, opt)
            first = records.setdefault(key, (name, rec))
            assert rec == first[1], f"--{key} differs between {first[0]} and {name}"


def test_boolean_flags_read_naturally() -> None:
    for name in ("run", "grow"):
        code, text = invoke(name, "--help")
        assert code == 0 and "--no-build " in text and "--no-no-" not in text
    code, text = invoke("run", "--no-no-build")
    assert code == 2 and "No such option" in text


# ---------------------------------------------------------------- estimate: body and price

def test_estimate_takes_what_shapes_the_request_body() -> None:
    base = estimate()
    assert estimate("--response-format", "none")["input_tokens"] < base["input_tokens"]
    assert estimate("--metadata-token-budget", "100")["input_tokens"] < base["input_tokens"]
    assert estimate("--max-tasks-per-unit", "1")["input_tokens"] != base["input_tokens"]
    assert estimate("--max-tokens", "100")["output_tokens"]["high"] == 100 * base["requests"]
    assert estimate("--judge")["requests"] > base["requests"]
    assert estimate("--variants", "description")["requests"] == base["requests"] // 2
    # accepted so that a run's command line estimates as it is (they shape what is
    # kept, not a prompt or a price)
    assert estimate("--max-share", "0.5", "--temperature", "0.7", "--seed", "3",
                    "--encoding", "o200k_base")["input_tokens"] == base["input_tokens"]
    # where and how requests go decide the prompt layout auto sends (prompts/layout.py):
    # the shared prefix online at OpenAI, the per-unit schema in batch and elsewhere
    assert base["prompt_layout"] == {"online": "shared", "batch": "per_unit"}
    other = estimate("--mode", "batch", "--base-url", "http://127.0.0.1:9/v1")
    assert other["prompt_layout"] == {"online": "per_unit", "batch": "per_unit"}
    assert other["input_tokens"] == base["input_tokens_by_mode"]["batch"]


def test_estimate_takes_every_price() -> None:
    base = estimate("--price-in", "1", "--price-out", "2")
    exp = base["cost_usd"]["by_output"]["expected"]
    want = (base["input_tokens"] * 1 + base["output_tokens"]["expected"] * 2) / 1e6
    assert exp["online"] == pytest.approx(want, abs=1e-6)
    assert exp["batch"] == pytest.approx(want / 2, abs=1e-6)
    cheaper = estimate("--price-in", "1", "--price-out", "2", "--batch-price-in", "0.1",
                       "--batch-price-out", "0.2")
    assert cheaper["cost_usd"]["batch"] == pytest.approx(want / 10, abs=1e-6)
    assert cheaper["cost_usd"]["online"] == base["cost_usd"]["online"]
    free = estimate("--free")
    assert free["cost_usd"]["online"] == free["cost_usd"]["batch"] == 0
    assert estimate("--local")["cost_usd"]["online"] == 0


def test_estimate_prices_file_and_mode_checks(tmp_path: Path) -> None:
    code, text = invoke("estimate", "--model", "my-model")
    assert code == 1 and "no price for model 'my-model'" in text
    prices = tmp_path / "prices.toml"
    prices.write_text('[models.my-model]\ninput = 1.0\noutput = 2.0\n')
    est = estimate("--model", "my-model", "--prices-file", str(prices))
    assert est["model"] == "my-model" and est["cost_usd"]["online"] > 0
    code, text = invoke("estimate", "--mode", "sideways")
    assert code == 1 and text == "dynogen: error: --mode must be online or batch (got 'sideways')\n"


def test_config_file_keys_are_the_option_names(tmp_path: Path) -> None:
    toml = tmp_path / "dynogen.toml"
    toml.write_text('source = "samples"\nlimit = 4\nmax_tasks_per_unit = 1\n'
                    'response_format = "none"\n')
    from_file = estimate("--config", str(toml))
    flags = estimate("--limit", "4", "--max-tasks-per-unit", "1", "--response-format", "none")
    everything = estimate()["units"]
    assert from_file == flags and 0 < from_file["units"] < everything
    assert estimate("--config", str(toml), "--limit", "100")["units"] == everything  # flags win


# ---------------------------------------------------------------- old spellings

def test_old_spellings_still_parse_and_are_hidden(tmp_path: Path) -> None:
    assert estimate("--max-tasks", "1") == estimate("--max-tasks-per-unit", "1")
    assert estimate("--collection", str(tmp_path / "c")) == estimate(str(tmp_path / "c"))
    missing = tmp_path / "missing"
    none = f"{missing} has no instances (no instances.jsonl or instances/)"
    for args, needle in [
        (["build", "--out", str(missing)], f"{missing} holds no run"),
        (["export", "--out", str(missing)], none),
        (["export", "--collection", str(missing)], none),
        (["batch", "status", "--out", str(missing)], f"{missing} holds no batches"),
        (["batch", "cancel", "--out", str(missing)], f"{missing} holds no batches"),
    ]:
        code, text = invoke(*args)
        assert code == 1 and needle in text, (args, text)
    code, text = invoke("build", str(missing), "--out", str(tmp_path / "other"))
    assert code == 2 and "RUN_DIR given twice" in text
    for name in commands():
        _, text = invoke(*name.split(), "--help")
        for old in ("--out ", "--max-tasks ", "--cache ", "--collection "):
            if old == "--out " and name in ("collect", "call", "replay"):
                continue  # there --out names what the command writes
            assert old not in text, (name, old)


# ---------------------------------------------------------------- runs, grows and errors

def test_no_build_on_run_and_grow_and_the_cache_alias(fake: FakeProcess, tmp_path: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "shared.sqlite"
    common = ["--base-url", fake.url, "--free", "--quiet", "--rows-per-split", "3",
              "--licenses", "any", "--languages", "any", "--splits", "all"]
    code, text = invoke("run", str(out), "--no-build", "--cache", str(cache), *common)
    assert code == 0, text
    assert (out / "tasks.jsonl").exists() and not (out / "instances.jsonl").exists()
    assert cache.exists()
    code, text = invoke("build", str(out))
    assert code == 0 and "built" in text
    assert list(iter_jsonl(out / "instances.jsonl"))

    coll = tmp_path / "coll"
    code, text = invoke("grow", str(coll), "--no-build", *common)
    assert code == 0 and "instances not built" in text, text
    assert not list(coll.glob("versions/*/instances.jsonl"))
    code, text = invoke("grow", str(coll), *common)
    assert code == 0 and text.startswith("version 1 (resumed):"), text
    manifest = orjson.loads((coll / "collection.json").read_bytes())
    assert manifest["versions"][0]["instances"] > 0
    code, text = invoke("export", str(coll), "--format", "jsonl")  # a collection, detected
    assert code == 0 and str(coll / "export" / "instances.jsonl") in text, text


def test_an_error_is_one_line_with_its_exit_code(tmp_path: Path) -> None:
    code, text = invoke("inspect", str(tmp_path / "nothing"))
    assert code == 1 and text.startswith("dynogen: error: ") and len(text.splitlines()) == 1
    # A refused key ends a run with the fatal code, in one line.
    with start_fake_process(ready_timeout=120, api_key="right") as server:
        result = runner.invoke(app, ["run", str(tmp_path / "r"), "--base-url", server.url,
                                     "--quiet"], env={"OPENAI_API_KEY": "wrong"})
    assert result.exit_code == dynogen.EXIT["fatal"] == 4, result.output
    assert "refused the API key" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError("bad setting"), 1),
    (AuthenticationError("key refused"), 4),
    (APIConnectionError("server gone"), 4),
    (StorageError("no space left in /x"), 130),
])
def test_the_one_error_handler_maps_every_error_to_its_code(error: DynogenError,
                                                            code: int) -> None:
    group = Dynogen()

    @group.command()
    def fails() -> None:
        raise error

    result = runner.invoke(group, ["fails"])
    assert result.exit_code == code == dynogen.api.exit_code(error)
    assert result.output == f"dynogen: error: {error}\n"


def test_version() -> None:
    code, text = invoke("--version")
    assert code == 0 and text == f"dynogen {dynogen.__version__}\n"


def test_help_does_not_import_the_api() -> None:
    code = ("import sys\nfrom dynogen.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('dynogen.api', 'aiohttp', 'typer') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
