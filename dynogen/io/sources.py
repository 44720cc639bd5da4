"""One spec string to a metadata source: what ``--source`` accepts.

``hub`` -> ``HubSource``; ``samples`` -> the dataset folders bundled in
``dynogen/data/samples``; a ``.jsonl`` file, a glob, or a folder holding only
``*.jsonl`` -> ``JsonlSource``; any other folder -> ``FolderSource``. (Use
``./samples`` or ``./hub`` for local folders of those names.)

``limit`` caps the *units* yielded: skipped records pass through uncounted, so
``--limit 10`` means ten units reach the LLM, however many were skipped first.

>>> source = open_source("samples", limit=3)  # doctest: +SKIP
>>> source.describe()  # doctest: +SKIP
'dataset folders under .../dynogen/data/samples (first 3 units)'
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from dynogen.errors import SourceError
from dynogen.io.folder import FolderSource
from dynogen.io.shards import JsonlSource
from dynogen.units import Skipped, Unit

if TYPE_CHECKING:
    from dynogen.config import Config
    from dynogen.io.hub_options import HubOptions

__all__ = ["LimitedSource", "Source", "open_source", "samples_dir", "source_for"]

NOT_FOUND_HINT = "pass a folder of dataset folders, a .jsonl shard, 'samples' or 'hub'"


@runtime_checkable
class Source(Protocol):
    """An iterable of units and counted skips, with a one-line description for logs."""

    def __iter__(self) -> Iterator[Unit | Skipped]: ...

    def describe(self) -> str: ...


class LimitedSource:
    """At most ``limit`` units from ``source``; stops pulling as soon as the last is out."""

    def __init__(self, source: Source, limit: int) -> None:
        if limit < 0:
            raise SourceError(f"limit must be 0 or more, got {limit}")
        self.source = source
        self.limit = limit

    def describe(self) -> str:
        return f"{self.source.describe()} (first {self.limit} units)"

    def __iter__(self) -> Iterator[Unit | Skipped]:
        if self.limit == 0:
            return
        units = 0
        for item in self.source:
            yield item
            if isinstance(item, Unit):
                units += 1
                if units >= self.limit:
                    return


def samples_dir() -> Path:
    """The bundled sample dataset folders (installed as package data)."""
    return Path(__file__).resolve().parent.parent / "data" / "samples"


def open_source(
    spec: str, *, limit: int | None = None, hub: HubOptions | None = None
) -> Source:
    """The source ``spec`` names; ``SourceError`` with a fix if there is none.

    ``hub`` holds the listing filters and limits for ``spec == "hub"``
    (``HubOptions.from_config(cfg)`` reads them from the ``--hub-*`` flags).
    """
    source = _resolve(spec, hub)
    return source if limit is None else LimitedSource(source, limit)


def source_for(cfg: Config) -> Source:
    """The source a ``Config`` names: ``cfg.source``, ``cfg.limit`` and the ``hub_*`` options."""
    from dynogen.io.hub_options import HubOptions

    hub = HubOptions.from_config(cfg) if cfg.source == "hub" else None
    return open_source(cfg.source, limit=cfg.limit, hub=hub)


def _resolve(spec: str, hub: HubOptions | None = None) -> Source:
    if spec == "hub":
        from dynogen.io.hub import HubSource  # imports huggingface_hub lazily, on first use

        return HubSource(options=hub)
    if spec == "samples":
        folder = samples_dir()
        if not folder.is_dir():
            raise SourceError(
                f"the bundled samples are missing ({folder}): reinstall dynogen "
                "or pass --source PATH"
            )
        return FolderSource(folder)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            return JsonlSource(path)
        raise SourceError(
            f"metadata source {spec} is a file but not a .jsonl shard: {NOT_FOUND_HINT}"
        )
    if path.is_dir():
        return JsonlSource(path) if _only_shards(path) else FolderSource(path)
    if glob.has_magic(spec) and glob.glob(os.path.expanduser(spec)):
        return JsonlSource(spec)
    raise SourceError(f"metadata source {spec} not found: {NOT_FOUND_HINT}")


def _only_shards(folder: Path) -> bool:
    """Only ``*.jsonl`` files (and the ``source.json`` that ``collect`` writes beside them)."""
    entries = [e for e in os.scandir(folder)
               if not e.name.startswith(".") and e.name != "source.json"]
    return bool(entries) and all(e.is_file() and e.name.endswith(".jsonl") for e in entries)
