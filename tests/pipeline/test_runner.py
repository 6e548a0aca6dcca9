"""run_pipeline on fake LMs: what it writes, resuming, interruption, chains, LM failures."""

from __future__ import annotations

import json

import dspy
import pytest

from dspy_icl_opt.pipeline import ConfigError, LMProblem, parse_config, run_pipeline
from dspy_icl_opt.search.report import OptimizationReport

from dspy_icl_opt.testing import any_of, correct_demos, rule_in_instruction, simulated_task_lm

from .conftest import PROPOSAL, RULE, solve


def test_run_writes_program_report_and_summary(config_dict, task_lm, tmp_path):
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    out = tmp_path / "run"
    for name in ("program.json", "report.json", "summary.json", "summary.md", "config.yaml", "run.json",
                 "steps/00-labeled/program.json", "steps/00-labeled/report.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["before"]["score"] == 0.0 and summary["after"]["score"] == 1.0
    assert summary["before"]["n"] == summary["after"]["n"] == 10
    assert summary["steps"][0]["class"] == "LabeledFewShot"
    assert "| after | 100.0% (n=10) |" in (out / "summary.md").read_text()
    report = OptimizationReport.load(out / "report.json")
    assert len(report.best_state["predictor"]["demos"]) == 3
    loaded = result.program.deepcopy()
    loaded.load(str(out / "program.json"))
    with dspy.context(lm=task_lm):
        assert loaded(question="abcd").answer == "dcba"  # the saved demos carry the rule


def test_run_again_resumes_without_repeating_work(config_dict, make_task_lm):
    config = parse_config(config_dict)
    first = make_task_lm()
    run_pipeline(config, task_lm=first, progress=False)
    assert first.engine.call_count == 20  # before and after evaluation
    second = make_task_lm()
    result = run_pipeline(config, task_lm=second, progress=False)
    assert second.engine.call_count == 0  # "before", the step and the final evaluation's examples are all reused
    assert result.summary["after"]["score"] == 1.0


def test_output_dir_of_another_config_is_refused_unless_fresh(config_dict, task_lm):
    run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    other = parse_config({**config_dict, "seed": 3})
    with pytest.raises(ConfigError, match=r"^output: .* holds a run of a different configuration"):
        run_pipeline(other, task_lm=task_lm, progress=False)
    assert run_pipeline(other, task_lm=task_lm, progress=False, fresh=True).summary["status"] == "complete"


def test_opro_step_meters_both_models(config_dict, task_lm, prompt_lm):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 1, "candidates_per_step": 2}}]
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    step = result.summary["steps"][0]
    assert step["class"] == "OPRO" and step["spent"]["prompt"]["calls"] == 2 and step["spent"]["task"]["calls"] > 0
    assert result.summary["spent"]["prompt"]["calls"] == 2
    assert result.reports[0].best_state["predictor"]["instruction"] == PROPOSAL
    assert result.summary["after"]["score"] == 1.0


def test_chain_gives_each_step_its_own_log_dir_and_feeds_the_next(config_dict, task_lm, prompt_lm, tmp_path):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 1, "candidates_per_step": 1}},
                               {"optimizer": "labeled", "params": {"k": 2}, "label": "then demos"}]
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    steps = tmp_path / "run" / "steps"
    assert sorted(p.name for p in steps.iterdir()) == ["00-opro", "01-then_demos"]
    assert (steps / "00-opro" / "journal.jsonl").exists()
    final = result.reports[-1].best_state["predictor"]
    assert final["instruction"] == PROPOSAL and len(final["demos"]) == 2


def test_interrupted_run_keeps_report_and_journal_and_resumes(config_dict, make_task_lm, prompt_lm, tmp_path):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 2, "candidates_per_step": 1}}]
    config = parse_config(config_dict)
    calls = {"n": 0}
    rule = any_of(rule_in_instruction(RULE), correct_demos(solve, at_least=2))

    def knows(view):  # every request passes here: interrupt on the 25th, inside the optimization
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return rule(view)

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, task_lm=simulated_task_lm(solve=solve, knows=knows), prompt_lm=prompt_lm,
                     progress=False)
    assert not (tmp_path / "run/steps/00-opro/step.json").exists()  # the step did not finish
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "steps/00-opro/journal.jsonl").stat().st_size > 0
    assert (out / "steps/00-opro/report.json").exists()
    resumed = make_task_lm()
    result = run_pipeline(config, task_lm=resumed, prompt_lm=prompt_lm, progress=False)
    assert result.summary["status"] == "complete"
    assert result.summary["before"]["score"] == 0.0  # reused, not re-evaluated
    straight = make_task_lm()
    run_pipeline(config, task_lm=straight, prompt_lm=prompt_lm, progress=False, output=tmp_path / "straight")
    # no call is repeated: the 24 answered before the interruption are replayed from the journal
    assert resumed.engine.call_count == straight.engine.call_count - 24


def test_a_task_model_that_never_answers_is_an_lm_problem(config_dict):
    from dspy_icl_opt.testing import scripted_lm

    broken = scripted_lm([])  # raises on every call
    with pytest.raises(LMProblem, match="failed on every test example"):
        run_pipeline(parse_config(config_dict), task_lm=broken, progress=False)


def test_evaluation_can_be_skipped_for_compile(config_dict, task_lm):
    config_dict["evaluate"] = {"before": False, "after": False}
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    assert result.summary["before"] is None and result.summary["after"] is None
    assert task_lm.engine.call_count == 0


def test_a_run_that_fails_to_start_does_not_claim_the_output_dir(config_dict, task_lm, tmp_path):
    bad = parse_config({**config_dict, "data": {**config_dict["data"], "test_size": 100}})
    with pytest.raises(ConfigError, match="must be at most the 40 examples"):
        run_pipeline(bad, task_lm=task_lm, progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
    assert run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False).summary["status"] == "complete"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_results_get_the_users_umask_like_program_json(config_dict, task_lm, tmp_path, umask):
    import os
    import stat

    from dspy_icl_opt.pipeline.render import render_report

    old = os.umask(umask)
    try:
        run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
        html = render_report(tmp_path / "run", fmt="html")
    finally:
        os.umask(old)
    out = tmp_path / "run"
    expected = 0o666 & ~umask
    for path in (out / "report.json", out / "summary.json", out / "summary.md", out / "program.json", html,
                 out / "steps/00-labeled/report.json"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, (path.name, oct(path.stat().st_mode))


def test_the_configured_prompt_temperature_wins_over_the_strategys_default(config_dict, task_lm, prompt_lm):
    """Issue 16, item 5: lm.prompt.temperature 0.8 is what the prompt model samples at, not OPRO's 1.0."""
    config_dict["lm"] = {"prompt": {"model": "embedded", "temperature": 0.8}}
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 1, "candidates_per_step": 2}}]
    result = run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    assert result.reports[-1].params["temperature"] == 0.8
    sampled = {r.config.temperature for r in prompt_lm.engine.requests}
    assert sampled == {0.8}, sampled


def test_a_step_temperature_that_contradicts_the_configured_one_is_refused(config_dict, task_lm, prompt_lm, tmp_path):
    config_dict["lm"] = {"prompt": {"model": "embedded", "temperature": 0.8}}
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"temperature": 1.0}}]
    with pytest.raises(ConfigError, match=r"optimize\[0\]\.params\.temperature: must equal lm\.prompt\.temperature "
                                          r"\(0\.8\) when both are set, but got 1\.0"):
        run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    assert task_lm.engine.call_count == 0 and prompt_lm.engine.call_count == 0
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"temperature": 0.8, "steps": 1}}]
    assert run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False,
                        fresh=True).reports[-1].params["temperature"] == 0.8
