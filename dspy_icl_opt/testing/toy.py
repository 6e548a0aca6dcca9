"""Toy tasks with a planted rule, for testing optimizers against `simulated_task_lm`.

Each example's ``question`` is a made-up word and its ``answer`` follows a hidden rule
(count the vowels, reverse the word, or say whether it has an even or odd number of letters).
The simulated model built by `ToyTask.lm` answers correctly only when the rule's phrase is in
the instruction or a demo, so an optimizer "wins" exactly when it puts the rule in the prompt.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.testing import planted_rule_task
    >>> task = planted_rule_task("vowels", train_size=4, val_size=4, seed=0)
    >>> lm = task.lm()
    >>> program = task.program()
    >>> with dspy.context(lm=lm):
    ...     blind = task.score(program)
    ...     program.signature = program.signature.with_instructions(f"Answer: {task.rule}.")
    ...     told = task.score(program)
    >>> blind, told
    (0.0, 1.0)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_icl_opt.testing.rules import any_of, rule_in_demos, rule_in_instruction
from dspy_icl_opt.testing.simulated import DEFAULT_TASK_MODEL, PromptView, Solver, simulated_task_lm

QUESTION_FIELD = "question"
ANSWER_FIELD = "answer"
VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxz"
MIN_WORD_LENGTH = 3
MAX_WORD_LENGTH = 9
"""Made-up words are 3..9 letters: long enough that the rules give varied answers."""
DEFAULT_TRAIN_SIZE = 20
DEFAULT_VAL_SIZE = 20
DEFAULT_PARITY_SIZE = 40
BASE_INSTRUCTION = "Answer the question."
"""The toy program's starting instruction: it does not carry any rule."""


@dataclass(frozen=True)
class PlantedRule:
    """A hidden rule: the phrase that states it and the function that applies it to a word.

    Args:
        phrase: What a prompt must say for the simulated model to apply the rule.
        apply: Word -> answer.
    """

    phrase: str
    apply: Callable[[str], str]


RULES: dict[str, PlantedRule] = {
    "vowels": PlantedRule("count the vowels", lambda word: str(sum(letter in VOWELS for letter in word))),
    "reverse": PlantedRule("reverse the word", lambda word: word[::-1]),
    "parity": PlantedRule("even or odd number of letters", lambda word: "even" if len(word) % 2 == 0 else "odd"),
}
"""The planted rules by kind."""


@dataclass(frozen=True)
class ToyTask:
    """A toy task: splits, the rule phrase, the solver and an exact-match metric.

    Args:
        name: The rule kind ("vowels", "reverse", "parity").
        rule: The phrase that unlocks the simulated model, e.g. "count the vowels".
        train: Training examples (inputs: ``question``).
        val: Validation examples.
        solve: ``(inputs) -> answer``: the correct answer for an example's inputs.
        metric: ``(example, prediction, trace=None) -> float``: 1.0 on an exact (case-insensitive) match.
    """

    name: str
    rule: str
    train: list[dspy.Example]
    val: list[dspy.Example]
    solve: Solver
    metric: Callable[..., float]

    def knows(self) -> Callable[[PromptView], bool]:
        """The default predicate: the rule phrase is in the instruction or in some demo."""
        return any_of(rule_in_instruction(self.rule), rule_in_demos(self.rule))

    def lm(
        self,
        *,
        knows: Callable[[PromptView], bool] | None = None,
        wrong: Solver | None = None,
        name: str = DEFAULT_TASK_MODEL,
    ) -> dspy.LM:
        """A simulated task LM for this task (``knows`` defaults to `ToyTask.knows`)."""
        return simulated_task_lm(solve=self.solve, knows=knows or self.knows(), wrong=wrong, name=name)

    def program(self, *, instructions: str = BASE_INSTRUCTION) -> dspy.Predict:
        """A fresh ``dspy.Predict`` for ``question -> answer`` with an instruction that lacks the rule."""
        return dspy.Predict(dspy.Signature(f"{QUESTION_FIELD} -> {ANSWER_FIELD}", instructions))

    def score(self, program: Any, *, examples: Sequence[dspy.Example] | None = None) -> float:
        """Mean metric of ``program`` over ``examples`` (default: ``val``) with the current LM; sequential."""
        examples = self.val if examples is None else list(examples)
        if not examples:
            return 0.0
        total = sum(self.metric(example, program(**example.inputs())) for example in examples)
        return total / len(examples)


def planted_rule_task(
    kind: str = "vowels", *, train_size: int = DEFAULT_TRAIN_SIZE, val_size: int = DEFAULT_VAL_SIZE, seed: int = 0
) -> ToyTask:
    """Make a toy task whose answers follow a planted rule (see `RULES`).

    Args:
        kind: "vowels" (count the vowels), "reverse" (reverse the word) or "parity" (even/odd letters).
        train_size: Training examples. Defaults to 20.
        val_size: Validation examples. Defaults to 20.
        seed: Seed of the made-up words; the same seed gives the same task.

    Returns:
        The `ToyTask`; all words are distinct, so train and val are disjoint.

    Example:
        >>> task = planted_rule_task("reverse", train_size=2, val_size=1, seed=3)
        >>> example = task.train[0]
        >>> example.answer == example.question[::-1]
        True
    """
    if kind not in RULES:
        raise ValueError(f"`kind` must be one of {sorted(RULES)}, but got {kind!r}. Pick one of those rules.")
    for label, size in (("train_size", train_size), ("val_size", val_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"`{label}` must be an int >= 0, but got {size!r}. Pass a number of examples.")
    rule = RULES[kind]
    words = make_words(train_size + val_size, seed=seed)
    examples = [
        dspy.Example(**{QUESTION_FIELD: word, ANSWER_FIELD: rule.apply(word)}).with_inputs(QUESTION_FIELD)
        for word in words
    ]

    def solve(inputs: Mapping[str, str]) -> str:
        return rule.apply(str(inputs[QUESTION_FIELD]).strip())

    return ToyTask(
        name=kind,
        rule=rule.phrase,
        train=examples[:train_size],
        val=examples[train_size:],
        solve=solve,
        metric=toy_metric,
    )


def parity_task(n: int = DEFAULT_PARITY_SIZE, *, seed: int = 0) -> ToyTask:
    """The "parity" planted-rule task with ``n`` examples, split in half (train gets the extra one).

    Args:
        n: Total examples. Defaults to 40.
        seed: Seed of the made-up words.

    Returns:
        The `ToyTask`; its rule phrase is "even or odd number of letters".

    Example:
        >>> task = parity_task(5, seed=1)
        >>> len(task.train), len(task.val), task.rule
        (3, 2, 'even or odd number of letters')
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be an int >= 0, but got {n!r}. Pass a number of examples.")
    half = n - n // 2
    return planted_rule_task("parity", train_size=half, val_size=n - half, seed=seed)


def make_words(count: int, *, seed: int = 0) -> list[str]:
    """Make ``count`` distinct pronounceable made-up words, deterministically.

    Args:
        count: How many words.
        seed: Seed of a private ``random.Random``.

    Returns:
        The words, in generation order.

    Example:
        >>> make_words(3, seed=0) == make_words(3, seed=0)
        True
    """
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        length = rng.randint(MIN_WORD_LENGTH, MAX_WORD_LENGTH)
        start = rng.randint(0, 1)
        word = "".join(rng.choice(VOWELS if (start + i) % 2 else CONSONANTS) for i in range(length))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def toy_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    """1.0 when ``prediction.answer`` equals ``example.answer`` (case- and space-insensitive), else 0.0.

    Args:
        example: The gold example.
        prediction: The program output; without an ``answer`` it scores 0.0.
        trace: Unused; part of DSPy's metric signature.

    Returns:
        1.0 or 0.0.

    Example:
        >>> toy_metric(dspy.Example(answer="Odd"), dspy.Prediction(answer=" odd "))
        1.0
    """
    try:
        predicted = prediction.get("answer") if isinstance(prediction, Mapping) else getattr(prediction, "answer", None)
    except Exception:  # a broken prediction scores zero
        predicted = None
    if predicted is None:
        return 0.0
    return 1.0 if str(predicted).strip().lower() == str(example.answer).strip().lower() else 0.0
