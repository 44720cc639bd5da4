"""``dynogen publish`` against the fake Hub commit API, driving the real ``huggingface_hub``.

The fake is local, so each test lifts offline mode for itself (``HF_HUB_OFFLINE=1``
is read by ``huggingface_hub`` at import, hence ``constants``, as ``test_io_hub``
does) and turns Xet off (the fake speaks the LFS basic transfer, not Xet).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard, HfApi, constants

import dynogen
from dynogen.errors import PublishError, RestrictedLicenseError
from dynogen.instances.provenance import DataFacts, Target, folder_citation
from dynogen.instances.shards import write_shards
from dynogen.io.sources import samples_dir
from dynogen.policy.licenses import strictest_class
from dynogen.testing import FakeHubCommits
from tests.helpers import shard_instances

TOKEN = "hf_dynogen_test_token_7f3a9c"  # a unique string, searched for on disk and in logs
LICENSES = {"cafe": "apache-2.0", "wiki_qa": "cc-by-sa-4.0", "forum": "cc-by-nc-4.0",
            "mystery": None, "boolq": "cc-by-sa-3.0"}


# ---------------------------------------------------------------------------- fixtures
def instance(dataset: str, i: int, *, heldout: bool = False) -> dict[str, Any]:
    return {"instruction": f"Answer about {dataset}.", "input": f"row {i} of {dataset} ☕",
            "output": f"answer {i % 3}", "task_id": f"{dataset}-t{int(heldout)}",
            "dataset": dataset, "config": "default", "split": "train",
            "license": LICENSES[dataset], "task_split": "heldout" if heldout else "train"}


def make_run(path: Path, datasets: dict[str, int], *, heldout: int = 0,
             source: str = "/nonexistent") -> Path:
    """A run directory as ``dynogen run`` leaves it (the files a card reads)."""
    path.mkdir(parents=True)
    rows = [instance(d, i) for d, n in datasets.items() for i in range(n)]
    rows += [instance(d, i, heldout=True) for d in datasets for i in range(heldout)]
    (path / "instances.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    identity = {"model": "gpt-4o-mini", "prompts": "af1a7d06c92ce4db", "licenses": "any",
                "languages": "en", "splits": "train,validation", "max_share": None,
                "heldout_fraction": 0.2, "rows_per_split": 200, "judge": False,
                "variants": ["description"], "max_tasks_per_unit": 3}
    manifest = {"dynogen_version": "0.1.0", "identity": identity, "fingerprint": "b81769e259c4",
                "config": {"source": source, "mode": "online", **identity}}
    report = {"units": {"seen": 9, "processed": 6, "skipped": 3, "failed": 0,
                        "skipped_by_reason": {"license_no_derivatives": 2, "media_fields": 1}},
              "tasks": {"generated": 14, "kept": 10, "dropped": 4,
                        "dropped_by_reason": {"id_like_inputs_only": 3, "constant_output": 1}},
              "instances": {"written": len(rows), "duplicates": 2, "truncated_around_answer": 1,
                            "skipped_by_reason": {"input_too_long": 5}},
              "requests_paid": 12, "cost": {"spent_usd_total": 0.0123}}
    (path / "manifest.json").write_bytes(orjson.dumps(manifest))
    (path / "report.json").write_bytes(orjson.dumps(report))
    return path


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline mode lifted and Xet off for this test; HF_TOKEN is the test token."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def hub(online: None) -> Iterator[tuple[FakeHubCommits, str]]:
    fake = FakeHubCommits(token=TOKEN)
    with fake.running() as url:
        yield fake, url


def shard_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def download(url: str, repo: str, path: str, dest: Path) -> Path:
    return Path(HfApi(endpoint=url).hf_hub_download(repo, path, repo_type="dataset",
                                                    local_dir=dest))


# ------------------------------------------------------------------------ local parts
def test_shards_are_the_same_bytes_for_the_same_instances_laid_out_by_class_and_split(
        tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", {"cafe": 23, "forum": 7, "mystery": 4}, heldout=3)
    records = list(Target.open(run).records())
    one = write_shards(records, tmp_path / "a", rows_per_shard=10, row_group_rows=4)
    two = write_shards(records, tmp_path / "b", rows_per_shard=10, row_group_rows=4)
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    assert [s.path for s in one] == [s.path for s in two] == [
        "data/non-commercial/heldout-00000.parquet", "data/non-commercial/train-00000.parquet",
        "data/permissive/heldout-00000.parquet", "data/permissive/train-00000.parquet",
        "data/permissive/train-00001.parquet", "data/permissive/train-00002.parquet",
        "data/unknown/heldout-00000.parquet", "data/unknown/train-00000.parquet"]
    first = pq.ParquetFile(tmp_path / "a" / "data/permissive/train-00000.parquet")
    assert [first.metadata.row_group(i).num_rows for i in range(first.num_row_groups)] == [4, 4, 2]
    rows = [r for s in one for r in pq.read_table(tmp_path / "a" / s.path).to_pylist()]
    assert len(rows) == len(records) and sum(s.rows for s in one) == len(records)
    assert {r["task_split"] for r in rows if r["task_id"].endswith("t1")} == {"heldout"}
    assert {(r["dataset"], r["license_class"]) for r in rows} == {
        ("cafe", "permissive"), ("forum", "non-commercial"), ("mystery", "unknown")}


def test_licence_classes_and_citations(tmp_path: Path) -> None:
    assert strictest_class("mit, cc-by-nc-4.0") == "non-commercial"
    assert strictest_class("CC BY-SA 4.0") == "share-alike"
    assert strictest_class(None) == strictest_class("") == "unknown"
    assert folder_citation(samples_dir(), "boolq").startswith("@inproceedings{clark2019boolq")
    assert folder_citation(samples_dir(), "cafe_reviews") == ""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "dataset_infos.json").write_text('{"default": {"citation": "@misc{x}"}}')
    (tmp_path / "root").mkdir()
    assert folder_citation(tmp_path, "outside") == "@misc{x}"
    assert folder_citation(tmp_path / "root", "../outside") == ""  # nothing outside the root


def test_card_of_mixed_licences(tmp_path: Path) -> None:
    from dynogen.instances.card import card_text

    run = make_run(tmp_path / "run", {"cafe": 5, "wiki_qa": 3, "forum": 2, "boolq": 2},
                   heldout=1, source="samples")
    target = Target.open(run)
    facts = DataFacts.scan(target.records(), citations=target.citations)
    text = card_text(target, facts, repo="org/mixed")
    assert text == card_text(target, facts, repo="org/mixed")  # no timestamps
    card = DatasetCard(text)
    assert card.data.license == ["apache-2.0", "cc-by-nc-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0"]
    assert card.data.source_datasets == ["boolq", "cafe", "forum", "wiki_qa"]
    configs = {c["config_name"]: c for c in card.data.to_dict()["configs"]}
    assert list(configs) == ["default", "non-commercial", "permissive", "share-alike"]
    assert configs["default"]["data_files"] == [
        {"split": "train", "path": "data/*/train-*.parquet"},
        {"split": "heldout", "path": "data/*/heldout-*.parquet"}]
    assert configs["share-alike"]["data_files"][0]["path"] == "data/share-alike/train-*.parquet"
    assert "forum (cc-by-nc-4.0, non-commercial)" in card.text  # the warning names it
    assert "@inproceedings{clark2019boolq" in card.text  # boolq's citation, from the samples
    for shown in ("gpt-4o-mini", "b81769e259c4", "af1a7d06c92ce4db", "id_like_inputs_only 3",
                  "license_no_derivatives 2", "input_too_long 5", "$0.0123"):
        assert shown in card.text, shown


def test_a_sharded_run_stages_the_same_files_and_card(tmp_path: Path) -> None:
    from dynogen.errors import RunDirError
    from dynogen.publishing.stage import stage

    run = make_run(tmp_path / "run", {"cafe": 23, "forum": 7, "mystery": 4}, heldout=3)
    want = stage(Target.open(run), tmp_path / "a", repo="org/x")
    shard_instances(run)  # the same instances, as a sharded build leaves them
    assert not (run / "instances.jsonl").exists()
    got = stage(Target.open(run), tmp_path / "b", repo="org/x")
    assert got.card == want.card and got.facts.total == want.facts.total == 43
    assert [(f.path, f.sha256) for f in got.files] == [(f.path, f.sha256) for f in want.files]
    assert shard_files(tmp_path / "b") == shard_files(tmp_path / "a")
    (run / "instances" / "part-00000.parquet").unlink()
    with pytest.raises(RunDirError, match=r"no instances .*`dynogen build`"):
        Target.open(run)


# ------------------------------------------------------------------ against the fake
def test_fresh_publish_is_private_and_its_card_loads(hub: tuple[FakeHubCommits, str],
                                                     tmp_path: Path) -> None:
    fake, url = hub
    run = make_run(tmp_path / "run", {"cafe": 30, "wiki_qa": 12}, heldout=4)
    result = dynogen.publish(run, repo="org/fresh", endpoint=url, rows_per_shard=10)
    shards = [f for f in result.files if f.path.startswith("data/")]
    assert result.created and result.private and result.commit
    assert fake.repos["org/fresh"].private
    assert fake.commits == 1 and fake.uploads == len(shards) == 7
    assert fake.lfs_bytes == sum(f.size for f in shards)
    assert fake.bytes_uploaded == result.bytes_to_upload
    assert not list(run.glob(".dynogen-publish-*"))  # staging removed
    card = DatasetCard.load(download(url, "org/fresh", "README.md", tmp_path / "dl"))
    assert card.data.license == ["apache-2.0", "cc-by-sa-4.0"]
    assert card.data.source_datasets == ["cafe", "wiki_qa"]
    assert card.data.size_categories == ["n<1K"] and card.data.language == ["en"]
    assert card.data.task_categories == ["text-generation"]
    rows = [r for f in shards
            for r in pq.read_table(download(url, "org/fresh", f.path, tmp_path / "dl")).to_pylist()]
    assert sorted(r["input"] for r in rows) == sorted(
        orjson.loads(x)["input"] for x in (run / "instances.jsonl").read_bytes().splitlines())


def test_unchanged_publish_sends_nothing_and_makes_no_commit(hub: tuple[FakeHubCommits, str],
                                                              tmp_path: Path) -> None:
    fake, url = hub
    run = make_run(tmp_path / "run", {"cafe": 25})
    dynogen.publish(run, repo="org/same", endpoint=url, rows_per_shard=10)
    before = fake.counters()
    again = dynogen.publish(run, repo="org/same", endpoint=url, rows_per_shard=10)
    assert again.commit is None and again.count("upload") == 0
    assert again.count("unchanged") == len(again.files) == 4
    assert fake.counters() == before  # 0 bytes, 0 commits
    assert "nothing changed" in again.summary()


def test_changed_layout_replaces_stale_shards_and_keeps_other_files(
        hub: tuple[FakeHubCommits, str], tmp_path: Path) -> None:
    fake, url = hub
    run = make_run(tmp_path / "run", {"cafe": 25})
    dynogen.publish(run, repo="org/grow", endpoint=url, rows_per_shard=5)
    repo = fake.repos["org/grow"]
    repo.files["data/notes.csv"] = repo.files[".gitattributes"]  # a file the user added
    result = dynogen.publish(run, repo="org/grow", endpoint=url, rows_per_shard=10)
    assert result.count("delete") == 2 and fake.commits == 2
    assert sorted(repo.files) == [".gitattributes", "README.md", "data/notes.csv",
                                  "data/permissive/train-00000.parquet",
                                  "data/permissive/train-00001.parquet",
                                  "data/permissive/train-00002.parquet"]


def test_publish_killed_midway_resumes_without_sending_anything_twice(
        hub: tuple[FakeHubCommits, str], tmp_path: Path) -> None:
    fake, url = hub
    run = make_run(tmp_path / "run", {"cafe": 40, "wiki_qa": 20})
    fake.cut_after = 3  # three uploads go through, every later one is cut off
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",)}
    env.update(HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"),
               PYTHONPATH=os.pathsep.join(sys.path))
    code = (f"import dynogen; dynogen.publish({str(run)!r}, repo='org/resume', "
            f"endpoint={url!r}, rows_per_shard=6)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (fake.cuts == 0 or fake.uploads < 3) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.cuts >= 1, "the publish never reached the cut"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert fake.uploads == 3 and fake.commits == 0  # killed midway: nothing committed
    sent_before = dict(fake.uploads_by_oid)
    fake.cut_after = None
    result = dynogen.publish(run, repo="org/resume", endpoint=url, rows_per_shard=6)
    shards = {f.sha256: f.size for f in result.files if f.path.startswith("data/")}
    assert len(shards) == 11 and fake.commits == 1
    assert set(fake.uploads_by_oid) == {("org/resume", oid) for oid in shards}
    assert all(n == 1 for n in fake.uploads_by_oid.values())  # nothing uploaded twice
    assert fake.lfs_bytes == sum(shards.values())
    resumed = sum(size for oid, size in shards.items() if ("org/resume", oid) not in sent_before)
    assert resumed < sum(shards.values())  # the resume sent only what was missing


def test_public_push_of_restricted_licences_needs_the_flag(hub: tuple[FakeHubCommits, str],
                                                          tmp_path: Path) -> None:
    fake, url = hub
    run = make_run(tmp_path / "run", {"cafe": 5, "forum": 3, "mystery": 2})
    with pytest.raises(RestrictedLicenseError) as err:
        dynogen.publish(run, repo="org/open", endpoint=url, public=True)
    assert "forum (cc-by-nc-4.0: non-commercial)" in str(err.value)
    assert "mystery (no licence: unknown)" in str(err.value)
    assert "cafe" not in str(err.value) and "--allow-restricted-licenses" in str(err.value)
    assert not fake.repos and fake.counters()["bytes_uploaded"] == 0
    private = dynogen.publish(run, repo="org/closed", endpoint=url)  # private: allowed
    assert private.private and fake.repos["org/closed"].private
    public = dynogen.publish(run, repo="org/open", endpoint=url, public=True,
                             allow_restricted_licenses=True)
    assert public.private is False and not fake.repos["org/open"].private
    more = make_run(tmp_path / "more", {"cafe": 6, "forum": 4})
    with pytest.raises(RestrictedLicenseError):  # the repository is public already
        dynogen.publish(more, repo="org/open", endpoint=url)


def test_dry_run_sends_nothing_and_shows_files_and_card(hub: tuple[FakeHubCommits, str],
                                                        tmp_path: Path) -> None:
    fake, url = hub
    run = make_run(tmp_path / "run", {"cafe": 12})
    dry = dynogen.publish(run, repo="org/dry", endpoint=url, dry_run=True, rows_per_shard=5)
    assert dry.dry_run and dry.remote_checked and dry.commit is None
    assert [(f.path, f.action) for f in dry.files] == [
        ("README.md", "upload"), ("data/permissive/train-00000.parquet", "upload"),
        ("data/permissive/train-00001.parquet", "upload"),
        ("data/permissive/train-00002.parquet", "upload")]
    assert all(len(f.sha256) == 64 and f.size > 0 for f in dry.files)
    assert DatasetCard(dry.card).data.source_datasets == ["cafe"]
    assert not fake.repos and fake.counters() == FakeHubCommits().counters()
    assert {m for m, _, _ in fake.requests} == {"GET"}
    real = dynogen.publish(run, repo="org/dry", endpoint=url, rows_per_shard=5)
    assert [(f.path, f.sha256) for f in real.files] == [(f.path, f.sha256) for f in dry.files]
    assert real.card == dry.card


def test_dry_run_offline_lists_everything_without_reading_the_repo(tmp_path: Path) -> None:
    assert constants.HF_HUB_OFFLINE  # the suite's setting
    run = make_run(tmp_path / "run", {"cafe": 3})
    dry = dynogen.publish(run, repo="org/x", dry_run=True)
    assert not dry.remote_checked and dry.private is None and dry.count("upload") == 2
    assert "HF_HUB_OFFLINE" in dry.summary()
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set"):
        dynogen.publish(run, repo="org/x")


def test_hf_token_never_reaches_disk_or_logs(hub: tuple[FakeHubCommits, str], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    fake, url = hub
    caplog.set_level(logging.DEBUG)
    run = make_run(tmp_path / "run", {"cafe": 8})
    results = [dynogen.publish(run, repo="org/t", endpoint=url, dry_run=True),
               dynogen.publish(run, repo="org/t", endpoint=url)]
    download(url, "org/t", "README.md", tmp_path / "dl")
    fake.token = "hf_another_token"  # the Hub now refuses ours
    with pytest.raises(PublishError) as refused:
        dynogen.publish(make_run(tmp_path / "run2", {"cafe": 9}), repo="org/t", endpoint=url)
    assert "token" in str(refused.value)
    assert any(authed for m, _, authed in fake.requests if m == "POST")  # it was sent
    secret = TOKEN.encode()
    on_disk = [p for p in tmp_path.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert on_disk == []
    out, err = capfd.readouterr()
    texts = [caplog.text, out, err, str(refused.value),
             *[orjson.dumps(r.to_dict()).decode() + r.summary() for r in results]]
    assert not any(TOKEN in t for t in texts)


# ------------------------------------------------------------------- export and grow
def test_export_writes_the_card_beside_without_clobbering(tmp_path: Path) -> None:
    import datasets

    run = make_run(tmp_path / "run", {"cafe": 4, "forum": 2})
    parquet = dynogen.export(run)
    card = DatasetCard.load(parquet.parent / "README.md")
    assert card.data.source_datasets == ["cafe", "forum"] and "configs" not in card.data
    folder = dynogen.export(run, fmt="datasets")
    assert DatasetCard.load(folder / "README.md").data.license == ["apache-2.0", "cc-by-nc-4.0"]
    assert datasets.load_from_disk(str(folder)).num_rows == 6
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("# my project\n")
    out = dynogen.export(run, dest=mine / "data.parquet")
    assert (mine / "README.md").read_text() == "# my project\n"
    assert DatasetCard.load(out.with_name("data.parquet.README.md")).data.source_datasets


async def test_collection_publishes_its_merged_view_with_versions(
        hub: tuple[FakeHubCommits, str], tmp_path: Path) -> None:
    import shutil

    from dynogen.api import agrow
    from dynogen.config import Config
    from dynogen.testing import FakeOpenAI, serve

    fake_hub, url = hub
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(samples_dir() / "cafe_reviews", src / "cafe_reviews")
    coll = tmp_path / "coll"
    async with serve(FakeOpenAI()) as server:
        cfg = Config(source=str(src), base_url=server.url, model="gpt-4o-mini", quiet=True,
                     free=True, rows_per_split=5, retry_base_delay=0.01)
        assert (await agrow(coll, cfg)).exit_code == 0
        shutil.copytree(samples_dir() / "science_quiz", src / "science_quiz")
        assert (await agrow(coll, cfg)).exit_code == 0
    result = dynogen.publish(coll, repo="org/coll", endpoint=url)
    shard = next(f for f in result.files if f.path.startswith("data/"))
    table = pq.read_table(download(url, "org/coll", shard.path, tmp_path / "dl"))
    assert sorted(set(table.column("version").to_pylist())) == [1, 2]
    card = DatasetCard(result.card)
    assert card.data.source_datasets == ["cafe_reviews", "science_quiz"]
    assert "| version 1 | version 2 |" in card.text
    assert fake_hub.commits == 1


def test_a_source_whose_configs_differ_in_licence_is_in_its_strictest_class(
        tmp_path: Path) -> None:
    rows = [dict(instance("cafe", 0), config="a", license="mit"),
            dict(instance("cafe", 1), config="b", license="cc-by-nc-4.0"),
            dict(instance("cafe", 2), config="c", license=None)]
    facts = DataFacts.scan(rows)
    (src,) = facts.sources.values()
    assert src.license == "cc-by-nc-4.0, mit" and src.license_class == "unknown"
    assert src.configs == {"a", "b", "c"} and src.unlicensed
    assert sorted(facts.rows.items()) == [(("non-commercial", "train"), 1),
                                          (("permissive", "train"), 1),
                                          (("unknown", "train"), 1)]


def test_a_target_being_written_is_not_published(tmp_path: Path) -> None:
    from dynogen.errors import LockedError

    run = make_run(tmp_path / "run", {"cafe": 3})
    code = ("import sys, time; from dynogen.store.lock import RunLock; "
            "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match="one writer at a time"):
            dynogen.publish(run, repo="org/x", dry_run=True)
    finally:
        holder.kill()
        holder.wait(10)
    assert dynogen.publish(run, repo="org/x", dry_run=True).count("upload") == 2


def test_a_licence_the_hub_does_not_know_is_published_as_other(tmp_path: Path) -> None:
    from dynogen.instances.card import card_text

    run = make_run(tmp_path / "run", {"cafe": 2, "mystery": 1})
    rows = (run / "instances.jsonl").read_bytes().replace(b'"license":"apache-2.0"',
                                                           b'"license":"Acme Data Terms"')
    (run / "instances.jsonl").write_bytes(rows)
    target = Target.open(run)
    card = DatasetCard(card_text(target, DataFacts.scan(target.records())))
    assert card.data.license == ["other", "unknown"]
    assert "Licences table" in card.data.license_details
    assert "| cafe | default | acme-data-terms | unknown |" in card.text


def test_the_cli_dry_run_prints_the_files_and_the_card(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dynogen.cli.main import app

    run = make_run(tmp_path / "run", {"cafe": 12})
    res = CliRunner().invoke(app, ["publish", str(run), "--repo", "org/cli", "--dry-run",
                                   "--rows-per-shard", "5", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "upload" in res.output and "README.md" in res.output
    assert "data/permissive/train-00000.parquet" in res.output
    assert "source_datasets:" in res.output and "- cafe" in res.output
    bad = CliRunner().invoke(app, ["publish", str(run), "--dry-run"])
    assert bad.exit_code == 2 and "--repo" in bad.output
