"""docs/cli.md is the CLI's own --help: regenerate with scripts/cli_docs.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_docs_are_current() -> None:
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == mod.render(), "docs/cli.md is stale: run scripts/cli_docs.py"


def test_readme_opens_with_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("## ")]
    assert "bash scripts/setup && .venv/bin/dynogen run --local" in head
    assert "bash scripts/setup && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup" in ci and "pytest" in ci
