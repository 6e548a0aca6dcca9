"""PromptAgent's meta-prompts (error analysis, rewrite with the ancestor chain) and how errors are shown.

Both ask a small prompt model for plain text: a short numbered list of reasons, then one rewritten
instruction. The rewrite sees the instructions the current one descends from (oldest first), so it
can keep what the earlier edits added instead of starting over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_icl_opt.search.meta import clean, numbered_items
from dspy_icl_opt.search.scorer import Outcome

#: Field values longer than this are cut in meta-prompts (a long reasoning adds little for the analyst).
MAX_FIELD_CHARS = 600
#: A rewrite shorter than this many words is no instruction (a small model sometimes answers an example instead).
MIN_INSTRUCTION_WORDS = 3


class AnalyzeErrors(dspy.Signature):
    """Find out why an instruction made a language model give wrong answers.

    A language model followed the instruction below and answered every listed example wrongly.
    Study the examples and write `n_reasons` short reasons why the instruction led to these
    mistakes: what it fails to say, says wrongly, or leaves unclear. Each reason must point at
    something in the examples."""

    task: str = dspy.InputField(desc="the step's input and output fields")
    data_summary: str = dspy.InputField(desc="what the training data looks like, and the answers its labels use")
    instruction: str = dspy.InputField(desc="the instruction the model followed")
    wrong_answers: str = dspy.InputField(desc="examples answered wrongly: input, the model's output, correct output")
    n_reasons: int = dspy.InputField(desc="how many reasons to write")
    reasons: str = dspy.OutputField(desc="a numbered list ('1. ...'), one sentence per reason")


class RewriteInstruction(dspy.Signature):
    """Write a better instruction for a language model, using what went wrong.

    The current instruction was made by editing the earlier versions listed. With it, the model
    answered the listed examples wrongly, for the reasons given. Write one new instruction for the
    same task (same inputs and outputs) that keeps what helps in the earlier versions and fixes
    those reasons. Write only the instruction itself."""

    task: str = dspy.InputField(desc="the step's input and output fields")
    data_summary: str = dspy.InputField(desc="what the training data looks like, and the answers its labels use")
    earlier_versions: str = dspy.InputField(desc="the instructions the current one came from, oldest first")
    instruction: str = dspy.InputField(desc="the current instruction")
    wrong_answers: str = dspy.InputField(desc="examples answered wrongly: input, the model's output, correct output")
    reasons: str = dspy.InputField(desc="why the current instruction failed on them")
    new_instruction: str = dspy.OutputField(desc="the new instruction, complete and on its own")


@dataclass(frozen=True)
class WrongAnswer:
    """One training example a node's program got wrong."""

    index: int  # position in the trainset
    example: dspy.Example
    outcome: Outcome


def is_wrong(outcome: Outcome) -> bool:
    """A written answer that scored below 1.0: a wrong one, or one the adapter could not read (the error a
    small task model makes most). A program that crashed tells the analyst nothing."""
    return (not outcome.failed or outcome.unparsable) and outcome.score < 1.0


def _fields(values: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, value in values.items():
        text = " ".join(str(value).split()) if "\n" not in str(value) else str(value).strip()
        if len(text) > MAX_FIELD_CHARS:
            text = text[:MAX_FIELD_CHARS] + " ..."
        lines.append(f"  {name}: {text}")
    return lines or ["  (nothing)"]


def _step_view(wrong: WrongAnswer, predictor: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``predictor`` saw and wrote on this example (its last call in the trace), else the program's."""
    call = next((entry for entry in reversed(wrong.outcome.trace) if entry.get("predictor") == predictor), None)
    if call is not None:
        return dict(call.get("inputs") or {}), dict(call.get("outputs") or {})
    return dict(wrong.example.inputs().items()), dict(wrong.outcome.prediction)


def render_wrong_answers(wrong: Sequence[WrongAnswer], predictor: str) -> str:
    """The wrong answers as numbered blocks; an unreadable answer is shown as the raw text the model wrote."""
    blocks = []
    for number, item in enumerate(wrong, 1):
        inputs, outputs = _step_view(item, predictor)
        lines = [f"Example {number}", "Input:", *_fields(inputs)]
        if item.outcome.unparsable:
            lines += ["Model output (not in the required format, so it could not be read):",
                      *_fields({"text": item.outcome.raw or ""})]
        else:
            lines += ["Model output:", *_fields(outputs)]
        lines += ["Correct output:", *_fields(dict(item.example.labels().items()))]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_versions(instructions: Sequence[str]) -> str:
    """The ancestor chain, oldest first, as a numbered list; "(none)" at the root."""
    if not instructions:
        return "(none: the current instruction is the first version)"
    return "\n".join(f"{i}. {' '.join(text.split())}" for i, text in enumerate(instructions, 1))


def parse_reasons(value: Any, limit: int) -> list[str]:
    """Up to ``limit`` reasons from the analyst's answer (a list, or one sentence)."""
    return numbered_items(value, limit)


def parse_instruction(value: Any) -> str:
    """The rewritten instruction: the answer's text without quotes, emphasis or a leading label."""
    text = clean(value)
    for label in ("new instruction:", "instruction:"):
        if text.lower().startswith(label):
            text = clean(text[len(label):])
    return text


def usable_instruction(value: Any, max_chars: int) -> str | None:
    """The rewritten instruction when it can be one (at least ``MIN_INSTRUCTION_WORDS`` words, at most
    ``max_chars`` characters), else ``None``."""
    text = parse_instruction(value)
    return text if len(text.split()) >= MIN_INSTRUCTION_WORDS and len(text) <= max_chars else None
