"""Item 1 for every strategy: an outage mid-run, then a resume after recovery, ends like an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from dspy_icl_opt.search.faults import RunInterrupted
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from dspy_icl_opt.testing.faulty import faulty_lm
from tests.contract import test_abo_contract as abo
from tests.contract import test_ape_contract as ape
from tests.contract import test_apo_contract as apo
from tests.contract import test_demoselector_contract as demos
from tests.contract import test_instruction_demo_search_contract as joint
from tests.contract import test_opro_contract as opro
from tests.contract import test_promptagent_contract as promptagent
from tests.contract.suite import state_of

SUITES = {"opro": opro.TestOPROContract, "opro-racing": opro.TestOPRORacingContract, "apo": apo.TestAPOContract,
          "abo": abo.TestABOContract, "demoselector": demos.TestDemoSelectorContract,
          "demoselector-knn": demos.TestDemoSelectorKnnContract}
SUITES.update({"ape": ape.TestAPEContract, "iterative-ape": ape.TestIterativeAPEContract,
               "promptagent": promptagent.TestPromptAgentContract, "joint": joint.TestInstructionDemoSearchContract,
               "joint-zero-shot": joint.TestInstructionDemoSearchZeroShotContract})


def _task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)


def _compile(suite, task, task_lm, prompt_lm, log_dir=None):
    common = {"seed": 0, "progress": False, **({"log_dir": log_dir} if log_dir else {})}
    optimizer = suite.make(task, task_lm=task_lm, prompt_lm=prompt_lm, **common)
    program = optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    return optimizer, program


@pytest.mark.parametrize("name", sorted(SUITES))
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.8])
def test_task_model_outage_then_resume(tmp_path, name, fraction):
    suite = SUITES[name]()
    task = _task()
    healthy_task, healthy_prompt = task.lm(), scripted_lm(suite.prompt_responder(task))
    full, full_program = _compile(suite, task, healthy_task, healthy_prompt)
    calls = healthy_task.engine.call_count
    die_after = int(calls * fraction)

    task_lm = faulty_lm(task.lm().engine, die_after=die_after)
    prompt_lm = faulty_lm(scripted_lm(suite.prompt_responder(task)).engine, name="fake/prompt-model")
    with pytest.raises(RunInterrupted):
        _compile(suite, task, task_lm, prompt_lm, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] and not report["finished"]
    journal = tmp_path / "journal.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    assert all(r.get("error") is None for r in records if r["kind"] == "score")

    task_lm.engine.recover()
    resumed, program = _compile(suite, task, task_lm, prompt_lm, tmp_path)
    assert resumed.report_.finished
    assert resumed.report_.best_state == full.report_.best_state
    assert resumed.report_.best_scores == full.report_.best_scores
    assert state_of(program) == state_of(full_program)
    assert task_lm.engine.inner.call_count == calls  # no successful call repeated
    assert prompt_lm.engine.inner.call_count == healthy_prompt.engine.call_count
