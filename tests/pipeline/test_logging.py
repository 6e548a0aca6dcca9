"""A library that does not talk: quiet below WARNING by default, informative in the CLI (issue 16, item 8)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from dspy_icl_opt import __version__
from dspy_icl_opt.pipeline.cli import build_parser, main, setup_logging, use_color
from dspy_icl_opt.search.scorer import progress_label

LIBRARY_RUN = """
import dspy
from dspy_icl_opt import OPRO
from dspy_icl_opt.testing import always, make_words, simulated_task_lm, rule_in_instruction
words = make_words(12, seed=1)
data = [dspy.Example(question=w, answer=w[::-1]).with_inputs("question") for w in words]
task = simulated_task_lm(solve=lambda i: i["question"][::-1], knows=rule_in_instruction("reverse"))
prompt = simulated_task_lm(solve=lambda i: "<INS>Reverse the word.</INS>", knows=always(), name="fake/prompt")
opro = OPRO(lambda e, p, trace=None: e.answer == p.answer, task_model=task, prompt_model=prompt, steps=1,
            candidates_per_step=1, progress=False)
opro.compile(dspy.Predict("question -> answer"), trainset=data[:6], valset=data[6:])
print("best", opro.report_.best_scores)
"""


def test_a_compile_in_a_library_prints_nothing_but_its_result():
    done = subprocess.run([sys.executable, "-c", LIBRARY_RUN], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("best")
    assert done.stderr == "", done.stderr  # no INFO lines, no module paths


def test_the_cli_logs_in_words_without_module_paths_and_honours_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())
    stream = Tty()
    setup_logging("INFO", stream=stream)
    from dspy_icl_opt._log import logger

    logger.info("OPRO step {}/{}: scoring {} instructions", 2, 6, 8)
    logger.debug("not shown at INFO")
    line = stream.getvalue()
    assert line.endswith(" INFO    OPRO step 2/6: scoring 8 instructions\n"), line
    assert "\x1b[" not in line and "dspy_icl_opt" not in line and "not shown" not in line


def test_version_and_log_level_after_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"dspy-icl-opt {__version__}"
    parser = build_parser()
    assert parser.parse_args(["list", "--log-level", "debug"]).log_level == "DEBUG"
    assert parser.parse_args(["--log-level", "warning", "list"]).log_level == "WARNING"
    assert parser.parse_args(["list"]).log_level == "INFO"
    assert parser.parse_args(["run", "x.yaml", "--no-progress"]).progress is False
    assert parser.parse_args(["run", "x.yaml"]).progress is True


def test_progress_labels_are_words():
    assert progress_label("step3 #5", 8, name="OPRO", steps=6) == "OPRO step 3/6: scoring candidate 5 on 8 examples"
    assert progress_label("step 2 #1", 4, name="OPRO") == "OPRO step 2: scoring candidate 1 on 4 examples"
    assert progress_label("bandit_round2 #4", 1) == "bandit round 2: scoring candidate 4 on 1 example"
    assert progress_label("val #0", 10, name="APO") == "APO validation: scoring candidate 0 on 10 examples"
    assert progress_label("trial 7", 6, name="DemoSelector") == "DemoSelector trial 7: scoring on 6 examples"


def test_no_module_logs_through_loguru():
    """loguru's default sink prints every level with module paths: the library logs through `logging` only."""
    from pathlib import Path

    import dspy_icl_opt

    offenders = [str(p) for p in Path(dspy_icl_opt.__file__).parent.rglob("*.py") if "loguru" in p.read_text()]
    assert offenders == []
