from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson
import pytest

from dynogen.errors import StorageError
from dynogen.store import storage
from dynogen.store.journal import (
    Commits,
    JsonlWriter,
    iter_jsonl,
    repair,
    truncate_to,
    verify_chain,
)


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


# ------------------------------------------------------------------ commit order and repair


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("background", [False, True])
def test_batched_commits_write_data_now_and_the_journal_only_after_a_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    synced: list[str] = []
    real = storage.os_fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real(fd)

    monkeypatch.setattr(storage, "os_fsync", fsync)
    clock = Clock()
    tasks, units, spend = (JsonlWriter(tmp_path / n) for n in ("t.jsonl", "u.jsonl", "s.jsonl"))
    group = Commits(units, data=[tasks], side=[spend], clock=clock, background=background)
    tasks.write({"task": 1})
    spend.write({"usd": 0.1})
    units.write({"key": "a", "tasks_end": tasks.tell()})
    group.commit()
    assert (tmp_path / "t.jsonl").read_bytes() and (tmp_path / "s.jsonl").read_bytes()
    assert (tmp_path / "u.jsonl").read_bytes() == b""  # waits for its data to be synced
    assert synced == []
    clock.t = 1.5
    tasks.write({"task": 2})
    units.write({"key": "b", "tasks_end": tasks.tell()})
    group.commit()
    if background:  # the sync runs in a worker thread; sync() waits for it
        group.sync()
    assert synced[:3] == ["s.jsonl", "t.jsonl", "u.jsonl"]  # data first, the journal last
    assert [r["key"] for r in iter_jsonl(tmp_path / "u.jsonl")] == ["a", "b"]
    group.close()


def test_always_syncs_every_commit_in_order(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = storage.os_fsync
    monkeypatch.setattr(storage, "os_fsync", lambda fd: (synced.append(
        Path(os.readlink(f"/proc/self/fd/{fd}")).name), real(fd))[1])
    tasks, units = JsonlWriter(tmp_path / "t.jsonl"), JsonlWriter(tmp_path / "u.jsonl")
    group = Commits(units, data=[tasks], durability="always")
    for i in range(3):
        tasks.write({"task": i})
        units.write({"key": i})
        group.commit()
        assert len(list(iter_jsonl(tmp_path / "u.jsonl"))) == i + 1
    assert synced == ["t.jsonl", "u.jsonl"] * 3


def test_a_failed_write_cuts_the_half_line_and_fails_the_whole_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks, units = JsonlWriter(tmp_path / "t.jsonl"), JsonlWriter(tmp_path / "u.jsonl")
    group = Commits(units, data=[tasks], durability="always")
    tasks.write({"task": 0})
    units.write({"key": 0})
    group.commit()
    real = storage.os_write

    def half_then_full(fd: int, data: bytes) -> int:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name == "t.jsonl":
            monkeypatch.setattr(storage, "os_write", full)
            return int(real(fd, bytes(data[: len(data) // 2])))
        return int(real(fd, data))

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "os_write", half_then_full)
    tasks.write({"task": 1, "text": "x" * 100})
    units.write({"key": 1})
    with pytest.raises(StorageError, match=f"no space left in {tmp_path}: free some"):
        group.commit()
    monkeypatch.setattr(storage, "os_write", real)
    with pytest.raises(StorageError):
        group.commit()  # a failed group never writes again
    group.close()
    assert (tmp_path / "t.jsonl").read_bytes() == b'{"task":0}\n'  # the half line was cut
    assert [r["key"] for r in iter_jsonl(tmp_path / "u.jsonl")] == [0]


def _chain(tmp_path: Path, records: list[tuple[str, list[bytes]]]) -> tuple[Path, Path]:
    units, tasks = tmp_path / "units.jsonl", tmp_path / "tasks.jsonl"
    data = b""
    journal = b""
    for key, rows in records:
        start = len(data)
        data += b"".join(rows)
        journal += orjson.dumps({"key": key, "tasks_start": start, "tasks_end": len(data),
                                 "tasks_kept": len(rows)}) + b"\n"
    units.write_bytes(journal)
    tasks.write_bytes(data)
    return units, tasks


def test_verify_chain_cuts_at_the_first_record_whose_lines_are_not_all_there(
        tmp_path: Path) -> None:
    rows = [(k, [orjson.dumps({"t": f"{k}{i}"}) + b"\n" for i in range(2)]) for k in "abcd"]
    units, tasks = _chain(tmp_path, rows)
    whole = tasks.read_bytes()
    # Lost writes: tasks.jsonl kept less than units.jsonl says (into c's lines).
    tasks.write_bytes(whole[: len(whole) - len(rows[3][1][0]) * 2 - 3] + b"\0\0\0")
    check = verify_chain(units, tasks, start="tasks_start", end="tasks_end", count="tasks_kept")
    assert [r["key"] for r in iter_jsonl(units)] == ["a", "b"]
    assert check.kept == 2 and check.dropped == 2 and check.reason is not None
    assert tasks.read_bytes() == b"".join(rows[0][1] + rows[1][1])


def test_verify_chain_stops_at_garbage_and_cuts_uncommitted_data(tmp_path: Path) -> None:
    rows = [(k, [orjson.dumps({"t": k}) + b"\n"]) for k in "abc"]
    units, tasks = _chain(tmp_path, rows)
    lines = units.read_bytes().splitlines(keepends=True)
    units.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    with tasks.open("ab") as f:
        f.write(b'{"t": "uncommitted"}\n')
    check = verify_chain(units, tasks, start="tasks_start", end="tasks_end", count="tasks_kept")
    assert check.garbage == 1 and check.kept == 1 and check.dropped == 3
    assert tasks.read_bytes() == rows[0][1][0]
