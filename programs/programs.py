"""Ready DSPy programs for the bundled tasks, for optimizers to compile.

Three shapes, all ``dspy.Module`` s built by a factory:

* `qa_program` (``kind="predict"``): one ``dspy.Predict`` from the inputs to ``answer``.
* `qa_program` (``kind="cot"``): one ``dspy.ChainOfThought`` (adds a ``reasoning`` output).
* `two_step_program`: a ``dspy.Predict`` that extracts the relevant facts into ``analysis``,
  then a second predictor that answers from the inputs and that analysis.

Each program takes the task's input fields as keyword arguments (``question`` and, for
multiple-choice tasks, ``options``) and returns a ``dspy.Prediction`` with ``answer``.

Example:
    >>> from dspy_icl_opt.programs import load_task, make_program
    >>> task = load_task("date_understanding")
    >>> program = make_program("cot", task)
    >>> [name for name, _ in program.named_predictors()]
    ['predictor.predict']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import dspy

if TYPE_CHECKING:
    from dspy_icl_opt.programs.tasks import Task

ProgramKind = Literal["predict", "cot"]
PROGRAM_KINDS: tuple[str, ...] = ("predict", "cot")
PROGRAM_NAMES: tuple[str, ...] = ("qa", "cot", "two_step")

QUESTION_KEY = "question"
OPTIONS_KEY = "options"
ANALYSIS_KEY = "analysis"
ANSWER_KEY = "answer"
RESERVED_KEYS = frozenset({ANALYSIS_KEY, ANSWER_KEY, "reasoning"})
"""Output field names that cannot also be inputs."""

QA_INSTRUCTIONS = "Answer the question. Give only the final answer, as short as possible."
"""Default instruction of a free-answer program."""
CHOICE_INSTRUCTIONS = "Answer the multiple-choice question. Reply with the exact text of the correct option."
"""Default instruction of a multiple-choice program (one whose inputs include ``options``)."""
ANALYSIS_INSTRUCTIONS = (
    "Read the question and extract the facts relevant to answering it, with any intermediate results. "
    "Do not give the final answer yet."
)
"""Default instruction of the first (fact-extraction) step of `two_step_program`."""
ANSWER_FROM_ANALYSIS_INSTRUCTIONS = (
    "Answer the question using the analysis of its relevant facts. Give only the final answer."
)
"""Default instruction of the second (answering) step of `two_step_program`; choice wording is appended for options."""
CHOICE_SUFFIX = " Reply with the exact text of the correct option."

FIELD_DESCRIPTIONS: dict[str, str] = {
    QUESTION_KEY: "The question to answer.",
    OPTIONS_KEY: "The answer options, one per line, as '(A) text'.",
    ANALYSIS_KEY: "The facts and intermediate results relevant to the question.",
}
FREE_ANSWER_DESCRIPTION = "The final answer, as short as possible."
CHOICE_ANSWER_DESCRIPTION = "The exact text of the correct option, without its letter."


class QAProgram(dspy.Module):
    """One predictor from the task inputs to ``answer``: ``self.predictor``.

    Args:
        signature: The predictor's signature.
        kind: ``"predict"`` for ``dspy.Predict``, ``"cot"`` for ``dspy.ChainOfThought``.
    """

    def __init__(self, signature: type[dspy.Signature], *, kind: ProgramKind = "predict") -> None:
        super().__init__()
        self.input_keys = tuple(signature.input_fields)
        self.predictor = dspy.ChainOfThought(signature) if kind == "cot" else dspy.Predict(signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Answer one example; extra keyword arguments (such as ``choices``) are ignored."""
        return self.predictor(**_select_inputs(inputs, self.input_keys))

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async `forward` (for ``program.acall``)."""
        return await self.predictor.acall(**_select_inputs(inputs, self.input_keys))


class TwoStepProgram(dspy.Module):
    """Extract the relevant facts (``self.analyze``), then answer from them (``self.respond``).

    Args:
        analyze_signature: Inputs -> ``analysis``.
        respond_signature: Inputs and ``analysis`` -> ``answer``.
        kind: Predictor kind of the answering step (the analysis step is always ``dspy.Predict``).
    """

    def __init__(
        self,
        analyze_signature: type[dspy.Signature],
        respond_signature: type[dspy.Signature],
        *,
        kind: ProgramKind = "predict",
    ) -> None:
        super().__init__()
        self.input_keys = tuple(analyze_signature.input_fields)
        self.analyze = dspy.Predict(analyze_signature)
        self.respond = dspy.ChainOfThought(respond_signature) if kind == "cot" else dspy.Predict(respond_signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Answer one example; returns ``analysis`` and ``answer`` (and ``reasoning`` for ``kind="cot"``)."""
        selected = _select_inputs(inputs, self.input_keys)
        analysis = self.analyze(**selected).analysis
        result = self.respond(**selected, analysis=analysis)
        return dspy.Prediction(**{ANALYSIS_KEY: analysis, **dict(result.items())})

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async `forward` (for ``program.acall``)."""
        selected = _select_inputs(inputs, self.input_keys)
        analysis = (await self.analyze.acall(**selected)).analysis
        result = await self.respond.acall(**selected, analysis=analysis)
        return dspy.Prediction(**{ANALYSIS_KEY: analysis, **dict(result.items())})


def qa_program(
    *,
    kind: ProgramKind = "predict",
    input_keys: Sequence[str] = (QUESTION_KEY,),
    instructions: str | None = None,
) -> QAProgram:
    """Build a single-predictor question-answering program.

    With ``options`` among ``input_keys`` the program is multiple choice: its default
    instruction and ``answer`` description ask for the exact text of the correct option.

    Args:
        kind: ``"predict"`` (``dspy.Predict``) or ``"cot"`` (``dspy.ChainOfThought``). Defaults to "predict".
        input_keys: Input field names, e.g. ``task.input_keys``. Defaults to ``("question",)``.
        instructions: The predictor's instruction; defaults to `QA_INSTRUCTIONS` or `CHOICE_INSTRUCTIONS`.

    Returns:
        A `QAProgram` whose predictor is ``program.predictor``.

    Example:
        >>> program = qa_program(kind="cot", input_keys=("question", "options"))
        >>> list(program.predictor.predict.signature.input_fields)
        ['question', 'options']
    """
    _check_kind(kind)
    keys = _check_input_keys(input_keys)
    choice = OPTIONS_KEY in keys
    default = CHOICE_INSTRUCTIONS if choice else QA_INSTRUCTIONS
    signature = _build_signature(keys, _answer_field(choice), instructions or default, name="AnswerQuestion")
    return QAProgram(signature, kind=kind)


def two_step_program(
    *,
    kind: ProgramKind = "predict",
    input_keys: Sequence[str] = (QUESTION_KEY,),
    instructions: str | None = None,
    analysis_instructions: str | None = None,
) -> TwoStepProgram:
    """Build a two-step program: extract the relevant facts, then answer from them.

    The first predictor maps the inputs to ``analysis``; the second maps the inputs and
    ``analysis`` to ``answer``. Optimizers see two predictors, ``analyze`` and ``respond``.

    Args:
        kind: Predictor kind of the answering step, ``"predict"`` or ``"cot"``. Defaults to "predict".
        input_keys: Input field names, e.g. ``task.input_keys``. Defaults to ``("question",)``.
        instructions: Instruction of the answering step; defaults to `ANSWER_FROM_ANALYSIS_INSTRUCTIONS`.
        analysis_instructions: Instruction of the analysis step; defaults to `ANALYSIS_INSTRUCTIONS`.

    Returns:
        A `TwoStepProgram`.

    Example:
        >>> program = two_step_program(input_keys=("question", "options"))
        >>> [name for name, _ in program.named_predictors()]
        ['analyze', 'respond']
    """
    _check_kind(kind)
    keys = _check_input_keys(input_keys)
    choice = OPTIONS_KEY in keys
    analysis_field = {ANALYSIS_KEY: dspy.OutputField(desc=FIELD_DESCRIPTIONS[ANALYSIS_KEY])}
    analysis_text = analysis_instructions or ANALYSIS_INSTRUCTIONS
    analyze = _build_signature(keys, analysis_field, analysis_text, name="ExtractFacts")
    default = ANSWER_FROM_ANALYSIS_INSTRUCTIONS + (CHOICE_SUFFIX if choice else "")
    respond = _build_signature(
        (*keys, ANALYSIS_KEY), _answer_field(choice), instructions or default, name="AnswerFromAnalysis"
    )
    return TwoStepProgram(analyze, respond, kind=kind)


def make_program(name: str, task: Task, *, instructions: str | None = None) -> dspy.Module:
    """Build a named ready program for a task.

    Args:
        name: ``"qa"`` (Predict), ``"cot"`` (ChainOfThought) or ``"two_step"`` (analysis, then answer).
        task: A loaded `dspy_icl_opt.programs.tasks.Task`; its ``input_keys`` become the program's inputs.
        instructions: Optional instruction of the (answering) predictor.

    Returns:
        The program, a fresh ``dspy.Module``.

    Example:
        >>> from dspy_icl_opt.programs.tasks import load_task
        >>> program = make_program("two_step", load_task("word_sorting"))
        >>> type(program).__name__
        'TwoStepProgram'
    """
    if name == "qa":
        return qa_program(kind="predict", input_keys=task.input_keys, instructions=instructions)
    if name == "cot":
        return qa_program(kind="cot", input_keys=task.input_keys, instructions=instructions)
    if name == "two_step":
        return two_step_program(input_keys=task.input_keys, instructions=instructions)
    raise ValueError(f"`name` must be one of {list(PROGRAM_NAMES)}, but got {name!r}. Pick one of those programs.")


def _answer_field(choice: bool) -> dict[str, Any]:
    description = CHOICE_ANSWER_DESCRIPTION if choice else FREE_ANSWER_DESCRIPTION
    return {ANSWER_KEY: dspy.OutputField(desc=description)}


def _build_signature(
    input_keys: Sequence[str], outputs: Mapping[str, Any], instructions: str, *, name: str
) -> type[dspy.Signature]:
    """A string-typed signature with the given inputs, outputs and instruction."""
    fields: dict[str, tuple[type, Any]] = {
        key: (str, dspy.InputField(desc=FIELD_DESCRIPTIONS.get(key, f"The {key.replace('_', ' ')}.")))
        for key in input_keys
    }
    fields.update({key: (str, field) for key, field in outputs.items()})
    return dspy.make_signature(fields, instructions, signature_name=name)


def _select_inputs(inputs: Mapping[str, Any], input_keys: Sequence[str]) -> dict[str, Any]:
    missing = [key for key in input_keys if key not in inputs]
    if missing:
        raise ValueError(
            f"The program inputs must include {list(input_keys)}, but {missing} are missing (got {sorted(inputs)}). "
            "Call the program with `**example.inputs()` of an example loaded for this task."
        )
    return {key: inputs[key] for key in input_keys}


def _check_kind(kind: str) -> None:
    if kind not in PROGRAM_KINDS:
        raise ValueError(f"`kind` must be one of {list(PROGRAM_KINDS)}, but got {kind!r}. Use 'predict' or 'cot'.")


def _check_input_keys(input_keys: Sequence[str]) -> tuple[str, ...]:
    keys = (input_keys,) if isinstance(input_keys, str) else tuple(input_keys)
    valid = keys and all(isinstance(key, str) and key.isidentifier() for key in keys) and len(set(keys)) == len(keys)
    if not valid or RESERVED_KEYS & set(keys):
        raise ValueError(
            f"`input_keys` must be distinct field names other than {sorted(RESERVED_KEYS)}, but got {input_keys!r}. "
            "Pass e.g. task.input_keys, such as ('question', 'options')."
        )
    return keys
