"""What a dataset card says about data: where it came from and how it was made.

Read from a run directory or a collection, never from the model or the Hub:

- ``Target``: the run directory (``manifest.json``, ``report.json``, and
  ``instances.jsonl`` or a sharded build's ``instances/``) or the collection
  (every complete version, superseded tasks left out) whose instances are
  published;
- ``RunFacts``: one run (or version): model, dynogen version, run fingerprint,
  prompts digest, policies from ``manifest.json``; counts kept and dropped by
  reason and cost from ``report.json``;
- ``DataFacts``: one streaming pass over the instances: rows per licence class
  and split, and per source dataset its licence, configs, tasks, instances and,
  when the run read a local folder, its citation (``io.cards.card_citation``;
  units do not carry one, so it is read again from the source folder).

>>> target = Target.open("runs/a")  # doctest: +SKIP
>>> facts = DataFacts.scan(target.records(), citations=target.citations)  # doctest: +SKIP
>>> [s.dataset for s in facts.restricted()]  # doctest: +SKIP
['emotion']
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dynogen.errors import RunDirError
from dynogen.instances.shards import SHARD_COLUMNS, task_split
from dynogen.io.cards import CardError, card_citation, split_card
from dynogen.io.sources import samples_dir
from dynogen.policy.licenses import REDISTRIBUTABLE, license_ids, strictest, strictest_class
from dynogen.store.collection import Collection
from dynogen.store.instance_files import has_instances, iter_instances

__all__ = ["DataFacts", "RunFacts", "SourceFacts", "Target", "folder_citation"]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class RunFacts:
    """One run (or one version of a collection), as its manifest and report tell it."""

    label: str
    manifest: dict[str, Any]
    report: dict[str, Any]
    source: str = ""

    @classmethod
    def read(cls, path: Path, label: str, source: str = "") -> RunFacts:
        manifest = _json(path / "manifest.json")
        config = manifest.get("config") or {}
        return cls(label, manifest, _json(path / "report.json"),
                   source or str(config.get("source") or ""))

    @property
    def identity(self) -> dict[str, Any]:
        ident = self.manifest.get("identity")
        return ident if isinstance(ident, dict) else {}

    def setting(self, key: str, default: Any = None) -> Any:
        config = self.manifest.get("config") or {}
        return self.identity.get(key, config.get(key, default))

    def section(self, *keys: str) -> dict[str, Any]:
        value: Any = self.report
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value if isinstance(value, dict) else {}

    @property
    def cost_usd(self) -> float:
        return float(self.section("cost").get("spent_usd_total") or 0.0)


@dataclass
class SourceFacts:
    """One source dataset of the published instances (its configs' licences together)."""

    dataset: str
    license_ids: set[str] = field(default_factory=set)  # normalised ("cc-by-sa-3.0")
    classes: set[str] = field(default_factory=set)
    unlicensed: bool = False  # a config of it names no licence at all
    configs: set[str] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)
    instances: int = 0
    citation: str = ""

    @property
    def license(self) -> str:
        """The licence ids, joined; "" when the source names none."""
        return ", ".join(sorted(self.license_ids))

    @property
    def license_class(self) -> str:
        return strictest(self.classes)


@dataclass
class DataFacts:
    """Counts over the instances, from one pass."""

    rows: Counter[tuple[str, str]] = field(default_factory=Counter)  # (class, split) -> rows
    sources: dict[str, SourceFacts] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    with_version: bool = False

    @classmethod
    def scan(cls, records: Iterable[dict[str, Any]],
             citations: Callable[[str], str] | None = None) -> DataFacts:
        facts = cls()
        extra: dict[str, None] = {}
        for rec in records:
            raw = rec.get("license")
            raw = raw if isinstance(raw, str) else None
            cls_ = strictest_class(raw)
            facts.rows[(cls_, task_split(rec))] += 1
            name = str(rec.get("dataset") or "")
            src = facts.sources.setdefault(name, SourceFacts(name))
            ids = license_ids(raw)
            src.classes.add(cls_)
            src.license_ids.update(ids)
            src.unlicensed = src.unlicensed or not ids
            src.configs.add(str(rec.get("config") or "default"))
            src.tasks.add(str(rec.get("task_id") or ""))
            src.instances += 1
            for k in rec:
                if k not in SHARD_COLUMNS and k != "version" and k not in extra:
                    extra[k] = None
            facts.with_version = facts.with_version or "version" in rec
        facts.extra_columns = sorted(extra)
        if citations is not None:
            for src in facts.sources.values():
                src.citation = citations(src.dataset)
        facts.sources = dict(sorted(facts.sources.items()))
        return facts

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    @property
    def classes(self) -> list[str]:
        return sorted({c for c, _ in self.rows})

    @property
    def splits(self) -> list[str]:
        return [s for s in ("train", "heldout") if any(sp == s for _, sp in self.rows)]

    @property
    def tasks(self) -> int:
        return sum(len(s.tasks) for s in self.sources.values())

    def license_ids(self) -> list[str]:
        return sorted({i for s in self.sources.values() for i in s.license_ids})

    def restricted(self) -> list[SourceFacts]:
        """Sources whose licence class may not allow redistribution (non-commercial,
        no-derivatives, ``other`` or unknown terms)."""
        return [s for s in self.sources.values() if s.license_class not in REDISTRIBUTABLE]


def folder_citation(root: Path, dataset: str) -> str:
    """The citation in a dataset folder's ``dataset_infos.json`` or card; "" if none.

    ``dataset`` is the id the folder source gave (a path under ``root``, or ``root``'s
    own name when ``root`` is the dataset folder); nothing outside ``root`` is read.
    """
    root = root.resolve()
    folder = (root / dataset).resolve()
    if not (folder.is_relative_to(root) and folder.is_dir()):
        if root.name != dataset:
            return ""
        folder = root
    infos = _json(folder / "dataset_infos.json") or None
    try:
        text = (folder / "README.md").read_text("utf-8")
        meta, prose = split_card(text)
    except (OSError, UnicodeDecodeError, CardError):
        meta, prose = {}, ""
    return card_citation(meta, prose, infos)


class Target:
    """A run directory or a collection: the data a card describes and a publish sends.

    >>> Target.open("data/coll").kind  # doctest: +SKIP
    'collection'
    """

    def __init__(self, path: Path, kind: str, runs: list[RunFacts],
                 collection: Collection | None = None) -> None:
        self.path, self.kind, self.runs, self._collection = path, kind, runs, collection

    @classmethod
    def open(cls, path: str | Path) -> Target:
        path = Path(path)
        coll = Collection(path)
        if coll.exists():
            coll.load()
            runs = [RunFacts.read(coll.version_dir(v), f"version {v['version']}",
                                  str(v.get("source") or ""))
                    for v in coll.complete_versions()]
            if not runs:
                raise RunDirError(f"{path} has no complete version yet: grow it first")
            return cls(path, "collection", runs, coll)
        if not has_instances(path):
            raise RunDirError(f"{path} has no instances (no instances.jsonl or instances/): "
                              "run `dynogen run` or `dynogen build` first")
        return cls(path, "run", [RunFacts.read(path, "run")])

    def records(self) -> Iterator[dict[str, Any]]:
        if self._collection is not None:
            return self._collection.iter_instances()
        return iter_instances(self.path)

    def citations(self, dataset: str) -> str:
        """The dataset's citation, from the first of the runs' sources that is a local
        folder holding it (the bundled samples included)."""
        for root in self._roots:
            text = folder_citation(root, dataset)
            if text:
                return text
        return ""

    @functools.cached_property
    def _roots(self) -> list[Path]:
        roots: list[Path] = []
        for run in self.runs:
            src = run.source
            root = samples_dir() if src == "samples" else Path(src).expanduser() if src else None
            if root is not None and root.is_dir() and root not in roots:
                roots.append(root)
        return roots
