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
    # n samples are n requests to a canonical engine, each with the whole prompt
    assert token_bound(lm, None, user("héllo"), {"n": 3}) == 3 * (OVERHEAD + 6 + 10)
    assert token_bound(lm, None, user("héllo"), {"max_tokens": 4}) == OVERHEAD + 6 + 4  # the call's own cap wins
    assert token_bound(lm, "hi", None, {}) == OVERHEAD + 2 + 10  # a bare prompt is one user message
    parts = [{"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]}]
    assert token_bound(lm, None, parts, {}) == OVERHEAD + 3 + 10
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert token_bound(lm, None, user("x"), {"tools": tools}) > token_bound(lm, None, user("x"), {})


def test_a_canonical_request_is_bounded_from_its_own_parts_and_config():
    from dspy.lm15 import Config, Message, Request

    engine = ScriptedEngine(lambda request: "x")
    engine.default_max_tokens = 20
    lm = fake_lm(engine=engine, max_tokens=10)
    # DSPy sends a Request's own config, not the LM's settings: the engine's default caps its completion
    request = Request(model="m", messages=(Message.user("héllo"),))
    assert token_bound(lm, request, None, {}) == OVERHEAD + 6 + 20
    capped = Request(model="m", messages=(Message.user("héllo"),), system="sys", config=Config(max_tokens=3))
    assert token_bound(lm, capped, None, {}) == OVERHEAD + 3 + 6 + 3
    # an extension such as a continuation to score is sent, and generated: it counts twice
    scored = Request(model="m", messages=(Message.user("héllo"),),
                     config=Config(max_tokens=3, extensions={"score_continuation": "gold " * 50}))
    assert token_bound(lm, scored, None, {}) >= OVERHEAD + 6 + 3 + 2 * len("gold " * 50)
    assert token_bound(fake_lm(max_tokens=10), request, None, {}) is None  # neither the request nor the engine caps it


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


class Slow:
    """An engine whose calls take a while and that notes how many were in flight at once."""

    def __init__(self, reply="a b c"):
        self.inner = ScriptedEngine(lambda request: reply)
        self.busy = self.most = 0
        self.lock = threading.Lock()

    def complete(self, request):
        with self.lock:
            self.busy += 1
            self.most = max(self.most, self.busy)
        time.sleep(0.2)
        with self.lock:
            self.busy -= 1
        return self.inner.complete(request)

    def close(self):
        pass


def run_threads(metered, count, messages):
    outcomes: list[str] = []

    def call():
        try:
            metered(messages=messages)
            outcomes.append("answered")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


def test_calls_in_flight_together_hold_their_bounds_so_threads_cannot_pass_the_cap_together():
    # Before, four calls admitted together under the cap each spent their own tokens past it. A call the held bounds
    # leave no room for is refused at once, not kept waiting (waiting can hang a sync call on a busy event loop).
    engine = Slow()
    lm = fake_lm(engine=engine, max_tokens=8)
    bound = token_bound(lm, None, user("q"), {})
    meter = BudgetMeter(Budget(max_task_tokens=2 * bound + bound // 2))  # room for two calls' bounds at once
    assert run_threads(MeteredLM(lm, meter, "task"), 4, user("q")) == ["answered", "answered", "refused", "refused"]
    assert engine.most == 2 and meter.spent["task"].tokens <= 2 * bound + bound // 2
    assert meter._in_flight_tokens["task"] == 0 and meter._in_flight["task"] == 0


def test_a_cancelled_async_call_gives_back_what_it_held():
    import asyncio

    class Hangs:
        async def complete(self, request):
            await asyncio.sleep(10)

        def stream(self, request):
            raise NotImplementedError

        async def aclose(self):
            pass

    lm = dspy.LM(f"fake/{uuid.uuid4().hex}", engine=ScriptedEngine(lambda request: "x"), async_engine=Hangs(),
                 cache=False, max_tokens=8)
    meter = BudgetMeter(Budget(max_task_tokens=1000))
    metered = MeteredLM(lm, meter, "task")

    async def main():
        call = asyncio.ensure_future(metered.acall(messages=user("q")))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(main())
    assert meter._in_flight_tokens["task"] == 0 and meter._in_flight["task"] == 0
    bound = token_bound(lm, None, user("q"), {})
    assert meter.spent["task"].tokens == bound  # it may have run: charged at its bound, never more than that
    assert metered(messages=user("q"))  # and the next call is admitted


def test_a_failed_call_is_charged_the_tokens_its_answered_samples_cost():
    from dspy.lm15 import InvalidRequestError

    class SecondFails(ScriptedEngine):
        def complete(self, request):
            if self.call_count:
                self.call_count += 1
                raise InvalidRequestError("refused")
            return super().complete(request)

    lm = fake_lm(engine=SecondFails(lambda request: "a b c"), max_tokens=8, num_retries=0)
    meter = BudgetMeter(Budget(max_task_tokens=10_000))
    with pytest.raises(Exception):
        MeteredLM(lm, meter, "task")(messages=user("one two"), n=2)
    assert meter.spent["task"].tokens > 0  # the first sample's tokens (0 before)


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


def test_tokens_held_back_for_later_calls_follow_the_mean_call_and_are_given_back():
    lm = fake_lm(max_tokens=8)
    probe = BudgetMeter(Budget())
    MeteredLM(lm, probe, "task")(messages=user("one two three"))
    per_call = probe.spent["task"].tokens
    cap = 40 * per_call + token_bound(lm, None, user("one two three"), {})
    meter = BudgetMeter(Budget(max_task_tokens=cap))
    metered = MeteredLM(lm, meter, "task")
    metered(messages=user("one two three"))
    meter.hold_back_tokens("task", 1000)  # more than the cap holds: no call is left to the search
    assert meter.exhausted("task")
    meter.release_tokens("task", 1000)
    meter.hold_back_tokens("task", 5)
    assert not meter.exhausted("task")
    # spend until only the held-back calls' tokens are left: the next call is refused before it runs
    with pytest.raises(BudgetExhausted, match="token budget"):
        for _ in range(1000):
            metered(messages=user("one two three"))
    assert cap - meter.spent["task"].tokens >= 5 * per_call  # what the 5 calls need is still there
    meter.release_tokens("task", 5)
    for _ in range(5):  # the held-back calls run
        metered(messages=user("one two three"))
    assert meter.spent["task"].tokens <= cap
    unlimited = BudgetMeter(Budget(max_task_calls=10))
    unlimited.hold_back_tokens("task", 5)  # no token cap: nothing set aside, nothing to give back
    assert unlimited._held_back_calls["task"] == 0


def test_under_a_task_token_cap_the_search_leaves_the_final_validation_its_tokens():
    task = planted_rule_task("vowels", train_size=20, val_size=10, seed=0)
    prompt_lm = scripted_lm(lambda request: f"For each word, {task.rule}.")

    def run(budget):
        opro = OPRO(task.metric, prompt_model=prompt_lm, task_model=task.lm().copy(max_tokens=32), budget=budget,
                    progress=False, seed=0)
        opro.compile(task.program(), trainset=task.train, valset=task.val)
        return opro.report_

    full = run(None)
    cap = int(full.spent["task"].tokens * 0.6)
    report = run({"max_task_tokens": cap})
    assert report.stopped_by_budget and report.spent["task"].tokens <= cap
    # before: the search spent the tokens and the start could not even be validated (no "val" score)
    assert "val" in report.best_scores
    assert report.extra["final_choice"]["examples"] == len(task.val)
