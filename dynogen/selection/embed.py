"""Embedders: text in, unit-length float32 rows out.

``Embedder`` is the small interface replay needs; two implementations:

- ``LexicalEmbedder``: TF-IDF over words, hashed with a
  sign into ``dims`` buckets (the hashing trick is itself a random projection
  that keeps inner products in expectation), sublinear term frequency, IDF
  fitted on the texts being compared. No model, no new dependency, about
  100,000 instructions in a few seconds here. Chosen over the bundled
  SmolLM2's embeddings, which rank unrelated instructions above paraphrases
  (../shared/OFFLINE-FACTS.md), and over scikit-learn, which is not
  installed and would add a dependency for what is 60 lines of numpy.
- ``APIEmbedder``: an OpenAI-compatible ``/v1/embeddings`` endpoint, many
  texts per request, through the run's execution seam (same limiter, budget,
  ledger and request cache), with an ``EmbeddingStore`` so each text is paid
  for once per model whatever the batching.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import orjson
import xxhash

from dynogen.errors import InvalidResponseError, UserError
from dynogen.execute.base import EMBEDDINGS, Accounting, Executor, Request
from dynogen.prompts.tokens import TokenCounter
from dynogen.selection.select import normalize_rows

__all__ = ["APIEmbedder", "DEFAULT_BATCH", "DEFAULT_DIMS", "Embedder", "EmbeddingStore",
           "LexicalEmbedder", "project"]

DEFAULT_DIMS = 256
DEFAULT_BATCH = 128  # texts per /embeddings request (OpenAI takes up to 2,048)
BLOCK = 8192  # texts tokenised, and rows filled, at a time
F32 = npt.NDArray[np.float32]
_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 rows, one per text, ``dims`` columns."""

    name: str
    dims: int

    async def embed(self, texts: Sequence[str]) -> F32: ...


def _features(text: str) -> list[str]:
    # Words only: on bench/collection.py's paraphrase pairs, adding bigrams doubled
    # the features (more hash collisions at 256 buckets) and did not find more pairs.
    found: list[str] = _WORD.findall(text.casefold())
    return found


class LexicalEmbedder:
    """Hashed TF-IDF vectors of words, IDF fitted on each call's texts.

    >>> vecs = await LexicalEmbedder(dims=256).embed(["Classify the review.", "Translate it."])
    >>> vecs.shape, vecs.dtype
    ((2, 256), dtype('float32'))
    """

    def __init__(self, dims: int = DEFAULT_DIMS) -> None:
        self.dims = dims
        self.name = f"lexical-tfidf-{dims}"

    async def embed(self, texts: Sequence[str]) -> F32:
        return self.embed_sync(texts)

    def embed_sync(self, texts: Sequence[str]) -> F32:
        """Memory stays near the output's size: texts are read in blocks, each word is
        kept once (its number), and the rows are filled a block at a time."""
        n = len(texts)
        vocab: dict[str, int] = {}
        fid_parts: list[npt.NDArray[np.int64]] = []
        row_parts: list[npt.NDArray[np.int64]] = []
        for lo in range(0, n, BLOCK):
            ids: list[int] = []
            lengths = []
            for text in texts[lo:lo + BLOCK]:
                words = _features(text)
                ids.extend(vocab.setdefault(w, len(vocab)) for w in words)
                lengths.append(len(words))
            fid_parts.append(np.asarray(ids, dtype=np.int64))
            row_parts.append(np.repeat(np.arange(lo, lo + len(lengths), dtype=np.int64),
                                       lengths))
        out = np.zeros((n, self.dims), dtype=np.float32)
        nv = len(vocab)
        if nv == 0:
            return out
        fid = np.concatenate(fid_parts)
        rows = np.concatenate(row_parts)
        del fid_parts, row_parts
        # (row, word) pairs with their counts, sorted by row; then document frequency.
        pair, tf = np.unique(rows * nv + fid, return_counts=True)
        del fid, rows
        prow, pfid = np.divmod(pair, nv)
        del pair
        df = np.bincount(pfid, minlength=nv).astype(np.float32)
        # No "+1": a word in every text weighs nothing (sklearn adds 1, which lets
        # "the" outweigh content words when few texts are compared).
        idf = np.log((1.0 + n) / (1.0 + df))
        # Each distinct word hashed once, to a bucket and a sign.
        hashes = np.fromiter((xxhash.xxh3_64_intdigest(w.encode("utf-8", "surrogatepass"))
                              for w in vocab), dtype=np.uint64, count=nv)
        del vocab
        bucket = (hashes % np.uint64(self.dims)).astype(np.int64)
        sign = np.where(hashes >> np.uint64(63), 1.0, -1.0).astype(np.float32)
        weights = (1.0 + np.log(tf.astype(np.float32))) * idf[pfid] * sign[pfid]
        cell = bucket[pfid]
        bounds = np.searchsorted(prow, np.arange(0, n + BLOCK, BLOCK))
        for b, lo in enumerate(range(0, n, BLOCK)):
            a, z = bounds[b], bounds[b + 1]
            rows_here = min(BLOCK, n - lo)
            block = np.bincount((prow[a:z] - lo) * self.dims + cell[a:z], weights=weights[a:z],
                                minlength=rows_here * self.dims)
            out[lo:lo + rows_here] = block.reshape(rows_here, self.dims)
        return normalize_rows(out)


def project(x: npt.NDArray[np.floating], dims: int, seed: int = 0) -> F32:
    """``x`` projected to ``dims`` columns by a fixed Gaussian matrix (zero-padded if
    narrower), rows renormalised.

    Keeps cosine similarities within a few hundredths at 256 dimensions
    (Johnson-Lindenstrauss), which is what lets 100,000 vectors of 1,536
    dimensions fit in 100 MB.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] <= dims:  # zero columns change no dot product
        return normalize_rows(np.pad(x, ((0, 0), (0, dims - x.shape[1]))))
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((x.shape[1], dims)).astype(np.float32)
    return normalize_rows(x @ m)


class EmbeddingStore:
    """Vectors already paid for, by model and text: each text is embedded once per model.

    >>> store = EmbeddingStore(collection / "embeddings.sqlite")
    >>> store.put("text-embedding-3-small@256", ["hi"], vectors)
    >>> vectors, missing = store.get("text-embedding-3-small@256", ["hi"], dims=256)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors "
                         "(key BLOB PRIMARY KEY, dims INTEGER NOT NULL, vec BLOB NOT NULL)")

    @staticmethod
    def _key(model: str, text: str) -> bytes:
        return xxhash.xxh3_128_digest(f"{model}\x1e{text}".encode("utf-8", "surrogatepass"))

    def get(self, model: str, texts: Sequence[str], dims: int) -> tuple[F32, list[int]]:
        """The stored rows (zeros where missing) and the indices of the missing texts."""
        out = np.zeros((len(texts), dims), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        keys = [self._key(model, t) for t in texts]
        where: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            where.setdefault(key, []).append(i)
        unique = list(where)
        for lo in range(0, len(unique), 500):  # one query per 500 keys, not one per text
            chunk = unique[lo:lo + 500]
            marks = ",".join("?" * len(chunk))
            for key, d, vec in self._db.execute(
                    f"SELECT key, dims, vec FROM vectors WHERE key IN ({marks})", chunk):
                if int(d) == dims:
                    rows = where[bytes(key)]
                    out[rows] = np.frombuffer(vec, dtype=np.float32)
                    found[rows] = True
        return out, np.flatnonzero(~found).tolist()

    def put(self, model: str, texts: Sequence[str], vectors: F32) -> None:
        rows = [(self._key(model, t), int(v.shape[0]), v.astype(np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO vectors (key, dims, vec) VALUES (?, ?, ?)",
                             rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class APIEmbedder:
    """Vectors from an OpenAI-compatible ``/v1/embeddings`` endpoint through ``executor``.

    The executor is the run's (``dynogen.compose.open_stack``): the same
    limiter, ledger, budget and request cache as chat calls. Texts already in
    ``store`` are not sent; the rest go ``batch`` to a request, as many
    requests at once as the executor takes. Vectors wider than ``dims`` are
    projected (``project``, a fixed seed), so 100,000 of them stay ~100 MB.

    >>> async with open_stack(cfg, price=price, stage="embed", cache_path=cache) as st:
    ...     vecs = await APIEmbedder(st.executor, "text-embedding-3-small", store).embed(texts)
    """

    def __init__(self, executor: Executor, model: str, store: EmbeddingStore, *,
                 dims: int = DEFAULT_DIMS, batch: int = DEFAULT_BATCH,
                 counter: TokenCounter | None = None) -> None:
        self.executor = executor
        self.model = model
        self.store = store
        self.dims = dims
        self.batch = max(1, batch)
        self.counter = counter or TokenCounter()
        self.name = f"{model}@{dims}"
        self.acct = Accounting()
        self.sent = 0

    async def embed(self, texts: Sequence[str]) -> F32:
        out, missing = self.store.get(self.name, texts, self.dims)
        groups = [missing[i:i + self.batch] for i in range(0, len(missing), self.batch)]
        slots = asyncio.Semaphore(max(1, self.executor.concurrency))

        async def one(group: list[int]) -> None:
            async with slots:
                batch = [texts[i] for i in group]
                vecs = await self._request(batch)
                self.store.put(self.name, batch, vecs)
                out[group] = vecs

        try:
            async with asyncio.TaskGroup() as tg:
                for g in groups:
                    tg.create_task(one(g))
        except BaseExceptionGroup as eg:
            # One error for the caller (budget, stop, a fatal answer); what was
            # answered before it is in the store, so running again resumes.
            raise _first(eg) from None
        return out

    async def _request(self, batch: list[str]) -> F32:
        body = orjson.dumps({"model": self.model, "input": batch, "encoding_format": "float"})
        tokens = sum(self.counter.count(t) for t in batch)
        comp = await self.executor.complete(
            Request(body, prompt_tokens=tokens, max_tokens=0, endpoint=EMBEDDINGS), self.acct)
        self.sent += 1
        try:
            data = orjson.loads(comp.raw)["data"]
            rows = sorted(data, key=lambda d: int(d["index"]))
            vecs = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidResponseError("the embeddings answer is not a list of vectors",
                                       kind="wrong_shape") from None
        if vecs.ndim != 2 or vecs.shape[0] != len(batch):
            raise UserError(f"the server answered {vecs.shape[0] if vecs.ndim else 0} vectors "
                            f"for {len(batch)} texts: does {self.model} accept a list of "
                            "inputs? Try a smaller --embed-batch")
        return project(vecs, self.dims)


def _first(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    return group
