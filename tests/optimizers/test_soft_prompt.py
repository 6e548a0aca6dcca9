"""SoftPromptTuner on a tiny random chat model: training, the engine, files, budget, resume, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import dspy
import pytest
from dspy.teleprompt import LabeledFewShot

from dspy_icl_opt.lm.hf_models import MissingSoftExtraError, soft_extra_available
from dspy_icl_opt.lm.soft_prompt import SOFT_PROMPT_FILE, SOFT_PROMPT_JSON, SoftPrompt
from dspy_icl_opt.optimizers.sequential import Sequential
from dspy_icl_opt.optimizers.soft_prompt import SoftPromptTuner, load_soft_program
from dspy_icl_opt.pipeline.render import render_report
from dspy_icl_opt.search.report import PROGRAM_FILE, OptimizationReport
from dspy_icl_opt.testing import (
    format_chat_reply,
    make_fake_lm,
    planted_rule_task,
    scripted_lm,
)

needs_soft = pytest.mark.skipif(not soft_extra_available(),
                                reason="needs the soft extra (torch, transformers, peft, safetensors): "
                                       "pip install 'dspy-icl-opt[soft]'")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if not soft_extra_available():
        pytest.skip("needs the soft extra: pip install 'dspy-icl-opt[soft]'")
    import torch

    from dspy_icl_opt.testing.tiny_model import tiny_chat_model

    torch.set_num_threads(1)
    return str(tiny_chat_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def task():
    return planted_rule_task("vowels", train_size=6, val_size=4, seed=0)


def tiny_lm(folder, **kwargs):
    from dspy_icl_opt.lm.transformers_engine import transformers_lm

    return transformers_lm(folder, **{"max_tokens": 12, "cache": False, **kwargs})


def tuner(task, lm, **settings):
    options = {"epochs": 3, "learning_rate": 0.3, "num_virtual_tokens": 4, "batch_size": 2, "progress": False}
    metric = settings.pop("metric", task.metric)
    return SoftPromptTuner(metric, task_model=lm, **{**options, **settings})


def wrong_but_readable(task):
    """A task model that always answers in the adapter's format, and always wrongly."""
    return scripted_lm(lambda request: format_chat_reply({"answer": "zzz"}), name="fake/wrong")


# ------------------------------------------------------------------------------ training
@needs_soft
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_loss_falls_epoch_after_epoch(tiny, task, method):
    optimizer = tuner(task, tiny_lm(tiny), method=method, learning_rate=0.03 if method == "p_tuning" else 0.3)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    epochs = optimizer.report_.extra["soft_prompt"]["epochs"]
    losses = [e["loss"] for e in epochs]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    assert all(e["val"] is not None for e in epochs)


@needs_soft
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_decoding_with_a_soft_prompt_writes_what_the_trained_model_predicts(tiny, task, method):
    """Each generated token is the argmax of the PEFT model's own forward pass over everything before it (the
    path training takes, no cache): PEFT's generate broke that for prompt-tuned Qwen models (garbage answers)."""
    import torch

    from dspy_icl_opt.lm.transformers_engine import TransformersEngine, soft_decode

    optimizer = tuner(task, tiny_lm(tiny), method=method, learning_rate=0.03 if method == "p_tuning" else 0.3)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    loaded, model = TransformersEngine(tiny, soft_prompt=optimizer.soft_prompts_[3])._runner()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        decoded = soft_decode(model, loaded.model, ids, {"max_new_tokens": 10}, stop_ids=set())
        sequence, expected = ids[0].tolist(), []
        for _ in range(10):
            so_far = torch.tensor([sequence])
            expected.append(int(model(input_ids=so_far, attention_mask=torch.ones_like(so_far)).logits[0, -1].argmax()))
            sequence.append(expected[-1])
    assert decoded == expected


@needs_soft
def test_the_soft_prompt_changes_what_the_model_writes(tiny, task):
    optimizer = tuner(task, tiny_lm(tiny))
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    soft = optimizer.soft_prompts_[3]
    question = [{"role": "user", "content": "Question: abc"}]
    assert tiny_lm(tiny)(messages=question) != tiny_lm(tiny, soft_prompt=soft)(messages=question)


@needs_soft
def test_what_is_trained_is_what_runs(tiny, task):
    """The engine renders a DSPy call into exactly the text the trainer rendered for the same example."""
    from dspy_icl_opt.lm.hf_models import load_model
    from dspy_icl_opt.lm.transformers_engine import TransformersEngine, prompt_text
    from dspy_icl_opt.optimizers.soft_training import example_messages
    from dspy_icl_opt.search.placement import PlacementAdapter

    class Recording:
        def __init__(self, engine):
            self.engine, self.requests = engine, []

        def complete(self, request):
            self.requests.append(request)
            return self.engine.complete(request)

        def stream(self, request):
            return self.engine.stream(request)

        def close(self):
            pass

    engine = TransformersEngine(tiny)
    recording = Recording(engine)
    program = LabeledFewShot(k=2).compile(task.program(), trainset=task.train)
    example = task.val[0]
    with dspy.context(lm=make_fake_lm(recording, name="hf/tiny"), adapter=PlacementAdapter()):
        try:
            program(**example.inputs())
        except Exception:  # noqa: BLE001 - a random model's answer need not parse; the request is what counts
            pass
    trained = prompt_text(load_model(tiny).tokenizer, example_messages(program, example, PlacementAdapter())[:-1])
    assert engine.render(recording.requests[0]) == trained


# ------------------------------------------------------------------------ choice and files
@needs_soft
def test_a_better_soft_prompt_is_kept_saved_and_loaded_back(tiny, task, tmp_path):
    """The start answers readably but wrongly (0); the tiny model's unreadable answers score failure_score (1):
    the soft prompt wins the paired choice, is attached, saved beside program.json and loaded back."""
    optimizer = tuner(task, wrong_but_readable(task), base_model=tiny, failure_score=1.0, log_dir=tmp_path)
    program = optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    report = optimizer.report_
    chosen = report.extra["final_choice"]["chosen"]
    assert chosen != 0 and report.extra["soft_prompt"]["chosen_epoch"] == chosen
    assert (tmp_path / SOFT_PROMPT_FILE).is_file() and (tmp_path / SOFT_PROMPT_JSON).is_file()
    saved = json.loads((tmp_path / SOFT_PROMPT_JSON).read_text())
    assert saved["method"] == "prompt_tuning" and saved["base_model"]["kind"] == "hf"
    assert saved["digest"] == optimizer.soft_prompts_[chosen].digest
    assert json.loads((tmp_path / PROGRAM_FILE).read_text())["lm"] is None  # program.json: the hard prompt only

    loaded = load_soft_program(task.program(), tmp_path)
    assert loaded.lm.engine.soft_prompt.digest == saved["digest"]
    assert loaded.lm.model == program.lm.model
    question = [{"role": "user", "content": "Question: abc"}]
    assert loaded.lm(messages=question) == program.lm(messages=question)

    page = render_report(tmp_path, fmt="md").read_text()
    assert "Soft prompt training" in page and "Kept: the soft prompt of epoch" in page
    assert list(tmp_path.glob("**/*soft_prompt.png"))


@needs_soft
def test_the_program_as_given_is_kept_when_no_epoch_beats_it(tiny, task, tmp_path):
    readable_and_right = scripted_lm(lambda request: format_chat_reply({"answer": "1"}), name="fake/ok")
    optimizer = tuner(task, readable_and_right, base_model=tiny, epochs=1, log_dir=tmp_path,
                      metric=lambda example, prediction, trace=None: 1.0)
    program = optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    assert optimizer.report_.extra["final_choice"]["chosen"] == 0
    assert program.lm is None and not (tmp_path / SOFT_PROMPT_FILE).exists()


@needs_soft
def test_soft_prompt_files_round_trip_and_refuse_another_base_model(tiny, task, tmp_path):
    from dspy_icl_opt.testing.tiny_model import tiny_chat_model

    optimizer = tuner(task, tiny_lm(tiny), epochs=1)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    soft = optimizer.soft_prompts_[1]
    again = SoftPrompt.load(soft.save(tmp_path / "soft"))
    assert again.digest == soft.digest and again.method == soft.method
    other = tiny_chat_model(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="trained on"):
        tiny_lm(str(other), soft_prompt=again)


@needs_soft
def test_sequential_keeps_the_demos_and_adds_the_soft_prompt(tiny, task):
    chain = Sequential([LabeledFewShot(k=2), tuner(task, wrong_but_readable(task), base_model=tiny,
                                                    failure_score=1.0, epochs=1)])
    program = chain.compile(task.program(), trainset=task.train, valset=task.val)
    assert [d["question"] for d in program.demos] == [d["question"] for d in chain.programs_[0].demos]
    assert program.lm is not None and program.lm.model.startswith("soft2/")


# ---------------------------------------------------------------------------- budget, resume
@needs_soft
def test_validation_generations_are_capped_and_training_is_counted(tiny, task):
    optimizer = tuner(task, tiny_lm(tiny), budget={"max_task_calls": 5})
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    report = optimizer.report_
    assert report.spent["task"].calls <= 5
    assert report.extra["plan"]["settings"]["validation_examples"] == 1  # 5 calls // (3 epochs + the start)
    info = report.extra["soft_prompt"]
    trained = [e for e in info["epochs"]]
    assert info["training"]["forward_passes"] == info["training"]["backward_passes"] == 6 * len(trained)
    assert info["training"]["tokens"] == sum(e["tokens"] for e in trained) > 0


@needs_soft
def test_resume_goes_on_from_the_last_epoch_checkpoint(tiny, task, tmp_path):
    full = tuner(task, tiny_lm(tiny))
    full.compile(task.program(), trainset=task.train, valset=task.val)

    cut = tuner(task, tiny_lm(tiny), log_dir=tmp_path, budget={"max_task_calls": 3})
    cut.compile(task.program(), trainset=task.train, valset=task.val)
    assert cut.report_.stopped_by_budget
    done = len(list((tmp_path / "soft_checkpoints").glob("epoch-*.pt")))
    assert 1 <= done < 3
    resumed = tuner(task, tiny_lm(tiny), log_dir=tmp_path)
    resumed.compile(task.program(), trainset=task.train, valset=task.val)

    info = resumed.report_.extra["soft_prompt"]
    assert info["resumed_after_epoch"] == done
    assert [e["digest"] for e in info["epochs"]] == [e["digest"] for e in full.report_.extra["soft_prompt"]["epochs"]]
    assert [e["val"] for e in info["epochs"]] == [e["val"] for e in full.report_.extra["soft_prompt"]["epochs"]]
    spent = cut.report_.spent["task"].calls + resumed.report_.spent["task"].calls
    assert resumed.report_.spent["task"].calls == full.report_.spent["task"].calls  # replayed ones are charged once
    assert spent >= full.report_.spent["task"].calls
    assert OptimizationReport.load(tmp_path / "report.json").extra["soft_prompt"]["epochs"] == info["epochs"]


# -------------------------------------------------------------------------------- refusals
def test_many_predictor_programs_are_refused_with_the_limit_named(task):
    class TwoSteps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.first = dspy.Predict("question -> answer")
            self.second = dspy.Predict("question -> answer")

        def forward(self, question):
            return self.second(question=self.first(question=question).answer)

    optimizer = SoftPromptTuner(task.metric, task_model=wrong_but_readable(task), progress=False)
    with pytest.raises(ValueError, match="exactly one predictor"):
        optimizer.compile(TwoSteps(), trainset=task.train, valset=task.val)


def test_outputs_without_gold_labels_are_refused(task):
    optimizer = SoftPromptTuner(task.metric, task_model=wrong_but_readable(task), progress=False)
    with pytest.raises(ValueError, match="reasoning"):
        optimizer.compile(dspy.ChainOfThought("question -> answer"), trainset=task.train, valset=task.val)


def test_a_small_trainset_without_a_valset_is_refused_not_validated_on_itself(task):
    optimizer = SoftPromptTuner(task.metric, task_model=wrong_but_readable(task), progress=False)
    with pytest.raises(ValueError, match="`valset` is needed"):
        optimizer.compile(dspy.Predict("question -> answer"), trainset=task.train[:4])


@pytest.mark.parametrize("setting, error", [({"method": "lora"}, ValueError), ({"epochs": 0}, ValueError),
                                            ({"learning_rate": 0}, ValueError), ({"num_virtual_tokens": "8"}, TypeError),
                                            ({"base_model": 3}, TypeError)])
def test_bad_settings_name_the_argument(task, setting, error):
    with pytest.raises(error, match=f"`{next(iter(setting))}`"):
        SoftPromptTuner(task.metric, **setting)


def test_modules_import_and_refuse_clearly_without_torch():
    """The core works without the soft extra: the modules import, and training says what to install."""
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'peft', 'safetensors'): sys.modules[name] = None\n"
        "import dspy\n"
        "from dspy_icl_opt.optimizers.soft_prompt import SoftPromptTuner\n"
        "import dspy_icl_opt.lm.transformers_engine, dspy_icl_opt.pipeline.registry as r\n"
        "r.lookup('soft_prompt').load()\n"
        "from dspy_icl_opt.testing import planted_rule_task, scripted_lm, format_chat_reply\n"
        "task = planted_rule_task('vowels', train_size=4, val_size=2, seed=0)\n"
        "lm = scripted_lm(lambda r: format_chat_reply({'answer': 'x'}))\n"
        "try:\n"
        "    SoftPromptTuner(task.metric, task_model=lm, progress=False).compile(task.program(), trainset=task.train,\n"
        "                                                                       valset=task.val)\n"
        "except ImportError as exc:\n"
        "    print('REFUSED', type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "REFUSED MissingSoftExtraError" in result.stdout and "dspy-icl-opt[soft]" in result.stdout
    assert issubclass(MissingSoftExtraError, ImportError)


# ---------------------------------------------------------------------------------- engine
@needs_soft
def test_the_engine_keeps_dspys_cache_history_usage_and_saved_state(tiny, task, tmp_path):
    from dspy_icl_opt.search.budget import Budget, BudgetMeter, MeteredLM

    meter = BudgetMeter(Budget())
    lm = MeteredLM(tiny_lm(tiny, cache=True), meter, "task")
    # unique per run: pytest reuses its numbered tmp dirs across sessions, and DSPy's disk cache outlives them
    question = [{"role": "user", "content": f"a question asked once, {uuid.uuid4().hex}"}]
    first, second = lm(messages=question), lm(messages=question)
    assert first == second
    assert meter.spent["task"].calls == 2 and meter.spent["task"].cache_hits == 1  # a cached call counts
    assert meter.spent["task"].tokens > 0 and lm.history[-1]["messages"] == question

    optimizer = tuner(task, tiny_lm(tiny), epochs=1)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    soft = optimizer.soft_prompts_[1]
    soft.save(tmp_path / "soft")
    program = task.program()
    program.lm = tiny_lm(tiny, soft_prompt=soft)
    program.save(str(tmp_path / "with_lm.json"))  # DSPy's own save: the engine's dump_state names the folder
    loaded = task.program()
    loaded.load(str(tmp_path / "with_lm.json"), allow_unsafe_lm_state=True)
    assert loaded.lm.model == program.lm.model
    assert loaded.lm.engine.soft_prompt.digest == soft.digest


@needs_soft
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_prompts_that_start_alike_reuse_the_cached_start_and_decode_the_same(tiny, task, method):
    """Consecutive calls share their system message: the second prompt runs only its new tokens, and every
    answer is the one decoded from scratch (prompts that share nothing, or everything, included)."""
    import torch

    from dspy_icl_opt.lm.transformers_engine import (
        PromptCache,
        TransformersEngine,
        soft_decode,
    )

    optimizer = tuner(task, tiny_lm(tiny), method=method, learning_rate=0.03 if method == "p_tuning" else 0.3)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    loaded, model = TransformersEngine(tiny, soft_prompt=optimizer.soft_prompts_[3])._runner()
    start = [5, 6, 7, 8, 9, 10, 11, 12]
    prompts = [start + [13, 14], start + [20, 21, 22], [30, 31, 32], [30, 31, 32], start[:3] + [40]]
    ran = []
    hook = loaded.model.register_forward_pre_hook(
        lambda module, args, kwargs: ran.append((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                                 else kwargs["inputs_embeds"]).shape[1]), with_kwargs=True)
    cache = PromptCache()
    try:
        with torch.no_grad():
            cached, fresh = [], []
            for prompt in prompts:
                ran.clear()
                cached.append(soft_decode(model, loaded.model, torch.tensor([prompt]), {"max_new_tokens": 6},
                                          stop_ids=set(), prompt_cache=cache))
                first = ran[0]
                fresh.append(soft_decode(model, loaded.model, torch.tensor([prompt]), {"max_new_tokens": 6},
                                         stop_ids=set()))
                if prompt is prompts[1]:
                    assert first == 3  # only [20, 21, 22] ran: the 8 shared tokens came from the cache
                if prompt is prompts[3]:
                    assert first == 1  # the same prompt again: its last token runs to give the next logits
    finally:
        hook.remove()
    assert cached == fresh


@needs_soft
def test_a_decode_that_fails_leaves_no_half_cut_cache_behind(tiny, task):
    import torch

    from dspy_icl_opt.lm.transformers_engine import PromptCache, TransformersEngine, soft_decode

    optimizer = tuner(task, tiny_lm(tiny), epochs=1)
    optimizer.compile(task.program(), trainset=task.train, valset=task.val)
    loaded, model = TransformersEngine(tiny, soft_prompt=optimizer.soft_prompts_[1])._runner()
    cache, options = PromptCache(), {"max_new_tokens": 4}
    first, second = [5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11, 12]
    with torch.no_grad():
        soft_decode(model, loaded.model, torch.tensor([first]), options, stop_ids=set(), prompt_cache=cache)

        class Broken(Exception):
            pass

        def broken(*args, **kwargs):
            raise Broken

        hook = loaded.model.register_forward_pre_hook(broken)
        try:
            with pytest.raises(Broken):
                soft_decode(model, loaded.model, torch.tensor([second]), options, stop_ids=set(), prompt_cache=cache)
        finally:
            hook.remove()
        assert cache.shared(second) == 0  # nothing kept from the failed call
        again = soft_decode(model, loaded.model, torch.tensor([second]), options, stop_ids=set(), prompt_cache=cache)
        fresh = soft_decode(model, loaded.model, torch.tensor([second]), options, stop_ids=set())
    assert again == fresh
