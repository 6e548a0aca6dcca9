"""`LlamaCppEngine` against an injected fake llama (no model is loaded)."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import threading

import dspy
import pytest
from dspy.lm15 import (
    Config,
    ImagePart,
    InvalidRequestError,
    Message,
    ProviderError,
    Request,
    TextPart,
    UnsupportedFeatureError,
)
from dspy.utils.exceptions import ContextWindowExceededError

from dspy_icl_opt.lm import (
    DEFAULT_MAX_TOKENS,
    EMBEDDED_MODELS,
    AsyncLlamaCppEngine,
    LlamaContextOverflowError,
    LlamaCppEngine,
    MissingLocalExtraError,
    derive_seed,
    load_llama_cpp,
    request_to_messages,
)
from dspy_icl_opt.lm import llama_engine

MODEL = "fake/model"
CONCURRENT_CALLS = 8
FAKE_DELAY_S = 0.02
SAMPLES = 3


def _request(*messages: Message, system=None, **config) -> Request:
    return Request(model=MODEL, messages=messages or (Message.user("Hi"),), system=system, config=Config(**config))


@pytest.fixture
def engine_with(fake_gguf, fake_llama_factory):
    def build(**fake_options):
        fake = fake_llama_factory(**fake_options)
        return LlamaCppEngine(fake_gguf, seed=7, llama=fake), fake
    return build


def test_messages_put_system_first_and_keep_turn_order():
    request = _request(Message.user("Q1"), Message.assistant("A1"), Message.user("Q2"), system="Rules.")
    assert request_to_messages(request) == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]


def test_system_parts_are_joined():
    request = _request(system=(TextPart("one"), TextPart("two")))
    assert request_to_messages(request)[0] == {"role": "system", "content": "one\ntwo"}


def test_leading_developer_merges_into_system_and_later_one_becomes_user():
    request = _request(Message.developer("Be terse."), Message.user("Q"), Message.developer("Now JSON."),
                       system="Rules.")
    assert request_to_messages(request) == [
        {"role": "system", "content": "Rules.\n\nBe terse."},
        {"role": "user", "content": "Q"},
        {"role": "user", "content": "[developer] Now JSON."},
    ]


def test_developer_without_system_becomes_the_system_message():
    assert request_to_messages(_request(Message.developer("D"), Message.user("Q")))[0] == {
        "role": "system", "content": "D"}


def test_non_text_content_and_tool_messages_are_refused():
    image = Message.user((TextPart("look"), ImagePart(url="https://x/y.png", media_type="image/png")))
    with pytest.raises(UnsupportedFeatureError) as info:
        request_to_messages(_request(image))
    assert info.value.feature == "messages[0].parts[1]"
    with pytest.raises(UnsupportedFeatureError):
        request_to_messages(_request(Message.user("Q"), Message.tool("call-1", "out")))


def test_request_config_is_honoured(engine_with):
    engine, fake = engine_with()
    engine.complete(_request(temperature=0.3, max_tokens=17, top_p=0.5, stop=("END",), top_k=5))
    call = fake.calls[0]
    assert (call["temperature"], call["max_tokens"], call["top_p"], call["stop"]) == (0.3, 17, 0.5, ["END"])
    assert call["top_k"] == 5
    assert call["messages"] == [{"role": "user", "content": "Hi"}]


def test_defaults_are_greedy_with_bounded_tokens(engine_with):
    engine, fake = engine_with()
    engine.complete(_request())
    call = fake.calls[0]
    assert (call["temperature"], call["max_tokens"], call["stop"], call["seed"]) == (0.0, DEFAULT_MAX_TOKENS, [], 7)
    assert "top_k" not in call and "response_format" not in call


def test_json_schema_response_format_becomes_a_llama_grammar(engine_with):
    engine, fake = engine_with()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    engine.complete(_request(response_format={"type": "json_schema", "name": "x", "schema": schema}))
    assert fake.calls[0]["response_format"] == {"type": "json_object", "schema": schema}
    engine.complete(_request(response_format={"type": "json_object"}))
    assert fake.calls[1]["response_format"] == {"type": "json_object"}


def test_llama_sampling_extensions_pass_through(engine_with):
    engine, fake = engine_with()
    engine.complete(_request(extensions={"repeat_penalty": 1.3, "min_p": 0.1}))
    assert (fake.calls[0]["repeat_penalty"], fake.calls[0]["min_p"]) == (1.3, 0.1)


def test_response_carries_text_usage_and_model(engine_with):
    engine, _ = engine_with(text="hello", usage=(12, 3))
    response = engine.complete(_request())
    assert response.message.text == "hello"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 3, 15)
    assert response.model == MODEL and response.id == "chatcmpl-1"
    assert response.finish_reason == "stop"


@pytest.mark.parametrize(("llama_reason", "expected"), [("length", "length"), ("stop", "stop"), (None, "stop")])
def test_finish_reason_mapping(engine_with, llama_reason, expected):
    engine, _ = engine_with(finish_reason=llama_reason)
    assert engine.complete(_request()).finish_reason == expected


def test_stream_yields_the_completed_text(engine_with):
    engine, _ = engine_with(text="streamed")
    events = list(engine.stream(_request()))
    assert events[0].type == "start" and events[-1].type == "end"
    assert "streamed" in repr(events)


def test_predict_parses_and_usage_is_tracked(engine_with):
    engine, fake = engine_with(usage=(40, 9))
    lm = dspy.LM(MODEL, engine=engine, cache=False)
    with dspy.context(lm=lm, track_usage=True):
        prediction = dspy.Predict("question -> answer")(question="What is 2+2?")
    assert prediction.answer == "4"
    usage = prediction.get_lm_usage()[MODEL]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (40, 9)
    system = fake.calls[0]["messages"][0]
    assert system["role"] == "system" and "`answer`" in system["content"]


def test_n_samples_make_n_calls_with_distinct_reproducible_seeds(fake_gguf, fake_llama_factory):
    fake = fake_llama_factory(text=None)  # Echoes the seed as the completion.
    lm = dspy.LM(MODEL, engine=LlamaCppEngine(fake_gguf, seed=3, llama=fake), temperature=0.8, cache=False)
    outputs = lm("Pick a word.", n=SAMPLES)
    assert len(fake.calls) == SAMPLES and len(outputs) == SAMPLES
    assert len(set(outputs)) == SAMPLES
    assert outputs == [f"seed={derive_seed(3, call_index=i)}" for i in range(SAMPLES)]


def test_temperature_zero_reuses_the_engine_seed(engine_with):
    engine, fake = engine_with()
    for _ in range(SAMPLES):
        engine.complete(_request(temperature=0.0))
    assert [c["seed"] for c in fake.calls] == [7] * SAMPLES


def test_request_seed_overrides_the_engine_seed(engine_with):
    engine, fake = engine_with()
    engine.complete(_request(temperature=1.0, seed=99))
    assert fake.calls[0]["seed"] == derive_seed(99, call_index=0)


def test_a_request_seed_samples_the_same_whatever_came_before(engine_with):
    # A resumed run asks only the questions the journal lacks, each with its own seed: its samples must be
    # the ones an uninterrupted run drew, however many other calls that run made first.
    uninterrupted, fake = engine_with()
    for seed in (11, 12, 13, 12):
        uninterrupted.complete(_request(temperature=1.0, seed=seed))
    resumed, fake_resumed = engine_with()
    for seed in (13, 12):
        resumed.complete(_request(temperature=1.0, seed=seed))
    drawn = [c["seed"] for c in fake.calls]
    assert [c["seed"] for c in fake_resumed.calls] == [drawn[2], drawn[1]]
    assert drawn[3] == derive_seed(12, call_index=1) != drawn[1], "a repeated seed still gets a fresh sample"


def test_calls_on_one_model_are_serialized_across_engines(fake_gguf, fake_llama_factory):
    fake = fake_llama_factory(delay=FAKE_DELAY_S)
    engines = [LlamaCppEngine(fake_gguf, llama=fake), LlamaCppEngine(fake_gguf, llama=fake)]
    threads = [threading.Thread(target=engines[i % 2].complete, args=(_request(),)) for i in range(CONCURRENT_CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.calls) == CONCURRENT_CALLS
    assert fake.max_active == 1


class SlottedLlama:
    """An injected model that cannot be weak-referenced."""

    __slots__ = ("inner",)

    def __init__(self, inner) -> None:
        self.inner = inner

    def create_chat_completion(self, **kwargs):
        return self.inner.create_chat_completion(**kwargs)


def test_calls_are_serialized_for_models_without_weakref_support(fake_gguf, fake_llama_factory):
    fake = fake_llama_factory(delay=FAKE_DELAY_S)
    engine = LlamaCppEngine(fake_gguf, llama=SlottedLlama(fake))
    threads = [threading.Thread(target=engine.complete, args=(_request(),)) for _ in range(CONCURRENT_CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.calls) == CONCURRENT_CALLS and fake.max_active == 1


def test_context_overflow_names_n_ctx(engine_with):
    engine, _ = engine_with(error=ValueError("Requested tokens (5000) exceed context window of 4096"))
    with pytest.raises(LlamaContextOverflowError) as info:
        engine.complete(_request())
    assert isinstance(info.value, ValueError)
    assert "n_ctx=4096" in str(info.value) and info.value.n_ctx == 4096


def test_context_overflow_reaches_dspy_as_context_window_error(engine_with):
    engine, _ = engine_with(error=ValueError("Requested tokens (5000) exceed context window of 4096"))
    lm = dspy.LM(MODEL, engine=engine, cache=False)
    with pytest.raises(ContextWindowExceededError):
        lm("Hi")


def test_other_llama_errors_are_translated(engine_with):
    engine, _ = engine_with(error=ValueError("bad grammar"))
    with pytest.raises(InvalidRequestError, match="bad grammar"):
        engine.complete(_request())
    engine, _ = engine_with(error=RuntimeError("llama_decode returned -1"))
    with pytest.raises(ProviderError, match="llama_decode"):
        engine.complete(_request())


def test_constructor_validates_arguments(tmp_path, fake_gguf):
    with pytest.raises(FileNotFoundError, match="must be an existing GGUF file"):
        LlamaCppEngine(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="`n_ctx` must be an integer >= 256"):
        LlamaCppEngine(fake_gguf, n_ctx=64)
    with pytest.raises(ValueError, match="`n_threads` must be an integer >= 1"):
        LlamaCppEngine(fake_gguf, n_threads=-1)


def test_missing_bindings_raise_the_install_hint():
    with pytest.raises(MissingLocalExtraError, match=r"pip install 'dspy-icl-opt\[local\]'"):
        load_llama_cpp(module_name="llama_cpp_is_not_installed_here")


def test_dump_and_load_state_round_trip(fake_gguf):
    engine = LlamaCppEngine(fake_gguf, n_ctx=1024, n_threads=1, seed=5, chat_format="chatml")
    state = json.loads(json.dumps(engine.dump_state()))
    loaded = LlamaCppEngine.load_state(state)
    assert type(loaded) is LlamaCppEngine and loaded is not engine
    assert loaded.dump_state() == engine.dump_state()
    assert state["embedded"] is None and state["model_path"] == str(fake_gguf.resolve())


@pytest.mark.parametrize("saved", ["embedded-1.5b", "embedded", True])
def test_a_saved_embedded_model_is_found_again_by_its_name(saved, monkeypatch, tmp_path, fake_gguf):
    asked = []
    monkeypatch.setattr(llama_engine, "ensure_embedded_model", lambda *, model: asked.append(model) or fake_gguf)
    name = "embedded" if saved is True else saved
    here = tmp_path / EMBEDDED_MODELS[name].file_name
    here.write_bytes(fake_gguf.read_bytes())
    state = LlamaCppEngine(here).dump_state()
    assert state["embedded"] == name
    here.unlink()  # the program is loaded on a machine where the model sits elsewhere
    loaded = LlamaCppEngine.load_state(state | {"embedded": saved})
    assert asked == [name] and loaded.model_path == str(fake_gguf.resolve())


def test_load_state_rejects_unknown_versions(fake_gguf):
    state = LlamaCppEngine(fake_gguf).dump_state() | {"version": 99}
    with pytest.raises(ValueError, match="version"):
        LlamaCppEngine.load_state(state)


def test_dspy_lm_with_engine_saves_and_loads(fake_gguf, tmp_path):
    program = dspy.Predict("question -> answer")
    program.lm = dspy.LM(MODEL, engine=LlamaCppEngine(fake_gguf, n_ctx=2048, seed=11), max_tokens=64)
    path = tmp_path / "program.json"
    program.save(path)
    restored = dspy.Predict("question -> answer")
    restored.load(path, allow_unsafe_lm_state=True)
    engine = restored.lm.engine
    assert isinstance(engine, LlamaCppEngine)
    assert (engine.model_path, engine.n_ctx, engine.seed) == (str(fake_gguf.resolve()), 2048, 11)
    assert restored.lm.kwargs["max_tokens"] == 64


def test_copies_share_the_engine_and_pickling_works(fake_gguf):
    engine = LlamaCppEngine(fake_gguf)
    program = dspy.Predict("question -> answer")
    program.lm = dspy.LM(MODEL, engine=engine)
    assert program.deepcopy().lm.engine is engine
    assert copy.deepcopy(engine) is engine
    clone = pickle.loads(pickle.dumps(engine))
    assert clone.dump_state() == engine.dump_state()


def test_async_engine_answers_acall_and_shares_the_lock(fake_gguf, fake_llama_factory):
    fake = fake_llama_factory(text="async hello", delay=FAKE_DELAY_S)
    engine = LlamaCppEngine(fake_gguf, llama=fake)
    lm = dspy.LM(MODEL, engine=engine, async_engine=AsyncLlamaCppEngine(engine), cache=False)

    async def main() -> list:
        return await asyncio.gather(*(lm.acall(f"Hi {i}") for i in range(SAMPLES)))

    assert asyncio.run(main()) == [["async hello"]] * SAMPLES
    assert len(fake.calls) == SAMPLES and fake.max_active == 1


def test_async_engine_state_round_trips(fake_gguf):
    engine = AsyncLlamaCppEngine(LlamaCppEngine(fake_gguf, n_ctx=512, seed=2))
    loaded = AsyncLlamaCppEngine.load_state(json.loads(json.dumps(engine.dump_state())))
    assert isinstance(loaded.engine, LlamaCppEngine)
    assert loaded.dump_state() == engine.dump_state()


# ------------------------------------------------------------------------ scoring given text
class ForcingLlama:
    """A llama whose tokens are bytes and whose logits favour byte ``ord("a")``; it samples greedily through the
    logits processors, as llama.cpp does, and stops at its end-of-turn token (0)."""

    VOCAB = 256

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(text)

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return bytes(tokens)

    def token_eos(self) -> int:
        return 0

    def create_chat_completion(self, **kwargs):
        import numpy as np

        self.calls.append(kwargs)
        written: list[int] = []
        for _ in range(kwargs["max_tokens"]):
            logits = np.zeros(self.VOCAB, dtype=np.float32)
            logits[ord("a")] = 5.0
            for processor in kwargs.get("logits_processor") or []:
                logits = processor(written, logits)
            token = int(np.argmax(logits))
            if token == self.token_eos():
                break
            written.append(token)
        return {"id": "x", "choices": [{"message": {"content": bytes(written).decode()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": len(written), "total_tokens": 5 + len(written)}}


def test_a_continuation_is_written_as_given_with_its_tokens_log_probabilities(fake_gguf):
    import math

    llama = ForcingLlama()
    engine = LlamaCppEngine(fake_gguf, llama=llama)
    response = engine.complete(_request(temperature=0.7, extensions={llama_engine.CONTINUATION: "ab"}))
    assert response.text == "ab"
    assert [t.token for t in response.logprobs] == ["a", "b"] and [t.token_id for t in response.logprobs] == [97, 98]
    favoured = 5.0 - math.log(math.exp(5.0) + ForcingLlama.VOCAB - 1)
    other = 0.0 - math.log(math.exp(5.0) + ForcingLlama.VOCAB - 1)
    assert response.logprobs[0].logprob == pytest.approx(favoured) and response.logprobs[1].logprob == pytest.approx(other)
    call = llama.calls[-1]  # greedy, exactly as many tokens as the text, nothing that could stop it early
    assert call["temperature"] == 0.0 and call["max_tokens"] == 2 and call["stop"] == []


def test_a_continuation_that_ends_the_turn_early_is_refused(fake_gguf):
    engine = LlamaCppEngine(fake_gguf, llama=ForcingLlama())
    with pytest.raises(InvalidRequestError, match="ends the model's turn before its last token"):
        engine.complete(_request(extensions={llama_engine.CONTINUATION: "a\x00b"}))
    with pytest.raises(InvalidRequestError, match="non-empty string"):
        engine.complete(_request(extensions={llama_engine.CONTINUATION: ""}))


def test_continuation_scoring_goes_through_dspy_lm(fake_gguf):
    lm = dspy.LM(MODEL, engine=LlamaCppEngine(fake_gguf, llama=ForcingLlama()), cache=False)
    response = lm(_request(logprobs=0, extensions={llama_engine.CONTINUATION: "aa"}))
    assert response.text == "aa" and len(response.logprobs) == 2
    assert LlamaCppEngine.supports_continuation_scoring


def test_scoring_given_text_draws_no_sampling_seed(fake_gguf):
    """A scoring request at a sampling temperature runs greedy and leaves the next sample's seed as it was."""
    plain, scored = ForcingLlama(), ForcingLlama()
    for llama, score in ((plain, False), (scored, True)):
        engine = LlamaCppEngine(fake_gguf, llama=llama, seed=5)
        engine.complete(_request(temperature=0.8, max_tokens=2))
        if score:
            engine.complete(_request(temperature=0.8, extensions={llama_engine.CONTINUATION: "ab"}))
        engine.complete(_request(temperature=0.8, max_tokens=2))
    assert [c["seed"] for c in plain.calls] == [c["seed"] for c in scored.calls if "logits_processor" not in c]
    assert scored.calls[1]["temperature"] == 0.0 and scored.calls[1]["seed"] == 5
