"""Commands run on uvloop where it is installed; DYNOGEN_EVENT_LOOP=asyncio opts out."""

from __future__ import annotations

import asyncio

import pytest

from dynogen import eventloop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_commands_run_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")  # a dependency on Linux and macOS: always there in CI
    monkeypatch.delenv("DYNOGEN_EVENT_LOOP", raising=False)
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_the_asyncio_loop_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNOGEN_EVENT_LOOP", "asyncio")
    assert eventloop.loop_factory() is None
    assert eventloop.run(_loop_module()).startswith("asyncio")
