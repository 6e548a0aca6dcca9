"""Item 2: a resume that would replay results of another run is refused, saying what differs."""

from __future__ import annotations

import pytest

from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.search.fingerprint import metric_identity
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from dspy_icl_opt.testing.faulty import faulty_lm
from tests.contract.suite import rule_stating_responder


def _task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)


def metric_v1(example, prediction, trace=None):
    return float(str(prediction.answer) == str(example.answer))


def metric_v2(example, prediction, trace=None):  # the same metric "fixed": strips whitespace now
    return float(str(prediction.answer).strip() == str(example.answer).strip())


metric_v2.__qualname__ = metric_v2.__name__ = "metric_v1"  # fixed under the same name


def _compile(tmp_path, task, *, metric=None, task_lm=None, resume=None, **kwargs):
    opt = OPRO(metric or metric_v1, task_model=task_lm or task.lm(),
               prompt_model=scripted_lm(rule_stating_responder(task.rule)), steps=1, candidates_per_step=1,
               progress=False, log_dir=tmp_path, **kwargs)
    opt.compile(task.program(), trainset=task.train, valset=task.val, resume=resume)
    return opt


def _lm(task, **kwargs):
    return faulty_lm(task.lm().engine, name="fake/task-model", **kwargs)


def test_a_metric_fixed_under_the_same_name_is_refused(tmp_path):
    task = _task()
    _compile(tmp_path, task)
    with pytest.raises(ValueError, match=r"differs in \['fingerprint'\]: metric \(there: metric_v1@src:\w+, "
                                         r"here: metric_v1@src:\w+\).*resume=False \(the CLI: --fresh\)"):
        _compile(tmp_path, task, metric=metric_v2)
    _compile(tmp_path, task, metric=metric_v2, resume=False)  # starting over is allowed


def test_an_explicit_metric_version_decides(tmp_path):
    def judged(example, prediction, trace=None):
        return metric_v1(example, prediction)

    judged.version = "2024-01"
    assert metric_identity(judged).endswith("@version:2024-01")
    task = _task()
    _compile(tmp_path, task, metric=judged)
    judged.version = "2024-02"
    with pytest.raises(ValueError, match=r"metric \(there: .*@version:2024-01, here: .*@version:2024-02\)"):
        _compile(tmp_path, task, metric=judged)


@pytest.mark.parametrize(("before", "after", "named"), [
    ({"temperature": 0.0}, {"temperature": 0.7}, "temperature"),
    ({"max_tokens": 64}, {"max_tokens": 256}, "max_tokens"),
    ({}, {"top_p": 0.5}, "top_p"),
])
def test_changed_lm_sampling_settings_are_refused(tmp_path, before, after, named):
    task = _task()
    _compile(tmp_path, task, task_lm=_lm(task, **before))
    with pytest.raises(ValueError, match=rf"task_model \(there: .*, here: .*\"{named}\"") as info:
        _compile(tmp_path, task, task_lm=_lm(task, **after))
    assert "prompt_model" not in str(info.value)


def test_same_settings_resume(tmp_path):
    task = _task()
    _compile(tmp_path, task, task_lm=_lm(task, temperature=0.0))
    lm = _lm(task, temperature=0.0)
    _compile(tmp_path, task, task_lm=lm)
    assert lm.engine.inner.call_count == 0


def test_a_changed_failure_score_is_refused(tmp_path):
    task = _task()
    _compile(tmp_path, task)
    with pytest.raises(ValueError, match=r"failure_score \(there: 0.0, here: -1.0\)"):
        _compile(tmp_path, task, failure_score=-1.0)


def test_a_changed_max_retries_is_refused(tmp_path):
    # A journaled answer that no try made usable replays as none; more retries would have asked again.
    task = _task()
    _compile(tmp_path, task)
    with pytest.raises(ValueError, match=r"max_retries \(there: 2, here: 5\)"):
        _compile(tmp_path, task, max_retries=5)


def test_a_journal_without_its_report_is_refused(tmp_path):
    task = _task()
    _compile(tmp_path, task)
    (tmp_path / "report.json").unlink()
    with pytest.raises(ValueError, match=r"holds a journal but no report.json.*resume=False"):
        _compile(tmp_path, task)
    _compile(tmp_path, task, resume=False)
