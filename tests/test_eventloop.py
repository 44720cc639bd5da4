"""Commands run on uvloop where it is installed; DYNOGEN_EVENT_LOOP=asyncio opts out."""

from __future__ import annotations

import asyncio
import sys

import pytest

from dynogen import eventloop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not made for Windows")
def test_commands_run_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop is a dependency everywhere else: missing, this fails rather than skips.
    monkeypatch.delenv("DYNOGEN_EVENT_LOOP", raising=False)
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_the_asyncio_loop_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNOGEN_EVENT_LOOP", "asyncio")
    assert eventloop.loop_factory() is None
    assert eventloop.run(_loop_module()).startswith("asyncio")


def test_the_collector_is_tuned_while_a_command_runs_and_restored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    monkeypatch.delenv("DYNOGEN_GC", raising=False)
    before = gc.get_threshold()

    async def inside() -> tuple[tuple[int, int, int], int]:
        return gc.get_threshold(), gc.get_freeze_count()

    threshold, frozen = eventloop.run(inside())
    assert threshold == (eventloop.GEN0, eventloop.GEN1, eventloop.GEN2)
    assert frozen > 0  # what existed before the run is left out of every collection
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    monkeypatch.setenv("DYNOGEN_GC", "default")
    assert eventloop.run(inside())[0] == before
