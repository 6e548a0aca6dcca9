"""The demo's closing lines: what changed in the program, why it was kept, and how sure the held-out gain is."""

from __future__ import annotations

import doctest

import pytest

from dspy_icl_opt.demos.dynamic import selection_demo
from dspy_icl_opt.pipeline import explain
from dspy_icl_opt.pipeline.explain import held_out_gain, what_changed, why_kept
from dspy_icl_opt.search.report import CandidateRecord, OptimizationReport
from dspy_icl_opt.search.surgery import PredictorState, ProgramState

DEMO = {"question": "q", "answer": "a"}
START = ProgramState.of({"self": PredictorState("Answer the question.")})


def report_with(choice: dict | None, optimizer: str = "OPRO") -> OptimizationReport:
    report = OptimizationReport(optimizer=optimizer, params={}, seed=0)
    if choice is not None:
        report.extra["final_choice"] = choice
    return report


def contenders(start_val: float, rows: list[tuple[int, float, float, float]], chosen: int, n: int = 20) -> dict:
    table = [{"candidate": 0, "val": start_val, "gain": 0.0, "se": 0.0, "passed": False}]
    table += [{"candidate": c, "val": v, "gain": g, "se": se, "passed": c == chosen} for c, v, g, se in rows]
    return {"rule": "paired", "examples": n, "start": 0, "contenders": table, "chosen": chosen}


def test_the_module_example_runs():
    assert doctest.testmod(explain).failed == 0


def test_a_new_instruction_is_quoted_and_long_ones_are_cut():
    final = START.replace("self", START["self"].with_instruction("Give the date as MM/DD/YYYY. " * 10))
    text = what_changed(START, final)
    assert text.startswith('it still shows no worked example; the instruction is now "Give the date as MM/DD/YYYY.')
    assert text.endswith('..."') and len(text) < 220


def test_demos_replaced_per_call_and_the_program_returned_as_given():
    dynamic = START.replace("self", START["self"].with_demos(
        [selection_demo(mode="knn", k=3, order="as_selected"), *[DEMO] * 8]))
    assert what_changed(START, dynamic).startswith("the program now picks 3 of 8 worked examples per question;")
    assert what_changed(START, START) == "nothing: the program is returned as it was given"
    two = ProgramState.of({"a": PredictorState("x"), "b": PredictorState("y")})
    changed = two.replace("b", two["b"].with_demos([DEMO]))
    assert what_changed(two, changed) == ("predictor `b`: the program now shows 1 worked example; the instruction "
                                          "is unchanged")


def test_demoselectors_choice_is_named_from_the_returned_candidate():
    final = START.replace("self", START["self"].with_demos([DEMO] * 3))
    report = report_with(None, "DemoSelector")
    report.candidates = [CandidateRecord(id=0, step=0, origin="trial", state=final.to_dict(),
                                         meta={"choice": {"self": "k=3 bootstrapped/mmr as_selected"}})]
    report.best_candidate = 0
    assert what_changed(START, final, report) == ("the program now shows 3 worked examples (k=3 from the bootstrapped "
                                                  "pool, picked by mmr, order as_selected); the instruction is "
                                                  "unchanged")


def test_an_indexed_candidate_set_and_permutation_are_named_in_words():
    final = START.replace("self", START["self"].with_demos([DEMO] * 2))
    report = report_with(None, "DemoSelector")
    report.candidates = [CandidateRecord(id=0, step=0, origin="trial", state=final.to_dict(),
                                         meta={"choice": {"self": "k=2 labeled/random#3 permutation#1"}})]
    report.best_candidate = 0
    assert what_changed(START, final, report).startswith(
        "the program now shows 2 worked examples (k=2 from the labeled pool, candidate set 3 drawn at random, "
        "order permutation 1)")


def test_the_rule_quoted_is_the_one_the_choice_applied():
    choice = contenders(0.4, [(1, 0.8, 0.4, 0.1)], chosen=1)
    assert "by at least 1.0 standard errors" in why_kept(report_with(choice))
    assert "by at least 2.0 standard errors" in why_kept(report_with(dict(choice, z=2.009)))


def test_why_a_finalist_won_and_why_the_start_was_kept():
    won = why_kept(report_with(contenders(0.4, [(1, 0.8, 0.4, 0.1)], chosen=1)))
    assert won.startswith("it scored 0.80 on the 20 validation examples against the start's 0.40, a paired gain of "
                          "+0.40 (4.0 standard errors;")
    kept = why_kept(report_with(contenders(0.4, [(1, 0.5, 0.1, 0.1), (2, 0.45, 0.05, 0.1)], chosen=0)))
    assert kept.startswith("no candidate beat the start surely enough on the 20 validation examples (the best other "
                           "scored 0.50, the start 0.40;")
    assert kept.endswith("so the program was kept as given")
    assert "without validating" in why_kept(report_with(None, "LabeledFewShot"))


@pytest.mark.parametrize(("before", "after", "expected"), [
    ({"score": 0.4, "n": 50}, {"score": 0.8, "n": 50}, "+40.0 points on 50 held-out examples (standard error about 8.9"),
    ({"score": 0.5, "n": 50}, {"score": 0.5, "n": 50}, "+0.0 points on 50 held-out examples (standard error about 10.0"),
])
def test_the_held_out_gain_carries_its_standard_error(before, after, expected):
    assert held_out_gain(before, after).startswith(expected)


def test_no_gain_line_without_both_evaluations():
    assert held_out_gain(None, {"score": 1.0, "n": 5}) is None
    assert held_out_gain({"score": 0.0, "n": 0}, {"score": 1.0, "n": 5}) is None
