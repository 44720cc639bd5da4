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
    assert "bash scripts/setup && scripts/check" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup" in ci and "scripts/check" in ci
    check = (ROOT / "scripts" / "check").read_text()
    assert all(step in check for step in ("ruff", "mypy", "pytest"))
