"""A collection grows by versions: only new or changed units are sent, nothing is lost."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import EXIT, agrow, arun, estimate, export
from dynogen.config import Config
from dynogen.io.sources import samples_dir
from dynogen.store.collection import Collection
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, serve
from dynogen.units import Field, Skipped, Unit

FIELDS = (
    Field("premise", "string"),
    Field("hypothesis", "string"),
    Field("label", "class_label", ("entailment", "neutral", "contradiction")),
)


def unit(i: int, desc: str | None = None) -> Unit:
    return Unit(f"ds{i:02d}", "default", desc or f"Dataset number {i} about topic {i}.", FIELDS,
                license="mit")


def units(lo: int, hi: int, **changed: str) -> list[Unit | Skipped]:
    return [unit(i, changed.get(f"ds{i:02d}")) for i in range(lo, hi)]


def cfg(url: str, **kw: Any) -> Config:
    base: dict[str, Any] = dict(base_url=url, model="gpt-4o-mini", quiet=True, free=True,
                                max_in_flight=4, retry_base_delay=0.01, retry_max_delay=0.05,
                                licenses="any", languages="any", splits="all")
    base.update(kw)
    return Config(**base)


def manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((path / "collection.json").read_bytes())
    return data


def sent_units(fake: FakeOpenAI) -> set[str]:
    """The datasets named in the requests the fake received."""
    out = set()
    for rec in fake.history:
        text = rec.body["messages"][-1]["content"]
        out.add(text.split("\n", 1)[0].removeprefix("Dataset: "))
    return out


async def test_second_grow_sends_only_new_units_and_union_equals_one_run(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(server.url)
        one = await agrow(coll, c, source=units(0, 5))
        assert one.exit_code == 0, one.message
        assert sent_units(fake) == {f"ds{i:02d}" for i in range(5)}
        fake.history.clear()
        two = await agrow(coll, c, source=units(0, 9))
        assert two.exit_code == 0, two.message
        assert sent_units(fake) == {f"ds{i:02d}" for i in range(5, 9)}
        assert two.extra["plan"] == {"new": 4, "changed": 0, "unchanged": 5, "repeats": 0}
        whole = await arun(c.with_(out=str(tmp_path / "whole")), source=units(0, 9))
    m = manifest(coll)
    assert [v["version"] for v in m["versions"]] == [1, 2]
    assert all(v["status"] == "complete" for v in m["versions"])
    assert (coll / "versions" / "0001" / "manifest.json").is_file()
    merged = [t["id"] for t in Collection(coll).load().iter_tasks()]
    assert merged == [t["id"] for t in iter_jsonl(whole.out / "tasks.jsonl")]
    assert len(merged) == m["totals"]["tasks"] > 0
    assert m["totals"]["requests_paid"] == 18  # 9 units x 2 variants, each sent once


async def test_nothing_new_sends_nothing_and_writes_no_version(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        await agrow(coll, cfg(server.url), source=units(0, 3))
        before = (coll / "collection.json").read_bytes()
        fake.history.clear()
        again = await agrow(coll, cfg(server.url), source=units(0, 3))
    assert again.exit_code == EXIT["ok"]
    assert again.message.startswith("nothing new: 3 units unchanged since version 1")
    assert fake.history == []
    assert sorted(p.name for p in (coll / "versions").iterdir()) == ["0001"]
    assert (coll / "collection.json").read_bytes() == before


async def test_changed_card_supersedes_its_older_tasks(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        await agrow(coll, cfg(server.url), source=units(0, 4))
        v1_tasks = list(iter_jsonl(coll / "versions" / "0001" / "tasks.jsonl"))
        v1_bytes = (coll / "versions" / "0001" / "tasks.jsonl").read_bytes()
        fake.history.clear()
        two = await agrow(coll, cfg(server.url),
                          source=units(0, 4, ds02="A new card: pairs of sentences, relabelled."))
    assert two.exit_code == 0, two.message
    assert sent_units(fake) == {"ds02"}
    assert two.extra["plan"]["changed"] == 1
    old = {t["id"] for t in v1_tasks if t["dataset"] == "ds02"}
    m = manifest(coll)
    assert old and set(m["versions"][1]["supersedes"]) == old
    assert (coll / "versions" / "0001" / "tasks.jsonl").read_bytes() == v1_bytes  # never rewritten
    live = list(Collection(coll).load().iter_tasks())
    assert not old & {t["id"] for t in live}
    assert {t["version"] for t in live if t["dataset"] == "ds02"} == {2}
    assert m["totals"]["tasks_superseded"] == len(old)


async def test_a_change_back_is_answered_from_the_cache(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        await agrow(coll, cfg(server.url), source=units(0, 3))
        await agrow(coll, cfg(server.url), source=units(0, 3, ds01="Changed for a while."))
        fake.history.clear()
        back = await agrow(coll, cfg(server.url), source=units(0, 3))
    assert back.exit_code == 0 and back.extra["plan"]["changed"] == 1
    assert fake.history == []  # the shared request cache answered it
    assert manifest(coll)["versions"][2]["requests_paid"] == 0


async def test_duplicate_instructions_across_versions_are_dropped(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    answer = orjson.dumps({"tasks": [{"instruction": "Does the premise entail the hypothesis?",
                                      "input_fields": ["premise", "hypothesis"],
                                      "output_field": "label"}]}).decode()
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(server.url, max_in_flight=1, variants=("description",))
        fake.enqueue(answer)
        await agrow(coll, c, source=units(0, 1))
        fake.enqueue(answer)
        two = await agrow(coll, c, source=units(0, 2))
    assert two.report["tasks"]["dropped_by_reason"] == {"duplicate_in_run": 1}
    assert [t["dataset"] for t in Collection(coll).load().iter_tasks()] == ["ds00"]


async def test_budget_stop_leaves_the_version_running_and_grow_resumes_it(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        priced = cfg(server.url, free=False, price_in=1000.0, price_out=1000.0, max_in_flight=2)
        probe = await arun(priced.with_(out=str(tmp_path / "probe"), cache_path=None),
                           source=units(0, 6))
        total = probe.report["cost"]["spent_usd_total"]
        part = await agrow(coll, priced.with_(budget_usd=total / 3), source=units(0, 6))
        assert part.exit_code == EXIT["budget"], part.message
        assert manifest(coll)["versions"][0]["status"] == "running"
        done = sum(1 for r in iter_jsonl(coll / "versions" / "0001" / "units.jsonl")
                   if r["status"] == "done")
        # The next step of a stopped collection is the rest of its running version.
        assert estimate(priced, collection=coll).units == 6 - done
        rest = await agrow(coll, priced.with_(budget_usd=total * 2), source=units(0, 6))
    assert rest.exit_code == 0, rest.message
    assert rest.extra["resumed"] is True
    m = manifest(coll)
    assert [v["status"] for v in m["versions"]] == ["complete"]
    assert sorted(p.name for p in (coll / "versions").iterdir()) == ["0001"]
    assert list(iter_jsonl(coll / "versions" / "0001" / "tasks.jsonl")) == list(
        iter_jsonl(probe.out / "tasks.jsonl"))


async def test_failed_units_are_planned_again(tmp_path: Path) -> None:
    from dynogen.testing import Fault

    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(server.url, max_in_flight=1, max_retries=0, variants=("description",))
        fake.enqueue(Fault.http(500, {"error": {"message": "boom"}}))
        one = await agrow(coll, c, source=units(0, 2))
        assert one.report["units"]["failed"] == 1
        fake.history.clear()
        two = await agrow(coll, c, source=units(0, 2))
    # never answered, so still new to the collection
    assert two.extra["plan"] == {"new": 1, "changed": 0, "unchanged": 1, "repeats": 0}
    assert len(fake.history) == 1


async def test_estimate_prices_only_the_next_step(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        await agrow(coll, cfg(server.url), source=units(0, 4))
    est = estimate(cfg("http://unused"), collection=coll, source=units(0, 7))
    assert est.units == 3 and est.requests == 6
    fresh = estimate(cfg("http://unused"), collection=tmp_path / "none", source=units(0, 7))
    assert fresh.units == 7


async def test_export_merged_view_from_samples(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(samples_dir() / "cafe_reviews", src / "cafe_reviews")
    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        c = cfg(server.url, source=str(src), rows_per_split=5)
        one = await agrow(coll, c)
        assert one.exit_code == 0, one.message
        shutil.copytree(samples_dir() / "science_quiz", src / "science_quiz")
        two = await agrow(coll, c)
        assert two.exit_code == 0, two.message
        assert two.extra["plan"]["new"] == 1
    coll_obj = Collection(coll).load()
    instances = list(coll_obj.iter_instances())
    assert {i["dataset"] for i in instances} == {"cafe_reviews", "science_quiz"}
    path = export(collection=coll, fmt="jsonl")
    assert [orjson.loads(line)["task_id"] for line in path.read_bytes().splitlines()] == [
        i["task_id"] for i in instances]
    pq = export(collection=coll, fmt="parquet", dest=tmp_path / "m.parquet")
    import pyarrow.parquet as papq

    assert papq.read_table(pq).num_rows == len(instances)
    m = manifest(coll)
    assert m["sources"] == [str(src.resolve())]
    assert m["totals"]["instances_written"] == len(instances)


def test_a_folder_that_is_not_a_collection_is_refused(tmp_path: Path) -> None:
    from dynogen.errors import RunDirError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "stuff.txt").write_text("hi")
    with pytest.raises(RunDirError, match="not a collection"):
        Collection(tmp_path / "x").create()
    with pytest.raises(RunDirError, match="no collection"):
        Collection(tmp_path / "y").load()


def test_a_second_writer_is_refused(tmp_path: Path) -> None:

    coll = Collection(tmp_path / "c").create()
    with coll.locked():
        code = ("from dynogen.store.collection import Collection\n"
                f"with Collection({str(tmp_path / 'c')!r}).locked(): pass")
        import subprocess
        import sys

        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120)
    assert other.returncode != 0 and "LockedError" in other.stderr, other.stderr


def test_cli_grow_twice_then_export(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dynogen.cli.main import app
    from dynogen.testing import start_fake_process

    runner = CliRunner()
    coll = tmp_path / "coll"
    with start_fake_process(ready_timeout=120) as fake:
        args = ["grow", str(coll), "--source", "samples", "--base-url", fake.url, "--free",
                "--quiet", "--rows-per-split", "3", "--licenses", "any", "--languages", "any",
                "--splits", "all"]
        first = runner.invoke(app, args, catch_exceptions=False)
        assert first.exit_code == 0, first.output
        assert first.output.startswith("version 1:")
        again = runner.invoke(app, args, catch_exceptions=False)
        assert again.exit_code == 0
        assert again.output.startswith("nothing new:")
        assert fake.stats()["totals"]["requests"] == manifest(coll)["totals"]["requests_paid"]
    out = runner.invoke(app, ["export", "--collection", str(coll), "--format", "jsonl"],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    lines = (coll / "export" / "instances.jsonl").read_bytes().splitlines()
    assert len(lines) == manifest(coll)["totals"]["instances_written"] > 0
    est = runner.invoke(app, ["estimate", "--collection", str(coll), "--source", "samples",
                              "--json"], catch_exceptions=False)
    assert est.exit_code == 0 and orjson.loads(est.output)["requests"] == 0


async def test_an_unfinished_version_refuses_other_prompt_settings(tmp_path: Path) -> None:
    from dynogen.errors import RunDirError

    coll = tmp_path / "coll"
    fake = FakeOpenAI()
    async with serve(fake) as server:
        priced = cfg(server.url, free=False, price_in=1000.0, price_out=1000.0, max_in_flight=1)
        part = await agrow(coll, priced.with_(budget_usd=0.5), source=units(0, 6))
        assert part.exit_code == EXIT["budget"]
        with pytest.raises(RunDirError, match="version 1 of .* is unfinished"):
            await agrow(coll, priced.with_(max_tasks_per_unit=5), source=units(0, 6))


def test_a_hub_grow_lists_only_what_changed_since_the_last_version_started() -> None:
    from dynogen.collections.grow import open_grow_source

    src: Any = open_grow_source(Config(source="hub"), since="2026-01-01T00:00:00Z")
    assert src.options.modified_since.isoformat() == "2026-01-01T00:00:00+00:00"
    mine: Any = open_grow_source(Config(source="hub", hub_modified_since="2025-05-01"),
                                 since="2026-01-01T00:00:00Z")
    assert mine.options.modified_since.isoformat().startswith("2025-05-01")  # the flag wins


async def test_grow_in_batch_mode_matches_online_growth(tmp_path: Path) -> None:
    # A grow step is a run: in batch mode it submits Batch API jobs for the new units
    # alone, and the collection it grows is the one online growth writes.
    from dynogen.testing.fake_batches import FakeBatches

    fake = FakeOpenAI()
    batches = FakeBatches(fake, validating=0.01, in_progress=0.05, finalizing=0.01)
    async with serve(fake) as server:
        online = cfg(server.url)
        batch = online.with_(mode="batch", poll_seconds=0.05, batch_max_requests=4)
        for c, where in ((online, "online"), (batch, "batch")):
            first = await agrow(tmp_path / where, c, source=units(0, 4))
            assert first.exit_code == 0, first.message
        # Each collection has its own cache: the batch one submitted all 4 units x 2 variants.
        assert batches.counts()["lines_processed"] == 4 * 2
        for c, where in ((online, "online"), (batch, "batch")):
            second = await agrow(tmp_path / where, c, source=units(0, 7))
            assert second.exit_code == 0, second.message
    # The second step submitted the 3 new units alone, each request once.
    assert batches.counts()["lines_processed"] == 4 * 2 + 3 * 2
    assert batches.counts()["max_processed_per_custom_id"] == 1
    merged = {where: [t["id"] for t in Collection(tmp_path / where).load().iter_tasks()]
              for where in ("online", "batch")}
    assert merged["batch"] == merged["online"] != []
    assert [v["version"] for v in manifest(tmp_path / "batch")["versions"]] == [1, 2]


def test_cli_grow_takes_the_run_and_batch_settings(tmp_path: Path) -> None:
    # grow is a run: the settings that shape a run's storage and batches reach its Config.
    from click.testing import CliRunner

    from dynogen.cli.main import app

    runner = CliRunner()
    coll = str(tmp_path / "coll")
    bad = runner.invoke(app, ["grow", coll, "--durability", "never"])
    assert bad.exit_code == 1 and "--durability must be one of" in bad.output
    rounds = runner.invoke(app, ["grow", coll, "--mode", "batch", "--batch-rounds", "-1"])
    assert rounds.exit_code == 1 and "batch" in rounds.output.lower()
    assert not (tmp_path / "coll" / "versions").exists()
