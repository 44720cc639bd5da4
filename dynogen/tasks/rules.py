"""Task rules: whether a generated task makes sense, each failure a counted reason.

Pure functions over a task's instruction, its fields and a few facts about
the dataset's rows. ``filter.TaskFilter`` runs them in a fixed order and
counts the first that fails. Rules from Dynosaur and beyond:

Text
    - ``instruction_too_short``: fewer than 3 words, or 3 words that do not
      start with a command ("Is the passage");
    - ``instruction_no_verb``: no verb from a word list (imperatives,
      auxiliaries, -ify/-ize/-ate verbs): a noun phrase is not an instruction;
    - ``instruction_copies_description``: "The dataset is constructed by …",
      or most of its 6-grams taken from the dataset's description, unless every
      sentence is a command ("Given a set of concepts, generate a sentence …":
      a card that states its task as one gives a good instruction);
    - ``instruction_copies_fewshot``: a few-shot example's instruction (nearly
      verbatim) on fields other than that example's;
    - ``instruction_copies_field_values``: the instruction is a sample value or
      the list of label names;
    - ``instruction_quotes_sample``: about one example row, not the task: it
      quotes a rare word pair ("green algae") or a code ("DB09079") from the
      sample rows the model was shown that the field names, the description
      and the labels do not hold;
    - ``generation_with_label_output``: "write a question/headline/summary …"
      while the output is a label; ``label_with_text_output`` the reverse.
Rows (when rows or card samples are known, see ``row_facts``)
    - ``constant_output``: one value over every sampled row;
    - ``imbalanced_output``: the top label holds ``IMBALANCE`` of the sampled rows;
    - ``output_equals_input``: the output repeats an input in most rows;
    - ``id_like_output``: an id, index, hash or URL column, by name or values;
    - ``id_like_inputs_only``: every input is such a column (nothing to read).
Fields (names, types and sampled values, see ``fields``)
    - ``inputs_without_content``: no input carries content: ids, indices, turn
      numbers, URLs, dates and constants only;
    - ``choice_key_without_choices``: the output is which choice is right (A/B/C/D,
      0/1) and a choices field of the unit is not among the inputs.

Word lists stand in for a tagger, which would need model data offline. What the
rules compare a task against (the unit's description, labels, sample rows and
fields) is prepared once per unit by ``unit_text.UnitText``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import cache
from importlib import resources

import orjson

from dynogen.dedup import normalize_text
from dynogen.tasks.fields import CONTENT
from dynogen.tasks.unit_text import Facts, UnitText, ngrams, word_list, wordset
from dynogen.units import ID_NAME, Field, Unit

__all__ = [
    "Facts",
    "ID_NAME",
    "IMBALANCE",
    "MAX_SUFFIX_LABELS",
    "TaskRule",
    "UnitText",
    "answer_options",
    "field_rule",
    "is_label_like",
    "row_rule",
    "text_rule",
]

MAX_SUFFIX_LABELS = 20
MAX_LABEL_CHARS = 40
IMBALANCE = 0.9
MIN_ROWS_IMBALANCE = 20
MIN_ROWS_CONSTANT = 5



class TaskRule:
    """Counted drop reasons of this module (labels used in report.json)."""

    TOO_SHORT = "instruction_too_short"
    NO_VERB = "instruction_no_verb"
    COPIES_DESCRIPTION = "instruction_copies_description"
    COPIES_FEWSHOT = "instruction_copies_fewshot"
    COPIES_VALUES = "instruction_copies_field_values"
    GENERATION_LABEL = "generation_with_label_output"
    LABEL_TEXT = "label_with_text_output"
    CONSTANT = "constant_output"
    IMBALANCED = "imbalanced_output"
    OUTPUT_IS_INPUT = "output_equals_input"
    ID_LIKE = "id_like_output"
    ID_INPUT = "id_like_inputs_only"
    QUOTES_SAMPLE = "instruction_quotes_sample"
    NO_CONTENT = "inputs_without_content"
    CHOICE_KEY = "choice_key_without_choices"
    WRONG_ANSWERS = "instruction_wrong_answer_list"


_IMPERATIVES = wordset("""
answer analyze analyse annotate assign categorize categorise check choose classify compare
complete compose compute convert correct count create decide describe detect determine
estimate evaluate explain extract fill find generate give guess identify indicate infer
judge label list locate map match name output paraphrase pick predict produce provide rank
rate read recognize recommend rewrite score select simplify solve spot state suggest
summarize summarise tag tell transcribe transform translate use verify write return mark
reply respond restate recover reconstruct retrieve tokenize segment parse split sort flag
estimate
""")
_OTHER_VERBS = wordset("""
is are was were be does do did can could should would will has have may might must given
contains contain says say asks ask means mean refers refer belongs belong expresses
express conveys convey entails entail follows follow implies imply supports support
""")
_VERB_SUFFIX = ("ify", "ize", "ise", "ate")
_DATASET_PROSE = re.compile(
    r"^(this|the|our)\s+(dataset|corpus|data\s*set|collection|benchmark)\b", re.IGNORECASE)
_GENERATE = re.compile(
    r"\b(write|generate|compose|create|produce|draft|come up with|formulate|ask)\b"
    r"[^.]{0,40}?\b(question|questions|headline|title|summary|summar|sentence|paragraph|story|"
    r"caption|description|article|review|text|essay|poem|dialogue|response)", re.IGNORECASE)
_CLASSIFY = re.compile(
    r"\b(classify|categori[sz]e|label (?:the|each|this)|which (?:category|class|label)|"
    r"true or false|yes or no|sentiment|whether)\b", re.IGNORECASE)
_TEXT_NAMES = frozenset(("text", "article", "passage", "document", "context", "story", "body",
                         "content", "paragraph", "review", "abstract", "essay"))
_ID_VALUE = re.compile(r"^[\w\-:/.#]+$")
# Sentences that frame a task: a command, a request to "you", or "Given X, <command>".
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
_FRAMES = frozenset(("given", "using", "based", "from", "for", "with", "after", "in", "if",
                     "when", "on", "by"))
# Words of a card's prose about its dataset, its sources and its use, never of a task.
_PROSE = wordset("""
dataset datasets corpus corpora benchmark collected crowdsourced crowdsourcing annotators we
our paper introduced consists comprises al http https www com org github download license
cite citation repository resource research academic commercial refer note see online
platform available website
""")
_CITED = re.compile(r"\(\w[^()]*\b(1[89]|20)\d\d\)")  # "(Smith et al., 2018)"


@cache
def _fewshot() -> tuple[tuple[str, frozenset[str], frozenset[tuple[str, ...]]], ...]:
    """The few-shot tasks: normalized instruction, fields and 4-grams (computed once)."""
    raw = resources.files("dynogen").joinpath("data/fewshot.json").read_bytes()
    out = []
    for ex in orjson.loads(raw)["examples"]:
        for t in ex["tasks"]:
            fields = frozenset([*t["input_fields"], t["output_field"]])
            out.append((normalize_text(t["instruction"]), fields,
                        frozenset(ngrams(word_list(t["instruction"]), 4))))
    return tuple(out)


def _copies_fewshot(norm: str, words: list[str], fields: frozenset[str]) -> bool:
    """A few-shot example's instruction, nearly verbatim (most of both texts' 4-grams
    shared), on fields other than that example's."""
    g4: set[tuple[str, ...]] | None = None
    for text, ex_fields, ex4 in _fewshot():
        if ex_fields == fields:
            continue
        if norm == text:
            return True
        # Sharing 60 % of the larger set needs at least that many 4-grams.
        if len(words) - 3 < 0.6 * len(ex4):
            continue
        if g4 is None:
            g4 = ngrams(words, 4)
        if g4 and len(g4 & ex4) >= 0.6 * max(len(g4), len(ex4)):
            return True
    return False

def text_rule(instruction: str, unit: Unit, inputs: Sequence[str], output: Field,
              facts: Facts | None, view: UnitText | None = None) -> str | None:
    """The first text rule ``instruction`` fails, or ``None``.

    ``view``: the unit's ``UnitText``, shared by all its tasks (built here if not given).
    """
    if view is None:
        view = UnitText(unit, facts)
    words = word_list(instruction)
    if _DATASET_PROSE.match(instruction.strip()):
        return TaskRule.COPIES_DESCRIPTION
    if view.copies_description(words) and not _framed_as_task(instruction, words):
        return TaskRule.COPIES_DESCRIPTION
    norm = normalize_text(instruction)
    if _copies_fewshot(norm, words, frozenset([*inputs, output.name])):
        return TaskRule.COPIES_FEWSHOT
    if _copies_values(norm, words, view):
        return TaskRule.COPIES_VALUES
    if view.quotes_sample(instruction, words):
        return TaskRule.QUOTES_SAMPLE
    if len(words) < 3 or (len(words) == 3 and words[0] not in _IMPERATIVES):
        return TaskRule.TOO_SHORT
    if not any(w in _IMPERATIVES or w in _OTHER_VERBS or (len(w) > 5 and w.endswith(_VERB_SUFFIX))
               for w in words):
        return TaskRule.NO_VERB
    label_like = is_label_like(output, facts)
    if label_like and _GENERATE.search(instruction):
        return TaskRule.GENERATION_LABEL
    if not label_like and _CLASSIFY.search(instruction) and _is_long_text(output, facts):
        return TaskRule.LABEL_TEXT
    return None


def _framed_as_task(instruction: str, words: list[str]) -> bool:
    """Whether every sentence is a command ("Generate …", "Given X, generate …"), with no
    word of prose about a dataset, its sources or its use ("corpus", "collected", "we",
    a link, a citation), and no card notes to its users ("Please refer to …")."""
    text = instruction.strip()
    if not text[:1].isalnum() or any(w in _PROSE for w in words) or _CITED.search(text):
        return False
    for sentence in _SENTENCE.split(text):
        ws = word_list(sentence)
        if not ws or ws[0] in _IMPERATIVES:
            continue
        if ws[0] not in _FRAMES:
            return False
        head, sep, rest = sentence.partition(",")
        if not sep:
            return False
        after = word_list(rest)
        if not after or after[0] not in _IMPERATIVES:
            return False
    return True


def _copies_values(norm: str, words: list[str], view: UnitText) -> bool:
    if norm in view.labels or norm in view.values:
        return True
    # Label names, and the short values of columns that hold them, listed as an "instruction".
    label_words = view.label_words
    if (2 <= len(words) <= 12 and label_words
            and sum(w in label_words for w in words) >= 0.8 * len(words)):
        return True
    value5 = view.value_5grams
    g5 = ngrams(words, 5) if value5 else None
    if g5:
        need = 0.6 * len(g5)
        for v5 in value5:
            if len(g5 & v5) >= need:
                return True
    return False


def is_label_like(field: Field, facts: Facts | None) -> bool:
    """Whether an output field is a label: ClassLabel, bool, or few short repeated values."""
    if field.labels or field.type == "bool":
        return True
    vals = [v for v in (facts or {}).get(field.name, ()) if v]
    if len(vals) < 10 or field.type.startswith(("list", "struct", "sequence")):
        return False
    distinct = set(vals)
    return (len(distinct) <= MAX_SUFFIX_LABELS and len(distinct) < len(vals) / 2
            and all(len(v) <= MAX_LABEL_CHARS for v in distinct))


def _is_long_text(field: Field, facts: Facts | None) -> bool:
    vals = [v for v in (facts or {}).get(field.name, ()) if v]
    if vals:
        return sum(len(v) for v in vals) / len(vals) > 60
    return field.name.lower() in _TEXT_NAMES


def answer_options(field: Field, facts: Facts | None) -> tuple[str, ...]:
    """Every answer a label output can take, when it is small and single-valued; else ``()``.

    A suffix "Answers must be one of …" is true only if it lists every answer:
    ClassLabel names (2 to ``MAX_SUFFIX_LABELS``) of a single-valued column,
    ``true``/``false`` for a bool, or the values seen in the sampled rows of a
    label-like text column (the builder drops rows outside them, counted).
    List-valued outputs (NER tags, multi-label) get none.
    """
    if field.type.startswith(("list", "sequence", "struct")):
        return ()
    if field.labels:
        names = tuple(dict.fromkeys(field.labels))
        return names if 2 <= len(names) <= MAX_SUFFIX_LABELS else ()
    if field.type == "bool":
        return ("false", "true")
    if is_label_like(field, facts):
        return tuple(sorted({v for v in (facts or {}).get(field.name, ()) if v}))
    return ()


def row_rule(inputs: Sequence[str], output: Field, facts: Facts | None) -> str | None:
    """The first row rule the task fails on the sampled rows, or ``None``."""
    if ID_NAME.search(output.name):
        return TaskRule.ID_LIKE
    if inputs and all(ID_NAME.search(n) for n in inputs):
        return TaskRule.ID_INPUT
    if not facts or output.name not in facts:
        return None
    outs = list(facts[output.name])
    vals = [v for v in outs if v]
    if len(vals) >= MIN_ROWS_CONSTANT and len(set(vals)) == 1:
        return TaskRule.CONSTANT
    if len(vals) >= MIN_ROWS_IMBALANCE and is_label_like(output, facts):
        top = Counter(vals).most_common(1)[0][1]
        if top >= IMBALANCE * len(vals):
            return TaskRule.IMBALANCED
    same = both = 0
    for i, o in enumerate(outs):
        ins = [facts[n][i] for n in inputs if n in facts and i < len(facts[n])]
        if o and any(ins):
            both += 1
            same += any(normalize_text(o) == normalize_text(x) for x in ins if x)
    if both >= 3 and same >= 0.5 * both:
        return TaskRule.OUTPUT_IS_INPUT
    if (not output.labels and len(vals) >= MIN_ROWS_CONSTANT and len(set(vals)) == len(vals)
            and all(_ID_VALUE.match(v) for v in vals)
            and sum(any(c.isdigit() for c in v) and len(v) >= 6 for v in vals) >= 0.8 * len(vals)):
        return TaskRule.ID_LIKE
    return None


def field_rule(inputs: Sequence[str], output: Field, view: UnitText) -> str | None:
    """The first field rule the task fails (see ``fields``), or ``None``.

    Values come from the sampled rows, else the card's sample rows; with too few
    of them a field is judged by its name and type alone.
    """
    for n in inputs:
        if view.kind(n) == CONTENT:
            break
    else:
        return TaskRule.NO_CONTENT
    for c in view.choices_for(output):
        if c not in inputs and c != output.name:
            return TaskRule.CHOICE_KEY
    return None
