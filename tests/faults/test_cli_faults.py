"""Items 1, 3, 4, 6, 10, 11 through the CLI, against loopback OpenAI-style LM servers started by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dspy_icl_opt.pipeline.cli import main
from dspy_icl_opt.testing import always, any_of, correct_demos, make_words, rule_in_instruction, simulated_task_lm
from dspy_icl_opt.testing.http_server import LoopbackLMServer

RULE = "reverse the word"
PROPOSAL = "Reverse the word letter by letter."
SECRET = "sk-test-do-not-leak-123"


def _solve(inputs):
    return str(inputs["question"]).strip()[::-1]


@pytest.fixture
def servers():
    task = LoopbackLMServer(simulated_task_lm(solve=_solve, knows=any_of(rule_in_instruction(RULE),
                                                                            correct_demos(_solve, at_least=2))).engine)
    prompt = LoopbackLMServer(simulated_task_lm(solve=lambda inputs: f"<INS>{PROPOSAL}</INS>", knows=always()).engine)
    with task, prompt:
        yield task, prompt


def _lm(name, server):
    return {"model": f"openai/{name}", "cache": False,
            "options": {"api_base": server.url, "api_key": SECRET, "num_retries": 0}}


@pytest.fixture
def config_file(tmp_path, servers):
    task, prompt = servers
    data = tmp_path / "reverse.jsonl"
    data.write_text("\n".join(json.dumps({"question": w, "answer": w[::-1]}) for w in make_words(30, seed=1)),
                    encoding="utf-8")
    config = {"name": "faults", "program": "qa", "metric": "exact_match",
              "data": {"path": str(data), "train_size": 10, "val_size": 6, "test_size": 8},
              "lm": {"task": _lm("fake-task", task), "prompt": _lm("fake-prompt", prompt)},
              "optimize": [{"optimizer": "opro", "params": {"steps": 2, "candidates_per_step": 2}}],
              "budget": {"max_task_calls": 200, "max_prompt_calls": 20}, "output": str(tmp_path / "run")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_healthy_cli_run_reaches_100_percent(config_file, tmp_path, servers):
    assert main(["--no-progress", "run", str(config_file)]) == 0
    summary = _summary(tmp_path / "run")
    assert summary["status"] == "complete" and summary["after"]["score"] == 1.0 and summary["before"]["score"] == 0.0


@pytest.mark.parametrize("die_after", [3, 8, 20])
def test_server_dying_mid_run_exits_3_then_the_rerun_resumes_to_the_same_result(config_file, tmp_path, servers,
                                                                                   capsys, die_after):
    task, prompt = servers
    assert main(["--no-progress", "run", str(config_file), "--output", str(tmp_path / "healthy")]) == 0
    healthy = _summary(tmp_path / "healthy")
    healthy_answers = task.answered
    task.answered = 0
    task.die_after = die_after
    assert main(["--no-progress", "run", str(config_file)]) == 3
    err = capsys.readouterr().err
    assert "stopped answering" in err or "failed 3 time(s) in a row" in err
    out = tmp_path / "run"
    summary = _summary(out)
    assert summary["status"] == "interrupted"
    assert not (out / "steps" / "00-opro" / "step.json").exists()  # the step is not marked done
    task.die_after = None
    assert main(["--no-progress", "run", str(config_file)]) == 0
    resumed = _summary(out)
    assert resumed["status"] == "complete"
    assert resumed["after"] == {**healthy["after"], "seconds": resumed["after"]["seconds"]}
    assert resumed["before"]["score"] == healthy["before"]["score"]
    assert task.answered == healthy_answers  # no successful call was repeated
    report = json.loads((out / "report.json").read_text())
    healthy_report = json.loads((tmp_path / "healthy" / "report.json").read_text())
    assert report["best_state"] == healthy_report["best_state"]


def test_compile_against_a_dead_server_exits_3_not_0(config_file, tmp_path, servers, capsys):
    task, _ = servers
    task.stop()
    config = yaml.safe_load(config_file.read_text())
    config["evaluate"] = {"before": False, "after": False}
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    code = main(["--no-progress", "compile", "--config", str(config_file), "--optimizer", "opro"])
    assert code == 3
    err = capsys.readouterr().err
    assert "language model problem" in err and "Connection refused" in err and "Traceback" not in err
    assert _summary(tmp_path / "run")["status"] == "interrupted"


@pytest.mark.parametrize("mode", ["error500", "error429"])
def test_server_errors_are_faults_not_zero_scores(config_file, tmp_path, servers, mode):
    task, _ = servers
    task.mode = mode
    assert main(["--no-progress", "run", str(config_file)]) == 3
    out = tmp_path / "run"
    assert not (out / "eval_before.json").exists()  # a half-failed evaluation is never cached
    task.mode = "ok"
    assert main(["--no-progress", "run", str(config_file)]) == 0
    assert _summary(out)["after"]["score"] == 1.0


@pytest.mark.parametrize("fresh", [False, True])
def test_a_folder_that_is_not_our_run_is_never_touched(config_file, tmp_path, servers, capsys, fresh):
    out = tmp_path / "run"
    (out / "steps").mkdir(parents=True)
    mine = {"config.yaml": "my own config\n", "report.json": "{\"mine\": 1}", "steps/notes.txt": "keep me",
            "data.csv": "a,b\n"}
    for name, text in mine.items():
        (out / name).write_text(text, encoding="utf-8")
    args = ["--no-progress", "run", str(config_file)] + (["--fresh"] if fresh else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "output: must be a new or empty folder, or a run of dspy-icl-opt" in err and "nothing there was changed" in err
    for name, text in mine.items():
        assert (out / name).read_text(encoding="utf-8") == text
    assert servers[0].answered == 0


def test_fresh_clears_only_our_own_run(config_file, tmp_path, servers):
    assert main(["--no-progress", "run", str(config_file)]) == 0
    out = tmp_path / "run"
    (out / "my-notes.txt").write_text("keep", encoding="utf-8")
    assert main(["--no-progress", "run", str(config_file), "--fresh"]) == 0
    assert (out / "my-notes.txt").read_text() == "keep"


def test_an_unwritable_output_exits_2(config_file, tmp_path, servers, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    assert main(["--no-progress", "run", str(config_file), "--output", str(blocker / "run")]) == 2
    assert "output: must be a folder that can be written" in capsys.readouterr().err
    assert main(["--no-progress", "run", str(config_file), "--output", str(blocker)]) == 2


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "not a database URL"),
    ("sqlite:////no/such/folder/demos.db", "the folder '/no/such/folder' of the SQLite file does not exist"),
    ("postgresql://user:hunter2@127.0.0.1:1/db", "cannot be opened: connection to server"),
    ("nosuchdb://x/y", "unknown database kind"),
])
def test_bad_storage_exits_2_before_any_lm_call(config_file, tmp_path, servers, capsys, url, message):
    config = yaml.safe_load(config_file.read_text())
    config["optimize"] = [{"optimizer": "demos", "params": {"n_trials": 2, "storage": url}}]
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--no-progress", "run", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "optimize[0].params.storage: `storage`" in err and message in err
    assert "hunter2" not in err and "sqlalche.me" not in err and "Traceback" not in err
    assert servers[0].answered == 0  # checked before the "before" evaluation


def test_secrets_are_redacted_in_the_output_config(config_file, tmp_path, servers):
    config = yaml.safe_load(config_file.read_text())
    db = tmp_path / "demos.db"
    config["optimize"] = [{"optimizer": "demos", "params": {"n_trials": 2, "storage": f"sqlite:///{db}"}},
                          {"optimizer": "labeled", "params": {"k": 2}}]
    config["bench"] = [{"optimizer": "demos", "params": {"storage": "postgresql://me:hunter2@db.example/x"}}]
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    main(["--no-progress", "run", str(config_file)])
    out = tmp_path / "run"
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".md", ".jsonl"):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert SECRET not in text and "hunter2" not in text, path
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["lm"]["task"]["options"]["api_key"] == "***"
    assert written["bench"][0]["params"]["storage"] == "postgresql://me:***@db.example/x"
