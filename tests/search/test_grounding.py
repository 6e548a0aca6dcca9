"""Grounding: the answer space the labels use, as the proposers and the format candidate see it."""

from __future__ import annotations

import dspy

from dspy_icl_opt.search.grounding import (
    answer_space,
    copied_from,
    format_instruction,
    output_spaces,
    task_wording,
    wording_instructions,
)


def _mc(question: str, options: list[str], answer: str) -> dspy.Example:
    listed = "\n".join(f"({chr(65 + i)}) {text}" for i, text in enumerate(options))
    return dspy.Example(question=question, options=listed, answer=answer).with_inputs("question", "options")


def _option_text_examples() -> list[dspy.Example]:
    # distinct labels (the option texts differ per example), as in disambiguation_qa or date_understanding
    return [_mc(f"Who does the pronoun refer to in sentence {i}?",
                [f"guest {i} was late", f"host {i} was late", "Ambiguous"],
                f"guest {i} was late" if i % 6 else "Ambiguous")
            for i in range(12)]


def test_labels_copied_from_options_are_named_as_option_texts_not_a_word_count():
    examples = _option_text_examples()
    space = answer_space(examples, "answer", ["question", "options"])
    assert space is not None
    assert "one of the options in `options`" in space
    assert "words" not in space
    assert "guest" not in space, "no example's option text: the small model copies it as the answer"
    # without the input names the old description is the only one possible
    assert "about 4 words" in answer_space(examples, "answer")


def test_copied_from_needs_nearly_every_label_in_the_field():
    examples = _option_text_examples()
    assert copied_from(examples, "answer", ["question", "options"]) == "options"
    assert copied_from(examples, "answer", ["question"]) is None
    # two labels of twelve not in the options: below the 90% share
    broken = [dspy.Example(**{**ex.toDict(), "answer": "someone else entirely"}).with_inputs("question", "options")
              if i < 2 else ex for i, ex in enumerate(examples)]
    assert copied_from(broken, "answer", ["question", "options"]) is None


def test_few_repeated_labels_are_still_listed_even_when_they_appear_in_the_options():
    examples = [_mc(f"Is ordering {i} right?", ["yes", "no"], "yes" if i % 2 else "no") for i in range(10)]
    assert answer_space(examples, "answer", ["question", "options"]) == "exactly one of: no, yes"


def test_integers_stay_integers():
    examples = [dspy.Example(question=f"{i}+{i}?", answer=str(2 * i)).with_inputs("question") for i in range(6)]
    assert answer_space(examples, "answer", ["question"]).startswith("an integer")


def test_format_candidate_of_a_predictor_uses_its_input_fields():
    predictor = dspy.Predict("question, options -> answer")
    text = format_instruction("Answer the question.", output_spaces(predictor, _option_text_examples()))
    assert text is not None
    assert text.startswith("Answer the question.")
    assert "copied exactly" in text


def _asked(questions: list[str]) -> list[dspy.Example]:
    return [dspy.Example(question=q, answer="x").with_inputs("question") for q in questions]


def test_task_wording_keeps_the_sentences_most_inputs_repeat_in_their_order():
    predictor = dspy.Predict("question -> answer")
    examples = _asked([f"In the following sentence, find the antecedent of the pronoun.\n\nSentence: Pat met Lee {i}. "
                       "Who is meant?" for i in range(10)])
    # "Sentence:" is a label (too short), the sentence about Pat and Lee differs per example
    assert task_wording(predictor, examples) == ("In the following sentence, find the antecedent of the pronoun. "
                                                 "Who is meant?")
    with_format, alone = wording_instructions(predictor, examples)
    assert with_format.startswith("In the following sentence, find the antecedent of the pronoun. Who is meant?\n\n")
    assert "Answer format: the `answer` must be" in with_format
    assert alone == "In the following sentence, find the antecedent of the pronoun. Who is meant?"
    # labels that say nothing of a format: the wording alone
    unlabelled = [dspy.Example(question=ex.question).with_inputs("question") for ex in examples]
    assert wording_instructions(predictor, unlabelled) == [alone]


def test_task_wording_falls_back_to_the_commonest_question_and_needs_repeats():
    predictor = dspy.Predict("question -> answer")
    asked = ["What is the date today in MM/DD/YYYY?"] * 4 + ["What is the date tomorrow in MM/DD/YYYY?"] * 4
    examples = _asked([f"Today is day {i} of the year. {q}" for i, q in enumerate(asked + ["Which day is it?"] * 2)])
    # no sentence in half the inputs: the most repeated one, the first of equal counts
    assert task_wording(predictor, examples) == "What is the date today in MM/DD/YYYY?"
    # every sentence differs: nothing to take
    assert task_wording(predictor, _asked([f"Is {i} even or odd?" for i in range(10)])) is None
    # a repeat in 2 of 10 inputs is below the minimum of 3
    assert task_wording(predictor, _asked(["Is it even or odd?"] * 2 + [f"Is {i} prime?" for i in range(8)])) is None
    assert wording_instructions(predictor, _asked([f"Is {i} prime?" for i in range(8)])) == []


def test_task_wording_reads_only_the_predictors_input_fields():
    examples = [dspy.Example(question=f"Item {i}?", context="Use the table below to answer.", answer="x")
                .with_inputs("question", "context") for i in range(6)]
    assert task_wording(dspy.Predict("question, context -> answer"), examples) == "Use the table below to answer."
    assert task_wording(dspy.Predict("question -> answer"), examples) is None
