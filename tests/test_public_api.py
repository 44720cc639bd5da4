"""The public API is exactly what ``dynogen/__init__`` exports, and the CLI mirrors it."""

from __future__ import annotations

import types

import click

import dynogen
from dynogen.cli.main import app


def test_exported_names_are_exactly_the_public_ones() -> None:
    # Submodules become attributes of the package once imported; they are reached by
    # their dotted path, not advertised as names.
    public = {n for n in dir(dynogen)
              if not n.startswith("_") and not isinstance(getattr(dynogen, n), types.ModuleType)}
    assert public == set(dynogen.__all__) - {"__version__"}
    assert len(dynogen.__all__) == len(set(dynogen.__all__))


def test_every_cli_command_has_a_python_function_of_the_same_name() -> None:
    commands = {name for name, c in app.commands.items() if not isinstance(c, click.Group)}
    library = commands - {"serve-local"}
    for name in library:
        assert callable(getattr(dynogen, name)), name
    assert {"run", "estimate", "build", "collect", "export", "call"} <= commands
