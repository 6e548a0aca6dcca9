"""Shared fixtures for the pipeline tests: a planted-rule data file and fake LMs passed in (never patched).

The toy task reverses made-up words. The simulated task model answers correctly only when the prompt
says "reverse the word" or shows at least two correct demos, so an optimizer that puts either in the
prompt raises held-out accuracy from 0 to 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspy_icl_opt.testing import always, any_of, correct_demos, make_words, rule_in_instruction, simulated_task_lm

RULE = "reverse the word"
PROPOSAL = "Reverse the word letter by letter."
SIZES = {"train_size": 10, "val_size": 10, "test_size": 10}


def solve(inputs: Mapping[str, str]) -> str:
    return str(inputs["question"]).strip()[::-1]


@pytest.fixture(autouse=True)
def _reset_dspy_settings():
    """Tests run inside a fresh dspy.context, so nothing leaks between them."""
    with dspy.context(lm=None, adapter=None):
        yield


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "reverse.jsonl"
    words = make_words(40, seed=1)
    path.write_text("\n".join(json.dumps({"question": w, "answer": w[::-1]}) for w in words), encoding="utf-8")
    return path


@pytest.fixture
def make_task_lm() -> Callable[..., dspy.LM]:
    def make(**kwargs: Any) -> dspy.LM:
        knows = any_of(rule_in_instruction(RULE), correct_demos(solve, at_least=2))
        return simulated_task_lm(solve=kwargs.pop("solve", solve), knows=knows, **kwargs)

    return make


@pytest.fixture
def task_lm(make_task_lm) -> dspy.LM:
    return make_task_lm()


@pytest.fixture
def prompt_lm() -> dspy.LM:
    """A prompt model that always proposes the rule, whatever it is asked (OPRO reads the <INS> tags)."""
    return simulated_task_lm(solve=lambda inputs: f"<INS>{PROPOSAL}</INS>", knows=always(), name="fake/prompt-model")


@pytest.fixture
def config_dict(data_file: Path, tmp_path: Path) -> dict[str, Any]:
    return {"name": "t", "program": "qa", "metric": "exact_match",
            "data": {"path": str(data_file), **SIZES},
            "optimize": [{"optimizer": "labeled", "params": {"k": 3}}],
            "budget": {"max_task_calls": 200, "max_prompt_calls": 20},
            "output": str(tmp_path / "run")}
