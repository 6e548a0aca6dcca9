"""The console script: exit codes, messages without stack traces, help with examples, report rendering."""

from __future__ import annotations

import json
import zlib

import dspy
import pytest
import yaml

from dspy_icl_opt.pipeline import parse_config, run_pipeline
from dspy_icl_opt.pipeline.cli import (
    DEMO_LM,
    DEMO_SIZES,
    DEMO_STEPS,
    DEMO_TASK,
    build_parser,
    cmd_demo,
    config_from_flags,
    demo_config,
    main,
)
from dspy_icl_opt.pipeline.errors import ConfigError
from dspy_icl_opt.programs import load_task
from dspy_icl_opt.programs.metrics import parse_options
from dspy_icl_opt.testing import correct_demos, format_chat_reply, scripted_lm, simulated_task_lm

COMMANDS = ("run", "compile", "eval", "bench", "report", "demo", "list")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example:\n  dspy-icl-opt " + command in capsys.readouterr().out


def test_bad_config_exits_2_naming_the_field_without_a_traceback(config_dict, tmp_path, capsys):
    pytest.importorskip("dspy_icl_opt.optimizers.abo")
    config_dict["optimize"] = [{"optimizer": "labeled"}, {"optimizer": "abo", "params": {"beam_size": 0}}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config_dict), encoding="utf-8")
    assert main(["--no-progress", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"invalid configuration {path}" in err
    assert "optimize[1].params.beam_size: must be an integer >= 1, but got 0. Keep at least one procedure." in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing ran


def test_missing_config_file_and_usage_errors_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_report_command_renders_a_run(config_dict, task_lm, tmp_path, capsys):
    run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    assert main(["report", str(tmp_path / "run"), "--format", "md"]) == 0
    assert (tmp_path / "run" / "report.md").exists()
    assert "saved:" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "empty-dir-that-does-not-exist")]) == 2


def test_list_shows_ours_and_dspys_optimizers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("opro", "labeled", "mipro", "gepa", "hyperbaton", "joint", "InstructionDemoSearch"):
        assert name in out


def test_compile_flags_make_a_valid_config(data_file, tmp_path):
    args = build_parser().parse_args([
        "compile", "--data", str(data_file), "--program", "cot", "--lm", "openai/gpt-4o-mini",
        "--optimizer", "labeled,bootstrap", "--param", "max_labeled_demos=2", "--budget", "max_task_calls=50",
        "--seed", "3", "--train-size", "5", "--val-size", "5", "--test-size", "5"])
    config = config_from_flags(args, evaluate=False)
    assert config.program.name == "cot" and config.lm.task.model == "openai/gpt-4o-mini"
    assert [s.optimizer for s in config.optimize] == ["labeled", "bootstrap"]
    assert config.optimize[1].params == {"max_labeled_demos": 2}
    assert config.budget.max_task_calls == 50 and config.seed == 3
    assert not config.evaluate.before and not config.evaluate.after


def test_compile_flags_override_a_config_file(config_dict, tmp_path):
    path = tmp_path / "base.json"
    path.write_text(json.dumps(config_dict), encoding="utf-8")
    args = build_parser().parse_args(["compile", "--config", str(path), "--seed", "9", "--optimizer", "bootstrap"])
    config = config_from_flags(args, evaluate=False)
    assert config.seed == 9 and config.optimize[0].optimizer == "bootstrap"
    assert config.data.path == config_dict["data"]["path"] and config.evaluate.before  # the file's choice stays


def test_compile_without_data_is_a_usage_error(capsys):
    assert main(["compile", "--optimizer", "labeled"]) == 2
    assert "--task" in capsys.readouterr().err


def test_demo_config_is_small_and_valid():
    assert build_parser().parse_args(["demo"]).optimizer == "demos"
    for optimizer in DEMO_STEPS:
        config = parse_config(demo_config(optimizer))
        assert config.lm.task.model == config.lm.prompt.model == "embedded"
        assert config.optimize[0].optimizer == optimizer and config.data.task == "date_understanding"
        assert config.data.train_size + config.data.val_size + config.data.test_size <= 110
        assert config.data.test_size >= 50  # a 35-point gain stands well clear of a ~9-point standard error
        budget = config.optimize[0].budget
        assert budget is None or budget.max_task_calls <= 150  # "a few minutes": the search stays small
    with pytest.raises(ConfigError, match="the demo offers"):
        demo_config("mipro")


def test_an_lm_that_cannot_answer_exits_3(config_dict, tmp_path, capsys):
    config_dict["lm"] = {"task": "nonexistentprovider/model-x"}  # LiteLLM refuses it locally: no network call
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(config_dict), encoding="utf-8")
    assert main(["--no-progress", "run", str(path)]) == 3
    err = capsys.readouterr().err
    assert "language model problem" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_dry_run_prints_each_steps_plan_without_building_an_lm(config_dict, tmp_path, capsys):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    config_dict["lm"] = {"task": "embedded"}  # never built: a dry run loads no model
    config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 2}}, {"optimizer": "demos"},
                               {"optimizer": "labeled"}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_dict), encoding="utf-8")
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[0] opro (OPRO), budget {'max_task_calls': 200, 'max_prompt_calls': 20}:" in out
    assert "OPRO plan: " in out and "projected" in out
    assert "[1] demos (DemoSelector)" in out and "DemoSelector plan: " in out  # it plans its trials from the cap
    assert "final validation: start + " in out.split("DemoSelector plan: ")[1]
    assert "[2] labeled (LabeledFewShot)" in out and "no plan (DSPy's optimizers" in out
    assert not (tmp_path / "run").exists()
    assert main(["compile", "--config", str(path), "--optimizer", "opro", "--param", "steps=1", "--dry-run"]) == 0
    assert "OPRO plan: " in capsys.readouterr().out


# ------------------------------------------------------------------------------ the demo (issue 16)
def _date_task_lm() -> dspy.LM:
    """A task model for date_understanding that answers right when the prompt shows >= 2 correct worked
    examples, and otherwise only on about a third of the questions (a fixed wrong option on the rest)."""
    task = load_task(DEMO_TASK, seed=0, **DEMO_SIZES)
    gold = {ex.question.strip(): ex.answer for ex in [*task.train, *task.val, *task.test]}

    def solve(inputs):
        return gold[str(inputs["question"]).strip()]

    def wrong(inputs):
        answer = solve(inputs)
        if zlib.crc32(answer.encode()) % 3 == 0:
            return answer
        return next(option for option in parse_options(str(inputs["options"])) if option != answer)

    return simulated_task_lm(solve=solve, knows=correct_demos(solve, at_least=2), wrong=wrong)


def _demo(tmp_path, *flags):
    task_lm = _date_task_lm()
    prompt_lm = scripted_lm(lambda request: format_chat_reply({"new_instruction": "<INS>Give the date.</INS>"}))
    args = build_parser().parse_args(["--no-progress", "demo", "--output", str(tmp_path / "demo"), *flags])
    assert cmd_demo(args, task_lm=task_lm, prompt_lm=prompt_lm) == 0
    return task_lm, prompt_lm, json.loads((tmp_path / "demo" / "summary.json").read_text())


def test_the_demo_gains_on_held_out_data_and_says_what_changed_and_why(tmp_path, capsys):
    pytest.importorskip("dspy_icl_opt.demos")
    task_lm, prompt_lm, summary = _demo(tmp_path)
    out = capsys.readouterr().out
    assert summary["task"] == "date_understanding" and summary["steps"][0]["class"] == "DemoSelector"
    assert summary["before"]["n"] == summary["after"]["n"] == DEMO_SIZES["test_size"] >= 50
    assert summary["after"]["score"] - summary["before"]["score"] >= 0.5  # worked examples carry the answers
    search = summary["spent"]["task"]["calls"]
    assert search <= DEMO_STEPS["demos"]["budget"]["max_task_calls"]
    assert task_lm.engine.call_count <= search + 2 * DEMO_SIZES["test_size"]  # a few minutes' worth of calls
    assert prompt_lm.engine.call_count == 0
    gain = 100 * (summary["after"]["score"] - summary["before"]["score"])
    assert f"gain: {gain:+.1f} points on 50 held-out examples (standard error about" in out
    assert ("what changed: the program now shows 4 worked examples (k=4 from the labeled pool, candidate set 0 "
            "drawn at random, order as_selected); the instruction is unchanged") in out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    choice = report["extra"]["final_choice"]
    val = {row["candidate"]: row["val"] for row in choice["contenders"]}
    assert choice["chosen"] != choice["start"] and choice["held_out"]  # half the valset unseen by the trials
    trial_examples = report["extra"]["plan"]["settings"]["trial_examples"]
    assert choice["examples"] == DEMO_SIZES["val_size"] and choice["reused_examples"] == trial_examples
    assert choice["fresh_examples"] == DEMO_SIZES["val_size"] - trial_examples >= DEMO_SIZES["val_size"] // 2
    assert (f"why it was kept: it scored {val[choice['chosen']]:.2f} on the 50 validation examples against the "
            f"start's {val[choice['start']]:.2f}, a paired gain of +") in out
    assert f"and not lose on the {choice['fresh_examples']} of them the search did not select on" in out
    assert (tmp_path / "demo" / "report.html").exists()


def test_the_demo_with_labeled_says_it_did_not_validate(tmp_path, capsys):
    _, _, summary = _demo(tmp_path, "--optimizer", "labeled")
    out = capsys.readouterr().out
    assert summary["spent"]["task"]["calls"] == 0 and summary["after"]["score"] > summary["before"]["score"]
    assert "what changed: the program now shows 4 worked examples; the instruction is unchanged" in out
    assert "why it was kept: LabeledFewShot returns its result without validating it against the start" in out


def test_the_demo_with_opro_runs_within_its_caps(tmp_path, capsys):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    _, prompt_lm, summary = _demo(tmp_path, "--optimizer", "opro")
    out = capsys.readouterr().out
    caps = DEMO_STEPS["opro"]["budget"]
    assert summary["spent"]["task"]["calls"] <= caps["max_task_calls"]
    assert 0 < prompt_lm.engine.call_count <= caps["max_prompt_calls"]
    assert {r.config.temperature for r in prompt_lm.engine.requests} == {DEMO_LM["prompt"]["temperature"]}
    assert "what changed: " in out and "why it was kept: " in out
