"""A run survives ``kill -9`` and faulty servers (issue #4).

The kill test SIGKILLs ``dynogen run`` at random moments against a fake
server with some latency (so kills land mid-flight), restarts it each time,
and compares the final output with an uninterrupted run of the same inputs:
same tasks and instances (as sets), no line twice, no line missing, the same
report totals, and no answered request paid twice beyond those in flight at
each kill. The CLI runs in processes forked from a forkserver that has
already imported dynogen, so a restart costs ~0.1 s instead of ~1.5 s of
imports; the process killed is the real CLI all the same.

The fault test runs against a server whose answers fail in every way it
knows and checks that every unit of the source is accounted for.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dynogen.api import arun
from dynogen.config import Config, Secret
from dynogen.io.folder import FolderSource
from dynogen.testing import FAULT_KINDS, FakeOpenAI, FakeProcess, Fault, serve, start_fake_process
from dynogen.units import Field, Skipped, SkipReason, Unit
from tests.helpers import wait_until

MAX_IN_FLIGHT = 3
KILLS = 20

# ---------------------------------------------------------------------------- the source


def _card(features: str, *, data: bool = True, body: str = "") -> str:
    configs = ("configs:\n- config_name: default\n  data_files:\n  - split: train\n"
               "    path: data/train.jsonl\n") if data else ""
    return f"---\nlicense: mit\ndataset_info:\n  features:\n{features}{configs}---\n\n{body}\n"


_TEXT_LABEL = """  - name: {text}
    dtype: string
  - name: topic
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': no
          '1': yes
"""


def write_source(root: Path, n: int = 40) -> list[str]:
    """``n`` dataset folders under ``root``; returns the dataset ids, in source order.

    Most have rows; a few have no data files, one has an image column (skipped),
    one a broken YAML header (skipped, invalid metadata), one a unicode field name,
    one lists its config twice.
    """
    names = []
    for i in range(n):
        name = f"ds_{i:03d}"
        names.append(name)
        d = root / name
        (d / "data").mkdir(parents=True)
        text = "texte_é" if i == 7 else f"text_{i}"
        if i == 11:
            (d / "README.md").write_text("---\nlicense: [mit\ndataset_info: {\n---\n\nBroken.\n")
            continue
        if i == 13:
            feats = "  - name: image\n    dtype: image\n  - name: caption\n    dtype: string\n"
            (d / "README.md").write_text(_card(feats))
            continue
        has_rows = i % 9 != 4
        body = f"# Set {i}\n\nShort sentences about subject {i}, with a topic and a label."
        card = _card(_TEXT_LABEL.format(text=text), data=has_rows, body=body)
        if i == 17:  # the card lists its config twice: one unit and one counted duplicate
            entry = "- config_name: default\n  features:\n" + _TEXT_LABEL.format(text=text)
            card = card.replace("dataset_info:\n  features:\n" + _TEXT_LABEL.format(text=text),
                                "dataset_info:\n" + entry + entry)
        (d / "README.md").write_text(card)
        if has_rows:
            rows = [{text: f"sentence {j} about subject {i}", "topic": "abc"[(i + j) % 3],
                     "label": (i + j) % 2} for j in range(6)]
            (d / "data" / "train.jsonl").write_text(
                "".join(orjson.dumps(r).decode() + "\n" for r in rows))
    return names


def source_items(root: Path) -> Counter[str]:
    """How many times each ``dataset::config`` comes out of the source (repeats included)."""
    return Counter(item.key for item in FolderSource(root))


def journal_items(out: Path) -> Counter[str]:
    """The same count over ``units.jsonl`` (a failed unit redone on resume has a second
    line under the same journal key; the last one counts)."""
    last = {r["key"]: r for r in map(orjson.loads, lines(out / "units.jsonl"))}
    return Counter(f"{r['dataset']}::{r['config']}" for r in last.values())


# ---------------------------------------------------------------------------- running the CLI


def _cli(argv: list[str], env: dict[str, str]) -> None:
    os.environ.update(env)
    from dynogen.cli.main import main

    main(argv)


@pytest.fixture(scope="module")
def launcher() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["dynogen.cli.main", "datasets"])
    return ctx


def run_argv(source: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["run", "--source", str(source), "--out", str(out), "--base-url", url, "--free",
            "--quiet", "--max-in-flight", str(MAX_IN_FLIGHT), *extra]


def run_to_end(ctx: Any, argv: list[str], timeout: float = 60.0) -> int:
    p = ctx.Process(target=_cli, args=(argv, {}))
    p.start()
    p.join(timeout)
    assert p.exitcode is not None, "the run did not finish"
    return int(p.exitcode)


def progress(out: Path) -> int:
    """Units committed plus units built: how far a run directory has got."""
    return len(lines(out / "units.jsonl")) + len(lines(out / "builds.jsonl"))


def _reached(p: Any, out: Path, target: int, life: int) -> bool:
    if p.exitcode is not None:
        raise AssertionError(f"life {life} ended (exit {p.exitcode}) before progress {target}")
    return progress(out) >= target


def kill_until_done(ctx: Any, argv: list[str], out: Path, fake: FakeProcess, targets: list[int],
                    rng: random.Random, jitter: float = 0.05) -> list[int]:
    """One life per target: SIGKILL the run a random instant (up to ``jitter`` s) after
    ``progress(out)`` reaches the target, then let the last life finish.

    Targets tie kills to the run's phases (task generation, instance building,
    the start of a resumed life) rather than to wall time, which a slow machine
    would skew. Returns, per kill, how many requests the server had received but
    not answered just before the run died.
    """
    in_flight: list[int] = []
    for target in targets:
        p = ctx.Process(target=_cli, args=(argv, {}))
        p.start()
        life = len(in_flight) + 1
        try:
            wait_until(functools.partial(_reached, p, out, target, life),
                       f"life {life} to reach progress {target}", interval=0.003)
        except AssertionError:
            p.kill()
            raise
        time.sleep(rng.uniform(0, jitter))  # the kill's instant: a seeded draw, not a wait
        before = fake.stats()["totals"]
        p.kill()
        p.join()
        after = fake.stats()["totals"]
        in_flight.append(after["requests"] - sum(before["by_status"].values()))
    assert run_to_end(ctx, argv) == 0
    return in_flight


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------- comparing runs


def totals(out: Path) -> dict[str, Any]:
    r = orjson.loads((out / "report.json").read_bytes())
    return {"units": r["units"], "tasks": r["tasks"],
            "instances": {k: r["instances"][k] for k in ("written", "duplicates",
                                                          "units_by_status")}}


def assert_same_output(got: Path, want: Path) -> None:
    for name in ("tasks.jsonl", "instances.jsonl"):
        g, w = lines(got / name), lines(want / name)
        assert w, f"the reference run wrote no {name}"
        dup = [x for x, c in Counter(g).items() if c > 1]
        assert not dup, f"{len(dup)} duplicated lines in {name}"
        assert set(g) - set(w) == set(), f"lines in {name} the reference does not have"
        assert set(w) - set(g) == set(), f"{len(set(w) - set(g))} lines of {name} lost"
        assert g == w, f"{name} holds the same lines in another order"
    keys = [orjson.loads(x)["key"] for x in lines(got / "units.jsonl")]
    assert len(keys) == len(set(keys)), "a unit was committed twice"
    assert set(keys) == {orjson.loads(x)["key"] for x in lines(want / "units.jsonl")}
    assert totals(got) == totals(want)


# ---------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def slow_fake() -> Iterator[FakeProcess]:
    with start_fake_process(keep_history=True, latency_median=0.04, seed=3) as proc:
        yield proc


def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(
        tmp_path: Path, launcher: Any, slow_fake: FakeProcess) -> None:
    src = tmp_path / "src"
    write_source(src, 40)
    ref, out = tmp_path / "ref", tmp_path / "killed"

    n0 = slow_fake.stats()["totals"]["requests"]
    assert run_to_end(launcher, run_argv(src, ref, slow_fake.url)) == 0
    needed = slow_fake.stats()["totals"]["requests"] - n0
    assert needed > 0

    n1 = slow_fake.stats()["totals"]["requests"]
    rng = random.Random(4)
    # Kill points over the whole run, some equal (a kill while a resumed life starts up).
    targets = sorted(rng.randrange(progress(ref)) for _ in range(KILLS))
    in_flight = kill_until_done(launcher, run_argv(src, out, slow_fake.url), out, slow_fake,
                                targets, rng)
    sent = slow_fake.stats()["totals"]["requests"] - n1

    assert_same_output(out, ref)
    assert journal_items(out) == source_items(src)
    # Answered requests are cached on arrival, so only those in flight at a kill
    # are sent again. (The server-side count of in-flight requests is a lower
    # bound: an answer written just before the kill may not have been read.)
    repaid = sent - needed
    assert 0 <= repaid <= KILLS * MAX_IN_FLIGHT, (repaid, in_flight)


# Every kind the fake can inject except insufficient_quota (fatal by design: it stops the run).
FAULTS = tuple(k for k in FAULT_KINDS if k != "insufficient_quota")


def fault_config(src: Path, out: Path, url: str, **kw: Any) -> Config:
    return Config(source=str(src), out=str(out), base_url=url, free=True, quiet=True,
                  max_in_flight=8, request_timeout=0.3, max_retries=2, retry_base_delay=0.01,
                  retry_max_delay=0.05, api_key=Secret("sk-test"), **kw)


def check_accounted(out: Path, src: Path) -> dict[str, Any]:
    """Every source unit has a journal line, and the report's totals add up."""
    report = orjson.loads((out / "report.json").read_bytes())
    units = [orjson.loads(x) for x in lines(out / "units.jsonl")]
    assert journal_items(out) == source_items(src)
    u = report["units"]
    assert u["seen"] == len({r["key"] for r in units})
    assert u["seen"] == u["processed"] + u["skipped"] + u["failed"]
    assert u["failed"] == sum(u["failed_by_reason"].values())
    assert u["skipped"] == sum(u["skipped_by_reason"].values())
    failed_requests = Counter[str]()
    for rec in units:
        failed_requests.update(rec.get("failed") or {})
        if rec["status"] == "failed":
            assert sum(rec["failed"].values()) == 2  # both variants gave up
    assert report["requests_failed_by_reason"] == dict(failed_requests)
    return report


async def test_every_kind_of_fault_leaves_every_unit_accounted_for(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_source(src, 40)
    fake = FakeOpenAI(fault_rate=0.3, fault_kinds=FAULTS, seed=7)
    # One of each kind first (so none depends on the draw), then 30% drawn at random.
    fake.enqueue(*(Fault(k) for k in FAULTS if k not in ("http", "timeout")),
                 Fault.http(502, "<html>bad gateway</html>"), Fault.http(500), Fault.timeout(5.0))
    # One retry, not two: a request then runs out at 0.3^2 = 9%, so some unit of the ~80
    # requests does but for a 1-in-2000 draw (at two retries 1 run in 9 saw none).
    async with serve(fake) as server:
        config = fault_config(src, tmp_path / "out", server.url).with_(max_retries=1)
        outcome = await arun(config, build=False)
    assert outcome.exit_code == 0, outcome.message
    report = check_accounted(tmp_path / "out", src)
    faults = fake.stats.faults
    assert set(faults) == set(FAULTS), faults
    # Every request that reached the server was counted, and each terminal fault
    # shows up under its own reason.
    assert report["requests"] == fake.stats.requests
    invalid = report["responses_invalid_by_reason"]
    assert invalid.get("content_filter", 0) == faults["content_filter"]
    assert report["requests_failed_by_reason"], "no unit ran out of retries at a 30% fault rate"


async def test_failed_units_are_redone_on_resume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_source(src, 12)
    broken = FakeOpenAI(fault_rate=1.0, fault_kinds=("server_error", "reset"), seed=1)
    async with serve(broken) as server:
        first = await arun(fault_config(src, tmp_path / "out", server.url), build=False)
    assert first.exit_code == 0
    report = check_accounted(tmp_path / "out", src)
    assert report["units"]["processed"] == 0 and report["units"]["failed"] > 0

    healthy = FakeOpenAI(seed=1)
    async with serve(healthy) as server:
        again = await arun(fault_config(src, tmp_path / "out", server.url), build=False)
        ref = await arun(fault_config(src, tmp_path / "ref", server.url), build=False)
    assert again.exit_code == ref.exit_code == 0
    check_accounted(tmp_path / "out", src)
    assert again.report["units"] == ref.report["units"]
    assert again.report["units"]["failed"] == 0
    assert lines(tmp_path / "out" / "tasks.jsonl") == lines(tmp_path / "ref" / "tasks.jsonl")


async def test_a_duplicate_marker_before_its_unit_neither_hides_it_nor_loses_it(
        tmp_path: Path) -> None:
    # A card listing a config twice yields the source's "duplicate" marker first,
    # under the unit's own key; the unit must still be processed, and a resume
    # after a kill right after the marker's commit must not take the unit as done.
    unit = Unit("a", "x", "Questions and their answers.", (Field("q", "string"),
                                                           Field("a", "string")), license="mit")
    items = [Skipped("a", "x", SkipReason.DUPLICATE, "listed twice"), unit, unit]
    out, ref = tmp_path / "out", tmp_path / "ref"
    async with serve(FakeOpenAI()) as server:
        whole = await arun(fault_config(tmp_path, ref, server.url), source=items, build=False)
        assert whole.report["units"]["processed"] == 1
        assert whole.report["units"]["skipped_by_reason"] == {"duplicate_unit": 2}

        await arun(fault_config(tmp_path, out, server.url), source=items, build=False)
        first = lines(out / "units.jsonl")[0]
        assert orjson.loads(first)["status"] == "skipped"
        (out / "units.jsonl").write_bytes(first + b"\n")  # killed after the marker's commit
        resumed = await arun(fault_config(tmp_path, out, server.url), source=items, build=False)
    assert resumed.report["units"] == whole.report["units"]
    assert lines(out / "tasks.jsonl") == lines(ref / "tasks.jsonl") != []
