"""Run directories with tasks over local dataset folders, for both build engines.

``make_run`` writes dataset folders in every form the sharded build cuts up
(Parquet in several files and row groups, JSON Lines, CSV), with a ClassLabel
column, a nested column, duplicate rows, a test split, a column whose value
never changes (a degenerate task) and, on request, a file that cannot be read;
then a run directory whose ``units.jsonl`` and ``tasks.jsonl`` hold tasks over
them, as the task stage would have committed them. ``instance_set`` is what two
builds are compared by.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from dynogen.compose import run_identity
from dynogen.config import Config
from dynogen.store.instance_files import iter_instances
from dynogen.store.rundir import RunDir
from dynogen.tasks.task import Task
from dynogen.testing.fake_hub import FakeHub
from dynogen.units import Field, Unit
from tests.helpers import rows_of

FEATURES = {"text": {"dtype": "string", "_type": "Value"},
            "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
TOKEN = "hf_canaryROWS0123456789abcdefCANARY"
LABELS = ["negative", "neutral", "positive"]
TOPICS = ["food", "service", "price", "noise"]
_WORDS = ["oat", "flat", "white", "barista", "croissant", "stale", "queue", "music", "table",
          "tea", "cake", "window", "chair", "sun", "rain", "jazz", "menu", "toast"]

_CARD = """---
license: mit
dataset_info:
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': negative
          '1': neutral
          '2': positive
  - name: meta
    struct:
    - name: topic
      dtype: string
  - name: source
    dtype: string
{configs}---
# {name}
"""


def _rows(rng: random.Random, n: int, dup_every: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if dup_every and i % dup_every == dup_every - 1 and rows:
            rows.append(dict(rows[rng.randrange(len(rows))]))  # an exact copy of an earlier row
            continue
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
        rows.append({"text": f"{text} #{rng.randrange(10**6)}", "label": rng.randrange(3),
                     "meta": {"topic": rng.choice(TOPICS)}, "source": "cafe"})
    return rows


def _configs(fmt: str, splits: dict[str, list[str]]) -> str:
    lines = ["configs:", "- config_name: default", "  data_files:"]
    for split, files in splits.items():
        lines.append(f"  - split: {split}")
        lines.append("    path:")
        lines += [f"    - {f}" for f in files]
    return "\n".join(lines) + "\n"


def write_parquet_set(folder: Path, rng: random.Random, *, files: int, rows: int,
                      row_group: int, dup_every: int, test_rows: int = 0) -> None:
    """A Parquet dataset: ``files`` train files of ``rows`` rows in row groups of
    ``row_group``, a validation file, and a test file when ``test_rows``."""
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=LABELS),
                               "meta": {"topic": datasets.Value("string")},
                               "source": datasets.Value("string")})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    plan = [("train", i, rows) for i in range(files)] + [("validation", 0, max(3, rows // 3))]
    if test_rows:
        plan.append(("test", 0, test_rows))
        splits["test"] = []
    for split, i, n in plan:
        name = f"data/{split}-{i:05d}.parquet"
        table = pa.Table.from_pylist(_rows(rng, n, dup_every), schema=feats.arrow_schema)
        pq.write_table(table, folder / name, row_group_size=row_group)
        splits[split].append(name)
    (folder / "README.md").write_text(_CARD.format(configs=_configs("parquet", splits),
                                                   name=folder.name))


def write_jsonl_set(folder: Path, rng: random.Random, *, files: int, rows: int,
                    dup_every: int) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": []}
    for i in range(files):
        name = f"data/train-{i:05d}.jsonl"
        (folder / name).write_bytes(b"".join(orjson.dumps(r) + b"\n"
                                             for r in _rows(rng, rows, dup_every)))
        splits["train"].append(name)
    (folder / "README.md").write_text(_CARD.format(configs=_configs("json", splits),
                                                   name=folder.name))


def write_csv_set(folder: Path, rng: random.Random, *, rows: int, dup_every: int) -> None:
    """A CSV dataset with no declared features (pandas types it, as ``datasets`` does)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["text,score,source"]
    for r in _rows(rng, rows, dup_every):
        lines.append(f"\"{r['text']}\",{r['label']},cafe")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")


def _task(dataset: str, n: int, instruction: str, inputs: tuple[str, ...], output: str,
          labels: tuple[str, ...] = (), split: str = "train") -> Task:
    return Task(id=f"{dataset}-{n}", dataset=dataset, config="default", variant="description",
                instruction=instruction, input_fields=inputs, output_field=output,
                license="mit", labels=labels, split=split)


def make_run(root: Path, *, seed: int = 0, rows: int = 40, files: int = 2, row_group: int = 7,
             dup_every: int = 5, broken: bool = False, **settings: Any) -> Path:
    """A run directory under ``root`` (``root/run``) with tasks over fresh dataset folders
    (``root/data``); ``settings`` go to its ``Config`` (``max_share``, ``splits``, ...)."""
    rng = random.Random(seed)
    data = root / "data"
    sets: list[tuple[str, Path]] = []
    for name in ("reviews_a", "reviews_b"):  # the same rows: b's copies of a's are duplicates
        write_parquet_set(data / name, random.Random(seed), files=files, rows=rows,
                          row_group=row_group, dup_every=dup_every, test_rows=rows // 2)
        sets.append((name, data / name))
    write_jsonl_set(data / "notes", rng, files=files, rows=rows, dup_every=dup_every)
    sets.append(("notes", data / "notes"))
    write_csv_set(data / "scores", rng, rows=rows, dup_every=dup_every)
    sets.append(("scores", data / "scores"))
    if broken:
        bad = data / "broken"
        write_parquet_set(bad, rng, files=2, rows=rows, row_group=row_group, dup_every=0)
        (bad / "data" / "train-00001.parquet").write_bytes(b"PAR1 this is not parquet")
        sets.append(("broken", bad))
    label = tuple(LABELS)
    tasks_for = {
        "reviews_a": [("Classify the sentiment of the review.", ("text",), "label", label),
                      ("Name the topic the review is about.", ("text",), "meta.topic", ()),
                      ("Which cafe is this from?", ("text",), "source", ())],  # degenerate
        "reviews_b": [("Classify the sentiment of the review.", ("text",), "label", label),
                      ("Write a review with this sentiment.", ("label",), "text", ())],
        "notes": [("Classify the sentiment of the note.", ("text",), "label", label),
                  ("Name the topic of the note.", ("text",), "meta.topic", ())],
        "scores": [("Give the score of the text from 0 to 2.", ("text",), "score", ())],
        "broken": [("Classify the sentiment of the review.", ("text",), "label", label)],
    }
    cfg = Config(out=str(root / "run"), **settings).validate()
    rundir = RunDir(root / "run").open(cfg, identity=run_identity(cfg))
    try:
        units = bytearray()
        tasks = bytearray()
        for i, (name, folder) in enumerate(sets):
            start = len(tasks)
            kept = tasks_for[name]
            for n, (instruction, inputs, output, labels) in enumerate(kept):
                split = "heldout" if (i + n) % 4 == 3 else "train"
                t = _task(name, n, instruction, inputs, output, labels, split)
                tasks += orjson.dumps(t.to_dict()) + b"\n"
            units += orjson.dumps({
                "key": f"{name}::default", "dataset": name, "config": "default",
                "status": "done", "data_ref": str(folder),
                "splits": ["train", "validation", "test"] if name.startswith("reviews")
                else ["train"], "license": "mit", "tasks_generated": len(kept),
                "tasks_kept": len(kept), "tasks_start": start, "tasks_end": len(tasks)}) + b"\n"
        rundir.tasks.write_bytes(bytes(tasks))
        rundir.units.write_bytes(bytes(units))
    finally:
        rundir.close()
    return root / "run"


def hub_unit(fake: FakeHub, repo: str, n: int = 120, *, rows_of: str | None = None,
             samples: bool = True, stored: bool = True, **files: Any) -> Unit:
    """A Hub unit (as a snapshot holds it) and, if ``stored``, its rows on the fake Hub."""
    topic = rows_of or repo
    data = [{"text": f"A review of {topic}, number {j % 40}: it was fine.", "label": j % 2}
            for j in range(n)]
    if stored:
        fake.add_rows(repo, "default", "train", data, FEATURES, **files)
        fake.add_rows(repo, "default", "test", data[:10], FEATURES, **files)
    return Unit(repo, "default", f"Short reviews of {topic}, each labelled by sentiment.",
                (Field("text", "string"), Field("label", "class_label", ("neg", "pos"))),
                license="mit", tags=("language:en",), splits=("train", "test"),
                samples=tuple(data[:5]) if samples else (), data_ref=repo, origin="hub")


def shard(path: Path, units: list[Unit]) -> str:
    """A units file (a source) holding ``units``."""
    path.write_bytes(b"".join(orjson.dumps(u.to_dict()) + b"\n" for u in units))
    return str(path)


def instance_set(run: Path) -> list[bytes]:
    """The run's instances as sorted canonical lines (what two builds are compared by)."""
    return rows_of(iter_instances(run))
