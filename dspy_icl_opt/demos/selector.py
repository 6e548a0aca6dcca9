"""DemoSelector: an Optuna search over each predictor's few-shot demos; instructions are left alone.

One trial picks, per predictor, how many demos (``k``, zero included), from which pool (labeled
examples or a teacher's passing traces), which ones (one of a few candidate sets drawn up front,
kNN or MMR of the input at inference time, a static MMR set, or an influence ranking from an
earlier study) and in which order. The first trials are zero-shot, the largest labeled set and the
largest bootstrapped set.

The plan comes first (:meth:`DemoSelector.plan`, no LM call): from the task-call cap, the final
validation (the program as given and the best few trials) is set aside, then the bootstrap, and the
trials get what is left; a trial is started only when the budget left pays for all of it, so the
budget ends between trials and the finalists are always validated.

The valset is split in two when it is large enough (``MIN_VAL_TO_HOLD_OUT``): the trials are scored
on minibatches of one part, each minibatch's running mean an intermediate value so a pruner stops
bad trials early (never before ``MIN_EXAMPLES_BEFORE_PRUNING`` examples); the final choice uses the
whole valset (the trials' part cached), and a finalist must also not lose to the start on the other
part, which no trial was ranked on (MIPROv2's minibatch-then-full idea, with fresh examples in the
full evaluation). A smaller valset is used whole by both, and the paired test of the
final choice then asks for more (a Bonferroni bound over the trials the finalists were picked from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, NoReturn

import dspy
import optuna
from optuna.trial import FrozenTrial

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.demos.dynamic import ORDERS, Order, enable_dynamic_demos, restore_unless_per_call, shown_per_call
from dspy_icl_opt.demos.embeddings import embedder_name
from dspy_icl_opt.demos.influence import fit_influence
from dspy_icl_opt.demos.pools import (
    POOLS,
    TEACHERS,
    PoolName,
    Pools,
    TeacherName,
    build_pools,
    demo_id,
    labeled_teacher,
    largest_k,
    teacher_state,
)
from dspy_icl_opt.demos.strategies import (
    CANDIDATE_SETS,
    STRATEGIES,
    check_choices,
    coerce_influence,
    Choice,
    ParamsSource,
    Space,
    Strategy,
    TrialSource,
    choice_demos,
    static_ids,
    suggest,
)
from dspy_icl_opt.demos.study import (
    K_CURVE_NOTE,
    PrunerName,
    check_optuna_object,
    check_settings,
    default_study_name,
    enqueue_baselines,
    finished,
    k_curve,
    make_pruner,
    make_sampler,
    open_study,
    ranked_trials,
    redact,
    shared_pools,
    summary,
)
from dspy_icl_opt.search import BudgetExhausted, ICLOptimizer, OptimizationReport, ProgramState, SearchContext
from dspy_icl_opt.search.base import VALIDATION_Z, stable_int
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.plan import VALIDATION_SHARE, Phase, SearchPlan, Shape
from dspy_icl_opt.search.scorer import Metric, Outcome, example_key

#: Task-model calls spent at most on bootstrapping traces (an example already started is finished).
DEFAULT_BOOTSTRAP_MAX_CALLS = 64
#: Bootstrapping stops early once every predictor has this many demos per ``max_demos``.
BOOTSTRAP_POOL_FACTOR = 3
#: Under a task-call cap, bootstrapping may spend at most 1/this of what the final validation leaves (the trials
#: need the rest).
BOOTSTRAP_BUDGET_SHARE = 4
#: Example keys stored in trials are cut to this length (enough to tell a valset's examples apart).
EXAMPLE_KEY_LEN = 12
#: No trial is pruned before it has scored this many examples: with 0/1 scores the mean of 16 has a standard
#: error up to 0.125, so one or two unlucky examples of a first minibatch of 5-8 no longer end a trial.
MIN_EXAMPLES_BEFORE_PRUNING = 16
#: A valset this large is split: half of it (``HOLD_OUT_SHARE``) is held back from the trials, leaving each side
#: at least 12 examples; the final choice uses both halves, and a finalist must not lose on the held-back one.
#: A smaller valset is used whole by both, and the final test asks for more standard errors (:func:`reuse_z`).
MIN_VAL_TO_HOLD_OUT = 24
#: The share of such a valset held back from the trials.
HOLD_OUT_SHARE = 0.5
#: Trials run when ``n_trials`` is None and no task-call cap bounds them.
UNCAPPED_TRIALS = 30
#: Two processes sharing a SQLite study can pop the same queued trial (SQLite has no row locks); the one that
#: finishes second cannot record it and goes on with another trial, at most this many times.
SHARED_QUEUE_RACES = 3
#: With ``n_trials=None``, the search stops after this many trials in a row that cost no call (all cached:
#: the sampler keeps proposing programs already scored, so the space is exhausted).
MAX_FREE_TRIALS_IN_A_ROW = 10


def held_out_size(n_val: int, share: float = HOLD_OUT_SHARE) -> int:
    """Validation examples held back from the trials (0: the trials may use the whole valset); ``share``: the
    part of a valset of ``MIN_VAL_TO_HOLD_OUT`` or more that is held back (InstructionDemoSearch's is smaller)."""
    return round(n_val * share) if n_val >= MIN_VAL_TO_HOLD_OUT else 0


def reuse_z(n_trials: int, z: float = VALIDATION_Z) -> float:
    """The paired test's threshold when the finalists were picked, among ``n_trials`` trials, on the
    examples that validate them: the one-sided level of ``z`` split over the trials (Bonferroni), so
    that the best of many lucky trials does not pass as often as one honest finalist would.

    Example:
        >>> round(reuse_z(1), 2), round(reuse_z(30), 2)
        (1.0, 2.56)
    """
    alpha = 1.0 - NormalDist().cdf(z)
    return NormalDist().inv_cdf(1.0 - alpha / max(1, n_trials))


@dataclass
class _Run:
    """The state of one ``compile``: the study, the space, the trials' minibatches and the final examples."""

    ctx: SearchContext
    study: optuna.Study
    space: Space
    batches: list[list[dspy.Example]]
    input_fields: dict[str, list[str]]
    final_examples: list[dspy.Example]
    held_out: bool
    reused: int
    trial_cost: int
    exhausted: BudgetExhausted | None = None
    ran: int = 0
    free_in_a_row: int = 0
    calls_before: int = 0
    records: dict[int, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.space.pools)

    def pool(self, choice: Choice) -> list[dict[str, Any]]:
        return self.space.pools[choice.predictor].get(choice.pool or "", [])

    def state_of(self, choices: Mapping[str, Choice]) -> ProgramState:
        state = self.ctx.initial_state
        for name, choice in choices.items():
            demos = choice_demos(choice, self.pool(choice), self.space.embedder)
            state = state.replace(name, state[name].with_demos(demos))
        return state


class DemoSelector(ICLOptimizer):
    """Search the few-shot demos of every predictor with Optuna; instructions are kept as they are.

    Args:
        metric: ``metric(example, prediction, trace=None)``, higher is better.
        max_demos: the largest ``k`` per predictor. A predictor whose largest pool is smaller gets
            ``k`` clamped to that pool's size, with a logged warning.
        n_trials: the most trials this ``compile`` runs (the baselines included; a resumed or shared
            study keeps its earlier trials and adds these). ``None`` (default): as many as the task
            budget pays for after the final validation and the bootstrap (30 with no task cap).
            Either way, a trial starts only if the budget left pays for all its examples.
        strategies: how demos are chosen (see :mod:`dspy_icl_opt.demos.strategies`): ``random``
            (one of ``candidate_sets`` seeded sets), ``slots`` (one of ``candidate_sets`` sets that
            cover the pool), ``knn`` and ``mmr`` (per call, at inference time), ``mmr_static`` (one
            MMR set for every call, relevant to the average input), ``influence`` (needs ``influence=``).
        pools: ``labeled`` (training examples) and/or ``bootstrapped`` (a teacher's passing runs).
        orders: ``as_selected``, ``most_similar_last`` (per call), ``permutation`` (one of 3 seeded ones).
        candidate_sets: demo sets drawn up front per predictor and pool, from the optimizer's seed,
            that ``random`` and ``slots`` choose from by index (default 6, as MIPROv2's light setting).
        bootstrap_max_calls: task-model calls spent at most on bootstrapping (default 64).
        bootstrap_threshold: a run whose score reaches this passes and gives demos (default 1.0).
        bootstrap_teacher: who runs the training examples for the bootstrapped pool: ``"labeled"``
            (default; the program as given, each predictor without demos of its own shown up to
            ``max_demos`` labeled demos, never the example being run, as DSPy's BootstrapFewShot
            does) or ``"student"`` (the program as given). ``compile(..., teacher=program)`` uses
            a teacher program instead (same predictor names; it runs on the task model).
        minibatch_size: validation examples per intermediate value (default 8).
        minibatches_per_trial: minibatches a trial that is not pruned gets (default 4).
        pruner: ``"median"`` (default), ``"successive_halving"``, ``None`` or any Optuna pruner; it
            is asked only once a trial has scored ``MIN_EXAMPLES_BEFORE_PRUNING`` examples.
        sampler: any Optuna sampler; default a ``TPESampler(multivariate=True, group=True, seed=seed)``.
        storage: ``None`` (in memory), an RDB URL (``sqlite:///demos.db`` to resume in a later
            compile, ``postgresql://...`` for several processes) or an Optuna storage.
        study_name: the study to create or resume; with a storage and no name, a name derived from
            the program, the trainset and the seed is used (so the same call resumes).
        embedder: a ``dspy.Embedder`` (or ``callable(list[str]) -> array``, or the name given to
            ``register_embedder``) for kNN and MMR; default: a lexical TF-IDF embedder that needs no
            download. Programs store the embedder's name (its ``model`` string, else its qualified name).
        influence: an influence ranking (``report.extra["influence"]`` or the report of an earlier
            DemoSelector run) for the ``influence`` strategy.
        top_k_full_eval: the best trials validated at the end, with the program as given (default 3;
            the plan lowers it when the validation would take more than its share of the cap).
        **kwargs: :class:`~dspy_icl_opt.search.ICLOptimizer` arguments (task_model, budget, seed, ...).

    The final choice: the program as given and the best ``top_k_full_eval`` distinct trials are
    scored on the final-choice examples, and a trial replaces the start only if it beats it there by
    the base class's paired test (:meth:`SearchContext.choose_by_validation`). With at least
    ``MIN_VAL_TO_HOLD_OUT`` validation examples, half of them are held back from the trials; the
    final choice uses the whole valset (the trial examples are cached for the finalists, so they cost
    nothing) at the usual ``VALIDATION_Z``, and a finalist must also not lose to the start on the
    held-back half, where no trial was selected. (Judging on the held-back half alone threw away
    half the evidence: on a hyperbaton split the start and three finalists all scored 0.70 on those
    20 examples, and 0.62 against 0.80 on 100 test examples; ``examples/benchmarks/sim_final_choice.py``
    compares the rules.) With fewer, the whole valset serves both, so the finalists were selected on
    the examples that judge them: the test then asks for :func:`reuse_z` standard errors (Bonferroni
    over the trials). ``report.extra["final_choice"]`` says which (``held_out``, ``z``, ``reused_examples``).

    Drop-in for ``BootstrapFewShotWithRandomSearch``: its ``max_bootstrapped_demos`` and
    ``max_labeled_demos`` bound how many demos a prompt holds, so they set ``max_demos`` (the larger
    of the two; DemoSelector then searches k up to it, from both pools); ``num_candidate_programs``
    sets ``n_trials`` to it plus the three baselines BFSRS also tries first (zero-shot, labeled,
    bootstrapped); ``metric_threshold`` is ``bootstrap_threshold``; ``num_threads`` is the base
    class's (examples scored in parallel); ``max_rounds=1`` and an empty ``teacher_settings`` are
    what DemoSelector does anyway. Other values of those two, ``max_errors`` and ``stop_at_score``
    are refused with our equivalent named; ``compile(..., labeled_sample=...)`` is accepted (labeled
    sets are always seeded samples) and ``restrict`` refused.

    A kNN, MMR or reordered-per-call winner makes the returned program's predictors ``DynamicPredict``;
    see :mod:`dspy_icl_opt.demos.dynamic` for what ``save`` writes and how to load it.

    With a ``storage``, the demo pools and the search settings are stored in the study: a later
    compile or another process reuses those pools (no second bootstrap) and refuses other settings.
    Processes sharing one study need the same program, trainset, valset and seed, and distinct
    ``log_dir``; each seeds its sampler from the seed, its host and pid (so workers explore different
    trials), which makes such runs not bit-for-bit reproducible. The report's ``extra`` holds
    ``influence`` (each demo's estimated effect, best first), ``k_curve`` (per k: trial scores and the
    finalists' final-choice score; ``k_curve_note`` says what each number measures), ``study`` (name,
    storage without password, trial counts) and ``pools`` (sizes).

    Example:
        >>> from dspy_icl_opt.testing import planted_rule_task
        >>> task = planted_rule_task("reverse", train_size=8, val_size=8)
        >>> selector = DemoSelector(task.metric, max_demos=2, n_trials=4, task_model=task.lm(), progress=False)
        >>> program = selector.compile(task.program(), trainset=task.train, valset=task.val)
        >>> len(selector.study_.trials)
        4
    """

    def __init__(self, metric: Metric, *, max_demos: int = 8, n_trials: int | None = None,
                 strategies: Sequence[Strategy] = ("random", "knn", "mmr", "slots"),
                 pools: Sequence[PoolName] = ("labeled", "bootstrapped"),
                 orders: Sequence[Order] = ("as_selected", "most_similar_last", "permutation"),
                 candidate_sets: int = CANDIDATE_SETS,
                 bootstrap_max_calls: int = DEFAULT_BOOTSTRAP_MAX_CALLS, bootstrap_threshold: float = 1.0,
                 bootstrap_teacher: TeacherName = "labeled", minibatch_size: int = 8, minibatches_per_trial: int = 4,
                 pruner: PrunerName | optuna.pruners.BasePruner | None = "median",
                 sampler: optuna.samplers.BaseSampler | None = None,
                 storage: str | optuna.storages.BaseStorage | None = None, study_name: str | None = None,
                 embedder: Any = None, influence: Mapping[str, Any] | OptimizationReport | None = None,
                 top_k_full_eval: int = 3, **kwargs: Any) -> None:
        peer = map_bfsrs_arguments(kwargs)
        max_demos = peer.pop("max_demos", max_demos)
        n_trials = peer.pop("n_trials", n_trials)
        bootstrap_threshold = peer.pop("bootstrap_threshold", bootstrap_threshold)
        super().__init__(metric, **kwargs)
        for name, value, low in (("max_demos", max_demos, 1), ("candidate_sets", candidate_sets, 1),
                                 ("bootstrap_max_calls", bootstrap_max_calls, 0), ("minibatch_size", minibatch_size, 1),
                                 ("minibatches_per_trial", minibatches_per_trial, 1),
                                 ("top_k_full_eval", top_k_full_eval, 1)):
            check_int(name, value, minimum=low)
        if n_trials is not None:
            check_int("n_trials", n_trials, minimum=1)
        self.strategies = check_choices("strategies", strategies, STRATEGIES)
        self.pools = check_choices("pools", pools, POOLS)
        self.orders = check_choices("orders", orders, ORDERS)
        if bootstrap_teacher not in TEACHERS:
            raise ValueError(f"`bootstrap_teacher` must be one of {list(TEACHERS)}, but got {bootstrap_teacher!r}. "
                             "To bootstrap from a program of your own, pass it as compile(..., teacher=program).")
        self.bootstrap_teacher: TeacherName = bootstrap_teacher
        self._teacher_state: ProgramState | None = None
        self.influence = coerce_influence(influence)
        if "influence" in self.strategies and not self.influence:
            raise ValueError("The `influence` strategy needs a ranking: pass influence=report.extra['influence'] "
                             "(or the report) of an earlier DemoSelector run.")
        check_optuna_object("pruner", pruner, optuna.pruners.BasePruner, ("median", "successive_halving"))
        check_optuna_object("sampler", sampler, optuna.samplers.BaseSampler, ())
        check_optuna_object("storage", storage, optuna.storages.BaseStorage, (str,))
        if study_name is not None and (not isinstance(study_name, str) or not study_name):
            raise ValueError(f"`study_name` must be a non-empty string or None, but got {study_name!r}.")
        self.max_demos, self.n_trials, self.candidate_sets = max_demos, n_trials, candidate_sets
        self.bootstrap_max_calls = bootstrap_max_calls
        self.bootstrap_threshold = check_number("bootstrap_threshold", bootstrap_threshold,
                                                hint="A run scoring at least this gives demos; 1.0 keeps exact passes.")
        self.minibatch_size, self.minibatches_per_trial = minibatch_size, minibatches_per_trial
        self.pruner, self.sampler, self.storage, self.study_name = pruner, sampler, storage, study_name
        self.embedder_name = embedder_name(embedder)
        self.top_k_full_eval = top_k_full_eval
        self.study_: optuna.Study | None = None
        self.pools_: Pools | None = None

    def trials_dataframe(self, **kwargs: Any) -> Any:
        """The study's trials as a pandas DataFrame (``optuna.Study.trials_dataframe``)."""
        if self.study_ is None:
            raise RuntimeError("No study yet: call compile(...) first.")
        return self.study_.trials_dataframe(**kwargs)

    def _params(self) -> dict[str, Any]:
        return {"max_demos": self.max_demos, "n_trials": self.n_trials, "strategies": list(self.strategies),
                "pools": list(self.pools), "orders": list(self.orders), "candidate_sets": self.candidate_sets,
                "bootstrap_max_calls": self.bootstrap_max_calls, "bootstrap_threshold": self.bootstrap_threshold,
                "bootstrap_teacher": self.bootstrap_teacher if self._teacher_state is None
                else f"program:{self._teacher_state.key()}",
                "minibatch_size": self.minibatch_size, "minibatches_per_trial": self.minibatches_per_trial,
                "pruner": self.pruner if isinstance(self.pruner, str) or self.pruner is None
                else type(self.pruner).__name__,
                "sampler": None if self.sampler is None else type(self.sampler).__name__,
                "storage": redact(self.storage), "study_name": self.study_name, "embedder": self.embedder_name,
                "influence": stable_int(sorted((p, e["id"]) for p, es in self.influence.items() for e in es)),
                "top_k_full_eval": self.top_k_full_eval}

    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example] | None = None,
                teacher: dspy.Module | None = None, **kwargs: Any) -> dspy.Module:
        """Search ``student``'s demos (see :meth:`ICLOptimizer.compile`).

        Args:
            teacher: a program with the same predictors as ``student`` whose passing runs fill the
                bootstrapped pool (its instructions and demos; it runs on the task model and its
                calls count as task calls). Default: ``bootstrap_teacher``.
        """
        _bfsrs_compile_arguments(kwargs)
        self._teacher_state = None if teacher is None else teacher_state(student, teacher)
        try:
            return super().compile(student, trainset=trainset, valset=valset, **kwargs)
        finally:
            self._teacher_state = None

    def _validate(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
        names = {name for name, _ in student.named_predictors()}
        unknown = sorted(set(self.influence) - names)
        if unknown:
            logger.warning("The influence ranking names predictors {} that the program lacks (it has {}); "
                           "they are ignored.", unknown, sorted(names))

    # ------------------------------------------------------------------------------ the plan
    def _plan(self, shape: Shape) -> SearchPlan:
        """Final validation first, then the bootstrap, then as many whole trials as the rest pays for."""
        m = shape.n_predictors
        held_out = held_out_size(shape.n_val)
        trial_items = min(shape.n_val - held_out, self.minibatch_size * self.minibatches_per_trial)
        seen = trial_items  # the finalists' (and a zero-shot start's) trial examples are cached
        finalists, n_val, notes = self._plan_final(shape, shape.n_val, seen)
        held = self._final_cost(m, finalists, n_val, seen, start_cached=False)
        search = None if shape.task_cap is None else max(0, shape.task_cap - held)
        boot = 0
        if "bootstrapped" in self.pools:
            boot = self.bootstrap_max_calls if search is None else min(self.bootstrap_max_calls,
                                                                       search // BOOTSTRAP_BUDGET_SHARE)
        per_trial = trial_items * m
        if search is None:
            trials = self.n_trials or UNCAPPED_TRIALS
        else:
            affordable = max(0, search - boot) // max(1, per_trial)
            trials = affordable if self.n_trials is None else min(self.n_trials, affordable)
            if self.n_trials is not None and affordable < self.n_trials:
                notes.append(f"only {affordable} whole trial(s) of {trial_items} examples fit the cap; "
                             f"{self.n_trials} wanted")
        split = (f"{held_out} of the {shape.n_val} validation examples held back from the trials; the final choice "
                 f"uses the valset (the trials' examples cached) and a finalist must not lose on the held-back ones"
                 if held_out
                 else f"the {shape.n_val} validation examples serve the trials and the final choice (fewer than "
                      f"{MIN_VAL_TO_HOLD_OUT} to split); the final test asks for more standard errors")
        notes.append(split)
        phases = [Phase("bootstrap (at most)", boot),
                  Phase(f"trials: {trials} of at most {trial_items} examples", trials * per_trial,
                        note="pruned trials cost less; the calls saved buy more trials"),
                  Phase(f"final validation: start + {finalists} finalist(s)", held)]
        settings = {"trials": trials, "trial_examples": trial_items, "minibatch_size": self.minibatch_size,
                    "held_out": held_out, "finalists": finalists, "validation_examples": n_val,
                    "bootstrap_calls": boot}
        return SearchPlan("DemoSelector", shape, int(trials), settings, phases, notes)

    def _plan_final(self, shape: Shape, final_n: int, seen: int) -> tuple[int, int, list[str]]:
        """Finalists and final-choice examples within ``VALIDATION_SHARE`` of the cap (as
        :func:`~dspy_icl_opt.search.plan.plan_validation`, with the trials' cached pairs not counted):
        finalists are cut first, to one, then the examples."""
        finalists, n_val, notes = self.top_k_full_eval, final_n, []
        if shape.task_cap is None:
            return finalists, n_val, notes
        limit = VALIDATION_SHARE * shape.task_cap

        def cost(f: int, n: int) -> int:
            return self._final_cost(shape.n_predictors, f, n, seen, start_cached=False)

        while finalists > 1 and cost(finalists, n_val) > limit:
            finalists -= 1
        if finalists < self.top_k_full_eval:
            notes.append(f"finalists cut from {self.top_k_full_eval} to {finalists} so validation fits "
                         f"{VALIDATION_SHARE:.0%} of the cap")
        while n_val > 1 and cost(finalists, n_val) > limit:
            n_val -= 1
        if n_val < final_n:
            notes.append(f"the final choice uses {n_val} of its {final_n} examples")
        return finalists, n_val, notes

    @staticmethod
    def _final_cost(m: int, finalists: int, n_val: int, seen: int, *, start_cached: bool) -> int:
        """Task calls of the final choice on ``n_val`` examples whose first ``seen`` the trials scored (cached
        for the finalists; for the start too when it is the zero-shot baseline trial)."""
        unseen = max(0, n_val - seen)
        return (finalists * unseen + (unseen if start_cached else n_val)) * m

    def _reserve(self, ctx: SearchContext) -> int:
        """The final validation's calls, held back from the search: the plan's, with the start's cached
        pairs taken off when it is the zero-shot trial (a student without demos, trials on the final examples)
        run by this compile. A stored study may already hold that trial from an earlier compile or another
        process, which then is not run (nor cached) here: with a storage the start's pairs stay reserved."""
        plan = ctx.plan
        settings = plan.settings
        seen = settings["trial_examples"]
        no_demos = not any(state.demos for _, state in ctx.initial_state.predictors)
        return self._final_cost(len(ctx.predictors), settings["finalists"], settings["validation_examples"], seen,
                                start_cached=no_demos and seen > 0 and self.storage is None)

    # ------------------------------------------------------------------------------ the search
    def _search(self, ctx: SearchContext) -> None:
        if self.storage is not None:
            self._charge_earlier_work(ctx)
        changed = enable_dynamic_demos(ctx.student)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        run: _Run | None = None
        try:
            with ctx.search_phase(validation_calls=self._reserve(ctx)):
                run = self._prepare(ctx)
                self._trials(run)
            if run is None:  # the budget ended while the pools were built: nothing was searched
                return
            self._finalize(run)
            if run.exhausted is not None:
                raise run.exhausted
        finally:
            optuna.logging.set_verbosity(verbosity)
            if run is not None:
                self._record_extras(run)
            restore_unless_per_call(ctx.best_state(), changed)

    @staticmethod
    def _charge_earlier_work(ctx: SearchContext) -> None:
        """A compile resumed from its journal with a stored study continues the study (its finished trials are
        not run again) and takes the stored pools (the bootstrap is not run again), so most journaled pairs are
        never read back, and a pair charged only when read would let the two compiles together pass the cap.
        Every journaled call is charged here instead, once; a pair read back later is free."""
        earlier = ctx.journal.charge_all()
        for kind, role in (("score", "task"), ("ask", "prompt")):
            cost = earlier.get(kind)
            if cost is not None and (cost.calls or cost.tokens):
                ctx.meter.record_earlier(role, cost)
        if any(cost.calls for cost in earlier.values()):
            logger.info("DemoSelector: resuming a stored study; the {} journaled task call(s) of the interrupted "
                        "compile are charged up front", getattr(earlier.get("score"), "calls", 0))

    def _trials(self, run: _Run) -> None:
        """Run trials while the plan's count allows and the budget left pays for a whole one."""
        if not self._can_pay_a_trial(run):
            return
        limit = self.n_trials if self.n_trials is not None else (
            UNCAPPED_TRIALS if run.ctx.meter.remaining_calls("task") is None else None)
        run.calls_before = self._task_calls(run)
        for _ in range(SHARED_QUEUE_RACES + 1):
            left = None if limit is None else limit - run.ran
            if left is not None and left <= 0:
                return
            try:
                run.study.optimize(lambda trial: self._stoppable(run, trial), n_trials=left,
                                   catch=(BudgetExhausted,), callbacks=[lambda s, t: self._after_trial(run, t)])
                return
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                if isinstance(exc, ValueError) and not str(exc).startswith("Cannot tell a "):
                    raise
                logger.warning("Another process ran and finished the same queued trial ({}): SQLite cannot lock it "
                               "for one process. Going on with another trial.", exc)

    def _can_pay_a_trial(self, run: _Run) -> bool:
        remaining = run.ctx.meter.remaining_calls("task")
        if remaining is None or remaining >= run.trial_cost:
            return True
        run.ctx.report.stopped_by_budget = True
        logger.info("DemoSelector: the {} task calls left (the final validation set aside) cannot pay for a "
                    "whole trial ({}); stopping the trials", remaining, run.trial_cost)
        return False

    @staticmethod
    def _task_calls(run: _Run) -> int:
        return run.ctx.meter.snapshot()["task"].calls

    def _prepare(self, ctx: SearchContext) -> _Run:
        plan = ctx.plan
        order = list(ctx.valset)
        ctx.rng.shuffle(order)
        set_seed = ctx.rng.randrange(2**32)  # drawn before the bootstrap uses ctx.rng: the same in every process
        held_out = plan.settings["held_out"]
        trial_pool = order[held_out:]
        n = plan.settings["trial_examples"]
        batches = [trial_pool[i:i + self.minibatch_size] for i in range(0, n, self.minibatch_size)]
        # the trial examples first (cached for the finalists; a cut of the final examples drops the others)
        final_examples = trial_pool[:n] + order[:held_out] + trial_pool[n:]
        shared = self.storage is not None
        # also what rebuilds a stored trial's demos (the embedder, the influence ranking) and what its score was
        # measured on (the valset, the trial examples): a study resumed with other ones would mix unlike trials
        settings = {"predictors": sorted(name for name, _ in ctx.predictors), "strategies": list(self.strategies),
                    "orders": list(self.orders), "pools": list(self.pools), "max_demos": self.max_demos,
                    "candidate_sets": self.candidate_sets, "set_seed": set_seed, "embedder": self.embedder_name,
                    "influence": self._params()["influence"], "minibatch_size": self.minibatch_size,
                    "trial_examples": n, "valset": stable_int(*(example_key(ex) for ex in ctx.valset))}
        name = self.study_name or (default_study_name(ctx, self.seed, settings) if shared else None)
        study = open_study(storage=self.storage, study_name=name, sampler=make_sampler(self.sampler, self.seed, shared),
                           pruner=make_pruner(self.pruner))
        self.study_ = study
        check_settings(study, settings)
        pools, built = shared_pools(study, lambda: build_pools(
            ctx, self.pools, max_calls=plan.settings["bootstrap_calls"], threshold=self.bootstrap_threshold,
            max_per_predictor=BOOTSTRAP_POOL_FACTOR * self.max_demos, teacher=self._teacher(ctx)))
        if not built:
            logger.info("Using the demo pools stored in study {!r}", study.study_name)
        self.pools_ = pools
        fields = {name: list(pred.signature.input_fields) for name, pred in ctx.predictors}
        space = Space(pools=pools, k_max=largest_k(pools, self.max_demos), strategies=self.strategies,
                      orders=self.orders, embedder=self.embedder_name, influence=self.influence,
                      set_seed=set_seed, candidate_sets=self.candidate_sets, input_fields=fields)
        sizes = {name: {pool: len(demos) for pool, demos in by_pool.items()} for name, by_pool in pools.items()}
        logger.info("DemoSelector: study {!r} ({} earlier trials), pools {}, {} trial examples in {} minibatches, "
                    "{} final-choice examples ({})", study.study_name, len(study.trials), sizes, n, len(batches),
                    len(final_examples), f"{held_out} held back from the trials" if held_out else "the same valset")
        enqueue_baselines(study, space)
        # a final choice the plan cut to the trial examples has none held back: it is then judged as one on
        # the examples the trials were ranked on (the Bonferroni z), not as a held-out one
        held = bool(held_out) and plan.settings["validation_examples"] > n
        return _Run(ctx=ctx, study=study, space=space, batches=batches, input_fields=fields,
                    final_examples=final_examples, held_out=held, reused=n if held else 0,
                    trial_cost=n * len(ctx.predictors))

    def _teacher(self, ctx: SearchContext) -> Any:
        """The program state that runs each training example when the bootstrapped pool is built."""
        if self._teacher_state is not None:
            fixed = self._teacher_state
            return lambda example: fixed
        if self.bootstrap_teacher == "labeled":
            return labeled_teacher(ctx, self.max_demos, self.seed)
        return None  # the program as given

    def _stoppable(self, run: _Run, trial: optuna.Trial) -> float:
        """The objective; a stop (Ctrl-C, SIGTERM, an LM outage) ends the search without Optuna's traceback."""
        try:
            return self._objective(run, trial)
        except (KeyboardInterrupt, RunInterrupted, LMFault):
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # restored when _search ends
            raise

    def _objective(self, run: _Run, trial: optuna.Trial) -> float:
        choices = {name: suggest(TrialSource(trial), name, run.space) for name in run.names}
        state = run.state_of(choices)
        described = {name: c.describe() for name, c in choices.items()}
        record = run.ctx.add_candidate(state, step=trial.number, origin="trial",
                                       meta={"trial": trial.number, "choice": described})
        trial.set_user_attr("icl_choice", described)
        trial.set_user_attr("icl_k", {name: c.shown for name, c in choices.items()})
        seen: list[dspy.Example] = []
        outcomes: list[Outcome] = []
        for step, batch in enumerate(run.batches):
            try:
                outcomes += run.ctx.scorer.evaluate(state, batch, desc=f"trial {trial.number}")
            except BudgetExhausted as exc:
                self._stop_on_budget(run, trial, record, choices, seen, outcomes, state, batch, step, exc)
            seen += batch
            value = _mean(outcomes)
            trial.report(value, step)
            judged = len(outcomes) >= MIN_EXAMPLES_BEFORE_PRUNING  # never on a first small minibatch
            if step + 1 < len(run.batches) and judged and trial.should_prune():
                self._store(run, trial, record, choices, seen, outcomes)
                raise optuna.TrialPruned(f"{value:.3f} after {len(outcomes)} examples")
        self._store(run, trial, record, choices, seen, outcomes)
        return _mean(outcomes)

    def _stop_on_budget(self, run: _Run, trial: optuna.Trial, record: Any, choices: Mapping[str, Choice],
                        seen: list[dspy.Example], outcomes: list[Outcome], state: ProgramState,
                        batch: list[dspy.Example], step: int, exc: BudgetExhausted) -> NoReturn:
        """The budget ran out inside a trial (a token cap, or calls spent elsewhere): the trial is cut, not pruned.

        It is marked FAIL (so the sampler does not read it as a bad trial, as it would a pruned one) with
        ``icl_stopped_by_budget`` and the scores it got, which still count for the influence fit.
        """
        run.exhausted = exc
        trial.study.stop()
        trial.set_user_attr("icl_stopped_by_budget", True)
        for example in batch:  # examples of the interrupted minibatch that finished are cached
            outcome = run.ctx.scorer.cached(state, example)
            if outcome is not None:
                seen.append(example)
                outcomes.append(outcome)
        if outcomes:
            trial.report(_mean(outcomes), step)
            self._store(run, trial, record, choices, seen, outcomes)
            record.meta["cut_by_budget"] = True
        logger.info("Trial {} cut by the task-model budget after {} examples: marked FAIL (not pruned)",
                    trial.number, len(outcomes))
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the expected FAIL needs no traceback
        raise exc

    def _store(self, run: _Run, trial: optuna.Trial, record: Any, choices: Mapping[str, Choice],
               seen: Sequence[dspy.Example], outcomes: Sequence[Outcome]) -> None:
        """Keep the trial's scores in the report and, for the influence fit, in the study."""
        run.ctx.record_outcomes(record, list(outcomes), "trial")
        run.records[trial.number] = record
        keys = [example_key(ex)[:EXAMPLE_KEY_LEN] for ex in seen]
        trial.set_user_attr("icl_scores", {k: o.score for k, o in zip(keys, outcomes)})
        static = {name: static_ids(c, run.pool(c)) for name, c in choices.items()}
        trial.set_user_attr("icl_demos", {name: ids for name, ids in static.items() if ids is not None})
        dynamic = {name: c for name, c in choices.items() if static[name] is None}
        if dynamic:  # what a per-call predictor showed differs per example: recomputed from each trace
            carried = {name: choice_demos(c, run.pool(c), run.space.embedder) for name, c in dynamic.items()}
            trial.set_user_attr("icl_dynamic", {k: shown_per_call(carried, o.trace, run.input_fields)
                                                for k, o in zip(keys, outcomes)})

    def _after_trial(self, run: _Run, trial: FrozenTrial) -> None:
        run.ran += 1
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        logger.info("Trial {} {}: {} -> {} on {} examples", trial.number, trial.state.name,
                    trial.user_attrs.get("icl_choice"), "n/a" if value is None else f"{value:.3f}",
                    len(trial.user_attrs.get("icl_scores") or {}))
        run.ctx.checkpoint(step=run.ran)
        calls = self._task_calls(run)
        run.free_in_a_row = run.free_in_a_row + 1 if calls == run.calls_before else 0
        run.calls_before = calls
        if run.ctx.meter.exhausted("task"):  # the search's share is spent (the final validation's is set aside)
            run.ctx.report.stopped_by_budget = True
            run.study.stop()
        elif not self._can_pay_a_trial(run):
            run.study.stop()
        elif self.n_trials is None and run.free_in_a_row >= MAX_FREE_TRIALS_IN_A_ROW:
            logger.info("DemoSelector: {} trials in a row were all cached (programs already scored); stopping",
                        run.free_in_a_row)
            run.study.stop()

    # ------------------------------------------------------------------------------ the choice
    def _finalize(self, run: _Run) -> None:
        """Validate the program as given and the best few distinct trials on the final-choice examples, and keep
        a trial only if the paired test says it beats the start (see the class docstring for the test).

        With the budget spent, only what costs nothing (pairs already scored) gets validated; if
        nothing could be, the trials are compared by their trial score.
        """
        ctx = run.ctx
        described = {name: f"as given ({len(state.demos)} demo(s))" if state.demos else "k=0"
                     for name, state in ctx.initial_state.predictors}
        start = ctx.add_candidate(ctx.initial_state, step=0, origin="seed", meta={"choice": described})
        records: list[Any] = []
        ranked = ranked_trials(run.study)
        # Under a cap, a finalist is taken only if the calls left (after the start's) pay for its pairs not scored
        # yet; otherwise the next trial is looked at. A stored study's best trials may come from another compile
        # or process, unscored here: taking them would leave this compile's own scored trials unvalidated.
        m, left = len(ctx.predictors), ctx.meter.remaining_calls("task")
        planned = run.final_examples[: min(ctx.validation_examples, len(run.final_examples))]
        if left is not None:
            left -= ctx.scorer.unscored(ctx.state_of(start), planned) * m
        passed_over: list[int] = []
        for trial in ranked:  # the best few *distinct* programs (several trials can build one), not the start
            record = self._record_of(run, trial)  # (the zero-shot trial of a student without demos is the start)
            if record is not None and record.id != start.id and all(record.id != r.id for r in records):
                cost = 0 if left is None else ctx.scorer.unscored(ctx.state_of(record), planned) * m
                if left is not None and cost > left:
                    if record.id not in passed_over:
                        passed_over.append(record.id)
                    continue
                if left is not None:
                    left -= cost
                records.append(record)
            if len(records) == ctx.plan.settings["finalists"]:
                break
        if passed_over:
            logger.info("DemoSelector: the task calls left cannot validate trial candidate(s) {}; the next best "
                        "that they can are the finalists", passed_over)
        if not records:  # no trial ran (the budget could not pay for one): the start is still validated
            logger.info("DemoSelector: no trial finished; validating the program as given")
        z = VALIDATION_Z if run.held_out else reuse_z(len({self._record_key(t) for t in ranked}))
        try:
            best = ctx.choose_by_validation(records, examples=run.final_examples, z=z, reused=run.reused)
            logger.info("DemoSelector chose candidate {} (trial {}, val {:.3f} on {} examples)", best.id,
                        best.meta.get("trial"), best.scores["val"], ctx.report.extra["final_choice"]["examples"])
        except BudgetExhausted as exc:
            run.exhausted = run.exhausted or exc
            if ctx.report.best_candidate is None:  # not even the start was validated
                best_trial = ctx.best_by(records, "trial")
                ctx.set_best(best_trial or ctx.add_candidate(ctx.initial_state, step=0, origin="seed"))
                ctx.checkpoint()
        choice = ctx.report.extra.get("final_choice")
        if isinstance(choice, dict):
            if passed_over:
                choice["passed_over_unaffordable"] = passed_over
            choice.update({"held_out": run.held_out, "z": round(z, 3), "basis": (
                "the valset; the finalist must not lose on the examples held back from the trials" if run.held_out else
                f"the valset the trials were ranked on; z raised for picking from {len(ranked)} trials")})

    @staticmethod
    def _record_key(trial: FrozenTrial) -> str:
        return str(sorted((trial.user_attrs.get("icl_choice") or trial.params).items()))

    def _record_of(self, run: _Run, trial: FrozenTrial) -> Any:
        """The candidate record of a finished trial (rebuilt from its params if another process ran it)."""
        value = trial.value if trial.value is not None else trial.intermediate_values[max(trial.intermediate_values)]
        if trial.number in run.records:
            record = run.records[trial.number]
        else:
            try:
                choices = {name: suggest(ParamsSource(trial.params), name, run.space) for name in run.names}
            except (KeyError, ValueError, IndexError) as exc:
                logger.warning("Trial {} cannot be rebuilt for this program ({}); skipped", trial.number, exc)
                return None
            record = run.ctx.add_candidate(run.state_of(choices), step=trial.number, origin="trial",
                                           meta={"trial": trial.number, "choice": trial.user_attrs.get("icl_choice")})
            run.records[trial.number] = record
        record.scores.setdefault("trial", float(value))
        return record

    def _record_extras(self, run: _Run) -> None:
        """Influence ranking, accuracy-against-k curve, study summary and pool sizes (no LM call)."""
        trials = run.study.get_trials(deepcopy=False)
        demos = {(name, demo_id(d)): d for name, by_pool in run.space.pools.items()
                 for pool in by_pool.values() for d in pool}
        extra = run.ctx.report.extra
        extra["influence"] = fit_influence(finished(trials), demos=demos)
        validated = {number: record.scores["val"] for number, record in run.records.items() if "val" in record.scores}
        extra["k_curve"] = k_curve(trials, validated)
        extra["k_curve_note"] = K_CURVE_NOTE
        extra["study"] = summary(run.study, self.storage, run.ran)
        extra["pools"] = {name: {p: len(d) for p, d in by_pool.items()} for name, by_pool in run.space.pools.items()}
        run.ctx.checkpoint()


def _mean(outcomes: Sequence[Outcome]) -> float:
    return sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0


#: BootstrapFewShotWithRandomSearch's arguments with a DemoSelector meaning (see :func:`map_bfsrs_arguments`).
BFSRS_ARGUMENTS = ("max_bootstrapped_demos", "max_labeled_demos", "num_candidate_programs", "metric_threshold",
                   "max_rounds", "teacher_settings")
#: Its arguments, or values of them, without one, and what to do instead.
BFSRS_REFUSED = {
    "teacher_settings": "pass a teacher program to compile(..., teacher=program) (it runs on the task model)",
    "max_rounds": "DemoSelector bootstraps in one round; spend more with bootstrap_max_calls=N",
    "max_errors": "failures are scored failure_score and counted in report.counters, never raised; drop it",
    "stop_at_score": "the search ends at n_trials or the budget; cap it with budget={'max_task_calls': N}",
}
#: The values of ``max_rounds`` and ``teacher_settings`` that mean what DemoSelector does (one round, no settings).
BFSRS_NO_OPS = {"max_rounds": (1,), "teacher_settings": (None, {})}
#: The baselines BFSRS tries before its random candidates, as DemoSelector's first trials do.
BFSRS_BASELINES = 3
#: BootstrapFewShotWithRandomSearch's demo sizes when an argument is not given (DSPy's defaults).
BFSRS_DEMO_DEFAULTS = {"max_bootstrapped_demos": 4, "max_labeled_demos": 16}


def map_bfsrs_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take BootstrapFewShotWithRandomSearch's names out of ``kwargs`` and return DemoSelector's settings for them.

    ``num_threads`` is the base class's own argument (examples scored in parallel) and stays in ``kwargs``.

    Example:
        >>> map_bfsrs_arguments({"max_bootstrapped_demos": 4, "max_labeled_demos": 16, "num_candidate_programs": 8})
        {'max_demos': 16, 'n_trials': 11}
    """
    for key, no_ops in BFSRS_NO_OPS.items():
        if key in kwargs and any(kwargs[key] == v and type(kwargs[key]) is type(v) for v in no_ops):
            kwargs.pop(key)  # what DemoSelector does anyway
    for key, instead in BFSRS_REFUSED.items():
        if key in kwargs:
            raise TypeError(f"`{key}` (a BootstrapFewShotWithRandomSearch argument) has no DemoSelector equivalent, "
                            f"but got {key}={kwargs[key]!r}. {instead[0].upper()}{instead[1:]}.")
    mapped: dict[str, Any] = {}
    given = {k: check_int(k, kwargs.pop(k), minimum=0) for k in BFSRS_DEMO_DEFAULTS if k in kwargs}
    if given:  # the one not given has BootstrapFewShotWithRandomSearch's default, as it would there
        sizes = {**BFSRS_DEMO_DEFAULTS, **given}
        if not any(sizes.values()):
            raise ValueError(f"`max_bootstrapped_demos` and `max_labeled_demos` are both 0, which asks for no demos "
                             f"at all (got {given}); DemoSelector searches demonstrations. Pass a positive "
                             f"max_labeled_demos (or max_demos=N), or keep the program as given without compiling.")
        mapped["max_demos"] = max(sizes.values())
    if "num_candidate_programs" in kwargs:
        count = kwargs.pop("num_candidate_programs")
        check_int("num_candidate_programs", count, minimum=0)
        mapped["n_trials"] = count + BFSRS_BASELINES
    if "metric_threshold" in kwargs:
        threshold = kwargs.pop("metric_threshold")
        if threshold is not None:
            mapped["bootstrap_threshold"] = threshold
    return mapped


def _bfsrs_compile_arguments(kwargs: dict[str, Any]) -> None:
    """BootstrapFewShotWithRandomSearch.compile's extra arguments: ``labeled_sample`` is accepted (DemoSelector's
    labeled sets are always seeded samples), ``restrict`` is refused with our equivalent."""
    if "labeled_sample" in kwargs:
        kwargs.pop("labeled_sample")
        logger.info("compile(labeled_sample=...) is ignored: DemoSelector's labeled demo sets are always "
                    "seeded samples")
    if "restrict" in kwargs:
        raise TypeError(f"`restrict` (a BootstrapFewShotWithRandomSearch.compile argument) has no DemoSelector "
                        f"equivalent, but got restrict={kwargs['restrict']!r}. Candidate sets are searched by index; "
                        "bound the search with n_trials=N or candidate_sets=N.")
