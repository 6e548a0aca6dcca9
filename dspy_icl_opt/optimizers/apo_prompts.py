"""APO's meta-prompts (textual gradient, gradient step, paraphrase) and how errors are shown to them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_icl_opt.search.meta import numbered_items
from dspy_icl_opt.search.scorer import Outcome

#: Field values longer than this are cut in meta-prompts (a long reasoning says little more).
MAX_FIELD_CHARS = 800


class DiagnoseErrors(dspy.Signature):
    """Explain why an instruction made a language model fail.

    One step of a language-model program ran with the instruction below and got every listed
    example wrong. Give `n_reasons` distinct reasons why the instruction could have led to these
    mistakes: what it leaves out, gets wrong or leaves unclear. Ground each reason in the examples
    and keep it specific."""

    task: str = dspy.InputField(desc="the step's input and output fields")
    data_summary: str = dspy.InputField(desc="what the training data looks like, and the answers its labels use")
    instruction: str = dspy.InputField(desc="the instruction the step ran with")
    failures: str = dspy.InputField(desc="examples the step got wrong: its inputs, its output, the expected output")
    n_reasons: int = dspy.InputField(desc="how many reasons to give")
    reasons: str = dspy.OutputField(desc="a numbered list of reasons ('1. ...'), one or two sentences each")


class FixInstruction(dspy.Signature):
    """Improve an instruction so that it no longer causes a known problem.

    One step of a language-model program ran with the instruction below and got the listed
    examples wrong, for the stated reason. Write `n_instructions` improved instructions that fix
    that problem and would get such examples right, for the same task with the same inputs and
    outputs. Each must be a complete instruction that stands on its own."""

    task: str = dspy.InputField(desc="the step's input and output fields")
    data_summary: str = dspy.InputField(desc="what the training data looks like, and the answers its labels use")
    instruction: str = dspy.InputField(desc="the instruction the step ran with")
    failures: str = dspy.InputField(desc="examples the step got wrong: its inputs, its output, the expected output")
    problem: str = dspy.InputField(desc="why the instruction failed on them")
    n_instructions: int = dspy.InputField(desc="how many improved instructions to write")
    new_instructions: str = dspy.OutputField(
        desc="the improved instruction; when asked for several, a numbered list ('1. ...'), each complete")


class Paraphrase(dspy.Signature):
    """Reword an instruction: keep its meaning and every requirement it states, change the wording."""

    instruction: str = dspy.InputField(desc="the instruction to reword")
    paraphrase: str = dspy.OutputField(desc="the reworded instruction")


@dataclass(frozen=True)
class Failure:
    """One minibatch example a program state got wrong."""

    index: int  # position in the trainset
    example: dspy.Example
    outcome: Outcome

    @property
    def gold(self) -> dict[str, Any]:
        return dict(self.example.labels().items())


def is_failure(outcome: Outcome) -> bool:
    """An imperfect answer (score below 1.0) that the model did write: a wrong answer, or one in a format
    the adapter could not read (the error a small model makes most). Crashes tell nothing."""
    return (not outcome.failed or outcome.unparsable) and outcome.score < 1.0


def _norm(value: Any) -> str:
    return " ".join(str(value).split()).lower()


def last_call(trace: Sequence[Mapping[str, Any]], predictor: str) -> Mapping[str, Any] | None:
    """The last trace entry of ``predictor``, if it ran."""
    return next((entry for entry in reversed(trace) if entry.get("predictor") == predictor), None)


def culprit(failure: Failure) -> str | None:
    """The predictor whose output became the wrong part of the final answer, if the trace tells.

    The wrong fields are the labelled fields the prediction gets wrong (all prediction fields when
    none can be compared); the culprit is the last predictor call that output one of them with the
    final value. ``None`` when there is no trace.
    """
    prediction = failure.outcome.prediction
    gold = failure.gold
    wrong = [f for f in gold if f in prediction and _norm(prediction[f]) != _norm(gold[f])]
    fields = wrong or list(prediction)
    for entry in reversed(failure.outcome.trace):
        outputs = entry.get("outputs") or {}
        if any(f in outputs and _norm(outputs[f]) == _norm(prediction[f]) for f in fields):
            return entry.get("predictor")
    return None


def _lines(values: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in values.items():
        text = str(value).strip()
        if len(text) > MAX_FIELD_CHARS:
            text = text[:MAX_FIELD_CHARS] + " ..."
        out.append(f"  {name}: {text}")
    return out or ["  (nothing)"]


def render_failures(failures: Sequence[Failure], predictor: str) -> str:
    """The failures as ``predictor`` saw them: its inputs and outputs (reasoning included), then the
    program's final output when it differs, and the expected output."""
    blocks = []
    for number, failure in enumerate(failures, 1):
        call = last_call(failure.outcome.trace, predictor)
        inputs = dict(call["inputs"]) if call else dict(failure.example.inputs().items())
        outputs = dict(call["outputs"]) if call else dict(failure.outcome.prediction)
        if failure.outcome.unparsable:
            lines = [f"## Example {number}", "Inputs:", *_lines(inputs),
                     "Output of this step: unreadable. The model wrote:", *_lines({"text": failure.outcome.raw}),
                     f"but the expected format is each output field under its own header ({failure.outcome.error})",
                     "Expected output:", *_lines(failure.gold)]
            blocks.append("\n".join(lines))
            continue
        lines = [f"## Example {number}", "Inputs:", *_lines(inputs), "Output of this step:", *_lines(outputs)]
        final = failure.outcome.prediction
        if {k: _norm(v) for k, v in final.items()} != {k: _norm(v) for k, v in outputs.items()}:
            lines += ["Final output of the program:", *_lines(final)]
        lines += ["Expected output:", *_lines(failure.gold)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def clean_text(value: Any) -> str:
    """An answer's text without surrounding whitespace or quotes."""
    text = str(value or "").strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def edited_instructions(value: Any, limit: int) -> list[str]:
    """Up to ``limit`` instructions from an edit answer: the items of a numbered list when several are
    asked for, else the whole text (a single instruction may itself contain numbered steps)."""
    if limit > 1:
        return numbered_items(value, limit)
    text = clean_text(value)
    return [text] if text else []
