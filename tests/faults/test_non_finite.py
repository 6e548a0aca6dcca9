"""Item 5: non-finite numbers never crash a run: failure_score is validated, a non-finite metric value is a metric error."""

from __future__ import annotations

import math

import pytest

from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from tests.faults.test_every_strategy import SUITES


def _task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)


@pytest.mark.parametrize(("value", "error", "message"), [
    (float("nan"), ValueError, r"`failure_score` must be a number, but got nan"),
    (float("inf"), ValueError, r"`failure_score` must be a finite number, but got inf"),
    (-math.inf, ValueError, r"`failure_score` must be a finite number"),
    ("abc", TypeError, r"`failure_score` must be a number, but got str 'abc'"),
    (None, TypeError, r"`failure_score` must be a number, but got NoneType"),
    (True, TypeError, r"`failure_score` must be a number, but got bool"),
])
def test_failure_score_is_validated_with_a_named_error(value, error, message):
    task = _task()
    with pytest.raises(error, match=message):
        OPRO(task.metric, task_model=task.lm(), failure_score=value)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e400])
@pytest.mark.parametrize("name", sorted(SUITES))
def test_a_non_finite_metric_value_is_a_counted_metric_error(name, bad):
    suite = SUITES[name]()
    task = _task()
    calls = {"n": 0}

    def metric(example, prediction, trace=None):
        calls["n"] += 1
        return bad if calls["n"] % 3 == 0 else task.metric(example, prediction, trace)

    optimizer = suite.make(task, task_lm=task.lm(), prompt_lm=scripted_lm(suite.prompt_responder(task)), seed=0,
                           progress=False)
    optimizer.metric = metric
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    report = optimizer.report_
    assert report.finished and report.counters.metric_errors > 0
    assert all(math.isfinite(v) for c in report.candidates for v in c.scores.values())
