"""Notebooks: the sync entry points work inside a running event loop, and a run's result
loads as a ``datasets.Dataset`` in one call (fresh, or a run directory opened by path)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import orjson

import dynogen
from dynogen.config import Config
from dynogen.testing import start_fake_process


async def test_run_inside_a_running_loop_returns_and_loads_as_a_dataset(tmp_path: Path) -> None:
    # A notebook cell runs inside Jupyter's loop: dynogen.run() must not raise "Cannot run
    # the event loop while another loop is running". The fake serves from its own process,
    # since the sync call blocks this loop until the run is done.
    asyncio.get_running_loop()  # the premise: a loop runs in this thread
    main_thread = threading.get_ident()
    with start_fake_process() as fake:
        cfg = Config(source="samples", out=str(tmp_path / "run"), base_url=fake.url,
                     model="gpt-4o-mini", free=True, quiet=True, licenses="any")
        outcome = dynogen.run(cfg, handle_signals=True)  # no handlers off the main thread
    assert threading.get_ident() == main_thread
    assert outcome.exit_code == dynogen.EXIT["ok"], outcome.message
    written = outcome.report["instances"]["written"]
    assert written > 0
    ds = outcome.dataset()
    assert ds.num_rows == written
    assert {"instruction", "input", "output"} <= set(ds.column_names)
    first = orjson.loads((outcome.out / "instances.jsonl").read_bytes().splitlines()[0])
    assert ds[0]["instruction"] == first["instruction"] and ds[0]["output"] == first["output"]
    tasks = dynogen.dataset(outcome.out, "tasks")  # an existing run directory, by path
    assert tasks.num_rows == outcome.report["tasks"]["kept"]


def test_a_missing_output_names_what_to_run(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(dynogen.ConfigError, match="dynogen run"):
        dynogen.dataset(tmp_path)
    with pytest.raises(dynogen.ConfigError, match="instances or tasks"):
        dynogen.dataset(tmp_path, "rows")
