"""Issue #9's bars for growing a collection and picking replay tasks.

``python -m bench.collection [--corpus PATH] [--quick]`` measures, against the
in-repo fake in its own process:

1. grow: the reference corpus split in two halves by dataset name. Step 1 grows
   from the first half, step 2 from the whole corpus (the second half is what
   was "published" since), step 3 from the whole corpus again. Checks: step 2
   sends requests only for the second half's units (the fake's request count
   equals 2 variants x the second half's sendable units, and every request
   names a second-half dataset); the merged tasks of steps 1+2 equal those of
   one run over the whole corpus (same fake, same answers); step 3 sends
   nothing and writes no version.
2. replay quality: 100 tasks picked from the collection's earlier version by
   ``diverse-instruction`` (lexical embedder, and the fake's /embeddings through
   the execution seam); mean pairwise cosine of the chosen instructions lower
   than each of 20 random draws of 100, measured in the same embedding space.
3. replay scale: a synthetic collection of N earlier tasks (instructions
   recombined from the corpus's own field names and words), ``replay --k K``
   timed end to end in a fresh process with the embeddings already stored
   (API embedder against the fake, a first call fills the store), with peak
   RSS; 100 of 10,000 (bar 30 s) and 1,000 of 100,000 (bar 60 s). The lexical
   embedder (nothing stored: it fits IDF on the pool each time) is timed too.
4. the lexical embedder's choice: recall@1 of paraphrase pairs (each pair's
   partner is its nearest neighbour) for words vs words+bigrams at 256 and
   4096 buckets.

Saves ``bench/results/collection.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import DEFAULT_CORPUS, machine_info, save_result

__all__ = ["main"]

SHARED_CORPUS = Path("/work/shared/hf-metadata-2022/datasets")
VARIANTS = 2


def _corpus(arg: Path | None) -> Path:
    for p in (arg, DEFAULT_CORPUS, SHARED_CORPUS):
        if p is not None and p.is_dir():
            return p
    raise SystemExit("corpus not found: pass --corpus PATH (hf-metadata-2022/datasets)")


def _link_halves(corpus: Path, work: Path, quick: bool) -> tuple[Path, Path, list[str]]:
    names = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    if quick:
        names = names[:120]
    half = len(names) // 2
    first, whole = work / "first-half", work / "whole"
    for folder, chosen in ((first, names[:half]), (whole, names)):
        folder.mkdir(parents=True)
        for n in chosen:  # copies: a folder source does not follow links out of its root
            shutil.copytree(corpus / n, folder / n)
    return first, whole, names[half:]


def _sendable(source: Path) -> dict[str, int]:
    from dynogen.io.sources import open_source
    from dynogen.units import Unit, skip_reason

    out: dict[str, int] = {}
    for item in open_source(str(source)):
        if isinstance(item, Unit) and skip_reason(item) is None:
            out[item.dataset] = out.get(item.dataset, 0) + 1
    return out


def grow_steps(corpus: Path, work: Path, quick: bool) -> dict[str, Any]:
    from dynogen.api import agrow, arun
    from dynogen.config import Config
    from dynogen.store.collection import Collection
    from dynogen.store.journal import iter_jsonl
    from dynogen.testing import start_fake_process

    first, whole, second_names = _link_halves(corpus, work, quick)
    second = set(second_names)
    sendable = _sendable(whole)
    want_step2 = VARIANTS * sum(n for d, n in sendable.items() if d in second)
    coll = work / "coll"
    doc: dict[str, Any] = {"datasets": len(second_names) * 2, "second_half_datasets":
                           len(second_names)}
    with start_fake_process(seed=7, ready_timeout=180) as fake:
        cfg = Config(base_url=fake.url, free=True, quiet=True, max_in_flight=32, licenses="any",
                     languages="any", splits="all")

        def requests() -> int:
            return int(fake.stats()["totals"]["requests"])

        steps = []
        for i, src in enumerate((first, whole, whole), start=1):
            before = requests()
            t0 = time.perf_counter()
            out = asyncio.run(agrow(coll, cfg.with_(source=str(src))))
            steps.append({"step": i, "exit_code": out.exit_code, "message": out.message,
                          "requests": requests() - before,
                          "wall_seconds": round(time.perf_counter() - t0, 2),
                          "plan": out.extra.get("plan")})
        before = requests()
        t0 = time.perf_counter()
        one = asyncio.run(arun(cfg.with_(source=str(whole), out=str(work / "one-run"))))
        one_requests = requests() - before
        one_wall = time.perf_counter() - t0
    c = Collection(coll).load()
    merged = [t["id"] for t in c.iter_tasks()]
    single = [t["id"] for t in iter_jsonl(one.out / "tasks.jsonl")]
    v2 = c.complete_versions()[1] if len(c.complete_versions()) > 1 else {}
    v2_datasets = {str(r.get("dataset")) for r in iter_jsonl(c.path / v2.get("dir", "-")
                                                            / "units.jsonl")
                   if r.get("status") == "done"} if v2 else set()
    doc.update(
        steps=steps, one_run={"requests": one_requests, "tasks": len(single),
                              "wall_seconds": round(one_wall, 2)},
        merged_tasks=len(merged), collection_totals=c.data.get("totals"),
        checks={
            "step1_sent_requests": steps[0]["requests"] > 0,
            "step2_requests_only_for_second_half": 0 < steps[1]["requests"] == want_step2
            and v2_datasets <= second,
            "union_equals_one_run_in_order": len(merged) > 0 and merged == single,
            "union_equals_one_run_as_sets": set(merged) == set(single),
            "step3_sends_nothing": steps[2]["requests"] == 0
            and steps[2]["message"].startswith("nothing new"),
            "step3_writes_no_version": len(c.versions) == 2,
        },
        expected_step2_requests=want_step2,
    )
    doc["collection"] = str(coll)
    return doc


def replay_quality(coll: Path, work: Path) -> dict[str, Any]:
    import numpy as np

    from dynogen.api import areplay
    from dynogen.config import Config
    from dynogen.selection.embed import LexicalEmbedder
    from dynogen.selection.select import mean_pairwise_cosine, random_pick
    from dynogen.store.collection import Collection
    from dynogen.testing import start_fake_process

    c = Collection(coll).load()
    earlier = [int(v["version"]) for v in c.complete_versions()][:-1]
    pool = [t["instruction"] for t in c.iter_tasks(versions=earlier) if t.get("split") != "heldout"]
    out: dict[str, Any] = {"pool": len(pool)}
    x = LexicalEmbedder().embed_sync(pool)
    res = asyncio.run(areplay(coll, k=100, strategy="diverse-instruction",
                              out=work / "replay-lexical.jsonl"))
    index = {t: i for i, t in enumerate(pool)}
    chosen = np.asarray([index[ch["instruction"]] for ch in res.chosen])
    randoms = [mean_pairwise_cosine(x[random_pick(len(pool), 100, seed=s)]) for s in range(20)]
    picked = mean_pairwise_cosine(x[chosen])
    out["lexical"] = {"chosen_mean_cosine": round(picked, 4),
                      "random_mean_cosine": [round(r, 4) for r in randoms],
                      "lower_than_every_random_draw": all(picked < r for r in randoms),
                      "seconds": res.seconds}
    with start_fake_process(seed=7, ready_timeout=180) as fake:
        embed = Config(base_url=fake.url, model="fake-embed", free=True, max_in_flight=16)
        t0 = time.perf_counter()
        res2 = asyncio.run(areplay(coll, k=100, strategy="diverse-instruction",
                                   out=work / "replay-api.jsonl", embed=embed))
        wall = time.perf_counter() - t0
        reqs = fake.stats()["totals"]["requests"]
    from dynogen.selection.embed import EmbeddingStore

    store = EmbeddingStore(coll / "embeddings.sqlite")
    y, missing = store.get("fake-embed@256", pool, 256)
    store.close()
    from dynogen.selection.select import reduce_dims

    y = reduce_dims(y)
    chosen2 = np.asarray([index[ch["instruction"]] for ch in res2.chosen])
    randoms2 = [mean_pairwise_cosine(y[random_pick(len(pool), 100, seed=s)]) for s in range(20)]
    picked2 = mean_pairwise_cosine(y[chosen2])
    out["api_fake_embeddings"] = {
        "requests": reqs, "missing_after": len(missing), "wall_seconds": round(wall, 2),
        "chosen_mean_cosine": round(picked2, 4),
        "random_mean_cosine": [round(r, 4) for r in randoms2],
        "lower_than_every_random_draw": all(picked2 < r for r in randoms2),
        "seconds": res2.seconds}
    return out


# ------------------------------------------------------------------------------ scale
def _vocabulary(corpus: Path) -> list[str]:
    words: set[str] = set()
    for info in sorted(corpus.glob("*/dataset_infos.json"))[:400]:
        text = info.read_text("utf-8", "replace")
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{4,14}", text))
    return sorted(words)


OPENERS = ["Given the {a}, predict the {b}.", "Classify the {a} by its {b}.",
           "Write the {b} for the {a}.", "Decide whether the {a} matches the {b}.",
           "Summarize the {a} into a {b}.", "Translate the {a} into {b}.",
           "Answer the {a} using the {b}.", "Extract the {b} mentioned in the {a}.",
           "Generate a {b} that fits the {a}.", "Rate the {a} for {b}."]


def synth_collection(path: Path, n: int, vocab: list[str], seed: int = 0) -> None:
    """A two-version collection: ``n`` earlier tasks, 50 new ones (no instances)."""
    from dynogen.store.collection import FORMAT

    rng = random.Random(seed)
    versions = []
    for v, count in ((1, n), (2, 50)):
        vdir = path / "versions" / f"{v:04d}"
        vdir.mkdir(parents=True)
        with (vdir / "tasks.jsonl").open("w") as fh:
            for i in range(count):
                a, b = rng.sample(vocab, 2)
                extra = " ".join(rng.sample(vocab, 3))
                text = rng.choice(OPENERS).format(a=a, b=b) + f" Consider {extra}."
                fh.write(json.dumps({"id": f"v{v}-{i}", "dataset": f"ds{i % 5000}",
                                     "config": "default", "variant": "description",
                                     "instruction": text, "input_fields": [a],
                                     "output_field": b, "split": "train"}) + "\n")
        (vdir / "instances.jsonl").write_text("")
        versions.append({"version": v, "dir": f"versions/{v:04d}", "status": "complete",
                         "started": "2026-01-01T00:00:00Z", "supersedes": []})
    (path / "collection.json").write_text(json.dumps({"format": FORMAT, "versions": versions,
                                                      "sources": []}))


def _child(args: argparse.Namespace) -> int:
    """One timed replay in this fresh process; prints a JSON line."""
    import resource

    from dynogen.api import areplay
    from dynogen.config import Config

    embed = Config(base_url=args.url, model="fake-embed", free=True,
                   max_in_flight=16) if args.url else None
    t0 = time.perf_counter()
    res = asyncio.run(areplay(args.coll, k=args.k, strategy="diverse-instruction",
                              out=Path(args.coll) / f"pick-{args.k}.jsonl", embed=embed))
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_seconds": round(wall, 2), "peak_rss_mb": round(rss, 1),
                      "pool": res.pool, "chosen": len(res.chosen), "seconds": res.seconds,
                      "embedder": res.embedder, "mean_cosine": res.mean_cosine}))
    return 0


def _timed(coll: Path, k: int, url: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.collection", "--child", "--coll", str(coll), "--k",
           str(k)] + (["--url", url] if url else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        return {"error": p.stderr[-800:]}
    doc: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return doc


def replay_scale(corpus: Path, work: Path, quick: bool) -> dict[str, Any]:
    from dynogen.testing import start_fake_process

    vocab = _vocabulary(corpus)
    out: dict[str, Any] = {"vocabulary": len(vocab)}
    cases = [(10_000, 100, 30.0), (100_000, 1_000, 60.0)]
    if quick:
        cases = [(10_000, 100, 30.0)]
    with start_fake_process(seed=7, keep_history=False, ready_timeout=180) as fake:
        for n, k, bar in cases:
            coll = work / f"synth-{n}"
            synth_collection(coll, n, vocab)
            fill = _timed(coll, k, fake.url)  # first call: embeds every text, stores them
            cached = _timed(coll, k, fake.url)  # the bar: embeddings already stored
            lexical = _timed(coll, k, None)
            out[f"{k}_of_{n}"] = {
                "first_call_api": fill, "cached_api": cached, "lexical": lexical,
                "bar_seconds": bar,
                "passes": "wall_seconds" in cached and cached["wall_seconds"] < bar,
            }
    return out


# ------------------------------------------------------------------- lexical choice
PAIRS = [
    ("Classify the sentiment of the review.",
     "Decide whether the movie review is positive or negative."),
    ("Translate the sentence into French.", "Give the French translation of this English text."),
    ("Answer the question using a phrase copied from the passage.",
     "Extract the span of the passage that answers the question."),
    ("Summarize the news article in one sentence.", "Write a one-sentence summary of the article."),
    ("Given the premise and hypothesis, decide whether the premise entails the hypothesis.",
     "Does the hypothesis follow from the premise? Answer entailment, neutral or contradiction."),
    ("Identify the named entities in the sentence.",
     "Tag each person, location and organization mentioned in the text."),
    ("Write a question about the passage whose answer is the given phrase.",
     "Generate a question whose answer is the given phrase, based on the passage."),
    ("Predict the topic category of the news headline.",
     "Which topic does this headline belong to: world, sports, business or science?"),
    ("Decide whether the two questions ask the same thing.",
     "Are these two questions duplicates of each other?"),
    ("Rate the toxicity of the comment.", "Is this comment toxic or not?"),
    ("Choose the correct answer to the science question from the options.",
     "Pick the right option for the multiple-choice science question."),
    ("Write a title for the recipe review.",
     "Given a review of a recipe, guess the title of the recipe being reviewed."),
    ("Detect the emotion expressed in the tweet.",
     "Which emotion does the tweet convey: joy, sadness, anger or fear?"),
    ("Paraphrase the given sentence.", "Rewrite the sentence so it says the same thing in other "
     "words."),
    ("Correct the grammatical errors in the sentence.", "Fix the grammar of this sentence."),
    ("Generate a headline for the news article.", "Write a title for this news story."),
]


def lexical_choice() -> dict[str, Any]:
    import numpy as np

    import dynogen.selection.embed as emb

    texts = [a for a, _ in PAIRS] + [b for _, b in PAIRS]
    n = len(PAIRS)
    words = emb._features

    def bigrams(t: str) -> list[str]:
        w = words(t)
        return w + [f"{a} {b}" for a, b in zip(w, w[1:], strict=False)]

    out: dict[str, Any] = {"pairs": n}
    try:
        for name, feats in (("words", words), ("words+bigrams", bigrams)):
            emb._features = feats  # type: ignore[assignment]
            for dims in (256, 4096):
                x = emb.LexicalEmbedder(dims).embed_sync(texts)
                s = x @ x.T
                np.fill_diagonal(s, -9)
                hits = sum(int(np.argmax(s[i]) == (i + n) % (2 * n)) for i in range(2 * n))
                out[f"{name}@{dims}"] = round(hits / (2 * n), 3)
    finally:
        emb._features = words
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.collection",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--corpus", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="120 datasets, the 10,000 case only")
    p.add_argument("--only", choices=["grow", "scale", "lexical"], default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--coll", default=None, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    corpus = _corpus(args.corpus)
    work = Path(tempfile.mkdtemp(prefix="dynogen-collection-"))
    doc: dict[str, Any] = {"scenario": "collection", "corpus": str(corpus), **machine_info()}
    try:
        if args.only in (None, "lexical"):
            doc["lexical_choice"] = lexical_choice()
            print("lexical choice (recall@1 of paraphrase pairs):", doc["lexical_choice"])
        if args.only in (None, "grow"):
            doc["grow"] = grow_steps(corpus, work, args.quick)
            g = doc["grow"]
            for s in g["steps"]:
                print(f"grow step {s['step']}: {s['requests']} requests, {s['wall_seconds']} s: "
                      f"{s['message'][:160]}")
            print("grow checks:", g["checks"])
            doc["replay_quality"] = replay_quality(Path(g["collection"]), work)
            q = doc["replay_quality"]
            for kind in ("lexical", "api_fake_embeddings"):
                r = q[kind]
                print(f"replay 100 of {q['pool']} ({kind}): chosen mean cosine "
                      f"{r['chosen_mean_cosine']} vs random {min(r['random_mean_cosine'])}.."
                      f"{max(r['random_mean_cosine'])}; lower than all 20: "
                      f"{r['lower_than_every_random_draw']}")
        if args.only in (None, "scale"):
            doc["replay_scale"] = replay_scale(corpus, work, args.quick)
            for case, r in doc["replay_scale"].items():
                if isinstance(r, dict):
                    print(f"replay {case}: cached API {r['cached_api']}; lexical "
                          f"{r['lexical']}; passes {r['passes']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.only:  # keep the other parts of the last full run
        from bench.scenarios import RESULTS

        last = RESULTS / "collection.json"
        if last.exists():
            doc = {**json.loads(last.read_text("utf-8")), **doc}
    save_result(doc, "collection")
    checks = [*doc.get("grow", {}).get("checks", {}).values()]
    checks += [r["lower_than_every_random_draw"] for r in
               doc.get("replay_quality", {}).values() if isinstance(r, dict)]
    checks += [r["passes"] for r in doc.get("replay_scale", {}).values() if isinstance(r, dict)]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
