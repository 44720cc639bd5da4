from __future__ import annotations

from pathlib import Path

from dynogen.store.journal import JsonlWriter, iter_jsonl, repair, truncate_to


def test_torn_tail_is_repaired(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    w = JsonlWriter(p)
    w.write({"a": 1})
    w.write({"a": 2})
    w.flush()
    w.close()
    with p.open("ab") as f:
        f.write(b'{"a": 3, "b"')  # a kill mid-line
    assert [r["a"] for r in iter_jsonl(p)] == [1, 2]
    removed = repair(p)
    assert removed == len(b'{"a": 3, "b"')
    assert p.read_bytes().endswith(b"\n")
    assert repair(p) == 0


def test_offsets_cut_back_uncommitted_lines(tmp_path: Path) -> None:
    p = tmp_path / "tasks.jsonl"
    w = JsonlWriter(p)
    w.write({"t": 1})
    committed = w.tell()
    w.write({"t": 2})
    w.flush()
    assert committed < p.stat().st_size
    truncate_to(p, committed)
    assert [r["t"] for r in iter_jsonl(p)] == [1]
    w2 = JsonlWriter(p)
    assert w2.tell() == committed
    w2.close()


def test_repair_of_a_file_without_newline(tmp_path: Path) -> None:
    p = tmp_path / "y.jsonl"
    p.write_bytes(b'{"half":')
    repair(p)
    assert p.read_bytes() == b""
