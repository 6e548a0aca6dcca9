"""The scripted fake LM: order, exhaustion, fallback, recording, usage, threads."""

import asyncio
import copy
import threading

import dspy
import pytest
from dspy.lm15 import Request

from dspy_icl_opt.testing import (
    ScriptedEngine,
    ScriptExhaustedError,
    estimate_tokens,
    format_chat_reply,
    parse_field_blocks,
    scripted_lm,
)

THREADS = 8
CALLS_PER_THREAD = 25


def test_replies_come_in_order_and_callables_see_the_request():
    seen = []

    def echo(request):
        seen.append(request)
        return f"echo {request.messages[-1].text}"

    lm = scripted_lm(["one", echo, "three"])
    assert [lm(f"q{i}")[0] for i in range(3)] == ["one", "echo q1", "three"]
    assert len(seen) == 1 and isinstance(seen[0], Request)
    assert lm.engine.call_count == 3
    assert lm.engine.replies == ["one", "echo q1", "three"]
    assert lm.engine.remaining == 0


def test_exhausted_script_raises_a_clear_error():
    lm = scripted_lm([format_chat_reply({"answer": "x"})])
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        assert predict(question="first").answer == "x"
        with pytest.raises(Exception, match="exhausted") as info:
            predict(question="second")
    assert isinstance(info.value.__cause__, ScriptExhaustedError)
    assert lm.engine.call_count == 2  # not retried


def test_direct_engine_exhaustion_raises_script_exhausted():
    engine = ScriptedEngine([])
    with pytest.raises(ScriptExhaustedError, match="has 0 replies but received request #1"):
        engine.complete(Request(model="fake", messages=(dspy.lm15.Message.user("hi"),)))


@pytest.mark.parametrize("fallback", ["again", lambda request: "again"])
def test_fallback_answers_after_the_script(fallback):
    lm = scripted_lm(["first"], fallback=fallback)
    assert [lm("x")[0] for _ in range(3)] == ["first", "again", "again"]


def test_single_callable_never_runs_out():
    lm = scripted_lm(lambda request: "same")
    assert [lm("x")[0] for _ in range(5)] == ["same"] * 5
    assert lm.engine.remaining is None


def test_requests_expose_system_user_text_and_config():
    signature = dspy.Signature("question -> answer", "Propose a better instruction.")
    lm = scripted_lm([format_chat_reply({"answer": "ok"})])
    with dspy.context(lm=lm):
        dspy.Predict(signature, temperature=0.7, max_tokens=123)(question="Which prompt?")
    engine = lm.engine
    assert "your objective is:" in engine.system_text()
    assert "Propose a better instruction." in engine.system_text()
    assert parse_field_blocks(engine.last_user_text()) == {"question": "Which prompt?"}
    assert [role for role, _ in engine.messages()] == ["user"]
    request = engine.requests[0]
    assert request.config.temperature == 0.7
    assert request.config.max_tokens == 123


def test_usage_is_estimated_from_words():
    reply = "four words of reply"
    lm = scripted_lm([reply])
    lm("a prompt of six words here")
    usage = lm.history[-1]["usage"]
    assert usage["completion_tokens"] == estimate_tokens(reply) == 4
    assert usage["prompt_tokens"] >= 6
    assert estimate_tokens("") == 1


def test_inspecting_before_any_call_is_a_clear_error():
    with pytest.raises(IndexError, match="no requests yet"):
        ScriptedEngine(["x"]).system_text()


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ("just a string", "`responses` must be a list"),
        ([1, "x"], r"`responses\[0\]` must be a string"),
        (42, "`responses`"),
    ],
)
def test_bad_scripts_are_refused(responses, message):
    with pytest.raises(TypeError, match=message):
        scripted_lm(responses)


def test_bad_fallback_is_refused():
    with pytest.raises(TypeError, match="`fallback` must be"):
        ScriptedEngine(["x"], fallback=3)


def test_responder_returning_non_string_fails_loudly():
    lm = scripted_lm([lambda request: {"answer": "x"}])
    with pytest.raises(Exception, match="must return a string"):
        lm("hi")


def test_thread_safe_each_reply_used_exactly_once():
    total = THREADS * CALLS_PER_THREAD
    lm = scripted_lm([f"reply {i}" for i in range(total)])
    outputs, lock = [], threading.Lock()

    def worker():
        for _ in range(CALLS_PER_THREAD):
            text = lm("go")[0]
            with lock:
                outputs.append(text)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outputs) == sorted(f"reply {i}" for i in range(total))
    assert lm.engine.call_count == len(lm.engine.requests) == total


def test_async_calls_use_the_same_script():
    lm = scripted_lm([format_chat_reply({"answer": "sync"}), format_chat_reply({"answer": "async"})])
    predict = dspy.Predict("question -> answer")

    async def run():
        with dspy.context(lm=lm):
            return (await predict.acall(question="q")).answer

    with dspy.context(lm=lm):
        assert predict(question="q").answer == "sync"
    assert asyncio.run(run()) == "async"
    assert lm.engine.call_count == 2


def test_copies_of_the_lm_share_the_engine():
    lm = scripted_lm(["a", "b"])
    assert copy.deepcopy(lm).engine is lm.engine
    assert lm.copy(temperature=0.3).engine is lm.engine
    copy.deepcopy(lm)("x")
    assert lm.engine.call_count == 1


def test_format_chat_reply_round_trips_through_chat_adapter():
    reply = format_chat_reply({"reasoning": "because", "answer": ["x", "y"]})
    assert reply.endswith("[[ ## completed ## ]]")
    parsed = dspy.ChatAdapter().parse(dspy.Signature("question -> reasoning, answer: list[str]"), reply)
    assert parsed == {"reasoning": "because", "answer": ["x", "y"]}
