"""The allowed answers an instruction states: once, and true.

A model often writes the answers into its instruction ("The answer is either
True or False.", "(positive/negative)", "Choose from: A, B, C", "Classify the
review as positive or negative"), and what it writes need not be the output's
answers: another spelling (``True`` for ``true``), a missing class, label ids
for label names, ``yes``/``no`` for a bool. ``state_answers`` finds each list
the model wrote and compares it with what the output field can hold:

- a list that is a sentence of its own, a parenthesis, or a phrase that ends
  its sentence ("… as positive or negative.") is removed, and the true list is
  stated once at the end ("Answers must be one of: negative, positive.");
- a list inside a sentence that cannot be cut out ("Decide whether the
  statement is true or false.") stays when it names exactly the true answers
  (respelled as the labels spell them; no suffix then, it is the one list),
  and the task is dropped (``instruction_wrong_answer_list``) when it does not;
- with no list, the true list is appended as before (``rules.answer_options``).

When every answer is not known (more than ``MAX_SUFFIX_LABELS`` labels, a
text column seen on a few rows), a list that disagrees with the answers seen
is removed (or the task dropped) and none is stated. When nothing is known of
the output's answers, the instruction is left as the model wrote it.

Pure and deterministic: the same instruction and answers give the same text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dynogen.tasks.fields import name_words
from dynogen.tasks.rules import Facts, TaskRule, answer_options, is_label_like
from dynogen.units import Field

__all__ = ["AnswerList", "find_lists", "known_answers", "label_suffix", "state_answers",
           "stated_answers"]

def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_WORDISH = r"""\w(?:[\w\-+']|[./](?=\w))*"""
_ITEM = (rf"""(?:["“][^"”]{{1,40}}["”]|'[^']{{1,40}}'|"""
         rf"(?!(?:and|or)\b){_WORDISH}(?:\s{_WORDISH})??)")
_MAPPED_ITEM = rf"{_WORDISH}\s+(?:for|if|when|=|means)\s+{_WORDISH}(?:\s{_WORDISH})?"
_SEP = r"""\s*(?:,\s*or|,\s*and|,|/|\||\bor\b|\band\b)\s*"""
_LIST = rf"(?P<list>{_ITEM}(?:{_SEP}{_ITEM})+)"
_OR_LIST = rf"(?P<list>{_ITEM}(?:\s*(?:,|/)\s*{_ITEM})*,?\s+or\s+{_ITEM}(?:\s+or\s+{_ITEM})*)"
_FOLLOWING = r"(?:\s+the\s+following(?:\s+[a-z]+){0,2}|\s+these(?:\s+[a-z]+)?)?"
_ANSWER_VERBS = ("answer", "respond", "reply", "output", "return", "say", "write", "print")
# Where a verb starts a command: a sentence's or clause's start, or after "and", "then"...
_COMMAND = r"(?:^|[.!?;:,)]\s*|\b(?:and|then|please|to|only)\s+)"
# Each pattern with what its text must hold (one word of each group, lower-cased) for it to
# be tried at all, and how much its words announce a list of answers:
# - "announced" ("Choose from: …", "Options: …"): a list whatever its items;
# - "cued" ("one of", "either"): when an item is a known answer, or the words just
#   before it speak of answers, labels or options ("Answers must be one of …");
# - "verb" ("Answer with …", "Output 0 for …"): when an item is a known answer;
# - "bare" ("as X or Y", "(X/Y)", "X or Y"): known by its items alone.
_PATTERNS: list[tuple[tuple[tuple[str, ...], ...], re.Pattern[str], str]] = [
    (gates, re.compile(p, re.IGNORECASE), kind) for gates, p, kind in (
        ((("one of", "any of"),), rf"\b(?:one|any)\s+of{_FOLLOWING}\s*:?\s*{_LIST}",
         "cued"),
        ((("either",),), rf"\beither\s*:?\s*{_OR_LIST}", "cued"),
        ((("choos", "select", "pick"),),
         rf"\b(?:choose|select|pick|choosing|selecting)\b[^.:;()]{{0,30}}?\b"
         rf"(?:from|between|among){_FOLLOWING}\s*:?\s*{_LIST}", "announced"),
        ((("option", "choice", "label", "categor", "class", "possible", "valid"),),
         rf"\b(?:options|choices|labels|categories|classes|possible\s+(?:answers|labels|"
         rf"values|outputs|options|categories)|valid\s+(?:answers|labels)|answer\s+choices)"
         rf"\s*(?:are|include|:)\s*:?\s*{_LIST}", "announced"),
        ((_ANSWER_VERBS,),
         rf"{_COMMAND}(?:{'|'.join(_ANSWER_VERBS)})\s+(?:with\s+|using\s+)?(?:either\s+)?"
         rf"(?:the\s+word\s+|a\s+|an\s+)?{_LIST}", "verb"),
        (((*_ANSWER_VERBS, "use", "label"), (" for ", " if ", "=", " when ", " means ")),
         rf"{_COMMAND}(?:{'|'.join(_ANSWER_VERBS)}|use|label)\s+(?:with\s+)?"
         rf"(?P<list>{_MAPPED_ITEM}(?:{_SEP}{_MAPPED_ITEM})+)", "verb"),
        ((("(",),), rf"\(\s*{_LIST}\s*\)", "bare"),
        (((" as ",),), rf"\bas\s+(?:either\s+)?(?:a\s+|an\s+)?{_OR_LIST}", "bare"),
        (((" or ",),), rf"\b{_OR_LIST}", "bare"),
    )]
_SPLIT = re.compile(_SEP, re.IGNORECASE)
_QUOTES = "\"'“”‘’.:;"
_BOOLISH = frozenset(("yes", "no", "true", "false"))
_KEY = re.compile(r"^([a-j]|\d{1,2})$")
_MAPPED = re.compile(r"^(\S+)\s+(?:for|if|when|=|means|meaning|:)\s+\S.*$")
_NOT_ANSWERS = re.compile(r"\s*-?\s*(?:questions?|type|format|answers?\s+to)\b", re.IGNORECASE)
_STRONG = re.compile(r"\b(?:answers?|labels?|outputs?|respond|reply|options|choices|choose|"
                     r"select|pick|categories|classes|possible|valid)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;](?:\s+|$)|$")
_PHRASE_HEAD = re.compile(
    r"(?:,\s*)?\b(?:as|with|into|using|by|either)"
    r"(?:\s+(?:either|one\s+of|any\s+of|the\s+following(?:\s+[a-z]+){0,2}"
    r"|these(?:\s+[a-z]+)?|a|an|the\s+word)\b)*\s*:?\s*$", re.IGNORECASE)
# Words a sentence may hold besides its list and still exist only for the list.
_CUE_WORDS = _wordset("""
answer answers label labels output outputs response responses result prediction class category
categories options option choices choice possible valid value values must should can will may
be is are the your you one any of either or and choose select pick from between among following
these with a an only please respond reply use write return give as it this that in form format
word words exactly allowed final lowercase case print say for if when means meaning
sentiment emotion topic intent stance polarity relation type verdict tag
""")
# A phrase cut after one of these would leave its sentence without an object.
_NEEDS_OBJECT = _wordset("""
is are be was were being choose select pick answer respond reply output return say write print
use either
""")
_WORD = re.compile(r"[a-z]+")


def label_suffix(labels: Sequence[str]) -> str:
    """The suffix for a task whose answers are exactly ``labels`` (all of them)."""
    return " Answers must be one of: " + ", ".join(str(x) for x in labels) + "."


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _norm(item: str) -> str:
    item = item.strip().strip(_QUOTES).strip().casefold()
    for article in ("a ", "an ", "the "):
        if item.startswith(article):
            item = item[len(article):]
    return item


@dataclass(frozen=True, slots=True)
class AnswerList:
    """A list of answers in an instruction: its items and how it may be mended.

    ``removal``: the characters to cut to take it out cleanly (its own sentence, a
    parenthesis, or a phrase that ends a sentence), or ``None``. ``bare``: found by its
    items alone, with no words that announce a list ("whether it is true or false").
    """

    start: int
    end: int
    items: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # each item's characters
    bare: bool
    removal: tuple[int, int] | None
    joiner: str  # how the model joined its items: "/", " or ", ", "


def _items(text: str, m: re.Match[str]) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    items, spans, pos = [], [], m.start("list")
    for part in _SPLIT.split(m.group("list")):
        i = text.index(part, pos)
        pos = i + len(part)
        core = part.strip().strip(_QUOTES)
        if core:
            j = text.index(core, i)
            items.append(core)
            spans.append((j, j + len(core)))
    return tuple(items), tuple(spans)


def _names(item: str, truth: Collection[str]) -> bool:
    """Whether ``item`` names an answer of ``truth``, maybe cut or spelled out: ``positive``
    for ``pos``, ``sad`` for ``sadness`` (one a prefix of the other, 3+ letters). Other
    forms of a word (``entails`` for ``entailment``) do not: they read as verbs, and a
    list of verbs is not a list of answers to respell."""
    if item in truth:
        return True
    return len(item) >= 3 and " " not in item and any(
        len(t) >= 3 and (t.startswith(item) or item.startswith(t)) for t in truth)


def _anchors(items: Sequence[str], truth: Collection[str]) -> tuple[int, int]:
    """How many items are known answers (one of ``truth``, maybe spelled longer or shorter,
    yes/no/true/false, a choice letter or index, "0 for negative"), and how many name one
    of ``truth`` itself."""
    known = true = 0
    for x in map(_key, items):
        named = _names(x, truth)
        true += named
        known += named or x in _BOOLISH or bool(_KEY.match(x))
    return known, true


def _sentence(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence around ``text[start:end]``, its end mark included."""
    head = 0
    for m in re.finditer(r"[.!?;]\s+", text[:start]):
        head = m.end()
    tail_m = _SENTENCE_END.search(text, end)
    return head, tail_m.end() if tail_m else len(text)


def _removal(text: str, start: int, end: int, cue: int,
             own_words: frozenset[str]) -> tuple[int, int] | None:
    """What to cut to take out the list at ``text[start:end]`` (announced from ``cue``):
    its sentence when that holds nothing else, its parenthesis, or the phrase that
    ends its sentence ("… as positive or negative."); ``None`` when none reads well."""
    head, tail = _sentence(text, start, end)
    if text[cue] == "(":  # the pattern of a parenthesis holds its closing one
        return (cue - 1 if cue > 0 and text[cue - 1] == " " else cue), text.index(")", end) + 1
    rest = _words(text[head:cue] + " " + text[end:tail])
    if len(_words(text[:head] + text[tail:])) >= 2 and all(
            w in _CUE_WORDS or w in own_words for w in rest):
        return head, tail
    if text[end:tail].strip() not in ("", ".", "!", "?", ";"):
        return None
    m = _PHRASE_HEAD.search(text, head, start)
    if m is None:
        return None
    before = _words(text[head:m.start()])
    return (m.start(), end) if len(before) >= 2 and before[-1] not in _NEEDS_OBJECT else None


def _joiner(listed: str) -> str:
    if "/" in listed and " " not in listed.strip():
        return "/"
    return " or " if re.search(r"\bor\b", listed) else ", "


def find_lists(instruction: str, truth: Collection[str],
               own_words: frozenset[str] = frozenset(), *,
               closed: bool = False) -> list[AnswerList]:
    """Every list of answers in ``instruction``, in order, none overlapping.

    ``truth``: the normalized answers the output is known to take. A bare list ("as X or
    Y", "(X/Y)") counts when its items are known answers (one of ``truth``, yes/no/true/
    false, choice letters), all of them or all but one of three or more; a list
    announced by its words ("one of", "either", "choose from", "options:", "answer
    with") also when one item is, or when its sentence speaks of answers, labels or
    options; a parenthesis of short items ("(happy/sad)") also when the output takes a
    few labels (``closed``). ``own_words``: the output field's name, in words ("The
    sentiment is either positive or negative." is a sentence that exists for its list).
    """
    found: list[AnswerList] = []
    taken: list[tuple[int, int]] = []
    low = instruction.lower()
    for gates, pat, kind in _PATTERNS:
        if not all(any(g in low for g in group) for group in gates):
            continue
        pos = 0
        while (m := pat.search(instruction, pos)) is not None:
            s, e = m.start("list"), m.end("list")
            ok = _accept(instruction, m, truth, kind, closed) and not any(
                s < b and a < e for a, b in taken)
            if not ok:
                nxt = re.search(r"\s\S", instruction[m.start() + 1:])
                if nxt is None:
                    break
                pos = m.start() + 1 + nxt.end() - 1
                continue
            items, spans = _items(instruction, m)
            found.append(AnswerList(s, e, items, spans, kind == "bare",
                                    _removal(instruction, s, e, m.start(), own_words),
                                    _joiner(m.group("list"))))
            taken.append((m.start(), e))
            pos = e
    return sorted(found, key=lambda x: x.start)


def _accept(text: str, m: re.Match[str], truth: Collection[str], kind: str,
            closed: bool) -> bool:
    s, e = m.start("list"), m.end("list")
    if _NOT_ANSWERS.match(text, e):
        return False
    items, _ = _items(text, m)
    if len(items) < 2 or any(len(x) > 40 for x in items):
        return False
    known, _ = _anchors(items, truth)
    if known == len(items):
        return True
    if len(items) >= 3 and known == len(items) - 1 and all(
            " " not in x.strip() for x in items):
        return True  # "positive, negative or neutral" of a two-way label
    if kind == "announced":
        return True
    if kind == "verb":
        return known > 0
    said = _STRONG.search(text, max(_sentence(text, s, e)[0], m.start() - 40),
                          m.start()) is not None
    if kind == "cued":
        return known > 0 or said
    return text[m.start()] == "(" and (said or closed) and all(
        len(x.split()) <= 2 for x in items)


def known_answers(field: Field, facts: Facts | None, options: tuple[str, ...] | None = None
                  ) -> tuple[frozenset[str], bool] | None:
    """What the output is known to hold, normalized, and whether that is every answer;
    ``None`` when nothing is known (no labels, no sampled values, a list-valued output).
    ``options``: ``answer_options(field, facts)`` when the caller has it already."""
    if field.type.startswith(("list", "sequence", "struct")):
        return None
    if options is None:
        options = answer_options(field, facts)
    if options:
        return frozenset(_norm(x) for x in options), True
    if field.labels:
        return frozenset(_norm(x) for x in field.labels), True
    if is_label_like(field, facts):  # a label column of more than MAX_SUFFIX_LABELS values
        vals = {_norm(v) for v in (facts or {}).get(field.name, ()) if v}
        return frozenset(vals), False
    return None


def _key(item: str) -> str:
    """An item as the answer it names: "0 for the first" names ``0``."""
    x = _norm(item)
    mapped = _MAPPED.match(x)
    return mapped.group(1) if mapped else x


def _agrees(items: Sequence[str], truth: frozenset[str], complete: bool) -> bool:
    normed = {_key(x) for x in items}
    return normed == truth if complete else truth <= normed


def state_answers(instruction: str, field: Field, facts: Facts | None
                  ) -> tuple[str, tuple[str, ...]] | str:
    """``(instruction, labels)`` with the output's answers stated once and truly, or the
    drop reason when a wrong list cannot be mended (see the module docstring).

    ``labels`` lists every answer when the instruction now states them all, else ``()``.
    """
    options = answer_options(field, facts)
    known = known_answers(field, facts, options)
    if known is None:
        return instruction, ()
    truth, complete = known
    own = frozenset(name_words(field.name))
    lists = find_lists(instruction, truth, own, closed=bool(options))
    if not options:
        cuts = []
        for lst in lists:
            if _agrees(lst.items, truth, complete):
                continue
            if lst.removal is None:
                return TaskRule.WRONG_ANSWERS
            cuts.append(lst.removal)
        return _edit(instruction, [(a, b, "") for a, b in cuts]), ()
    cuts = [lst.removal for lst in lists if lst.removal is not None]
    fixed = [lst for lst in lists if lst.removal is None  # a list inside a cut goes with it
             and not any(a <= lst.start and lst.end <= b for a, b in cuts)]
    if len(fixed) > 1:
        return TaskRule.WRONG_ANSWERS  # two lists that cannot be taken out: not one list
    edits = [(a, b, "") for a, b in cuts]
    if fixed:
        lst = fixed[0]
        if not _agrees(lst.items, truth, True) and (
                any(_MAPPED.match(_norm(x)) for x in lst.items)
                or (lst.bare and not _anchors(lst.items, truth)[1])):
            return TaskRule.WRONG_ANSWERS  # "is it true or false?" of a three-way label
        edits += _respelled(lst, options, truth)
        return _edit(instruction, edits), options
    return _edit(instruction, edits) + label_suffix(options), options


def _respelled(lst: AnswerList, options: tuple[str, ...],
               truth: frozenset[str]) -> list[tuple[int, int, str]]:
    """Edits that respell ``lst``'s items as the labels spell them (``True`` -> ``true``)
    when it names every answer, else that replace it by every answer."""
    if _agrees(lst.items, truth, True):
        by_norm = {_norm(x): x for x in options}
        return [(a, b, by_norm.get(_norm(item), item))
                for (a, b), item in zip(lst.spans, lst.items, strict=True)
                # "0 for the first": said of the answer, not spelled as one
                if not _MAPPED.match(_norm(item))]
    if lst.joiner == " or ":
        listed = ", ".join(options[:-1]) + " or " + options[-1]
    else:
        listed = lst.joiner.join(options)
    return [(lst.spans[0][0], lst.spans[-1][1], listed)]


def _edit(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each ``(start, end, replacement)`` made (overlapping cuts merged), tidied
    where something was cut: spaces, and a sentence a cut phrase ended closed again."""
    if not edits:
        return text
    out, pos = [], 0
    for a, b, new in sorted(edits):
        out.append(text[pos:max(a, pos)])
        if a >= pos:
            out.append(new)
        pos = max(pos, b)
    out.append(text[pos:])
    joined = "".join(out)
    if not any(new for _, _, new in edits) or any(not new for _, _, new in edits):
        joined = re.sub(r"\s+([.,;:!?])", r"\1", joined)
        joined = re.sub(r"([.!?;])[.,;:]+", r"\1", joined)
        joined = " ".join(joined.split()).strip(" ,;:")
        if joined and joined[-1] not in ".!?":
            joined += "."
    return joined


def stated_answers(instruction: str) -> tuple[str, ...] | None:
    """The answers a kept task's suffix states, or ``None`` when it states none."""
    m = re.search(r" Answers must be one of: (.*)\.$", instruction)
    return tuple(m.group(1).split(", ")) if m else None
