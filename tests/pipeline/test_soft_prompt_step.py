"""The soft_prompt step in a YAML pipeline: trained, saved beside program.json, and loaded back on a re-run."""

from __future__ import annotations

import pytest

from dspy_icl_opt.lm.hf_models import soft_extra_available
from dspy_icl_opt.lm.soft_prompt import SOFT_PROMPT_FILE
from dspy_icl_opt.pipeline import parse_config, run_pipeline
from dspy_icl_opt.pipeline.registry import lookup


def test_the_registry_names_the_soft_prompt_step():
    assert lookup("soft_prompt").class_name == "SoftPromptTuner"
    assert lookup("SoftPromptTuner").name == lookup("prompt-tuning").name == "soft_prompt"


@pytest.mark.skipif(not soft_extra_available(), reason="needs the soft extra: pip install 'dspy-icl-opt[soft]'")
def test_soft_prompt_step_runs_from_a_config_and_is_loaded_back(config_dict, make_task_lm, tmp_path):
    import torch

    from dspy_icl_opt.testing.tiny_model import tiny_chat_model

    torch.set_num_threads(1)
    tiny = str(tiny_chat_model(tmp_path / "tiny"))
    # The simulated task model answers readably but wrongly without the rule (0); the tiny model's unreadable
    # answers score failure_score (1), so the soft prompt passes the final choice and the program carries it.
    config_dict["optimize"] = [{"optimizer": "soft_prompt", "params": {
        "base_model": tiny, "epochs": 1, "num_virtual_tokens": 4, "learning_rate": 0.3, "failure_score": 1.0}}]
    config_dict["evaluate"] = {"before": False, "after": False}
    result = run_pipeline(parse_config(config_dict), task_lm=make_task_lm(), progress=False)
    out = tmp_path / "run"
    [step] = list((out / "steps").iterdir())
    assert (step / SOFT_PROMPT_FILE).is_file() and (out / SOFT_PROMPT_FILE).is_file()
    assert result.program.predictor.lm.model.startswith("soft2/")
    assert result.reports[0].extra["soft_prompt"]["chosen_epoch"] == 1

    again = run_pipeline(parse_config(config_dict), task_lm=make_task_lm(), progress=False)
    assert again.program.predictor.lm.model == result.program.predictor.lm.model  # the finished step's soft prompt was loaded back
