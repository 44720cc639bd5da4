"""Commands that read a run's instances read a sharded build's ``instances/`` as they read
``instances.jsonl``: inspect, publish (its local staging) and a later run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

import dynogen
from dynogen.api import arun
from dynogen.commands.inspect import inspect_run
from dynogen.config import Config
from dynogen.instances.provenance import Target
from dynogen.publishing.stage import stage
from dynogen.store.instance_files import count_instances, iter_instances
from dynogen.testing import FakeOpenAI, serve
from tests.helpers import built_both, rows_of, tasks_run


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """The same run's tasks built twice: by one process, and by the sharded engine."""
    return built_both(tmp_path)


def test_inspect_reads_a_sharded_run(pair: tuple[Path, Path]) -> None:
    local, sharded = pair
    want, got = inspect_run(local), inspect_run(sharded)
    assert sum(got.instances_by_split.values()) == count_instances(local) > 0
    assert got.instances_by_split == want.instances_by_split
    # the same sampled tasks, each shown with as many instances (which ones: shard order)
    assert [t["id"] for t in got.kept_sample] == [t["id"] for t in want.kept_sample]
    assert [len(t["instances"]) for t in got.kept_sample] == [
        len(t["instances"]) for t in want.kept_sample]
    assert any(t["instances"] for t in got.kept_sample)


def test_publish_stages_a_sharded_run_as_the_same_run_built_locally(
        pair: tuple[Path, Path], tmp_path: Path) -> None:
    local, sharded = pair
    want = stage(Target.open(local), tmp_path / "a", repo="org/x")
    got = stage(Target.open(sharded), tmp_path / "b", repo="org/x")
    assert got.facts.total == want.facts.total == count_instances(local)
    assert got.card == want.card
    assert sorted(f.path for f in got.files) == sorted(f.path for f in want.files)

    def staged_rows(root: Path) -> list[bytes]:
        return rows_of(r for p in sorted(root.rglob("*.parquet"))
                       for r in pq.read_table(p).to_pylist())

    assert staged_rows(tmp_path / "b") == staged_rows(tmp_path / "a")
    dry = dynogen.publish(sharded, repo="org/x", dry_run=True)  # offline: nothing read or sent
    assert dry.instances == count_instances(local)


def test_a_run_after_a_sharded_build_holds_one_engine_output(
        pair: tuple[Path, Path]) -> None:
    local, sharded = pair

    async def resume() -> dynogen.RunOutcome:
        async with serve(FakeOpenAI()) as server:
            saved = orjson.loads((sharded / "manifest.json").read_bytes())["config"]
            cfg = Config(source="samples", out=str(sharded), base_url=server.url,
                         model=saved["model"], quiet=True, free=True, licenses="any",
                         languages="any", splits="all", rows_per_split=5)
            return await arun(cfg)  # every unit done: only the instance stage runs

    outcome = asyncio.run(resume())
    assert outcome.exit_code == 0, outcome.message
    assert not (sharded / "instances").exists()  # the local build replaced the shards
    assert (sharded / "instances.jsonl").is_file()
    assert rows_of(iter_instances(sharded)) == rows_of(iter_instances(local))
    report = orjson.loads((sharded / "report.json").read_bytes())
    assert report["repairs"]["rebuilt_for"] == {"engine": ["ray", "local"]}


@pytest.mark.parametrize("args,said", [
    (("--rows-per-split", "lots"), "'lots' is not a count or 'all'"),
    (("--rows-per-split", "-3"), "-3 is below 0"),
    (("--engine", "spark"), "'spark' is not one of 'local', 'ray'"),
    (("--ray-address", "head:6379"), "--ray-address is for --engine ray"),
])
def test_bad_build_settings_get_one_line_and_no_traceback(tmp_path: Path, args: tuple[str, ...],
                                                          said: str) -> None:
    from click.testing import CliRunner

    from dynogen.cli.main import app

    run = tasks_run(tmp_path / "run")
    got = CliRunner().invoke(app, ["build", str(run), "--quiet", *args],
                             catch_exceptions=False)  # an exception would end the test here
    assert got.exit_code in (1, 2)
    assert said in got.output and "Traceback" not in got.output
    assert not (run / "instances.jsonl").exists() and not (run / "instances").exists()


@pytest.mark.parametrize("value", ["lots", -1, True, 2.5])
def test_a_config_file_with_a_bad_rows_per_split_is_refused(value: object) -> None:
    from dynogen.config import Config
    from dynogen.errors import ConfigError

    with pytest.raises(ConfigError, match="a count .0 or more. or 'all'"):
        Config(rows_per_split=value).validate()  # type: ignore[arg-type]
    assert Config(rows_per_split="all").validate().rows_to_read > 10**12
