"""Replay selection: k-center spreads out, embedders keep the interface, outputs add up."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from dynogen.api import agrow, areplay
from dynogen.config import Config
from dynogen.errors import ConfigError
from dynogen.io.sources import samples_dir
from dynogen.selection.embed import APIEmbedder, EmbeddingStore, LexicalEmbedder, project
from dynogen.selection.select import (
    k_center,
    mean_pairwise_cosine,
    normalize_rows,
    random_pick,
    reduce_dims,
)
from dynogen.store.journal import iter_jsonl
from dynogen.testing import FakeOpenAI, serve


def brute_k_center(x: np.ndarray[Any, Any], k: int) -> list[int]:
    """Greedy k-center written the slow, obvious way (the reference)."""
    first = int(np.argmin(x @ x.sum(axis=0)))
    chosen = [first]
    while len(chosen) < k:
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in chosen:
                continue
            d = min(1.0 - float(x[i] @ x[c]) for c in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_k_center_matches_the_definition() -> None:
    rng = np.random.default_rng(3)
    x = normalize_rows(rng.standard_normal((60, 8)).astype(np.float32))
    assert k_center(x, 12).tolist() == brute_k_center(x, 12)


@pytest.mark.parametrize("candidates", [1, 7, 64, 10_000])
def test_k_center_with_a_candidate_set_picks_what_the_plain_greedy_picks(candidates: int) -> None:
    from dynogen.selection.select import k_center_naive

    rng = np.random.default_rng(candidates)
    centers = normalize_rows(rng.standard_normal((40, 16)).astype(np.float32))
    rows = centers[rng.integers(0, 40, 3000)] + 0.1 * rng.standard_normal((3000, 16))
    x = normalize_rows(rows.astype(np.float32))
    assert k_center(x, 120, candidates=candidates).tolist() == k_center_naive(x, 120).tolist()


def test_k_center_covers_clusters_before_repeating_one() -> None:
    rng = np.random.default_rng(0)
    centers = normalize_rows(rng.standard_normal((5, 32)).astype(np.float32))
    # 5 tight clusters of very different sizes: random picks mostly hit the big one.
    sizes = [500, 20, 20, 20, 20]
    rows = np.concatenate([c + 0.05 * rng.standard_normal((n, 32)).astype(np.float32)
                           for c, n in zip(centers, sizes, strict=True)])
    label = np.repeat(np.arange(5), sizes)
    x = normalize_rows(rows)
    picks = k_center(x, 5)
    assert sorted(label[picks].tolist()) == [0, 1, 2, 3, 4]
    assert mean_pairwise_cosine(x[picks]) < mean_pairwise_cosine(x[random_pick(len(x), 5)])


def test_mean_pairwise_cosine_equals_the_pairwise_mean() -> None:
    x = normalize_rows(np.random.default_rng(1).standard_normal((30, 6)).astype(np.float32))
    s = x @ x.T
    want = (s.sum() - np.trace(s)) / (30 * 29)
    assert mean_pairwise_cosine(x) == pytest.approx(float(want), abs=1e-5)


def test_reduce_dims_keeps_small_matrices_and_shrinks_large_ones() -> None:
    x = normalize_rows(np.random.default_rng(2).standard_normal((100, 16)).astype(np.float32))
    assert reduce_dims(x, max_cells=10_000) is x
    low = reduce_dims(x, max_cells=800, min_dims=8)
    assert low.shape == (100, 8) and low.dtype == np.float32
    assert np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)


async def test_lexical_embedder_finds_shared_words() -> None:
    texts = ["Classify the sentiment of the movie review.",
             "Translate the sentence into French.",
             "Decide whether the movie review is positive or negative.",
             "Summarize the news article in one sentence.",
             "Answer the question about the passage."]
    x = await LexicalEmbedder().embed(texts)
    assert x.shape == (5, 256) and x.dtype == np.float32
    sims = x @ x.T
    # Shared content words beat the hashing noise of unrelated pairs (one bucket per
    # word in 256 can collide, so compare with their mean, not each).
    assert sims[0, 2] > 0.1 > float(np.mean([sims[0, 1], sims[0, 3], sims[0, 4], sims[1, 3]]))
    exact = await LexicalEmbedder(dims=4096).embed(texts)
    assert (exact @ exact.T)[0, 2] == pytest.approx(float(sims[0, 2]), abs=0.15)
    assert np.allclose(np.diag(sims), 1.0, atol=1e-5)
    empty = await LexicalEmbedder().embed(["", "word"])
    assert not empty[0].any()


def test_project_pads_narrow_vectors_and_shrinks_wide_ones() -> None:
    x = normalize_rows(np.random.default_rng(4).standard_normal((50, 512)).astype(np.float32))
    y = project(x, 256)
    assert y.shape == (50, 256)
    assert np.abs((y @ y.T) - (x @ x.T)).max() < 0.35
    assert np.array_equal(project(x, 256), y)  # fixed seed
    z = project(x[:, :10], 256)
    assert z.shape == (50, 256) and not z[:, 10:].any()


async def test_api_embedder_batches_stores_and_never_pays_twice(tmp_path: Path) -> None:
    from dynogen.compose import open_stack, resolve_price

    fake = FakeOpenAI()
    texts = [f"instruction number {i} about topic {i % 7}" for i in range(50)]
    async with serve(fake) as server:
        cfg = Config(base_url=server.url, model="emb", free=True, max_in_flight=3)
        store = EmbeddingStore(tmp_path / "emb.sqlite")
        async with open_stack(cfg, price=resolve_price(cfg), stage="embed",
                              cache_path=tmp_path / "cache.sqlite") as stack:
            emb = APIEmbedder(stack.executor, "emb", store, dims=64, batch=16)
            first = await emb.embed(texts)
            assert emb.sent == 4 and len(fake.history) == 4
            assert [len(h.body["input"]) for h in fake.history] == [16, 16, 16, 2]
            again = await emb.embed(texts[::-1])
            assert len(fake.history) == 4  # every text already in the store
        store.close()
    assert np.array_equal(again, first[::-1])
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


async def test_api_embedder_stops_at_the_budget(tmp_path: Path) -> None:
    from dynogen.compose import open_stack, resolve_price
    from dynogen.errors import BudgetExceeded

    fake = FakeOpenAI()
    texts = [f"text {i} " * 40 for i in range(64)]
    async with serve(fake) as server:
        cfg = Config(base_url=server.url, model="emb", price_in=1000.0, price_out=0.0,
                     max_in_flight=1)
        store = EmbeddingStore(tmp_path / "emb.sqlite")
        async with open_stack(cfg, price=resolve_price(cfg), stage="embed", budget_usd=2.0,
                              cache_path=tmp_path / "cache.sqlite") as stack:
            emb = APIEmbedder(stack.executor, "emb", store, dims=64, batch=8)
            with pytest.raises(BudgetExceeded):
                await emb.embed(texts)
        _, missing = store.get("emb@64", texts, 64)
        store.close()
    assert 0 < len(missing) < len(texts)  # what was paid for is kept


# ---------------------------------------------------------------- end to end on a collection
async def grown(tmp_path: Path, url: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    coll = tmp_path / "coll"
    cfg = Config(base_url=url, free=True, quiet=True, source=str(src), rows_per_split=10,
                 max_in_flight=4, licenses="any", languages="any", splits="all")
    shutil.copytree(samples_dir() / "cafe_reviews", src / "cafe_reviews")
    shutil.copytree(samples_dir() / "ag_news", src / "ag_news")
    shutil.copytree(samples_dir() / "boolq", src / "boolq")
    assert (await agrow(coll, cfg)).exit_code == 0
    shutil.copytree(samples_dir() / "science_quiz", src / "science_quiz")
    assert (await agrow(coll, cfg)).exit_code == 0
    return coll


@pytest.mark.parametrize("strategy", ["diverse-instruction", "diverse-data", "random"])
async def test_replay_writes_chosen_tasks_and_a_mixed_file(tmp_path: Path, strategy: str) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        coll = await grown(tmp_path, server.url)
    res = await areplay(coll, k=2, strategy=strategy, out=tmp_path / "r.jsonl", ratio=0.5)
    chosen = list(iter_jsonl(tmp_path / "r.jsonl"))
    assert len(chosen) == 2 == len(res.chosen)
    v1_ids = {t["id"] for t in iter_jsonl(coll / "versions" / "0001" / "tasks.jsonl")}
    assert {c["task_id"] for c in chosen} <= v1_ids and {c["version"] for c in chosen} == {1}
    mixed = list(iter_jsonl(tmp_path / "r-mixed.jsonl"))
    new = [m for m in mixed if not m["replay"]]
    old = [m for m in mixed if m["replay"]]
    assert {m["dataset"] for m in new} == {"science_quiz"} and len(new) == res.new_instances
    assert {m["task_id"] for m in old} <= {c["task_id"] for c in chosen}
    assert len(old) == res.replayed_instances <= round(0.5 * len(new))
    if strategy == "diverse-data":
        assert res.left_out["no_instances"] >= 0 and res.pool <= len(v1_ids)


async def test_replay_through_the_embeddings_endpoint(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        coll = await grown(tmp_path, server.url)
        fake.history.clear()
        embed = Config(base_url=server.url, model="emb", free=True)
        res = await areplay(coll, k=3, strategy="diverse-instruction", out=tmp_path / "a.jsonl",
                            embed=embed, batch=4)
        sent = len(fake.history)
        assert sent >= 1 and all(h.body.get("input") for h in fake.history)
        again = await areplay(coll, k=3, strategy="diverse-instruction",
                              out=tmp_path / "b.jsonl", embed=embed, batch=4)
        assert len(fake.history) == sent  # vectors came from the collection's store
    assert res.embedder == "emb@256" and again.chosen == res.chosen
    assert (coll / "embeddings.sqlite").is_file()


async def test_replay_needs_two_versions(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    async with serve(fake) as server:
        coll = tmp_path / "c"
        await agrow(coll, Config(base_url=server.url, free=True, quiet=True),
                    source=[])
        await agrow(coll, Config(base_url=server.url, free=True, quiet=True, source="samples",
                                 rows_per_split=2, licenses="any", languages="any"))
    with pytest.raises(ConfigError, match="1 complete version"):
        await areplay(coll, k=2, strategy="random", out=tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="unknown --strategy"):
        await areplay(coll, k=2, strategy="best", out=tmp_path / "x.jsonl")


def test_cli_replay(tmp_path: Path) -> None:
    import asyncio

    from click.testing import CliRunner

    from dynogen.cli.main import app

    async def build() -> Path:
        fake = FakeOpenAI()
        async with serve(fake) as server:
            return await grown(tmp_path, server.url)

    coll = asyncio.run(build())
    out = tmp_path / "pick.jsonl"
    result = CliRunner().invoke(app, ["replay", str(coll), "--k", "2", "--out", str(out),
                                      "--strategy", "diverse-instruction"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("replay: 2 of ")
    assert len(out.read_bytes().splitlines()) == 2
    assert orjson.loads(out.read_bytes().splitlines()[0])["rank"] == 0
