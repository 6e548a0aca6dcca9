"""InstructionDemoSearch: instructions and few-shot demos searched together, a drop-in for DSPy's MIPROv2.

MIPROv2's idea (Opsahl-Ong et al., 2024), planned from a budget: propose instruction candidates,
build demo-set candidates, then let a seeded TPE sampler pick, per predictor, an instruction, a demo
set and how many of its demos to show, scoring each trial on a minibatch and the best configuration
on the whole search set every few trials. What differs from MIPROv2, and why:

* the schedule comes from the caps (task and prompt calls) before any call, and the final
  validation is held back from the start, so the budget never ends before the finalists are
  validated; the final choice is the shared paired test against the program as given;
* trials score minibatches of the valset, as MIPROv2's do, but a quarter of it (``HOLD_OUT_SHARE``)
  is held back from them: the final choice runs on the whole valset (the trials' pairs come from the
  cache, so finalists are cheap to validate) and a finalist must also not lose to the start on the
  held-back examples; the whole trainset is the demo source;
* the program as given is the first trial, so it is measured on the same minibatch as the others;
  the next trials survey the demo-set kinds (kNN, bootstrapped, labeled, MMR) under one instruction on
  that minibatch, then each other instruction with the best kind, before TPE samples (``SURVEY_ORDER``);
* the proposer's meta-prompt is one plain-text instruction per call, grounded in the data summary
  and answer space, and the deterministic answer-format candidate competes (small prompt models);
* after an exploration phase, per-demo influence is fitted from the trials (a datamodel, no LM
  call) and its top demos join the demo-set candidates for the rest of the run.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dspy
import optuna
from optuna.trial import TrialState

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.demos.dynamic import enable_dynamic_demos, restore_unless_per_call, shown_per_call
from dspy_icl_opt.demos.influence import fit_influence
from dspy_icl_opt.demos.pools import demo_id
from dspy_icl_opt.demos.selector import MIN_VAL_TO_HOLD_OUT, held_out_size, reuse_z
from dspy_icl_opt.demos.study import make_storage, redact
from dspy_icl_opt.optimizers.joint_prompts import (
    STYLE_HINTS,
    ProposeTaskInstruction,
    read_instruction,
    render_problems,
)
from dspy_icl_opt.optimizers.joint_space import (
    SHOWN_INSTRUCTION_CHARS,
    Choice,
    PredictorSpace,
    bootstrap,
    build_state,
    decode,
    demo_sets,
    describe,
    distributions,
    influence_set,
    k_choices,
    shown_ids,
)
from dspy_icl_opt.search.base import (
    MIN_EXAMPLES_TO_SPLIT,
    VALIDATION_Z,
    ICLOptimizer,
    SearchContext,
    stable_int,
)
from dspy_icl_opt.search.budget import BudgetExhausted
from dspy_icl_opt.search.grounding import (
    data_summary,
    format_instruction,
    output_spaces,
)
from dspy_icl_opt.search.plan import (
    MIN_SEARCH_EXAMPLES,
    VALIDATION_SHARE,
    Phase,
    SearchPlan,
    Shape,
    shrink_to_fit,
)
from dspy_icl_opt.search.proposals import clean_proposal
from dspy_icl_opt.search.report import CandidateRecord
from dspy_icl_opt.search.scorer import Metric, Outcome, example_key
from dspy_icl_opt.search.surgery import ProgramState, describe_signature

Auto = Literal["light", "medium", "heavy"]
#: MIPROv2's presets: candidates per list, and the most validation examples the final choice uses.
AUTO_SETTINGS: dict[str, dict[str, int]] = {"light": {"n": 6, "val_size": 100}, "medium": {"n": 12, "val_size": 300},
                                            "heavy": {"n": 18, "val_size": 1000}}
#: MIPROv2's minibatch; the plan never uses more than half the search set, so a full evaluation adds examples.
DEFAULT_MINIBATCH_SIZE = 35
#: MIPROv2's default rhythm: the best configuration is scored on the whole search set every this many trials.
DEFAULT_FULL_EVAL_STEPS = 5
#: Proposals are sampled at this temperature when neither the optimizer nor the prompt LM sets one (MIPROv2's 1.0).
DEFAULT_PROPOSAL_TEMPERATURE = 1.0
#: Share of the planned trials run before the influence of each demo is fitted (the exploration phase); the
#: surveys (``SURVEY_ORDER``) run first whatever it is.
EXPLORATION_SHARE = 1 / 3
#: The survey, the search's initial design before TPE samples. First the demo-set kinds, one trial each after the
#: program as given (the first block, one shared minibatch), all with one instruction (the answer-format candidate,
#: else the one given) and a middle ``k``: per-input nearest demos, bootstrapped traces, labeled examples, MMR, then
#: the other sets. Then each other instruction once with the kind that scored best (the next block, again one
#: minibatch). At 10 trials, random startup trials had landed on combinations such as a proposal with the kNN set
#: at k=0 (the proposal alone), and a search of 10 trials saw each axis through a few confounded points; the survey
#: compares the kinds on the same examples, then the instructions with demos that work, and TPE goes on from it.
SURVEY_ORDER = ("knn", "bootstrapped#1", "labeled", "mmr")
#: Trials in a row that cost nothing (programs scored before) before a search the budget still pays for stops.
MAX_IDLE_TRIALS = 8
#: asks in a row that may be told for free because their program was scored before; the next is scored
MAX_REPEATS_TOLD = 8
#: The plan keeps minibatches at least this large before it lowers the number of trials.
PREFERRED_MINIBATCH = 16
#: Proposals longer than this many characters are dropped (OPRO's limit).
MAX_INSTRUCTION_CHARS = 500
#: Training problems shown to the proposer.
SHOWN_PROBLEMS = 3
#: The share of a valset of ``MIN_VAL_TO_HOLD_OUT`` (DemoSelector's) or more held back from the trials: the final
#: choice's fresh examples. A quarter keeps three
#: quarters for the trials (more examples per full evaluation than a half would) and still checks that a
#: finalist's lead is not only where it was picked.
HOLD_OUT_SHARE = 0.25
#: The objective's name in Optuna (and optuna-dashboard).
METRIC_NAME = "mean score on the trial's minibatch"
#: MIPROv2's constructor arguments that have no meaning here, and what to do instead.
MIPRO_REFUSED = {
    "teacher_settings": "bootstrapping runs the program as given, taught by labeled demos (BootstrapFewShot's "
                        "teacher); drop it",
    "max_errors": "failures are scored failure_score and counted in report.counters, never raised; drop it",
}
#: MIPROv2's compile() arguments that InstructionDemoSearch takes (for this compile call only).
MIPRO_COMPILE_ARGS = ("num_trials", "minibatch", "minibatch_size", "minibatch_full_eval_steps",
                      "max_bootstrapped_demos", "max_labeled_demos")
#: MIPROv2's compile() arguments refused, with what to do instead.
MIPRO_COMPILE_REFUSED = {
    "teacher": "bootstrapping uses the program as given with labeled demos; drop it",
    "program_aware_proposer": "the proposer sees the task's fields, not the program's code; drop it",
    "data_aware_proposer": "the proposer always sees the data summary (answer space included); drop it",
    "tip_aware_proposer": "proposals take style hints in turn (joint_prompts.STYLE_HINTS); drop it",
    "fewshot_aware_proposer": "the proposer sees solved training problems; drop it",
    "view_data_batch_size": "the data summary covers the whole trainset; drop it",
    "provide_traceback": "errors are logged and counted in report.counters; drop it",
}


@dataclass
class _Run:
    """What one compile tracks."""

    names: list[str]
    input_fields: dict[str, list[str]] = field(default_factory=dict)  # per predictor, for a knn set's picks
    pool: list[dspy.Example] = field(default_factory=list)  # the trial examples (from the valset)
    search: list[int] = field(default_factory=list)  # indices into ``pool``
    final_examples: list[dspy.Example] = field(default_factory=list)  # the trial examples, then the held-back
    sources: list[int] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)
    space: dict[str, PredictorSpace] = field(default_factory=dict)
    ks: tuple[int, ...] = (0,)
    scores: dict[int, dict[int, float]] = field(default_factory=dict)
    full: dict[int, float] = field(default_factory=dict)
    params: dict[int, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    influence: dict[str, Any] = field(default_factory=dict)
    studies: list[optuna.Study] = field(default_factory=list)
    storage: Any = None
    study_name: str = ""
    scored: set[tuple[str, int]] = field(default_factory=set)
    done: int = 0
    idle: int = 0
    trialed: dict[str, int] = field(default_factory=dict)  # a scored program's state key -> its record id
    repeats: int = 0  # configurations told the mean of a program already scored, at no call
    phase: int = 1
    pending: list[tuple[str, dict[str, int]]] = field(default_factory=list)  # (stage, params) to ask, in order
    survey: list[tuple[dict[str, int], float]] = field(default_factory=list)  # the demo survey's params and values
    surveyed_instructions: bool = False

    @property
    def study(self) -> optuna.Study:
        return self.studies[-1]


class _Sizing(NamedTuple):
    """What the plan's trial schedule is sized from (see :meth:`InstructionDemoSearch._trial_schedule`)."""
    m: int  # predictors
    n_val: int
    held_out: int
    n_search: int  # validation examples the trials score on
    boot: int  # bootstrap calls, paid first
    top: int  # the largest minibatch
    sizes: tuple[int, ...]  # minibatch sizes to try, largest first
    every: int  # full evaluation after every this many trials
    wanted: int  # trials wanted


class InstructionDemoSearch(ICLOptimizer):
    """Search every predictor's instruction and few-shot demos together, with Optuna, within a budget.

    The run, in order (``print(opt.plan(program, trainset=...).render())`` shows it with the calls
    each part is projected to spend):

    1. The valset is split (seeded): with at least ``MIN_VAL_TO_HOLD_OUT`` examples, ``HOLD_OUT_SHARE``
       of it is held back from the trials; the rest are the *trial examples* (all of it when smaller).
       The trainset is the demo source.
    2. Demo sets per predictor: ``labeled`` (a sample of ``max_labeled_demos`` training examples),
       ``mmr`` (representative yet diverse), ``knn`` (a rule: per call, the ``k`` demos of both pools
       nearest to the call's inputs; ``knn_demos``) and ``bootstrapped#i`` (``max_bootstrapped_demos`` of the
       task model's passing runs on up to half the trainset, then ``max_labeled_demos`` labeled ones).
    3. Instruction candidates per predictor: the instruction as given, the same plus a sentence naming
       the answer space (``format_candidate``), and proposals of the prompt model, one plain-text
       instruction per call, each with a different style hint, grounded in the data summary and
       three solved problems (the answer-format sentence is appended to each proposal).
    4. Trials: the first is the program as given (when its demos are not fixed); then a seeded
       multivariate TPE sampler picks, per predictor, categorical indices into
       the instruction and demo-set lists and ``k`` (how many of the set's demos are shown: 0, the
       powers of two, the largest). Trials of one block of ``minibatch_full_eval_steps`` share one
       minibatch of the trial examples; after each block, the configuration with the best mean so far
       that has not been fully evaluated is scored on all the trial examples. A configuration whose
       program a trial already scored (``k=0`` makes every demo set the same program) is told that
       program's mean at no call, and the sampler is asked again.
    5. Influence: after the first third of the planned trials, each demo's effect on the score is
       fitted from the trials (:func:`dspy_icl_opt.demos.influence.fit_influence`, no LM call), and
       an ``influence`` set (the most helpful demos first) is added per predictor. Optuna's
       categorical choices are fixed per study, so the run opens a second study with the longer
       lists, copies every trial of the first into it (same indices, so TPE keeps what it learned)
       and queues the best configuration so far with the influence set as its next trial.
    6. The final choice: the best fully evaluated configurations (``finalists``) and the program as
       given are scored on the whole valset, the trial examples first (cached) and the held-back ones
       after; a finalist replaces the start only on a paired gain of at least ``VALIDATION_Z`` standard
       errors over all of them and no loss on the held-back ones
       (:meth:`~dspy_icl_opt.search.base.SearchContext.choose_by_validation` with ``reused``). With no
       examples held back, the test asks for more standard errors instead (Bonferroni over the trials'
       programs, :func:`~dspy_icl_opt.demos.selector.reuse_z`). Task calls the search left over buy
       reserves (next-best configurations) and training examples no candidate saw.

    With a task-call cap, the number of trials is what the cap pays for after the bootstrap and the
    held-back validation (the start on the whole valset, each finalist on the held-back examples;
    minibatches shrink before trials do); trials keep running while the
    budget pays for one more and its full evaluation (a program scored before costs nothing).
    Without a cap, MIPROv2's count: ``max(2 * params * log2(n), 1.5 * n)``.

    Drop-in for ``MIPROv2``: the constructor takes ``auto``, ``num_candidates``,
    ``max_bootstrapped_demos``, ``max_labeled_demos``, ``minibatch``, ``minibatch_size``,
    ``minibatch_full_eval_steps``, ``num_trials``, ``prompt_model``, ``task_model``, ``seed``,
    ``num_threads``, ``log_dir``, ``init_temperature`` (= ``temperature``), ``metric_threshold``
    (= ``bootstrap_threshold``), ``verbose`` and ``track_stats`` (the report always tracks);
    ``compile`` also takes MIPROv2's ``num_trials``, ``minibatch``, ``minibatch_size``,
    ``minibatch_full_eval_steps``, ``max_bootstrapped_demos`` and ``max_labeled_demos`` for that call.
    ``teacher_settings``, ``max_errors`` and the proposer switches are refused with what to do instead.

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float.
        prompt_model: writes instruction proposals (default: the task model).
        task_model: runs the program (default: ``dspy.settings.lm``).
        auto: ``"light"``, ``"medium"``, ``"heavy"`` (6 / 12 / 18 candidates per list, validation
            capped at 100 / 300 / 1000 examples) or ``None`` (then pass ``num_candidates``).
        num_candidates: instruction and demo-set candidates per predictor (with ``auto=None``).
        num_trials: trials to run (default: planned from the budget); under a task cap that pays for
            fewer (with their full evaluations and the final validation), the plan's fewer.
        max_bootstrapped_demos: bootstrapped demos per set (4); 0 with ``max_labeled_demos=0``
            searches instructions only.
        max_labeled_demos: labeled demos per set (4).
        minibatch: score trials on minibatches (True) or on the whole search set.
        minibatch_size: the largest minibatch (35, cut to half the search set).
        minibatch_full_eval_steps: trials between full evaluations of the best configuration (5).
        temperature: the prompt model's sampling temperature; ``None`` (default): the prompt LM's own
            temperature when it was built with one, else 1.0.
        bootstrap_threshold: a run scoring at least this gives bootstrapped demos (1.0).
        influence: add an influence demo set after the exploration phase (True).
        format_candidate: the answer-format instruction competes, and proposals get its sentence (True).
        knn_demos: the ``knn`` demo set competes: each call is shown the ``k`` demos nearest to its inputs
            (True). A program that ends with it loads with ``dspy_icl_opt.demos.with_dynamic_demos(program)``
            (a plain ``load`` refuses it by name); ``False`` keeps every candidate a fixed demo set.
        finalists: configurations validated against the start (3; the plan may cut them).
        storage: ``None`` (studies in memory), an RDB URL (``sqlite:///joint.db``,
            ``postgresql://...``) or an Optuna storage; open it with ``optuna-dashboard <url>``.
        study_name: the stored study's name (default: derived from the run); the influence phase's
            study is ``<name>-influence``. A compile rewrites the studies of its name (the journal in
            ``log_dir``, not the study, is what a run resumes from).
        **kwargs: ``budget``, ``seed``, ``num_threads``, ``log_dir``, ``failure_score``, ``max_retries``,
            ``progress`` (see :class:`~dspy_icl_opt.search.ICLOptimizer`).

    Example:
        >>> from dspy_icl_opt.testing import planted_rule_task, scripted_lm
        >>> task = planted_rule_task("vowels", train_size=8, val_size=4)
        >>> opt = InstructionDemoSearch(task.metric, task_model=task.lm(), prompt_model=scripted_lm(
        ...     lambda request: f"Answer: {task.rule}."), auto=None, num_candidates=3, progress=False,
        ...     budget={"max_task_calls": 120, "max_prompt_calls": 4})
        >>> program = opt.compile(task.program(), trainset=task.train, valset=task.val)
        >>> opt.report_.spent["task"].calls <= 120
        True
    """

    default_temperature = DEFAULT_PROPOSAL_TEMPERATURE

    def __init__(self, metric: Metric, *, prompt_model: dspy.BaseLM | None = None,
                 task_model: dspy.BaseLM | None = None, auto: Auto | None = "light", num_candidates: int | None = None,
                 num_trials: int | None = None, max_bootstrapped_demos: int = 4, max_labeled_demos: int = 4,
                 minibatch: bool = True, minibatch_size: int = DEFAULT_MINIBATCH_SIZE,
                 minibatch_full_eval_steps: int = DEFAULT_FULL_EVAL_STEPS, temperature: float | None = None,
                 bootstrap_threshold: float = 1.0, influence: bool = True, format_candidate: bool = True,
                 knn_demos: bool = True, finalists: int = 3, storage: str | optuna.storages.BaseStorage | None = None,
                 study_name: str | None = None, **kwargs: Any) -> None:
        temperature = kwargs.pop("init_temperature", temperature)
        threshold = kwargs.pop("metric_threshold", None)
        bootstrap_threshold = bootstrap_threshold if threshold is None else threshold
        _refuse_mipro(kwargs)
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, **kwargs)
        if auto is not None and auto not in AUTO_SETTINGS:
            raise ValueError(f"`auto` must be one of {sorted(AUTO_SETTINGS)} or None, but got {auto!r}.")
        if auto is None and num_candidates is None:
            raise ValueError("`num_candidates` must be set when `auto` is None, but got None. Pass e.g. "
                             "num_candidates=6, or auto='light'.")
        if auto is not None and num_candidates is not None:
            raise ValueError(f"`num_candidates` must be None when `auto` is set (auto={auto!r} decides it), but got "
                             f"{num_candidates!r}. Pass auto=None to set num_candidates yourself.")
        for name, value in (("num_candidates", num_candidates), ("num_trials", num_trials)):
            if value is not None:
                check_int(name, value, minimum=1 if name == "num_trials" else 2)
        for name, value, low in (("max_bootstrapped_demos", max_bootstrapped_demos, 0),
                                 ("max_labeled_demos", max_labeled_demos, 0), ("minibatch_size", minibatch_size, 1),
                                 ("minibatch_full_eval_steps", minibatch_full_eval_steps, 1),
                                 ("finalists", finalists, 1)):
            check_int(name, value, minimum=low)
        for name, value in (("minibatch", minibatch), ("influence", influence), ("format_candidate", format_candidate),
                            ("knn_demos", knn_demos)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False, but got {value!r}.")
        if storage is not None and not isinstance(storage, (str, optuna.storages.BaseStorage)):
            raise ValueError(f"`storage` must be None, a database URL (e.g. 'sqlite:///joint.db') or an Optuna "
                             f"storage, but got {type(storage).__name__}.")
        if study_name is not None and (not isinstance(study_name, str) or not study_name):
            raise ValueError(f"`study_name` must be a non-empty string or None, but got {study_name!r}.")
        self.auto, self.num_candidates, self.num_trials = auto, num_candidates, num_trials
        self.max_bootstrapped_demos, self.max_labeled_demos = max_bootstrapped_demos, max_labeled_demos
        self.minibatch, self.minibatch_size = minibatch, minibatch_size
        self.minibatch_full_eval_steps = minibatch_full_eval_steps
        if temperature is not None:
            check_number("temperature", temperature, minimum=0.0, hint="Try 1.0, or None for the prompt LM's own.")
        self.temperature = None if temperature is None else float(temperature)
        self.bootstrap_threshold = check_number("bootstrap_threshold", bootstrap_threshold,
                                                hint="A run scoring at least this gives demos; 1.0 keeps exact passes.")
        self.influence, self.format_candidate, self.finalists = influence, format_candidate, finalists
        self.knn_demos = knn_demos
        self.storage, self.study_name = storage, study_name
        self.study_: optuna.Study | None = None

    # ----------------------------------------------------------------------------- settings
    @property
    def candidates(self) -> int:
        """Candidates per list (instructions, demo sets) per predictor."""
        return self.num_candidates if self.num_candidates is not None else AUTO_SETTINGS[self.auto]["n"]

    @property
    def max_demos(self) -> int:
        return self.max_bootstrapped_demos + self.max_labeled_demos

    def trials_dataframe(self, **kwargs: Any) -> Any:
        """The last study's trials as a pandas DataFrame (``optuna.Study.trials_dataframe``)."""
        if self.study_ is None:
            raise RuntimeError("No study yet: call compile(...) first.")
        return self.study_.trials_dataframe(**kwargs)

    def _params(self) -> dict[str, Any]:
        keys = ("auto", "num_candidates", "num_trials", "max_bootstrapped_demos", "max_labeled_demos", "minibatch",
                "minibatch_size", "minibatch_full_eval_steps", "temperature", "bootstrap_threshold", "influence",
                "format_candidate", "knn_demos", "finalists", "study_name")
        return {**{k: getattr(self, k) for k in keys}, "storage": redact(self.storage)}

    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example] | None = None,
                resume: bool | None = None, log_dir: str | Path | None = None, **kwargs: Any) -> dspy.Module:
        """Optimize ``student`` (see :meth:`ICLOptimizer.compile`); MIPROv2's compile settings apply to this call."""
        overrides = _mipro_compile_args(kwargs)
        saved = {name: getattr(self, name) for name in overrides}
        try:
            for name, value in overrides.items():
                setattr(self, name, value)
            return super().compile(student, trainset=trainset, valset=valset, resume=resume, log_dir=log_dir)
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    # -------------------------------------------------------------------------- the plan
    def _plan(self, shape: Shape) -> SearchPlan:
        """Trials and minibatch size that fit the caps after the bootstrap and the held-back validation."""
        m = shape.n_predictors
        val_cap = AUTO_SETTINGS[self.auto]["val_size"] if self.auto else shape.n_val
        n_val = min(shape.n_val, val_cap)
        held_out = held_out_size(n_val, HOLD_OUT_SHARE)
        n_search = n_val - held_out
        finalists, notes = self.finalists, []
        if shape.task_cap is not None:
            limit = VALIDATION_SHARE * shape.task_cap
            while finalists > 1 and _final_cost(m, finalists, n_val, held_out) > limit:
                finalists -= 1
            if finalists < self.finalists:
                notes.append(f"finalists cut from {self.finalists} to {finalists} so validation fits "
                             f"{VALIDATION_SHARE:.0%} of the cap")
        n_boot = _bootstrap_sources(shape.n_train) if self.max_bootstrapped_demos else 0
        boot = n_boot * m
        proposals = max(0, self.candidates - 1 - int(self.format_candidate))
        if shape.prompt_cap is not None:
            proposals = min(proposals, shape.prompt_cap // m)
        top = min(self.minibatch_size, max(MIN_SEARCH_EXAMPLES, n_search // 2)) if self.minibatch else n_search
        top = min(top, n_search)
        sizes = list(range(top, 0, -1)) if self.minibatch else [n_search]  # minibatch=False: every trial scores all
        every = self.minibatch_full_eval_steps
        wanted = self.num_trials or _mipro_trials(m, self.candidates, self.max_demos > 0)
        sizing = _Sizing(m, n_val, held_out, n_search, boot, top, tuple(sizes), every, wanted)
        trials, size, fulls, held = self._trial_schedule(shape, sizing, finalists)
        places = finalists
        while finalists > 0 and fulls < finalists:  # the calls a finalist's place holds back buy trials instead
            finalists = fulls  # none when no configuration but the start is fully evaluated (one trial, say)
            trials, size, fulls, held = self._trial_schedule(shape, sizing, finalists)
        if finalists < places:
            notes.append(f"finalists cut from {places} to {finalists}: the trials end in {fulls} full evaluation(s)")
        if not finalists:
            notes.append("no finalist fits: the start is validated and kept unless a reserve beats it on the calls "
                         "left")
        if trials < wanted:
            notes.append(f"only {trials} trial(s) fit the caps; {wanted} wanted")
        notes.append("the first trials survey the demo-set kinds under one instruction, then each instruction with "
                     "the best kind; TPE samples the rest")
        notes.append(f"{held_out} of the {n_val} validation examples held back from the trials; a finalist must not "
                     f"lose to the start there" if held_out else
                     f"the {n_val} validation examples serve the trials and the final choice (fewer than "
                     f"{MIN_VAL_TO_HOLD_OUT} to split); the final test asks for more standard errors")
        phases = [Phase(f"bootstrap on {n_boot} training examples (at most)", boot),
                  Phase(f"instruction proposals: {proposals} per predictor", 0, proposals * m),
                  Phase(f"{trials} trials on minibatches of {size} (the first: the program as given)",
                        trials * size * m),
                  Phase(f"{fulls} full evaluation(s) on the {n_search} trial examples",
                        fulls * (n_search - size) * m if size < n_search else 0),
                  Phase(f"final validation: start + {finalists} finalist(s) on {n_val} examples", held,
                        note=f"the finalists' {n_search} trial examples are cached")]
        settings = {"trials": int(trials), "wanted_trials": wanted, "minibatch_size": size, "full_eval_every": every,
                    "search_examples": n_search, "held_out": held_out, "demo_source_examples": shape.n_train,
                    "bootstrap_examples": n_boot, "proposals": proposals,
                    "exploration_trials": max(1, math.ceil(trials * EXPLORATION_SHARE)),
                    "finalists": finalists, "validation_examples": n_val, "validation_calls": held}
        return SearchPlan("InstructionDemoSearch", shape, int(trials), settings, phases, notes)

    def _trial_schedule(self, shape: Shape, z: _Sizing, places: int) -> tuple[int, int, int, int]:
        """Trials, minibatch size, full evaluations and validation calls with ``places`` finalists: the
        validation is held back first, the trials and their full evaluations (one per started block of
        ``full_eval_every`` trials) share the rest; without ``num_trials``, calls left buy more trials."""
        held = _final_cost(z.m, places, z.n_val, z.held_out)

        def cost(size: int, _count: int) -> tuple[int, int]:
            full = math.ceil((z.n_search - size) * z.m / z.every) if size < z.n_search else 0
            return z.boot, size * z.m + full

        budget = None if shape.task_cap is None else max(0, shape.task_cap - held)
        trials, size, _ = shrink_to_fit(cost, steps_wanted=z.wanted, sizes=list(z.sizes), counts=[1], budget=budget,
                                        preferred_min_size=min(PREFERRED_MINIBATCH, z.top))
        fixed, per_trial = cost(size, 1)
        if budget is not None and self.num_trials is None and per_trial:
            trials = max(trials, (budget - fixed) // per_trial)

        def spent(count: int) -> int:  # every started block of trials ends with a full evaluation
            fulls = math.ceil(count / z.every) if size < z.n_search else 0
            return fixed + count * size * z.m + fulls * (z.n_search - size) * z.m

        while budget is not None and trials > 0 and spent(trials) > budget:
            trials -= 1
        # a finalist is a fully evaluated configuration other than the start (the first trial)
        fulls = math.ceil(trials / z.every) if size < z.n_search else max(0, trials - 1)
        return int(trials), size, fulls, held

    # -------------------------------------------------------------------------- the search
    def _search(self, ctx: SearchContext) -> None:
        plan = ctx.plan
        run = _Run(names=[name for name, _ in ctx.predictors])
        run.input_fields = {name: list(pred.signature.input_fields) for name, pred in ctx.predictors}
        # a per-call (knn) demo set acts only in a predictor class that picks demos per call; a program that
        # does not end with one gets its own classes back
        changed = enable_dynamic_demos(ctx.student) if self.knn_demos and self.max_demos else []
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            try:
                with ctx.search_phase(validation_calls=plan.settings["validation_calls"]):
                    self._prepare(ctx, run)
                    self._trials(ctx, run)
            finally:
                optuna.logging.set_verbosity(verbosity)
                self._record(ctx, run)
            self._choose_final(ctx, run)
        finally:
            restore_unless_per_call(ctx.best_state(), changed)

    def _prepare(self, ctx: SearchContext, run: _Run) -> None:
        """Split the valset, bootstrap, propose instructions, build the candidate lists."""
        settings = ctx.plan.settings
        order = list(range(len(ctx.valset)))
        random.Random(stable_int(self.seed, "valset-order")).shuffle(order)
        order = order[: settings["validation_examples"]]
        held_out = settings["held_out"]
        run.pool = [ctx.valset[i] for i in order[held_out:]]
        run.final_examples = run.pool + [ctx.valset[i] for i in order[:held_out]]
        run.search = list(range(len(run.pool)))
        size, shuffled = settings["minibatch_size"], list(run.search)
        random.Random(stable_int(self.seed, "minibatch-order")).shuffle(shuffled)
        blocks = max(1, math.ceil(len(shuffled) / size))
        run.batches = [[shuffled[(j * size + i) % len(shuffled)] for i in range(size)] for j in range(blocks)]
        run.ks = k_choices(self.max_demos) if self.max_demos else (0,)
        run.sources = list(range(len(ctx.trainset)))
        sources = [ctx.trainset[i] for i in run.sources]
        boot_from = random.Random(stable_int(self.seed, "bootstrap-sources")).sample(
            sources, min(len(sources), settings["bootstrap_examples"]))
        boot = bootstrap(ctx, boot_from, max_demos=self.max_bootstrapped_demos,
                         teacher_demos=self.max_labeled_demos or self.max_bootstrapped_demos,
                         threshold=self.bootstrap_threshold, seed=self.seed)
        reserved = 1 if self.influence and self.max_demos else 0
        for index, (name, predictor) in enumerate(ctx.predictors):
            sets = demo_sets(predictor, name, sources, boot[name], max_labeled=self.max_labeled_demos,
                             max_bootstrapped=self.max_bootstrapped_demos, count=max(1, self.candidates - reserved),
                             seed=self.seed, per_call=self.knn_demos) if self.max_demos else []
            left = len(ctx.predictors) - index  # this predictor and the ones after it share the prompt calls left
            run.space[name] = PredictorSpace(self._instructions(ctx, run, name, predictor, sharing=left), sets)
        logger.info("InstructionDemoSearch: {} trial / {} held-back validation examples, {} demo-source examples; "
                    "candidates {}", len(run.pool), held_out, len(run.sources),
                    {n: (len(s.instructions), [d.name for d in s.demo_sets]) for n, s in run.space.items()})

    def _instructions(self, ctx: SearchContext, run: _Run, name: str, predictor: dspy.Predict, *,
                      sharing: int = 1) -> list[tuple[str, str]]:
        """The instruction as given, the answer-format one, then the prompt model's proposals. Under a prompt cap
        this predictor spends (retries included) at most its share of the calls left: ``sharing`` predictors,
        itself and the ones after it, split them."""
        given = ctx.initial_state[name].instruction
        spaces = output_spaces(predictor, ctx.trainset)
        found = [("given", given)]
        formatted = format_instruction(given, spaces) if self.format_candidate else None
        if formatted is not None:
            found.append(("format", formatted))
        sources = [ctx.trainset[i] for i in run.sources]
        rng = random.Random(stable_int(self.seed, "problems", name))
        shown = rng.sample(sources, min(SHOWN_PROBLEMS, len(sources)))
        problems = render_problems(predictor, shown)
        inputs = {"task": describe_signature(predictor), "data_summary": data_summary(predictor, ctx.trainset),
                  "solved_problems": problems}
        left = ctx.meter.remaining_calls("prompt")
        share = None if left is None else left // max(1, sharing)
        before = ctx.meter.snapshot()["prompt"].calls
        for i in range(ctx.plan.settings["proposals"]):
            room = None if share is None else share - (ctx.meter.snapshot()["prompt"].calls - before)
            if room is not None and room < 1:
                logger.info("InstructionDemoSearch: {} spent its share of the prompt calls after {} proposal(s)",
                            name, i)
                break
            try:
                answer = ctx.ask(ProposeTaskInstruction, key=f"joint/{name}/proposal{i}", temperature=ctx.temperature,
                                 validate=lambda a: bool(self._proposal(ctx, a, given, record=True)),
                                 max_attempts=room, style_hint=STYLE_HINTS[i % len(STYLE_HINTS)], **inputs)
            except BudgetExhausted as exc:
                if exc.role != "prompt":
                    raise
                logger.info("InstructionDemoSearch: the prompt-model budget is spent after {} proposal(s)", i)
                break
            text = self._proposal(ctx, answer, given) if answer is not None else ""
            if text and self.format_candidate and spaces:
                text = format_instruction(text, spaces) or text
            if text and all(text.strip().lower() != t.strip().lower() for _, t in found):
                found.append(("proposal", text))
        return found

    @staticmethod
    def _proposal(ctx: SearchContext, answer: dspy.Prediction, given: str, *, record: bool = False) -> str:
        """The instruction an answer proposes, or ``""`` (none read, or not an instruction: see
        :meth:`SearchContext.proposal_problem`; the solved problems shown are not to be copied back). Sentences
        that restate the meta-prompt's own instructions are dropped first, the rest kept."""
        text = read_instruction(clean_proposal(str(answer.instruction or "")), MAX_INSTRUCTION_CHARS)
        return ctx.read_proposal(text, ProposeTaskInstruction, allowed=given, record=record) or ""

    # -------------------------------------------------------------------------- the trials
    def _trials(self, ctx: SearchContext, run: _Run) -> None:
        self._open_study(ctx, run, phase=1)
        explore = ctx.plan.settings["exploration_trials"]
        while self._want_more(ctx, run):
            if not run.influence and run.done >= explore and not run.pending and run.surveyed_instructions \
                    and self.influence and self.max_demos:  # the fit runs once, whether or not it adds a set
                self._influence_phase(ctx, run)
            if not self._trial(ctx, run):
                break
            if run.done % self.minibatch_full_eval_steps == 0:
                self._full_evaluation(ctx, run)
            ctx.checkpoint(step=run.done)
        if run.done % self.minibatch_full_eval_steps:
            self._full_evaluation(ctx, run)  # MIPROv2 also evaluates the last partial block's best
        if run.done < ctx.plan.settings["wanted_trials"] and ctx.meter.remaining_calls("task") is not None:
            ctx.report.stopped_by_budget = True  # the caps paid for fewer trials than MIPROv2's count

    def _want_more(self, ctx: SearchContext, run: _Run) -> bool:
        planned = ctx.plan.steps
        if self.num_trials is not None:  # a task cap may have cut them (the plan holds back their full evaluations)
            return run.done < min(self.num_trials, planned)
        remaining = ctx.meter.remaining_calls("task")
        if remaining is None or run.done < planned:
            return run.done < planned
        m, size, n_search = len(run.names), ctx.plan.settings["minibatch_size"], len(run.search)
        return run.idle < MAX_IDLE_TRIALS and remaining >= (size + (n_search - size)) * m

    def _trial(self, ctx: SearchContext, run: _Run) -> bool:
        """Ask, score and tell one trial; False when the budget cannot pay for it (the trial is marked cut)."""
        self._next_survey(run)
        stage = None
        if run.pending:
            stage, params = run.pending.pop(0)
            run.study.enqueue_trial(params)
        for repeat in range(MAX_REPEATS_TOLD + 1):
            with warnings.catch_warnings():  # an RDB storage's heartbeat is for study.optimize; ask/tell are short
                warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                trial = run.study.ask(distributions(run.space, run.ks))
            choices = decode(trial.params, run.space)
            state = build_state(ctx.initial_state, run.space, choices, self.max_demos > 0)
            if repeat == MAX_REPEATS_TOLD or not self._told_as_repeat(run, trial, state):
                break
        batch = run.batches[(run.done // self.minibatch_full_eval_steps) % len(run.batches)]
        examples = [run.pool[i] for i in batch]
        new = ctx.scorer.unscored(state, examples) * len(run.names)
        remaining = ctx.meter.remaining_calls("task")
        if remaining is not None and new > remaining:
            return self._cut(ctx, run, trial, f"needs {new} task calls, {remaining} left")
        described = describe(run.space, choices, self.max_demos > 0)
        record = ctx.add_candidate(state, step=run.done + 1, origin="trial",
                                   meta={"trial": trial.number, "phase": run.phase, "choice": described})
        try:
            outcomes = ctx.scorer.evaluate(state, examples, desc=f"trial {trial.number} #{record.id}")
        except BudgetExhausted:
            self._cut(ctx, run, trial, "the task budget ended inside the trial")
            raise
        value = self._store(ctx, run, record, batch, outcomes)
        if stage == "demos" and repeat == 0:
            run.survey.append((dict(trial.params), value))
        run.trialed.setdefault(state.key(), record.id)
        self._tell(run, trial, choices, described, batch, outcomes, state, value)
        run.params[record.id] = dict(trial.params)
        run.done += 1
        fresh = {(state.key(), i) for i in batch} - run.scored  # new to this run (a resumed run replays them)
        run.scored |= fresh
        run.idle = 0 if fresh else run.idle + 1
        stage = stage if stage and repeat == 0 else "sampler"  # a queued configuration told as a repeat: TPE's
        run.rows.append({"trial": trial.number, "phase": run.phase, "stage": stage, "candidate": record.id,
                         "value": round(value, 6), "examples": len(outcomes), "new_examples": len(fresh),
                         "choice": described})
        logger.info("Trial {} (phase {}): {} -> {:.3f} on {} examples", trial.number, run.phase, described, value,
                    len(outcomes))
        return True

    def _next_survey(self, run: _Run) -> None:
        """When the demo survey has been asked, queue the instruction survey with the kind that scored best (the
        earliest of equals: ``SURVEY_ORDER``) at the start of the next block of trials, so it runs on one minibatch."""
        if run.pending or run.surveyed_instructions or run.done % self.minibatch_full_eval_steps:
            return  # a demo survey shorter than its block: the sampler fills the block, the survey starts the next
        run.surveyed_instructions = True
        if run.survey:
            best = max(run.survey, key=lambda row: row[1])[0]  # max keeps the first of equal values
            run.pending = [("instructions", params)
                           for params in _instruction_survey(run, best, self.minibatch_full_eval_steps)]

    @staticmethod
    def _told_as_repeat(run: _Run, trial: optuna.Trial, state: ProgramState) -> bool:
        """A configuration whose program a trial already scored (e.g. ``k=0`` with any demo set and the
        instruction as given: the start again) is told its mean so far, for free, instead of costing a
        minibatch; the sampler learns the same and the calls go to programs not yet seen. False when new."""
        rid = run.trialed.get(state.key())
        if rid is None:
            return False
        scores = run.scores[rid]
        trial.set_user_attr("icl_repeat_of_candidate", rid)
        run.study.tell(trial, sum(scores.values()) / len(scores))
        run.repeats += 1
        logger.info("Trial {}: the program of candidate {} again; told its mean, no call", trial.number, rid)
        return True

    def _cut(self, ctx: SearchContext, run: _Run, trial: optuna.Trial, why: str) -> bool:
        """A trial the budget cannot pay for: FAIL with a reason, never PRUNED (it was not judged)."""
        ctx.report.stopped_by_budget = True
        trial.set_user_attr("icl_cut_by_budget", why)
        run.study.tell(trial, state=TrialState.FAIL)
        logger.info("Trial {} not run: {}", trial.number, why)
        return False

    def _store(self, ctx: SearchContext, run: _Run, record: CandidateRecord, batch: list[int],
               outcomes: list[Outcome]) -> float:
        scores = run.scores.setdefault(record.id, {})
        scores.update({i: o.score for i, o in zip(batch, outcomes)})
        record.scores["search"] = sum(scores.values()) / len(scores)
        record.n_scored["search"] = len(scores)
        return sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0

    def _tell(self, run: _Run, trial: optuna.Trial, choices: dict[str, Choice], described: dict[str, Any],
              batch: list[int], outcomes: list[Outcome], state: ProgramState, value: float) -> None:
        keys = [example_key(run.pool[i])[:12] for i in batch]
        trial.set_user_attr("icl_scores", {k: o.score for k, o in zip(keys, outcomes)})
        trial.set_user_attr("icl_demos", shown_ids(run.space, choices))
        per_call = {name for name, c in choices.items()
                    if run.space[name].demo_sets and run.space[name].demo_sets[c.demo_set].per_call and c.k}
        if per_call:  # what a knn predictor showed differs per example: the influence fit reads it per example
            carried = {name: state[name].demos for name in per_call}
            trial.set_user_attr("icl_dynamic", {k: shown_per_call(carried, o.trace, run.input_fields)
                                                for k, o in zip(keys, outcomes)})
        for name, row in described.items():
            text = run.space[name].instructions[row["instruction"]][1]
            trial.set_user_attr(f"{name}/instruction_text", text[:SHOWN_INSTRUCTION_CHARS])
            if "demo_set" in row:
                trial.set_user_attr(f"{name}/demo_set", row["demo_set"])
        run.study.tell(trial, value)

    def _full_evaluation(self, ctx: SearchContext, run: _Run) -> None:
        """Score the best configuration not yet fully evaluated on all the trial examples (if the budget pays).

        The program as given is never picked here: the final choice scores it on every validation example
        anyway, and a full evaluation is what makes a configuration a finalist."""
        if len(run.batches[0]) >= len(run.search):
            for rid, scores in run.scores.items():  # every trial already saw the whole search set
                run.full[rid] = sum(scores.values()) / len(scores)
            for row in run.rows:
                row["full"] = round(run.full[row["candidate"]], 6)
            return
        records = [record for record in _trial_records(ctx, run) if record.id not in run.full]
        best = ctx.best_by(records, "search")
        if best is None:
            return
        state = ctx.state_of(best)
        examples = [run.pool[i] for i in run.search]
        new = ctx.scorer.unscored(state, examples) * len(run.names)
        remaining = ctx.meter.remaining_calls("task")
        if remaining is not None and new > remaining:
            ctx.report.stopped_by_budget = True
            logger.info("Full evaluation of candidate {} skipped: needs {} task calls, {} left", best.id, new,
                        remaining)
            return
        outcomes = ctx.scorer.evaluate(state, examples, desc=f"full #{best.id}")
        run.scored |= {(state.key(), i) for i in run.search}
        self._store(ctx, run, best, run.search, outcomes)
        run.full[best.id] = ctx.record_outcomes(best, outcomes, "full")
        for row in run.rows:
            if row["candidate"] == best.id:
                row["full"] = round(run.full[best.id], 6)
        logger.info("Full evaluation of candidate {}: {:.3f} on {} search examples", best.id, run.full[best.id],
                    len(examples))

    # -------------------------------------------------------------------------- the studies
    def _open_study(self, ctx: SearchContext, run: _Run, phase: int) -> optuna.Study:
        """A fresh study for the phase (a stored one of the same name is replaced: the journal is what resumes)."""
        if not run.studies:
            run.storage = make_storage(self.storage) if self.storage is not None else None
            digest = stable_int(ctx.report.fingerprint, self.seed, self._params())
            run.study_name = self.study_name or f"joint-{digest:08x}"
        name = run.study_name if phase == 1 else f"{run.study_name}-influence"
        if run.storage is not None:
            try:
                optuna.delete_study(study_name=name, storage=run.storage)
                logger.info("Replacing the stored study {!r} (the run's journal is what resumes it)", name)
            except KeyError:
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=stable_int(self.seed, "tpe", phase), multivariate=True,
                                                 n_startup_trials=ctx.plan.settings["exploration_trials"])
            study = optuna.create_study(storage=run.storage, study_name=name, sampler=sampler, direction="maximize")
            study.set_metric_names([METRIC_NAME])
        study.set_user_attr("icl_instructions", {n: [t for _, t in s.instructions] for n, s in run.space.items()})
        study.set_user_attr("icl_demo_sets", {n: [d.name for d in s.demo_sets] for n, s in run.space.items()})
        run.studies.append(study)
        run.phase = phase
        self.study_ = study
        if phase == 1:
            start = _start_params(ctx, run, self.max_demos > 0)
            # the program as given, first: a baseline on the same minibatch, cached for later; then the survey
            run.pending = [("start", start)] if start is not None else []
            slots = self.minibatch_full_eval_steps - len(run.pending)  # the rest of the first block
            demos = _demo_survey(run, slots)
            run.pending += [("demos", params) for params in demos]
            if not demos:  # no demos searched: the instructions are the first survey
                run.pending += [("instructions", params) for params in _instruction_survey(run, None, slots)]
                run.surveyed_instructions = True
        return study

    def _influence_phase(self, ctx: SearchContext, run: _Run) -> None:
        """Fit each demo's influence on the trials so far; add the top demos as a demo set; go on in a new study."""
        previous = run.study
        done = [t for t in previous.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        ranking = fit_influence([t.user_attrs for t in done])
        top = {name: entries[: self.max_demos] for name, entries in ranking.items()}
        run.influence = {"after_trials": len(done), "top": top}
        added = {}
        for name, pspace in run.space.items():
            known = {demo_id(d): d for s in pspace.demo_sets for d in s.demos}
            found = influence_set(ranking.get(name, []), known, self.max_demos)
            if found is not None and all(found.ids(len(found.demos)) != s.ids(len(s.demos)) for s in pspace.demo_sets):
                pspace.demo_sets.append(found)
                added[name] = len(pspace.demo_sets) - 1
        if not added:  # the trials go on in the first study (phase 1): there is no second
            logger.info("Influence after {} trials: no demo helped clearly; the candidate lists stay as they are",
                        len(done))
            return
        study = self._open_study(ctx, run, phase=2)
        dists = distributions(run.space, run.ks)
        for t in done:  # the same indices mean the same candidates in the longer lists
            study.add_trial(optuna.trial.create_trial(params=t.params, distributions={k: dists[k] for k in t.params},
                                                      value=t.value, user_attrs=t.user_attrs))
        best = self._leader(ctx, run)
        if best is not None and best.id in run.params:
            params = dict(run.params[best.id])
            for name, index in added.items():
                params[f"{name}/demos"] = index
                params[f"{name}/k"] = params.get(f"{name}/k") or run.ks[-1]
            study.enqueue_trial(params)
        logger.info("Influence after {} trials: demo set 'influence' added for {}", len(done), sorted(added))

    def _leader(self, ctx: SearchContext, run: _Run) -> CandidateRecord | None:
        """The best configuration so far: by full evaluation when there is one, else by its search mean."""
        if run.full:
            return ctx.report.candidates[max(run.full, key=lambda rid: (run.full[rid], -rid))]
        return ctx.best_by([ctx.report.candidates[rid] for rid in run.scores], "search")

    # -------------------------------------------------------------------------- the choice
    def _choose_final(self, ctx: SearchContext, run: _Run) -> None:
        """The start and the best fully evaluated configurations on the whole valset (trial examples first, from
        the cache), then reserves and unseen training examples as far as the calls left pay for them."""
        records = _trial_records(ctx, run)
        ranked = sorted(records, key=lambda r: (-run.full.get(r.id, -1.0), -r.scores.get("search", 0.0), r.id))
        wanted = ctx.plan.settings["finalists"]
        finalists = [r for r in ranked if r.id in run.full][:wanted]  # their trial examples are all cached
        chosen = {r.id for r in finalists}
        reserves = [r for r in ranked if r.id not in chosen]
        examples = None
        if run.final_examples:
            examples = run.final_examples + ctx.unseen_training_examples([*finalists, *reserves])
        held_out = ctx.plan.settings["held_out"]
        programs = len(run.scores)  # one record per distinct program the trials scored
        best = ctx.choose_by_validation(finalists, reserves=reserves, examples=examples,
                                        z=VALIDATION_Z if held_out else reuse_z(programs),
                                        reused=len(run.pool) if examples is not None else 0,
                                        tiebreak=lambda r: (run.full.get(r.id, -1.0),))
        logger.info("InstructionDemoSearch chose candidate {} ({})", best.id, best.meta.get("choice", "the start"))

    def _record(self, ctx: SearchContext, run: _Run) -> None:
        """The report's record of the search: candidate lists once, then one row per trial (indices, set, k)."""
        ctx.report.extra["joint"] = {
            "instructions": {n: [{"index": i, "origin": o, "text": t} for i, (o, t) in enumerate(s.instructions)]
                             for n, s in run.space.items()},
            "demo_sets": {n: [{"index": i, "name": d.name, "size": len(d.demos), "ids": d.ids(len(d.demos)),
                               **({"per_call": d.per_call} if d.per_call else {})}
                              for i, d in enumerate(s.demo_sets)] for n, s in run.space.items()},
            "k_choices": list(run.ks), "search_examples": len(run.search), "held_out_examples": len(run.final_examples)
            - len(run.pool), "demo_source_examples": len(run.sources),
            "trials": run.rows, "repeats_told": run.repeats}
        if run.studies and self.max_demos:  # every trial of the run, demos' content beside their weights
            done = [t.user_attrs for t in run.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
            demos = {(n, demo_id(d)): d for n, s in run.space.items() for ds in s.demo_sets for d in ds.demos}
            ctx.report.extra["influence"] = fit_influence(done, demos=demos)
        ctx.report.extra["joint"]["influence_phase"] = run.influence
        if run.studies:
            ctx.report.extra["study"] = {"names": [s.study_name for s in run.studies],
                                         "storage": redact(self.storage) or "in-memory",
                                         "trials": len(run.study.trials), "metric": METRIC_NAME}
        ctx.checkpoint()


def _trial_records(ctx: SearchContext, run: _Run) -> list[CandidateRecord]:
    """The records the trials scored, the program as given left out (the final choice validates it anyway)."""
    start_key = ctx.initial_state.key()
    records = [ctx.report.candidates[rid] for rid in run.scores]
    return [record for record in records if ctx.state_of(record).key() != start_key]


def _start_params(ctx: SearchContext, run: _Run, search_demos: bool) -> dict[str, int] | None:
    """The trial parameters that build the program as given (its instructions, no demos), or ``None`` when
    no trial builds it (a predictor came with demos of its own and demos are searched)."""
    params: dict[str, int] = {}
    dists = distributions(run.space, run.ks)
    for name, pspace in run.space.items():
        if search_demos and ctx.initial_state[name].demos:
            return None
        params[f"{name}/instruction"] = 0
        if f"{name}/k" in dists:
            params.update({f"{name}/demos": 0, f"{name}/k": 0})
    return params


def _demo_survey(run: _Run, slots: int) -> list[dict[str, int]]:
    """Up to ``slots`` trials' parameters that survey the demo-set kinds (``SURVEY_ORDER``, then the other sets in
    their order), one kind per trial in every predictor at once, each with the answer-format instruction (else the
    one given) and the middle ``k``; none when demos are not searched."""
    dists = distributions(run.space, run.ks)
    shown = [k for k in run.ks if k > 0]
    if slots <= 0 or not shown or not all(f"{name}/k" in dists for name in run.space):
        return []
    k = min(shown, key=lambda value: (abs(value - max(shown) / 2), value))
    orders = {}
    for name, pspace in run.space.items():
        names = [d.name for d in pspace.demo_sets]
        first = [names.index(kind) for kind in SURVEY_ORDER if kind in names]
        orders[name] = first + [i for i in range(len(names)) if i not in first]
    rows = []
    for j in range(min([slots, *(len(order) for order in orders.values())])):
        row = {}
        for name in run.space:
            row.update({f"{name}/instruction": _format_index(run.space[name]), f"{name}/demos": orders[name][j],
                        f"{name}/k": k})
        rows.append(row)
    return rows


def _instruction_survey(run: _Run, best: dict[str, int] | None, slots: int) -> list[dict[str, int]]:
    """Up to ``slots`` trials' parameters that try each instruction not tried yet with the demos of ``best`` (the
    demo survey's best trial; ``None``: no demos searched, and the start was the given instruction): the proposals
    and the format candidate in their order, then the one given."""
    orders = {}
    for name, pspace in run.space.items():
        tried = {0} if best is None else {best[f"{name}/instruction"]}
        orders[name] = [i for i in [*range(1, len(pspace.instructions)), 0] if i not in tried]
    rows = []
    for j in range(min([slots, *(len(order) for order in orders.values())])):
        row = {}
        for name in run.space:
            row[f"{name}/instruction"] = orders[name][j]
            if best is not None and f"{name}/demos" in best:
                row.update({f"{name}/demos": best[f"{name}/demos"], f"{name}/k": best[f"{name}/k"]})
        rows.append(row)
    return rows


def _format_index(pspace: PredictorSpace) -> int:
    return next((i for i, (origin, _) in enumerate(pspace.instructions) if origin == "format"), 0)


def _final_cost(predictors: int, finalists: int, n_val: int, held_out: int) -> int:
    """Task calls of the final choice: the start on every validation example, each finalist on the held-back
    ones (its trial examples are cached: finalists are fully evaluated configurations)."""
    return (n_val + finalists * held_out) * predictors


def _bootstrap_sources(n_train: int) -> int:
    """Training examples the bootstrap may run: half the trainset (all of it when small)."""
    return n_train if n_train < MIN_EXAMPLES_TO_SPLIT else n_train // 2


def _mipro_trials(predictors: int, candidates: int, with_demos: bool) -> int:
    """MIPROv2's trial count: max(2 * params * log2(n), 1.5 * n), params = predictors (x2 with demos)."""
    params = predictors * (2 if with_demos else 1)
    return int(max(2 * params * math.log2(candidates), 1.5 * candidates))


def _refuse_mipro(kwargs: dict[str, Any]) -> None:
    """Refuse MIPROv2's constructor names without a meaning here; drop the no-op ones."""
    for key, instead in MIPRO_REFUSED.items():
        if key in kwargs:
            raise TypeError(f"`{key}` (a MIPROv2 argument) has no InstructionDemoSearch equivalent, but got "
                            f"{key}={kwargs[key]!r}: {instead}.")
    for key in ("verbose", "track_stats"):  # the log and the report always say everything
        kwargs.pop(key, None)


def _mipro_compile_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """MIPROv2's compile() settings as attribute overrides for one call; others refused by name."""
    overrides = {}
    for key, value in kwargs.items():
        if key in MIPRO_COMPILE_ARGS:
            overrides[key] = value
        elif key == "requires_permission_to_run" and not value:
            continue
        elif key in MIPRO_COMPILE_REFUSED:
            raise TypeError(f"compile() argument `{key}` (MIPROv2's) is not supported: {MIPRO_COMPILE_REFUSED[key]}.")
        elif key == "seed":
            raise TypeError("compile() argument `seed` is not supported: pass seed= to the constructor.")
        else:
            raise TypeError(f"compile() got unexpected argument {key!r}. It takes student, trainset, valset, resume, "
                            f"log_dir and MIPROv2's {list(MIPRO_COMPILE_ARGS)}.")
    for key in ("num_trials", "minibatch_size", "minibatch_full_eval_steps", "max_bootstrapped_demos",
                "max_labeled_demos"):
        if key in overrides and not (key == "num_trials" and overrides[key] is None):
            check_int(key, overrides[key], minimum=1 if key in ("num_trials", "minibatch_size",
                                                                  "minibatch_full_eval_steps") else 0)
    if "minibatch" in overrides and not isinstance(overrides["minibatch"], bool):
        raise TypeError(f"`minibatch` must be True or False, but got {overrides['minibatch']!r}.")
    return overrides
