"""Predicates over a `PromptView` for ``simulated_task_lm(knows=...)``.

A predicate (a `Rule`) says whether a prompt carries what the simulated model needs to
solve the task: the rule in the instruction, in the demos, anywhere, or combinations.
Rules print what they check, so a failing test names the missing condition.

Example:
    >>> from dspy_icl_opt.testing.simulated import Demo, PromptView
    >>> knows = any_of(rule_in_instruction("count the vowels"), rule_in_demos("vowel"))
    >>> knows
    any_of(rule_in_instruction('count the vowels'), rule_in_demos('vowel'))
    >>> view = PromptView("Please COUNT THE VOWELS.", (), {}, "", ("answer",))
    >>> knows(view)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dspy_icl_opt.testing.simulated import ANSWER_FIELD, Demo, PromptView

MIN_DEMOS = 1
"""By default one matching demo is enough to carry a rule."""


@dataclass(frozen=True)
class Rule:
    """A named predicate over a `PromptView`; call it with the view.

    Args:
        description: How the rule prints (its constructor call).
        check: The predicate.
    """

    description: str
    check: Callable[[PromptView], bool]

    def __call__(self, view: PromptView) -> bool:
        return bool(self.check(view))

    def __repr__(self) -> str:
        return self.description


def rule_in_instruction(rule_text: str) -> Rule:
    """True when the instruction contains ``rule_text`` (case-insensitive).

    Args:
        rule_text: The phrase to look for, e.g. "count the vowels".

    Returns:
        The rule.

    Example:
        >>> rule_in_instruction("reverse")(PromptView("Reverse it.", (), {}, "", ("answer",)))
        True
    """
    needle = _check_text(rule_text, "rule_text")
    return Rule(f"rule_in_instruction({rule_text!r})", lambda view: needle in view.instruction.lower())


def rule_in_demos(predicate_or_text: str | Callable[[Demo], bool], *, at_least: int = MIN_DEMOS) -> Rule:
    """True when at least ``at_least`` demos match.

    A string matches a demo whose field values contain it (case-insensitive); a callable
    ``(Demo) -> bool`` decides itself.

    Args:
        predicate_or_text: Text to find in a demo, or a predicate over a `Demo`.
        at_least: How many demos must match. Defaults to 1.

    Returns:
        The rule.

    Example:
        >>> demo = Demo(inputs={"question": "abc"}, outputs={"answer": "cba"})
        >>> rule_in_demos(lambda d: d.outputs.get("answer") == "cba")(PromptView("", (demo,), {}, "", ("answer",)))
        True
    """
    if isinstance(at_least, bool) or not isinstance(at_least, int) or at_least < 1:
        raise ValueError(f"`at_least` must be an int >= 1, but got {at_least!r}. Pass how many demos must match.")
    if isinstance(predicate_or_text, str):
        needle = _check_text(predicate_or_text, "predicate_or_text")
        matches: Callable[[Demo], bool] = lambda demo: needle in demo.text.lower()  # noqa: E731
    elif callable(predicate_or_text):
        matches = predicate_or_text
    else:
        raise TypeError(
            f"`predicate_or_text` must be a string or a callable (Demo) -> bool, but got "
            f"{type(predicate_or_text).__name__}. Pass e.g. 'reverse' or lambda demo: ..."
        )
    suffix = f", at_least={at_least}" if at_least != MIN_DEMOS else ""
    return Rule(
        f"rule_in_demos({_describe(predicate_or_text)}{suffix})",
        lambda view: sum(1 for demo in view.demos if matches(demo)) >= at_least,
    )


def rule_anywhere(text: str) -> Rule:
    """True when ``text`` is in the instruction, any demo, or the current user message (case-insensitive).

    Args:
        text: The phrase to look for.

    Returns:
        The rule.

    Example:
        >>> rule_anywhere("hint")(PromptView("", (), {}, "A hint: reverse.", ("answer",)))
        True
    """
    needle = _check_text(text, "text")

    def check(view: PromptView) -> bool:
        places = [view.instruction, view.user_text, *(demo.text for demo in view.demos)]
        return any(needle in place.lower() for place in places)

    return Rule(f"rule_anywhere({text!r})", check)


def correct_demos(
    solve: Callable[[Mapping[str, str]], Any], *, at_least: int = MIN_DEMOS, field: str = ANSWER_FIELD
) -> Rule:
    """True when at least ``at_least`` demos show the correct answer (``solve(demo.inputs)``) in ``field``.

    Use it to simulate a model that learns the rule from worked examples.

    Args:
        solve: The task's solver, ``(inputs) -> answer``.
        at_least: How many correct demos are needed. Defaults to 1.
        field: The demo output field to compare. Defaults to "answer".

    Returns:
        The rule.

    Example:
        >>> demo = Demo(inputs={"question": "ab"}, outputs={"answer": "ba"})
        >>> correct_demos(lambda inputs: inputs["question"][::-1])(PromptView("", (demo,), {}, "", ("answer",)))
        True
    """

    def is_correct(demo: Demo) -> bool:
        if field not in demo.outputs:
            return False
        try:
            expected = solve(demo.inputs)
        except (KeyError, ValueError, TypeError):
            return False
        return str(demo.outputs[field]).strip().lower() == str(expected).strip().lower()

    rule = rule_in_demos(is_correct, at_least=at_least)
    return Rule(f"correct_demos({_describe(solve)}, at_least={at_least})", rule.check)


def all_of(*predicates: Callable[[PromptView], bool]) -> Rule:
    """True when every predicate is true.

    Args:
        *predicates: Rules or plain callables over a `PromptView`.

    Returns:
        The combined rule.

    Example:
        >>> all_of(always(), never())(PromptView("", (), {}, "", ("answer",)))
        False
    """
    _check_predicates(predicates, "all_of")
    return Rule(f"all_of({', '.join(map(_describe, predicates))})", lambda view: all(p(view) for p in predicates))


def any_of(*predicates: Callable[[PromptView], bool]) -> Rule:
    """True when at least one predicate is true.

    Args:
        *predicates: Rules or plain callables over a `PromptView`.

    Returns:
        The combined rule.

    Example:
        >>> any_of(always(), never())(PromptView("", (), {}, "", ("answer",)))
        True
    """
    _check_predicates(predicates, "any_of")
    return Rule(f"any_of({', '.join(map(_describe, predicates))})", lambda view: any(p(view) for p in predicates))


def not_(predicate: Callable[[PromptView], bool]) -> Rule:
    """True when ``predicate`` is false.

    Args:
        predicate: A rule or a callable over a `PromptView`.

    Returns:
        The negated rule.

    Example:
        >>> not_(never())(PromptView("", (), {}, "", ("answer",)))
        True
    """
    _check_predicates((predicate,), "not_")
    return Rule(f"not_({_describe(predicate)})", lambda view: not predicate(view))


def always() -> Rule:
    """A rule that is always true (a model that always knows the answer).

    Returns:
        The rule.

    Example:
        >>> always()(PromptView("", (), {}, "", ("answer",)))
        True
    """
    return Rule("always()", lambda view: True)


def never() -> Rule:
    """A rule that is never true (a model that never knows the answer).

    Returns:
        The rule.

    Example:
        >>> never()(PromptView("", (), {}, "", ("answer",)))
        False
    """
    return Rule("never()", lambda view: False)


def _check_text(text: Any, label: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"`{label}` must be a non-empty string, but got {text!r}. Pass the phrase to look for.")
    return text.lower()


def _check_predicates(predicates: tuple[Any, ...], where: str) -> None:
    if not predicates or not all(callable(p) for p in predicates):
        raise TypeError(
            f"`{where}` needs one or more callables (PromptView) -> bool, but got {predicates!r}. "
            "Pass rules such as rule_in_instruction('...')."
        )


def _describe(value: Any) -> str:
    if isinstance(value, (Rule, str)):
        return repr(value)
    return getattr(value, "__name__", repr(value))
