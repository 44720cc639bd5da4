"""The row stage on Ray: one process against ``--engine ray`` on 1 and on 2 local nodes.

``python -m bench.ray_build [--rows 10000000] [--work DIR] [--keep]``

1. **Data.** Seven synthetic dataset folders under ``WORK/data`` (made once per
   ``--rows``/``--seed`` and reused): six of Parquet files with several row
   groups each, one of JSON Lines files, each with a README.md whose
   ``dataset_info`` declares the features (a ClassLabel column in four of
   them) and whose ``configs`` name train, validation and test files, so
   ``datasets.load_dataset(folder)`` and ``dynogen.io.row_files`` both read
   them. Text is drawn from a Zipf-weighted vocabulary. About 7 % of the train
   rows are exact copies of another row (half a few rows back, half anywhere
   earlier in the split, usually another file), 10 % of the validation rows copy
   a train row, a few rows have an empty text or an unlabelled (-1) label.
2. **Tasks.** ``dynogen.api.arun(cfg, build=False)`` over the folders against
   the in-process fake OpenAI server, answering each unit's request with this
   bench's own tasks (``TASKS``: 20 in all, over the units' real fields, seven
   with a ClassLabel output). dynogen's task stage makes the run directory as
   it always does (prompt, schema, parse, rules, ``units.jsonl``,
   ``tasks.jsonl``, ``manifest.json``); the bench checks that all 20 are kept.
3. **Builds.** The run directory copied three times and built with
   ``rows_per_split="all"`` by ``dynogen.api.build`` in a child process each:
   ``--engine local``; ``--engine ray`` starting its own local Ray instance (one
   node, both cores); ``--engine ray`` joining a cluster of two local nodes
   (``ray start --head --num-cpus 1`` and ``ray start --address ... --num-cpus
   1``, each its own process and temp dir, stopped at the end). A sampler reads
   every 0.25 s the peak RSS (``VmHWM``) of the build process and of every
   process of the Ray cluster (driver, raylets, GCS, workers), and the size of
   ``instances/.candidates``.

Per build: wall seconds, rows/s, CPU seconds of every process, instances
written, the driver's and the largest Ray worker's peak RSS (``VmHWM``; the
child's ``ru_maxrss`` is kept too, but it carries the bench's own size over
fork and exec), the shuffle volume (the candidate files phase 1 writes and
phase 2 reads; measured in the child by wrapping ``ShardedBuild._merge``,
which runs once phase 1 is done, and by the sampler) and the final shards'
bytes; and whether the output is the reference's (the first build that
finished: the local engine unless ``--builds`` leaves it out): the sorted
xxh3 digests of every instance dict (``orjson`` with sorted keys) through
``dynogen.store.instance_files.iter_instances``. A build that would run the
machine out of memory is ended by the sampler (``--guard-mb``) and reported
with how far it got. Prints a table and writes ``bench/results/ray_build.json``
(``--rows`` other than the default writes ``ray_build-<rows>.json``);
``--table FILE`` prints a saved one's table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xxhash

__all__ = ["DATASETS", "TASKS", "generate", "main", "make_tasks"]

RESULTS = Path(__file__).parent / "results"
DEFAULT_ROWS = 10_000_000
GENERATOR_VERSION = 3  # bump when the data would come out differently
MB = 1024 * 1024


# ------------------------------------------------------------------------------------- data
@dataclass(frozen=True, slots=True)
class Col:
    """One column: ``text`` (``lo``-``hi`` words), ``label`` (ClassLabel over ``values``),
    ``choice`` (a string among ``values``) or ``int`` (``lo``-``hi``)."""

    name: str
    kind: str
    lo: int = 0
    hi: int = 0
    values: tuple[str, ...] = ()
    vocab: int = 0  # which vocabulary a text column draws from


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    fmt: str  # "parquet" or "json"
    share: float  # of all rows
    title: str
    description: str
    cols: tuple[Col, ...]


SENTIMENT = ("negative", "neutral", "positive")
TOPICS = ("world", "sports", "business", "science")
NLI = ("entailment", "neutral", "contradiction")
INTENTS = ("book_table", "cancel_order", "check_balance", "play_music", "set_alarm",
           "weather", "transfer_money", "track_parcel")
DOMAINS = ("banking", "dining", "music", "travel", "home", "shopping")
VENUES = ("coffee shop", "bakery", "tea room", "bistro", "diner", "food truck")

DATASETS: tuple[Dataset, ...] = (
    Dataset("shop_reviews", "parquet", 0.24, "Shop Reviews",
            "Short English customer reviews of coffee shops, bakeries, tea rooms and bistros. "
            "Each review has the kind of venue reviewed, a star rating from 1 to 5 and its "
            "overall sentiment (negative, neutral or positive).",
            (Col("review", "text", 12, 40), Col("venue_type", "choice", values=VENUES),
             Col("stars", "int", 1, 5), Col("label", "label", values=SENTIMENT))),
    Dataset("news_topics", "parquet", 0.22, "News Topics",
            "News articles with their headline and body text, each filed under one of four "
            "topics: world, sports, business or science.",
            (Col("headline", "text", 6, 14), Col("body", "text", 30, 70),
             Col("topic", "label", values=TOPICS))),
    Dataset("nli_pairs", "parquet", 0.16, "NLI Pairs",
            "Sentence pairs for natural language inference: a premise, a hypothesis, and "
            "whether the premise entails the hypothesis, contradicts it, or neither.",
            (Col("premise", "text", 10, 30), Col("hypothesis", "text", 5, 12),
             Col("label", "label", values=NLI))),
    Dataset("support_qa", "parquet", 0.14, "Support QA",
            "Extractive question answering over customer support articles: a passage, a "
            "question about it and the short answer span.",
            (Col("context", "text", 30, 60), Col("question", "text", 6, 12),
             Col("answer", "text", 1, 4))),
    Dataset("doc_summaries", "parquet", 0.12, "Document Summaries",
            "Reports with a title and a one-sentence summary written by an editor.",
            (Col("title", "text", 4, 9), Col("document", "text", 40, 90),
             Col("summary", "text", 10, 22))),
    Dataset("assistant_intents", "json", 0.06, "Assistant Intents",
            "Requests people typed to a voice assistant, each with the domain it belongs to "
            "and the intent the assistant should act on.",
            (Col("utterance", "text", 4, 14), Col("domain", "choice", values=DOMAINS),
             Col("intent", "label", values=INTENTS))),
    Dataset("phrase_pairs", "parquet", 0.06, "Phrase Pairs",
            "Short English phrases with a translation into a constructed language, for "
            "training and testing phrase translation.",
            (Col("source_text", "text", 3, 12), Col("target_text", "text", 3, 12, vocab=1))),
)

# (inputs, output, instruction): what the fake answers for each unit; 20 tasks in all.
TASKS: dict[str, tuple[tuple[tuple[str, ...], str, str], ...]] = {
    "shop_reviews": (
        (("review",), "label", "Read the customer review and say whether its overall "
         "sentiment is negative, neutral or positive."),
        (("review",), "venue_type", "From the review alone, name the kind of venue it is about."),
        (("review",), "stars", "Predict the star rating from 1 to 5 that the reviewer gave."),
        (("venue_type", "review"), "label", "Given the venue type and the review text, "
         "classify how the customer felt about the visit."),
    ),
    "news_topics": (
        (("headline",), "topic", "Assign the news headline to its topic."),
        (("body",), "topic", "Decide which topic section this article belongs in."),
        (("body",), "headline", "Write a headline for this news article."),
    ),
    "nli_pairs": (
        (("premise", "hypothesis"), "label", "Does the premise entail the hypothesis, "
         "contradict it, or neither? Answer with the relation."),
        (("premise", "label"), "hypothesis", "Write a hypothesis that stands in the given "
         "relation to the premise."),
    ),
    "support_qa": (
        (("context", "question"), "answer", "Answer the question with a short span copied "
         "from the passage."),
        (("context", "answer"), "question", "Given the passage and an answer span taken from "
         "it, ask the question that the span answers."),
        (("question",), "answer", "Answer the customer's question in a few words."),
    ),
    "doc_summaries": (
        (("document",), "summary", "Summarise the report in one sentence."),
        (("document",), "title", "Give the report a short title."),
        (("summary",), "title", "Write a short title for the report from its one-sentence "
         "summary."),
    ),
    "assistant_intents": (
        (("utterance",), "intent", "Which intent should the assistant act on for this request?"),
        (("utterance",), "domain", "Say which domain this assistant request belongs to."),
        (("domain", "utterance"), "intent", "Knowing the domain, pick the intent of the "
         "request."),
    ),
    "phrase_pairs": (
        (("source_text",), "target_text", "Translate the English phrase into the constructed "
         "language."),
        (("target_text",), "source_text", "Translate the phrase back into English."),
    ),
}


# The commonest words of English text (stop words first), ahead of the invented ones, so
# the texts read as English to dynogen's language policy (``policy.languages``).
_ENGLISH_WORDS = """
the of and to a in is that for it was on with as are be this by at from or an not have has
but they you he she his her we which their what there been were will would can all one if
more when who about into than its do so no how time people year way day man thing woman life
child world school state family student group country problem hand part place case week
company system program question work government number night point home water room mother
area money story fact month lot right study book eye job word business issue side kind head
house service friend father power hour game line end member law car city name team minute
idea kid body back parent face others level office door health person art war history party
result change morning reason research girl guy moment air teacher force education good new
first last long great little own other old big high different small large next early young
important few public bad same able
"""
ENGLISH = tuple(_ENGLISH_WORDS.split())


def _vocabulary(seed: int, size: int = 6000, english: bool = True) -> Any:
    """English words then pronounceable pseudo-words (a pyarrow string array), the
    commonest first; ``english=False``: pseudo-words only (a constructed language)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    onsets = np.array(["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t",
                       "v", "w", "br", "st", "tr", "pl", "sh", "ch", "gr", "cl"])
    vowels = np.array(["a", "e", "i", "o", "u", "ea", "ou", "ai", "io"])
    codas = np.array(["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"])
    words: list[str] = []
    seen: set[str] = set(ENGLISH)
    while len(words) < size - (len(ENGLISH) if english else 0):
        syl = int(rng.integers(1, 4))
        w = "".join(str(rng.choice(onsets)) + str(rng.choice(vowels)) for _ in range(syl))
        w += str(rng.choice(codas))
        if w not in seen:
            seen.add(w)
            words.append(w)
    words.sort(key=len)  # short words are the common ones, as in real text
    return pa.array([*ENGLISH, *words] if english else words)


class _Texts:
    """Random texts over a vocabulary, word ranks drawn Zipf-like (weight 1/(rank+2))."""

    def __init__(self, vocab_seed: int, english: bool) -> None:
        self.vocab = _vocabulary(vocab_seed, english=english)
        w = 1.0 / (np.arange(len(self.vocab)) + 2.0)
        self.cdf = np.cumsum(w / w.sum())

    def draw(self, rng: np.random.Generator, n: int, lo: int, hi: int) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        lengths = rng.integers(lo, hi + 1, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.searchsorted(self.cdf, rng.random(int(offsets[-1])))
        idx = np.minimum(idx, len(self.vocab) - 1)
        words = self.vocab.take(pa.array(idx))
        lists = pa.LargeListArray.from_arrays(pa.array(offsets), words)
        return pc.binary_join(lists, " ")


def _table(ds: Dataset, rng: np.random.Generator, n: int, texts: list[_Texts]) -> Any:
    """``n`` fresh rows of ``ds`` (a pyarrow table; labels as int64 ids)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols: dict[str, Any] = {}
    for c in ds.cols:
        if c.kind == "text":
            arr = texts[c.vocab].draw(rng, n, c.lo, c.hi)
            if c is ds.cols[0]:  # a few rows with nothing to read
                empty = rng.random(n) < 0.003
                arr = pc.if_else(pa.array(empty), pa.scalar(""), arr)
            cols[c.name] = arr
        elif c.kind == "label":
            ids = rng.integers(0, len(c.values), n).astype(np.int64)
            ids[rng.random(n) < 0.002] = -1  # unlabelled, as test splits often are
            cols[c.name] = pa.array(ids)
        elif c.kind == "choice":
            cols[c.name] = pa.array(c.values).take(pa.array(rng.integers(0, len(c.values), n)))
        else:
            cols[c.name] = pa.array(rng.integers(c.lo, c.hi + 1, n).astype(np.int64))
    return pa.table(cols)


def _with_duplicates(table: Any, pool: Any, rng: np.random.Generator, near: float,
                     far: float) -> Any:
    """``table`` with a share ``near`` of rows copied from a few rows back and ``far``
    copied from ``pool`` (rows of earlier files of the split)."""
    import pyarrow as pa

    n = table.num_rows
    idx = np.arange(n, dtype=np.int64)
    u = rng.random(n)
    back = np.flatnonzero(u < near)
    idx[back] = np.maximum(0, back - rng.integers(1, 400, back.size))
    if pool is not None and pool.num_rows:
        away = np.flatnonzero((u >= near) & (u < near + far))
        idx[away] = n + rng.integers(0, pool.num_rows, away.size)
        table = pa.concat_tables([table, pool])
    return table.take(pa.array(idx))


def _features_yaml(ds: Dataset) -> str:
    out = []
    for c in ds.cols:
        if c.kind == "label":
            names = "".join(f"          '{i}': {v}\n" for i, v in enumerate(c.values))
            out.append(f"  - name: {c.name}\n    dtype:\n      class_label:\n        names:\n"
                       f"{names}")
        else:
            dtype = "int64" if c.kind == "int" else "string"
            out.append(f"  - name: {c.name}\n    dtype: {dtype}\n")
    return "".join(out)


def _card(ds: Dataset, counts: dict[str, int], sizes: dict[str, int]) -> str:
    ext = "parquet" if ds.fmt == "parquet" else "jsonl"
    splits = "".join(f"  - name: {s}\n    num_bytes: {sizes[s]}\n    num_examples: {n}\n"
                     for s, n in counts.items())
    files = "".join(f"  - split: {s}\n    path: data/{s}-*.{ext}\n" for s in counts)
    fields = "".join(f"- `{c.name}`: " + (c.kind if c.kind != "label" else
                                         "one of " + ", ".join(c.values)) + "\n"
                     for c in ds.cols)
    return (f"---\nlicense: apache-2.0\npretty_name: {ds.title}\nlanguage:\n- en\n"
            f"dataset_info:\n  features:\n{_features_yaml(ds)}  splits:\n{splits}"
            f"configs:\n- config_name: default\n  data_files:\n{files}---\n\n"
            f"# {ds.title}\n\n{ds.description}\n\n## Data Fields\n\n{fields}\n"
            "Synthetic: generated by dynogen's bench (bench/ray_build.py), not real data.\n")


def _split_rows(total: int) -> dict[str, int]:
    val = max(10, total * 5 // 100)
    test = max(10, total * 3 // 100)
    return {"train": max(10, total - val - test), "validation": val, "test": test}


def generate(root: Path, rows: int, seed: int = 7) -> dict[str, Any]:
    """The synthetic dataset folders under ``root`` (kept when ``root/spec.json`` matches)."""
    import pyarrow.parquet as pq

    spec = {"rows": rows, "seed": seed, "version": GENERATOR_VERSION}
    marker = root / "spec.json"
    if marker.exists() and orjson.loads(marker.read_bytes()).get("spec") == spec:
        return dict(orjson.loads(marker.read_bytes()))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    texts = [_Texts(seed, True), _Texts(seed + 1, False)]
    info: dict[str, Any] = {"spec": spec, "datasets": {}}
    t0 = time.perf_counter()
    for d_i, ds in enumerate(DATASETS):
        rng = np.random.default_rng([seed, d_i])
        n_ds = max(100, round(rows * ds.share))
        counts = _split_rows(n_ds)
        group = max(500, min(25_000, n_ds // 40))  # rows per row group
        per_file = 16 * group
        folder = root / ds.name
        (folder / "data").mkdir(parents=True)
        files: dict[str, Any] = {}
        pool = None  # earlier train rows, for copies far away
        for split, n in counts.items():
            n_files = max(1, -(-n // per_file)) if ds.fmt == "parquet" else 4
            left = n
            written = []
            for f in range(n_files):
                m = -(-left // (n_files - f))
                left -= m
                table = _table(ds, rng, m, texts)
                if split == "train":
                    table = _with_duplicates(table, pool, rng, 0.035, 0.035 if pool else 0.0)
                elif split == "validation":
                    table = _with_duplicates(table, pool, rng, 0.0, 0.10)
                if split == "train":
                    sample = table.take(np.sort(rng.choice(table.num_rows,
                                                           min(4000, table.num_rows),
                                                           replace=False)))
                    pool = sample if pool is None else _concat(pool, sample)
                name = f"{split}-{f:05d}-of-{n_files:05d}"
                if ds.fmt == "parquet":
                    path = folder / "data" / f"{name}.parquet"
                    pq.write_table(table, path, row_group_size=group)
                else:
                    path = folder / "data" / f"{name}.jsonl"
                    _write_jsonl(table, path)
                written.append(path.name)
            files[split] = written
        sizes = {s: sum((folder / "data" / f).stat().st_size for f in names)
                 for s, names in files.items()}
        (folder / "README.md").write_text(_card(ds, counts, sizes), encoding="utf-8")
        info["datasets"][ds.name] = {
            "format": ds.fmt, "rows": counts, "files": files, "row_group_rows": group,
            "bytes": sum(p.stat().st_size for p in (folder / "data").iterdir())}
    info["rows"] = sum(sum(d["rows"].values()) for d in info["datasets"].values())
    info["rows_read"] = sum(d["rows"]["train"] + d["rows"]["validation"]
                            for d in info["datasets"].values())
    info["bytes"] = sum(d["bytes"] for d in info["datasets"].values())
    info["seconds"] = round(time.perf_counter() - t0, 1)
    marker.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
    return info


def _concat(a: Any, b: Any) -> Any:
    import pyarrow as pa

    t = pa.concat_tables([a, b])
    return t.slice(max(0, t.num_rows - 40_000))  # the last ten files' samples


def _write_jsonl(table: Any, path: Path) -> None:
    with path.open("wb") as f:
        for batch in table.to_batches(max_chunksize=50_000):
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in batch.to_pylist()))


# ------------------------------------------------------------------------------------ tasks
def _scripted_fake() -> Any:
    """The fake OpenAI server, answering each unit's request with ``TASKS`` for its dataset
    (found by name in the prompt) instead of its hash-drawn tasks."""
    from dynogen.testing.fake_openai import FakeOpenAI

    class Scripted(FakeOpenAI):
        def _auto(self, body: dict[str, Any], raw: bytes) -> str:
            text = orjson.dumps(body.get("messages")).decode()
            # the last user message is the unit's; few-shot turns name other datasets
            users = [m for m in body.get("messages") or () if m.get("role") == "user"]
            last = str(users[-1].get("content")) if users else text
            for name, tasks in TASKS.items():
                if name in last:
                    return orjson.dumps({"tasks": [
                        {"instruction": ins, "input_fields": list(inp), "output_field": out}
                        for inp, out, ins in tasks]}).decode()
            return '{"tasks": []}'

    return Scripted(seed=1)


def make_tasks(data: Path, run: Path) -> dict[str, Any]:
    """``run``: a run directory of dynogen's task stage over ``data`` (kept when it exists,
    made over the same data, with every task of ``TASKS``)."""
    from dynogen.commands.run import arun
    from dynogen.config import Config, Secret
    from dynogen.testing.fake_openai import serve

    want = sum(len(t) for t in TASKS.values())
    spec = (data / "spec.json").read_bytes()
    marker = run.parent / f".{run.name}-data-spec.json"  # beside it: not a run's file
    if (run / "report.json").exists() and marker.exists() and marker.read_bytes() == spec:
        report = orjson.loads((run / "report.json").read_bytes())
        if report.get("tasks", {}).get("kept") == want:
            return _task_summary(run, report)
    shutil.rmtree(run, ignore_errors=True)
    marker.unlink(missing_ok=True)

    async def go() -> Any:
        async with serve(_scripted_fake()) as server:
            cfg = Config(source=str(data), out=str(run), base_url=server.url, free=True,
                         quiet=True, variants=("description",), max_tasks_per_unit=4,
                         rows_per_split="all", api_key=Secret("sk-bench"))
            return await arun(cfg, build=False)

    outcome = asyncio.run(go())
    report = dict(outcome.report)
    kept = report.get("tasks", {}).get("kept")
    if kept != want:
        dropped = (run / "dropped_tasks.jsonl").read_text() if (
            run / "dropped_tasks.jsonl").exists() else ""
        raise SystemExit(f"the task stage kept {kept} tasks, not {want}: {outcome.message}\n"
                         f"{dropped[:3000]}")
    marker.write_bytes(spec)
    return _task_summary(run, report)


def _task_summary(run: Path, report: dict[str, Any]) -> dict[str, Any]:
    tasks = [orjson.loads(x) for x in (run / "tasks.jsonl").read_bytes().splitlines() if x]
    return {"units": report.get("units", {}).get("processed"), "kept": len(tasks),
            "with_labels": sum(1 for t in tasks if t.get("labels")),
            "per_dataset": {d: sum(1 for t in tasks if t["dataset"] == d)
                            for d in sorted({t["dataset"] for t in tasks})},
            "tasks": [{"dataset": t["dataset"], "inputs": t["input_fields"],
                       "output": t["output_field"], "labels": t.get("labels") or []}
                      for t in tasks]}


# ----------------------------------------------------------------------------------- builds
def _child(run: str, engine: str, address: str | None, out: str) -> None:
    """(In the child process) build ``run``, timing the sharded build's phases by wrapping
    its methods (the wrappers only read the clock and the candidate files' sizes)."""
    import resource

    import pyarrow.parquet as pq

    from dynogen import api

    marks: dict[str, Any] = {}
    t_start = time.perf_counter()
    if engine == "ray":
        import dynogen.instances.ray_runner as rr
        import dynogen.instances.sharded as sh

        plan, merge, init = sh.ShardedBuild.plan, sh.ShardedBuild._merge, rr.RayRunner.__init__

        def timed_init(self: Any, *a: Any, **k: Any) -> None:
            t = time.perf_counter()
            init(self, *a, **k)
            marks["ray_init_s"] = time.perf_counter() - t
            marks["ray_nodes"] = self.nodes()

        def timed_plan(self: Any) -> Any:
            t = time.perf_counter()
            got = plan(self)
            marks["plan_s"] = time.perf_counter() - t
            marks["phase1_start"] = time.perf_counter()
            marks["partitions"] = got[1]
            marks["pieces"] = sum(len(u.specs) for u in got[0])
            marks["piece_rows"] = [int((sp.get("piece") or {}).get("rows") or 0)
                                   for u in got[0] for sp in u.specs]
            return got

        def timed_merge(self: Any, *a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            marks["phase1_s"] = t - marks["phase1_start"]
            files = sorted(self.candidates.glob("*.parquet"))
            marks["candidate_files"] = len(files)
            marks["candidate_bytes"] = sum(p.stat().st_size for p in files)
            marks["candidate_rows"] = sum(pq.read_metadata(p).num_rows for p in files)
            t2 = time.perf_counter()
            marks["hook_s"] = t2 - t
            got = merge(self, *a, **k)
            marks["phase2_s"] = time.perf_counter() - t2
            return got

        rr.RayRunner.__init__ = timed_init  # type: ignore[method-assign]
        sh.ShardedBuild.plan = timed_plan  # type: ignore[method-assign]
        sh.ShardedBuild._merge = timed_merge  # type: ignore[method-assign]
    t0 = time.perf_counter()
    outcome = api.build(run, engine=engine, ray_address=address, rows_per_split="all",
                        quiet=True)
    wall = time.perf_counter() - t0
    marks.pop("phase1_start", None)
    result = {"exit": outcome.exit_code, "message": outcome.message, "wall_s": wall,
              "process_s": time.perf_counter() - t_start,
              "report_wall_s": outcome.report.get("session", {}).get("wall_seconds"),
              "instances": outcome.report.get("instances", {}),
              # ru_maxrss keeps the parent's size across fork and exec; VmHWM is this image's
              "driver_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "driver_vmhwm_mb": _status_kb(os.getpid())[0] / 1024,
              "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
              "marks": marks}
    Path(out).write_bytes(orjson.dumps(result))


def _role(proc: Any) -> str:
    """What a Ray process is, from its command line (a worker renames itself ``ray::...``
    once it runs a task; its command line names the raylet too, so look at the program)."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 -- gone, or not ours to read
        return "other"
    prog = os.path.basename(cmd[0]) if cmd else ""
    text = " ".join(cmd)
    if prog in ("raylet", "gcs_server"):
        return prog
    if text.startswith("ray::") or "default_worker.py" in text:
        return "worker"
    return "ray-other" if "ray" in text else "other"


def _ours() -> set[int]:
    """This process and its ancestors: never sampled as Ray's, never ended."""
    import psutil

    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def _status_kb(pid: int) -> tuple[int, int]:
    """``(VmHWM, VmRSS)`` of ``pid`` in kB (0, 0 once it is gone)."""
    hwm = rss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return hwm, rss


class Sampler:
    """Every ``interval`` s: the peak RSS of the build process, its descendants and every
    process whose command line names one of ``marks`` (a Ray node's temp dir) and theirs;
    and the bytes under ``candidates``."""

    def __init__(self, root: int, marks: tuple[str, ...], candidates: Path,
                 interval: float = 0.25, guard_mb: int = 1500) -> None:
        self.root, self.marks, self.candidates, self.interval = root, marks, candidates, interval
        self.guard_mb = guard_mb  # below this much available memory the build is ended
        self.guard: dict[str, Any] | None = None
        self.timeline: list[tuple[float, float, float]] = []  # (s, build process MB, all MB)
        self._t0 = time.perf_counter()
        self.procs: dict[int, dict[str, Any]] = {}
        self.peak_total_kb = 0
        self.peak_candidate_bytes = 0
        self.samples = 0
        self._skip = _ours()
        self._marked: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tracked(self) -> Iterator[Any]:
        import psutil

        tops = []
        with contextlib.suppress(psutil.Error):
            tops.append(psutil.Process(self.root))
        if self.marks and self.samples % 10 == 0:  # a scan of every process: not each time
            self._marked = [p for p in psutil.process_iter(["cmdline"])
                            if p.pid not in self._skip
                            and any(m in " ".join(p.info.get("cmdline") or ())
                                    for m in self.marks)]
        tops += self._marked
        seen: set[int] = set()
        for top in tops:
            try:
                family = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for p in family:
                if p.pid not in seen:
                    seen.add(p.pid)
                    yield p

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        import psutil

        total = 0
        for p in self._tracked():
            hwm, rss = _status_kb(p.pid)
            if not hwm:
                continue
            total += rss
            rec = self.procs.get(p.pid)
            if rec is None:
                role = "driver" if p.pid == self.root else _role(p)
                rec = self.procs[p.pid] = {"role": role, "hwm_kb": 0, "cpu_s": 0.0,
                                           "cpu0": None if self.samples else -1.0}
            elif rec["role"] in ("other", "ray-other") and p.pid != self.root:
                rec["role"] = _role(p)  # a worker renames itself ray::... once it starts
            rec["hwm_kb"] = max(rec["hwm_kb"], hwm)
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                if rec["cpu0"] == -1.0:  # there before the build: count only from now
                    rec["cpu0"] = t.user + t.system
                rec["cpu_s"] = max(rec["cpu_s"], t.user + t.system - (rec["cpu0"] or 0.0))
        self.peak_total_kb = max(self.peak_total_kb, total)
        t = time.perf_counter() - self._t0
        root = self.procs.get(self.root)
        if root is not None and (not self.timeline or t - self.timeline[-1][0] >= 2.0):
            self.timeline.append((round(t, 1), round(_status_kb(self.root)[1] / 1024),
                                  round(total / 1024)))
        available = psutil.virtual_memory().available // MB
        if available < self.guard_mb and self.guard is None and total > 1024 * 1024:
            # The machine is about to run out: end this build (by its pid) before the
            # kernel's OOM killer picks some other process of the machine.
            self.guard = {"available_mb": int(available), "tracked_rss_mb": total // 1024,
                          "at_s": round(t, 1)}
            for pid in (self.root, *(p for p in self.procs if p != self.root)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            size = sum(p.stat().st_size for p in self.candidates.glob("*.parquet"))
            self.peak_candidate_bytes = max(self.peak_candidate_bytes, size)
        self.samples += 1

    def summary(self) -> dict[str, Any]:
        by_role: dict[str, list[int]] = {}
        cpu: dict[str, float] = {}
        for rec in self.procs.values():
            by_role.setdefault(rec["role"], []).append(rec["hwm_kb"])
            cpu[rec["role"]] = cpu.get(rec["role"], 0.0) + rec["cpu_s"]
        return {"peak_rss_mb_by_role": {r: round(max(v) / 1024, 1) for r, v in by_role.items()},
                "processes_by_role": {r: len(v) for r, v in by_role.items()},
                "peak_rss_sum_mb": round(self.peak_total_kb / 1024, 1),
                "largest_worker_mb": round(max(by_role.get("worker", [0])) / 1024, 1),
                "cpu_s_by_role": {r: round(v, 1) for r, v in cpu.items()},
                "cpu_s": round(sum(cpu.values()), 1),
                "sampled_candidate_bytes": self.peak_candidate_bytes, "samples": self.samples,
                "memory_guard": self.guard, "rss_timeline_mb": self.timeline}


def _env(work: Path, ray_tmp: Path | None = None, auth: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HF_"))}
    root = str(Path(__file__).resolve().parent.parent)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf-home"),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=root + (
                   os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    if auth is not None:
        env["RAY_AUTH_MODE"] = auth
    return env


def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else "ray"


@contextlib.contextmanager
def local_cluster(nodes: int, port: int, env: dict[str, str], tmp: Path,
                  object_store_mb: int = 1024) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``nodes`` Ray nodes on this machine, one CPU each, each its own process tree and temp
    dir; yields ``(address, temp dirs)``. Stops them by pid (``ray stop`` would stop every
    Ray on the machine)."""
    address = f"127.0.0.1:{port}"
    dirs = tuple(str(tmp / f"n{i}") for i in range(nodes))
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
              "--object-store-memory", str(object_store_mb * MB)]
    try:
        for i, d in enumerate(dirs):
            Path(d).mkdir(parents=True, exist_ok=True)
            where = (["--head", "--port", str(port), "--include-dashboard=false"] if i == 0
                     else ["--address", address])
            r = subprocess.run([_ray_bin(), "start", *where, *common, "--temp-dir", d], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"ray start failed ({r.returncode}): {r.stderr[-2000:]}")
        _wait_nodes(address, nodes, env)
        yield address, dirs
    finally:
        _kill_marked(dirs)


def _wait_nodes(address: str, nodes: int, env: dict[str, str]) -> None:
    code = ("import ray,sys,time\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
            "t=time.time()\nwhile sum(n['Alive'] for n in ray.nodes())<int(sys.argv[2]) "
            "and time.time()-t<60: time.sleep(0.5)\n"
            "print(sum(n['Alive'] for n in ray.nodes()))")
    r = subprocess.run([sys.executable, "-c", code, address, str(nodes)], env=env,
                       capture_output=True, text=True, timeout=180)
    if r.returncode != 0 or r.stdout.strip().splitlines()[-1:] != [str(nodes)]:
        raise SystemExit(f"the cluster at {address} did not show {nodes} nodes: "
                         f"{r.stdout[-500:]} {r.stderr[-1500:]}")


def _kill_marked(marks: tuple[str, ...]) -> None:
    """End the processes whose command line names one of ``marks``, and their children."""
    import psutil

    skip = _ours()

    def family() -> list[Any]:
        out: dict[int, Any] = {}
        for p in psutil.process_iter(["cmdline"]):
            if p.pid not in skip and any(m in " ".join(p.info.get("cmdline") or ())
                                         for m in marks):
                with contextlib.suppress(psutil.Error):
                    for q in [p, *p.children(recursive=True)]:
                        out[q.pid] = q
        return list(out.values())

    procs = family()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _rows_read(run: Path, engine: str) -> int:
    journal = run / ("instances/builds.jsonl" if engine == "ray" else "builds.jsonl")
    return sum(int(orjson.loads(x).get("rows") or 0)
               for x in journal.read_bytes().splitlines() if x)


def digests(run: Path) -> Any:
    """The sorted xxh3 digests of every instance of ``run`` (as sorted-key JSON)."""
    from dynogen.store.instance_files import iter_instances

    out = np.fromiter((xxhash.xxh3_64_intdigest(orjson.dumps(r, option=orjson.OPT_SORT_KEYS))
                       for r in iter_instances(run)), dtype=np.uint64)
    out.sort()
    return out


def _bytes(paths: Iterator[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def build_once(name: str, engine: str, tasks_run: Path, work: Path, *,
               address: str | None = None, marks: tuple[str, ...] = (),
               ray_tmp: Path | None = None, auth: str | None = None, guard_mb: int = 1500,
               ) -> tuple[dict[str, Any], Path]:
    """Copy ``tasks_run`` and build it in a child process, sampled; returns the measures."""
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(tasks_run, run)
    out = work / f"child-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.ray_build", "--child", str(run), engine,
           address or "", str(out)]
    env = _env(work, ray_tmp, auth)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=str(work), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    own_marks = (*marks, str(ray_tmp)) if ray_tmp is not None else marks
    with Sampler(proc.pid, own_marks, run / "instances" / ".candidates",
                 guard_mb=guard_mb) as sampler:
        log, _ = proc.communicate()
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    if proc.returncode != 0 or not out.exists():
        # killed (the memory guard, the kernel's OOM killer) or failed: say how far it got
        journal = run / ("instances/builds.jsonl" if engine == "ray" else "builds.jsonl")
        done = [orjson.loads(x) for x in journal.read_bytes().splitlines()
                if x] if journal.exists() else []
        return {"engine": engine, "address": address, "exit": proc.returncode,
                "failed": "killed by the memory guard" if sampler.guard else
                f"exited {proc.returncode}", "process_wall_s": round(wall, 2),
                "units_built": len(done), "rows_read": sum(int(r.get("rows") or 0) for r in done),
                "instances_written": sum(int(r.get("instances") or 0) for r in done),
                "memory": sampler.summary(),
                "load_avg_1min": [round(load_before, 2), round(load_after, 2)],
                "log_tail": log.decode(errors="replace")[-1500:]}, run
    child = orjson.loads(out.read_bytes())
    rows = _rows_read(run, engine)
    m = child["marks"]
    build_s = child["wall_s"] - float(m.get("hook_s", 0.0))
    shards = sorted((run / "instances").glob("part-*.parquet"))
    res: dict[str, Any] = {
        "engine": engine, "address": address, "exit": child["exit"],
        "process_wall_s": round(wall, 2), "build_s": round(build_s, 2),
        "rows_read": rows, "rows_per_s": round(rows / build_s),
        "instances_written": child["instances"].get("written"),
        "instances_duplicates": child["instances"].get("duplicates"),
        "instances_skipped_by_reason": child["instances"].get("skipped_by_reason"),
        "instances_per_s": round((child["instances"].get("written") or 0) / build_s),
        "child_cpu_s": round(child["cpu_s"], 1),
        "driver_peak_rss_mb": round(child.get("driver_vmhwm_mb") or sampler.summary()[
            "peak_rss_mb_by_role"].get("driver", 0.0), 1),
        "driver_ru_maxrss_mb": round(child["driver_maxrss_mb"], 1),
        "memory": sampler.summary(),
        "load_avg_1min": [round(load_before, 2), round(load_after, 2)],
        "phases": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in m.items()},
        "output_bytes": (_bytes(iter(shards)) if engine == "ray"
                         else (run / "instances.jsonl").stat().st_size),
        "output_files": len(shards) if engine == "ray" else 1,
        "log_tail": log.decode(errors="replace")[-1500:],
    }
    return res, run


# ------------------------------------------------------------------------------------- main
BUILDS = (("local", "local", 0), ("ray-1-node", "ray", 1), ("ray-2-nodes", "ray", 2))


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    import psutil

    commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short",
                             "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(), "cpu": cpu,
            "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "python": platform.python_version(), "commit": commit,
            "versions": {p: version(p) for p in ("ray", "pyarrow", "datasets")}}


def measure(rows: int, work: Path, port: int, names: tuple[str, ...], keep: bool,
            guard_mb: int = 1500) -> dict[str, Any]:
    import tempfile

    work.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"machine": machine(), "rows_requested": rows}
    print(f"data: {rows:,} rows under {work / 'data'} ...", flush=True)
    info = generate(work / "data", rows)
    doc["data"] = {"rows": info["rows"], "rows_read": info["rows_read"],
                   "bytes": info["bytes"], "generate_s": info["seconds"],
                   "datasets": {k: {"format": v["format"], "rows": v["rows"],
                                    "files": {s: len(f) for s, f in v["files"].items()},
                                    "row_group_rows": v["row_group_rows"], "bytes": v["bytes"]}
                                for k, v in info["datasets"].items()}}
    print("tasks: dynogen's task stage against the scripted fake ...", flush=True)
    doc["tasks"] = make_tasks(work / "data", work / "tasks")
    doc["builds"] = {}
    reference: tuple[str, Any] | None = None
    for name, engine, nodes in BUILDS:
        if name not in names:
            continue
        print(f"build: {name} ...", flush=True)
        ray_tmp = Path(tempfile.mkdtemp(prefix="rb-ray-"))  # short: Ray's socket paths
        try:
            if nodes == 2:
                # Ray 2.60's `ray start --head` turns token auth on when ~/.ray/auth_token
                # exists (a local ray.init() writes one) and `ray start --address` does not,
                # so the worker could not join: say it once for all three processes
                with local_cluster(2, port, _env(work, auth="disabled"), ray_tmp) as (
                        address, dirs):
                    res, run = build_once(name, engine, work / "tasks", work, address=address,
                                          marks=dirs, auth="disabled", guard_mb=guard_mb)
                res["cluster"] = {"nodes": 2, "cpus_per_node": 1, "object_store_mb": 1024}
            else:
                res, run = build_once(name, engine, work / "tasks", work,
                                      ray_tmp=ray_tmp if engine == "ray" else None,
                                      guard_mb=guard_mb)
                if engine == "ray":
                    res["cluster"] = {"nodes": 1, "cpus_per_node": os.cpu_count(),
                                      "started_by": "the build (ray.init)"}
        finally:
            if engine == "ray" and nodes != 2:
                _kill_marked((str(ray_tmp),))  # anything the build's own Ray left behind
            shutil.rmtree(ray_tmp, ignore_errors=True)
        if res.get("failed"):
            doc["builds"][name] = res
            print(f"| {name} | {res['failed']} after {res['process_wall_s']} s: "
                  f"{res['units_built']} units, peak "
                  f"{res['memory']['peak_rss_sum_mb']:,.0f} MB |", flush=True)
            if not keep:
                shutil.rmtree(run, ignore_errors=True)
            continue
        t = time.perf_counter()
        got = digests(run)
        res["digest_s"] = round(time.perf_counter() - t, 1)
        res["instances_read_back"] = int(got.size)
        if reference is None:  # the first build that finished: local when it ran
            reference = (name, got)
        else:
            res["reference"] = reference[0]
            res["equal_to_reference"] = bool(np.array_equal(got, reference[1]))
            if not res["equal_to_reference"]:
                res["only_here"] = int(np.setdiff1d(got, reference[1]).size)
                res["only_in_reference"] = int(np.setdiff1d(reference[1], got).size)
        doc["builds"][name] = res
        print(_row(name, res), flush=True)
        if not keep:
            shutil.rmtree(run, ignore_errors=True)
    doc["scale_out_inputs"] = scale_inputs(doc)
    return doc


def scale_inputs(doc: dict[str, Any]) -> dict[str, Any]:
    """What the on-paper scale-out figure is worked out from (bench/README.md)."""
    one = doc["builds"].get("ray-1-node")
    if not one:
        return {}
    p = one["phases"]
    rows = one["rows_read"]
    cand = int(p.get("candidate_bytes") or 0)
    return {
        "rows_read": rows, "source_bytes": doc["data"]["bytes"],
        "candidate_rows": p.get("candidate_rows"), "candidate_bytes": cand,
        "shard_bytes": one["output_bytes"], "instances": one["instances_written"],
        "pieces": p.get("pieces"), "partitions": p.get("partitions"),
        "piece_rows": p.get("piece_rows"),
        "plan_s": p.get("plan_s"), "ray_init_s": p.get("ray_init_s"),
        "phase1_s": p.get("phase1_s"), "phase2_s": p.get("phase2_s"),
        "phase1_rows_per_s_per_node": round(rows / p["phase1_s"]) if p.get("phase1_s") else None,
        "phase2_candidates_per_s_per_node": (round(p["candidate_rows"] / p["phase2_s"])
                                             if p.get("phase2_s") else None),
        "shuffle_bytes_per_row": round(cand / rows, 1) if rows else None,
        "cpu_s": one["memory"]["cpu_s"],
        "rows_per_cpu_s": round(rows / one["memory"]["cpu_s"]) if one["memory"]["cpu_s"] else None,
        "local_rows_per_cpu_s": (round(doc["builds"]["local"]["rows_read"]
                                       / doc["builds"]["local"]["memory"]["cpu_s"])
                                 if doc["builds"].get("local", {}).get("exit") == 0 else None),
    }


def scale_out(inp: dict[str, Any], nodes: int, *, cores: int = 2, node_gb_s: float = 1.25,
              fs_gb_s: float = 2.0) -> dict[str, float]:
    """The build's time on ``nodes`` machines of ``cores`` cores each, worked out from the
    one-node measures (``scale_inputs``): each phase is waves of equal tasks (a piece, a
    partition) at the measured per-core rate, or the bytes it moves through the shared
    filesystem (each node's link ``node_gb_s``, the filesystem's ``fs_gb_s`` in all),
    whichever is longer; plus starting Ray and the plan."""
    import math

    rows, pieces, parts = inp["rows_read"], inp["pieces"], inp["partitions"]
    r1 = inp["phase1_rows_per_s_per_node"] / cores  # rows/s of one core
    r2 = inp["phase2_candidates_per_s_per_node"] / cores
    slots = nodes * cores
    bw = min(nodes * node_gb_s, fs_gb_s) * 1e9
    sizes = [float(n) for n in inp.get("piece_rows") or ()]
    if len(sizes) == pieces and sum(sizes) <= rows:
        # a JSON Lines piece's rows are not known before it is read: share what is left
        unknown = sizes.count(0.0)
        sizes = [n or (rows - sum(sizes)) / unknown for n in sizes]
        load = [0.0] * slots  # the largest piece first, each to the core free first
        for n in sorted(sizes, reverse=True):
            load[load.index(min(load))] += n
        p1_cpu = max(load) / r1
    else:  # equal pieces
        p1_cpu = math.ceil(pieces / slots) * (rows / pieces) / r1
    p1_io = (inp["source_bytes"] + inp["candidate_bytes"]) / bw
    p2_cpu = math.ceil(parts / slots) * (inp["candidate_rows"] / parts) / r2
    p2_io = (inp["candidate_bytes"] + inp["shard_bytes"]) / bw
    fixed = float(inp["ray_init_s"] or 0) + float(inp["plan_s"] or 0)
    total = fixed + max(p1_cpu, p1_io) + max(p2_cpu, p2_io)
    return {"nodes": nodes, "phase1_s": round(max(p1_cpu, p1_io), 1),
            "phase1_io_s": round(p1_io, 2), "phase2_s": round(max(p2_cpu, p2_io), 1),
            "phase2_io_s": round(p2_io, 2), "total_s": round(total, 1),
            "rows_per_s": round(rows / total)}


def scale_table(doc: dict[str, Any], nodes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> str:
    inp = dict(doc.get("scale_out_inputs") or {})
    if not inp.get("phase1_s"):
        return ""
    if not inp.get("piece_rows"):  # the plan is the same in every Ray build of a run
        inp["piece_rows"] = next((b["phases"]["piece_rows"] for b in doc["builds"].values()
                                  if b.get("phases", {}).get("piece_rows")), None)
    lines = ["| machines (2 cores) | phase 1 s (of it I/O) | phase 2 s (of it I/O) | total s "
             "| rows/s |", "|---|---|---|---|---|"]
    for n in nodes:
        m = scale_out(inp, n)
        lines.append(f"| {n} | {m['phase1_s']:,} ({m['phase1_io_s']}) | {m['phase2_s']:,} "
                     f"({m['phase2_io_s']}) | {m['total_s']:,} | {m['rows_per_s']:,} |")
    return "\n".join(lines)


HEAD = ("| build | nodes × CPUs | build s | rows/s | CPU s | instances | driver peak RSS MB | "
        "largest worker MB | all processes MB | candidates MB | output MB | same output |")


def _row(name: str, r: dict[str, Any]) -> str:
    c = r.get("cluster") or {}
    shape = f"{c.get('nodes', 1)} × {c.get('cpus_per_node', 1)}" if c else "1 process"
    mem = r["memory"]
    driver = mem["peak_rss_mb_by_role"].get("driver", 0.0)  # VmHWM: this image's own peak
    worker = f"{mem['largest_worker_mb']:,.0f}" if mem["largest_worker_mb"] else "–"
    cand = r["phases"].get("candidate_bytes")
    if "equal_to_local" in r:  # results written before the reference could be another build
        r = {**r, "reference": "local", "equal_to_reference": r["equal_to_local"]}
    eq = ("reference" if "reference" not in r else
          f"{'yes' if r.get('equal_to_reference') else 'NO'} (as {r['reference']})")
    return (f"| {name} | {shape} | {r['build_s']:,.1f} | {r['rows_per_s']:,} | "
            f"{mem['cpu_s']:,.0f} | {r['instances_written']:,} | {driver:,.0f} | "
            f"{worker} | {mem['peak_rss_sum_mb']:,.0f} | "
            f"{f'{cand / MB:,.0f}' if cand else '–'} | {r['output_bytes'] / MB:,.0f} | {eq} |")


def table(doc: dict[str, Any]) -> str:
    lines = [HEAD, "|---" * (HEAD.count("|") - 1) + "|"]
    lines += [_row(n, r) if not r.get("failed") else
              f"| {n} | {r['failed']} after {r['process_wall_s']:,.0f} s "
              f"({r['units_built']} units built) | | | | | | | "
              f"{r['memory']['peak_rss_sum_mb']:,.0f} | | | |"
              for n, r in doc["builds"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2], argv[3] or None, argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows in all datasets")
    p.add_argument("--work", type=Path, default=Path("/tmp/dynogen-ray-build"),
                   help="where the data, the run directories and the builds go (kept data is "
                        "reused by the next run with the same --rows)")
    p.add_argument("--port", type=int, default=6391, help="the 2-node cluster's GCS port")
    p.add_argument("--builds", default=",".join(n for n, _, _ in BUILDS),
                   help="which builds to measure (the first one that finishes is the reference "
                        "the others' output is compared with)")
    p.add_argument("--keep", action="store_true", help="keep the built run directories")
    p.add_argument("--guard-mb", type=int, default=1500,
                   help="end a build (over 1 GB itself) when the machine has less than this "
                        "much memory available, before the kernel's OOM killer picks a process")
    p.add_argument("--out", type=Path, help="the results file (default: bench/results/"
                                            "ray_build.json, or ray_build-ROWS.json)")
    p.add_argument("--table", type=Path, metavar="JSON", help="print a saved result's table")
    args = p.parse_args(argv)
    if args.table:
        saved = orjson.loads(args.table.read_bytes())
        print(table(saved))
        print()
        print(scale_table(saved))
        return 0
    names = tuple(n.strip() for n in args.builds.split(",") if n.strip())
    doc = measure(args.rows, args.work, args.port, names, args.keep, args.guard_mb)
    out = args.out or RESULTS / ("ray_build.json" if args.rows == DEFAULT_ROWS
                                 else f"ray_build-{args.rows}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print()
    print(table(doc))
    print({k: v for k, v in doc["scale_out_inputs"].items() if k != "piece_rows"})
    print(scale_table(doc))
    print(f"saved {out}")
    ok = all(r.get("equal_to_reference", True) and r["exit"] == 0
             for r in doc["builds"].values())
    if not ok:
        print("a build failed or differs from the local engine's output")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
