"""Dataset cards: README.md (YAML header + prose) and dataset_infos.json to units.

Pure: text and parsed JSON in, ``Unit``/``Skipped`` out. Folder and Hub sources
differ only in how they fetch files and whether rows are reachable, so both
call ``build_units`` with a ``rows`` callback for the part that does I/O.

YAML is read with YAML 1.2 booleans (only ``true``/``false``): the Hub parses
cards that way, and YAML 1.1 would turn label names such as ``no`` or ``on``
into booleans.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from dynogen.errors import MetadataError
from dynogen.io.features import FeaturesError, fields_from_features
from dynogen.units import Skipped, SkipReason, Unit

__all__ = [
    "CardError",
    "DataFiles",
    "RowsFound",
    "RowsFn",
    "build_units",
    "card_citation",
    "card_license",
    "card_summary",
    "card_tags",
    "data_file_patterns",
    "split_card",
]

SUMMARY_CHARS = 1500
TAG_KEYS = (
    "task_categories",
    "task_ids",
    "language",
    "languages",
    "language_bcp47",
    "multilinguality",
    "annotations_creators",
    "language_creators",
    "source_datasets",
    "size_categories",
    "tags",
)

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 770 cards in <1 s


class _CardLoader(_BaseLoader):  # type: ignore[misc]
    """Safe loader with YAML 1.2 booleans (``yes``/``no``/``on``/``off`` stay text)."""


_CardLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_CardLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class CardError(MetadataError):
    """A card we cannot read (invalid YAML, a header that is not a mapping)."""


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """``(yaml_header, prose)``; a card without a ``---`` header has an empty header."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    if not text.startswith("---"):
        return {}, text
    first_nl = text.find("\n")
    if first_nl == -1 or text[:first_nl].strip() != "---":
        return {}, text
    match = re.search(r"^---[ \t]*$", text[first_nl + 1 :], flags=re.MULTILINE)
    if match is None:
        raise CardError("the YAML header starts with '---' but never ends with a '---' line")
    header = text[first_nl + 1 : first_nl + 1 + match.start()]
    prose = text[first_nl + 1 + match.end() :]
    try:
        meta = yaml.load(header, Loader=_CardLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        raise CardError(f"invalid YAML header: {' '.join(str(err).split())}") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise CardError(f"the YAML header must be a mapping, got {type(meta).__name__}")
    return meta, prose.lstrip("\n")


# --- prose -----------------------------------------------------------------------------

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*(.*?)\s*#*\s*$")
# Sections whose paragraphs say nothing about the data.
_BOILERPLATE = re.compile(
    r"contribution|citation|licens|curator|table of contents|acknowledg", re.IGNORECASE
)
_SUMMARY_TITLE = re.compile(r"^(dataset\s+)?summary$", re.IGNORECASE)
_MORE_INFO = re.compile(r"\[More Information Needed\](\([^)]*\))?", re.IGNORECASE)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_FENCE = re.compile(r"^\s*```.*?^\s*```[^\n]*$", re.DOTALL | re.MULTILINE)
_TAG = re.compile(r"</?[A-Za-z][^>\n]*>")
_EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1")


def card_summary(prose: str, max_chars: int = SUMMARY_CHARS, *, paragraphs: bool = True) -> str:
    """The "Dataset Summary" section as plain text, else the first prose paragraph(s).

    ``paragraphs=False`` returns "" instead of falling back, so a caller can
    prefer another description (dataset_infos.json) to a card's stray paragraph.
    """
    lines = _FENCE.sub("", _COMMENT.sub("", prose)).split("\n")
    section = _summary_section(lines)
    text = _clean(section) if section is not None else ""
    if not text and paragraphs:
        text = _first_paragraphs(lines, min_chars=200)
    return _truncate(text, max_chars)


def _summary_section(lines: list[str]) -> str | None:
    start = None
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m is None:
            continue
        if start is not None:
            return "\n".join(lines[start:i])
        if _SUMMARY_TITLE.match(m.group(1)):
            start = i + 1
    return "\n".join(lines[start:]) if start is not None else None


def _first_paragraphs(lines: list[str], min_chars: int) -> str:
    """Prose paragraphs from the top, skipping headings, tables of contents, bullet lists."""
    out: list[str] = []
    boilerplate = False
    for para in _paragraphs(lines):
        for line in para:
            m = _HEADING.match(line)
            if m is not None:
                boilerplate = bool(_BOILERPLATE.search(m.group(1)))
        if boilerplate or all(_is_non_prose(line) for line in para):
            continue
        text = _clean("\n".join(x for x in para if not _HEADING.match(x)))
        if text:
            out.append(text)
            if sum(len(x) for x in out) >= min_chars:
                break
    return "\n\n".join(out)


def _paragraphs(lines: list[str]) -> Iterator[list[str]]:
    para: list[str] = []
    for line in lines:
        if line.strip():
            para.append(line)
        elif para:
            yield para
            para = []
    if para:
        yield para


def _is_non_prose(line: str) -> bool:
    s = line.strip()
    return (
        bool(_HEADING.match(line))
        or s.startswith(("-", "*", "|", "+", ">", "```"))
        or (s[:1].isdigit() and s[1:3].startswith(". "))
    )


def _clean(text: str) -> str:
    text = _MORE_INFO.sub("", text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _EMPHASIS.sub(r"\2", text)
    paras = []
    for para in _paragraphs([x for x in text.split("\n") if not _HEADING.match(x)]):
        joined = " ".join(" ".join(para).split())
        if joined:
            paras.append(joined)
    return "\n\n".join(paras)


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


# --- YAML header fields ------------------------------------------------------------------


CITATION_CHARS = 4000
_CITATION_TITLE = re.compile(r"^(citation(\s+information)?|bibtex|how to cite|cite)$",
                             re.IGNORECASE)
_FENCED = re.compile(r"^\s*```[^\n]*\n(.*?)^\s*```", re.DOTALL | re.MULTILINE)


def card_citation(
    meta: Mapping[str, Any], prose: str, infos: Mapping[str, Any] | None = None
) -> str:
    """How the dataset asks to be cited; "" when its metadata does not say.

    ``dataset_infos.json``'s ``citation`` (the first config that has one), else the
    card's "Citation Information" section: its first fenced block (BibTeX, usually),
    else its text. Units do not carry it (it is not part of any prompt); a dataset
    card of the data grown from them does.
    """
    for info in (infos or {}).values():
        text = info.get("citation") if isinstance(info, Mapping) else None
        if isinstance(text, str) and text.strip():
            return _truncate(text.strip(), CITATION_CHARS)
    value = meta.get("citation")
    if isinstance(value, str) and value.strip():
        return _truncate(value.strip(), CITATION_CHARS)
    lines = _COMMENT.sub("", prose).split("\n")
    section: list[str] | None = None
    for line in lines:
        m = _HEADING.match(line)
        if m is not None:
            if section is not None:
                break
            if _CITATION_TITLE.match(m.group(1).strip()):
                section = []
        elif section is not None:
            section.append(line)
    if not section:
        return ""
    body = "\n".join(section)
    fenced = _FENCED.search(body)
    text = fenced.group(1).strip() if fenced else _clean(body)
    return _truncate(text, CITATION_CHARS) if text else ""


def card_license(meta: Mapping[str, Any], fallback: Any = None) -> str | None:
    """License from the card (a string or a list), else ``fallback`` (dataset_infos text)."""
    value = meta.get("license")
    if isinstance(value, list):
        names = [
            str(x).strip() for x in value if isinstance(x, (str, int, float)) and str(x).strip()
        ]
        if names:
            return ", ".join(names)
    elif isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(fallback, str) and fallback.strip():
        return " ".join(fallback.split())
    return None


def card_tags(meta: Mapping[str, Any], config: str | None = None) -> tuple[str, ...]:
    """``key:value`` tags; a value keyed by config (2022 cards) gives that config's values."""
    out: list[str] = []
    for key in TAG_KEYS:
        value = meta.get(key)
        if isinstance(value, Mapping):
            if config in value:
                value = value[config]
            else:
                value = [v for vs in value.values() for v in (vs if isinstance(vs, list) else [vs])]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip():
                tag = f"{key}:{str(v).strip()}"
                if tag not in out:
                    out.append(tag)
    return tuple(out)


# --- units -------------------------------------------------------------------------------

DataFiles = list[tuple[str, str]]  # (split, glob pattern)


@dataclass(frozen=True, slots=True)
class RowsFound:
    """Where a config's rows are: ``data_ref`` for ``datasets``, a few sample rows."""

    data_ref: str | None = None
    samples: tuple[dict[str, Any], ...] = ()
    splits: tuple[str, ...] = ()
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# (config name, its declared data files or None, whether it is the dataset's only config)
RowsFn = Callable[[str, "DataFiles | None", bool], RowsFound]


def data_file_patterns(data_files: Any) -> DataFiles | None:
    """Normalise a ``configs[].data_files`` value; ``None`` if it cannot be read."""
    if isinstance(data_files, str):
        return [("train", data_files)]
    out: DataFiles = []
    if isinstance(data_files, Mapping):
        entries: list[Any] = [{"split": k, "path": v} for k, v in data_files.items()]
    elif isinstance(data_files, list):
        entries = data_files
    else:
        return None
    for entry in entries:
        if isinstance(entry, str):
            out.append(("train", entry))
        elif isinstance(entry, Mapping) and isinstance(entry.get("split", "train"), str):
            paths = entry.get("path")
            for p in paths if isinstance(paths, list) else [paths]:
                if not isinstance(p, str):
                    return None
                out.append((str(entry.get("split", "train")), p))
        else:
            return None
    return out


@dataclass(slots=True)
class _Config:
    name: str
    features: Any = None
    description: str = ""
    license: Any = None
    splits: tuple[str, ...] = ()
    data_files: DataFiles | None = None
    declared: bool = False  # listed in a modern `configs:` entry
    problem: str = ""


def build_units(
    dataset: str,
    meta: Mapping[str, Any],
    prose: str,
    infos: Mapping[str, Any] | None,
    *,
    origin: str,
    rows: RowsFn | None = None,
    summary_chars: int = SUMMARY_CHARS,
) -> Iterator[Unit | Skipped]:
    """One ``Unit`` per configuration with features; ``Skipped`` for what cannot be read.

    Configurations come from ``dataset_infos.json`` (file order), then the card's
    ``dataset_info``, then modern ``configs:`` entries; a name in several places
    is merged (card features win, being newer). A dataset with no features
    anywhere yields one ``Skipped(config="")``.

    Description: the card's "Dataset Summary", else the config's dataset_infos
    description, else the card's first prose paragraphs, else its ``pretty_name``.
    """
    configs, problems = _collect_configs(meta, infos)
    yield from (Skipped(dataset, cfg, SkipReason.DUPLICATE, why) for cfg, why in problems)
    if not configs:
        yield Skipped(
            dataset,
            "",
            SkipReason.INVALID_METADATA,
            "no features: neither dataset_infos.json nor a dataset_info block in README.md",
        )
        return
    summary = card_summary(prose, summary_chars, paragraphs=False)
    fallback: str | None = None
    sole = len(configs) == 1
    for cfg in configs.values():
        if cfg.problem:
            yield Skipped(dataset, cfg.name, SkipReason.INVALID_METADATA, cfg.problem)
            continue
        if cfg.features is None:
            yield Skipped(
                dataset,
                cfg.name,
                SkipReason.INVALID_METADATA,
                f"config {cfg.name!r} has no features",
            )
            continue
        try:
            fields = fields_from_features(cfg.features)
        except FeaturesError as err:
            yield Skipped(dataset, cfg.name, SkipReason.INVALID_METADATA, f"features: {err}")
            continue
        description = summary or _truncate(_clean(cfg.description), summary_chars)
        if not description:
            if fallback is None:
                pretty = meta.get("pretty_name")
                fallback = card_summary(prose, summary_chars) or (
                    _clean(pretty) if isinstance(pretty, str) else ""
                )
            description = fallback
        found = rows(cfg.name, cfg.data_files, sole) if rows is not None else RowsFound()
        extra = dict(found.extra)
        if found.note:
            extra["rows_note"] = found.note
        yield Unit(
            dataset=dataset,
            config=cfg.name,
            description=description,
            fields=fields,
            license=card_license(meta, cfg.license),
            tags=card_tags(meta, cfg.name),
            splits=cfg.splits or found.splits,
            samples=found.samples,
            data_ref=found.data_ref,
            origin=origin,
            extra=extra,
        )


def _collect_configs(
    meta: Mapping[str, Any], infos: Mapping[str, Any] | None
) -> tuple[dict[str, _Config], list[tuple[str, str]]]:
    configs: dict[str, _Config] = {}
    dupes: list[tuple[str, str]] = []
    for name, info in (infos or {}).items():
        cfg = configs.setdefault(_config_name(name), _Config(_config_name(name)))
        if not isinstance(info, Mapping):
            cfg.problem = f"dataset_infos.json entry {name!r} is not an object"
            continue
        cfg.features = info.get("features")
        description = info.get("description")
        cfg.description = description if isinstance(description, str) else ""
        cfg.license = info.get("license")
        splits = info.get("splits")
        if isinstance(splits, Mapping):
            cfg.splits = tuple(str(s) for s in splits)

    card_infos = meta.get("dataset_info")
    seen_in_card: set[str] = set()
    for entry in card_infos if isinstance(card_infos, list) else [card_infos]:
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            configs.setdefault(
                "default", _Config("default")
            ).problem = "README.md dataset_info entries must be mappings"
            continue
        name = _config_name(entry.get("config_name"))
        if name in seen_in_card:
            dupes.append((name, f"README.md dataset_info lists config {name!r} twice"))
            continue
        seen_in_card.add(name)
        cfg = configs.setdefault(name, _Config(name))
        if "features" in entry:
            cfg.features = entry["features"]
        splits = entry.get("splits")
        if isinstance(splits, list):
            names = tuple(str(s["name"]) for s in splits if isinstance(s, Mapping) and "name" in s)
            cfg.splits = names or cfg.splits

    declared = meta.get("configs")
    for entry in declared if isinstance(declared, list) else []:
        if not isinstance(entry, Mapping):
            continue  # 2022 cards list bare config names here: tags, not data layouts
        name = _config_name(entry.get("config_name"))
        cfg = configs.setdefault(name, _Config(name))
        if cfg.declared:
            dupes.append((name, f"README.md configs lists config {name!r} twice"))
            continue
        cfg.declared = True
        cfg.data_files = data_file_patterns(entry.get("data_files"))
    return configs, dupes


def _config_name(name: Any) -> str:
    if name is None or (isinstance(name, str) and not name.strip()):
        return "default"
    return str(name)
