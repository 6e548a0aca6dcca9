"""OPRO end to end on the real embedded model: the 0.5B prompt model's answers parse and are scored."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")


@pytest.mark.embedded
def test_opro_runs_on_the_embedded_model(tmp_path):
    from dspy_icl_opt.lm import resolve_lm
    from dspy_icl_opt.optimizers.opro import OPRO
    from dspy_icl_opt.programs import load_task, make_program

    task = load_task("hyperbaton", seed=0, train_size=3, val_size=3, test_size=1)
    task_lm = resolve_lm("embedded", temperature=0.0, max_tokens=64, cache=False)
    prompt_lm = resolve_lm("embedded", temperature=1.0, max_tokens=120, cache=False)
    opro = OPRO(task.metric, task_model=task_lm, prompt_model=prompt_lm, steps=1, candidates_per_step=3,
                final_candidates=2, max_retries=2, log_dir=tmp_path, progress=False)
    program = opro.compile(make_program("qa", task), trainset=task.train, valset=task.val)
    report = opro.report_
    assert report.finished and report.spent["prompt"].calls >= 2
    proposals = [c for c in report.candidates if c.origin == "proposal"]
    assert proposals, f"no proposal from the embedded prompt model parsed: {report.extra['dropped_proposals']}"
    assert all("train" in c.scores for c in proposals)
    assert "val" in report.best_scores
    assert (tmp_path / "program.json").exists() and program.predictor is not None
