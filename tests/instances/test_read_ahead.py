"""The single-process build reads ahead by units, but never holds more than ``rows_ahead``
rows read and not yet written: with ``--rows-per-split all`` a unit can hold millions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dynogen.commands.build import _saved_config
from dynogen.compose import run_identity
from dynogen.instances.build import abuild_instances
from dynogen.io.row_reader import RowReader
from dynogen.store.rundir import RunDir
from tests.instances.rowsets import make_run


class Counting(RowReader):
    """Reads local folders as usual, and notes how many reads started before each write."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.ahead: list[int] = []
        self.builder: Any = None

    async def read(self, *args: Any, **kw: Any) -> Any:
        self.started += 1
        if self.builder is not None:
            self.ahead.append(self.started - self.builder.built)
        return await super().read(*args, **kw)


@pytest.mark.parametrize("rows_ahead,bounded", [(10, True), (10**9, False)])
def test_read_ahead_stops_at_the_rows_held(tmp_path: Path, rows_ahead: int,
                                           bounded: bool) -> None:
    run = make_run(tmp_path, rows=30)
    cfg = _saved_config(RunDir(run)).with_(quiet=True).validate()
    reader = Counting()

    async def go() -> None:
        def keep(builder: Any) -> None:
            builder.rows_ahead = rows_ahead
            reader.builder = builder

        await abuild_instances(cfg, rundir, reader=reader, on_builder=keep)

    rundir = RunDir(run).open(cfg, identity=run_identity(cfg), stage="build")
    try:
        asyncio.run(go())
    finally:
        rundir.close()
    assert reader.started == 4
    if bounded:
        assert max(reader.ahead) == 1  # one unit of over 10 rows at a time
    else:
        # the first read alone (its size sets how far to go), then the other three at once
        assert reader.ahead == [1, 1, 2, 3]

