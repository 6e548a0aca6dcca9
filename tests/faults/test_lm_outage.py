"""Item 1 of issue 17: an LM outage is never journaled as results; a resume after recovery finishes identically."""

from __future__ import annotations

import json

import pytest

from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.search.faults import RunInterrupted, is_fault
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from dspy_icl_opt.testing.faulty import faulty_lm
from tests.contract.suite import rule_stating_responder, state_of


def _task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)


def _opro(task, task_lm, prompt_lm, log_dir=None, **kwargs):
    opt = OPRO(task.metric, task_model=task_lm, prompt_model=prompt_lm, steps=2, candidates_per_step=2, seed=0,
               progress=False, log_dir=log_dir, **kwargs)
    return opt


def _run(task, task_lm, prompt_lm, log_dir=None):
    opt = _opro(task, task_lm, prompt_lm, log_dir)
    program = opt.compile(task.program(), trainset=task.train, valset=task.val)
    return opt, program


def _journal(path):
    return [json.loads(line) for line in (path / "journal.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("role", "die_after"), [("task", 0), ("task", 3), ("task", 11), ("task", 25),
                                                  ("prompt", 0), ("prompt", 1), ("prompt", 3)])
def test_outage_then_resume_ends_like_an_uninterrupted_run(tmp_path, role, die_after):
    task = _task()
    healthy_task, healthy_prompt = task.lm(), scripted_lm(rule_stating_responder(task.rule))
    full, full_program = _run(task, healthy_task, healthy_prompt)

    task_engine, prompt_engine = task.lm().engine, scripted_lm(rule_stating_responder(task.rule)).engine
    dying = {"task": task_engine, "prompt": prompt_engine}
    lms = {r: faulty_lm(e, name=f"fake/{r}", die_after=die_after if r == role else None) for r, e in dying.items()}
    opt = _opro(task, lms["task"], lms["prompt"], tmp_path)
    with pytest.raises(RunInterrupted, match=f"The {role} model failed 3 time"):
        opt.compile(task.program(), trainset=task.train, valset=task.val)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] is True and report["finished"] is False
    # Nothing failed is journaled: no score with an error, no empty prompt-model answer.
    records = _journal(tmp_path) if (tmp_path / "journal.jsonl").exists() else []
    assert all(r.get("error") is None for r in records if r["kind"] == "score")
    assert all(r.get("outputs") is not None or r.get("incomplete") for r in records if r["kind"] == "ask")
    assert report["counters"]["program_errors"] == report["counters"]["prompt_model_errors"] == 0

    lms[role].engine.recover()
    resumed = _opro(task, lms["task"], lms["prompt"], tmp_path)
    program = resumed.compile(task.program(), trainset=task.train, valset=task.val)
    assert resumed.report_.finished and not resumed.report_.interrupted
    assert resumed.report_.best_state == full.report_.best_state
    assert resumed.report_.best_scores == full.report_.best_scores
    assert state_of(program) == state_of(full_program)
    # The faults before the outage stay in the resumed run's report (journaled with the unit they stopped).
    assert report["counters"]["lm_faults"] > 0
    assert resumed.report_.counters.lm_faults == report["counters"]["lm_faults"]
    # No successful call was repeated: the answered calls of both parts add up to one healthy run.
    assert task_engine.call_count == healthy_task.engine.call_count
    assert prompt_engine.call_count == healthy_prompt.engine.call_count


def test_blips_below_the_threshold_are_retried_not_scored(tmp_path):
    task = _task()
    full, _ = _run(task, task.lm(), scripted_lm(rule_stating_responder(task.rule)))
    flaky = faulty_lm(task.lm().engine, fail_calls={2, 5, 9, 10, 17})
    opt, _ = _run(task, flaky, scripted_lm(rule_stating_responder(task.rule)), tmp_path)
    assert opt.report_.finished and opt.report_.best_state == full.report_.best_state
    assert opt.report_.best_scores == full.report_.best_scores
    assert opt.report_.counters.lm_faults == 5 and opt.report_.counters.program_errors == 0
    assert opt.report_.spent["task"].failed_calls == 5
    assert opt.report_.spent["task"].calls == full.report_.spent["task"].calls  # faults are not charged


@pytest.mark.parametrize("threads", [1, 4])
def test_outage_with_threads_stops_cleanly(tmp_path, threads):
    task = _task()
    lm = faulty_lm(task.lm().engine, die_after=7)
    opt = OPRO(task.metric, task_model=lm, prompt_model=scripted_lm(rule_stating_responder(task.rule)), steps=2,
               candidates_per_step=2, progress=False, num_threads=threads, log_dir=tmp_path)
    with pytest.raises(RunInterrupted) as info:
        opt.compile(task.program(), trainset=task.train, valset=task.val)
    assert info.value.report is opt.report_ and opt.report_.interrupted
    # Once the outage is declared no further call reaches the server.
    assert lm.engine.faults <= 3 + threads


def test_parse_failures_stay_outcomes():
    from dspy.utils.exceptions import AdapterParseError, ContextWindowExceededError, LMServerError, LMUnexpectedError

    import dspy

    signature = dspy.Signature("question -> answer")
    assert not is_fault(AdapterParseError(adapter_name="ChatAdapter", signature=signature, lm_response="?"))
    assert not is_fault(ContextWindowExceededError(message="too long"))
    assert not is_fault(ValueError("bad"))
    assert is_fault(LMServerError(message="boom", status=503))
    wrapped = LMUnexpectedError(message="engine failed")
    wrapped.__cause__ = ConnectionResetError(104, "reset")
    assert is_fault(wrapped)
    unexpected = LMUnexpectedError(message="engine bug")
    unexpected.__cause__ = TypeError("bug")
    assert not is_fault(unexpected)


def test_a_metric_whose_own_judge_lm_gets_no_answer_is_a_fault_not_a_score(tmp_path):
    # An LM judge the metric calls in dspy.context(lm=judge) is outside the meter: its connection error was
    # caught as a metric error, scored failure_score and journaled, so a resume replayed the zeros.
    import dspy

    task = _task()
    judge = faulty_lm(scripted_lm(lambda r: "[[ ## verdict ## ]]\nyes\n\n[[ ## completed ## ]]").engine, die_after=0)

    def judged(example, prediction, trace=None):
        with dspy.context(lm=judge):
            return dspy.Predict("answer -> verdict")(answer=prediction.answer).verdict == "yes"

    opt = OPRO(judged, task_model=task.lm(), prompt_model=scripted_lm(rule_stating_responder(task.rule)), steps=1,
               candidates_per_step=1, progress=False, log_dir=tmp_path)
    with pytest.raises(RunInterrupted):
        opt.compile(task.program(), trainset=task.train, valset=task.val)
    assert opt.report_.counters.metric_errors == 0 and opt.report_.counters.lm_faults > 0
    journaled = _journal(tmp_path) if (tmp_path / "journal.jsonl").exists() else []
    assert not [r for r in journaled if r["kind"] == "score"], "no score of the dead judge is journaled"


def test_a_fault_the_program_wraps_in_its_own_error_is_not_counted_as_a_program_error():
    # The program raised its own error from the fault; the scorer counted a program error before it found the
    # fault behind it (a review): the fault is retried, and program_errors stays 0.
    import dspy

    task = _task()

    class Wrapping(dspy.Module):
        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question):
            try:
                return self.predict(question=question)
            except Exception as exc:
                raise ValueError("the answer could not be produced") from exc

    flaky = faulty_lm(task.lm().engine, fail_calls={1, 2})  # the adapter's call and its JSON fallback
    opt = OPRO(task.metric, task_model=flaky, prompt_model=scripted_lm(rule_stating_responder(task.rule)), steps=1,
               candidates_per_step=1, progress=False)
    opt.compile(Wrapping(), trainset=task.train, valset=task.val)
    assert opt.report_.counters.lm_faults >= 1 and opt.report_.counters.program_errors == 0
