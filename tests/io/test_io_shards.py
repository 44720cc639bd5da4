"""JsonlSource, ShardWriter and collect: round trips, bad lines, atomic shards."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from dynogen.errors import RunDirError, SourceError
from dynogen.io.folder import FolderSource
from dynogen.io.shards import JsonlSource, ShardWriter, collect
from dynogen.units import Field, Skipped, SkipReason, Unit
from tests.helpers import FIXTURES

HF = FIXTURES / "hf"


def unit(name: str, **kw: object) -> Unit:
    return Unit(
        dataset=name,
        config="default",
        description=f"about {name}",
        fields=(Field("text", "string"), Field("label", "class_label", ("a", "b"))),
        **kw,
    )  # type: ignore[arg-type]


def test_collect_then_read_back_gives_the_same_stream(tmp_path: Path) -> None:
    original = list(FolderSource(HF))
    stats = collect(FolderSource(HF), tmp_path / "out", shard_size=5)
    n_units = sum(isinstance(x, Unit) for x in original)
    assert stats.written == n_units
    assert sum(stats.skipped.values()) == len(original) - n_units
    assert stats.skipped[SkipReason.INVALID_METADATA] >= 1  # the csv builder folder
    assert stats.total == len(original)
    expected_shards = -(-len(original) // 5)
    assert [p.name for p in stats.shards] == [
        f"units-{i:05d}.jsonl" for i in range(expected_shards)
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in stats.shards]

    back = list(JsonlSource(tmp_path / "out"))
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        if isinstance(a, Unit):
            assert isinstance(b, Unit) and b.to_dict() == a.to_dict()
        else:
            assert b == a


def test_samples_with_unicode_survive_the_round_trip(tmp_path: Path) -> None:
    u = unit("ü/ds", samples=({"text": "naïve — ok", "label": 1},), data_ref="/x", tags=("a:b",))
    collect([u], tmp_path)
    (back,) = JsonlSource(tmp_path / "units-00000.jsonl")
    assert back == u


def test_bad_lines_are_skipped_with_file_and_line(tmp_path: Path) -> None:
    good = orjson.dumps(unit("good").to_dict()).decode()
    lines = [
        good,
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"config": "x", "fields": []}),
        json.dumps({"dataset": "d", "fields": "text"}),
        json.dumps({"dataset": "d", "fields": [{"type": "string"}]}),
        json.dumps({"dataset": "d", "fields": [], "samples": ["row"]}),
        json.dumps({"dataset": "d", "fields": [], "license": ["mit"]}),
        json.dumps({"dataset": "d", "skipped": True}),
        good.replace('"good"', '"good2"'),
    ]
    path = tmp_path / "units.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    got = list(JsonlSource(path))
    assert [x.dataset for x in got if isinstance(x, Unit)] == ["good", "good2"]
    bad = [x for x in got if isinstance(x, Skipped)]
    assert [x.dataset for x in bad] == [f"{path}:{n}" for n in range(3, 11)]
    assert all(x.config == "" and x.reason == SkipReason.INVALID_METADATA for x in bad)
    details = [x.detail for x in bad]
    assert details[0].startswith("not JSON")
    assert "expected a JSON object" in details[1]
    assert "missing 'dataset'" in details[2]
    assert "missing 'fields'" in details[3]
    assert "needs a 'name'" in details[4]
    assert "'samples' must hold JSON objects" in details[5]
    assert "'license' must be a string" in details[6]
    assert "missing 'reason'" in details[7]


def test_glob_and_folder_specs_read_shards_in_sorted_order(tmp_path: Path) -> None:
    for i, name in ((1, "b"), (0, "a"), (2, "c")):
        (tmp_path / f"part-{i}.jsonl").write_bytes(orjson.dumps(unit(name).to_dict()) + b"\n")
    assert [u.dataset for u in JsonlSource(tmp_path)] == ["a", "b", "c"]
    assert [u.dataset for u in JsonlSource(str(tmp_path / "part-[12].jsonl"))] == ["b", "c"]
    assert "3 metadata shards" in JsonlSource(tmp_path).describe()


def test_missing_or_empty_shard_sources_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="holds no \\*.jsonl"):
        JsonlSource(tmp_path)
    with pytest.raises(SourceError, match="not found"):
        JsonlSource(tmp_path / "nope-*.jsonl")


def test_writer_refuses_a_folder_that_already_has_shards(tmp_path: Path) -> None:
    collect([unit("a")], tmp_path)
    with pytest.raises(RunDirError, match="already holds shards"):
        collect([unit("b")], tmp_path)
    (tmp_path / "file").write_text("x", "utf-8")
    with pytest.raises(RunDirError, match="is a file"):
        collect([], tmp_path / "file")


def test_a_failure_mid_shard_leaves_only_whole_shards(tmp_path: Path) -> None:
    def source():  # type: ignore[no-untyped-def]
        yield unit("a")
        yield unit("b")
        yield unit("c")
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        collect(source(), tmp_path, shard_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["units-00000.jsonl"]
    assert [u.dataset for u in JsonlSource(tmp_path)] == ["a", "b"]


def test_shard_writer_counts_and_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ShardWriter(tmp_path, shard_size=0)
    with ShardWriter(tmp_path, shard_size=10) as out:
        out.write(unit("a"))
        out.write(Skipped("b", "", SkipReason.DUPLICATE, "again"))
    assert out.stats.to_dict() == {
        "written": 1,
        "skipped": {"duplicate_unit": 1},
        "shards": ["units-00000.jsonl"],
    }
    assert collect([], tmp_path / "empty").shards == []
