"""Issue 16: a temperature the user wrote wins, on the optimizer or on the prompt LM, never a strategy's default.

OPRO, APO, ABO, APE, Iterative-APE, PromptAgent and InstructionDemoSearch sample some meta-prompts at a
temperature of their own. Left unset (``None``), it is
the prompt LM's own temperature when that LM was built with one, else the strategy's default; set, it
is used as given. The report's ``params["temperature"]`` is the temperature used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy
import pytest

from dspy_icl_opt.optimizers.abo import ABO
from dspy_icl_opt.optimizers.ape import APE, IterativeAPE
from dspy_icl_opt.optimizers.apo import APO
from dspy_icl_opt.optimizers.joint import InstructionDemoSearch
from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.optimizers.promptagent import PromptAgent
from dspy_icl_opt.search.base import lm_temperature
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from tests.contract.suite import rule_stating_responder
from tests.optimizers.test_abo import ABOScript, meta_prompt


APE_SMALL = {"num_subsamples": 2, "num_demos": 3, "prompts_per_subsample": 2, "eval_rounds": 2,
             "eval_prompts_per_round": 3, "samples_per_eval": 4}


@dataclass
class Strategy:
    make: Callable[..., Any]
    default: float
    responder: Callable[[Any], Callable[[Any], str]]
    #: the requests the strategy samples at its temperature (ABO asks for demonstrations and diagnoses at the
    #: prompt LM's own settings)
    sampled: Callable[[Any], bool] = lambda request: True


STRATEGIES = {
    "opro": Strategy(lambda task, **kw: OPRO(task.metric, steps=1, candidates_per_step=2, **kw), 1.0,
                     lambda task: rule_stating_responder(task.rule)),
    "apo": Strategy(lambda task, **kw: APO(task.metric, rounds=1, beam_size=2, minibatch_size=4, n_gradients=1,
                                           errors_per_gradient=2, mc_samples_per_step=1, max_expansion_factor=3,
                                           eval_rounds=2, eval_prompts_per_round=2, samples_per_eval=4, **kw),
                    0.7, lambda task: rule_stating_responder(task.rule)),
    "abo": Strategy(lambda task, **kw: ABO(task.metric, num_candidates=2, rounds=1, minibatch_size=4,
                                           errors_per_round=2, **kw), 1.0, lambda task: ABOScript(),
                    lambda request: meta_prompt(request) in ("procedure", "split")),
    "ape": Strategy(lambda task, **kw: APE(task.metric, **APE_SMALL, **kw), 0.9,
                    lambda task: rule_stating_responder(task.rule)),
    "iterative_ape": Strategy(lambda task, **kw: IterativeAPE(task.metric, **APE_SMALL, **kw), 0.9,
                              lambda task: rule_stating_responder(task.rule)),
    "promptagent": Strategy(lambda task, **kw: PromptAgent(task.metric, iterations=2, expand_width=2, depth_limit=2,
                                                           min_depth=1, batch_size=4, eval_size=6, **kw), 0.7,
                            lambda task: rule_stating_responder(task.rule)),
    "joint": Strategy(lambda task, **kw: InstructionDemoSearch(task.metric, auto=None, num_candidates=3, num_trials=4,
                                                               max_bootstrapped_demos=1, max_labeled_demos=1, **kw),
                      1.0, lambda task: rule_stating_responder(task.rule)),
}


def run(name: str, *, lm_temperature_: float | None, **settings: Any) -> tuple[Any, set[float | None]]:
    """Compile with a scripted prompt LM (built at ``lm_temperature_`` if given); the temperatures its
    strategy-sampled requests went out at."""
    strategy = STRATEGIES[name]
    task = planted_rule_task("vowels", train_size=8, val_size=6, seed=0)
    prompt_lm = scripted_lm(strategy.responder(task))
    if lm_temperature_ is not None:
        prompt_lm = prompt_lm.copy(temperature=lm_temperature_)
    optimizer = strategy.make(task, task_model=task.lm(), prompt_model=prompt_lm, progress=False, **settings)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    sent = {r.config.temperature for r in prompt_lm.engine.requests if strategy.sampled(r)}
    assert sent, "the strategy sampled no meta-prompt: the test would prove nothing"
    return optimizer, sent


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_prompt_lms_own_temperature_is_used_when_the_optimizer_sets_none(name):
    optimizer, sent = run(name, lm_temperature_=0.3)
    assert optimizer.temperature is None
    assert sent == {0.3}
    assert optimizer.report_.params["temperature"] == 0.3


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_an_explicit_temperature_wins_over_the_prompt_lms(name):
    optimizer, sent = run(name, lm_temperature_=0.3, temperature=0.9)
    assert sent == {0.9}
    assert optimizer.report_.params["temperature"] == 0.9


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_strategys_default_applies_when_nobody_set_a_temperature(name):
    optimizer, sent = run(name, lm_temperature_=None)
    assert sent == {STRATEGIES[name].default}
    assert optimizer.report_.params["temperature"] == STRATEGIES[name].default


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_without_a_prompt_model_the_task_models_temperature_is_not_borrowed(name):
    # One LM for both jobs, built at temperature 0 for its answers: proposals are still sampled at the
    # strategy's default, or they would all come out the same.
    strategy = STRATEGIES[name]
    task = planted_rule_task("vowels", train_size=8, val_size=6, seed=0)
    lm = scripted_lm(strategy.responder(task)).copy(temperature=0.0)
    optimizer = strategy.make(task, task_model=lm, progress=False)
    assert optimizer.prompt_model is None
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    assert optimizer.report_.params["temperature"] == strategy.default


def test_copros_init_temperature_still_maps_and_wins_over_the_prompt_lms():
    optimizer, sent = run("opro", lm_temperature_=0.3, init_temperature=1.2)
    assert optimizer.temperature == 1.2
    assert sent == {1.2}


def test_apos_separate_paraphrase_model_samples_at_its_own_temperature():
    task = planted_rule_task("vowels", train_size=8, val_size=6, seed=0)
    prompt_lm = scripted_lm(rule_stating_responder(task.rule)).copy(temperature=0.3)
    paraphrase_lm = scripted_lm(rule_stating_responder(task.rule)).copy(temperature=0.5)
    apo = STRATEGIES["apo"].make(task, task_model=task.lm(), prompt_model=prompt_lm, paraphrase_model=paraphrase_lm,
                                 progress=False)
    apo.compile(task.program(), trainset=task.train, valset=task.val)
    assert {r.config.temperature for r in prompt_lm.engine.requests} == {0.3}
    assert {r.config.temperature for r in paraphrase_lm.engine.requests} == {0.5}
    assert apo.report_.params["temperature"] == 0.3 and apo.report_.params["paraphrase_temperature"] == 0.5


def test_lm_temperature_reads_the_lm_and_ignores_an_unset_one():
    assert lm_temperature(dspy.LM("openai/x", temperature=0.3)) == 0.3
    assert lm_temperature(dspy.LM("openai/x")) is None
    assert lm_temperature(None) is None
