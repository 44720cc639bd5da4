"""The task rules against the mistakes a real model (gpt-3.5) made, replayed over real schemas.

Answer lists the model wrote into its instruction are replaced by the true
list, once; instructions about one sample row, inputs that carry no content
and choice keys asked for without their choices are dropped, each under its
reason; a good instruction that states the task as the card does is kept.
Everything goes through ``TaskFilter`` as a run does, on units whose sample
rows stand for the sampled rows (as a Hub unit's do).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynogen.instances.render import row_facts
from dynogen.tasks.answers import find_lists, known_answers, state_answers, stated_answers
from dynogen.tasks.fields import CONTENT, choice_fields, field_kind, is_choice_key
from dynogen.tasks.filter import TaskFilter
from dynogen.tasks.rules import TaskRule
from dynogen.units import Field, Unit

SENT = Field("label", "class_label", ("negative", "positive"))
BOOL = Field("answer", "bool")
NLI = Field("label", "class_label", ("entailment", "neutral", "contradiction"))
TOPIC = Field("label", "class_label", ("World", "Sports", "Business", "Sci/Tech"))


def with_rows(unit: Unit, rows: list[dict[str, Any]]) -> Unit:
    labels = {f.name: f.labels for f in unit.fields if f.labels}
    return dataclasses.replace(unit, samples=tuple(rows),
                               extra={"facts": row_facts(rows, labels)})


def keep(unit: Unit, instruction: str, inputs: list[str], output: str) -> Any:
    kept, drops = TaskFilter(3).filter(unit, "description", [
        {"instruction": instruction, "input_fields": inputs, "output_field": output}], set())
    return kept[0] if kept else next(iter(drops))


# ------------------------------------------------------------------ answer lists

@pytest.mark.parametrize(("field", "instruction", "expected"), [
    (SENT, "Classify the sentiment of the review. Answers must be one of negative, positive. "
     "Answers must be one of: negative, positive.",
     "Classify the sentiment of the review. Answers must be one of: negative, positive."),
    (BOOL, "Decide whether the claim holds. The answer is either True or False. Answers must "
     "be one of True, False.", "Decide whether the claim holds. Answers must be one of: false, "
     "true."),
    (SENT, "Classify the review as positive or negative.",
     "Classify the review. Answers must be one of: negative, positive."),
    (SENT, "Label the review (pos/neg).", "Label the review. Answers must be one of: negative, "
     "positive."),
    (BOOL, "Answer the question with yes or no.", "Answer the question. Answers must be one "
     "of: false, true."),
    (SENT, "Predict the sentiment. Output 0 for negative and 1 for positive.",
     "Predict the sentiment. Answers must be one of: negative, positive."),
    (NLI, "Determine the relation. Options: entails, neutral, contradicts.",
     "Determine the relation. Answers must be one of: entailment, neutral, contradiction."),
    (TOPIC, "Classify the news article into one of the following categories: World, Sports, "
     "Business, Science.", "Classify the news article. Answers must be one of: World, Sports, "
     "Business, Sci/Tech."),
    # A list inside its sentence stays when it names every answer (respelled), with no suffix.
    (BOOL, "Decide whether the statement is True or False.",
     "Decide whether the statement is true or false."),
    (SENT, "Is the review positive or negative?", "Is the review positive or negative?"),
    # ... and is replaced by every answer when it names only some of them.
    (SENT, "Given the review, predict if it is positive, negative or neutral.",
     "Given the review, predict if it is negative or positive."),
    (NLI, "Given the premise and hypothesis, choose from: entailment, contradiction.",
     "Given the premise and hypothesis, choose from: entailment, neutral, contradiction."),
    # Not answer lists: left alone, the true list appended.
    (TOPIC, "Given either the title or the description, predict the topic.",
     "Given either the title or the description, predict the topic. Answers must be one of: "
     "World, Sports, Business, Sci/Tech."),
    (BOOL, "Answer the yes or no question about the passage.",
     "Answer the yes or no question about the passage. Answers must be one of: false, true."),
    (TOPIC, "Given the answer and label, predict the category.",  # nouns, not a command
     "Given the answer and label, predict the category. Answers must be one of: World, "
     "Sports, Business, Sci/Tech."),
    (BOOL, "From the answer and enumeration, infer the flag.",
     "From the answer and enumeration, infer the flag. Answers must be one of: false, true."),
])
def test_the_answer_list_is_stated_once_and_true(field: Field, instruction: str,
                                                 expected: str) -> None:
    text, labels = state_answers(instruction, field, None)  # type: ignore[misc]
    assert text == expected
    assert labels == (("false", "true") if field.type == "bool" else field.labels)


def test_a_wrong_list_that_cannot_be_taken_out_drops_the_task() -> None:
    # "true or false" for a three-way label, inside the sentence that asks the question.
    assert state_answers("Decide whether the statement is true or false given the premise.",
                         NLI, None) == TaskRule.WRONG_ANSWERS


def test_when_not_every_answer_is_known_a_wrong_list_goes_and_none_is_stated() -> None:
    intents = Field("intent", "class_label", tuple(f"intent_{i}" for i in range(30)))
    assert state_answers("Identify the intent. Choose from: balance, transfer, card_lost.",
                         intents, None) == ("Identify the intent.", ())
    free = Field("answer", "string")  # nothing known of a text output: left as written
    assert state_answers("Answer yes or no.", free, None) == ("Answer yes or no.", ())


LIST_SENTENCES = ["Answers must be one of {l}.", "The answer is either {o}.", "Options: {l}.",
                  "Choose from: {l}.", "({s})", "Answer with {o}.", "Possible labels: {l}."]


@settings(max_examples=400, deadline=None)
@example(labels=["mixed", "negative"], written=[("({s})", ["joy", "neg"]),
                                                ("Answer with {o}.", ["1", "positive"])])
@given(labels=st.lists(st.sampled_from(["negative", "positive", "neutral", "mixed", "joy",
                                        "anger", "sports", "politics"]), min_size=2,
                       max_size=4, unique=True),
       written=st.lists(st.tuples(st.sampled_from(LIST_SENTENCES),
                                  st.lists(st.sampled_from(["negative", "positive", "Neutral",
                                                            "joy", "pos", "neg", "yes", "no",
                                                            "sports", "0", "1"]),
                                           min_size=2, max_size=4, unique=True)),
                        max_size=3))
def test_any_written_lists_leave_one_true_list(labels: list[str],
                                              written: list[tuple[str, list[str]]]) -> None:
    field = Field("label", "class_label", tuple(labels))
    parts = ["Classify the text."]
    for template, items in written:
        parts.append(template.format(l=", ".join(items), o=" or ".join(items),
                                     s="/".join(items)))
    out = state_answers(" ".join(parts), field, None)
    if isinstance(out, str):
        assert out == TaskRule.WRONG_ANSWERS
        return
    text, stated = out
    assert stated == tuple(labels)
    known = known_answers(field, None)
    assert known is not None
    lists = find_lists(text, known[0], closed=True)
    assert len(lists) <= 1  # one list, the suffix or a list the model wrote and we mended
    if stated_answers(text) is not None:
        assert stated_answers(text) == tuple(labels)
        assert text.count("Answers must be one of") == 1 and len(lists) == 1
    else:
        assert len(lists) == 1 and {x.casefold() for x in lists[0].items} == set(labels)


def test_the_task_lists_the_answers_instances_are_checked_against() -> None:
    u = with_rows(Unit("reviews", "default", "Film reviews.",
                       (Field("text", "string"), Field("label", "class_label", ("neg", "pos")))),
                  [{"text": f"review number {i} of a film", "label": i % 2} for i in range(4)])
    t = keep(u, "Classify the review. The answer is either Positive or Negative.", ["text"],
             "label")
    assert t.instruction == "Classify the review. Answers must be one of: neg, pos."
    assert t.labels == ("neg", "pos")


# ------------------------------------------------------------------ fields

def test_field_kinds_read_names_types_and_values() -> None:
    many = [str(i) for i in range(5)]
    cases = [
        (Field("dialogue_id", "string"), [], "id"),
        (Field("turn", "int32"), many, "index"),
        (Field("speech_turn", "int32"), [], "index"),
        (Field("start1", "int32"), [], "index"),
        (Field("publish_date", "string"), ["2021-03-04", "2021-05-19", "2020-01-02"], "date"),
        (Field("created", "timestamp[s]"), [], "date"),
        (Field("year", "int32"), ["1998", "2004", "2011"], "date"),
        (Field("link", "string"), [], "id"),
        (Field("source_page", "string"), ["https://a.org/1", "http://b.org/x", "www.c.org"],
         "url"),
        (Field("drug", "string"), ["DB00945", "DB00682", "DB01076"], "id"),
        (Field("lang", "string"), ["en"] * 25, "constant"),
        # Content: text, labels, bools, measures that vary, a few repeated values.
        (Field("text", "string"), ["a cat", "a dog", "a bird"], CONTENT),
        (Field("lang", "string"), ["en"] * 5, CONTENT),
        (Field("label", "class_label", ("a", "b")), ["a", "a", "a"], CONTENT),
        (Field("annotator_age", "int32"), ["34", "52", "23"], CONTENT),
        (Field("stars", "int32"), [], CONTENT),
        (Field("modified_triple_sets", "struct{mtriple_set: list[list[string]]}"), [], CONTENT),
    ]
    for field, values, kind in cases:
        assert field_kind(field, values) == kind, field


def test_choice_fields_and_keys() -> None:
    names = ["premise", "choice1", "choice2", "question", "label", "candidate_id", "opa", "opb",
             "endings", "answer0", "sol1", "distractor2", "answerKey"]
    u = Unit("d", "c", "", tuple(Field(n, "string") for n in names))
    assert choice_fields(u) == ("choice1", "choice2", "opa", "opb", "endings", "answer0", "sol1",
                                "distractor2")
    assert is_choice_key(Field("label", "class_label", ("choice1", "choice2")), [], names)
    assert is_choice_key(Field("answer", "class_label", ("A", "B", "C", "D")), [], names)
    assert is_choice_key(Field("answerKey", "string"), [], names)
    assert is_choice_key(Field("label", "int32"), [], names)
    assert is_choice_key(Field("answer", "string"), ["B", "A", "D"], names)
    assert not is_choice_key(Field("answer", "string"), ["Mercury", "food", "100"], names)
    assert not is_choice_key(Field("correct_answer", "string"), [], names)  # text, by its name


DIALOGUE = Unit("dialogues", "default", "Everyday dialogues labelled with dialogue acts.", (
    Field("dialogue_id", "string"), Field("turn", "int32"), Field("speaker", "string"),
    Field("utterance", "string"), Field("act", "class_label", ("inform", "question"))))
COPA = Unit("copa", "default", "Causal reasoning.", (
    Field("premise", "string"), Field("choice1", "string"), Field("choice2", "string"),
    Field("question", "string"), Field("label", "int32")))


def test_inputs_must_carry_content() -> None:
    assert keep(DIALOGUE, "Given the dialogue ID and the speech turn, predict the label.",
                ["dialogue_id", "turn"], "act") == TaskRule.NO_CONTENT
    assert keep(DIALOGUE, "Predict the act from the dialogue id.", ["dialogue_id"],
                "act") == TaskRule.ID_INPUT
    assert keep(DIALOGUE, "Given the speaker and the turn, write the utterance.",
                ["speaker", "turn"], "utterance") != TaskRule.NO_CONTENT  # speaker varies
    t = keep(DIALOGUE, "Classify the act of the utterance.", ["utterance", "turn"], "act")
    assert t.output_field == "act"


def test_a_choice_key_needs_its_choices() -> None:
    assert keep(COPA, "Pick the more plausible alternative.", ["premise", "question"],
                "label") == TaskRule.CHOICE_KEY
    assert keep(COPA, "Pick the more plausible alternative.", ["premise", "choice1"],
                "label") == TaskRule.CHOICE_KEY
    t = keep(COPA, "Pick the more plausible alternative.",
             ["premise", "question", "choice1", "choice2"], "label")
    assert t.output_field == "label"
    # Outputs that are the answer itself need no choices.
    assert keep(COPA, "Write the more plausible alternative.", ["premise", "question"],
                "choice1").output_field == "choice1"


# ------------------------------------------------------------------ text

DRUGS = with_rows(Unit("drug_pairs", "default", "Pairs of medicines and how they interact.", (
    Field("drug1_id", "string"), Field("drug2_name", "string"), Field("interaction", "string"))),
    [{"drug1_id": "DB09079", "drug2_name": "Warfarin",
      "interaction": "Nintedanib may raise the risk of bleeding with warfarin."},
     {"drug1_id": "DB00316", "drug2_name": "Caffeine",
      "interaction": "Caffeine may speed up the absorption of acetaminophen."}])


def test_an_instruction_about_one_sample_row_is_dropped() -> None:
    assert keep(DRUGS, "Fill in the name of the drug that interacts with DB09079.",
                ["interaction"], "drug2_name") == TaskRule.QUOTES_SAMPLE
    assert keep(DRUGS, "Explain why the risk of bleeding rises.", ["drug2_name"],
                "interaction") == TaskRule.QUOTES_SAMPLE
    # The same words are the task's own when the metadata has them.
    desc = dataclasses.replace(DRUGS, description="How drugs interact, e.g. the risk of "
                               "bleeding.")
    assert keep(desc, "Explain why the risk of bleeding rises.", ["drug2_name"],
                "interaction").output_field == "interaction"
    assert keep(DRUGS, "Name the drug that interacts as described.", ["interaction"],
                "drug2_name").output_field == "drug2_name"
    # What most shown rows hold is the dataset's subject, not one row's.
    tweets = Unit("health_tweets", "default", "Tweets about health.", (
        Field("text", "string"), Field("stance", "class_label", ("against", "for"))))
    rows = [{"text": f"my covid vaccine appointment number {i} went fine", "stance": 1}
            for i in range(3)]
    instruction = "Decide the stance of the tweet on the covid vaccine."
    assert keep(with_rows(tweets, rows), instruction, ["text"], "stance").labels
    rows[1]["text"] = rows[2]["text"] = "the gym reopens on monday"
    assert keep(with_rows(tweets, rows), instruction, ["text"],
                "stance") == TaskRule.QUOTES_SAMPLE
    # Without sample rows shown to the model there is nothing it could have quoted.
    bare = dataclasses.replace(DRUGS, samples=())
    assert keep(bare, "Fill in the name of the drug that interacts with DB09079.",
                ["interaction"], "drug2_name").output_field == "drug2_name"


def test_a_command_that_matches_the_description_is_kept_a_copy_of_its_prose_is_not() -> None:
    card = ("CommonGen is a constrained text generation task, associated with a benchmark "
            "dataset. Given a set of common concepts; the task is to generate a coherent "
            "sentence describing an everyday scenario using these concepts. You can evaluate "
            "your model using the online evaluation tool available on the website. Use the "
            "concept sets provided by https://example.org/commongen which is the same data in a "
            "better format.")
    u = Unit("common_gen", "default", card, (Field("concepts", "list[string]"),
                                              Field("target", "string")))
    good = ("Given a set of common concepts, generate a coherent sentence describing an "
            "everyday scenario using these concepts.")
    assert keep(u, good, ["concepts"], "target").instruction == good
    for copy in ("CommonGen is a constrained text generation task, associated with a "
                 "benchmark dataset.",
                 "Given a set of common concepts; the task is to generate a coherent sentence "
                 "describing an everyday scenario using these concepts.",
                 "Generate a coherent sentence describing an everyday scenario using these "
                 "concepts, associated with a benchmark dataset.",
                 "You can evaluate your model using the online evaluation tool available on "
                 "the website.",
                 "Use the concept sets provided by https://example.org/commongen which is the "
                 "same data in a better format."):
        assert keep(u, copy, ["concepts"], "target") == TaskRule.COPIES_DESCRIPTION, copy
