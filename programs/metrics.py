"""Answer normalization and DSPy metrics for the bundled tasks.

Every metric takes DSPy's ``(example, prediction, trace=None)`` signature, reads
``prediction.answer`` and returns a float in ``[0.0, 1.0]``. A prediction without an
``answer`` field (or ``None``) scores ``0.0``; metrics never raise on model output.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.programs.metrics import choice_match
    >>> gold = dspy.Example(question="2+1?", choices=["two", "three"], answer="three")
    >>> choice_match(gold, dspy.Prediction(answer="(B)"))
    1.0
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspy_icl_opt.programs.tasks import Task

Metric = Callable[..., float]

CORRECT = 1.0
"""Score of a correct prediction."""
INCORRECT = 0.0
"""Score of a wrong or missing prediction."""

NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        (
            "zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
        ).split()
    )
}
"""Number words that BIG-bench answers spell out, mapped to digits ("three" -> "3")."""

ARTICLES = frozenset({"a", "an", "the"})
"""Words dropped by normalization (SQuAD-style), unless nothing else is left."""

ALPHABET_SIZE = len(string.ascii_uppercase)
"""Option labels run A..Z, then AA, AB, ... for tasks with more than 26 choices."""

_LEADING_OPTION = re.compile(r"^\s*(?:\(([A-Za-z]{1,2})\)|([A-Z]{1,2})[.):])\s+(?=\S)")
_BARE_OPTION = re.compile(
    r"^\s*(?:(?:the\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)?\(?([A-Za-z]{1,2})\)?\s*[.:]?\s*$",
    re.IGNORECASE,
)
_OPTION_LINE = re.compile(r"^\(([A-Z]{1,2})\)\s?(.*)$")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def option_label(index: int) -> str:
    """Return the letter label of the option at ``index`` (0 -> "A", 25 -> "Z", 26 -> "AA").

    Args:
        index: Zero-based position of the option.

    Returns:
        The label without parentheses.

    Example:
        >>> option_label(2)
        'C'
    """
    if index < 0:
        raise ValueError(f"`index` must be >= 0, but got {index}. Pass a zero-based option position.")
    if index < ALPHABET_SIZE:
        return string.ascii_uppercase[index]
    return string.ascii_uppercase[index // ALPHABET_SIZE - 1] + string.ascii_uppercase[index % ALPHABET_SIZE]


def label_index(label: str) -> int:
    """Return the zero-based position of an option label ("A" -> 0, "AA" -> 26); the inverse of `option_label`.

    Args:
        label: One or two letters, any case.

    Returns:
        The option position.

    Example:
        >>> label_index("c")
        2
    """
    letters = label.strip().upper()
    if not letters.isalpha() or not 1 <= len(letters) <= 2:
        raise ValueError(f"`label` must be one or two letters, but got {label!r}. Pass a label such as 'B'.")
    if len(letters) == 1:
        return string.ascii_uppercase.index(letters)
    first, second = (string.ascii_uppercase.index(letter) for letter in letters)
    return (first + 1) * ALPHABET_SIZE + second


def format_options(choices: Sequence[str]) -> str:
    """Format answer choices as lettered lines, the form the ``options`` input field carries.

    Args:
        choices: The answer choices in their original order.

    Returns:
        One "(A) text" line per choice, joined with newlines.

    Example:
        >>> print(format_options(["valid", "invalid"]))
        (A) valid
        (B) invalid
    """
    return "\n".join(f"({option_label(i)}) {choice}" for i, choice in enumerate(choices))


def parse_options(options: str) -> list[str]:
    """Parse an ``options`` string made by `format_options` back into the list of choices.

    Args:
        options: Lines of the form "(A) text".

    Returns:
        The choice texts in order; lines that are not options are ignored.

    Example:
        >>> parse_options("(A) yes\\n(B) no")
        ['yes', 'no']
    """
    choices = []
    for line in options.splitlines():
        match = _OPTION_LINE.match(line.strip())
        if match:
            choices.append(match.group(2).strip())
    return choices


def normalize_answer(text: Any) -> str:
    """Normalize an answer for comparison.

    Lowercases, strips a leading option label such as "(A)" or "B." when text follows it,
    removes punctuation and the articles a/an/the, maps number words zero..twenty to digits
    and collapses whitespace. If dropping articles would leave nothing (the answer *is* "a"),
    the articles are kept.

    Args:
        text: The answer; non-strings are converted with ``str`` and ``None`` becomes "".

    Returns:
        The normalized answer.

    Example:
        >>> normalize_answer("(A) The Three  apples!")
        '3 apples'
    """
    if text is None:
        return ""
    stripped = _LEADING_OPTION.sub("", str(text), count=1)
    words = stripped.lower().translate(_PUNCTUATION).split()
    words = [NUMBER_WORDS.get(word, word) for word in words]
    content = [word for word in words if word not in ARTICLES]
    return " ".join(content or words)


def prediction_answer(prediction: Any) -> str | None:
    """Read the ``answer`` field of a prediction, or ``None`` when there is none.

    Args:
        prediction: A ``dspy.Prediction``, a mapping, or any object with an ``answer`` attribute.

    Returns:
        The answer as a string, or ``None`` when the prediction has no answer.

    Example:
        >>> prediction_answer({"answer": 3})
        '3'
    """
    if prediction is None:
        return None
    if isinstance(prediction, Mapping):
        value = prediction.get("answer")
    else:
        try:
            value = getattr(prediction, "answer", None)
        except Exception:  # a broken prediction object scores zero, never raises
            value = None
    return None if value is None else str(value)


def exact_match(example: Any, prediction: Any, trace: Any = None) -> float:
    """Score 1.0 when the normalized prediction equals the normalized gold answer.

    Args:
        example: The gold ``dspy.Example`` (reads ``answer``).
        prediction: The program output (reads ``answer``).
        trace: Unused; part of DSPy's metric signature.

    Returns:
        1.0 or 0.0.

    Example:
        >>> import dspy
        >>> exact_match(dspy.Example(answer="7"), dspy.Prediction(answer="Seven."))
        1.0
    """
    predicted = prediction_answer(prediction)
    gold = prediction_answer(example)
    if predicted is None or gold is None:
        return INCORRECT
    return CORRECT if normalize_answer(predicted) == normalize_answer(gold) else INCORRECT


def choice_match(example: Any, prediction: Any, trace: Any = None) -> float:
    """Score a multiple-choice prediction.

    Correct when the normalized prediction equals the gold choice, or is the gold choice's
    option label ("B", "(B)", "Answer: B"), or contains the gold choice (as whole words) and
    no other choice outside the gold's own words. The choices come from ``example.choices``,
    or are parsed from ``example.options`` when there is no ``choices`` field.

    Args:
        example: The gold ``dspy.Example`` (reads ``answer`` and ``choices``/``options``).
        prediction: The program output (reads ``answer``).
        trace: Unused; part of DSPy's metric signature.

    Returns:
        1.0 or 0.0.

    Example:
        >>> import dspy
        >>> gold = dspy.Example(choices=["valid", "invalid"], answer="invalid")
        >>> choice_match(gold, dspy.Prediction(answer="The argument is invalid."))
        1.0
    """
    predicted = prediction_answer(prediction)
    gold = prediction_answer(example)
    if predicted is None or gold is None:
        return INCORRECT
    choices = _example_choices(example)
    gold_norm = normalize_answer(gold)
    predicted_norm = normalize_answer(predicted)
    if not predicted_norm:
        return INCORRECT
    if predicted_norm == gold_norm:
        return CORRECT
    label_choice = _choice_for_label(predicted, choices)
    if label_choice is not None:
        return CORRECT if normalize_answer(label_choice) == gold_norm else INCORRECT
    return CORRECT if _contains_only_gold(predicted_norm, gold_norm, choices) else INCORRECT


def metric_for(task: Task) -> Metric:
    """Return the metric suited to a task: `choice_match` for multiple choice, else `exact_match`.

    Args:
        task: A loaded `dspy_icl_opt.programs.tasks.Task` (or anything with a ``multiple_choice`` attribute).

    Returns:
        The metric function.

    Example:
        >>> from dspy_icl_opt.programs.tasks import load_task
        >>> metric_for(load_task("word_sorting")) is exact_match
        True
    """
    return choice_match if task.multiple_choice else exact_match


def _example_choices(example: Any) -> list[str]:
    """The choices of a gold example: its ``choices`` field, else parsed from ``options``."""
    getter = example.get if hasattr(example, "get") else lambda key, default=None: getattr(example, key, default)
    choices = getter("choices", None)
    if choices:
        return [str(choice) for choice in choices]
    options = getter("options", None)
    return parse_options(options) if isinstance(options, str) else []


def _choice_for_label(predicted: str, choices: Sequence[str]) -> str | None:
    """The choice a bare option label ("B", "(B)", "Option B") points at, else ``None``."""
    match = _BARE_OPTION.match(predicted)
    if not match or not choices:
        return None
    index = label_index(match.group(1))
    return choices[index] if index < len(choices) else None


def _contains_only_gold(predicted_norm: str, gold_norm: str, choices: Sequence[str]) -> bool:
    """True when the gold appears as whole words and no other choice appears outside it."""
    padded_gold = f" {gold_norm} "
    padded = f" {predicted_norm} "
    if not gold_norm or padded_gold not in padded:
        return False
    remainder = padded.replace(padded_gold, "  ")
    others = {normalize_answer(choice) for choice in choices} - {gold_norm, ""}
    return not any(f" {other} " in remainder for other in others)
