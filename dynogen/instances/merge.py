"""Phase 2 of the sharded build: one hash partition of the candidates → one instance shard.

Every copy of an instance has the same hash, so it lands in one partition;
there, sorted by the order key ``(unit, task, split, file, row)``, the first copy
is the one the single-process build keeps (it meets units in commit order, a
unit's tasks in order, each task's rows in stream order), and the others are
duplicates. Candidates of units that could not be read, and of tasks found
degenerate over all their pieces, are left out first; hashes an earlier
collection version holds (the seed) are duplicates too.

The shard is the partition's kept instances in key order, written whole and
renamed into place (``store.instance_files``), with per-unit counts in its
metadata so a resumed build reads them back instead of merging again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from dynogen.instances.candidates import META_KEY, candidate_meta
from dynogen.store.instance_files import INSTANCE_COLUMNS, write_instance_shard

__all__ = ["merge_partition", "shard_meta"]


def shard_meta(path: Path) -> dict[str, Any]:
    """What a written instance shard says of itself: its partition's per-unit counts."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return dict(orjson.loads(meta[META_KEY]))


def merge_partition(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Phase 2 for partition ``spec["part"]``; returns ``{"part", "units": {u: [candidates,
    kept, truncated]}}``. Runs on a worker."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = Path(spec["out"])
    if out.exists():
        return shard_meta(out)
    part = str(spec["part"])
    drop_units = {int(u) for u in spec.get("drop_units") or ()}
    degenerate = np.asarray(sorted(int(k) for k in spec.get("degenerate") or ()), dtype=np.int64)
    tables = []
    for name in spec["files"]:
        path = Path(name)
        meta = candidate_meta(path)
        g = meta.get("parts", {}).get(part)
        if g is None or int(meta["unit"]) in drop_units:
            continue
        t = pq.ParquetFile(path).read_row_group(int(g))
        n = t.num_rows
        t = t.append_column("u", pa.array(np.full(n, int(meta["unit"]), dtype=np.int32)))
        t = t.append_column("f", pa.array(np.full(n, int(meta["file"]), dtype=np.int32)))
        tables.append(t.replace_schema_metadata(None))
    units: dict[str, list[int]] = {}
    if tables:
        table = pa.concat_tables(tables)
        u = table.column("u").to_numpy().astype(np.int64)
        t_idx = table.column("t").to_numpy().astype(np.int64)
        if degenerate.size:
            live = ~np.isin(u * 65536 + t_idx, degenerate)
            table = table.filter(pa.array(live))
        table = table.sort_by([("u", "ascending"), ("t", "ascending"), ("s", "ascending"),
                               ("f", "ascending"), ("r", "ascending")])
        h = table.column("h").to_numpy()
        keep = np.zeros(len(h), dtype=bool)
        if len(h):
            _, first = np.unique(h, return_index=True)  # the first copy in key order
            keep[first] = True
        seed = spec.get("seed")
        if seed and len(h):
            keep &= ~np.isin(h, np.load(seed))
        u = table.column("u").to_numpy().astype(np.int64)
        truncated = pc.fill_null(table.column("input_truncated"), False).to_numpy(
            zero_copy_only=False)
        for unit in np.unique(u):
            mask = u == unit
            units[str(int(unit))] = [int(mask.sum()), int((mask & keep).sum()),
                                     int((mask & keep & truncated).sum())]
        table = table.filter(pa.array(keep)).select([*INSTANCE_COLUMNS, "input_truncated"])
    else:
        table = None
    result = {"part": int(part), "units": units}
    write_instance_shard(out, table, {META_KEY: orjson.dumps(result)})
    return result
