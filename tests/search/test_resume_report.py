"""A resumed run's report counts what the replayed part of the run counted: the proposals its validators turned
down or admitted, and the units of work an LM fault made run again (besides the counters and meta-prompt stats
the contract suite compares)."""

from __future__ import annotations

import pytest

from dspy_icl_opt.optimizers.ape import IterativeAPE
from dspy_icl_opt.testing import format_chat_reply, make_fake_lm, planted_rule_task, scripted_lm
from dspy_icl_opt.testing.faulty import faulty_lm
from tests.contract.suite import KilledAfter

TASK = planted_rule_task("vowels", train_size=12, val_size=8, seed=0)
SMALL = {"num_subsamples": 3, "num_demos": 3, "prompts_per_subsample": 2, "eval_rounds": 3,
         "eval_prompts_per_round": 4, "samples_per_eval": 4, "progress": False}


def respond(request):
    """One answer in three a refusal (turned down), one the rule, one a decoy; each numbered by its seed."""
    n = (request.config.seed or 0) % 10_007
    text = ("I'm sorry, I cannot help with that." if n % 3 == 0 else
            f"The instruction was to {TASK.rule}, way {n}" if n % 3 == 1 else
            f"The instruction was to answer the question, version {n}")
    return format_chat_reply({"instruction": text, "variation": f"Please {TASK.rule} (variant {n})."})


def run(log_dir=None, *, task_kill=None, prompt_kill=None, faults=()):
    task_engine = TASK.lm().engine if task_kill is None else KilledAfter(TASK.lm().engine, task_kill)
    prompt_engine = scripted_lm(respond).engine
    if prompt_kill is not None:
        prompt_engine = KilledAfter(prompt_engine, prompt_kill)
    optimizer = IterativeAPE(TASK.metric, task_model=faulty_lm(task_engine, name="fake/task", fail_calls=faults),
                             prompt_model=make_fake_lm(prompt_engine, name="fake/prompt"), seed=0, log_dir=log_dir,
                             **SMALL)
    optimizer.compile(TASK.program(), trainset=TASK.train, valset=TASK.val)
    return optimizer.report_


def test_a_resumed_report_counts_the_proposals_turned_down_before_the_kill(tmp_path):
    full = run()
    assert full.extra.get("rejected_proposals"), "the scenario: some answers were turned down"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, prompt_kill=5)
    resumed = run(tmp_path)
    assert resumed.best_state == full.best_state and resumed.counters == full.counters
    assert resumed.extra.get("rejected_proposals") == full.extra.get("rejected_proposals")


def test_a_resumed_report_counts_the_faults_met_before_the_kill(tmp_path):
    full = run(faults=[3])
    assert full.counters.lm_faults == 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, task_kill=20, faults=[3])
    assert run(tmp_path).counters.lm_faults == full.counters.lm_faults


def test_a_kill_between_the_retries_of_one_ask_repeats_no_prompt_call(tmp_path):
    # An ask journaled its tries only when it ended (or when a cap or an outage stopped it): a Ctrl-C after a
    # turned-down answer and before the retry's answer left no record, and the resumed run asked the turned-down
    # sample again (same answer, one call more). Every kill point is tried.
    def counted_run(log_dir, kill=10**6):
        engine = KilledAfter(scripted_lm(respond).engine, kill)
        optimizer = IterativeAPE(TASK.metric, task_model=TASK.lm(), seed=0, log_dir=log_dir,
                                 prompt_model=make_fake_lm(engine, name="fake/prompt"), **SMALL)
        optimizer.compile(TASK.program(), trainset=TASK.train, valset=TASK.val)
        return engine.call_count, optimizer.report_

    total, full = counted_run(None)
    assert full.extra.get("rejected_proposals"), "the scenario: some answers are turned down and asked again"
    for kill in range(1, total):
        log_dir = tmp_path / f"kill{kill}"
        with pytest.raises(KeyboardInterrupt):
            counted_run(log_dir, kill)
        made, resumed = counted_run(log_dir)
        assert kill + made == total, f"killed after {kill} prompt calls"
        assert resumed.best_state == full.best_state
