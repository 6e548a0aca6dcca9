"""The instruction proposer of :class:`~dspy_icl_opt.optimizers.joint.InstructionDemoSearch`.

One meta-prompt per candidate: the task's fields, the data summary (answer space included), three
solved training problems and a one-line style hint, and a request for ONE instruction in plain
text. A 0.5B prompt model can answer that; MIPROv2's proposer (program code, dataset descriptor
chains, JSON fields) it cannot. The hints play the role of MIPROv2's "tips": they make the samples
differ from each other without asking the model for a list.
"""

from __future__ import annotations

from collections.abc import Sequence

import dspy

from dspy_icl_opt.search.meta import clean

#: Style hints, one per proposal in turn (MIPROv2's tips, reworded as what to write).
STYLE_HINTS = (
    "Say plainly what to do, in one or two sentences.",
    "Explain how to work out the answer step by step, then how to write it.",
    "Name what to look for in the input before answering.",
    "Be short and precise: a single imperative sentence.",
    "Describe the task as an expert would brief a new colleague.",
    "Warn about the most common mistake on this task and how to avoid it.",
)
#: A first paragraph at least this long is the instruction; what follows a blank line is usually commentary.
MIN_PARAGRAPH_CHARS = 20
#: Characters of one solved problem's field value shown in the meta-prompt (long inputs are cut).
MAX_SHOWN_CHARS = 400


class ProposeTaskInstruction(dspy.Signature):
    """Write an instruction that tells a language model how to solve the task below.

    Read the task's fields, the summary of the data and the solved problems. Write ONE new
    instruction for this task, following the style hint. Write only the instruction, in plain text."""

    task: str = dspy.InputField(desc="the task's input and output fields")
    data_summary: str = dspy.InputField(desc="what the training data looks like, and the answers its labels use")
    solved_problems: str = dspy.InputField(desc="a few problems with their correct outputs")
    style_hint: str = dspy.InputField(desc="how this instruction should be written")
    instruction: str = dspy.OutputField(desc="the instruction, plain text")


def render_problems(predictor: dspy.Predict, examples: Sequence[dspy.Example]) -> str:
    """Solved problems as ``Problem i`` blocks with the predictor's fields that the examples carry."""
    fields = [*predictor.signature.input_fields, *predictor.signature.output_fields]
    blocks = []
    for i, example in enumerate(examples, 1):
        data = example.toDict()
        lines = [f"{name}: {_short(data[name])}" for name in fields if name in data]
        if lines:
            blocks.append(f"Problem {i}:\n" + "\n".join(lines))
    return "\n\n".join(blocks) or "(none)"


def read_instruction(text: object, max_chars: int) -> str:
    """The instruction in an answer: unquoted, a leading "Instruction:" label dropped, commentary after the first
    paragraph dropped (when that paragraph is long enough to be one); "" if too long or empty."""
    value = clean(text)
    head, sep, rest = value.partition(":")
    if sep and head.strip().lower() in ("instruction", "new instruction", "the instruction"):
        value = clean(rest)
    first = value.split("\n\n", 1)[0].strip()
    if len(first) >= MIN_PARAGRAPH_CHARS:
        value = clean(first)
    return value if 0 < len(value) <= max_chars else ""


def _short(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + " ..."
