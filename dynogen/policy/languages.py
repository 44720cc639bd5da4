"""Which languages instances may be in: from card tags, config names and field content.

Dynosaur kept English (and code) and set translation datasets apart. Here the
default is English; ``--languages en,code,fr`` widens it and ``any`` lifts it.

A unit's languages are decided, in order of evidence:

1. card tags (``language:``, ``languages:``, ``language_bcp47:``), reduced to
   their primary subtag (``en-US`` → ``en``); a unit tagged only with languages
   outside the allow-list is refused (``language_not_allowed``);
2. a translation dataset (``multilinguality:translation`` or a ``translation``
   field) needs every language it names to be allowed (``language_translation``);
3. for a multilingual card, a config whose name is a language code of the card
   (``de``, ``xnli.fr``, ``en-de``) is that language: ``config_de`` of a card
   tagged en/de/fr is refused;
4. field content: when sample rows hold enough text (``MIN_WORDS``), text that
   is not English by a stop-word and script test is refused
   (``language_content``) under an English-only policy.

Word lists, no model data: a tagger would need downloads the machine may lack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dynogen.errors import ConfigError

__all__ = ["DEFAULT_LANGUAGES", "LanguagePolicy", "english_share", "unit_languages"]

DEFAULT_LANGUAGES = "en"
MIN_WORDS = 40
MIN_ENGLISH_SHARE = 0.12
_LANG_KEYS = ("language:", "languages:", "language_bcp47:")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_STOP_WORDS = """
the of and to a in is that for it was on with as are be this by at from or an not have has
but they you he she his her we which their what there been were will would can all one if
more when who about into than its do does did so no how
"""
_STOP = frozenset(_STOP_WORDS.split())
_NON_LANG = {"unknown", "other", "multilingual", "und", "mul", "none"}


def _primary(tag_value: str) -> str:
    v = tag_value.strip().lower().replace("_", "-")
    return v if v in ("code",) else v.split("-")[0]


def unit_languages(tags: Iterable[str]) -> tuple[str, ...]:
    """Primary language codes a unit's tags name, in order, without placeholders."""
    out: list[str] = []
    for t in tags:
        for key in _LANG_KEYS:
            if t.startswith(key):
                code = _primary(t[len(key):])
                if code and code not in _NON_LANG and code not in out:
                    out.append(code)
    return tuple(out)


def english_share(texts: Iterable[str]) -> tuple[float, int]:
    """``(share of words that are English stop words, words seen)``; non-Latin words count."""
    words = 0
    stop = 0
    for text in texts:
        for w in _WORD.findall(text):
            words += 1
            if w.lower() in _STOP:
                stop += 1
            if words >= 2000:
                return stop / words, words
    return (stop / words if words else 0.0), words


def _texts(rows: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    for row in rows:
        for v in row.values():
            if isinstance(v, str):
                yield v
            elif isinstance(v, (list, tuple)):
                yield from (x for x in v if isinstance(x, str))


@dataclass(frozen=True, slots=True)
class LanguagePolicy:
    """Allowed primary language codes, or every language (``any``).

    >>> LanguagePolicy.parse("en").refusal(("language:fr",), "default", "", [])
    'language_not_allowed'
    """

    codes: frozenset[str]
    any: bool = False

    @classmethod
    def parse(cls, spec: str | list[str] | tuple[str, ...] | None) -> LanguagePolicy:
        raw = spec if spec is not None else DEFAULT_LANGUAGES
        items = [_primary(s) for s in (raw.split(",") if isinstance(raw, str) else raw)
                 if str(s).strip()]
        if not items:
            raise ConfigError("--languages is empty: name language codes (en,fr) or 'any'")
        if "any" in items:
            return cls(frozenset(), any=True)
        return cls(frozenset(items))

    def refusal(self, tags: Iterable[str], config: str, field_types: str,
                rows: Iterable[Mapping[str, Any]]) -> str | None:
        """``None`` if the unit may be used, else the counted skip reason."""
        if self.any:
            return None
        tags = tuple(tags)
        langs = unit_languages(tags)
        if langs and not set(langs) & self.codes:
            return "language_not_allowed"
        translation = "multilinguality:translation" in tags or "translation" in field_types
        if translation and langs and not set(langs) <= self.codes:
            return "language_translation"
        if len(langs) > 1:
            named = {_primary(p) for p in re.split(r"[._\-+ ]", config.lower()) if p}
            in_name = named & set(langs)
            if in_name and not in_name <= self.codes:
                return "language_not_allowed"
        if self.codes <= {"en", "code"}:
            share, words = english_share(_texts(rows))
            if words >= MIN_WORDS and share < MIN_ENGLISH_SHARE:
                return "language_content"
        return None

    def describe(self) -> str:
        return "any" if self.any else ",".join(sorted(self.codes))
