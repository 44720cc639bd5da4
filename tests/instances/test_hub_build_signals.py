"""Ctrl-C and SIGTERM stop the instance stage of a real ``dynogen run`` reading Hub rows.

The task stage is fast and the fake Hub slow, so the signal lands while units are
being built: the command ends promptly with exit 130, having written only whole
units, and the same command then builds the rest, to the bytes of a run that was
never interrupted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from dynogen.testing import FakeProcess, start_fake_process
from dynogen.testing.fake_hub import FakeHub, HubServer
from dynogen.units import Field, Unit
from tests.helpers import lines, run_env, wait_until

FEATURES = {"text": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
UNITS = 24


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeProcess]:
    with start_fake_process(seed=3) as proc:
        yield proc


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeHub, HubServer, Path]]:
    fake = FakeHub()
    units = []
    for i in range(UNITS):
        repo = f"org/slow{i:02d}"
        data = [{"text": f"Note {j % 30} about item {i % 6}, short.", "label": j % 2}
                for j in range(150)]
        fake.add_rows(repo, "default", "train", data, FEATURES)
        units.append(Unit(repo, "default", f"Short notes about item {i}, labelled.",
                          (Field("text", "string"),
                           Field("label", "class_label", ("neg", "pos"))),
                          license="mit", tags=("language:en",), splits=("train",),
                          samples=tuple(data[:5]), data_ref=repo, origin="hub"))
    shard = tmp_path_factory.mktemp("src") / "units.jsonl"
    shard.write_bytes(b"".join(orjson.dumps(u.to_dict()) + b"\n" for u in units))
    with fake.running() as server:
        yield fake, server, shard


def command(shard: Path, out: Path, llm: FakeProcess, server: HubServer) -> list[str]:
    return [sys.executable, "-m", "dynogen", "run", "--free", "--quiet", "--source", str(shard),
            "--out", str(out), "--base-url", llm.url, "--hub-viewer-url", server.viewer_url,
            "--hub-concurrency", "1", "--max-in-flight", "8"]


def environment(tmp: Path, server: HubServer) -> dict[str, str]:
    env = run_env(tmp, HF_ENDPOINT=server.url)
    env["HF_HUB_OFFLINE"] = "0"  # the fake Hub is in this process
    return env


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_build_and_the_same_command_completes_it_identically(
        tmp_path: Path, sig: signal.Signals, llm: FakeProcess,
        hub: tuple[FakeHub, HubServer, Path]) -> None:
    fake, server, shard = hub
    env = environment(tmp_path, server)
    ref = tmp_path / "ref"
    fake.latency = 0.0
    done = subprocess.run(command(shard, ref, llm, server), env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert len(lines(ref / "builds.jsonl")) == UNITS

    out = tmp_path / "out"
    fake.latency = 0.3  # one call at a time: about 7 s of building
    try:
        p = subprocess.Popen(command(shard, out, llm, server), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: len(lines(out / "builds.jsonl")) >= 3, "three units built")
        p.send_signal(sig)
        _, stderr = p.communicate(timeout=15)  # not the minutes a slow Hub could take
    finally:
        fake.latency = 0.0
    assert p.returncode == 130, stderr
    assert "interrupted" in stderr
    built = len(lines(out / "builds.jsonl"))
    assert 3 <= built < UNITS  # it stopped building, with whole units written
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["session"]["stop_reason"] == "interrupted"

    again = subprocess.run(command(shard, out, llm, server), env=env, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    for name in ("tasks.jsonl", "instances.jsonl", "builds.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
