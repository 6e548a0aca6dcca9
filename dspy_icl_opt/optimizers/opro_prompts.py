"""OPRO's meta-prompt: the signature, and how the trajectory and exemplars are rendered into it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_icl_opt.search.placement import Position

INS_OPEN, INS_CLOSE = "<INS>", "</INS>"
#: OPRO shows scores as integer percentages (100 buckets).
SCORE_BUCKETS = 100


class ProposeInstruction(dspy.Signature):
    """Write a better instruction for a language-model task.

    Earlier instructions are listed with the accuracy each achieved (0 to 100), from worst to best:
    higher is better. The example problems show where the instruction <INS> is placed and the
    expected outputs. Write one new instruction that is different from every instruction listed,
    should score higher than all of them, and is concise, effective and general enough for every
    problem of this task. Wrap it between <INS> and </INS>."""

    task: str = dspy.InputField(desc="the task's input and output fields")
    data_summary: str = dspy.InputField(desc="what the training data looks like, and the answers its labels use")
    previous_instructions: str = dspy.InputField(desc="earlier instructions with their scores, ascending")
    example_problems: str = dspy.InputField(desc="problems with the instruction slot <INS> and the expected output")
    new_instruction: str = dspy.OutputField(desc="the new instruction, between <INS> and </INS>")


@dataclass(frozen=True)
class TrajectoryEntry:
    """One scored instruction of one predictor."""

    candidate: int
    step: int
    instruction: str
    position: Position
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "step": self.step, "instruction": self.instruction,
                "position": self.position, "score": self.score}


def shown_trajectory(entries: Sequence[TrajectoryEntry], *, max_entries: int, threshold: float) -> list[TrajectoryEntry]:
    """The entries the meta-prompt shows: at or above ``threshold``, the best ``max_entries``, ascending.

    The same instruction text at several positions is shown once, with its best score.
    """
    best: dict[str, TrajectoryEntry] = {}
    for entry in entries:
        if entry.score < threshold:
            continue
        kept = best.get(entry.instruction)
        if kept is None or entry.score > kept.score:
            best[entry.instruction] = entry
    ranked = sorted(best.values(), key=lambda e: (e.score, -e.candidate))
    return ranked[-max_entries:] if max_entries > 0 else []


def render_trajectory(entries: Sequence[TrajectoryEntry]) -> str:
    if not entries:
        return "(none yet)"
    blocks = [f"text:\n{e.instruction or '(empty instruction)'}\nscore:\n{round(e.score * SCORE_BUCKETS)}"
              for e in entries]
    return "\n\n".join(blocks)


def _format_fields(values: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in values.items())


#: The label of the instruction slot where it stands on a line of its own. A bare ``<INS>`` opening each problem
#: read as the start of a problem to write (answers that wrapped a copied problem in the tags): answers with
#: nothing to read fell from 7 to 1 of 12 (0.5B proposer) and 2 to 1 of 10 (1.5B) with the slot labelled
#: (``probe_opro_proposals.py``, BENCHMARKS.md, block of 2026-12-07 07:17).
SLOT_LABEL = "instruction:"
#: The slot's line as the exemplars show it (the probe's bare-slot variant replaces exactly this).
LABELLED_SLOT = f"{SLOT_LABEL} {INS_OPEN}"


def render_exemplars(examples: Sequence[dspy.Example], position: Position) -> str:
    """Problems with the instruction slot marked where ``position`` puts it, and gold outputs."""
    blocks = []
    for i, example in enumerate(examples, 1):
        inputs = _format_fields(dict(example.inputs()))
        labels = _format_fields(dict(example.labels()))
        if position == "system":
            text = f"{LABELLED_SLOT}\ninput:\n{inputs}\noutput:\n{labels}"
        elif position == "q_end":
            text = f"input:\n{inputs}\n{LABELLED_SLOT}\noutput:\n{labels}"
        else:
            text = f"input:\n{inputs}\noutput:\n{INS_OPEN} {labels}"
        blocks.append(f"Problem {i}:\n{text}")
    return "\n\n".join(blocks)


_TAGGED = re.compile(r"<INS>((?:(?!<INS>).)*?)</INS>", re.IGNORECASE | re.DOTALL)
_OPEN = re.compile(r"<INS>", re.IGNORECASE)
_QUOTES = "\"'`“”‘’ \n\t"


#: The meta-prompt's own labels (trajectory "text:"/"score:", exemplar "instruction:"/"input:"/"output:",
#: "Problem N:").
_SLOT = SLOT_LABEL.rstrip(":")
_SCAFFOLD = ("text", "score", _SLOT, "input", "output")
#: Labels a proposer writes before its instruction (the trajectory's and the exemplars' slot): cut, not an echo.
_LEADING_LABELS = ("text", _SLOT)
_TRAILING_SCORE = re.compile(r"\s*\bscore\s*:\s*\d+(?:\.\d+)?\s*$", re.IGNORECASE)
_PROBLEM = re.compile(r"^\s*problem\s+\d+\s*:", re.IGNORECASE)


def extract_instruction(text: str, fields: Sequence[str] = ()) -> str:
    """The instruction between the last non-empty <INS> and </INS> pair (or the whole answer without tags).

    Models often echo the ``<INS>`` slot marker of the exemplars before their answer, so the last
    complete pair wins. An answer that still contains a tag after extraction is rejected (empty
    string), as the paper's code skips candidates that contain "INS".

    A small proposer also copies the meta-prompt's scaffolding (measured: 3 of 5 proposals of the
    0.5B model on disambiguation_qa, such as "... option.  score: 17" and "input: question: In the
    following sentences ..."): a leading ``text:`` or ``instruction:`` label and a trailing ``score: N``
    are cut, the answer ends where an echoed problem starts (a line labelled ``input:``, ``output:``,
    ``Problem N:`` or one of the task's ``fields``), and an answer that *is* an echoed problem or output (it starts
    with such a label) is rejected.
    """
    text = text or ""
    matches = [m for m in _TAGGED.findall(text) if m.strip()]
    if matches:
        found = matches[-1]
    else:
        opens = list(_OPEN.finditer(text))
        found = text[opens[-1].end():] if opens else text
    found = found.strip(_QUOTES).strip()
    if "INS>" in found.upper():
        return ""
    return _strip_scaffold(found, fields)


def _strip_scaffold(text: str, fields: Sequence[str]) -> str:
    labels = {label.lower() for label in (*_SCAFFOLD, *fields)}

    def label_of(line: str) -> str | None:
        head, colon, _ = line.strip().partition(":")
        return head.strip().lower() if colon and head.strip().lower() in labels else None

    lines = text.splitlines()
    if lines and label_of(lines[0]) in _LEADING_LABELS:  # a "text:" or "instruction:" label before the instruction
        lines[0] = lines[0].split(":", 1)[1]
    if lines and (label_of(lines[0]) not in (None, "score") or _PROBLEM.match(lines[0])):
        return ""  # an echoed problem or output, not an instruction
    kept = []
    for line in lines:
        if _PROBLEM.match(line) or label_of(line) is not None:
            break
        kept.append(line)
    return _TRAILING_SCORE.sub("", "\n".join(kept)).strip(_QUOTES).strip()


def normalize_instruction(text: str) -> str:
    """The form instructions are de-duplicated by: lower case, words only, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
