"""What a unit's fields hold, as the task rules need to know it.

Pure functions over a field's name, its type and the values seen in sampled
rows (``Facts``, or the card's sample rows rendered the same way):

- ``field_kind``: whether an input carries content a model can read (text, a
  label, a measure that varies) or only points at a row: an id, an index or
  turn number, a URL, a date or time, or a value that never changes;
- ``choice_fields``: the fields that hold a multiple-choice item's choices
  (``choices``, ``options``, ``endings``, ``choice1``/``choice2``, ``sol1``,
  ``opa``..``opd``, ``distractor1`` ...);
- ``is_choice_key``: whether an output is the key of the right choice (``A``..``E``,
  ``0``..``4``, a ClassLabel named ``choice1``/``choice2``) rather than an answer
  that stands alone.

Names are read as words: ``speech_turn`` and ``turnNumber`` are [speech, turn]
and [turn, number]; digits split words (``start1`` is [start]).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from dynogen.units import ID_NAME, Field, Unit

__all__ = ["CONTENT", "MIN_VALUES", "NOT_CONTENT", "choice_fields", "field_kind",
           "is_choice_key", "name_words"]

MIN_VALUES = 3  # sampled values needed before values, not the name alone, decide
# A short value repeated over this many sampled rows is a constant ("en", "train"); over
# fewer it may be chance (the Hub's first rows often share one article, one question).
MIN_CONSTANT = 20
CONTENT = "content"
NOT_CONTENT = frozenset(("id", "index", "url", "date", "constant", "empty"))

_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
_INDEX_ANY = frozenset(("turn", "offset", "position", "idx", "index", "fold", "page", "pg",
                        "seq", "ind", "loc", "span"))
_INDEX_LAST = frozenset(("no", "num", "number", "start", "end", "begin", "pos", "line", "row",
                         "step", "order", "width", "height", "chapter", "episode", "season",
                         "nr"))
_DATE_WORDS = frozenset(("date", "time", "timestamp", "datetime", "year", "month", "day",
                         "utc", "dob"))
_URL_WORDS = frozenset(("url", "uri", "link", "href", "website", "homepage", "permalink"))
_NUMERIC = ("int", "uint", "float", "double", "decimal")
_URL_VALUE = re.compile(r"^(https?://|www\.)\S+$", re.IGNORECASE)
_DATE_VALUE = re.compile(
    r"^(\d{4}-\d{1,2}(-\d{1,2})?([ t]\d{1,2}:\d{2}(:\d{2})?\S*)?|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}|"
    r"\d{1,2}:\d{2}(:\d{2})?|"
    r"(\d{1,2} )?(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2}"
    r"(st|nd|rd|th)?,? \d{4}|\d{1,2} (jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* "
    r"\d{4})$",
    re.IGNORECASE)
_ID_VALUE = re.compile(r"^[\w\-:/.#]+$")
_INT_VALUE = re.compile(r"^-?\d+$")
# A name whose last word is one of these (digits aside), ``opa``..``ope``, or ``answer0``.
_CHOICE_NAME = re.compile(
    r"(?:^|[_\-\s.\d]|(?<=[a-z])(?=[A-Z]))(?i:choices?|options?|endings?|candidates?|"
    r"alternatives?|sol|distractors?|quiz)_?\d*$|^(?i:op[a-e]|answer_?\d)$")
_KEY_VALUE = re.compile(r"^([a-j]|\d{1,2})$", re.IGNORECASE)
_KEY_NAME = re.compile(r"(?i)(^|_)(answer_?key|key|correct(_answer)?_?(idx|id|index|option)|"
                       r"cop|answer_?(idx|index|id)|label_?(idx|index))$")
_KEY_WORDS = frozenset(("label", "answer", "correct", "gold", "key", "idx", "index", "target",
                        "right", "cop"))


def name_words(name: str) -> list[str]:
    """A field name as lower-case words: ``speech_turn`` and ``turnNumber`` alike."""
    return [w.lower() for w in _CAMEL.findall(name)]


def _numeric(field: Field, values: Sequence[str]) -> bool:
    if field.type.startswith(_NUMERIC):
        return True
    return bool(values) and all(_INT_VALUE.match(v) for v in values)


def _looks_like_ids(values: Sequence[str]) -> bool:
    """Codes, not words: no spaces, and most hold digits and are 6+ characters long."""
    return (all(_ID_VALUE.match(v) for v in values)
            and sum(any(c.isdigit() for c in v) and len(v) >= 6 for v in values)
            >= 0.8 * len(values))


def field_kind(field: Field, values: Sequence[str]) -> str:
    """``CONTENT``, or what the field holds instead (one of ``NOT_CONTENT``).

    ``values``: the field's rendered values over the sampled rows ("" when empty);
    with fewer than ``MIN_VALUES`` non-empty ones, the name and type decide alone.
    A ClassLabel or a bool is content (a category is something to read); a number
    is content unless its name makes it a position (``turn``, ``start1``, ``page``)
    or a date (``year``).
    """
    if ID_NAME.search(field.name):
        return "id"
    words = name_words(field.name)
    if field.type.startswith(("timestamp", "date", "time")):
        return "date"
    if field.labels or field.type == "bool":
        return CONTENT
    vals = [v for v in values if v]
    enough = len(vals) >= MIN_VALUES
    if len(vals) >= MIN_CONSTANT and len(set(vals)) == 1 and len(vals[0]) <= 40:
        return "constant"
    if values and not vals and len(values) >= MIN_VALUES:
        return "empty"
    numeric = _numeric(field, vals)
    if numeric and words and (words[-1] in _INDEX_LAST or any(w in _INDEX_ANY for w in words)):
        return "index"
    if any(w in _DATE_WORDS for w in words) and not field.type.startswith(
            ("list", "sequence", "struct")) and (numeric or not enough or all(
            _DATE_VALUE.match(v) or _INT_VALUE.match(v) for v in vals)):
        return "date"
    if any(w in _URL_WORDS for w in words):
        return "url"
    if not enough:
        return CONTENT
    if all(_URL_VALUE.match(v) for v in vals):
        return "url"
    if all(_DATE_VALUE.match(v) for v in vals):
        return "date"
    if not numeric and _looks_like_ids(vals):
        return "id"
    return CONTENT


def choice_fields(unit: Unit) -> tuple[str, ...]:
    """The unit's fields that hold a multiple-choice item's choices, in field order."""
    return tuple(f.name for f in unit.fields
                 if _CHOICE_NAME.search(f.name) and not ID_NAME.search(f.name))


def is_choice_key(field: Field, values: Sequence[str], names: Collection[str]) -> bool:
    """Whether ``field`` holds which choice is right: a letter or a small index, or the name
    of a choice field (``names``: the unit's field names)."""
    if field.labels:
        labels = set(field.labels)
        return (all(_KEY_VALUE.match(x) for x in labels)
                or (len(labels) >= 2 and labels <= set(names)))
    if field.type.startswith(("list", "sequence", "struct")):
        return False
    vals = [v for v in values if v]
    if len(vals) >= MIN_VALUES:
        return all(_KEY_VALUE.match(v) for v in vals)
    if _KEY_NAME.search(field.name):
        return True
    return field.type.startswith(("int", "uint")) and any(
        w in _KEY_WORDS for w in name_words(field.name))
