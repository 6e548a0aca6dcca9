"""Item 11: a bad budget, storage or log_dir is named with what was expected and the fix, never raw library text."""

from __future__ import annotations

import pytest

from dspy_icl_opt.demos import DemoSelector
from dspy_icl_opt.optimizers.opro import OPRO
from dspy_icl_opt.testing import planted_rule_task

RAW = ("pydantic", "errors.pydantic.dev", "sqlalche.me", "Traceback", "[SQL", "validation error for")


def _task():
    return planted_rule_task("vowels", train_size=8, val_size=6, seed=0)


@pytest.mark.parametrize(("budget", "message"), [
    ({"max_task_calls": -1}, r"`budget.max_task_calls` must be None or an integer >= 0, but got -1"),
    ({"max_task_calls": "lots"}, r"`budget.max_task_calls` must be None or an integer >= 0, but got 'lots'"),
    ({"max_calls": 10}, r"`budget` has no cap `max_calls` \(the caps are"),
    ({"max_prompt_tokens": 2.5}, r"`budget.max_prompt_tokens` must be None or an integer >= 0, but got 2.5"),
])
def test_bad_budget_dict(budget, message):
    task = _task()
    with pytest.raises(ValueError, match=message) as info:
        OPRO(task.metric, task_model=task.lm(), budget=budget)
    assert "Pass e.g. budget=" in str(info.value) and not any(raw in str(info.value) for raw in RAW)


@pytest.mark.parametrize(("storage", "message"), [
    ("not-a-url", "not a database URL"),
    ("sqlite:////no/such/folder/x.db", "of the SQLite file does not exist"),
    ("postgresql://u:pw@127.0.0.1:1/db", "connection to server"),
])
def test_bad_storage_is_named_before_any_lm_call(storage, message):
    task = _task()
    lm = task.lm()
    selector = DemoSelector(task.metric, task_model=lm, n_trials=2, storage=storage, progress=False)
    with pytest.raises(ValueError, match=rf"`storage` '.*' cannot be opened: .*{message}") as info:
        selector.compile(task.program(), trainset=task.train, valset=task.val)
    assert lm.engine.call_count == 0
    assert "pw@" not in str(info.value) and not any(raw in str(info.value) for raw in RAW)


def test_unwritable_log_dir(tmp_path):
    task = _task()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    lm = task.lm()
    with pytest.raises(ValueError, match=r"`log_dir` must be a folder that can be written, but .* cannot") as info:
        OPRO(task.metric, task_model=lm, log_dir=blocker / "sub", progress=False).compile(
            task.program(), trainset=task.train, valset=task.val)
    assert lm.engine.call_count == 0 and "Errno" not in str(info.value)
    with pytest.raises(TypeError, match=r"`log_dir` must be a folder path"):
        OPRO(task.metric, task_model=lm, log_dir=3)
