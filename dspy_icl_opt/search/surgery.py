"""Program surgery: read and write each named predictor's instruction and demos without touching the student.

A :class:`ProgramState` is the part of a program that optimizers change: per named predictor, its
instruction (possibly placed, see :mod:`.placement`) and its few-shot demos. States are plain,
hashable, JSON-able data, so they can key the score cache and be written into reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dspy

from dspy_icl_opt.search.placement import Position, compose_instructions, split_instructions


def _jsonable(value: Any) -> Any:
    """A JSON-able copy of a demo value (DSPy Examples, pydantic models and the like become text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    return str(value)


def demo_to_dict(demo: Any) -> dict[str, Any]:
    """A demo (``dspy.Example`` or mapping) as a plain dict without DSPy's private keys."""
    data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {k: _jsonable(v) for k, v in data.items() if not str(k).startswith("dspy_")}


#: The description of a reasoning field added to a predictor that had none (ChainOfThought's wording).
REASONING_DESC = "Think step by step in order to produce the outputs; follow the instruction's steps."


@dataclass(frozen=True)
class PredictorState:
    """What an optimizer may change in one predictor.

    Args:
        instruction: the instruction text.
        demos: few-shot demos, each a dict of field name to value.
        position: where the instruction sits (``system``, ``q_end`` or ``a_begin``).
        base_instruction: the instruction kept in the system message when ``position`` is not ``system``.
        reasoning_field: the name of a text output field added before the predictor's outputs (as
            ChainOfThought adds ``reasoning``), so that a plain Predict has room to work step by step;
            empty: the signature's fields are kept as they are.
    """

    instruction: str
    demos: tuple[dict[str, Any], ...] = ()
    position: Position = "system"
    base_instruction: str = ""
    reasoning_field: str = ""

    def with_instruction(self, instruction: str, position: Position | None = None) -> PredictorState:
        return replace(self, instruction=instruction, position=position or self.position)

    def with_demos(self, demos: list[Any] | tuple[Any, ...]) -> PredictorState:
        return replace(self, demos=tuple(demo_to_dict(d) for d in demos))

    def with_reasoning_field(self, name: str) -> PredictorState:
        return replace(self, reasoning_field=name)

    def to_dict(self) -> dict[str, Any]:
        data = {"instruction": self.instruction, "demos": list(self.demos), "position": self.position,
                "base_instruction": self.base_instruction}
        if self.reasoning_field:  # only when set, so the keys of every other state stay as they were
            data["reasoning_field"] = self.reasoning_field
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictorState:
        return cls(data["instruction"], tuple(data.get("demos", ())), data.get("position", "system"),
                   data.get("base_instruction", ""), data.get("reasoning_field", ""))


@dataclass(frozen=True)
class ProgramState:
    """The optimizable state of a whole program: one :class:`PredictorState` per named predictor."""

    predictors: tuple[tuple[str, PredictorState], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, mapping: Mapping[str, PredictorState]) -> ProgramState:
        return cls(tuple(sorted(mapping.items())))

    def as_dict(self) -> dict[str, PredictorState]:
        return dict(self.predictors)

    def __getitem__(self, name: str) -> PredictorState:
        return self.as_dict()[name]

    def names(self) -> list[str]:
        return [name for name, _ in self.predictors]

    def replace(self, name: str, state: PredictorState) -> ProgramState:
        mapping = self.as_dict()
        if name not in mapping:
            raise KeyError(f"No predictor named {name!r}; the program has {sorted(mapping)}.")
        mapping[name] = state
        return ProgramState.of(mapping)

    def to_dict(self) -> dict[str, Any]:
        return {name: s.to_dict() for name, s in self.predictors}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgramState:
        return cls.of({name: PredictorState.from_dict(s) for name, s in data.items()})

    def key(self) -> str:
        """A stable digest of the state: the score cache's key for "program state"."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def named_predictors(program: dspy.Module) -> list[tuple[str, dspy.Predict]]:
    """The program's predictors with their dotted names, in DSPy's order.

    Raises:
        ValueError: when the program has no predictor to optimize.
    """
    if not isinstance(program, dspy.Module):
        raise TypeError(
            f"`student` must be a dspy.Module, but got {type(program).__name__}. "
            "Wrap your predictors in a dspy.Module (or pass a dspy.Predict directly)."
        )
    pairs = list(program.named_predictors())
    if not pairs:
        raise ValueError(
            f"`student` must contain at least one dspy.Predict (or ChainOfThought), but "
            f"{type(program).__name__} has none. Add a predictor as an attribute in __init__."
        )
    return pairs


def read_state(program: dspy.Module) -> ProgramState:
    """The current instructions and demos of every predictor."""
    states = {}
    for name, predictor in named_predictors(program):
        base, text, position = split_instructions(predictor.signature.instructions)
        demos = tuple(demo_to_dict(d) for d in predictor.demos)
        states[name] = PredictorState(text, demos, position, base if position != "system" else "")
    return ProgramState.of(states)


def apply_state(program: dspy.Module, state: ProgramState) -> dspy.Module:
    """A deep copy of ``program`` carrying ``state``; ``program`` itself is not touched."""
    copy = program.deepcopy()
    wanted = state.as_dict()
    for name, predictor in named_predictors(copy):
        if name not in wanted:
            continue
        pstate = wanted[name]
        base = pstate.base_instruction or predictor.signature.instructions
        if pstate.position == "system":
            instructions = pstate.instruction
        else:
            instructions = compose_instructions(split_instructions(base)[0], pstate.instruction, pstate.position)
        signature = predictor.signature.with_instructions(instructions)
        if pstate.reasoning_field and pstate.reasoning_field not in signature.output_fields:
            signature = signature.prepend(pstate.reasoning_field, dspy.OutputField(desc=REASONING_DESC), type_=str)
        predictor.signature = signature
        predictor.demos = [dspy.Example(**demo) for demo in pstate.demos]
    return copy


def signature_summary(predictor: dspy.Predict) -> dict[str, Any]:
    """Fields and their descriptions, for meta-prompts."""
    sig = predictor.signature

    def fields(items: Mapping[str, Any]) -> list[dict[str, str]]:
        return [{"name": n, "description": (f.json_schema_extra or {}).get("desc", "")} for n, f in items.items()]

    return {"instructions": sig.instructions, "inputs": fields(sig.input_fields), "outputs": fields(sig.output_fields)}


def describe_signature(predictor: dspy.Predict) -> str:
    """A short human-readable description of a predictor's signature for meta-prompts."""
    summary = signature_summary(predictor)

    def line(f: dict[str, str]) -> str:
        desc = f["description"]
        return f"- {f['name']}" + (f": {desc}" if desc and not desc.startswith("${") else "")

    inputs = "\n".join(line(f) for f in summary["inputs"])
    outputs = "\n".join(line(f) for f in summary["outputs"])
    return f"Inputs:\n{inputs}\nOutputs:\n{outputs}"
