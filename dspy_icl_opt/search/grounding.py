"""Grounding: what the data says about a task, for proposers and for one deterministic candidate.

MIPROv2 gives its proposer a summary of the data and the program. A small prompt model needs it more:
left alone it writes instructions from its prior. :func:`data_summary` says, per output field, which
answers the labels use (``one of: (A), (B), (C)``, ``an integer``, ``an option's text copied from
`options` ``, ``a short phrase``), and
:func:`format_instruction` turns that into one candidate every instruction strategy scores in its
first step: the instruction as given plus a sentence naming the answer space. It is deterministic
(no LM call) and fixes the error a small task model makes most (the right idea in the wrong format).

:func:`task_wording` finds the words the inputs themselves repeat: a benchmark's fixed instruction inside
every question ("Which sentence has the correct adjective order:"), or failing that the question the
inputs ask most often ("What is the date today in MM/DD/YYYY?"). Those are what the winning instructions of
GEPA's and OPRO's searches on a small task model were, copied by chance from a training example;
:func:`wording_instructions` makes them deterministic candidates, with the answer-format sentence and alone.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import dspy

#: At most this many distinct label values are listed as the answer space.
MAX_LISTED_VALUES = 12
#: Labels are listed only when they repeat: at most this share of the examples may be distinct values.
LISTED_SHARE = 0.5
#: Example values quoted for free-form answers.
QUOTED_VALUES = 2
#: Labels count as copied from an input field when at least this share of them appear in its text.
COPIED_SHARE = 0.9
#: A sentence is the task's own wording when at least this share of the training inputs repeat it verbatim.
WORDING_SHARE = 0.5
#: Failing that, the sentence the inputs repeat most is taken when at least this share of them (and
#: :data:`WORDING_MIN_REPEATS` inputs) hold it: the task's commonest question.
QUESTION_SHARE = 0.1
WORDING_MIN_REPEATS = 3
#: Sentences of fewer words (labels such as "Sentence:") or more (a passage) are not wording.
WORDING_WORDS = (3, 60)
_INTEGER = re.compile(r"^[+-]?\d+$")
_SENTENCE_BREAK = re.compile(r"(?<=[.?!:])\s+|\n+")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")


def _values(examples: Sequence[dspy.Example], name: str) -> list[str]:
    return [str(ex.labels()[name]).strip() for ex in examples if name in ex.labels()]


def copied_from(examples: Sequence[dspy.Example], name: str, inputs: Sequence[str]) -> str | None:
    """The input field whose text holds the label of ``name`` in nearly every example (an options list), if any.

    Multiple-choice data often labels an answer with the option's text rather than its letter; the answer
    space is then "one of the options given", which neither a list of values nor a word count says.
    """
    labelled = [ex for ex in examples if name in ex.labels()]
    if not labelled:
        return None
    for field in inputs:
        found = sum(1 for ex in labelled
                    if str(ex.labels()[name]).strip().lower() in str(ex.get(field, "") or "").lower())
        if found >= COPIED_SHARE * len(labelled):
            return field
    return None


def answer_space(examples: Sequence[dspy.Example], name: str, inputs: Sequence[str] = ()) -> str | None:
    """The answers field ``name`` takes in ``examples``, in words; ``None`` when no example labels it.

    ``inputs`` names the predictor's input fields; when the labels are copied from one of them (the text of
    an option), the answer space says so instead of giving a word count.
    """
    values = _values(examples, name)
    if not values:
        return None
    distinct = sorted(set(values))
    if all(_INTEGER.match(v) for v in values):
        return "an integer (digits only, e.g. " + ", ".join(distinct[:QUOTED_VALUES]) + ")"
    if all(_NUMBER.match(v) for v in values):
        return "a number (digits only, e.g. " + ", ".join(distinct[:QUOTED_VALUES]) + ")"
    if len(distinct) <= MAX_LISTED_VALUES and len(distinct) <= max(2, LISTED_SHARE * len(values)):
        return "exactly one of: " + ", ".join(distinct)
    source = copied_from(examples, name, inputs)
    if source is not None:
        # no quoted values: an example's option text is not an answer to another question (with them the format
        # candidate scored 0.21 against the start's 0.34 on disambiguation_qa split 0, 100 test examples)
        return f"the text of one of the options in `{source}`, copied exactly as written there"
    quoted = "; ".join(repr(v) for v in distinct[:QUOTED_VALUES])
    words = sorted(len(v.split()) for v in values)[len(values) // 2]
    size = "one word" if words <= 1 else f"about {words} words"
    return f"a short answer ({size}, e.g. {quoted})"


def output_spaces(predictor: dspy.Predict, examples: Sequence[dspy.Example]) -> dict[str, str]:
    """Answer spaces of the predictor's output fields that the examples label."""
    spaces = {}
    for name in predictor.signature.output_fields:
        space = answer_space(examples, name, list(predictor.signature.input_fields))
        if space is not None:
            spaces[name] = space
    return spaces


def data_summary(predictor: dspy.Predict, examples: Sequence[dspy.Example]) -> str:
    """A few lines about the data: how many examples, input sizes, and each labelled output's answers."""
    lines = [f"{len(examples)} labelled training examples."]
    for name in predictor.signature.input_fields:
        lengths = sorted(len(str(ex.get(name, "")).split()) for ex in examples)
        if lengths:
            lines.append(f"Input `{name}`: typically {lengths[len(lengths) // 2]} words.")
    for name, space in output_spaces(predictor, examples).items():
        lines.append(f"Output `{name}`: {space}.")
    return "\n".join(lines)


def format_sentence(spaces: dict[str, str]) -> str:
    """One sentence that names the answer space of each labelled output."""
    parts = [f"the `{name}` must be {space}" for name, space in spaces.items()]
    return "Answer format: " + "; ".join(parts) + ". Write only that answer in the field, with no explanation " \
                                                  "or restated question."


def format_instruction(instruction: str, spaces: dict[str, str]) -> str | None:
    """``instruction`` followed by the answer-format sentence; ``None`` when the labels say nothing."""
    if not spaces:
        return None
    sentence = format_sentence(spaces)
    return f"{instruction.rstrip()}\n\n{sentence}" if instruction.strip() else sentence


def _sentences(text: str) -> list[str]:
    """``text``'s sentences that could be an instruction: ending in . ? ! or :, of a sentence's length."""
    low, high = WORDING_WORDS
    pieces = (piece.strip() for piece in _SENTENCE_BREAK.split(text))
    return [p for p in pieces if p and p[-1] in ".?!:" and low <= len(p.split()) <= high]


def task_wording(predictor: dspy.Predict, examples: Sequence[dspy.Example]) -> str | None:
    """The sentences the predictor's inputs repeat across ``examples``, in their order; ``None`` when none do.

    Sentences held by at least :data:`WORDING_SHARE` of the examples (a benchmark's instruction inside every
    question) are all kept; failing those, the one held by the most examples, if at least
    :data:`QUESTION_SHARE` of them and :data:`WORDING_MIN_REPEATS` do (ties: the one seen first).
    """
    counts: dict[str, int] = {}
    for example in examples:
        seen: dict[str, None] = {}
        for name in predictor.signature.input_fields:
            for sentence in _sentences(str(example.get(name, "") or "")):
                seen.setdefault(sentence)
        for sentence in seen:  # each example counts a sentence once; dict order is first appearance
            counts[sentence] = counts.get(sentence, 0) + 1
    if not counts:
        return None
    shared = [s for s, n in counts.items() if n >= WORDING_SHARE * len(examples)]
    if shared:
        return " ".join(shared)
    sentence, n = max(counts.items(), key=lambda item: item[1])  # max keeps the first of equal counts
    return sentence if n >= max(WORDING_MIN_REPEATS, QUESTION_SHARE * len(examples)) else None


def wording_instructions(predictor: dspy.Predict, examples: Sequence[dspy.Example]) -> list[str]:
    """The task's own wording (:func:`task_wording`) followed by the answer-format sentence, and alone; empty when
    the inputs repeat nothing (only the wording when the labels say nothing of the format).

    Both, because on a 0.5B task model neither is better everywhere (100 test examples each, against the start):
    on disambiguation_qa the benchmark's instruction with the format sentence scored 0.42 and 0.45 against 0.37
    and 0.31 (splits 0 and 2), alone 0.34 on both; on date_understanding split 0 the commonest question alone
    scored 0.35 against 0.28, with the format sentence 0.26."""
    wording = task_wording(predictor, examples)
    if wording is None:
        return []
    formatted = format_instruction(wording, output_spaces(predictor, examples))
    return [formatted, wording] if formatted is not None else [wording]


def shown_example(example: dspy.Example, outputs: Collection[str]) -> dspy.Example:
    """``example`` as a meta-prompt shows it: its inputs and the labels that are the program's ``outputs``.

    A label the program never writes (the bundled tasks' ``choices``, the option texts the metric reads) would
    read to the prompt model as an output to produce; it is left out. When no label is one of ``outputs``
    (labels named otherwise than the program's fields), every label is kept, so the answer stays shown."""
    data = example.toDict()
    inputs = set(example.inputs().keys())
    labels = [key for key in data if key not in inputs]
    kept = [key for key in labels if key in outputs] or labels
    return dspy.Example({key: data[key] for key in data if key in inputs or key in kept}).with_inputs(*inputs)
