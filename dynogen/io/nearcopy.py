"""Near-copies: the same dataset re-uploaded under another owner or name.

The Hub holds many mirrors and forks (``someone/glue`` copying ``nyu-mll/glue``
with its card). Sending both to the LLM pays twice for the same tasks, and the
duplicate tasks are only dropped afterwards. A *near-copy* here is a unit from
another dataset whose fields (names, types, label names) and description are the
same once the text is normalised (case, whitespace and markup punctuation are
ignored). The dataset's own name is *not* masked: a verbatim mirror keeps the
original's name in its card, and masking each side's own name would make the
two texts differ.

Pure logic, usable on any source: ``NearCopies.check`` on units in order, or
``skip_near_copies(source)`` to turn the later copies into counted
``Skipped(reason="near_copy")`` records. The first unit seen wins, so the result
is deterministic for a deterministic source order. Units with an empty
description are never called copies: two different datasets with the same
columns and no card are too common to merge on columns alone.

>>> from dynogen.units import Field
>>> seen = NearCopies()
>>> a = Unit("nyu-mll/glue", "cola", "GLUE cola.", (Field("s", "string"),))
>>> b = Unit("mirror/glue-copy", "cola", "GLUE  cola.", (Field("s", "string"),))
>>> seen.check(a) is None, seen.check(b)
(True, 'nyu-mll/glue::cola')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import orjson
import xxhash

from dynogen.units import Skipped, Unit

__all__ = [
    "NEAR_COPY",
    "NearCopies",
    "NearCopySource",
    "fingerprint",
    "normalise_text",
    "skip_near_copies",
]

NEAR_COPY = "near_copy"

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise_text(text: str) -> str:
    """Lower case, markup and punctuation dropped, spacing collapsed."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).replace("_", " ").split())


def fingerprint(unit: Unit) -> str | None:
    """A hash of what makes two units the same data; ``None`` if there is too little to tell."""
    description = normalise_text(unit.description)
    if not description:
        return None
    fields = [(f.name, f.type, list(f.labels)) for f in unit.fields]
    return xxhash.xxh3_128_hexdigest(orjson.dumps([fields, description]))


class NearCopies:
    """Remembers the first unit of each fingerprint; a later one from another dataset is a copy.

    Memory: one 32-byte hex digest and one key per distinct unit (about 150
    bytes), so a million units fit in a few hundred MB at most; Hub listings
    are far smaller.
    """

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self.copies = 0

    def check(self, unit: Unit) -> str | None:
        """The key of the unit ``unit`` copies, or ``None`` (and ``unit`` is remembered)."""
        fp = fingerprint(unit)
        if fp is None:
            return None
        first = self._first.get(fp)
        if first is None:
            self._first[fp] = unit.key
            return None
        if first.partition("::")[0] == unit.dataset:
            return None  # two configs of one dataset alike (e.g. per-language): not a copy
        self.copies += 1
        return first


class NearCopySource:
    """Wraps a source: near-copies come out as ``Skipped(reason="near_copy")``."""

    def __init__(self, source: Iterable[Unit | Skipped]) -> None:
        self.source = source
        self.seen = NearCopies()

    def describe(self) -> str:
        describe = getattr(self.source, "describe", None)
        return str(describe()) if callable(describe) else "a metadata source"

    def __iter__(self) -> Iterator[Unit | Skipped]:
        seen = self.seen = NearCopies()
        for item in self.source:
            if isinstance(item, Unit):
                first = seen.check(item)
                if first is not None:
                    yield Skipped(
                        item.dataset,
                        item.config,
                        NEAR_COPY,
                        f"same features and card text as {first}; processed once",
                    )
                    continue
            yield item


def skip_near_copies(source: Iterable[Unit | Skipped]) -> NearCopySource:
    """``source`` with every near-copy turned into a counted skip (first seen wins)."""
    return NearCopySource(source)
