"""What the fake Hub serves for rows, and how it enforces its rate limits.

``HubRows`` holds each dataset config's rows and ``datasets`` features and
serves them the two ways the Hub does: as the Parquet conversion
(``refs/convert/parquet``: ``{config}/{split}/0000.parquet``, or
``{config}/partial-{split}/...`` for a partial conversion; row groups of
``row_group_size`` rows, the features in the schema's ``huggingface``
metadata, byte ranges answered ``206`` with ``Content-Range``) and as the
dataset viewer's ``/rows`` pages (at most 100 rows, typed by the features, long
cells cut and named in ``truncated_cells`` past ``cell_limit`` characters).

``RateWindows`` counts calls per bucket (``api``, ``resolvers``, ``viewer``) in
fixed windows of a clock the test may own, answers ``RateLimit`` and
``RateLimit-Policy`` headers as the Hub does, and refuses with a 429 (and the
seconds to the window's end in ``Retry-After``) once a window's quota is used.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HubRows", "RateWindows", "parse_range"]

PAGE_ROWS = 100
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a one-range ``Range`` header; ``None`` if unsatisfiable.

    >>> parse_range("bytes=-100", 1000), parse_range("bytes=10-19", 1000)
    ((900, 1000), (10, 20))
    """
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(0, size - int(last)), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or end <= start:
        return None
    return start, end


@dataclass
class _Config:
    features: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)
    shard_rows: int | None = None  # rows per Parquet file (None: one file a split)
    row_group_size: int = 100


@dataclass
class HubRows:
    """Rows of the fake Hub's datasets, served as Parquet files and as viewer pages."""

    configs: dict[tuple[str, str], _Config] = field(default_factory=dict)
    cell_limit: int = 0  # /rows cuts string cells longer than this (0: never)
    _files: dict[str, bytes] = field(default_factory=dict)

    def add(self, repo: str, config: str, split: str, rows: list[dict[str, Any]],
            features: Mapping[str, Any], *, row_group_size: int = 100,
            shard_rows: int | None = None, partial: bool = False) -> None:
        cfg = self.configs.setdefault((repo, config), _Config(dict(features)))
        cfg.features = dict(features)
        cfg.splits[split] = list(rows)
        cfg.row_group_size = row_group_size
        cfg.shard_rows = shard_rows
        if partial:
            cfg.partial.add(split)
        self._files = {k: v for k, v in self._files.items()
                       if not k.startswith(f"{repo}/{config}/")}

    def repos(self) -> set[str]:
        return {repo for repo, _ in self.configs}

    # ------------------------------------------------------------------ Parquet
    def file_names(self, repo: str, config: str, split: str) -> list[str]:
        """Paths in ``refs/convert/parquet`` of one split's files, in order."""
        cfg = self.configs.get((repo, config))
        if cfg is None or split not in cfg.splits:
            return []
        n = len(cfg.splits[split])
        per = cfg.shard_rows or max(1, n)
        shards = max(1, math.ceil(n / per))
        folder = f"partial-{split}" if split in cfg.partial else split
        return [f"{config}/{folder}/{i:04d}.parquet" for i in range(shards)]

    def listing(self, repo: str) -> dict[str, dict[str, list[str]]]:
        """``{config: {split: [paths]}}``, as the Hub API's ``/parquet`` lists them."""
        return {config: {split: self.file_names(repo, config, split) for split in cfg.splits}
                for (r, config), cfg in self.configs.items() if r == repo}

    def parquet(self, repo: str, path: str) -> bytes | None:
        """The bytes of ``path`` (``config/split/0000.parquet``) in ``repo``'s conversion."""
        key = f"{repo}/{path}"
        if key in self._files:
            return self._files[key]
        config, _, rest = path.partition("/")
        folder, _, name = rest.partition("/")
        split = folder.removeprefix("partial-")
        cfg = self.configs.get((repo, config))
        if cfg is None or split not in cfg.splits or path not in self.file_names(
                repo, config, split):
            return None
        index = int(name.split(".")[0])
        rows = cfg.splits[split]
        per = cfg.shard_rows or max(1, len(rows))
        data = _parquet_bytes(rows[index * per:(index + 1) * per], cfg.features,
                              cfg.row_group_size)
        self._files[key] = data
        return data

    # ----------------------------------------------------------------- /rows
    def rows_page(self, repo: str, config: str, split: str, offset: int,
                  length: int) -> dict[str, Any] | None:
        cfg = self.configs.get((repo, config))
        if cfg is None or split not in cfg.splits:
            return None
        rows = cfg.splits[split]
        length = max(0, min(length, PAGE_ROWS))
        out = []
        for i, row in enumerate(rows[offset:offset + length], start=offset):
            cut = []
            shown = dict(row)
            for k, v in row.items():
                if self.cell_limit and isinstance(v, str) and len(v) > self.cell_limit:
                    shown[k] = v[:self.cell_limit]
                    cut.append(k)
            out.append({"row_idx": i, "row": shown, "truncated_cells": cut})
        features = [{"feature_idx": i, "name": k, "type": v}
                    for i, (k, v) in enumerate(cfg.features.items())]
        return {"features": features, "rows": out, "num_rows_total": len(rows),
                "num_rows_per_page": PAGE_ROWS, "partial": split in cfg.partial}


def _parquet_bytes(rows: list[dict[str, Any]], features: Mapping[str, Any],
                   row_group_size: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Features

    schema = Features.from_dict(dict(features)).arrow_schema
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, row_group_size))
    return buf.getvalue()


# ------------------------------------------------------------------- rate windows
BUCKET_OF_PATH: tuple[tuple[str, str], ...] = (("/viewer/", "viewer"), ("/resolve/", "resolvers"))


def bucket_of(path: str) -> str:
    for part, bucket in BUCKET_OF_PATH:
        if part in path:
            return bucket
    return "api"


@dataclass
class RateWindows:
    """Fixed-window quotas per bucket, as the Hub enforces them (``{bucket: (quota, seconds)}``)."""

    quotas: dict[str, tuple[int, float]] = field(default_factory=dict)
    clock: Callable[[], float] | None = None
    counts: dict[str, Counter[int]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    log: list[tuple[float, str]] = field(default_factory=list)  # (time, bucket) of every call

    def now(self) -> float:
        import time

        return (self.clock or time.monotonic)()

    def admit(self, bucket: str) -> tuple[bool, dict[str, str]]:
        """Count one call; whether it is within the quota, and the headers to answer with."""
        now = self.now()
        self.log.append((now, bucket))
        quota = self.quotas.get(bucket)
        if quota is None:
            return True, {}
        q, w = quota
        index = math.floor(now / w)
        counts = self.counts.setdefault(bucket, Counter())
        counts[index] += 1
        left = max(0, q - counts[index])
        reset = max(1, math.ceil((index + 1) * w - now))
        headers = {"RateLimit": f'"{bucket}";r={left};t={reset}',
                   "RateLimit-Policy": f'"fixed window";"{bucket}";q={q};w={int(w)}'}
        if counts[index] > q:
            self.refused[bucket] += 1
            headers["Retry-After"] = str(reset)
            return False, headers
        return True, headers

    def reset(self) -> None:
        """Forget every count (a new measurement)."""
        self.counts.clear()
        self.refused.clear()
        self.log.clear()

    def busiest(self, bucket: str, seconds: float) -> int:
        """The most calls of ``bucket`` in any ``seconds`` long span (sliding)."""
        times = [t for t, b in self.log if b == bucket]
        best = start = 0
        for end, t in enumerate(times):
            while t - times[start] >= seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    def peak(self, bucket: str) -> int:
        """The most calls of ``bucket`` any one window received (refused ones included)."""
        counts = self.counts.get(bucket)
        return max(counts.values()) if counts else 0
