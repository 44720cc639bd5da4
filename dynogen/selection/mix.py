"""Replay: pick tasks from a collection's earlier versions, write them and a mixed training file.

The pool is every live (not superseded), train-split task of the complete
versions before the newest. ``diverse-instruction`` embeds each task's
instruction; ``diverse-data`` embeds a few of its instances (input and
output, the first ``per_task``), so tasks without instances are left out of
that pool (counted); ``random`` is the seeded baseline. Diverse picks are
greedy k-center on cosine distance (``select``), after ``reduce_dims``.

Outputs: ``out`` holds the chosen tasks (rank, id, instruction, dataset,
config, version), and ``mixed`` the newest version's train instances followed
by replayed instances of the chosen tasks, ``ratio`` of them per new
instance, spread evenly over the chosen tasks; each line says ``replay``
true or false. Both are written to a temporary name and moved into place.

>>> res = await areplay("data/coll", k=100, strategy="diverse-instruction", out="replay.jsonl")
>>> res.to_dict()["mean_cosine"]
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dynogen.compose import counter_for, open_executor
from dynogen.config import Config
from dynogen.errors import ConfigError
from dynogen.selection.embed import (
    DEFAULT_BATCH,
    DEFAULT_DIMS,
    APIEmbedder,
    Embedder,
    EmbeddingStore,
    LexicalEmbedder,
)
from dynogen.selection.select import k_center, mean_pairwise_cosine, random_pick, reduce_dims
from dynogen.store.collection import Collection

__all__ = ["STRATEGIES", "ReplayResult", "areplay", "open_embedder", "select_replay"]

STRATEGIES = ("diverse-instruction", "diverse-data", "random")
# Of each instance shown to the embedder: input, output. Enough to tell what the data
# is about, and at most ~1 kB per task held while the pool is read.
DATA_CHARS = (240, 80)


@dataclass
class ReplayResult:
    strategy: str
    k: int
    pool: int
    chosen: list[dict[str, Any]]
    out: Path
    mixed: Path | None
    new_instances: int = 0
    replayed_instances: int = 0
    mean_cosine: float | None = None
    left_out: dict[str, int] = field(default_factory=dict)
    embedder: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "k": self.k, "pool": self.pool,
                "chosen": len(self.chosen), "out": str(self.out),
                "mixed": str(self.mixed) if self.mixed else None,
                "new_instances": self.new_instances,
                "replayed_instances": self.replayed_instances,
                "mean_cosine": self.mean_cosine, "left_out": self.left_out,
                "embedder": self.embedder, "seconds": self.seconds}


@contextlib.asynccontextmanager
async def open_embedder(cfg: Config | None, collection: Collection, *,
                        dims: int = DEFAULT_DIMS, batch: int = DEFAULT_BATCH,
                        ) -> AsyncIterator[Embedder]:
    """The lexical embedder, or with ``cfg`` (its ``model`` is the embedding model) the
    endpoint at ``cfg.base_url`` through the execution seam, cached in the collection."""
    if cfg is None:
        yield LexicalEmbedder(dims)
        return
    cfg = cfg.validate()
    store = EmbeddingStore(collection.path / "embeddings.sqlite")
    state = collection.path / "embed"
    state.mkdir(parents=True, exist_ok=True)
    try:
        async with open_executor(cfg, stage="embed", budget_usd=cfg.budget_usd,
                                 cache_path=collection.cache, spend_path=state / "spend.jsonl",
                                 state_dir=state) as stack:
            yield APIEmbedder(stack.executor, cfg.model, store, dims=dims, batch=batch,
                              counter=counter_for(cfg, stack.price))
    finally:
        store.close()


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """BLAS on one thread while selecting: the products are small or memory-bound, and
    threads woken per call cost more than they give (7.9 s against 1.7 s for the
    principal axes of 100,000 x 256, 3.6 s against 0.4 s for 100 of 10,000, on this
    2-core machine under load)."""
    from threadpoolctl import threadpool_limits

    limits: contextlib.AbstractContextManager[Any] = threadpool_limits(limits=1, user_api="blas")
    return limits


def _data_texts(coll: Collection, versions: list[int], wanted: dict[str, int],
                per_task: int) -> dict[int, str]:
    """Pool position -> the first ``per_task`` instances of that task, as one text."""
    parts: dict[int, list[str]] = {}
    for rec in coll.iter_instances(versions=versions):
        pos = wanted.get(str(rec.get("task_id")))
        if pos is None:
            continue
        got = parts.setdefault(pos, [])
        if len(got) < per_task:
            got.append(f"{str(rec.get('input', ''))[:DATA_CHARS[0]]} => "
                       f"{str(rec.get('output', ''))[:DATA_CHARS[1]]}")
    return {pos: "\n".join(p) for pos, p in parts.items()}


def _write_jsonl(path: Path, records: Iterator[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("wb") as fh:
        for rec in records:
            fh.write(orjson.dumps(rec) + b"\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return n


def _quotas(available: dict[str, int], order: list[str], total: int) -> dict[str, int]:
    """``total`` instances spread as evenly as possible over tasks with ``available`` each."""
    quota = dict.fromkeys(order, 0)
    left = total
    open_ = [t for t in order if available.get(t, 0) > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        nxt = []
        for t in open_:
            if left == 0:
                break
            take = min(share, available[t] - quota[t], left)
            quota[t] += take
            left -= take
            if quota[t] < available[t]:
                nxt.append(t)
        open_ = nxt
    return quota


async def areplay(collection: str | Path, *, k: int, strategy: str, out: str | Path,
                  ratio: float = 0.1, mixed: str | Path | None = None,
                  embed: Config | None = None, dims: int = DEFAULT_DIMS,
                  batch: int = DEFAULT_BATCH, seed: int = 0, per_task: int = 3) -> ReplayResult:
    """``dynogen replay``: the collection's embedder opened (``embed``: an endpoint through
    the composition root; ``None`` or ``random``: local), then ``select_replay``."""
    coll = Collection(collection).load()
    async with open_embedder(None if strategy == "random" else embed, coll, dims=dims,
                             batch=batch) as embedder:
        return await select_replay(coll.path, k=k, strategy=strategy, out=out, ratio=ratio,
                                   mixed=mixed, embedder=embedder, seed=seed, per_task=per_task)


async def select_replay(collection: str | Path, *, k: int, strategy: str, out: str | Path,
                        ratio: float = 0.1, mixed: str | Path | None = None,
                        embedder: Embedder | None = None, seed: int = 0,
                        per_task: int = 3) -> ReplayResult:
    """Pick ``k`` tasks from the earlier versions of ``collection`` (see the module doc)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if k < 1:
        raise ConfigError("--k must be at least 1")
    if ratio < 0:
        raise ConfigError("--ratio must be 0 or more")
    coll = Collection(collection).load()
    done = [int(v["version"]) for v in coll.complete_versions()]
    if len(done) < 2:
        raise ConfigError(f"{coll.path} has {len(done)} complete version(s): replay picks tasks "
                          "from earlier versions to train beside the newest, so grow it again "
                          "first")
    newest, earlier = done[-1], done[:-1]
    out = Path(out)
    mixed_path = Path(mixed) if mixed else out.with_name(out.stem + "-mixed.jsonl")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    left_out: dict[str, int] = {}
    # Tuples, not dicts: 100,000 tasks are held while they are embedded.
    pool: list[tuple[str, str, str, str, int]] = []
    for t in coll.iter_tasks(versions=earlier):
        if t.get("split") == "heldout":
            left_out["heldout_task"] = left_out.get("heldout_task", 0) + 1
            continue
        pool.append((str(t["id"]), str(t["instruction"]), str(t["dataset"]), str(t["config"]),
                     int(t["version"])))
    texts: list[str] = []
    if strategy == "diverse-instruction":
        texts = [p[1] for p in pool]
    elif strategy == "diverse-data":
        by_id = {p[0]: i for i, p in enumerate(pool)}
        data = _data_texts(coll, earlier, by_id, per_task)
        kept = [i for i in range(len(pool)) if i in data]
        left_out["no_instances"] = len(pool) - len(kept)
        texts = [data[i] for i in kept]
        pool = [pool[i] for i in kept]
    times["pool"] = time.perf_counter() - t0
    if not pool:
        raise ConfigError(f"the earlier versions of {coll.path} hold no task to replay "
                          f"({left_out or 'none'})")
    mean_cos = None
    name = None
    if strategy == "random":
        picks = random_pick(len(pool), k, seed)
    else:
        emb = embedder or LexicalEmbedder()
        name = emb.name
        t1 = time.perf_counter()
        vectors = await emb.embed(texts)
        times["embed"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        with _one_blas_thread():
            x = reduce_dims(vectors)
            del vectors
            picks = k_center(x, k)
        times["select"] = time.perf_counter() - t2
        mean_cos = round(mean_pairwise_cosine(x[picks]), 4)
    fields = ("task_id", "instruction", "dataset", "config", "version")
    chosen = [{"rank": r, **dict(zip(fields, pool[int(i)], strict=True))}
              for r, i in enumerate(picks.tolist())]
    _write_jsonl(out, iter(chosen))
    res = ReplayResult(strategy, k, len(pool), chosen, out, mixed_path, mean_cosine=mean_cos,
                       left_out=left_out, embedder=name)
    t3 = time.perf_counter()
    _write_mixed(coll, newest, earlier, chosen, ratio, res)
    times["mixed"] = time.perf_counter() - t3
    res.seconds = {key: round(v, 3) for key, v in times.items()}
    return res


def _write_mixed(coll: Collection, newest: int, earlier: list[int],
                 chosen: list[dict[str, Any]], ratio: float, res: ReplayResult) -> None:
    ids = [c["task_id"] for c in chosen]
    wanted = set(ids)

    def new() -> Iterator[dict[str, Any]]:
        for rec in coll.iter_instances(versions=[newest]):
            if rec.get("task_split") != "heldout":
                rec["replay"] = False
                yield rec

    res.new_instances = sum(1 for _ in new())
    available: dict[str, int] = {}
    for rec in coll.iter_instances(versions=earlier):
        tid = str(rec.get("task_id"))
        if tid in wanted:
            available[tid] = available.get(tid, 0) + 1
    quota = _quotas(available, ids, round(ratio * res.new_instances))

    def replayed() -> Iterator[dict[str, Any]]:
        taken: dict[str, int] = {}
        for rec in coll.iter_instances(versions=earlier):
            tid = str(rec.get("task_id"))
            if taken.get(tid, 0) < quota.get(tid, 0):
                taken[tid] = taken.get(tid, 0) + 1
                rec["replay"] = True
                yield rec

    def both() -> Iterator[dict[str, Any]]:
        yield from new()
        yield from replayed()

    assert res.mixed is not None
    n = _write_jsonl(res.mixed, both())
    res.replayed_instances = n - res.new_instances
