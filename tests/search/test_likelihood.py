"""Likelihood scoring: the gold answer's probability, through the metered task model and the journal."""

from __future__ import annotations

import math

import dspy
import pytest

from dspy_icl_opt.search import BudgetMeter, Journal, MeteredLM, read_state
from dspy_icl_opt.search.likelihood import KEY_PREFIX, LikelihoodScorer, check_likelihood, gold_request
from dspy_icl_opt.search.report import Counters
from dspy_icl_opt.search.scorer import Scorer
from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm
from dspy_icl_opt.testing.simulated import SimulatedTaskEngine


@pytest.fixture
def task():
    return planted_rule_task("vowels", train_size=6, val_size=4, seed=0)


def scorers(task, tmp_path, program=None):
    meter, lm = BudgetMeter(), task.lm()
    accuracy = Scorer(program or task.program(), task.metric, task_lm=MeteredLM(lm, meter, "task"), meter=meter,
                      journal=Journal(tmp_path / "journal.jsonl"), counters=Counters(), progress=False)
    return accuracy, LikelihoodScorer.beside(accuracy), meter, lm.engine


def test_the_gold_answer_is_asked_as_the_adapter_writes_it(task):
    request = gold_request(task.program(), task.train[0], model="m")
    gold = request.config.extensions["score_continuation"]
    assert gold == f"[[ ## answer ## ]]\n{task.train[0].answer}\n\n[[ ## completed ## ]]"
    assert request.config.temperature == 0.0 and request.config.logprobs == 0
    assert task.train[0].question in request.messages[-1].text and "answer" in request.system


def test_scores_are_probabilities_cached_apart_from_accuracies(task, tmp_path):
    accuracy, likelihood, meter, engine = scorers(task, tmp_path)
    state, wise = read_state(task.program()), read_state(task.program(instructions=task.rule))
    unsure = likelihood.evaluate(state, task.train[:3])
    knows = likelihood.evaluate(wise, task.train[:3])
    assert [o.score for o in unsure] == pytest.approx([SimulatedTaskEngine.UNLIKELY] * 3)
    assert [o.score for o in knows] == pytest.approx([SimulatedTaskEngine.LIKELY] * 3)
    assert knows[0].prediction["log_likelihood"] == pytest.approx(math.log(SimulatedTaskEngine.LIKELY), abs=1e-4)
    assert meter.snapshot()["task"].calls == 6
    likelihood.evaluate(wise, task.train[:3])  # cached: no call
    assert meter.snapshot()["task"].calls == 6
    assert [o.score for o in accuracy.evaluate(wise, task.train[:3])] == [1.0] * 3  # its own keys: run, not served
    assert meter.snapshot()["task"].calls == 9 and engine.call_count == 9
    assert likelihood.cached(wise, task.train[0]).score == pytest.approx(SimulatedTaskEngine.LIKELY)
    assert accuracy.cached(wise, task.train[0]).score == 1.0
    assert KEY_PREFIX and LikelihoodScorer.key_prefix == KEY_PREFIX != Scorer.key_prefix


def test_examples_scored_by_likelihood_are_not_fresh_for_the_final_choice(task, tmp_path):
    accuracy, likelihood, _, _ = scorers(task, tmp_path)
    likelihood.evaluate(read_state(task.program()), task.train[:2])
    assert likelihood.scored_examples is accuracy.scored_examples and len(accuracy.scored_examples) == 2


def test_a_resumed_scorer_replays_likelihoods_without_calls(task, tmp_path):
    _, likelihood, _, _ = scorers(task, tmp_path)
    wise = read_state(task.program(instructions=task.rule))
    first = [o.score for o in likelihood.evaluate(wise, task.train)]
    _, again, meter, engine = scorers(task, tmp_path)
    assert [o.score for o in again.evaluate(wise, task.train)] == first
    assert engine.call_count == 0 and meter.snapshot()["task"].calls == len(task.train)  # replayed, charged


def test_a_program_of_two_predictors_is_refused(task):
    class Two(dspy.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = dspy.Predict("question -> answer"), dspy.Predict("draft -> answer")

        def forward(self, question):
            return self.second(draft=self.first(question=question).answer)

    with pytest.raises(ValueError, match=r"scores programs of one predictor, but the student has 2 \(first, second\)"):
        check_likelihood(Two(), task.train, task.lm())


def test_a_served_model_is_refused_with_the_fix(task):
    served = scripted_lm(lambda request: format_chat_reply({"answer": "1"}))
    with pytest.raises(ValueError, match=r"served chat models return log-probabilities only for tokens they gen"):
        check_likelihood(task.program(), task.train, served)
    check_likelihood(task.program(), task.train, task.lm())  # the simulated engine scores given text


def test_a_fault_while_scoring_is_asked_again_never_a_score(task, tmp_path):
    from dspy_icl_opt.testing.faulty import faulty_lm

    meter = BudgetMeter()
    flaky = faulty_lm(task.lm().engine, fail_calls={2})
    accuracy = Scorer(task.program(), task.metric, task_lm=MeteredLM(flaky, meter, "task"), meter=meter,
                      journal=Journal(None), counters=Counters(), progress=False)
    likelihood = LikelihoodScorer.beside(accuracy)
    wise = read_state(task.program(instructions=task.rule))
    outcomes = likelihood.evaluate(wise, task.train[:3])
    assert [o.score for o in outcomes] == pytest.approx([SimulatedTaskEngine.LIKELY] * 3)
    assert accuracy.counters.lm_faults == 1 and accuracy.counters.program_errors == 0
    assert meter.snapshot()["task"].calls == 3 and meter.snapshot()["task"].failed_calls == 1
