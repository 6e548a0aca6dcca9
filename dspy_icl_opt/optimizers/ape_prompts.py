"""APE's meta-prompts (instruction induction from demonstrations, and a variation that keeps the meaning),
how the demonstrations are shown to them, and how their answers are read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import dspy

from dspy_icl_opt.search.meta import clean, numbered_items

#: Field values longer than this are cut in the demonstrations (a long question says little more).
MAX_DEMO_FIELD_CHARS = 600
#: Answers longer than this are not instructions but essays (OPRO's paper drops them too).
MAX_INSTRUCTION_CHARS = 500
#: An instruction needs a verb and an object at least: shorter answers are dropped as unusable.
MIN_INSTRUCTION_WORDS = 2


class InduceInstruction(dspy.Signature):
    """Work out the instruction behind some worked examples.

    A teacher gave a student one instruction and several inputs. The student followed the
    instruction and wrote the output shown for each input. Read the input-output pairs and say
    what the teacher's instruction was: one or two sentences, written as a command to the
    student (for example "Find ..." or "Decide ..."). Write only the instruction."""

    task: str = dspy.InputField(desc="the input and output fields of the task")
    demonstrations: str = dspy.InputField(desc="input-output pairs the student wrote by following the instruction")
    instruction: str = dspy.OutputField(desc="the instruction was to ...: the teacher's instruction, as a command")


class VaryInstruction(dspy.Signature):
    """Write one variation of an instruction.

    Say the instruction below in other words so that it still asks for exactly the same thing:
    keep every requirement and any answer format it names. Write only the new instruction."""

    instruction: str = dspy.InputField(desc="the instruction to vary")
    variation: str = dspy.OutputField(desc="the same instruction in new words, one or two sentences")


def _value(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_DEMO_FIELD_CHARS else text[:MAX_DEMO_FIELD_CHARS] + " ..."


def render_demonstrations(examples: Sequence[dspy.Example]) -> str:
    """Numbered input-output pairs: each example's input fields, then its labelled output fields."""
    blocks = []
    for number, example in enumerate(examples, 1):
        inputs = [f"  {name}: {_value(value)}" for name, value in example.inputs().items()]
        outputs = [f"  {name}: {_value(value)}" for name, value in example.labels().items()]
        blocks.append("\n".join([f"Pair {number}", "Input:", *inputs, "Output:", *outputs]))
    return "\n\n".join(blocks)


# "The instruction was to ...", "The instruction was to: ...", "Instruction: ...", "New instruction - ..." echoed
# before the answer
# ("Sure! The instruction is to ...", "**Instructions:** ...")
_LEAD = re.compile(r"^(?:(?:sure|okay|ok|certainly)[!.,]?\s+)?(?:\*\*)?(?:the\s+)?(?:teacher'?s\s+|new\s+|varied\s+)?"
                   r"(?:instructions?|variation)(?:\s+(?:was|is|were|are))?(?:\*\*)?(?:\s+to\b\s*[:\-]?|\s*[:\-])(?:\*\*)?\s*",
                   re.IGNORECASE)
#: A line that only announces the list after it ("Here is the instruction:"), not an instruction of its own.
_ANNOUNCES = re.compile(r"^(?:here\b|below\b|(?:the\s+)?following\b|sure\b|okay\b|certainly\b)|\binstructions?\b",
                        re.IGNORECASE)
_TO = re.compile(r"^to\s+(?=[a-z])")


def read_instruction(text: Any) -> str:
    """The instruction in a prompt-model answer, or ``""`` when there is none worth scoring.

    Only the first paragraph counts (a small model often adds an explanation after a blank line),
    with the next one when it is a lead-in ending in a colon; a list counts by its first item (a
    small model asked for one instruction often numbers several); an echoed lead-in ("The
    instruction was to", "Instruction:") is dropped, as are quotes; the first letter is
    capitalised and a final full stop added. Answers over
    ``MAX_INSTRUCTION_CHARS`` characters or under ``MIN_INSTRUCTION_WORDS`` words give ``""``.
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", str(text or "")) if p.strip()]
    if len(paragraphs) > 1 and paragraphs[0].endswith(":"):
        paragraphs[:2] = [f"{paragraphs[0]} {paragraphs[1]}"]
    items = numbered_items(paragraphs[0] if paragraphs else "", drop_lead_in=False)  # a lead-in may be the answer
    if len(items) > 1 and items[0].endswith(":") and _ANNOUNCES.search(items[0]):
        items = items[1:]  # "Here is the instruction:" announces the list; "Sort the words:" may be the answer
    if not items:
        return ""
    found = clean(items[0])
    for _ in range(2):  # "Instruction: The instruction was to ..."
        found = clean(_LEAD.sub("", found, count=1))
    found = _TO.sub("", found, count=1).strip()
    if not found or len(found) > MAX_INSTRUCTION_CHARS or len(found.split()) < MIN_INSTRUCTION_WORDS:
        return ""
    found = found[0].upper() + found[1:]
    return found if found[-1] in ".!?:)\"'" else found + "."
