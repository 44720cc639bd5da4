"""Which dataset licences may feed training data: an allow-list by SPDX-style id.

A card's ``license`` is free text in practice (``cc-by-4.0``, ``CC BY-SA 3.0``,
``Apache License 2.0``, ``unknown``, a list). Each id is normalised to a
lower-case SPDX-like id and put in one class:

- ``permissive``: attribution at most (MIT, Apache, BSD, CC-BY, CC0, ODC-By...);
- ``share-alike``: derivatives under the same terms (CC-BY-SA, GPL, GFDL, ODbL...);
- ``non-commercial``: any ``-nc`` licence (and C-UDA, research-only terms);
- ``no-derivatives``: any ``-nd`` licence: a task made from it is a derivative;
- ``unknown``: no licence, ``unknown``, or text we cannot place;
- ``other``: the card says ``other`` (terms in prose that no program read).

The default allows ``permissive`` and ``share-alike``, as Dynosaur kept only
datasets whose licence allowed reuse. A card listing several licences is
allowed only if every one is (a dataset mixing sources carries all their
terms). A user who takes responsibility passes ``any``, or names classes and
ids explicitly (``--licenses permissive,share-alike,non-commercial,cc-by-nd-4.0``).
No-derivatives ids are refused even when their class is named, unless the id
itself, or ``any``, is given.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dynogen.errors import ConfigError

__all__ = [
    "DEFAULT_LICENSES",
    "HUB_LICENSES",
    "LICENSE_CLASSES",
    "REDISTRIBUTABLE",
    "LicensePolicy",
    "license_class",
    "license_ids",
    "normalize_license",
    "strictest",
    "strictest_class",
]

DEFAULT_LICENSES = "permissive,share-alike"
LICENSE_CLASSES = ("permissive", "share-alike", "non-commercial", "no-derivatives", "unknown",
                   "other")
# Classes whose terms allow anyone to redistribute derived data (what a public push may hold
# without being told otherwise).
REDISTRIBUTABLE = ("permissive", "share-alike")
# From least to most restrictive: a dataset naming several licences carries all their terms.
_STRICTNESS = ("permissive", "share-alike", "non-commercial", "no-derivatives", "other", "unknown")
# The ids the Hub accepts in a card's ``license`` field (huggingface.co/docs/hub/repositories-
# licenses); any other id is published as ``other`` and named in the card's table.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0",
    "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0",
    "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl",
    "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research", "intel-research",
    "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openrail++",
    "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "unknown", "other",
})

_PERMISSIVE = {
    "mit", "apache-2.0", "apache-1.1", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear",
    "isc", "zlib", "unlicense", "cc0-1.0", "pddl", "odc-by", "odc-by-1.0", "wtfpl", "bsl-1.0",
    "ms-pl", "artistic-2.0", "afl-3.0", "ecl-2.0", "ncsa", "openrail", "postgresql", "upl-1.0",
    "public-domain", "etalab-2.0", "ogl-uk-3.0", "cdla-permissive-1.0", "cdla-permissive-2.0",
    "intel-research", "bigscience-openrail-m", "creativeml-openrail-m", "openrail++",
}
_SHARE_ALIKE = {
    "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "lgpl-lr", "agpl-3.0", "gfdl",
    "odbl", "odbl-1.0", "cdla-sharing-1.0", "mpl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1",
    "osl-3.0", "ms-rl",
}
_NON_COMMERCIAL = {"c-uda", "cc-by-nc", "research-only", "academic-only"}
_UNKNOWN = {"", "unknown", "none", "n/a", "na", "null", "unspecified", "license", "tbd"}
_CC = re.compile(r"^cc[- ]?(by|0)((?:-(?:nc|nd|sa))*)(?:-(\d(?:\.\d)?))?$")
_SPLIT = re.compile(r"\s*(?:,|;|\bor\b|\band\b|/)\s*")


def normalize_license(text: str) -> str:
    """One licence as a lower-case SPDX-like id (``CC BY-SA 4.0`` → ``cc-by-sa-4.0``)."""
    s = " ".join(text.strip().lower().split())
    s = s.replace("creative commons", "cc").replace("attribution", "by")
    s = re.sub(r"\blicen[cs]e\b|\bversion\b|\bv(?=\d)", " ", s)
    s = re.sub(r"[\s_]+", "-", s.strip()).strip("-")
    s = re.sub(r"-+", "-", s)
    aliases = {"apache": "apache-2.0", "apache2": "apache-2.0", "apache-2": "apache-2.0",
               "cc0": "cc0-1.0", "cc-0": "cc0-1.0", "gplv3": "gpl-3.0", "gplv2": "gpl-2.0",
               "public-domain-dedication": "public-domain", "pd": "public-domain"}
    return aliases.get(s, s)


@functools.lru_cache(maxsize=4096)  # called per instance when publishing; few distinct texts
def license_ids(raw: str | None) -> tuple[str, ...]:
    """The ids a card's licence field names (``()`` when it names none)."""
    if raw is None:
        return ()
    ids = [normalize_license(p) for p in _SPLIT.split(raw) if p.strip()]
    return tuple(dict.fromkeys(i for i in ids if i))


def license_class(license_id: str) -> str:
    """The class of one normalised id (see the module docstring)."""
    i = license_id
    if i in _UNKNOWN:
        return "unknown"
    if i == "other":
        return "other"
    m = _CC.match(i)
    if m:
        mods = m.group(2)
        if "-nd" in mods:
            return "no-derivatives"
        if "-nc" in mods:
            return "non-commercial"
        if "-sa" in mods:
            return "share-alike"
        return "permissive"
    if "-nd" in f"-{i}-" or i.endswith("-nd"):
        return "no-derivatives"
    if i in _NON_COMMERCIAL or "-nc-" in f"-{i}-" or "non-commercial" in i or "noncommercial" in i:
        return "non-commercial"
    if i in _PERMISSIVE:
        return "permissive"
    if i in _SHARE_ALIKE or i.startswith(("gpl-", "lgpl-", "agpl-", "gfdl")):
        return "share-alike"
    return "unknown"


def strictest(classes: Iterable[str]) -> str:
    """The most restrictive of some licence classes (``unknown`` when there are none)."""
    return max(classes, key=_STRICTNESS.index, default="unknown")


@functools.lru_cache(maxsize=4096)
def strictest_class(raw: str | None) -> str:
    """The class of a card's whole licence field: the most restrictive of its ids
    (``"mit, cc-by-nc-4.0"`` is non-commercial; no id at all is unknown)."""
    return strictest(license_class(i) for i in license_ids(raw))


@dataclass(frozen=True, slots=True)
class LicensePolicy:
    """An allow-list: classes and ids, or everything (``any``).

    >>> p = LicensePolicy.parse("permissive,share-alike")
    >>> p.refusal("CC-BY-ND-4.0"), p.refusal("mit"), p.refusal(None)
    ('license_no_derivatives', None, 'license_unknown')
    """

    classes: frozenset[str]
    ids: frozenset[str]
    any: bool = False

    @classmethod
    def parse(cls, spec: str | list[str] | tuple[str, ...] | None) -> LicensePolicy:
        items = _items(spec if spec is not None else DEFAULT_LICENSES)
        if not items:
            raise ConfigError("--licenses is empty: name classes or ids, or 'any'")
        if "any" in items:
            return cls(frozenset(), frozenset(), any=True)
        classes = {i.replace("_", "-") for i in items
                   if i.replace("_", "-") in LICENSE_CLASSES}
        ids = {normalize_license(i) for i in items if i.replace("_", "-") not in LICENSE_CLASSES}
        return cls(frozenset(classes), frozenset(ids))

    def refusal(self, raw: str | None) -> str | None:
        """``None`` if allowed, else the counted skip reason (``license_<class>``)."""
        if self.any:
            return None
        ids = license_ids(raw) or ("unknown",)
        for i in ids:
            if i in self.ids:
                continue
            c = license_class(i)
            if c == "no-derivatives" or c not in self.classes:
                return "license_" + c.replace("-", "_")
        return None

    def describe(self) -> str:
        if self.any:
            return "any"
        return ",".join(sorted(self.classes) + sorted(self.ids))


def _items(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    parts = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    return [p.strip().lower() for p in parts if p.strip()]
