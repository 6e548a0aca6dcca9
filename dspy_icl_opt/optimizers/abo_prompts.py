"""ABO's meta-prompts and the text they produce: step-by-step procedures and worked demonstrations.

The four meta-prompts follow the paper's loop (Ma et al., 2024, arXiv 2402.02101): write a procedure,
write a demonstration that carries it out, name the step where the target model went wrong, and
break that step into sub-steps. :class:`Procedure` keeps the steps as data so a refinement is a
splice in code: only the failing step changes, every other step stays word for word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_icl_opt.search.meta import first_number_in
from dspy_icl_opt.search.surgery import demo_to_dict

#: A procedure needs at least this many steps: a single step is a task description, not a procedure.
MIN_STEPS = 2
#: A refinement must split the failing step into at least this many sub-steps.
MIN_SUB_STEPS = 2
#: A sentence counts as a sub-step of a one-paragraph answer when it has at least this many words.
MIN_SUB_STEP_WORDS = 3
_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+")
#: Output fields that hold a model's working (ChainOfThought's ``reasoning`` and its usual synonyms).
REASONING_FIELDS = ("reasoning", "rationale", "thought", "thinking", "explanation")

_MARKDOWN = re.compile(r"\*\*|__|^#+\s*")
_SUB_LINE = re.compile(r"^(?:step\s*)?(\d+)\.(\d+)\s*[.):]?\s+(.+)$", re.IGNORECASE)
_STEP_LINE = re.compile(r"^(?:step\s*)?(\d+)\s*[.):]\s*(.+)$", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^(?:step\s*)?(?:\d+(?:\.\d+)+[.):]?\s+|\d+\s*[.):]\s*|[a-z][.)]\s+)(.+)$"
                        r"|^[-*\u2022]\s+(.+)$", re.IGNORECASE)


# ------------------------------------------------------------------------------------ meta-prompts
class WriteProcedure(dspy.Signature):
    """Write a procedure that a less capable model can follow to do this task: numbered steps, in the
    order it should act, each one concrete action on the inputs. Say how to work, not what the task is."""

    task: str = dspy.InputField(desc="the task's input and output fields and its current instruction")
    examples: str = dspy.InputField(desc="solved examples from the training data")
    procedure: str = dspy.OutputField(desc="numbered steps, one per line ('1. ...', '2. ...'), at least two")


class WriteDemonstration(dspy.Signature):
    """Solve the example by carrying out the procedure exactly, one paragraph per step, in order. Start
    each paragraph with the step's label ('Step 1:', 'Step 2.1:' ...) and show its intermediate result.
    The work must arrive at the given correct outputs."""

    task: str = dspy.InputField(desc="the task's input and output fields")
    procedure: str = dspy.InputField(desc="the numbered steps to carry out")
    example_inputs: str = dspy.InputField()
    correct_outputs: str = dspy.InputField(desc="what the work must arrive at")
    execution: str = dspy.OutputField(desc="the step-by-step work, every step labelled")


class LocateFailingStep(dspy.Signature):
    """A model was told to follow this procedure, shown the demonstration, and got the input wrong.
    Compare its work with the correct output and find the first step it carried out wrongly."""

    procedure: str = dspy.InputField(desc="the numbered steps the model was given")
    demonstration: str = dspy.InputField(desc="the worked example the model was shown")
    task_input: str = dspy.InputField()
    model_output: str = dspy.InputField(desc="what the model wrote, its reasoning included")
    correct_output: str = dspy.InputField()
    reason: str = dspy.OutputField(desc="what went wrong at that step")
    failing_step: str = dspy.OutputField(desc="the number of the first wrongly executed step, e.g. 2")


class SplitStep(dspy.Signature):
    """A model keeps going wrong at this one step. Rewrite just this step as 2 to 4 smaller actions done in
    order, each short and concrete, that would avoid the failures described. Do not repeat other steps."""

    task: str = dspy.InputField(desc="the task's input and output fields")
    step: str = dspy.InputField(desc="the one step to break down (with any sub-steps it has now)")
    failures: str = dspy.InputField(desc="why the model failed at this step, one reason per line")
    sub_steps: str = dspy.OutputField(desc="2 to 4 numbered smaller actions, one per line: '1. ...', '2. ...'")


def demonstration_signature(final_fields: Mapping[str, Any]) -> type[dspy.Signature]:
    """:class:`WriteDemonstration` with one ``final_<name>`` output per task output, typed like the task's."""
    signature = WriteDemonstration
    for name, info in final_fields.items():
        desc = f"the final `{name}` that the work arrives at"
        signature = signature.append(f"final_{name}", dspy.OutputField(desc=desc), type_=info.annotation)
    signature.__name__ = WriteDemonstration.__name__  # reports count its answers under one name
    return signature


# ------------------------------------------------------------------------------------- procedures
@dataclass(frozen=True)
class Step:
    """One numbered step, possibly broken into sub-steps by refinement."""

    text: str
    sub_steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Procedure:
    """A numbered step-by-step procedure; sub-steps are numbered ``k.1``, ``k.2`` under step ``k``."""

    steps: tuple[Step, ...]

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def parse(cls, text: str) -> Procedure | None:
        """Steps from numbered lines (``1.``, ``Step 2:``, ``2.1``); ``None`` with fewer than two steps.

        Text before the first step is dropped; unnumbered lines continue the item above them.
        """
        steps: list[list[Any]] = []
        for raw in str(text or "").splitlines():
            line = _MARKDOWN.sub("", raw.strip()).strip()
            if not line:
                continue
            sub, top = _SUB_LINE.match(line), _STEP_LINE.match(line)
            if sub and steps:
                steps[-1][1].append(sub.group(3).strip())
            elif top:
                steps.append([top.group(2).strip(), []])
            elif steps and steps[-1][1]:
                steps[-1][1][-1] += " " + line
            elif steps:
                steps[-1][0] += " " + line
        if len(steps) < MIN_STEPS:
            return None
        return cls(tuple(Step(text, tuple(subs)) for text, subs in steps))

    def render(self) -> str:
        lines = []
        for number, step in enumerate(self.steps, start=1):
            lines.append(f"{number}. {step.text}")
            lines.extend(f"   {number}.{j} {sub}" for j, sub in enumerate(step.sub_steps, start=1))
        return "\n".join(lines)

    def render_step(self, number: int) -> str:
        """Step ``number`` with its sub-steps, as rendered in the whole procedure."""
        start = sum(1 + len(step.sub_steps) for step in self.steps[: number - 1])
        stop = start + 1 + len(self.steps[number - 1].sub_steps)
        return "\n".join(self.render().splitlines()[start:stop])

    def labels(self) -> list[str]:
        """The labels a demonstration must show: each step without sub-steps, and each sub-step (``2.1`` ...)."""
        labels = []
        for number, step in enumerate(self.steps, start=1):
            labels.extend([f"{number}.{j}" for j in range(1, len(step.sub_steps) + 1)] or [str(number)])
        return labels

    def refine(self, number: int, sub_steps: Sequence[str]) -> Procedure:
        """A copy where step ``number`` carries ``sub_steps`` (replacing any it had); other steps unchanged."""
        if not 1 <= number <= len(self.steps):
            raise ValueError(f"`number` must be a step of this procedure (1..{len(self.steps)}), but got {number}.")
        steps = list(self.steps)
        steps[number - 1] = Step(steps[number - 1].text, tuple(sub_steps))
        return Procedure(tuple(steps))


def parse_sub_steps(text: str, *, other_steps: Sequence[str] = ()) -> list[str] | None:
    """Items of a list answer (numbered, lettered or bulleted), or the sentences of a one-paragraph answer;
    ``None`` with fewer than two, or when the items only repeat ``other_steps`` (an echo of the procedure)."""
    items = _list_items(text)
    if len(items) < MIN_SUB_STEPS and len(items) == 1:
        items = [s.strip() for s in _SENTENCE_END.split(items[0]) if len(s.split()) >= MIN_SUB_STEP_WORDS]
    if len(items) < MIN_SUB_STEPS:
        return None
    others = {_plain(step) for step in other_steps}
    if others and sum(_plain(item) in others for item in items) >= MIN_SUB_STEPS:
        return None
    return items


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _list_items(text: str) -> list[str]:
    items: list[str] = []
    for raw in str(text or "").splitlines():
        line = _MARKDOWN.sub("", raw.strip()).strip()
        if not line:
            continue
        match = _LIST_ITEM.match(line)
        if match:
            items.append((match.group(1) or match.group(2)).strip())
        elif items:
            items[-1] += " " + line
        else:
            items.append(line)
    return items


def follows_every_step(execution: str, procedure: Procedure) -> bool:
    """Whether a demonstration's work labels every step and sub-step of ``procedure``."""
    text = str(execution or "")

    def shown(label: str) -> bool:
        prefix = r"(?<![\d.])" if "." in label else r"\bstep\s*"  # "2.1" is distinctive; "2" needs "Step"
        return re.search(rf"{prefix}{re.escape(label)}(?![.\d]*\d)", text, re.IGNORECASE) is not None

    return all(shown(label) for label in procedure.labels())


def reasoning_field(signature: type[dspy.Signature]) -> str | None:
    """The output field that holds the working (``reasoning`` for ChainOfThought), if one precedes the answer."""
    names = list(signature.output_fields)
    for name in names[:-1]:
        annotation = signature.output_fields[name].annotation
        textual = annotation is str or (isinstance(annotation, type) and issubclass(annotation, dspy.Reasoning))
        if name in REASONING_FIELDS and textual:  # ChainOfThought's field is str, or dspy.Reasoning
            return name
    return None


def step_number(value: Any, n_steps: int) -> int | None:
    """``value`` as a step number of an ``n_steps``-step procedure ("2", "Step 2", "2.1" -> 2), or None."""
    if isinstance(value, bool) or value is None:
        return None
    return first_number_in(value, 1, n_steps)


# --------------------------------------------------------------------------------- demonstrations
@dataclass(frozen=True)
class Demonstration:
    """A worked training example that carries out a procedure step by step.

    Args:
        example_index: which training example it is (index into the trainset).
        inputs: the predictor's input values.
        execution: the labelled step-by-step work.
        outputs: the final output values (the reasoning field excluded); they passed the metric.
    """

    example_index: int
    inputs: dict[str, Any]
    execution: str
    outputs: dict[str, Any] = field(default_factory=dict)

    def as_demo(self, reasoning_field: str | None) -> dict[str, Any]:
        """The few-shot demo to install; the work goes in the reasoning field when there is one."""
        work = {reasoning_field: self.execution} if reasoning_field else {}
        return {**self.inputs, **work, **self.outputs}

    def render(self) -> str:
        return "\n".join(["Input:", format_fields(self.inputs), "Work:", self.execution.strip(),
                          "Output:", format_fields(self.outputs)])

    def to_dict(self) -> dict[str, Any]:
        return {"example_index": self.example_index, "inputs": self.inputs, "execution": self.execution,
                "outputs": self.outputs}


def render_solved_examples(examples: Sequence[dspy.Example]) -> str:
    """Solved examples for :class:`WriteProcedure`: each example's inputs, then its labels, numbered from 1."""
    return "\n\n".join(f"Example {i}:\n{format_fields(demo_to_dict(ex.inputs()))}\n"
                         f"{format_fields(demo_to_dict(ex.labels()))}" for i, ex in enumerate(examples, start=1))


def format_fields(values: Mapping[str, Any]) -> str:
    """``name: value`` lines, for meta-prompts."""
    return "\n".join(f"{name}: {value}" for name, value in values.items())
