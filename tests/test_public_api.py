"""The public API is exactly what ``dynogen/__init__`` exports, and the CLI mirrors it."""

from __future__ import annotations

import dynogen
from dynogen.cli import app


def test_all_names_exist_and_nothing_else_is_advertised() -> None:
    public = {n for n in dir(dynogen) if not n.startswith("_")}
    exported = set(dynogen.__all__) - {"__version__"}
    assert exported <= public
    for name in dynogen.__all__:
        assert getattr(dynogen, name) is not None


def test_every_cli_command_has_a_python_function_of_the_same_name() -> None:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}  # type: ignore[union-attr]
    library = commands - {"serve-local"}
    for name in library:
        assert callable(getattr(dynogen, name)), name
    assert {"run", "estimate", "build", "collect", "export", "call"} <= commands
