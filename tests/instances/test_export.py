"""Exporting instances: Parquet in batches, a datasets folder, bad inputs, a sharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

import dynogen
from dynogen.errors import ConfigError, RunDirError
from dynogen.instances.export import INSTANCE_COLUMNS, export_instances
from dynogen.instances.render import Instance
from tests.helpers import built_both, rows_of


def _records(n: int) -> list[dict[str, Any]]:
    return [
        Instance(
            instruction="Classify the review.", input=f"Review n°{i}: «très bon» ☕",
            output="positive" if i % 2 else "negative", task_id=f"t{i % 3}", dataset="cafe",
            config="default", split="heldout" if i % 5 == 0 else "train",
            license=None if i % 4 == 0 else "apache-2.0",
        ).to_dict()
        for i in range(n)
    ]


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_parquet_round_trip_in_batches(tmp_path: Path) -> None:
    records = _records(12)
    src = _write(tmp_path / "instances.jsonl", records)
    out = tmp_path / "export" / "instances.parquet"
    assert export_instances(src, out, "parquet", batch_rows=5) == 12
    pf = pq.ParquetFile(out)
    assert pf.metadata.num_row_groups == 3  # 5 + 5 + 2: written batch by batch
    assert pf.schema_arrow.names == list(INSTANCE_COLUMNS)
    assert pf.read().to_pylist() == records
    assert sorted(p.name for p in out.parent.iterdir()) == ["instances.parquet"]  # no temp left


def test_datasets_folder_round_trip(tmp_path: Path) -> None:
    import datasets

    records = _records(7)
    src = _write(tmp_path / "instances.jsonl", records)
    out = tmp_path / "ds"
    assert export_instances(src, out, "datasets") == 7
    ds = datasets.load_from_disk(str(out))
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == list(INSTANCE_COLUMNS)
    assert ds.to_list() == records


def test_empty_file_gives_an_empty_table_with_the_instance_columns(tmp_path: Path) -> None:
    src = _write(tmp_path / "instances.jsonl", [])
    out = tmp_path / "empty.parquet"
    assert export_instances(src, out) == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names == list(INSTANCE_COLUMNS)


def test_columns_are_the_union_of_keys_with_fitting_types(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {"instruction": "x", "output": ["a", 1], "n": 3, "task_split": "train"},
        {"instruction": "y", "output": "b", "n": None, "input_truncated": True,
         "task_split": "heldout"},
    ]
    src = _write(tmp_path / "i.jsonl", records)
    out = tmp_path / "o.parquet"
    export_instances(src, out, batch_rows=1)
    table = pq.read_table(out)
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("instruction", "string"), ("output", "string"), ("n", "int64"),
        ("task_split", "string"), ("input_truncated", "bool"),
    ]
    assert table.to_pylist() == [
        {"instruction": "x", "output": '["a",1]', "n": 3, "task_split": "train",
         "input_truncated": None},
        {"instruction": "y", "output": "b", "n": None, "task_split": "heldout",
         "input_truncated": True},
    ]


def test_damaged_input_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "instances.jsonl"
    src.write_bytes(orjson.dumps(_records(1)[0]) + b"\n{\"instruction\": \"cut\n")
    out = tmp_path / "out.parquet"
    with pytest.raises(RunDirError, match=r"instances\.jsonl:2 is not valid JSON"):
        export_instances(src, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["instances.jsonl"]
    src.write_bytes(b'{"instruction": "a"}\n[1, 2]\n')
    with pytest.raises(RunDirError, match=r"instances\.jsonl:2 is not a JSON object"):
        export_instances(src, out)


def test_refusals(tmp_path: Path) -> None:
    src = _write(tmp_path / "instances.jsonl", _records(2))
    with pytest.raises(RunDirError, match="run `dynogen run` first"):
        export_instances(tmp_path / "missing.jsonl", tmp_path / "o.parquet")
    with pytest.raises(ConfigError, match="unknown export format 'csv'"):
        export_instances(src, tmp_path / "o.csv", "csv")  # type: ignore[arg-type]
    out = tmp_path / "o.parquet"
    out.write_text("old")
    with pytest.raises(RunDirError, match="already exists"):
        export_instances(src, out)
    assert export_instances(src, out, overwrite=True) == 2
    assert pq.read_table(out).num_rows == 2


def test_a_sharded_run_exports_the_rows_of_the_same_run_built_locally(tmp_path: Path) -> None:
    import datasets

    local, sharded = built_both(tmp_path)
    want = pq.read_table(dynogen.export(local)).to_pylist()
    out = dynogen.export(sharded)
    assert out == sharded / "export" / "instances.parquet"
    assert len(want) > 20 and rows_of(pq.read_table(out).to_pylist()) == rows_of(want)
    assert (out.parent / "README.md").is_file()  # the card, from the shards too
    folder = dynogen.export(sharded, fmt="datasets")
    saved = datasets.load_from_disk(str(folder))
    assert isinstance(saved, datasets.Dataset) and rows_of(saved.to_list()) == rows_of(want)
    # dynogen.dataset(run): the shards as a datasets.Dataset, the same rows again
    assert rows_of(dynogen.dataset(sharded).to_list()) == rows_of(want)


def test_a_run_without_instances_is_refused_naming_the_build(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match=r"no instances .*`dynogen build`"):
        dynogen.export(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"no instances .*`dynogen build`"):
        export_instances(tmp_path / "run", tmp_path / "o.parquet")
    (tmp_path / "run" / "instances").mkdir()  # a sharded build that wrote no shard yet
    with pytest.raises(ConfigError, match="no instances"):
        dynogen.export(tmp_path / "run")
