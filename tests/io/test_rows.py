"""Reading rows through ``datasets`` streaming, on bundled folders and small ones made here."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dynogen.io.rows import RowsReason, RowsUnavailable, iter_rows, open_rows
from tests.helpers import REPO

SAMPLES = REPO / "dynogen" / "data" / "samples"


def _folder(root: Path, features_yaml: str, train: list[str],
            test: list[str] | None = None) -> Path:
    """A dataset folder as ``datasets`` reads it offline: README YAML plus jsonl files."""
    (root / "data").mkdir(parents=True)
    splits = [("train", train)] + ([("test", test)] if test is not None else [])
    files = "\n".join(f"  - split: {s}\n    path: data/{s}.jsonl" for s, _ in splits)
    for s, lines in splits:
        (root / "data" / f"{s}.jsonl").write_text("".join(line + "\n" for line in lines))
    (root / "README.md").write_text(
        "---\ndataset_info:\n  features:\n" + textwrap.indent(features_yaml, "  ")
        + "configs:\n- config_name: default\n  data_files:\n" + files + "\n---\n# x\n"
    )
    return root


def test_bundled_sample_streams_splits_in_dataset_order_with_labels() -> None:
    rows = open_rows(str(SAMPLES / "cafe_reviews"), "default", rows_per_split=4)
    assert rows.info.splits == ("train", "test")
    assert rows.info.labels == {"label": ("negative", "neutral", "positive")}
    assert rows.info.columns == ("review", "venue_type", "label")
    got = list(rows)
    assert [s for s, _ in got] == ["train"] * 4 + ["test"] * 4
    first = got[0][1]
    assert first["review"].startswith("The oat flat white")
    assert first["label"] == 2  # ids stay ids; names come from info.labels


def test_splits_follow_the_units_order_and_missing_ones_are_recorded() -> None:
    rows = open_rows(str(SAMPLES / "science_quiz"), "default",
                     splits=["test", "validation", "train"], rows_per_split=100)
    assert rows.info.splits == ("test", "train")
    assert rows.info.missing_splits == ("validation",)
    got = list(rows)
    assert [s for s, _ in got] == ["test"] * 8 + ["train"] * 28
    assert rows.info.labels["answer"] == ("A", "B", "C", "D")
    assert got[0][1]["choices"] == ["Carbon dioxide", "Ozone", "Hydrogen", "Neon"]


def test_rows_per_split_caps_each_split() -> None:
    assert list(iter_rows(str(SAMPLES / "town_headlines"), "default", rows_per_split=0)) == []
    got = list(iter_rows(str(SAMPLES / "town_headlines"), "default", splits=["test"],
                         rows_per_split=3))
    assert len(got) == 3 and all(s == "test" for s, _ in got)


def test_every_bundled_dataset_with_rows_loads_completely() -> None:
    counts = {}
    for name in ("cafe_reviews", "science_quiz", "town_headlines"):
        counts[name] = len(list(iter_rows(str(SAMPLES / name), "default", rows_per_split=1000)))
    assert counts == {"cafe_reviews": 40, "science_quiz": 36, "town_headlines": 32}


def test_list_of_classlabel_columns_get_their_names(tmp_path: Path) -> None:
    features = textwrap.dedent("""\
        - name: tokens
          sequence: string
        - name: tags
          sequence:
            class_label:
              names:
                '0': O
                '1': PER
        """)
    folder = _folder(tmp_path / "ner", features, ['{"tokens": ["Ada", "wrote"], "tags": [1, 0]}'])
    rows = open_rows(str(folder), "default", rows_per_split=5)
    assert rows.info.labels == {"tags": ("O", "PER")}
    assert list(rows) == [("train", {"tokens": ["Ada", "wrote"], "tags": [1, 0]})]


def test_missing_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(RowsUnavailable) as e:
        open_rows(str(tmp_path / "nope"), "default", rows_per_split=5)
    assert e.value.reason == RowsReason.NOT_FOUND
    assert "nope" in e.value.detail


def test_metadata_only_folder_has_no_data_files() -> None:
    with pytest.raises(RowsUnavailable) as e:
        open_rows(str(SAMPLES / "ag_news"), "default", rows_per_split=5)
    assert e.value.reason == RowsReason.NO_DATA_FILES


def test_script_dataset_is_refused_and_its_script_never_runs(tmp_path: Path) -> None:
    folder = tmp_path / "scripted"
    folder.mkdir()
    marker = tmp_path / "script-ran"
    (folder / "scripted.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nimport datasets\n"
    )
    with pytest.raises(RowsUnavailable) as e:
        open_rows(str(folder), "default", rows_per_split=5)
    assert e.value.reason == RowsReason.SCRIPT_ONLY
    assert not marker.exists()


def test_unknown_config_and_unknown_splits() -> None:
    with pytest.raises(RowsUnavailable) as e:
        open_rows(str(SAMPLES / "cafe_reviews"), "zzz", rows_per_split=5)
    assert e.value.reason == RowsReason.CONFIG_NOT_FOUND
    with pytest.raises(RowsUnavailable) as e:
        open_rows(str(SAMPLES / "cafe_reviews"), "default", splits=["validation"], rows_per_split=5)
    assert e.value.reason == RowsReason.SPLIT_NOT_FOUND
    assert "validation" in e.value.detail


def test_broken_data_file_fails_midway_after_good_rows(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(SAMPLES / "cafe_reviews", folder)
    train = folder / "data" / "train.jsonl"
    good = train.read_text().splitlines()[:3]
    train.write_text("\n".join(good) + '\n{"review": "cut off\n')
    got = []
    with pytest.raises(RowsUnavailable) as e:
        for item in iter_rows(str(folder), "default", rows_per_split=100):
            got.append(item)
    assert e.value.reason == RowsReason.LOAD_ERROR
    assert "[train]" in e.value.detail
    assert len(got) <= 3


class FakeLoader:
    """Stands in for ``datasets.load_dataset``: records calls, raises what it is given."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        raise self.error


def test_gated_and_missing_hub_datasets() -> None:
    from datasets.exceptions import DatasetNotFoundError

    gated = FakeLoader(DatasetNotFoundError(
        "Dataset 'org/secret' is a gated dataset on the Hub. "
        "You must be authenticated to access it."))
    with pytest.raises(RowsUnavailable) as e:
        open_rows("org/secret", "default", rows_per_split=5, load=gated)
    assert e.value.reason == RowsReason.GATED
    missing = FakeLoader(DatasetNotFoundError("Dataset 'org/x' doesn't exist on the Hub"))
    with pytest.raises(RowsUnavailable) as e:
        open_rows("org/x", "main", rows_per_split=5, load=missing)
    assert e.value.reason == RowsReason.NOT_FOUND


def test_offline_hub_and_call_shape() -> None:
    loader = FakeLoader(ConnectionError("Couldn't reach 'org/x' on the Hub (OfflineModeIsEnabled)"))
    with pytest.raises(RowsUnavailable) as e:
        open_rows("org/x", "en", rows_per_split=5, load=loader)
    assert e.value.reason == RowsReason.OFFLINE
    assert loader.calls == [(("org/x",), {"name": "en", "streaming": True})]  # no trust_remote_code


def test_real_hub_id_while_offline() -> None:
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.fail("run the tests with HF_HUB_OFFLINE=1 (a Hub call would wait ~23 s)")
    with pytest.raises(RowsUnavailable) as e:
        open_rows("someone/not-cached-here", "default", rows_per_split=5)
    assert e.value.reason == RowsReason.OFFLINE


def test_bugs_in_the_loader_are_not_hidden() -> None:
    with pytest.raises(TypeError):
        open_rows("x", "default", rows_per_split=5, load=FakeLoader(TypeError("a bug")))


def test_two_threads_reading_rows_never_lose_tqdm_s_lock() -> None:
    # datasets reads files through tqdm's thread_map, whose ensure_lock deletes a class
    # lock it created once it is done, even while another thread's bars use it. A batch
    # run reads its plan and its source in two threads: this crashed ~1 run in 12.
    import threading

    from tqdm import std
    from tqdm.contrib.concurrent import ensure_lock

    from dynogen.io import rows

    saved = getattr(std.tqdm, "_lock", None)
    if saved is not None:
        del std.tqdm._lock
    rows._give_tqdm_a_lock.cache_clear()
    rows._give_tqdm_a_lock()  # what open_rows does before its first read
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with ensure_lock(std.tqdm):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with ensure_lock(std.tqdm):
            b_in.set()
            a_out.wait(10)
            seen.append(hasattr(std.tqdm, "_lock"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    if saved is not None:
        std.tqdm.set_lock(saved)
    assert seen == [True]
