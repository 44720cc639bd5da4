"""A unit as the task rules see it, prepared once for all its tasks.

A unit's several tasks (up to three an answer, for each prompt variant) are
checked against the same description, labels, sample values and fields:
``UnitText`` holds them normalized, cut into n-grams or classified (see
``fields``) on first use, so that a rule costs per task only what depends on
the task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from dynogen.dedup import normalize_text
from dynogen.instances.render import lookup, render_value
from dynogen.tasks.fields import CONTENT, choice_fields, field_kind, is_choice_key, name_words
from dynogen.units import Field, Unit

__all__ = ["Facts", "UnitText", "ngrams", "word_list", "wordset"]

Facts = Mapping[str, Sequence[str]]  # field -> rendered value per sampled row ("" if empty)
_WORD = re.compile(r"[a-z]+")


def wordset(text: str) -> frozenset[str]:
    """The whitespace-separated words of a word list written as one text."""
    return frozenset(text.split())


# Words any task may use whatever its rows: with the unit's own names, description and
# labels, what an instruction quoting a sample row is *not* quoting.
_GENERIC = wordset("""
the and for with from into that this these those what which who whom whose when where why how
its their his her your our about each every one two three four five first second third last
other another same different any some all both either neither only also not than then there
here such very more most less least much many few short long brief single whole entire full
new original given following below above based using same its one ones word words sentence
sentences text texts question questions answer answers passage paragraph paragraphs article
articles document documents review reviews tweet tweets post posts comment comments title
titles headline headlines summary summaries story stories dialogue dialog conversation turn
utterance utterances speaker message messages email code program function description
definition explanation reason rationale option options choice choices correct incorrect right
wrong true false yes positive negative neutral good bad best main label labels category
categories class classes topic topics sentiment emotion emotions opinion entity entities name
names person people location organization date number numbers language languages english
translation source target context premise hypothesis claim evidence statement statements fact
facts query response responses reply content input inputs output outputs field fields value
values example examples item items list type types kind kinds form format style tone meaning
relation relationship relations pair pairs span spans token tokens phrase phrases term terms
key keyword keywords concept concepts scenario situation event events information details
detail data record records user users author authors reader readers writer model task tasks
product products movie movies film films book books news report reports social media online
web page pages line lines point points score scores rating ratings level levels quality
whether based between among within without after before during while because like unlike
provided appropriate relevant related specific overall general similar common everyday simple
coherent clear concise fluent natural likely possible best most main primary central key
""")
# A code: 4+ letters and digits, at least one a digit ("DB09079", "Q42x", "1998").
_CODE = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z]*\d)[A-Za-z0-9]{4,}(?![A-Za-z0-9])")
_LINKING = frozenset(("the", "a", "an", "of", "in", "on", "at", "to", "for", "with", "by",
                      "from", "and", "or", "about", "into", "s"))
_SAMPLE_CHARS = 300  # what the prompt shows of a sample value (prompts.builder)


def word_list(text: str) -> list[str]:
    """The words of ``text``, lower-cased letters only (digits and punctuation split them)."""
    return _WORD.findall(text.lower())


def ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The distinct runs of ``n`` consecutive words."""
    return set(zip(*(words[i:] for i in range(n)), strict=False))


def _values(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _shown(v: Any) -> str:
    """A sample value as the prompt shows it (text cut short, other values as JSON)."""
    if isinstance(v, str):
        return v[:_SAMPLE_CHARS]
    try:
        return orjson.dumps(v, default=str).decode()[:_SAMPLE_CHARS]
    except TypeError:  # an object orjson cannot write even as text: not shown
        return ""


class UnitText:
    """What the rules compare a task against, for one unit.

    A unit's several tasks are checked against the same description, labels,
    sample values and fields: this holds them normalized, cut into n-grams or
    classified once per unit (each part on first use), not once per task.
    """

    __slots__ = ("_unit", "_facts", "_desc", "_values", "_labels", "_label_words", "_value5",
                 "_shown", "_shown_vocab", "_shown_words", "_vocab", "_meta", "_kinds", "_choices",
                 "_keys")

    def __init__(self, unit: Unit, facts: Facts | None) -> None:
        self._unit = unit
        self._facts = facts
        self._desc: str | None = None
        self._values: set[str] | None = None
        self._labels: set[str] | None = None
        self._label_words: set[str] | None = None
        self._value5: list[set[tuple[str, ...]]] | None = None
        self._shown: list[str] | None = None
        self._shown_vocab: frozenset[str] | None = None
        self._shown_words: list[str] | None = None
        self._vocab: frozenset[str] | None = None
        self._meta: str | None = None
        self._kinds: dict[str, str] = {}
        self._choices: tuple[str, ...] | None = None
        self._keys: dict[str, tuple[str, ...]] = {}

    def is_for(self, unit: Unit, facts: Facts | None) -> bool:
        """Whether this view was made for ``unit`` with these facts (its variants share it)."""
        return self._unit is unit and self._facts is facts

    def copies_description(self, words: list[str]) -> bool:
        """Whether most (half or more) of the word 6-grams of ``words`` appear in the
        description (case and punctuation aside).

        Substring tests on the description's words, padded, rather than a set of
        every 6-gram of what can be a long card; stops as soon as the answer is known.
        """
        grams = ngrams(words, 6)
        if not grams or not self._unit.description:
            return False
        desc = self._description()
        need = max(1, len(grams) // 2)
        spare = len(grams) - need  # misses allowed before the answer is no
        for g in grams:
            if " " + " ".join(g) + " " in desc:
                need -= 1
                if not need:
                    return True
            else:
                spare -= 1
                if spare < 0:
                    return False
        return False

    @property
    def labels(self) -> set[str]:
        if self._labels is None:
            self._labels = {normalize_text(x) for f in self._unit.fields for x in f.labels}
        return self._labels

    @property
    def values(self) -> set[str]:
        """Normalized card sample values and sampled row values (20 a field), no empties."""
        if self._values is None:
            values: set[str] = set()
            for s in self._unit.samples:
                values.update(normalize_text(_values(v)) for v in s.values())
            for vs in (self._facts or {}).values():
                values.update(normalize_text(v) for v in vs[:20])
            values.discard("")
            self._values = values
        return self._values

    @property
    def label_words(self) -> set[str]:
        """Words of label names and of short values (columns that hold labels)."""
        if self._label_words is None:
            short = {v for v in self.values if len(v.split()) <= 3}
            self._label_words = {w for lab in self.labels | short for w in lab.split()}
        return self._label_words

    @property
    def value_5grams(self) -> list[set[tuple[str, ...]]]:
        if self._value5 is None:
            self._value5 = [g for g in (ngrams(v.split(), 5) for v in self.values) if g]
        return self._value5

    @property
    def shown(self) -> list[str]:
        """Each sample row as the prompt showed it to the model, lower-cased: a quick first
        look (a phrase's word missing from a row's text is missing from the row)."""
        if self._shown is None:
            self._shown = [" ".join(_shown(v) for v in s.values()).lower()
                           for s in self._unit.samples]
        return self._shown

    @property
    def shown_vocab(self) -> frozenset[str]:
        """The words of the shown rows."""
        if self._shown_vocab is None:
            self._shown_vocab = frozenset(_WORD.findall(" ".join(self.shown)))
        return self._shown_vocab

    @property
    def shown_words(self) -> list[str]:
        """Each shown row's values normalized, padded with spaces and apart (" | " cannot
        be part of a normalized phrase)."""
        if self._shown_words is None:
            self._shown_words = [
                " " + " | ".join(normalize_text(_shown(v)) for v in s.values()) + " "
                for s in self._unit.samples]
        return self._shown_words

    def _description(self) -> str:
        """The description's words, padded with spaces."""
        if self._desc is None:
            self._desc = " " + " ".join(word_list(self._unit.description)) + " "
        return self._desc

    def _names(self) -> str:
        """The unit's dataset, config, field and label names, as one text."""
        u = self._unit
        parts = [u.dataset, u.config]
        for f in u.fields:
            parts.append(f.name)
            parts.append(" ".join(name_words(f.name)))
            parts.extend(f.labels)
        return " ".join(parts)

    @property
    def vocab(self) -> frozenset[str]:
        """The words of the unit's names, description and labels."""
        if self._vocab is None:
            self._vocab = frozenset(self._description().split()) | frozenset(
                word_list(self._names()))
        return self._vocab

    @property
    def metadata(self) -> str:
        """The unit's names, description and labels normalized (digits kept), padded."""
        if self._meta is None:
            self._meta = f" {normalize_text(self._unit.description + ' ' + self._names())} "
        return self._meta

    def quotes_sample(self, instruction: str, words: list[str]) -> bool:
        """Whether ``instruction`` quotes a sample row's specific content: two rare words
        (with at most two linking words between them: "missed the marathon"), or a code of
        letters and digits, that a shown sample row holds and the unit's names, description
        and labels do not. A word is rare when it is not in those either, nor among the
        words any task may use (``_GENERIC``). What half the shown rows or more hold is
        the dataset's subject, not one row's ("covid vaccine" in every tweet)."""
        if not self._unit.samples:
            return False
        # Candidates first, from the words alone and the rows' words (most instructions have
        # none), then the rows themselves, the metadata last.
        spans = []
        last = -1  # the last uncommon word seen, if only linking words came after it
        in_rows = self.shown_vocab
        for i, w in enumerate(words):
            if len(w) > 2 and w not in _GENERIC and w in in_rows:
                if last >= 0:
                    spans.append((last, i))
                last = i
            elif w not in _LINKING or last < 0 or i - last > 2:
                last = -1
        codes = _CODE.findall(instruction)
        if not spans and not codes:
            return False
        for a, b in spans:  # only linking words between a and b
            if (self._in_few_rows(" " + " ".join(words[a:b + 1]) + " ", words[b])
                    and words[a] not in self.vocab and words[b] not in self.vocab):
                return True
        for tok in codes:
            code = f" {tok.lower()} "
            if self._in_few_rows(code, code.strip()) and code not in self.metadata:
                return True
        return False

    def _in_few_rows(self, phrase: str, probe: str) -> bool:
        """Whether some shown rows hold ``phrase``, fewer than half of them (one of one).
        ``probe``: a word of the phrase, looked for first in the rows' plain text."""
        if not any(probe in r for r in self.shown):
            return False
        rows = self.shown_words
        n = sum(phrase in r for r in rows)
        return n > 0 and (n == 1 or 2 * n < len(rows))

    def column(self, name: str) -> Sequence[str]:
        """``name``'s values over the sampled rows, else over the card's sample rows."""
        facts = self._facts
        if facts is not None and name in facts:
            return facts[name]
        f = self._unit.field(name)
        labels = f.labels if f is not None else ()
        return [render_value(lookup(row, name), name, labels) or ""
                for row in self._unit.samples]

    def kind(self, name: str) -> str:
        """``fields.field_kind`` of an input, once per unit."""
        kind = self._kinds.get(name)
        if kind is None:
            f = self._unit.field(name)
            kind = CONTENT if f is None else field_kind(f, self.column(name))
            self._kinds[name] = kind
        return kind

    def choices_for(self, output: Field) -> tuple[str, ...]:
        """The unit's choice fields when ``output`` is a choice key, else ``()`` (once per
        output field)."""
        found = self._keys.get(output.name)
        if found is None:
            names = frozenset(f.name for f in self._unit.fields) if output.labels else ()
            found = ()
            if is_choice_key(output, self.column(output.name), names):
                if self._choices is None:
                    self._choices = choice_fields(self._unit)
                found = self._choices
            self._keys[output.name] = found
        return found
