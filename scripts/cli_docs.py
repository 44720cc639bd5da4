"""Regenerate docs/cli.md from the CLI's own --help (tests/test_docs.py checks it is current).

    .venv/bin/python scripts/cli_docs.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"


def render() -> str:
    os.environ["COLUMNS"] = "100"
    os.environ["TERM"] = "dumb"
    os.environ["NO_COLOR"] = "1"
    import click
    from click.testing import CliRunner

    from dynogen.cli.main import app

    runner = CliRunner()
    parts = ["# dynogen command line\n",
             "Generated from `dynogen --help` by `scripts/cli_docs.py`; "
             "`tests/test_docs.py` fails when it is stale.\n"]
    names = [""]
    for name, cmd in app.commands.items():  # in the order `dynogen --help` lists them
        if isinstance(cmd, click.Group):  # `dynogen batch status`, ...
            names += [f"{name} {sub}" for sub in cmd.commands]
        else:
            names.append(name)
    for name in names:
        args = [*name.split(), "--help"] if name else ["--help"]
        out = runner.invoke(app, args, prog_name="dynogen", env={"COLUMNS": "100"}).output
        title = f"dynogen {name}".strip()
        parts.append(f"## `{title}`\n\n```text\n{out.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}", file=sys.stderr)
