"""Routing and errors of `resolve_lm` (no model is loaded, no provider is called)."""

from __future__ import annotations

import importlib.util

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from dspy_icl_opt.lm import (
    AsyncLlamaCppEngine,
    LlamaCppEngine,
    LlamaModelLoadError,
    loaded_model_count,
    resolve_lm,
)
from dspy_icl_opt.lm import resolve as resolve_module
from dspy_icl_opt.lm.model_store import EMBEDDED_MODELS

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
SPEC_MESSAGE = (
    "`lm` must be 'embedded' (or 'embedded-1.5b'), a path to a .gguf file, or a provider/model string such "
    "as 'openai/gpt-4o-mini', but got {!r}."
)


def test_existing_lm_is_returned_unchanged():
    lm = DummyLM([{"answer": "x"}])
    assert resolve_lm(lm) is lm
    provider_lm = dspy.LM("openai/gpt-4o-mini")
    assert resolve_lm(provider_lm, temperature=1.0) is provider_lm


@pytest.mark.parametrize("spec", ["openai/gpt-4o-mini", "ollama_chat/qwen2.5", "openai/x"])
def test_provider_strings_become_dspy_lm(spec):
    lm = resolve_lm(spec, temperature=0.2, max_tokens=77, cache=False, num_retries=1)
    assert type(lm) is dspy.LM and lm.model == spec
    assert (lm.kwargs["temperature"], lm.kwargs["max_tokens"], lm.cache, lm.num_retries) == (0.2, 77, False, 1)
    assert lm.engine == "auto" and lm.history == []


def test_engine_options_are_refused_for_provider_models():
    with pytest.raises(ValueError, match=r"\['n_threads'\] must only be given for local models"):
        resolve_lm("openai/gpt-4o-mini", n_threads=2)


@pytest.mark.parametrize("spec", ["x", "", "gpt 4", "embeded", "/openai", 42])
def test_unknown_specs_are_rejected_with_the_accepted_forms(spec):
    with pytest.raises(ValueError) as info:
        resolve_lm(spec)
    assert str(info.value) == SPEC_MESSAGE.format(spec)


def test_missing_gguf_path_names_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.gguf"
    for spec in (str(missing), missing):
        with pytest.raises(FileNotFoundError) as info:
            resolve_lm(spec)
        assert str(missing) in str(info.value) and "lm='embedded'" in str(info.value)


def test_existing_file_that_is_not_gguf_is_rejected(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match="no GGUF header"):
        resolve_lm(str(notes))


@needs_llama_cpp
def test_gguf_path_routes_to_a_lazy_llama_engine(fake_gguf):
    before = loaded_model_count()
    lm = resolve_lm(str(fake_gguf), temperature=0.0, max_tokens=32, n_ctx=1024, seed=4, n_threads=1, num_retries=0)
    assert isinstance(lm, dspy.LM) and lm.model == "gguf/tiny-model"
    engine = lm.engine
    assert isinstance(engine, LlamaCppEngine)
    assert (engine.model_path, engine.n_ctx, engine.seed, engine.n_threads) == (str(fake_gguf.resolve()), 1024, 4, 1)
    assert (lm.kwargs["max_tokens"], lm.num_retries) == (32, 0)
    assert isinstance(lm._async_engine_spec, AsyncLlamaCppEngine) and lm._async_engine_spec.engine is engine
    assert loaded_model_count() == before  # Nothing is loaded until the first call.


@needs_llama_cpp
def test_resolved_local_lm_survives_save_and_load(fake_gguf, tmp_path):
    program = dspy.Predict("question -> answer")
    program.lm = resolve_lm(fake_gguf, n_ctx=512, max_tokens=16)
    path = tmp_path / "program.json"
    program.save(path)
    restored = dspy.Predict("question -> answer")
    restored.load(path, allow_unsafe_lm_state=True)
    assert restored.lm.model == "gguf/tiny-model"
    assert restored.lm.engine.dump_state() == program.lm.engine.dump_state()
    assert isinstance(restored.lm._async_engine_spec, AsyncLlamaCppEngine)


@needs_llama_cpp
def test_gguf_header_without_suffix_is_accepted(tmp_path):
    model = tmp_path / "weights.bin"
    model.write_bytes(b"GGUF" + bytes(8))
    assert resolve_lm(model).model == "gguf/weights"


@needs_llama_cpp
def test_unloadable_gguf_fails_on_first_call_with_the_fix(fake_gguf):
    engine = resolve_lm(fake_gguf, cache=False).engine
    with pytest.raises(LlamaModelLoadError) as info:
        engine.load()
    assert isinstance(info.value, ValueError)
    assert str(fake_gguf.resolve()) in str(info.value) and "repair=True" in str(info.value)


@needs_llama_cpp
@pytest.mark.parametrize(("spec", "model"), [("embedded", "embedded"), (None, "embedded"),
                                             (" Embedded-1.5B ", "embedded-1.5b")])
def test_embedded_names_build_a_local_lm_on_their_own_model(spec, model, monkeypatch, fake_gguf):
    asked = []
    before = loaded_model_count()  # Embedded tests earlier in the session may hold a model.
    monkeypatch.setattr(resolve_module, "ensure_embedded_model", lambda *, model: asked.append(model) or fake_gguf)
    lm = resolve_lm(spec, temperature=0.7, max_tokens=33)
    assert asked == [model]
    assert lm.model == EMBEDDED_MODELS[model].lm_name and isinstance(lm.engine, LlamaCppEngine)
    assert lm.engine.model_path == str(fake_gguf.resolve()) and loaded_model_count() == before
