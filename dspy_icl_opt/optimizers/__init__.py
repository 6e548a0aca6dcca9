"""The prompt-optimization strategies, one module each (imported lazily)."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "OPRO": "dspy_icl_opt.optimizers.opro",
    "APO": "dspy_icl_opt.optimizers.apo",
    "ABO": "dspy_icl_opt.optimizers.abo",
    "PromptAgent": "dspy_icl_opt.optimizers.promptagent",
    "APE": "dspy_icl_opt.optimizers.ape",
    "IterativeAPE": "dspy_icl_opt.optimizers.ape",
    "InstructionDemoSearch": "dspy_icl_opt.optimizers.joint",
    "Sequential": "dspy_icl_opt.optimizers.sequential",
    "SoftPromptTuner": "dspy_icl_opt.optimizers.soft_prompt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
