"""Where an instruction sits in the prompt (OPRO's instruction position, in DSPy terms).

``system``: the signature's instructions, which DSPy's adapters put in the system message (the
default, and the only position every adapter understands).
``q_end``: after the inputs, at the end of the user message (the paper's "Q_end").
``a_begin``: as the start of the answer (the paper's "A_begin"); chat APIs cannot prefill the
assistant turn, so the user message ends by asking that the first output field (the reasoning,
for ChainOfThought) begins with this text.

A placed instruction is stored *inside* the signature's instructions, after a marker line, so a
compiled program saved with ``program.save(...)`` keeps it. :class:`PlacementAdapter` moves the
placed text where it belongs; without that adapter the text simply stays in the system message.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import dspy
from dspy.adapters.chat_adapter import ChatAdapter
from dspy.adapters.json_adapter import JSONAdapter

Position = Literal["system", "q_end", "a_begin"]
POSITIONS: tuple[Position, ...] = ("system", "q_end", "a_begin")

_MARKER = "[[ instruction placed at: {position} ]]"
_MARKER_RE = re.compile(r"\n*\[\[ instruction placed at: (q_end|a_begin) \]\]\n")


def compose_instructions(base: str, text: str, position: Position) -> str:
    """The signature instructions that carry ``text`` at ``position`` (``base`` stays for the others)."""
    if position == "system":
        return text
    return f"{base.rstrip()}\n\n{_MARKER.format(position=position)}\n{text.strip()}"


def split_instructions(instructions: str) -> tuple[str, str, Position]:
    """Inverse of :func:`compose_instructions`: ``(base, text, position)``."""
    match = _MARKER_RE.search(instructions)
    if not match:
        return instructions, instructions, "system"
    base = instructions[: match.start()]
    text = instructions[match.end():]
    return base, text, match.group(1)  # type: ignore[return-value]


class _Placement:
    """Moves a placed instruction out of the system message; mixed into an adapter class."""

    def format(self, signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        base, text, position = split_instructions(signature.instructions)
        if position == "system":
            return super().format(signature, demos, inputs)  # type: ignore[misc]
        messages = super().format(signature.with_instructions(base), demos, inputs)  # type: ignore[misc]
        last = messages[-1]
        if position == "q_end":
            last["content"] = f"{last['content']}\n\n{text}"
        else:
            first_field = next(iter(signature.output_fields))
            last["content"] = f"{last['content']}\n\nBegin the `{first_field}` field with these words: {text}"
        return messages


def task_adapter() -> Any:
    """The adapter a task-model call uses: the one in ``dspy.settings``, else :class:`PlacementAdapter` (which
    reads every instruction position; ChatAdapter's format otherwise)."""
    return dspy.settings.adapter or PlacementAdapter()


class PlacementJSONAdapter(_Placement, JSONAdapter):
    """DSPy's JSONAdapter, honouring instruction positions (PlacementAdapter's parse-failure fallback)."""


class PlacementAdapter(_Placement, ChatAdapter):
    """A ChatAdapter that honours instruction positions written by :func:`compose_instructions`.

    Its fallback after a parse failure is :class:`PlacementJSONAdapter`, so a retried call keeps
    the instruction where it was scored.

    Example:
        >>> import dspy
        >>> with dspy.context(adapter=PlacementAdapter()):
        ...     pass  # run a program compiled with a q_end or a_begin instruction
    """

    def _make_json_adapter_fallback(self) -> JSONAdapter:
        return PlacementJSONAdapter(use_native_function_calling=self.use_native_function_calling,
                                    parallel_tool_calls=self.parallel_tool_calls)
