"""SoftPromptTuner on the real embedded model: the GGUF weights load in PyTorch, train, and the engine generates."""

from __future__ import annotations

import math

import pytest

from dspy_icl_opt.lm.hf_models import soft_extra_available

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.skipif(not soft_extra_available(),
                                reason="needs the soft extra: pip install 'dspy-icl-opt[soft]'")


@pytest.fixture
def one_torch_thread():
    """One thread for this test, the model unloaded after it: later tests get their threads and memory back."""
    import torch

    from dspy_icl_opt.lm.hf_models import unload_all

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    unload_all()
    torch.set_num_threads(threads)


@pytest.mark.embedded
def test_soft_prompt_trains_on_the_embedded_model(tmp_path, one_torch_thread):

    from dspy_icl_opt.lm import resolve_lm
    from dspy_icl_opt.optimizers.soft_prompt import SoftPromptTuner, load_soft_program
    from dspy_icl_opt.programs import load_task, make_program

    task = load_task("hyperbaton", seed=0, train_size=4, val_size=2, test_size=1)
    task_lm = resolve_lm("embedded", temperature=0.0, max_tokens=48, cache=False)
    tuner = SoftPromptTuner(task.metric, task_model=task_lm, epochs=2, num_virtual_tokens=4, batch_size=2,
                            learning_rate=1e-3, log_dir=tmp_path, progress=False)
    program = tuner.compile(make_program("qa", task), trainset=task.train, valset=task.val)
    info = tuner.report_.extra["soft_prompt"]
    losses = [epoch["loss"] for epoch in info["epochs"]]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert info["base_model"]["name"] == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert info["training"]["forward_passes"] == 2 * info["examples"] > 0
    assert all(epoch["val"] is not None for epoch in info["epochs"])
    assert (tmp_path / "soft_checkpoints" / "epoch-002.pt").is_file()

    soft = tuner.soft_prompts_[2]
    from dspy_icl_opt.lm.transformers_engine import transformers_lm

    # With the soft prompt, the model still answers in the adapter's format (PEFT's own generate wrote
    # "[[ ## answer. Answer the correctAnswer theAnswerAnswer..." here, so no soft prompt ever won).
    from dspy.adapters import ChatAdapter

    from dspy_icl_opt.optimizers.soft_training import example_messages

    lm = transformers_lm("embedded", soft_prompt=soft, max_tokens=48, cache=False)
    for example in task.val:
        messages = example_messages(program.predictor, example, ChatAdapter())[:-1]
        answer = lm(messages=messages)[0]
        assert answer.lstrip().startswith("[[ ## answer ## ]]"), answer
        assert lm.history[-1]["usage"]["completion_tokens"] < 48, answer  # it stopped by itself
    reloaded = load_soft_program(make_program("qa", task), tmp_path)  # with or without the soft prompt it kept
    assert reloaded.predictor.signature.instructions == program.predictor.signature.instructions
