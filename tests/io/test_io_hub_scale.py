"""A run over a few hundred Hub datasets from the fake Hub: every listed dataset accounted for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from huggingface_hub import constants

from dynogen.api import EXIT, arun
from dynogen.config import Config
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, serve
from dynogen.testing.fake_hub import synthetic_hub


async def test_a_run_over_the_fake_hub_accounts_for_every_listed_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fake_hub, expected = synthetic_hub(300, seed=11, page_size=64)
    fake_hub.latency = 0.002
    with fake_hub.running() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        async with serve(FakeOpenAI()) as llm:
            cfg = Config(source="hub", out=str(tmp_path / "run"), base_url=llm.url, free=True,
                         quiet=True, max_in_flight=16, hub_viewer_url=hub.viewer_url,
                         hub_rpm=None, hub_concurrency=6, hub_sort="downloads",
                         # what is measured is the Hub source, not the data policies
                         licenses="any", languages="any", splits="all")
            outcome = await arun(cfg, build=False)
    assert outcome.exit_code == EXIT["ok"], outcome.message
    # every listed dataset has a journal line; its outcome is the expected one
    seen: dict[str, set[str]] = {}
    for rec in iter_jsonl(outcome.out / "units.jsonl"):
        status = "unit" if rec.get("status") != "skipped" else rec["reason"]
        seen.setdefault(rec["dataset"], set()).add(status)
    assert set(seen) == set(expected)
    wrong = {d: (expected[d], s) for d, s in seen.items() if s != {expected[d]}}
    assert not wrong
    units = outcome.report["units"]
    assert units["processed"] + units["skipped"] + units["failed"] == units["seen"]
    # one counted skip per skipped dataset (near-copies are made of one-config datasets)
    assert units["skipped_by_reason"] == Counter(v for v in expected.values() if v != "unit")
    # Hub calls ran concurrently, never past the limit
    assert 1 < fake_hub.peak_in_flight <= 6
