"""Spoiled state (issue #12): a bad cache, manifest or journal is one line, never a traceback.

- A cache SQLite cannot open is moved aside (``cache.sqlite.corrupt-<time>``),
  a new one started, and the run goes on, saying how many answers it may pay
  for again.
- A manifest that cannot be read refuses with one line: what to do
  (``--force-new`` or restore it) and what is at stake.
- Garbage lines in the journals are counted in ``report.json`` and the
  records from there on redone; the output equals the clean run's.
- A resume whose identity (anything that shapes outputs) differs refuses and
  names the difference; ``dynogen build`` with another ``--rows-per-split``
  rebuilds instances rather than mixing them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from dynogen import api
from dynogen.config import Config, Secret
from dynogen.errors import RunDirError
from dynogen.testing import FakeProcess, start_fake_process
from tests.helpers import REPO, journals_consistent, run_env, same_output, write_source


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with start_fake_process(seed=4) as proc:
        yield proc


def config(src: Path, out: Path, url: str, **kw: object) -> Config:
    return Config(source=str(src), out=str(out), base_url=url, free=True, quiet=True,
                  max_in_flight=4, api_key=Secret("sk-test"), rows_per_split=4,
                  **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, fake: FakeProcess) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spoiled")
    write_source(root / "src", 6)
    outcome = api.run(config(root / "src", root / "ref", fake.url))
    assert outcome.exit_code == 0, outcome.message
    return root / "src", root / "ref"


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynogen", *args], capture_output=True,
                          text=True, timeout=120,
                          env=run_env(tmp, OPENAI_API_KEY="sk-test",
                                   PYTHONPATH=str(REPO)))


def test_a_cache_sqlite_cannot_open_is_moved_aside_and_the_run_goes_on(
        tmp_path: Path, clean: tuple[Path, Path], fake: FakeProcess) -> None:
    src, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "units.jsonl").write_bytes(b"")  # everything to redo: the answers would be free...
    (out / "cache.sqlite").write_bytes(b"this is not a database" * 100)  # ...but the cache died
    sent = fake.stats()["totals"]["requests"]
    r = cli("run", "--source", str(src), "--out", str(out), "--base-url", fake.url, "--free",
            "--quiet", "--rows-per-split", "4", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warning = [x for x in r.stderr.splitlines() if "could not be opened" in x]
    assert len(warning) == 1 and "moved aside to cache.sqlite.corrupt-" in warning[0], r.stderr
    assert "could not be counted" in warning[0] and "paid for again" in warning[0]
    assert len(list(out.glob("cache.sqlite.corrupt-*"))) == 1
    assert fake.stats()["totals"]["requests"] - sent == 12  # 6 units x 2 variants, paid again
    same_output(out, ref)
    assert "cache" in orjson.loads((out / "report.json").read_bytes())["repairs"]


def test_an_unreadable_manifest_gets_one_line_saying_what_to_do(
        tmp_path: Path, clean: tuple[Path, Path], fake: FakeProcess) -> None:
    src, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "manifest.json").write_bytes(b'{"dynogen_version": "0.1.0", "identi')
    argv = ("run", "--source", str(src), "--out", str(out), "--base-url", fake.url, "--free",
            "--quiet", "--rows-per-split", "4")
    r = cli(*argv, tmp=tmp_path)
    assert r.returncode == 1
    said = r.stderr.strip().splitlines()
    assert len(said) == 1, said
    line = said[0]
    assert "manifest.json cannot be read (not valid JSON)" in line
    assert "--force-new" in line and "Restore manifest.json" in line
    assert "6 committed units" in line and "tasks" in line  # what is at stake
    r = cli(*argv, "--force-new", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    same_output(out, ref)


@pytest.mark.parametrize("journal", ["units.jsonl", "builds.jsonl", "tasks.jsonl",
                                     "instances.jsonl", "spend.jsonl"])
def test_garbage_lines_in_a_journal_are_counted_and_redone_never_a_traceback(
        tmp_path: Path, clean: tuple[Path, Path], fake: FakeProcess, journal: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    src, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    rows = (out / journal).read_bytes().splitlines(keepends=True)
    mid = len(rows) // 2
    garbage = [b"\x00\x00\x00garbage{{{\n", b"[1, 2, 3]\n"]
    (out / journal).write_bytes(b"".join(rows[:mid] + garbage + rows[mid:]))
    outcome = api.run(config(src, out, fake.url))
    assert outcome.exit_code == 0, outcome.message
    same_output(out, ref)
    journals_consistent(out)
    repairs = orjson.loads((out / "report.json").read_bytes())["repairs"]
    if journal == "spend.jsonl":
        assert repairs["spend.jsonl"]["garbage_lines_skipped"] == 2
    else:
        owner = {"tasks.jsonl": "units.jsonl", "instances.jsonl": "builds.jsonl"}.get(
            journal, journal)
        assert repairs[owner]["dropped"] > 0 or repairs[owner]["garbage"] > 0
    assert "redone" in capsys.readouterr().err or journal == "spend.jsonl"


def test_a_resume_with_another_identity_refuses_and_says_what_differs(
        tmp_path: Path, clean: tuple[Path, Path], fake: FakeProcess) -> None:
    src, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    for change, name in ((dict(heldout_fraction=0.2), "heldout_fraction"),
                         (dict(max_tokens_retry=2000), "max_tokens_retry"),
                         (dict(rows_per_split=9), "rows_per_split")):
        with pytest.raises(RunDirError, match=rf"{name}: .* -> ") as e:
            api.run(config(src, out, fake.url).with_(**change))  # type: ignore[arg-type]
        assert "--force-new" in str(e.value)
    # The prompts themselves are part of the identity, whatever the config says.
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    manifest["identity"]["prompts"] = "0123456789abcdef"
    (out / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(RunDirError, match="the prompts, few-shot examples or schema changed"):
        api.run(config(src, out, fake.url))


def test_build_with_another_rows_per_split_rebuilds_instead_of_mixing(
        tmp_path: Path, clean: tuple[Path, Path], fake: FakeProcess) -> None:
    src, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = len((out / "instances.jsonl").read_bytes().splitlines())
    outcome = api.build(out, rows_per_split=2, quiet=True)
    assert outcome.exit_code == 0
    rows = [orjson.loads(x) for x in (out / "instances.jsonl").read_bytes().splitlines()]
    assert 0 < len(rows) < before
    assert outcome.report["instances"]["written"] == len(rows)
    with pytest.raises(RunDirError, match="rows_per_split: 2 -> 4"):
        api.run(config(src, out, fake.url))  # the run now holds rows_per_split=2


def test_journals_without_a_manifest_are_not_adopted_silently(
        tmp_path: Path, clean: tuple[Path, Path], fake: FakeProcess) -> None:
    src, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "manifest.json").unlink()
    with pytest.raises(RunDirError, match=r"manifest.json cannot be read \(it is missing\)"):
        api.run(config(src, out, fake.url))
    outcome = api.run(config(src, out, fake.url, force_new=True))
    assert outcome.exit_code == 0
    same_output(out, ref)
