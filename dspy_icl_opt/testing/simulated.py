"""A simulated *task model*: it answers correctly only when the prompt carries what it needs.

`SimulatedTaskEngine` reads each DSPy ChatAdapter (or JSONAdapter) request back into a
`PromptView` (the signature's instruction, the few-shot demos, the current inputs, the output
fields) and asks ``knows(view)``. If that is true it answers ``solve(inputs)``, otherwise
``wrong(inputs)``. Optimizer tests plant a rule, let ``knows`` look for it in the instruction
or demos, and check that the optimizer finds a prompt that unlocks it.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.testing import rule_in_instruction, simulated_task_lm
    >>> lm = simulated_task_lm(solve=lambda inputs: inputs["question"][::-1], knows=rule_in_instruction("reverse"))
    >>> with dspy.context(lm=lm):
    ...     dspy.Predict(dspy.Signature("question -> answer", "Reverse the word."))(question="abc").answer
    'cba'
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import dspy
from dspy.lm15 import Request, Response, TokenLogprob

from dspy_icl_opt.lm.llama_messages import CONTINUATION

from dspy_icl_opt.testing.chat import (
    conversation,
    format_chat_reply,
    format_json_reply,
    make_response,
    parse_field_blocks,
    stream_events,
    system_text,
)
from dspy_icl_opt.testing.scripted import make_fake_lm

Inputs = Mapping[str, str]
Solver = Callable[[Inputs], Any]
"""Maps the current inputs to the answer (a string) or to several output fields (a mapping)."""

DEFAULT_TASK_MODEL = "fake/task-model"
RESPONSE_MODEL = "fake"
DEFAULT_WRONG_ANSWER = "unsure"
"""The default wrong reply: no bundled task's choice contains this word."""
REASONING_FIELD = "reasoning"
ANSWER_FIELD = "answer"
REASONING_TEXT = "Let me work through this step by step."
"""What a ``reasoning`` output field gets (unless ``solve`` returns one)."""
PLACEHOLDER_TEXT = "N/A"
"""What other non-answer string output fields get (unless ``solve`` returns them)."""
DEFAULT_OUTPUT_FIELDS = (ANSWER_FIELD,)
"""Output fields assumed when the system prompt does not list any (a plain ``lm("...")`` call)."""

OBJECTIVE_MARKER = re.compile(r"your objective is:[ \t]*", re.IGNORECASE)
"""ChatAdapter.format_task_description: "In adhering to this structure, your objective is: " + instructions."""
FIELD_SECTION = r"Your {kind} fields are:\n(.*?)(?:\nYour output fields are:|\nAll interactions will be structured|\Z)"
FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \((.*)\):", re.MULTILINE)
"""One line of ``get_field_description_string``: "1. `answer` (str): description"."""
JSON_MODE_MARKERS = ("Outputs will be a JSON object", "Respond with a JSON object")
"""JSONAdapter's wording; such requests get a JSON reply."""
NOT_SUPPLIED_PREFIX = "Not supplied for this"
"""DSPy's value for a demo field that was missing ("Not supplied for this particular example.")."""
TYPE_PLACEHOLDERS = {"int": "0", "float": "0.0", "bool": "False"}
CONTAINER_PLACEHOLDERS = {"list": "[]", "tuple": "[]", "set": "[]", "dict": "{}"}
LITERAL_VALUE = re.compile(r"Literal\[\s*(['\"]?)(.*?)\1\s*[,\]]")


@dataclass(frozen=True)
class Demo:
    """One few-shot demo as the model saw it: a user/assistant message pair, parsed.

    Args:
        inputs: Input field values from the user message.
        outputs: Output field values from the assistant message ("Not supplied" fields dropped).
    """

    inputs: dict[str, str]
    outputs: dict[str, str]

    @property
    def text(self) -> str:
        """Every field value of the demo, joined by newlines (for substring rules)."""
        return "\n".join([*self.inputs.values(), *self.outputs.values()])


@dataclass(frozen=True)
class PromptView:
    """What a simulated model reads from one request.

    Args:
        instruction: The signature's instruction (dedented), or the whole system text if
            the request is not in DSPy's format.
        demos: Earlier user/assistant message pairs, parsed (few-shot demos, or conversation history).
        inputs: The current input field values from the last user message.
        user_text: The raw last user message.
        output_fields: Output field names in order (from "Your output fields are:").
        input_fields: Input field names in order (from "Your input fields are:").
        output_types: Output field name -> type name as DSPy printed it (e.g. "str", "list[str]").
        system: The raw system text.
        json_mode: Whether the request asks for a JSON reply (JSONAdapter).
    """

    instruction: str
    demos: tuple[Demo, ...]
    inputs: dict[str, str]
    user_text: str
    output_fields: tuple[str, ...]
    input_fields: tuple[str, ...] = ()
    output_types: dict[str, str] = field(default_factory=dict)
    system: str = ""
    json_mode: bool = False

    @property
    def answer_field(self) -> str:
        """The field that gets the answer: ``answer`` if present, else the last non-reasoning output."""
        if ANSWER_FIELD in self.output_fields:
            return ANSWER_FIELD
        candidates = [name for name in self.output_fields if name != REASONING_FIELD]
        return candidates[-1] if candidates else ANSWER_FIELD


@dataclass(frozen=True)
class SimulatedCall:
    """One request a `SimulatedTaskEngine` answered.

    Args:
        view: The parsed prompt.
        knew: What ``knows(view)`` returned.
        answer: What ``solve`` (if ``knew``) or ``wrong`` returned.
        reply: The completion text sent back.
        request: The raw request.
    """

    view: PromptView
    knew: bool
    answer: Any
    reply: str
    request: Request


def parse_prompt(request: Request) -> PromptView:
    """Parse a DSPy ChatAdapter/JSONAdapter request into a `PromptView`.

    The system message gives the instruction (the text after "your objective is:") and the
    field lists; the last user message gives the current inputs (``[[ ## field ## ]]`` blocks,
    without DSPy's trailing output-format reminder); each earlier user message followed by an
    assistant message is a demo.

    Args:
        request: The request an engine received.

    Returns:
        The view.

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> view = parse_prompt(Request(model="m", messages=(Message.user("[[ ## question ## ]]\\nhi"),)))
        >>> view.inputs, view.output_fields
        ({'question': 'hi'}, ('answer',))
    """
    system = system_text(request)
    messages = conversation(request)
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=None)
    user_text = messages[last_user][1] if last_user is not None else ""
    history = messages[:last_user] if last_user is not None else messages
    output_types = _field_types(system, "output")
    return PromptView(
        instruction=_instruction(system),
        demos=_demos(history),
        inputs=parse_field_blocks(user_text),
        user_text=user_text,
        output_fields=tuple(output_types) or DEFAULT_OUTPUT_FIELDS,
        input_fields=tuple(_field_types(system, "input")),
        output_types=output_types,
        system=system,
        json_mode=any(marker in system or marker in user_text for marker in JSON_MODE_MARKERS),
    )


class SimulatedTaskEngine:
    """A DSPy engine that solves a task only when ``knows(view)`` says the prompt carries the rule.

    Args:
        solve: ``(inputs) -> answer``: the correct answer (a string), or a mapping of output fields.
        knows: ``(PromptView) -> bool``: whether this prompt lets the model solve the task.
        wrong: ``(inputs) -> answer`` used when ``knows`` is false. Defaults to the fixed string "unsure".
        model: Model name reported in responses.

    Example:
        >>> engine = SimulatedTaskEngine(solve=lambda inputs: "4", knows=lambda view: "add" in view.instruction)
        >>> lm = dspy.LM("fake/task-model", engine=engine, cache=False)
        >>> with dspy.context(lm=lm):
        ...     dspy.Predict("question -> answer")(question="2+2?").answer
        'unsure'
        >>> engine.calls[0].knew
        False
    """

    def __init__(
        self,
        *,
        solve: Solver,
        knows: Callable[[PromptView], bool],
        wrong: Solver | None = None,
        model: str = RESPONSE_MODEL,
    ) -> None:
        for label, value in (("solve", solve), ("knows", knows), ("wrong", wrong)):
            if value is not None and not callable(value):
                raise TypeError(
                    f"`{label}` must be callable, but got {type(value).__name__}. "
                    "Pass a function, e.g. knows=rule_in_instruction('reverse the word')."
                )
        self.solve = solve
        self.knows = knows
        self.wrong = wrong or _default_wrong
        self.model = model
        self._lock = threading.Lock()
        self._calls: list[SimulatedCall] = []
        self._received = 0

    #: ``complete`` scores given text (``Config.extensions={"score_continuation": text}``), as the llama.cpp
    #: engine does: the text gets probability ``LIKELY`` when its fields are the ones this model would write,
    #: else ``UNLIKELY``.
    supports_continuation_scoring = True
    LIKELY, UNLIKELY = 0.9, 0.05

    def complete(self, request: Request) -> Response:
        """Answer one request: parse it, ask ``knows``, reply with every output field (or score given text)."""
        with self._lock:
            self._received += 1
        view = parse_prompt(request)
        knew = bool(self.knows(view))
        answer = self.solve(view.inputs) if knew else self.wrong(view.inputs)
        fields = _output_values(view, answer)
        reply = format_json_reply(fields) if view.json_mode else format_chat_reply(fields)
        given = (request.config.extensions or {}).get(CONTINUATION)
        with self._lock:
            self._calls.append(SimulatedCall(view=view, knew=knew, answer=answer, reply=given or reply,
                                             request=request))
        if given is not None:
            written = {name: str(value).strip() for name, value in fields.items()}
            same = {name: value.strip() for name, value in parse_field_blocks(given).items()} == written
            logprob = math.log(self.LIKELY if same else self.UNLIKELY)
            response = make_response(request, given, model=self.model)
            return dataclasses.replace(response, logprobs=(TokenLogprob(token=given, logprob=logprob),))
        return make_response(request, reply, model=self.model)

    def stream(self, request: Request) -> Iterator[Any]:
        """Stream the reply to one request (as canonical events)."""
        return stream_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SimulatedTaskEngine:
        # An engine is a borrowed resource: copies of an LM (or a program holding one) share it.
        return self

    @property
    def calls(self) -> list[SimulatedCall]:
        """A copy of every answered call, in completion order."""
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        """How many requests the engine has received."""
        with self._lock:
            return self._received

    @property
    def known_count(self) -> int:
        """How many answered calls had ``knows(view)`` true."""
        return sum(call.knew for call in self.calls)

    @property
    def requests(self) -> list[Request]:
        """The raw requests of the answered calls."""
        return [call.request for call in self.calls]


def simulated_task_lm(
    *,
    solve: Solver,
    knows: Callable[[PromptView], bool],
    wrong: Solver | None = None,
    name: str = DEFAULT_TASK_MODEL,
) -> dspy.LM:
    """Build a ``dspy.LM`` on a `SimulatedTaskEngine` (uncached; the engine is ``lm.engine``).

    Args:
        solve: ``(inputs) -> answer``: the correct answer (or a mapping of output fields).
        knows: ``(PromptView) -> bool``: whether the prompt carries what the model needs.
        wrong: ``(inputs) -> answer`` when it does not. Defaults to the fixed string "unsure".
        name: The LM's model name. Defaults to "fake/task-model".

    Returns:
        The LM.

    Example:
        >>> from dspy_icl_opt.testing import rule_in_demos
        >>> lm = simulated_task_lm(solve=lambda inputs: "yes", knows=rule_in_demos("yes"))
        >>> lm.engine.call_count
        0
    """
    engine = SimulatedTaskEngine(solve=solve, knows=knows, wrong=wrong)
    return make_fake_lm(engine, name=name)


def _default_wrong(inputs: Inputs) -> str:
    return DEFAULT_WRONG_ANSWER


def _instruction(system: str) -> str:
    """The signature instruction: everything after the last "your objective is:", dedented."""
    matches = list(OBJECTIVE_MARKER.finditer(system))
    if not matches:
        return system.strip()
    return textwrap.dedent(system[matches[-1].end() :].lstrip("\n").rstrip()).strip()


def _field_types(system: str, kind: str) -> dict[str, str]:
    """Field name -> printed type from the "Your <kind> fields are:" section of the system text."""
    section = re.search(FIELD_SECTION.format(kind=kind), system, re.DOTALL)
    if not section:
        return {}
    return {match.group(1): match.group(2) for match in FIELD_LINE.finditer(section.group(1))}


def _demos(history: list[tuple[str, str]]) -> tuple[Demo, ...]:
    """Pair each user message with the assistant message right after it."""
    demos = []
    for (role, text), (next_role, next_text) in pairwise(history):
        if role == "user" and next_role == "assistant":
            inputs, outputs = parse_field_blocks(text), parse_field_blocks(next_text)
            demos.append(Demo(inputs=_supplied(inputs), outputs=_supplied(outputs)))
    return tuple(demos)


def _supplied(fields: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in fields.items() if not str(value).startswith(NOT_SUPPLIED_PREFIX)}


def _output_values(view: PromptView, answer: Any) -> dict[str, Any]:
    """Every output field of the view, in order: the answer, reasoning, then placeholders."""
    given = dict(answer) if isinstance(answer, Mapping) else {view.answer_field: answer}
    values: dict[str, Any] = {}
    for name in view.output_fields:
        if name in given:
            values[name] = given[name]
        elif name == REASONING_FIELD:
            values[name] = REASONING_TEXT
        else:
            values[name] = _placeholder(view.output_types.get(name, "str"))
    return values


def _placeholder(type_name: str) -> str:
    """A value DSPy can parse for a field of the printed type."""
    base = type_name.split("[", 1)[0].strip()
    if base in TYPE_PLACEHOLDERS:
        return TYPE_PLACEHOLDERS[base]
    if base in CONTAINER_PLACEHOLDERS:
        return CONTAINER_PLACEHOLDERS[base]
    literal = LITERAL_VALUE.search(type_name)
    if literal:
        return literal.group(2)
    return PLACEHOLDER_TEXT
