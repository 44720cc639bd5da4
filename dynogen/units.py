"""The unit of work: one dataset configuration's metadata.

Cost grows with the number of units, not rows, so a unit is small and plain:
it round-trips through JSON (``to_dict``/``from_dict``) so that metadata shards
written by ``dynogen collect`` are the same objects every source yields.

Fields are the dataset's top-level columns. ``type`` is the readable type shown
to the LLM (``string``, ``int32``, ``class_label``, ``list[string]``,
``struct{answer_start: list[int32], text: list[string]}``, ``image``...).
``media`` is set from the feature *type* (Image, Audio, Video), never the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ID_NAME", "TRANSIENT_REASONS", "Field", "Unit", "Skipped", "SkipReason", "is_final",
           "redo", "safe_text", "skip_reason", "transient"]

# Field names that name an identifier, not content (ids, keys, hashes, links, paths):
# the prompt leaves their sample values out and the rules refuse them as the only inputs.
ID_NAME = re.compile(r"(?i:(^|[_\-\s.])(id|ids|idx|index|uuid|guid|key|hash|url|uri|link|md5|"
                      r"sha1|sha256|filename|file|path|doi)$)|[a-z](Id|ID|Idx|Url|URL)$")

TEXTUAL_PREFIXES = ("string", "large_string", "list[string]", "list[large_string]", "translation")


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a dataset, typed as the LLM and the instance builder need it."""

    name: str
    type: str
    labels: tuple[str, ...] = ()
    media: bool = False

    @property
    def is_label(self) -> bool:
        return bool(self.labels)

    @property
    def is_text(self) -> bool:
        return self.type.startswith(TEXTUAL_PREFIXES) or self.type.startswith("struct")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.labels:
            d["labels"] = list(self.labels)
        if self.media:
            d["media"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Field:
        return cls(
            name=str(d["name"]),
            type=str(d.get("type", "string")),
            labels=tuple(str(x) for x in d.get("labels", ()) or ()),
            media=bool(d.get("media", False)),
        )


@dataclass(frozen=True, slots=True)
class Unit:
    """Metadata for one dataset configuration.

    ``data_ref`` is what ``datasets.load_dataset`` is given to read rows (a local
    folder or a Hub id); ``None`` when no rows are reachable from this source.
    """

    dataset: str
    config: str
    description: str
    fields: tuple[Field, ...]
    license: str | None = None
    tags: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    samples: tuple[dict[str, Any], ...] = ()
    data_ref: str | None = None
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """Stable identity of the unit within a run (used by journals and dedup)."""
        return f"{self.dataset}::{self.config}"

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "description": self.description,
            "fields": [f.to_dict() for f in self.fields],
            "license": self.license,
            "tags": list(self.tags),
            "splits": list(self.splits),
            "samples": list(self.samples),
            "data_ref": self.data_ref,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        return cls(
            dataset=str(d["dataset"]),
            config=str(d.get("config") or "default"),
            description=str(d.get("description") or ""),
            fields=tuple(Field.from_dict(f) for f in d.get("fields") or ()),
            license=d.get("license"),
            tags=tuple(str(t) for t in d.get("tags") or ()),
            splits=tuple(str(s) for s in d.get("splits") or ()),
            samples=tuple(d.get("samples") or ()),
            data_ref=d.get("data_ref"),
            origin=str(d.get("origin") or ""),
        )


@dataclass(frozen=True, slots=True)
class Skipped:
    """A unit a source could not read: counted by ``reason``, never dropped silently."""

    dataset: str
    config: str
    reason: str
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}::{self.config}"

    def to_dict(self) -> dict[str, Any]:
        """The record a metadata shard or a collection's plan holds for a skip."""
        return {"skipped": True, "dataset": self.dataset, "config": self.config,
                "reason": self.reason, "detail": self.detail}


class SkipReason:
    """Counted reasons a unit is not sent to the LLM (labels used in report.json)."""

    MEDIA = "media_fields"
    TOO_FEW_FIELDS = "fewer_than_2_fields"
    NO_TEXT = "no_usable_text"
    INVALID_METADATA = "invalid_metadata"
    DUPLICATE = "duplicate_unit"


# Why rows (or a Hub answer) could not be had that say nothing about the dataset: the
# server was busy or away (429, 5xx, a timeout, a reset connection, offline mode). A unit
# or build that ends on one is journaled ``retryable`` and redone by the next resume.
TRANSIENT_REASONS = frozenset({
    "offline", "rate_limited", "server_error", "timeout", "connection_error", "hub_error"})


def transient(reason: str) -> bool:
    """Whether a skip ``reason`` (``rows_timeout``, ``timeout``, ``hub_error``...) is transient.

    >>> transient("rows_rate_limited"), transient("rows_gated")
    (True, False)
    """
    return reason.removeprefix("rows_") in TRANSIENT_REASONS


def redo(reason: str, retry_skipped: tuple[str, ...] = ()) -> bool:
    """Whether a journaled skip for ``reason`` is tried again on resume: it is transient,
    or the user named it (``--retry-skipped``; ``gated`` also names ``rows_gated``)."""
    if transient(reason):
        return True
    bare = reason.removeprefix("rows_")
    return any(r == reason or r.removeprefix("rows_") == bare for r in retry_skipped)


def is_final(rec: dict[str, Any], retry_skipped: tuple[str, ...] = ()) -> bool:
    """Whether a ``units.jsonl`` record settles its unit for good (a resume skips it)."""
    status = rec.get("status")
    if status == "done":
        return True
    return status == "skipped" and not redo(str(rec.get("reason")), retry_skipped)


def _encodable(unit: Unit) -> bool:
    """No lone surrogates (only a Unit built by hand in Python can have them)."""
    try:
        for text in (unit.dataset, unit.config, unit.description):
            text.encode("utf-8")
        for f in unit.fields:
            f.name.encode("utf-8")
            for label in f.labels:
                label.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(text: str) -> str:
    """``text`` made writable as UTF-8 (lone surrogates escaped), for journals and reports."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def skip_reason(unit: Unit) -> str | None:
    """Why this unit cannot yield text tasks, or ``None`` if it can.

    Paper rule: image/audio datasets are out of scope; a task needs at least one
    input and one output field; and something must be text for an instruction
    to be about it.
    """
    if not _encodable(unit):
        return SkipReason.INVALID_METADATA
    if any(f.media for f in unit.fields):
        return SkipReason.MEDIA
    if len(unit.fields) < 2:
        return SkipReason.TOO_FEW_FIELDS
    if not any(f.is_text for f in unit.fields):
        return SkipReason.NO_TEXT
    return None
