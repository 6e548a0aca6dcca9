"""End-to-end checks with the real embedded model (marker: ``embedded``; ~10 s on 2 cores)."""

from __future__ import annotations

import importlib.util

import dspy
import pytest
from dspy.utils.exceptions import ContextWindowExceededError

from dspy_icl_opt.lm import (
    EMBEDDED_LM_NAME,
    EMBEDDED_MODEL_FILE_NAME,
    EMBEDDED_MODEL_SHA256,
    LlamaCppEngine,
    ensure_embedded_model,
    loaded_model_count,
    resolve_lm,
    unload_models,
)
from dspy_icl_opt.lm.model_store import stamp_matches

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"),
]

MAX_TOKENS = 48
SAMPLE_TOKENS = 8
SAMPLES = 3
TINY_N_CTX = 256
MIN_EVAL_SCORE = 66.0
DEVSET = [
    ("What is the capital of France?", "Paris"),
    ("What is 3 + 4? Reply with the number only.", "7"),
    ("Which planet is known as the Red Planet?", "Mars"),
]


@pytest.fixture(scope="module")
def embedded_lm() -> dspy.LM:
    return resolve_lm("embedded", max_tokens=MAX_TOKENS, cache=False)


def _contains_answer(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> bool:
    return example.answer.lower() in (prediction.answer or "").lower()


def test_embedded_model_is_assembled_and_verified():
    path = ensure_embedded_model()
    assert path.name == EMBEDDED_MODEL_FILE_NAME
    assert stamp_matches(path, expected_sha256=EMBEDDED_MODEL_SHA256)


def test_predict_call_parses_and_tracks_usage(embedded_lm):
    assert embedded_lm.model == EMBEDDED_LM_NAME
    with dspy.context(lm=embedded_lm, track_usage=True):
        prediction = dspy.Predict("question -> answer")(question="What is the capital of France?")
    assert "paris" in prediction.answer.lower()
    usage = prediction.get_lm_usage()[EMBEDDED_LM_NAME]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= MAX_TOKENS


def test_tiny_evaluation_with_two_threads(embedded_lm):
    devset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in DEVSET]
    evaluate = dspy.Evaluate(devset=devset, metric=_contains_answer, num_threads=2, display_progress=False)
    with dspy.context(lm=embedded_lm):
        result = evaluate(dspy.Predict("question -> answer"))
    assert len(result.results) == len(DEVSET)
    assert all(prediction.answer for _, prediction, _ in result.results)
    assert result.score >= MIN_EVAL_SCORE


def test_engines_for_the_same_model_share_the_loaded_llama(embedded_lm):
    other = resolve_lm("embedded", max_tokens=MAX_TOKENS)
    assert other.engine is not embedded_lm.engine
    assert other.engine.llama is embedded_lm.engine.llama


def test_n_samples_at_temperature_differ(embedded_lm):
    outputs = embedded_lm("Invent a name for a cat. One word.", temperature=1.0, n=SAMPLES, max_tokens=SAMPLE_TOKENS)
    assert len(outputs) == SAMPLES
    assert len(set(outputs)) > 1


def test_context_overflow_is_reported_with_n_ctx():
    lm = resolve_lm("embedded", n_ctx=TINY_N_CTX, max_tokens=SAMPLE_TOKENS, cache=False)
    with pytest.raises(ContextWindowExceededError, match=f"n_ctx={TINY_N_CTX}"):
        lm("word " * (2 * TINY_N_CTX))


def test_saved_embedded_engine_relocates_the_model(embedded_lm):
    state = embedded_lm.engine.dump_state()
    assert state["embedded"] == "embedded"
    moved = LlamaCppEngine.load_state(state | {"model_path": "/elsewhere/" + EMBEDDED_MODEL_FILE_NAME})
    assert moved.model_path == str(ensure_embedded_model().resolve())


def test_unload_frees_models_and_engines_reload_on_demand(embedded_lm):
    embedded_lm.engine.load()
    assert loaded_model_count() >= 1
    assert unload_models() >= 1 and loaded_model_count() == 0
    assert embedded_lm("Say OK.", max_tokens=SAMPLE_TOKENS)[0]
    assert loaded_model_count() == 1


def test_the_gold_answer_is_scored_and_likelier_than_a_wrong_one(embedded_lm):
    """Likelihood scoring on the real engine: the request a Predict would send, the model made to write a given
    answer; the right answer is far likelier than a wrong one, and the generation is exactly the text given."""
    from dspy_icl_opt.search.likelihood import gold_request, scores_given_text

    assert scores_given_text(embedded_lm)
    program = dspy.Predict(dspy.Signature("question -> answer", "Reply with the number only."))
    totals = {}
    for answer in ("7", "9"):
        request = gold_request(program, dspy.Example(question="What is 3 + 4?", answer=answer).with_inputs("question"),
                               model=embedded_lm.model)
        response = embedded_lm(request)
        assert response.text == request.config.extensions["score_continuation"]
        assert len(response.logprobs) >= 5 and all(t.logprob <= 0 for t in response.logprobs)
        totals[answer] = sum(t.logprob for t in response.logprobs)
    assert totals["7"] > totals["9"] + 2.0, totals


def test_a_token_cap_is_never_passed_by_real_calls_of_the_embedded_model():
    # The bound a call holds under a token cap (prompt bytes + template margin + max_tokens) must cover what
    # llama.cpp reports for it, chat template and all; a cap a few calls wide then ends the run within it.
    from dspy_icl_opt.search import Budget, BudgetExhausted, BudgetMeter, MeteredLM
    from dspy_icl_opt.search.budget import token_bound

    lm = resolve_lm("embedded", max_tokens=MAX_TOKENS, cache=False)
    bound_seen: list[tuple[int, int]] = []

    class Watch(MeteredLM):  # the bound each call held, beside the tokens it was charged
        def __call__(self, prompt=None, *, messages=None, **kwargs):
            bound = token_bound(self.inner, prompt, messages, kwargs)
            before = self._meter.spent["task"].tokens
            result = super().__call__(prompt, messages=messages, **kwargs)
            bound_seen.append((bound, self._meter.spent["task"].tokens - before))
            return result

    meter = BudgetMeter(Budget(max_task_tokens=2_500))
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=Watch(lm, meter, "task")), pytest.raises(BudgetExhausted, match="token budget"):
        for question, _ in DEVSET * 20:
            predict(question=question)
    assert bound_seen and all(0 < spent <= bound for bound, spent in bound_seen)
    assert meter.spent["task"].tokens <= 2_500
