"""Fixtures for the DemoSelector tests: a task only two specific demos can teach, a kNN task, log capture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dspy
import pytest

from dspy_icl_opt.testing import planted_rule_task, simulated_task_lm, toy_metric


@dataclass
class TwoTeachers:
    """Reverse-the-word, but the simulated model only learns it from two specific training demos:
    ``even`` teaches words of even length, ``odd`` words of odd length (each alone gives about half)."""

    train: list[dspy.Example]
    val: list[dspy.Example]
    even: str
    odd: str

    def knows(self, view: Any) -> bool:
        shown = {demo.inputs.get("question") for demo in view.demos}
        needed = self.even if len(view.inputs.get("question", "")) % 2 == 0 else self.odd
        return needed in shown

    def lm(self) -> dspy.LM:
        return simulated_task_lm(solve=lambda inputs: inputs["question"][::-1], knows=self.knows)

    @staticmethod
    def program(instructions: str = "Answer the question.") -> dspy.Predict:
        return dspy.Predict(dspy.Signature("question -> answer", instructions))

    metric = staticmethod(toy_metric)


@pytest.fixture
def two_teachers() -> TwoTeachers:
    task = planted_rule_task("reverse", train_size=12, val_size=16, seed=0)
    return TwoTeachers(task.train, task.val, even=task.train[5].question, odd=task.train[9].question)


GROUPS = ("zor", "mip", "kal", "tev", "bun", "ghe", "dax", "wol")


@dataclass
class NeighbourTask:
    """Each word belongs to a group (its first three letters); the model answers a word right only when
    a demo of the same group is shown. Eight groups, at most two demos: only kNN can cover them all."""

    train: list[dspy.Example]
    val: list[dspy.Example]

    @staticmethod
    def knows(view: Any) -> bool:
        group = view.inputs.get("question", "")[:3]
        return any(demo.inputs.get("question", "").startswith(group) for demo in view.demos)

    def lm(self) -> dspy.LM:
        return simulated_task_lm(solve=lambda inputs: inputs["question"][:3], knows=self.knows)

    @staticmethod
    def program() -> dspy.Predict:
        return dspy.Predict(dspy.Signature("question -> answer", "Name the word's group."))

    metric = staticmethod(toy_metric)


@pytest.fixture
def neighbour_task() -> NeighbourTask:
    def example(word: str) -> dspy.Example:
        return dspy.Example(question=word, answer=word[:3]).with_inputs("question")

    train = [example(f"{g}{suffix}") for g in GROUPS for suffix in ("ana", "ila")]
    val = [example(f"{g}{suffix}") for g in GROUPS for suffix in ("oto",)]
    return NeighbourTask(train, val)


@pytest.fixture
def warnings_logged(caplog):
    """Messages dspy_icl_opt logs at WARNING or above during the test (read when used)."""
    caplog.set_level("WARNING", logger="dspy_icl_opt")

    class Messages:
        def _all(self):
            return [r.getMessage() for r in caplog.records if r.levelno >= 30]

        def __iter__(self):
            return iter(self._all())

        def __len__(self):
            return len(self._all())

        def __getitem__(self, i):
            return self._all()[i]

        def __eq__(self, other):
            return self._all() == other

        def __repr__(self):
            return repr(self._all())

    return Messages()
