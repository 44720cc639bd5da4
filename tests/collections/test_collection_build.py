"""``dynogen build COLLECTION``: the version ``grow --no-build`` left unfinished is built
against the earlier versions, on either engine, and completed."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import dynogen
from dynogen.api import agrow
from dynogen.cli.main import app
from dynogen.collections.memory import collection_seed
from dynogen.config import Config
from dynogen.errors import RunDirError
from dynogen.store.collection import Collection
from dynogen.store.instance_files import iter_instances, shard_files
from dynogen.testing import FakeOpenAI, serve
from tests.helpers import build_sharded, card, rows_of

ROWS = [("Lovely scones and kind staff.", "positive"), ("Cold tea, rude waiter.", "negative"),
        ("Best cake in town.", "positive"), ("Never again.", "negative")]
MORE = [("The coffee was fine.", "positive"), ("Noisy and slow.", "negative")]


def shop(root: Path, name: str, field: str, rows: list[tuple[str, str]]) -> None:
    """A dataset folder: a text column named ``field`` and a string ``label``."""
    (root / name / "data").mkdir(parents=True)
    (root / name / "README.md").write_text(card([field, "label"], f"Reviews of {name}."))
    (root / name / "data" / "train.jsonl").write_bytes(b"".join(
        orjson.dumps({field: text, "label": label}) + b"\n" for text, label in rows))


def answer(field: str) -> str:
    return orjson.dumps({"tasks": [{"instruction": "Is this review positive or negative?",
                                    "input_fields": [field], "output_field": "label"}]}).decode()


def grown(tmp: Path) -> Path:
    """A collection: version 1 built (shop_a), version 2 with its tasks only (shop_b: the
    same reviews under another column name, so another task with the same instances, and
    two reviews more)."""
    src, coll = tmp / "src", tmp / "coll"
    shop(src, "shop_a", "text", ROWS)

    async def go() -> None:
        fake = FakeOpenAI()
        async with serve(fake) as server:
            cfg = Config(source=str(src), base_url=server.url, model="gpt-4o-mini", quiet=True,
                         free=True, max_in_flight=1, variants=("description",),
                         licenses="any", languages="any", splits="all")
            fake.enqueue(answer("text"))
            one = await agrow(coll, cfg)
            assert one.exit_code == 0 and one.report["instances"]["written"] == 4, one.message
            shop(src, "shop_b", "review", ROWS + MORE)
            fake.enqueue(answer("review"))
            two = await agrow(coll, cfg, build=False)
            assert two.exit_code == 0, two.message
            assert f"`dynogen build {coll}`" in two.message

    asyncio.run(go())
    assert [v["status"] for v in Collection(coll).load().versions] == ["complete", "running"]
    return coll


def test_a_sharded_build_of_a_collection_dedups_against_earlier_versions_and_completes(
        tmp_path: Path) -> None:
    coll = grown(tmp_path)
    local = tmp_path / "local"
    shutil.copytree(coll, local)

    outcome = build_sharded(coll)
    assert outcome.exit_code == 0, outcome.message
    assert outcome.extra["version"] == 2 and outcome.out == coll
    v2 = coll / "versions" / "0002"
    assert shard_files(v2) and not (v2 / "instances.jsonl").exists()
    # shop_b's four reviews are version 1's instances again: only the two new ones are kept
    assert outcome.report["instances"]["written"] == 2
    assert outcome.report["instances"]["duplicates"] == 4
    entry = Collection(coll).load().versions[1]
    assert entry["status"] == "complete" and entry["instances"] == 2 and entry["tasks"] == 1
    assert entry["requests_paid"] == 1  # the task stage's, kept through the build's report
    assert outcome.message.startswith("version 2: built 2 instances into ")
    assert outcome.message.endswith(f"the version is complete. Collection: 2 live tasks in 2 "
                                    f"versions ({coll})")

    # the same version built by one process, through the CLI: the same instances
    cli = CliRunner().invoke(app, ["build", str(local), "--quiet"], catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    assert cli.output.startswith("version 2: built 2 instances into ")
    assert (local / "versions" / "0002" / "instances.jsonl").is_file()
    assert Collection(local).load().versions[1]["instances"] == 2
    assert rows_of(Collection(coll).load().iter_instances()) == rows_of(
        Collection(local).load().iter_instances())
    assert {r["input"] for r in iter_instances(v2)} == {text for text, _ in MORE}


def test_the_seed_of_a_sharded_version_is_that_of_the_same_version_built_locally(
        tmp_path: Path) -> None:
    coll = grown(tmp_path)
    local = tmp_path / "local"
    shutil.copytree(coll, local)
    assert build_sharded(coll).exit_code == 0
    assert dynogen.build(local, quiet=True, handle_signals=False).exit_code == 0
    sharded_seed = collection_seed(Collection(coll).load(), set())
    local_seed = collection_seed(Collection(local).load(), set())
    assert set(sharded_seed.instances) == set(local_seed.instances)
    assert len(sharded_seed.instances) == len(ROWS + MORE)  # both versions' instances
    assert set(sharded_seed.tasks) == set(local_seed.tasks) and len(sharded_seed.tasks) == 2


def test_nothing_to_build_says_so_and_changes_nothing(tmp_path: Path) -> None:
    coll = grown(tmp_path)
    assert dynogen.build(coll, quiet=True, handle_signals=False).exit_code == 0
    before = (coll / "collection.json").read_bytes()
    again = build_sharded(coll)
    assert again.exit_code == 0 and again.extra["version"] is None
    assert again.message == f"nothing to build: every version of {coll} is complete"
    assert (coll / "collection.json").read_bytes() == before
    assert not (coll / "versions" / "0002" / "instances").exists()  # no sharded build ran
    Collection(tmp_path / "empty").create()
    assert dynogen.build(tmp_path / "empty").message == (
        f"nothing to build: {tmp_path / 'empty'} has no version yet: grow it first")


def test_a_version_whose_tasks_are_not_done_is_left_to_grow(tmp_path: Path) -> None:
    coll = grown(tmp_path)
    units = coll / "versions" / "0002" / "units.jsonl"
    units.write_bytes(b"")  # as if the task stage had stopped before shop_b
    with pytest.raises(RunDirError, match=r"version 2 of .* has not finished its tasks \(1 "
                                          r"planned units not answered yet\): `dynogen grow"):
        build_sharded(coll)
    assert Collection(coll).load().versions[1]["status"] == "running"
    assert not (coll / "versions" / "0002" / "instances").exists()
