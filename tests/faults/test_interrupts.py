"""Item 8: Ctrl-C inside a DemoSelector trial and SIGTERM end a run like Ctrl-C elsewhere (no Optuna traceback)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from dspy_icl_opt.pipeline import LMOutage, parse_config, run_pipeline
from dspy_icl_opt.testing import any_of, correct_demos, make_words, rule_in_instruction, simulated_task_lm
from dspy_icl_opt.testing.faulty import faulty_lm
from dspy_icl_opt.testing.http_server import LoopbackLMServer


def _solve(inputs):
    return str(inputs["question"]).strip()[::-1]


def _engine():
    return simulated_task_lm(solve=_solve, knows=any_of(rule_in_instruction("reverse the word"),
                                                        correct_demos(_solve, at_least=2))).engine


def _config(tmp_path, **extra):
    data = tmp_path / "reverse.jsonl"
    data.write_text("\n".join(json.dumps({"question": w, "answer": w[::-1]}) for w in make_words(30, seed=1)),
                    encoding="utf-8")
    return {"program": "qa", "metric": "exact_match", "output": str(tmp_path / "run"),
            "data": {"path": str(data), "train_size": 10, "val_size": 8, "test_size": 6},
            "optimize": [{"optimizer": "demos", "params": {"n_trials": 6, "minibatch_size": 4}}], **extra}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("error", [KeyboardInterrupt, lambda: ConnectionRefusedError(111, "refused")])
def test_a_stop_in_a_demoselector_trial_prints_no_optuna_traceback(tmp_path, error):
    lm = faulty_lm(_engine(), die_after=40, error=error)  # Ctrl-C (or the server dying) mid-trial
    records = _Records()
    optuna_logger = logging.getLogger("optuna")
    optuna_logger.addHandler(records)
    try:
        with pytest.raises((KeyboardInterrupt, LMOutage)):
            run_pipeline(parse_config(_config(tmp_path)), task_lm=lm, progress=False)
    finally:
        optuna_logger.removeHandler(records)
    assert not [r for r in records.records if r.levelno >= logging.WARNING], [r.getMessage() for r in records.records]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"


class _Slow:
    """Answers after a pause, so a run is still going when the signal comes."""

    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds

    def complete(self, request):
        time.sleep(self.seconds)
        return self.inner.complete(request)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_cli_run_as_interrupted(tmp_path, sig):
    with LoopbackLMServer(_Slow(_engine(), 0.05)) as server:
        lm = {"model": "openai/fake", "cache": False,
              "options": {"api_base": server.url, "api_key": "k", "num_retries": 0}}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(_config(tmp_path, lm={"task": lm})), encoding="utf-8")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        proc = subprocess.Popen([sys.executable, "-m", "dspy_icl_opt.pipeline.cli", "--no-progress", "run", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=os.getcwd())
        deadline = time.time() + 60
        while server.answered < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "interrupted"
