"""dspy-icl-opt: in-context-learning prompt optimizers for DSPy.

Strategies are DSPy teleprompters: ``OPRO``, ``APO`` (ProTeGi), ``ABO``, ``APE`` and ``IterativeAPE``,
``PromptAgent``, the Optuna-searched ``DemoSelector`` and ``InstructionDemoSearch`` (instructions and
demos together, after MIPROv2); ``Sequential`` chains them. Each
``compile(student, *, trainset, valset=None)`` returns an optimized copy of the program and leaves an
``OptimizationReport`` in ``.report_``.

Example:
    >>> import dspy_icl_opt
    >>> sorted(dspy_icl_opt.__all__)[:3]
    ['ABO', 'APE', 'APO']
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from dspy_icl_opt.optimizers import _EXPORTS as _STRATEGIES  # noqa: E402 - lazy map, imports nothing heavy

_EXPORTS = {
    **_STRATEGIES,
    "DemoSelector": "dspy_icl_opt.demos",
    "Budget": "dspy_icl_opt.search.budget",
    "OptimizationReport": "dspy_icl_opt.search.report",
    "PlacementAdapter": "dspy_icl_opt.search.placement",
    "resolve_lm": "dspy_icl_opt.lm",
    "with_dynamic_demos": "dspy_icl_opt.demos",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
