"""FolderSource, cards and open_source on real and hand-written dataset folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dynogen.io
from dynogen.errors import SourceError
from dynogen.io.cards import CardError, card_license, card_summary, card_tags, split_card
from dynogen.io.folder import FolderSource, read_rows
from dynogen.io.shards import JsonlSource
from dynogen.io.sources import LimitedSource, open_source, samples_dir
from dynogen.units import Skipped, SkipReason, Unit
from tests.helpers import FIXTURES, need_corpus

HF = FIXTURES / "hf"
REAL = HF / "2022"
MODERN = HF / "modern"


def items(root: Path | str) -> list[Unit | Skipped]:
    return list(FolderSource(root))


def units(root: Path | str) -> dict[str, Unit]:
    return {u.key: u for u in items(root) if isinstance(u, Unit)}


def skipped(root: Path | str) -> list[Skipped]:
    return [s for s in items(root) if isinstance(s, Skipped)]


def write_dataset(folder: Path, card: str, infos: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(card, encoding="utf-8")
    if infos is not None:
        (folder / "dataset_infos.json").write_text(json.dumps(infos), encoding="utf-8")
    return folder


CARD = """---
license: mit
task_categories:
- text-classification
dataset_info:
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': no
          '1': yes
---
## Dataset Summary

{summary}
"""


# --- real 2022 folders ------------------------------------------------------------------------


def test_glue_yields_one_unit_per_config_in_file_order() -> None:
    infos = json.loads((REAL / "glue" / "dataset_infos.json").read_text(encoding="utf-8"))
    got = [u for u in items(REAL / "glue") if isinstance(u, Unit)]
    assert [u.config for u in got] == list(infos)
    assert {u.dataset for u in got} == {"glue"}  # root is the dataset folder itself
    cola = got[0]
    assert cola.description.startswith("GLUE, the General Language Understanding Evaluation")
    assert cola.license == "cc-by-4.0"
    assert "task_categories:text-classification" in cola.tags
    assert "task_ids:acceptability-classification" in cola.tags
    assert cola.splits == tuple(infos["cola"]["splits"])
    assert cola.field("label") is not None and cola.field("label").labels == tuple(
        infos["cola"]["features"]["label"]["names"]
    )
    assert cola.data_ref is None and cola.samples == ()  # metadata only: no rows here
    assert cola.origin == "folder"


def test_real_feature_kinds_from_the_fixture_folders() -> None:
    got = units(REAL)
    assert got["squad::plain_text"].field("answers").type == (
        "struct{text: list[string], answer_start: list[int32]}"
    )
    assert got["beans::default"].field("image").media
    assert got["lj_speech::main"].field("audio").media
    assert got["kde4::fi-nl"].field("translation.fi").type == "string"
    assert got["kde4::fi-nl"].field("translation.nl").type == "string"
    assert got["ted_multi::plain_text"].field("translations").type == "translation[variable]"
    conll = got["conll2000::default"]  # card dataset_info without a config_name
    assert conll.field("pos_tags").labels[:3] == ("''", "#", "$")  # YAML card, int label keys
    assert conll.splits == ("test", "train")


def test_a_dataset_without_any_features_is_one_counted_skip() -> None:
    (skip,) = [s for s in skipped(REAL) if s.dataset == "csv"]
    assert skip.config == "" and skip.reason == SkipReason.INVALID_METADATA
    assert "no features" in skip.detail


def test_description_falls_back_to_dataset_infos_when_the_summary_is_empty(tmp_path: Path) -> None:
    infos = {
        "default": {
            "description": "From   dataset_infos.\n",
            "license": "Some license text",
            "features": {"text": {"dtype": "string", "_type": "Value"}},
            "splits": {"train": {}},
        }
    }
    write_dataset(
        tmp_path / "d",
        "---\n---\n### Dataset Summary\n\n[More Information Needed]\n\n"
        "## Contributions\n\nThanks to @someone for adding this dataset.\n",
        infos,
    )
    (unit,) = units(tmp_path).values()
    assert unit.description == "From dataset_infos."
    assert unit.license == "Some license text"


# --- modern folders with data -------------------------------------------------------------------


def test_modern_folder_has_data_ref_and_two_samples() -> None:
    got = units(MODERN)
    reviews = got["acme/reviews::default"]
    first_two = [
        json.loads(line)
        for line in (MODERN / "acme/reviews/data/train.jsonl").read_text("utf-8").splitlines()[:2]
    ]
    assert reviews.data_ref == str((MODERN / "acme" / "reviews").resolve())
    assert list(reviews.samples) == first_two
    assert reviews.splits == ("train", "test")
    assert [f.name for f in reviews.fields] == [
        "text",
        "label",
        "Überschrift",
        "review id",
        "meta.source",
    ]
    assert reviews.field("label").labels == ("neg", "pos")
    assert reviews.description == (
        "Short product reviews from the Acme store, each labelled as positive or negative."
    )
    assert reviews.tags == (
        "task_categories:text-classification",
        "task_ids:sentiment-classification",
        "language:en",
    )


def test_modern_multi_config_folder_reads_each_configs_own_files() -> None:
    got = units(MODERN)
    en, fr = got["acme/multi::en"], got["acme/multi::fr"]
    assert en.samples[0]["question"] == "What colour is the sky?"
    assert fr.samples[0] == {"question": "Quelle est la capitale de la France ?", "answer": "Paris"}
    assert len(en.samples) == len(fr.samples) == 2
    assert en.license == "mit, apache-2.0"
    assert en.description.startswith("A tiny bilingual question answering set")


def test_nested_ids_are_relative_paths() -> None:
    assert {u.dataset for u in units(HF).values() if "acme" in u.dataset} == {
        "modern/acme/reviews",
        "modern/acme/multi",
    }
    assert {u.dataset for u in units(MODERN / "acme").values()} == {"reviews", "multi"}


def test_single_config_folder_with_data_dir_but_no_configs_block(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", CARD.format(summary="Yes/no answers."))
    (folder / "data").mkdir()
    (folder / "data" / "train.csv").write_text("text,label\nhello,1\nbye,0\nagain,1\n", "utf-8")
    (unit,) = units(tmp_path).values()
    assert unit.data_ref == str(folder.resolve())
    assert unit.samples == ({"text": "hello", "label": "1"}, {"text": "bye", "label": "0"})
    assert unit.field("label").labels == ("no", "yes")  # YAML 1.2: `no`/`yes` stay text


@pytest.mark.parametrize(
    "name,content",
    [
        ("train.jsonl", b'\n{"a": 1}\n\n{"a": 2}\n{"a": 3}\n'),
        ("train.json", b'[{"a": 1}, {"a": 2}, {"a": 3}]'),
        ("train.json", b'{"a": 1}\n{"a": 2}\n'),
        ("train.tsv", b"a\n1\n2\n"),
    ],
)
def test_read_rows_reads_two_rows_of_each_format(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert [str(r["a"]) for r in read_rows(path)] == ["1", "2"]


def test_read_rows_parquet_and_bytes_placeholder(tmp_path: Path) -> None:
    import pyarrow as pa  # a dependency: missing, the test fails rather than skips
    import pyarrow.parquet as pq
    table = pa.table({"text": ["a", "b", "c"], "blob": [b"\x00\x01", b"", b"x"]})
    pq.write_table(table, tmp_path / "train.parquet")
    assert read_rows(tmp_path / "train.parquet") == [
        {"text": "a", "blob": "<2 bytes>"},
        {"text": "b", "blob": "<0 bytes>"},
    ]


def test_an_unreadable_data_file_keeps_the_unit_and_says_why(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", CARD.format(summary="s"))
    (folder / "data").mkdir()
    (folder / "data" / "train.jsonl").write_text("{not json\n", "utf-8")
    (unit,) = units(tmp_path).values()
    assert unit.samples == () and unit.data_ref == str(folder.resolve())
    assert "train.jsonl" in unit.extra["rows_note"]


# --- what sources skip ---------------------------------------------------------------------------


def test_invalid_yaml_is_skipped_with_the_reason(tmp_path: Path) -> None:
    write_dataset(tmp_path / "bad", "---\nlicense: [mit\n---\ntext\n")
    write_dataset(tmp_path / "good", CARD.format(summary="fine"))
    got = items(tmp_path)
    assert [type(x).__name__ for x in got] == ["Skipped", "Unit"]
    assert got[0].reason == SkipReason.INVALID_METADATA and "invalid YAML" in got[0].detail


def test_malformed_features_skip_only_that_config(tmp_path: Path) -> None:
    infos = {
        "ok": {"features": {"text": {"dtype": "string", "_type": "Value"}}},
        "broken": {"features": {"text": {"dtype": "string", "_type": "NoSuchType"}}},
        "missing": {"description": "no features key"},
    }
    write_dataset(tmp_path / "d", "# d\n", infos)
    got = items(tmp_path)
    assert [(x.config, type(x).__name__) for x in got] == [
        ("ok", "Unit"),
        ("broken", "Skipped"),
        ("missing", "Skipped"),
    ]
    assert "NoSuchType" in got[1].detail and "no features" in got[2].detail


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"{not json", "dataset_infos.json"),
        (b"[1, 2]", "must map config names"),
    ],
)
def test_bad_dataset_infos_is_skipped(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dataset_infos.json").write_bytes(content)
    (skip,) = items(tmp_path)
    assert isinstance(skip, Skipped) and needle in skip.detail


def test_readme_that_is_not_utf8_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "README.md").write_bytes(b"---\nlicense: \xff\xfe\n---\n")
    (skip,) = items(tmp_path)
    assert isinstance(skip, Skipped) and "README.md" in skip.detail


def test_duplicate_configs_are_counted(tmp_path: Path) -> None:
    card = """---
dataset_info:
- config_name: a
  features:
  - name: x
    dtype: string
- config_name: a
  features:
  - name: y
    dtype: string
---
"""
    write_dataset(tmp_path / "d", card)
    got = items(tmp_path)
    assert [(x.key, type(x).__name__) for x in got] == [("d::a", "Skipped"), ("d::a", "Unit")]
    assert got[0].reason == SkipReason.DUPLICATE
    assert got[1].field("x") is not None


def test_symlinked_dataset_outside_root_is_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_dataset(outside / "secret", CARD.format(summary="SECRET OUTSIDE"))
    write_dataset(root / "inside", CARD.format(summary="inside"))
    os.symlink(outside / "secret", root / "link")
    got = items(root)
    assert [(x.dataset, type(x).__name__) for x in got] == [("inside", "Unit"), ("link", "Skipped")]
    assert "outside" in got[1].detail
    assert all("SECRET" not in x.description for x in got if isinstance(x, Unit))


def test_symlinked_readme_and_data_patterns_never_escape(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text(CARD.format(summary="SECRET"), "utf-8")
    (outside / "rows.jsonl").write_text('{"text": "SECRET ROW"}\n', "utf-8")
    (root / "a").mkdir(parents=True)
    os.symlink(outside / "README.md", root / "a" / "README.md")
    card = CARD.format(summary="traversal").replace(
        "---\n## Dataset",
        "configs:\n- config_name: ../../x\n  data_files: ../../outside/*.jsonl\n---\n## Dataset",
    )
    card = card.replace("dataset_info:\n", "dataset_info:\n  config_name: ../../x\n")
    write_dataset(root / "b", card)
    got = items(root)
    assert (got[0].dataset, got[0].reason) == ("a", SkipReason.INVALID_METADATA)
    assert "outside" in got[0].detail
    unit = got[1]
    assert isinstance(unit, Unit) and unit.config == "../../x"  # kept verbatim; others sanitise
    assert unit.data_ref is None and unit.samples == ()


def test_a_collection_readme_above_dataset_folders_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# My collection of cards\n", "utf-8")
    write_dataset(tmp_path / "one", CARD.format(summary="s"))
    assert list(units(tmp_path)) == ["one::default"]


def test_order_is_sorted_and_repeatable() -> None:
    first = [x.key for x in items(HF)]
    assert first == [x.key for x in items(HF)]
    datasets = list(dict.fromkeys(k.split("::")[0] for k in first))
    assert datasets == sorted(datasets)


def test_not_a_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a folder"):
        FolderSource(tmp_path / "missing")


# --- cards -------------------------------------------------------------------------------------


def test_split_card_and_summary_cleaning() -> None:
    meta, prose = split_card(
        "\ufeff---\r\nlicense: mit\r\n---\r\n# Title\r\n\r\n"
        "### Dataset Summary\r\n\r\nSee [the site](http://x.org) and "
        "![logo](l.png)<br>**bold** text. [More Information Needed]\r\n"
        "<!-- hidden -->\r\n### Languages\r\nEnglish\r\n"
    )
    assert meta == {"license": "mit"}
    assert card_summary(prose) == "See the site and bold text."


def test_summary_falls_back_to_first_prose_paragraph_and_truncates() -> None:
    prose = (
        "# Card\n\n- [Summary](#s)\n- [Fields](#f)\n\n```\ncode block\n```\n\n"
        + "word " * 100
        + "\n\n## Contributions\n\nThanks to @x.\n"
    )
    text = card_summary(prose, max_chars=60)
    assert text.startswith("word word") and text.endswith("…") and len(text) <= 60
    assert card_summary("## Citation\n\n@article{x}\n") == ""
    assert card_summary("no header, one line") == "no header, one line"


@pytest.mark.parametrize(
    "card", ["---\nlicense: [mit\n---\n", "---\n- a\n- b\n---\n", "---\nlicense: mit\n"]
)
def test_split_card_errors(card: str) -> None:
    with pytest.raises(CardError):
        split_card(card)


def test_card_license_and_tags() -> None:
    assert card_license({"license": ["cc-by-4.0"]}) == "cc-by-4.0"
    assert card_license({"license": "mit"}, "ignored") == "mit"
    assert card_license({}, "  Free\n text ") == "Free text"
    assert card_license({"license": []}, None) is None
    meta = {"language": {"en-fr": ["en", "fr"], "de": ["de"]}, "task_ids": ["qa", "qa"]}
    assert card_tags(meta, "de") == ("task_ids:qa", "language:de")
    assert card_tags(meta, "other") == ("task_ids:qa", "language:en", "language:fr", "language:de")


# --- open_source -------------------------------------------------------------------------------


def test_open_source_picks_the_source_by_spec(tmp_path: Path) -> None:
    assert isinstance(open_source(str(REAL)), FolderSource)
    shard = tmp_path / "shards" / "units-00000.jsonl"
    shard.parent.mkdir()
    shard.write_text("", "utf-8")
    assert isinstance(open_source(str(shard.parent)), JsonlSource)
    assert isinstance(open_source(str(shard)), JsonlSource)
    assert isinstance(open_source(str(tmp_path / "shards" / "*.jsonl")), JsonlSource)
    with pytest.raises(SourceError, match="not found: pass a folder of dataset folders"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("x", "utf-8")
    with pytest.raises(SourceError, match="not a .jsonl shard"):
        open_source(str(tmp_path / "notes.txt"))


def test_open_source_samples_resolves_the_bundled_folder() -> None:
    assert samples_dir() == Path(dynogen.io.__file__).resolve().parent.parent / "data" / "samples"
    if samples_dir().is_dir():
        assert isinstance(open_source("samples"), FolderSource)
    else:
        with pytest.raises(SourceError, match="bundled samples are missing"):
            open_source("samples")


def test_limit_counts_units_only_and_stops_pulling(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", "---\nlicense: [bad\n---\n")
    for name in "bcd":
        write_dataset(tmp_path / name, CARD.format(summary=name))
    limited = open_source(str(tmp_path), limit=2)
    assert isinstance(limited, LimitedSource) and "first 2 units" in limited.describe()
    assert [(x.dataset, type(x).__name__) for x in limited] == [
        ("a", "Skipped"),
        ("b", "Unit"),
        ("c", "Unit"),
    ]
    assert list(open_source(str(tmp_path), limit=0)) == []


def test_each_source_module_exports_what_it_names() -> None:
    import importlib
    import pkgutil

    # The package imports nothing (reading rows must not load the Hub client); each
    # module's __all__ is its public face.
    assert not hasattr(dynogen.io, "__all__")
    for info in pkgutil.iter_modules(dynogen.io.__path__):
        mod = importlib.import_module(f"dynogen.io.{info.name}")
        assert mod.__all__, info.name
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"dynogen.io.{info.name}.{name}"


# --- the whole reference corpus --------------------------------------------------------------


def test_reference_corpus() -> None:
    """All 770 cards load without an exception escaping.

    Count rule: one item per configuration found (dataset_infos.json entries and
    card ``dataset_info`` entries), plus exactly one Skipped per dataset folder
    with no features anywhere (format builders such as csv).
    """
    corpus = need_corpus()
    folders = sorted(p for p in corpus.iterdir() if p.is_dir())
    with_infos = [p for p in folders if (p / "dataset_infos.json").exists()]
    infos_configs = sum(
        len(json.loads((p / "dataset_infos.json").read_text("utf-8"))) for p in with_infos
    )
    assert len(folders) == 770 and infos_configs == 5104  # the corpus README's facts
    without = [p for p in folders if p not in with_infos]
    with_card_info = [
        p for p in without if "\ndataset_info:" in (p / "README.md").read_text("utf-8")
    ]

    got = list(FolderSource(corpus))

    got_units = [x for x in got if isinstance(x, Unit)]
    got_skips = [x for x in got if isinstance(x, Skipped)]
    assert len(got) == infos_configs + len(with_card_info) + (len(without) - len(with_card_info))
    assert {s.dataset for s in got_skips} == {p.name for p in without} - {
        p.name for p in with_card_info
    }
    assert all(s.config == "" and "no features" in s.detail for s in got_skips)
    assert len({u.key for u in got_units}) == len(got_units)
    assert sum(1 for u in got_units if any(f.media for f in u.fields)) > 0
    assert sum(1 for u in got_units if u.description) == len(got_units)
    # Its speed is measured by `python -m bench corpus`: timing goals live in bench/.
