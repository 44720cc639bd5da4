"""Issue #10 end to end: small dataset folders with rows, each showing one policy or rule.

Folders are real (a card and jsonl files read through ``datasets``), units go
through the same ``gate`` and ``TaskFilter`` a run uses, and whole runs go
against the in-process fake server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from dynogen.api import arun, estimate, inspect
from dynogen.commands.inspect import format_inspection
from dynogen.config import Config, Secret
from dynogen.errors import DynogenError
from dynogen.io.folder import FolderSource
from dynogen.policy.gate import Policies, gate
from dynogen.tasks.filter import TaskFilter
from dynogen.tasks.rules import TaskRule
from dynogen.testing import FakeOpenAI, serve
from dynogen.units import Skipped, Unit

LABELS77 = [f"intent_{i:02d}" for i in range(77)]


def dataset(root: Path, name: str, features: list[dict[str, Any]],
            splits: dict[str, list[dict[str, Any]]], *, license: str = "mit",
            language: str = "en", broken: bool = False) -> None:
    d = root / name
    (d / "data").mkdir(parents=True)
    card = {"license": license, "language": [language],
            "dataset_info": {"features": features},
            "configs": [{"config_name": "default", "data_files": [
                {"split": s, "path": f"data/{s}.jsonl"} for s in splits]}]}
    (d / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n\n"
                                 f"# {name}\n\nShort English texts about {name}, made for tests.\n")
    for split, rows in splits.items():
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        (d / "data" / f"{split}.jsonl").write_bytes(b"{not json\n" if broken else data)


def label(names: list[str]) -> dict[str, Any]:
    return {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}


SENTENCES = ["the cat sat on the mat near the door", "a ship came into the harbour at dawn",
             "the market was busy with traders and buyers", "rain fell on the old stone bridge",
             "children played in the park after school", "the train left the station on time"]


def text(i: int) -> str:
    return f"{SENTENCES[i % len(SENTENCES)]} and this is row number {i} of the set"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    s = [{"name": "text", "dtype": "string"}, {"name": "label", "dtype": label(["neg", "pos"])}]
    dataset(root, "with_test", s, {
        "train": [{"text": text(i), "label": i % 2} for i in range(12)],
        "test": [{"text": "TEST ROW " + text(i), "label": i % 2} for i in range(6)]})
    dataset(root, "only_test", s, {"test": [{"text": text(i), "label": i % 2} for i in range(6)]})
    dataset(root, "no_derivs", s, {"train": [{"text": text(i), "label": 1} for i in range(6)]},
            license="cc-by-nd-4.0")
    dataset(root, "unreadable", s, {"train": []}, broken=True)
    dataset(root, "french", s, {"train": [{"text": text(i), "label": 0} for i in range(6)]},
            language="fr")
    dataset(root, "intents", [{"name": "utterance", "dtype": "string"},
                              {"name": "intent", "dtype": label(LABELS77)}],
            {"train": [{"utterance": text(i), "intent": i % 77} for i in range(30)]})
    dataset(root, "ner", [{"name": "tokens", "dtype": {"sequence": "string"}},
                          {"name": "tags", "dtype": {"sequence": label(["O", "B-PER", "I-PER"])}}],
            {"train": [{"tokens": text(i).split(), "tags": [(i + j) % 3 for j in range(12)]}
                       for i in range(10)]})
    dataset(root, "skewed", [{"name": "review", "dtype": "string"},
                             {"name": "verdict", "dtype": "string"}],
            {"train": [{"review": text(i), "verdict": "good" if i < 38 else "bad"}
                       for i in range(40)]})
    dataset(root, "echo", [{"name": "headline", "dtype": "string"},
                           {"name": "title", "dtype": "string"},
                           {"name": "body", "dtype": "string"}],
            {"train": [{"headline": text(i), "title": text(i), "body": text(i + 1) * 3}
                       for i in range(8)]})
    dataset(root, "moods", [{"name": "post", "dtype": "string"},
                            {"name": "mood", "dtype": "string"}],
            {"train": [{"post": text(i), "mood": ["calm", "angry", "happy"][i % 3]}
                       for i in range(30)]})
    return root


def gated(root: Path, **policy: str) -> dict[str, Unit | Skipped]:
    cfg = Config(**policy)  # type: ignore[arg-type]
    return {item.dataset: item for item in gate(FolderSource(root), Policies.from_config(cfg))}


def one(unit: Unit | Skipped, instruction: str, inputs: list[str], output: str
        ) -> tuple[list[Any], dict[str, int]]:
    assert isinstance(unit, Unit), unit
    kept, drops = TaskFilter(5).filter(unit, "description", [
        {"instruction": instruction, "input_fields": inputs, "output_field": output}], set())
    return kept, dict(drops)


def test_policies_skip_units_before_any_request(corpus: Path) -> None:
    items = gated(corpus)
    reasons = {k: v.reason for k, v in items.items() if isinstance(v, Skipped)}
    assert reasons == {"only_test": "no_training_split", "no_derivs": "license_no_derivatives",
                       "unreadable": "rows_load_error", "french": "language_not_allowed"}
    # Rows were sampled from the training split only.
    facts = items["with_test"].extra["facts"]  # type: ignore[union-attr]
    assert len(facts["text"]) == 12 and not any("TEST ROW" in t for t in facts["text"])
    lifted = gated(corpus, licenses="any", languages="any", splits="all")
    assert {k for k, v in lifted.items() if isinstance(v, Skipped)} == {"unreadable"}
    assert len(lifted["with_test"].extra["facts"]["text"]) == 18  # type: ignore[union-attr]


def test_label_suffixes_list_every_answer_or_none(corpus: Path) -> None:
    items = gated(corpus)
    (t,), _ = one(items["with_test"], "Classify the sentiment of the text.", ["text"], "label")
    assert t.instruction.endswith("Answers must be one of: neg, pos.")
    assert t.labels == ("neg", "pos")
    (t,), _ = one(items["intents"], "Identify the intent of the utterance.", ["utterance"],
                  "intent")
    assert "Answers must be one of" not in t.instruction and t.labels == ()
    (t,), _ = one(items["ner"], "Tag each token with its entity type.", ["tokens"], "tags")
    assert "Answers must be one of" not in t.instruction and t.labels == ()
    # A text column with few repeated values is a label: its suffix comes from the rows.
    (t,), _ = one(items["moods"], "Predict the mood of the post.", ["post"], "mood")
    assert t.instruction.endswith("Answers must be one of: angry, calm, happy.")
    assert t.labels == ("angry", "calm", "happy")


def test_row_rules_on_sampled_rows(corpus: Path) -> None:
    items = gated(corpus)
    assert one(items["skewed"], "Predict the verdict of the review.", ["review"], "verdict")[1] \
        == {TaskRule.IMBALANCED: 1}
    assert one(items["echo"], "Write a headline for the title.", ["title"], "headline")[1] \
        == {TaskRule.OUTPUT_IS_INPUT: 1}
    assert one(items["echo"], "Write a headline for the body text.", ["body"], "headline")[1] == {}
    lifted = gated(corpus, licenses="any")
    assert one(lifted["no_derivs"], "Classify the sentiment of the text.", ["text"], "label")[1] \
        == {TaskRule.CONSTANT: 1}


def test_text_rules(corpus: Path) -> None:
    u = gated(corpus)["moods"]
    cases = {
        "Is the passage": TaskRule.TOO_SHORT,
        "The mood of the post.": TaskRule.NO_VERB,
        "Short English texts about moods, made for tests and more.": TaskRule.COPIES_DESCRIPTION,
        "This dataset contains posts and their moods.": TaskRule.COPIES_DESCRIPTION,
        "Read the review of a home recipe and predict how many stars, from 1 to 5, the reviewer "
        "gave it.": TaskRule.COPIES_FEWSHOT,
        "calm, angry, happy": TaskRule.COPIES_VALUES,
        "Write a question about the post.": TaskRule.GENERATION_LABEL,
    }
    for instruction, reason in cases.items():
        assert one(u, instruction, ["post"], "mood")[1] == {reason: 1}, instruction
    assert one(u, "Classify whether the mood is calm.", ["mood"], "post")[1] == {
        TaskRule.LABEL_TEXT: 1}


async def test_a_run_honours_every_policy(corpus: Path, tmp_path: Path) -> None:
    fake = FakeOpenAI(seed=3)
    cfg = Config(source=str(corpus), out=str(tmp_path / "run"), base_url="x", free=True,
                 quiet=True, api_key=Secret("sk-test"))
    async with serve(fake) as server:
        out = await arun(cfg.with_(base_url=server.url))
        asked = " ".join(orjson.dumps(r.body).decode() for r in fake.history)
        with pytest.raises(DynogenError, match="differ|changed|force"):
            await arun(cfg.with_(base_url=server.url, licenses="any"))
        lifted = await arun(cfg.with_(base_url=server.url, out=str(tmp_path / "all"),
                                      licenses="any", languages="any", splits="all"))
    assert out.exit_code == 0 and lifted.exit_code == 0
    for name in ("only_test", "no_derivs", "unreadable", "french"):
        assert f"Dataset: {name}\\n" not in asked  # no request was paid for them
    assert out.report["units"]["skipped_by_reason"] == {
        "language_not_allowed": 1, "license_no_derivatives": 1, "no_training_split": 1,
        "rows_load_error": 1}
    tasks = [orjson.loads(x) for x in (tmp_path / "run" / "tasks.jsonl").read_bytes().splitlines()]
    insts = [orjson.loads(x) for x in
             (tmp_path / "run" / "instances.jsonl").read_bytes().splitlines()]
    assert insts and {i["split"] for i in insts} == {"train"}
    assert all(t["license"] == "mit" for t in tasks) and all(i["license"] == "mit" for i in insts)
    labels = {t["id"]: t["labels"] for t in tasks}
    assert all(i["output"] in labels[i["task_id"]] for i in insts if labels[i["task_id"]])
    all_insts = (tmp_path / "all" / "instances.jsonl").read_bytes()
    assert b'"split":"test"' in all_insts
    # estimate applies the same policies and counts what each leaves out.
    est = estimate(cfg.with_(model="gpt-4o-mini"))
    assert est.units_skipped == out.report["units"]["skipped_by_reason"]
    assert est.units == out.report["units"]["processed"]
    # inspect: shares per source and samples, as data and as text.
    ins = inspect(tmp_path / "run", kept=5)
    assert sum(n for _, n, _ in ins.share_by_dataset) == len(tasks)
    text = format_inspection(ins)
    assert "share of kept tasks per source dataset" in text and "kept tasks" in text


async def test_max_share_caps_one_source(tmp_path: Path) -> None:
    root = tmp_path / "c"
    s = [{"name": "question", "dtype": "string"}, {"name": "answer", "dtype": "string"},
         {"name": "context", "dtype": "string"}]
    for i in range(3):
        dataset(root, f"ds{i}", s, {"train": [
            {"question": text(j) + "?", "answer": f"answer {j}", "context": text(j + 1)}
            for j in range(6)]})
    fake = FakeOpenAI(seed=5)
    async with serve(fake) as server:
        out = await arun(Config(source=str(root), out=str(tmp_path / "r"), base_url=server.url,
                                free=True, quiet=True, api_key=Secret("k"), max_share=0.34))
    kept = out.report["tasks"]["kept"]
    built = {orjson.loads(x)["task_id"] for x in
             (tmp_path / "r" / "instances.jsonl").read_bytes().splitlines()}
    tasks = [orjson.loads(x) for x in (tmp_path / "r" / "tasks.jsonl").read_bytes().splitlines()]
    per = {d: sum(1 for t in tasks if t["dataset"] == d and t["id"] in built) for d in
           ("ds0", "ds1", "ds2")}
    assert kept >= 3 and max(per.values()) - min(per.values()) <= 1
    assert out.report["tasks"]["over_max_share"] == kept - sum(per.values())
