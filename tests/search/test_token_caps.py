"""Token caps: a call is admitted only when the tokens left cover the most it can cost, so a cap is never passed."""

from __future__ import annotations

import threading
import time
import uuid

import dspy
import pytest

from dspy_icl_opt.optimizers import OPRO
from dspy_icl_opt.search import Budget, BudgetExhausted, BudgetMeter, MeteredLM
from dspy_icl_opt.search.budget import TEMPLATE_TOKENS_PER_CALL, TEMPLATE_TOKENS_PER_MESSAGE, token_bound
from dspy_icl_opt.testing import planted_rule_task, scripted_lm
from dspy_icl_opt.testing.chat import AsyncEngine
from dspy_icl_opt.testing.scripted import ScriptedEngine

OVERHEAD = TEMPLATE_TOKENS_PER_CALL + TEMPLATE_TOKENS_PER_MESSAGE


def fake_lm(reply="a b c", engine=None, **kwargs) -> dspy.LM:
    engine = engine or ScriptedEngine(lambda request: reply)
    return dspy.LM(f"fake/{uuid.uuid4().hex}", engine=engine, async_engine=AsyncEngine(engine), cache=False, **kwargs)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_the_bound_is_the_prompts_bytes_a_template_margin_and_max_tokens_per_sample():
    lm = fake_lm(max_tokens=10)
    assert token_bound(lm, None, user("héllo"), {}) == OVERHEAD + 6 + 10  # "é" is two UTF-8 bytes
    assert token_bound(lm, None, user("héllo"), {"n": 3}) == OVERHEAD + 6 + 30
    assert token_bound(lm, None, user("héllo"), {"max_tokens": 4}) == OVERHEAD + 6 + 4  # the call's own cap wins
    assert token_bound(lm, "hi", None, {}) == OVERHEAD + 2 + 10  # a bare prompt is one user message
    parts = [{"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]}]
    assert token_bound(lm, None, parts, {}) == OVERHEAD + 3 + 10
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert token_bound(lm, None, user("x"), {"tools": tools}) > token_bound(lm, None, user("x"), {})


def test_a_canonical_request_is_bounded_from_its_own_parts_and_config():
    from dspy.lm15 import Config, Message, Request

    lm = fake_lm(max_tokens=10)
    request = Request(model="m", messages=(Message.user("héllo"),))
    assert token_bound(lm, request, None, {}) == OVERHEAD + 6 + 10
    capped = Request(model="m", messages=(Message.user("héllo"),), system="sys", config=Config(max_tokens=3))
    assert token_bound(lm, capped, None, {}) == OVERHEAD + 3 + 6 + 3


def test_no_bound_without_a_completion_cap_or_for_what_is_not_text():
    assert token_bound(fake_lm(), None, user("hi"), {}) is None  # nothing caps the completion

    engine = ScriptedEngine(lambda request: "x")
    engine.default_max_tokens = 7  # the engine's own default (the embedded model's is 512)
    assert token_bound(fake_lm(engine=engine), None, user("hi"), {}) == OVERHEAD + 2 + 7
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:..."}}]}]
    assert token_bound(fake_lm(max_tokens=10), None, image, {}) is None


def test_a_token_cap_over_calls_that_cannot_be_bounded_is_named_once(caplog):
    caplog.set_level("WARNING", logger="dspy_icl_opt")
    meter = BudgetMeter(Budget(max_task_tokens=10_000))
    metered = MeteredLM(fake_lm(), meter, "task")  # no max_tokens anywhere
    for _ in range(3):
        metered(messages=user("q"))
    warned = [r.getMessage() for r in caplog.records if r.levelno >= 30 and "max_task_tokens" in r.getMessage()]
    assert len(warned) == 1 and "max_tokens=" in warned[0]
    caplog.clear()
    MeteredLM(fake_lm(max_tokens=8), BudgetMeter(Budget(max_task_tokens=10_000)), "task")(messages=user("q"))
    assert not [r for r in caplog.records if r.levelno >= 30 and "max_task_tokens" in r.getMessage()]


def test_the_embedded_engines_name_their_default_completion_cap():
    from dspy_icl_opt.lm.llama_engine import DEFAULT_MAX_TOKENS, LlamaCppEngine

    assert LlamaCppEngine.default_max_tokens == DEFAULT_MAX_TOKENS == 512


def test_a_call_the_tokens_left_cannot_cover_is_refused_before_it_runs_and_the_cap_is_never_passed():
    lm = fake_lm(max_tokens=8)
    bound = token_bound(lm, None, user("one two three"), {})
    cap = 3 * bound + bound // 2
    meter = BudgetMeter(Budget(max_task_tokens=cap))
    metered = MeteredLM(lm, meter, "task")
    admitted = 0
    with pytest.raises(BudgetExhausted, match="token budget"):
        for _ in range(1000):
            metered(messages=user("one two three"))
            admitted += 1
            assert meter.spent["task"].tokens <= cap
    assert admitted == lm.engine.call_count  # the refused call never reached the model
    assert cap - meter.spent["task"].tokens < bound  # refused only when the most it could cost did not fit
    assert meter.spent["task"].tokens <= cap


def test_calls_in_flight_together_hold_their_bounds_so_threads_cannot_pass_the_cap_together():
    inner = ScriptedEngine(lambda request: "a b c")

    class Slow:  # the calls are in flight together
        def complete(self, request):
            time.sleep(0.3)
            return inner.complete(request)

        def close(self):
            pass

    lm = fake_lm(engine=Slow(), max_tokens=8)
    bound = token_bound(lm, None, user("q"), {})
    meter = BudgetMeter(Budget(max_task_tokens=2 * bound + bound // 2))  # room for two calls' bounds
    metered = MeteredLM(lm, meter, "task")
    outcomes: list[str] = []

    def call():
        try:
            metered(messages=user("q"))
            outcomes.append("answered")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["answered", "answered", "refused", "refused"]
    assert inner.call_count == 2


def test_an_optimizer_under_a_task_token_cap_stops_within_it():
    task = planted_rule_task("vowels", train_size=20, val_size=10, seed=0)
    task_lm = task.lm().copy(max_tokens=32)
    prompt_lm = scripted_lm(lambda request: f"For each word, {task.rule}.")
    cap = 6000
    opro = OPRO(task.metric, prompt_model=prompt_lm, task_model=task_lm, budget={"max_task_tokens": cap},
                progress=False)
    opro.compile(task.program(), trainset=task.train, valset=task.val)
    report = opro.report_
    assert report.stopped_by_budget
    assert 0 < report.spent["task"].tokens <= cap
