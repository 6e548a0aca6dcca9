"""Sequential: optimizers chained in one compile, in either order, with every child's report kept."""

from __future__ import annotations

import dspy
import pytest
from dspy.teleprompt import LabeledFewShot

from dspy_icl_opt.demos import DemoSelector
from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.optimizers.sequential import Sequential
from dspy_icl_opt.testing import planted_rule_task, scripted_lm, simulated_task_lm
from tests.contract.suite import rule_stating_responder


@pytest.fixture
def task():
    return planted_rule_task("reverse", train_size=12, val_size=12, seed=2)


def half_and_half_lm(task):
    """Even-length words need the rule in the instruction; odd-length ones a teaching demo (half the trainset).
    Instructions alone or demos alone reach about half; only both together reach 1.0."""
    teachers = {ex.question for ex in task.train[::2]}

    def knows(view):
        if len(view.inputs.get("question", "")) % 2 == 0:
            return task.rule in view.instruction.lower()
        return any(demo.inputs.get("question") in teachers for demo in view.demos)

    return simulated_task_lm(solve=task.solve, knows=knows), teachers


def make_opro(task, lm):
    return OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(rule_stating_responder(task.rule)), steps=1,
                candidates_per_step=2, progress=False)


def make_selector(task, lm):
    return DemoSelector(task.metric, task_model=lm, max_demos=2, n_trials=8, pools=("labeled",), progress=False)


@pytest.mark.parametrize("order", ["opro_first", "demos_first"])
def test_chain_keeps_instructions_and_demos_in_either_order(task, order):
    lm, teachers = half_and_half_lm(task)
    opro, selector = make_opro(task, lm), make_selector(task, lm)
    chain = Sequential([opro, selector] if order == "opro_first" else [selector, opro])
    student = task.program()
    program = chain.compile(student, trainset=task.train, valset=task.val)

    assert task.rule in program.signature.instructions.lower()
    assert any(d["question"] in teachers for d in program.demos if "question" in d)
    assert student.demos == [] and task.rule not in student.signature.instructions.lower()
    assert chain.reports_ == [child.report_ for child in chain.optimizers]
    assert [r.optimizer for r in chain.reports_] == [type(c).__name__ for c in chain.optimizers]
    final = chain.reports_[-1].best_scores["val"]
    assert final == 1.0 and chain.reports_[0].best_scores["val"] < 1.0  # neither stage alone gets there
    if order == "opro_first":  # DemoSelector left OPRO's instruction exactly as it was
        assert program.signature.instructions == chain.programs_[0].signature.instructions
    else:  # OPRO kept the demos DemoSelector chose
        assert program.demos == chain.programs_[0].demos


def test_dspy_teleprompters_take_part_and_log_dirs_are_per_child(task, tmp_path):
    lm, _ = half_and_half_lm(task)
    chain = Sequential([LabeledFewShot(k=3), make_opro(task, lm)])
    program = chain.compile(task.program(), trainset=task.train, valset=task.val, log_dir=tmp_path)
    assert len(program.demos) == 3
    assert chain.reports_[0] is None and chain.reports_[1].optimizer == "OPRO"
    assert (tmp_path / "1-OPRO" / "report.json").exists() and not (tmp_path / "0-LabeledFewShot").exists()


def test_bad_chains_are_named():
    with pytest.raises(ValueError, match="non-empty list"):
        Sequential([])
    with pytest.raises(TypeError, match=r"optimizers\[1\]"):
        Sequential([LabeledFewShot(k=1), "OPRO"])
    with pytest.raises(TypeError, match=r"optimizers\[0\]"):
        Sequential([DemoSelector])  # the class, not an instance


def test_a_chain_of_one_is_that_optimizer(task):
    lm, _ = half_and_half_lm(task)
    chain = Sequential([make_selector(task, lm)])
    program = chain.compile(task.program(), trainset=task.train, valset=task.val)
    assert chain.programs_ == [program]
    assert isinstance(program, dspy.Module)


def test_chain_of_dspy_teleprompters_gets_an_uncompiled_student_at_each_step(task):
    from dspy.teleprompt import BootstrapFewShot

    lm, _ = half_and_half_lm(task)
    chain = Sequential([BootstrapFewShot(metric=task.metric, max_bootstrapped_demos=1, max_labeled_demos=1),
                        BootstrapFewShot(metric=task.metric, max_bootstrapped_demos=1, max_labeled_demos=2)])
    with dspy.context(lm=lm):
        program = chain.compile(task.program(), trainset=task.train)
    assert program._compiled and len(chain.programs_) == 2
