"""Lint and strict types are part of the test suite, so the one test command checks everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    r = run(str(BIN / "ruff"), "check", "dynogen", "tests", "bench", "cost")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean_on_the_package() -> None:
    r = run(str(BIN / "mypy"), "dynogen")
    assert r.returncode == 0, r.stdout + r.stderr
