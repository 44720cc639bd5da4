"""Runs over Hub datasets: the instance stage beside the task stage, transient versus final.

Real runs (``arun``) against the fake LLM and the fake Hub over HTTP:

- building beside the task stage writes ``instances.jsonl`` and ``builds.jsonl``
  byte for byte as a build after it does, local folders and Hub datasets mixed;
- a 429 or 503 is retried; a unit whose rows stay unreachable is journaled
  ``retryable`` (in the gate and in the builder alike), counted by reason, and
  the next resume builds it, while not-found and gated stay final unless
  ``retry_skipped`` names them; a token with access then reads the gated one,
  and the token is in no file the run writes;
- a build line on disk whose unit line is not (a kill between two syncs) is cut
  on resume and rebuilt to the same bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from huggingface_hub import constants

from dynogen.api import EXIT, arun, build
from dynogen.config import Config
from dynogen.io.hub import HubSource
from dynogen.io.hub_options import HubOptions
from dynogen.testing import FakeOpenAI, serve
from dynogen.testing.fake_hub import FakeHub, HubServer, synthetic_hub
from dynogen.units import Skipped, Unit
from tests.helpers import REPO, lines
from tests.instances.rowsets import TOKEN, hub_unit, shard

SAMPLES = REPO / "dynogen" / "data" / "samples"
PARQUET = "convert/parquet/default/train/0000.parquet|"

def journal(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines(path)]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-dynogen-test")  # no stored login
    yield monkeypatch


def config(source: str, out: Path, llm: str, hub: HubServer, **kw: Any) -> Config:
    return Config(source=source, out=str(out), base_url=llm, free=True, quiet=True,
                  max_in_flight=8, hub_viewer_url=hub.viewer_url, hub_rpm=None, **kw)


# ----------------------------------------------------------------------- overlap
async def test_building_beside_the_task_stage_writes_what_a_build_after_it_writes(
        online: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeHub()
    units = [hub_unit(fake, f"org/set{i:02d}", rows_of=f"thing {i % 5}") for i in range(16)]
    local = tmp_path / "cafe_reviews"
    shutil.copytree(SAMPLES / "cafe_reviews", local)  # a local folder among them
    from dynogen.io.folder import FolderSource

    units[7:7] = [u for u in FolderSource(tmp_path) if isinstance(u, Unit)]
    src = shard(tmp_path / "units.jsonl", units)
    with fake.running() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        async with serve(FakeOpenAI()) as llm:
            beside = await arun(config(src, tmp_path / "beside", llm.url, hub))
            after = await arun(config(src, tmp_path / "after", llm.url, hub), build=False)
        assert after.exit_code == EXIT["ok"], after.message
        assert lines(tmp_path / "after" / "instances.jsonl") == []
        built = build(tmp_path / "after", handle_signals=False, quiet=True)
    assert beside.exit_code == built.exit_code == EXIT["ok"], beside.message
    assert beside.report["session"]["instance_stage"]["overlapped"] is True
    for name in ("tasks.jsonl", "instances.jsonl", "builds.jsonl"):
        assert (tmp_path / "beside" / name).read_bytes() == \
            (tmp_path / "after" / name).read_bytes(), name
    report = beside.report["instances"]
    assert report["units_by_status"] == {"built": 17}
    assert report["duplicates"] > 0  # rows shared across datasets: dedup order mattered


# ---------------------------------------------------------------- transient/final
async def test_transient_is_retried_then_retryable_and_built_on_resume_final_stays_final(
        online: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeHub()
    units = [
        hub_unit(fake, "org/fine"),
        hub_unit(fake, "org/blip"),              # 429 then 503, then fine: retried
        hub_unit(fake, "org/down"),              # 503 for every retry: retryable
        hub_unit(fake, "org/none", stored=False),  # no such dataset: final
        hub_unit(fake, "org/gated"),             # gated, no token: final
        hub_unit(fake, "org/unchecked", samples=False),  # the gate reads it: 503s
    ]
    fake.gate("org/gated", TOKEN)
    fake.transient[PARQUET + "org/blip"] = [429, 503]
    fake.transient[PARQUET + "org/down"] = [503] * 6  # the first try and 5 retries
    fake.transient["rows|org/unchecked"] = [503] * 6  # the gate's check: one viewer page
    src = shard(tmp_path / "units.jsonl", units)
    out = tmp_path / "run"
    with fake.running() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        async with serve(FakeOpenAI()) as llm:
            cfg = config(src, out, llm.url, hub)
            first = await arun(cfg)
            assert first.exit_code == EXIT["ok"], first.message
            u, i = first.report["units"], first.report["instances"]
            assert u["retryable_by_reason"] == {"rows_server_error": 1}
            assert i["retryable_by_reason"] == {"server_error": 1}
            assert i["units_by_status"] == {"built": 2, "retryable": 1, "unavailable": 2}
            final = {r["key"]: r["reason"] for r in journal(out / "builds.jsonl")
                     if r["status"] == "unavailable"}
            assert final == {"org/none::default": "not_found", "org/gated::default": "gated"}
            built_before = len(lines(out / "instances.jsonl"))

            fake.requests.clear()
            second = await arun(cfg)  # the same command: only the retryable ones again
            assert second.exit_code == EXIT["ok"], second.message
            asked = {q.path.split("/")[3] if q.path.startswith("/datasets/")
                     else dict(q.query).get("dataset", "") for q in fake.requests}
            assert "none" not in str(asked) and "gated" not in str(asked)
            u, i = second.report["units"], second.report["instances"]
            assert u["retryable"] == 0 and i["retryable_by_reason"] == {}
            assert i["units_by_status"] == {"built": 4, "unavailable": 2}
            rows = journal(out / "instances.jsonl")
            # what was retried comes after what was built before it
            assert {r["dataset"] for r in rows[built_before:]} == {"org/down", "org/unchecked"}

            # access granted later: --retry-skipped gated reads it, with the token
            online.setenv("HF_TOKEN", TOKEN)
            third = await arun(cfg.with_(retry_skipped=("gated",)))
            assert third.report["instances"]["units_by_status"] == {"built": 5,
                                                                    "unavailable": 1}
    assert any(r["dataset"] == "org/gated" for r in journal(out / "instances.jsonl"))
    for p in out.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


async def test_a_clean_run_and_a_run_with_blips_hold_the_same_instances(
        online: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeHub()
    units = [hub_unit(fake, f"org/s{i}") for i in range(8)]
    src = shard(tmp_path / "units.jsonl", units)
    with fake.running() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        async with serve(FakeOpenAI()) as llm:
            clean = await arun(config(src, tmp_path / "clean", llm.url, hub))
            for i in (1, 4, 6):
                fake.transient[PARQUET + f"org/s{i}"] = [503] * 6
            blips = await arun(config(src, tmp_path / "blips", llm.url, hub))
            assert blips.report["instances"]["retryable_by_reason"] == {"server_error": 3}
            resumed = await arun(config(src, tmp_path / "blips", llm.url, hub))
    assert clean.exit_code == resumed.exit_code == EXIT["ok"]
    got, want = lines(tmp_path / "blips" / "instances.jsonl"), \
        lines(tmp_path / "clean" / "instances.jsonl")
    assert got != want and sorted(got) == sorted(want)  # later in the file, the same lines


# ------------------------------------------------------------------------ safety
async def test_a_build_line_whose_unit_line_was_lost_is_cut_and_rebuilt_the_same(
        online: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeHub()
    units = [hub_unit(fake, f"org/k{i}", rows_of=f"kind {i % 3}") for i in range(10)]
    src = shard(tmp_path / "units.jsonl", units)
    with fake.running() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        async with serve(FakeOpenAI()) as llm:
            ref = await arun(config(src, tmp_path / "ref", llm.url, hub))
            out = tmp_path / "cut"
            shutil.copytree(tmp_path / "ref", out)
            # Built beside the task stage, a unit's build line can reach the disk before
            # its unit line (each journal syncs on its own): a kill there leaves this.
            units_lines = lines(out / "units.jsonl")
            (out / "units.jsonl").write_bytes(b"\n".join(units_lines[:6]) + b"\n")
            again = await arun(config(src, out, llm.url, hub))
    assert ref.exit_code == again.exit_code == EXIT["ok"], again.message
    repairs = orjson.loads((out / "report.json").read_bytes())["repairs"]
    assert repairs["builds.jsonl"]["dropped"] == 4
    for name in ("tasks.jsonl", "instances.jsonl", "builds.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


# ------------------------------------------------------------------------ gated
def test_a_gated_dataset_is_listed_with_a_token_that_has_access(
        online: pytest.MonkeyPatch) -> None:
    fake, expected = synthetic_hub(60, seed=5)
    gated = sorted(k for k, v in expected.items() if v == "gated")
    assert gated
    fake.gate(gated[0], TOKEN)
    for repo in gated[1:]:
        fake.gate(repo)  # nobody has access
    with fake.running() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        opts = HubOptions(endpoint=hub.url, viewer_url=hub.viewer_url, rpm=None)
        anon = {i.dataset: i for i in HubSource(options=opts)}
        online.setenv("HF_TOKEN", TOKEN)
        tokened = {i.dataset: i for i in HubSource(options=opts)}
    assert all(isinstance(anon[r], Skipped) and anon[r].reason == "gated" for r in gated)
    assert isinstance(tokened[gated[0]], Unit)
    assert all(isinstance(tokened[r], Skipped) and tokened[r].reason == "gated"
               for r in gated[1:])
    asked = [q for q in fake.requests if gated[0] in q.path or
             dict(q.query).get("dataset") == gated[0]]
    assert asked and all(q.authorized for q in asked)
