"""Item 2 in the pipeline: a re-run under the same config refuses changed metric code, LM settings, or program."""

from __future__ import annotations

import json
import sys

import pytest

from dspy_icl_opt.pipeline import ConfigError, parse_config, run_pipeline
from dspy_icl_opt.testing import any_of, correct_demos, make_words, rule_in_instruction, simulated_task_lm
from dspy_icl_opt.testing.faulty import faulty_lm

METRIC_V1 = "def score(example, prediction, trace=None):\n    return float(prediction.answer == example.answer)\n"
METRIC_V2 = ("def score(example, prediction, trace=None):\n"
             "    return float(prediction.answer.strip().lower() == example.answer.strip().lower())\n")


def _solve(inputs):
    return str(inputs["question"]).strip()[::-1]


def _task_lm(**kwargs):
    engine = simulated_task_lm(solve=_solve, knows=any_of(rule_in_instruction("reverse the word"),
                                                          correct_demos(_solve, at_least=2))).engine
    return faulty_lm(engine, name="fake/task-model", **kwargs)


@pytest.fixture
def config(tmp_path, monkeypatch):
    data = tmp_path / "reverse.jsonl"
    data.write_text("\n".join(json.dumps({"question": w, "answer": w[::-1]}) for w in make_words(30, seed=1)),
                    encoding="utf-8")
    (tmp_path / "my_metrics.py").write_text(METRIC_V1, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_metrics", raising=False)
    return {"program": "qa", "metric": "my_metrics:score", "output": str(tmp_path / "run"),
            "data": {"path": str(data), "train_size": 10, "val_size": 6, "test_size": 6},
            "optimize": [{"optimizer": "labeled", "params": {"k": 3}}]}


def test_metric_fixed_under_the_same_name_is_refused(config, tmp_path, monkeypatch):
    run_pipeline(parse_config(config), task_lm=_task_lm(), progress=False)
    (tmp_path / "my_metrics.py").write_text(METRIC_V2, encoding="utf-8")
    monkeypatch.delitem(sys.modules, "my_metrics")
    with pytest.raises(ConfigError, match=r"output: .* depend on other inputs: metric \(there: score@src:\w+, "
                                          r"here: score@src:\w+\).*--fresh"):
        run_pipeline(parse_config(config), task_lm=_task_lm(), progress=False)
    result = run_pipeline(parse_config(config), task_lm=_task_lm(), progress=False, fresh=True)
    assert result.summary["status"] == "complete"


@pytest.mark.parametrize(("before", "after"), [({"temperature": 0.0}, {"temperature": 0.9}),
                                               ({"max_tokens": 50}, {"max_tokens": 500})])
def test_changed_lm_settings_are_refused(config, before, after):
    run_pipeline(parse_config(config), task_lm=_task_lm(**before), progress=False)
    with pytest.raises(ConfigError, match=r"task_model \(there: .*, here: .*\)"):
        run_pipeline(parse_config(config), task_lm=_task_lm(**after), progress=False)


def test_same_inputs_resume_with_no_call(config):
    run_pipeline(parse_config(config), task_lm=_task_lm(temperature=0.0), progress=False)
    lm = _task_lm(temperature=0.0)
    run_pipeline(parse_config(config), task_lm=lm, progress=False)
    assert lm.engine.inner.call_count == 0


@pytest.mark.parametrize("optimizer", ["bootstrap", "opro"])
def test_an_outage_in_a_step_is_never_marked_done(config, tmp_path, optimizer):
    from dspy_icl_opt.pipeline import LMOutage
    from dspy_icl_opt.testing import always

    config["optimize"] = [{"optimizer": optimizer, "params": {"steps": 1, "candidates_per_step": 1}
                           if optimizer == "opro" else {}}]
    config["evaluate"] = {"before": False, "after": False}
    lm = _task_lm(die_after=1)
    prompt = simulated_task_lm(solve=lambda inputs: "<INS>Reverse the word.</INS>", knows=always())
    with pytest.raises(LMOutage):
        run_pipeline(parse_config(config), task_lm=lm, prompt_lm=prompt, progress=False)
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert not list(out.glob("steps/*/step.json"))
    lm.engine.recover()
    result = run_pipeline(parse_config(config), task_lm=lm, prompt_lm=prompt, progress=False)
    assert result.summary["status"] == "complete"
