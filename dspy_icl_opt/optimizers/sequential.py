"""Sequential: chain optimizers in one ``compile``, each one optimizing the previous one's output.

``Sequential([OPRO(...), DemoSelector(...)])`` first writes instructions, then searches demos for the
program that carries them (``DemoSelector`` leaves instructions alone, and OPRO keeps the demos it
was given, so either order composes). Any DSPy teleprompter can take part; ``valset``, ``log_dir``
and ``resume`` reach the children whose ``compile`` accepts them. Each child keeps its own budget.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from dspy_icl_opt._log import logger
from dspy_icl_opt.search.report import OptimizationReport


class Sequential(Teleprompter):
    """Run optimizers one after another; the output of each is the student of the next.

    Args:
        optimizers: the teleprompters to chain, in order (ours or DSPy's).

    After ``compile``, ``reports_`` holds each child's :class:`OptimizationReport` (``None`` for a
    child that keeps none) and ``programs_`` the program after each child.

    Example:
        >>> from dspy.teleprompt import LabeledFewShot
        >>> chain = Sequential([LabeledFewShot(k=2), LabeledFewShot(k=1)])
        >>> len(chain.optimizers)
        2
    """

    def __init__(self, optimizers: Sequence[Teleprompter]) -> None:
        super().__init__()
        if isinstance(optimizers, (str, bytes)) or not isinstance(optimizers, Sequence) or not optimizers:
            raise ValueError(f"`optimizers` must be a non-empty list of optimizers, but got {optimizers!r}. "
                             "Pass e.g. Sequential([OPRO(metric, ...), DemoSelector(metric, ...)]).")
        for i, optimizer in enumerate(optimizers):
            if isinstance(optimizer, type) or not callable(getattr(optimizer, "compile", None)):
                raise TypeError(f"`optimizers[{i}]` must have a compile(student, *, trainset, ...) method, but got "
                                f"{optimizer!r}. Pass an optimizer instance, not its class or name.")
        self.optimizers = list(optimizers)
        self.reports_: list[OptimizationReport | None] = []
        self.programs_: list[dspy.Module] = []

    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example] | None = None,
                resume: bool | None = None, log_dir: str | Path | None = None) -> dspy.Module:
        """Compile ``student`` with every optimizer in turn and return the last program.

        Args:
            student: the program (never modified).
            trainset: passed to every child.
            valset: passed to the children that accept it.
            resume: passed to the children that accept it.
            log_dir: each child that accepts one gets its own subfolder ``<i>-<ClassName>``.
        """
        self.reports_, self.programs_ = [], []
        program = student
        for i, optimizer in enumerate(self.optimizers):
            name = type(optimizer).__name__
            logger.info("Sequential: step {}/{}: {}", i + 1, len(self.optimizers), name)
            options = {"valset": valset, "resume": resume,
                       "log_dir": None if log_dir is None else Path(log_dir) / f"{i}-{name}"}
            kwargs = {k: v for k, v in options.items() if v is not None and _accepts(optimizer.compile, k)}
            if i > 0:  # DSPy's own teleprompters refuse a compiled student; the chain's input is a fresh start
                program = program.deepcopy()
                program._compiled = False
            program = optimizer.compile(program, trainset=trainset, **kwargs)
            self.programs_.append(program)
            self.reports_.append(getattr(optimizer, "report_", None))
        return program


def _accepts(method: Any, name: str) -> bool:
    """Whether ``method`` names ``name`` as a parameter (a bare ``**kwargs`` is not trusted with it)."""
    return name in inspect.signature(method).parameters
