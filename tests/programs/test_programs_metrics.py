"""Answer normalization and the exact/choice metrics."""

import dspy
import pytest

from dspy_icl_opt.programs.metrics import (
    choice_match,
    exact_match,
    format_options,
    label_index,
    normalize_answer,
    option_label,
    parse_options,
)

FALLACY = dspy.Example(question="Valid?", choices=["valid", "invalid"], answer="invalid")
COLORS = dspy.Example(question="Color?", choices=["red", "dark red", "blue"], answer="dark red")
COUNTS = dspy.Example(
    question="How many?", choices=["0", "zero", "1", "one", "2", "two", "3", "three", "13", "thirteen"], answer="3"
)
HYPERBATON = dspy.Example(question="Which order?", choices=["a", "b"], answer="b")


def _pred(answer):
    return dspy.Prediction(answer=answer)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(A) The Three  apples!", "3 apples"),
        ("Twenty", "20"),
        ("eleven and TWELVE", "11 and 12"),
        (" An  Apple. ", "apple"),
        ("a", "a"),
        ("The", "the"),
        ("B. menzies studious", "menzies studious"),
        ("(B)", "b"),
        ("01/03/1987", "01031987"),
        ("They will discuss the chef's favorite dishes", "they will discuss chefs favorite dishes"),
        (None, ""),
        (7, "7"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_normalizes_both_sides():
    gold = dspy.Example(question="How many?", answer="3")
    assert exact_match(gold, _pred("Three.")) == 1.0
    assert exact_match(gold, _pred(" 3 ")) == 1.0
    assert exact_match(gold, _pred("4")) == 0.0
    assert exact_match(gold, _pred("3 or 4")) == 0.0


@pytest.mark.parametrize("prediction", [dspy.Prediction(reasoning="no answer"), None, object(), {"other": "x"}])
def test_metrics_score_zero_without_answer_field(prediction):
    assert exact_match(dspy.Example(answer="x"), prediction) == 0.0
    assert choice_match(FALLACY, prediction) == 0.0


def test_metrics_accept_mappings_and_ignore_trace():
    assert exact_match(dspy.Example(answer="x"), {"answer": "X"}, trace=[("step",)]) == 1.0


@pytest.mark.parametrize("answer", ["B", "(B)", "b", "(b)", "B.", "Answer: B", "The answer is (B)", "option B"])
def test_choice_match_accepts_gold_option_letter(answer):
    assert choice_match(FALLACY, _pred(answer)) == 1.0


@pytest.mark.parametrize("answer", ["A", "(A)", "Answer: A", "(Z)"])
def test_choice_match_refuses_other_or_unknown_letters(answer):
    assert choice_match(FALLACY, _pred(answer)) == 0.0


@pytest.mark.parametrize(
    ("example", "answer", "expected"),
    [
        (FALLACY, "invalid", 1.0),
        (FALLACY, "The argument is invalid.", 1.0),
        (FALLACY, "(B) invalid", 1.0),
        (FALLACY, "valid", 0.0),
        (FALLACY, "It is valid, not invalid", 0.0),  # names both choices
        (dspy.Example(choices=["valid", "invalid"], answer="valid"), "The argument is invalid", 0.0),
        (dspy.Example(choices=["valid", "invalid"], answer="valid"), "Deductively valid.", 1.0),
        (COLORS, "It is dark red.", 1.0),  # "red" appears only inside the gold
        (COLORS, "red", 0.0),
        (COLORS, "dark red or blue", 0.0),
        (COUNTS, "three", 1.0),
        (COUNTS, "There are 3 paperclips.", 1.0),
        (COUNTS, "(G)", 1.0),  # G is "3"
        (COUNTS, "(H)", 1.0),  # H is "three"
        (COUNTS, "(F)", 0.0),  # F is "two"
        (COUNTS, "3 of the 13", 0.0),
        (HYPERBATON, "b", 1.0),
        (HYPERBATON, "(B)", 1.0),
        (HYPERBATON, "a", 0.0),
        (HYPERBATON, "", 0.0),
        (FALLACY, "unsure", 0.0),
    ],
)
def test_choice_match_rules(example, answer, expected):
    assert choice_match(example, _pred(answer)) == expected


def test_choice_match_reads_choices_from_options_when_choices_missing():
    gold = dspy.Example(question="Valid?", options=format_options(["valid", "invalid"]), answer="invalid")
    assert choice_match(gold, _pred("(B)")) == 1.0
    assert choice_match(gold, _pred("A")) == 0.0


@pytest.mark.parametrize(("index", "label"), [(0, "A"), (25, "Z"), (26, "AA"), (27, "AB"), (33, "AH"), (52, "BA")])
def test_option_labels_round_trip(index, label):
    assert option_label(index) == label
    assert label_index(label) == index
    assert label_index(label.lower()) == index


def test_option_label_validation():
    with pytest.raises(ValueError, match="`index` must be >= 0"):
        option_label(-1)
    with pytest.raises(ValueError, match="`label` must be one or two letters"):
        label_index("A1")


def test_format_and_parse_options_round_trip():
    choices = [f"choice {i}" for i in range(30)]
    options = format_options(choices)
    assert options.splitlines()[26] == "(AA) choice 26"
    assert parse_options(options) == choices
