"""SoftPromptTuner: learn a soft prompt for a local task model, beside the program's hard prompt.

Prompt tuning (Lester et al., 2021), prefix tuning (Li & Liang, 2021) and P-tuning (Liu et al.,
2021) learn a few continuous "virtual tokens" with the model frozen. Here they are learned for
the program's one predictor, on the training set, as DSPy runs it: the prompt the adapter writes
(instructions and demos the program already has, which stay as they are) and the gold answer as
the adapter writes it. So ``Sequential([OPRO(...), SoftPromptTuner(...)])`` yields both an optimized
hard prompt and a soft prompt trained under it.

The run, top-down:

1. load the base model in PyTorch (the task model's GGUF file, or ``base_model``);
2. per epoch: train on the training set, checkpoint, and score the program with this epoch's soft
   prompt on the validation examples (those generations are task calls, capped by the budget);
3. the final choice: the best epoch replaces the program as given only if it beats it on the same
   validation examples by the paired rule every strategy uses (``VALIDATION_Z`` standard errors).

The returned program's predictor carries a ``dspy.LM`` whose :class:`TransformersEngine` prepends
the soft prompt. ``program.json`` keeps the hard prompt only (it loads anywhere); the soft prompt is
saved beside it (``soft_prompt.safetensors`` and ``soft_prompt.json``); :func:`load_soft_program`
loads both back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.lm.hf_models import require_soft_extra, source_kind
from dspy_icl_opt.lm.soft_programs import attach_soft_prompt, load_soft_program, save_program
from dspy_icl_opt.lm.soft_prompt import METHODS, SOFT_PROMPT_FILE, SOFT_PROMPT_JSON, Method, SoftPrompt
from dspy_icl_opt.optimizers.soft_training import (
    CHECKPOINT_DIR,
    EpochRecord,
    Item,
    SoftPromptTrainer,
    build_items,
)
from dspy_icl_opt.search.base import VAL_LABEL, VALIDATION_Z, ICLOptimizer, SearchContext, paired_test, stable_int
from dspy_icl_opt.search.budget import Budget, unwrap_lm
from dspy_icl_opt.search.placement import task_adapter
from dspy_icl_opt.search.plan import Phase, SearchPlan, Shape
from dspy_icl_opt.search.report import CandidateRecord
from dspy_icl_opt.search.scorer import Metric, Scorer
from dspy_icl_opt.search.surgery import named_predictors

__all__ = ["SoftPromptTuner", "attach_soft_prompt", "load_soft_program", "save_program"]

#: Soft prompts this short already move a 0.5B model; longer ones cost more per token on a CPU.
DEFAULT_VIRTUAL_TOKENS = 8
#: AdamW's step on embeddings whose entries are a few hundredths: small steps, few epochs.
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 4
#: Longer examples (prompt and answer) are left out of training: their backward pass would not fit a small machine.
DEFAULT_MAX_EXAMPLE_TOKENS = 2048
SOFT_LABEL = "soft_prompt"


class SoftPromptTuner(ICLOptimizer):
    """Learn a soft prompt (PEFT prompt learning) for a program's local task model; keep its hard prompt.

    Args:
        metric: ``metric(example, prediction, trace=None)``, for the validation after each epoch.
        method: ``"prompt_tuning"``, ``"prefix_tuning"`` or ``"p_tuning"``.
        num_virtual_tokens: virtual tokens in the soft prompt (default 8).
        learning_rate: AdamW's learning rate (default 1e-3).
        epochs: passes over the training set (default 3); each is validated and checkpointed.
        batch_size: examples per optimizer step (gradients accumulated; default 4).
        base_model: ``"embedded"``, a ``.gguf`` file or a local Hugging Face folder; default: the task
            model's own file (a GGUF model run by ``LlamaCppEngine`` or a ``TransformersEngine``).
        max_example_tokens: longer training examples are left out (counted in the report).
        task_model, budget, seed, num_threads, log_dir, failure_score, progress: as every strategy
            (see :class:`~dspy_icl_opt.search.base.ICLOptimizer`); ``budget.max_task_calls`` caps the
            validation generations. No prompt model is used.

    Example:
        >>> tuner = SoftPromptTuner(lambda e, p, t=None: 1.0, epochs=2, num_virtual_tokens=4)
        >>> tuner.epochs, tuner.method
        (2, 'prompt_tuning')
    """

    def __init__(self, metric: Metric, *, method: Method = "prompt_tuning",
                 num_virtual_tokens: int = DEFAULT_VIRTUAL_TOKENS, learning_rate: float = DEFAULT_LEARNING_RATE,
                 epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
                 base_model: str | os.PathLike[str] | None = None,
                 max_example_tokens: int = DEFAULT_MAX_EXAMPLE_TOKENS, task_model: dspy.BaseLM | None = None,
                 prompt_model: dspy.BaseLM | None = None, budget: Budget | dict[str, Any] | str | None = None,
                 seed: int = 0, num_threads: int = 1, log_dir: str | Path | None = None, failure_score: float = 0.0,
                 max_retries: int = 2, progress: bool = True) -> None:
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, budget=budget, seed=seed,
                         num_threads=num_threads, log_dir=log_dir, failure_score=failure_score,
                         max_retries=max_retries, progress=progress)
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {list(METHODS)}, but got {method!r}. "
                             "Pass e.g. method='prompt_tuning'.")
        self.method = method
        self.num_virtual_tokens = check_int("num_virtual_tokens", num_virtual_tokens, minimum=1, hint="Pass e.g. 8.")
        self.learning_rate = check_number("learning_rate", learning_rate, minimum=0.0, hint="Pass e.g. 1e-3.")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be a number > 0, but got {learning_rate!r}. Pass e.g. 1e-3.")
        self.epochs = check_int("epochs", epochs, minimum=1, hint="Pass e.g. 3.")
        self.batch_size = check_int("batch_size", batch_size, minimum=1, hint="Pass e.g. 4.")
        self.max_example_tokens = check_int("max_example_tokens", max_example_tokens, minimum=8, hint="Pass e.g. 2048.")
        if base_model is not None and not isinstance(base_model, (str, os.PathLike)):
            raise TypeError(f"`base_model` must be 'embedded', a .gguf path or a Hugging Face folder, or None, but got "
                            f"{type(base_model).__name__}. Pass e.g. base_model='embedded'.")
        self.base_model = None if base_model is None else str(base_model)
        self.soft_prompts_: dict[int, SoftPrompt] = {}

    # ------------------------------------------------------------------ strategy hooks
    def _params(self) -> dict[str, Any]:
        return {"method": self.method, "num_virtual_tokens": self.num_virtual_tokens,
                "learning_rate": self.learning_rate, "epochs": self.epochs, "batch_size": self.batch_size,
                "base_model": self.base_model, "max_example_tokens": self.max_example_tokens}

    def _plan(self, shape: Shape) -> SearchPlan:
        """Validate every epoch and the start on the same examples; fewer of them when the cap asks for it."""
        n_val, notes = shape.n_val, []
        if shape.task_cap is not None and (self.epochs + 1) * n_val > shape.task_cap:
            n_val = max(1, shape.task_cap // (self.epochs + 1))
            notes.append(f"each epoch and the start are validated on {n_val} of the {shape.n_val} validation examples")
        settings = {"epochs": self.epochs, "validation_examples": n_val, "finalists": self.epochs}
        phases = [Phase("epoch validations", self.epochs * n_val, note=f"{self.epochs} x {n_val}"),
                  Phase("start validation", n_val, note="the program as given, for the paired final choice")]
        return SearchPlan(type(self).__name__, shape, self.epochs, settings, phases, notes)

    def _validate(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
        named = named_predictors(student)
        if len(named) != 1:
            raise ValueError(f"`student` must have exactly one predictor for SoftPromptTuner (one soft prompt is "
                             f"learned per program for now), but it has {len(named)}: {[n for n, _ in named]}. "
                             "Use a one-predictor program (e.g. the 'qa' program).")
        if valset is trainset or (len(valset) == len(trainset) and all(v is t for v, t in zip(valset, trainset))):
            raise ValueError(f"`valset` is needed for SoftPromptTuner with only {len(trainset)} training examples: "
                             "the split left none aside, and a soft prompt validated on the examples it was trained "
                             "on would always look better than the start. Pass valset=[...] (a few labeled examples).")
        signature = named[0][1].signature
        for i, example in enumerate(trainset):
            missing = [name for name in signature.output_fields if name not in example]
            if missing:
                raise ValueError(f"`trainset[{i}]` must carry the gold value of every output field of the predictor, "
                                 f"but lacks {missing}: the soft prompt is trained on the whole answer. Label them, "
                                 "or use a program without them (e.g. Predict instead of ChainOfThought).")
        require_soft_extra()

    def _source(self, ctx: SearchContext) -> str:
        """The base model: ``base_model``, else the task model's own file."""
        if self.base_model is not None:
            source_kind(self.base_model)
            return self.base_model
        engine = getattr(unwrap_lm(ctx.task_lm.inner), "engine", None)
        for attribute in ("model_path", "base_model"):  # LlamaCppEngine, TransformersEngine
            if isinstance(getattr(engine, attribute, None), str):
                return getattr(engine, attribute)
        raise ValueError(f"`base_model` must be given when the task model is not a local model, but the task model is "
                         f"{getattr(ctx.task_lm, 'model', '?')!r}. Pass base_model='embedded', a .gguf file or a "
                         "Hugging Face folder.")

    # ------------------------------------------------------------------------- search
    def _search(self, ctx: SearchContext) -> None:
        """Train epoch by epoch, validate each epoch's soft prompt, then make the paired final choice."""
        from dspy_icl_opt.lm.hf_models import load_model

        source = self._source(ctx)
        loaded = load_model(source)
        predictor = ctx.predictors[0][1]
        items, skipped = build_items(predictor, ctx.trainset, task_adapter(),
                                     loaded.tokenizer, self.max_example_tokens)
        if not items:
            raise ValueError(f"`trainset` must have an example of at most `max_example_tokens`={self.max_example_tokens} "
                             "tokens (prompt and answer), but none fits. Raise max_example_tokens or use fewer demos.")
        trainer = SoftPromptTrainer(loaded, method=self.method, num_virtual_tokens=self.num_virtual_tokens,
                                    learning_rate=self.learning_rate, batch_size=self.batch_size, seed=self.seed,
                                    init_text=predictor.signature.instructions,
                                    settings={**self._params(), "seed": self.seed, "base_model_path": source})
        folder = ctx.log_dir / CHECKPOINT_DIR if ctx.log_dir is not None else None
        run_key = str(stable_int(json.dumps(ctx.report.fingerprint, sort_keys=True), json.dumps(self._params(),
                                 sort_keys=True, default=str), self.seed))
        records = trainer.load_checkpoint(folder, run_key, self.epochs) if folder is not None else []
        info = ctx.report.extra[SOFT_LABEL] = {"method": self.method, "base_model": dict(loaded.identity),
                                               "examples": len(items), "skipped_examples": skipped,
                                               "resumed_after_epoch": len(records), "epochs": []}
        start = CandidateRecord(id=0, step=0, origin="seed", state=ctx.initial_state.to_dict())
        ctx.report.candidates.append(start)
        examples = ctx.valset[: max(1, ctx.validation_examples)]
        validated: list[tuple[CandidateRecord, list[float]]] = []
        with ctx.search_phase(validation_calls=len(examples)):
            for epoch in range(1, self.epochs + 1):
                record, soft = self._epoch(trainer, items, epoch, records, folder, run_key)
                validated.append(self._validate_epoch(ctx, record, soft, source, examples))
                info["epochs"] = [asdict(r) for r in records]
                _training_totals(info, records)
                ctx.checkpoint(step=epoch)
        start_scores = [o.score for o in ctx.scorer.evaluate(ctx.initial_state, examples, desc=f"{VAL_LABEL} #0")]
        start.scores[VAL_LABEL] = sum(start_scores) / len(start_scores)
        start.n_scored[VAL_LABEL] = len(start_scores)
        info["start_val"] = start.scores[VAL_LABEL]
        chosen = paired_choice(ctx, start, start_scores, validated, len(examples))
        info["chosen_epoch"] = chosen.meta.get("epoch")
        logger.info("SoftPromptTuner: start val {:.3f}; chosen: {}", start.scores[VAL_LABEL],
                    "the program as given" if chosen is start else f"epoch {chosen.meta['epoch']}")

    def _epoch(self, trainer: SoftPromptTrainer, items: list[Item], epoch: int, records: list[EpochRecord],
               folder: Path | None, run_key: str) -> tuple[EpochRecord, SoftPrompt]:
        """Train ``epoch`` (or read it back when a checkpoint already holds it) and keep its soft prompt."""
        if epoch <= len(records):
            soft = SoftPrompt.load(folder / f"epoch-{epoch:03d}")  # type: ignore[operator]
            record = records[epoch - 1]
        else:
            record = trainer.epoch(items, epoch)
            soft = trainer.soft_prompt()
            record.digest = soft.digest
            records.append(record)
            if folder is not None:
                soft.save(folder / f"epoch-{epoch:03d}")
                trainer.save_checkpoint(folder, epoch, records, run_key)
        self.soft_prompts_[epoch] = soft
        return record, soft

    def _validate_epoch(self, ctx: SearchContext, record: EpochRecord, soft: SoftPrompt, source: str,
                        examples: list[dspy.Example]) -> tuple[CandidateRecord, list[float]]:
        candidate = CandidateRecord(id=record.epoch, step=record.epoch, origin=SOFT_LABEL,
                                    state=ctx.initial_state.to_dict(),
                                    meta={"epoch": record.epoch, "soft_prompt": soft.digest, "loss": record.loss})
        ctx.report.candidates.append(candidate)
        outcomes = soft_scorer(ctx, soft, source).evaluate(ctx.initial_state, examples,
                                                           desc=f"{VAL_LABEL} #{record.epoch}")
        record.val = ctx.record_outcomes(candidate, outcomes, VAL_LABEL)
        logger.info("Soft prompt epoch {}: loss {:.4f}, validation {:.3f}", record.epoch, record.loss, record.val)
        return candidate, [o.score for o in outcomes]

    def _finish(self, ctx: SearchContext) -> dspy.Module:
        program = super()._finish(ctx)
        record = ctx.report.candidate(ctx.report.best_candidate) if ctx.report.best_candidate is not None else None
        epoch = (record.meta.get("epoch") if record is not None else None)
        if epoch is None or epoch not in self.soft_prompts_:
            logger.info("SoftPromptTuner: the program as given is kept (no soft prompt passed the final choice)")
            return program
        soft = self.soft_prompts_[epoch]
        if ctx.log_dir is not None:
            soft.save(ctx.log_dir)
        attach_soft_prompt(program, soft, like=ctx.task_lm)
        return program

    def _prepare_dir(self, run_dir: Path | None, resume: bool | None, report: Any) -> Path | None:
        if run_dir is not None and resume is False:  # starting over: the old checkpoints and soft prompt go too
            for stale in [*(run_dir / CHECKPOINT_DIR).glob("epoch-*.pt"), run_dir / SOFT_PROMPT_FILE,
                          run_dir / SOFT_PROMPT_JSON]:
                stale.unlink(missing_ok=True)
        return super()._prepare_dir(run_dir, resume, report)


def _training_totals(info: dict[str, Any], records: list[EpochRecord]) -> None:
    """What training spent, beside the task and prompt calls: passes and tokens over every epoch trained."""
    info["training"] = {key: sum(getattr(r, key) for r in records)
                        for key in ("forward_passes", "backward_passes", "tokens", "optimizer_steps")}


def soft_scorer(ctx: SearchContext, soft: SoftPrompt, source: str) -> Scorer:
    """A scorer of the program with ``soft`` on its predictor, metered on the task budget, journaled apart."""
    student = ctx.student.deepcopy()
    attach_soft_prompt(student, soft, base_model=source, like=ctx.task_lm)
    return Scorer(student, ctx.optimizer.metric, task_lm=ctx.task_lm, meter=ctx.meter,
                  journal=_Namespaced(ctx.journal, f"{SOFT_LABEL}:{soft.digest}"), counters=ctx.report.counters,
                  num_threads=ctx.optimizer.num_threads, failure_score=ctx.optimizer.failure_score,
                  progress=ctx.optimizer.progress, name=type(ctx.optimizer).__name__)


class _Namespaced:
    """A view of the run journal whose keys carry a prefix (the soft prompt's digest): program states
    alike, answers apart."""

    def __init__(self, journal: Any, prefix: str) -> None:
        self.journal = journal
        self.prefix = prefix

    def get(self, kind: str, key: str) -> Any:
        return self.journal.get(kind, f"{self.prefix}:{key}")

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        self.journal.put(kind, f"{self.prefix}:{key}", record)


def paired_choice(ctx: SearchContext, start: CandidateRecord, start_scores: list[float],
                  epochs: list[tuple[CandidateRecord, list[float]]], n_examples: int) -> CandidateRecord:
    """The start unless an epoch beats it by the paired rule; the table goes to ``report.extra["final_choice"]``."""
    table, best = [], start
    for record, scores in epochs:
        test = paired_test(scores, start_scores)
        passed = test.passed
        table.append({"candidate": record.id, "val": record.scores.get("val"), "gain": round(test.gain, 6),
                      "se": round(test.se, 6), "passed": passed})
        if passed and (best is start or record.scores["val"] > best.scores["val"]):
            best = record
    ctx.report.extra["final_choice"] = {
        "rule": f"paired: mean gain > 0 and >= {VALIDATION_Z} standard errors over the start",
        "examples": n_examples, "start": start.id, "chosen": best.id,
        "contenders": [{"candidate": start.id, "val": start.scores.get("val"), "gain": 0.0, "se": 0.0,
                        "passed": False}, *table]}
    ctx.set_best(best)
    return best
