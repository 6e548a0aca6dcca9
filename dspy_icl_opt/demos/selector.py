"""DemoSelector: an Optuna search over each predictor's few-shot demos; instructions are left alone.

One trial picks, per predictor, how many demos (``k``, zero included), from which pool (labeled
examples or a teacher's passing traces), which ones (random, kNN of the input at inference time,
MMR diversity, explicit slots, or an influence ranking from an earlier study) and in which order.
The first trials are zero-shot, the largest labeled set and the largest bootstrapped set. A trial
is scored on minibatches of the validation set; each minibatch's running mean is an intermediate
value, so a pruner stops bad trials early. The best few trials are then scored on the whole
validation set and the best of those wins (MIPROv2's minibatch-then-full idea, demos only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import dspy
import optuna
from optuna.trial import FrozenTrial

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.demos.dynamic import ORDERS, Order, enable_dynamic_demos, restore_classes, select_indices, split_demos
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
from dspy_icl_opt.search.base import stable_int
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.scorer import Metric, Outcome, example_key

#: Task-model calls spent at most on bootstrapping traces (an example already started is finished).
DEFAULT_BOOTSTRAP_MAX_CALLS = 64
#: Bootstrapping stops early once every predictor has this many demos per ``max_demos``.
BOOTSTRAP_POOL_FACTOR = 3
#: Under a task-call cap, bootstrapping may spend at most 1/this of what is left (the trials need the rest).
BOOTSTRAP_BUDGET_SHARE = 4
#: Example keys stored in trials are cut to this length (enough to tell a valset's examples apart).
EXAMPLE_KEY_LEN = 12


@dataclass
class _Run:
    """The state of one ``compile``: the study, the space and the minibatches."""

    ctx: SearchContext
    study: optuna.Study
    space: Space
    batches: list[list[dspy.Example]]
    input_fields: dict[str, list[str]]
    exhausted: BudgetExhausted | None = None
    ran: int = 0
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
        n_trials: trials this ``compile`` runs (the baselines included; a resumed or shared
            study keeps its earlier trials and adds these).
        strategies: how demos are chosen: ``random``, ``knn`` (per call, at inference time),
            ``mmr``, ``slots``, ``influence`` (needs ``influence=``).
        pools: ``labeled`` (training examples) and/or ``bootstrapped`` (a teacher's passing runs).
        orders: ``as_selected``, ``most_similar_last`` (per call), ``permutation``.
        bootstrap_max_calls: task-model calls spent at most on bootstrapping (default 64).
        bootstrap_threshold: a run whose score reaches this passes and gives demos (default 1.0).
        bootstrap_teacher: who runs the training examples for the bootstrapped pool: ``"labeled"``
            (default; the program as given, each predictor without demos of its own shown up to
            ``max_demos`` labeled demos, never the example being run, as DSPy's BootstrapFewShot
            does) or ``"student"`` (the program as given). ``compile(..., teacher=program)`` uses
            a teacher program instead (same predictor names; it runs on the task model).
        minibatch_size: validation examples per intermediate value (default 8).
        minibatches_per_trial: minibatches a trial that is not pruned gets (default 4).
        pruner: ``"median"`` (default), ``"successive_halving"``, ``None`` or any Optuna pruner.
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
        top_k_full_eval: the best trials scored on the whole valset at the end (default 3).
        **kwargs: :class:`~dspy_icl_opt.search.ICLOptimizer` arguments (task_model, budget, seed, ...).

    Drop-in for ``BootstrapFewShotWithRandomSearch``: its ``max_bootstrapped_demos`` and
    ``max_labeled_demos`` bound how many demos a prompt holds, so they set ``max_demos`` (the larger
    of the two; DemoSelector then searches k up to it, from both pools); ``num_candidate_programs``
    sets ``n_trials`` to it plus the three baselines BFSRS also tries first (zero-shot, labeled,
    bootstrapped); ``metric_threshold`` is ``bootstrap_threshold``. ``teacher_settings``,
    ``max_rounds``, ``max_errors`` and ``stop_at_score`` are refused with our equivalent named.

    A kNN or reordered-per-call winner makes the returned program's predictors ``DynamicPredict``;
    see :mod:`dspy_icl_opt.demos.dynamic` for what ``save`` writes and how to load it.

    With a ``storage``, the demo pools and the search settings are stored in the study: a later
    compile or another process reuses those pools (no second bootstrap) and refuses other settings.
    Processes sharing one study need the same program, trainset, valset and seed, and distinct
    ``log_dir``; each seeds its sampler from the seed, its host and pid (so workers explore different
    trials), which makes such runs not bit-for-bit reproducible. The report's ``extra`` holds
    ``influence`` (each demo's estimated effect, best first), ``k_curve`` (best/mean score per k),
    ``study`` (name, storage without password, trial counts) and ``pools`` (sizes).

    Example:
        >>> from dspy_icl_opt.testing import planted_rule_task
        >>> task = planted_rule_task("reverse", train_size=8, val_size=8)
        >>> selector = DemoSelector(task.metric, max_demos=2, n_trials=4, task_model=task.lm(), progress=False)
        >>> program = selector.compile(task.program(), trainset=task.train, valset=task.val)
        >>> len(selector.study_.trials)
        4
    """

    def __init__(self, metric: Metric, *, max_demos: int = 8, n_trials: int = 30,
                 strategies: Sequence[Strategy] = ("random", "knn", "mmr", "slots"),
                 pools: Sequence[PoolName] = ("labeled", "bootstrapped"),
                 orders: Sequence[Order] = ("as_selected", "most_similar_last", "permutation"),
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
        for name, value, low in (("max_demos", max_demos, 1), ("n_trials", n_trials, 1),
                                 ("bootstrap_max_calls", bootstrap_max_calls, 0), ("minibatch_size", minibatch_size, 1),
                                 ("minibatches_per_trial", minibatches_per_trial, 1),
                                 ("top_k_full_eval", top_k_full_eval, 1)):
            check_int(name, value, minimum=low)
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
        self.max_demos, self.n_trials = max_demos, n_trials
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
                "pools": list(self.pools), "orders": list(self.orders),
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

    # ------------------------------------------------------------------------------ the search
    def _search(self, ctx: SearchContext) -> None:
        changed = enable_dynamic_demos(ctx.student)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        run: _Run | None = None
        try:
            per_item = len(ctx.predictors)
            with ctx.search_phase(validation_calls=self._validation_cost(ctx),
                                  first_cost=min(len(ctx.valset), self.minibatch_size) * per_item):
                run = self._prepare(ctx)
                run.study.optimize(lambda trial: self._stoppable(run, trial), n_trials=self.n_trials,
                                   catch=(BudgetExhausted,), callbacks=[lambda s, t: self._after_trial(run, t)])
            if run is None:  # the budget ended while the pools were built: nothing was searched
                return
            self._finalize(run)
            if run.exhausted is not None:
                raise run.exhausted
        finally:
            optuna.logging.set_verbosity(verbosity)
            if run is not None:
                self._record_extras(run)
            best = ProgramState.from_dict(ctx.report.best_state) if ctx.report.best_state else ctx.initial_state
            if not any(split_demos(s.demos)[0] for _, s in best.predictors):
                restore_classes(changed)

    def _validation_cost(self, ctx: SearchContext) -> int:
        """Task calls the final choice needs: the best few trials and the program as given, on the valset.

        Trials score valset minibatches, so a finalist costs only the valset examples they did not
        reach; so does the start when it is the zero-shot baseline trial (a student without demos),
        and a student with demos of its own costs a whole validation.
        """
        trial_items = min(len(ctx.valset), self.minibatch_size * self.minibatches_per_trial)
        unseen = len(ctx.valset) - trial_items
        has_demos = any(state.demos for _, state in ctx.initial_state.predictors)
        start = len(ctx.valset) if has_demos else unseen
        return (self.top_k_full_eval * unseen + start) * len(ctx.predictors)

    def _prepare(self, ctx: SearchContext) -> _Run:
        order = list(ctx.valset)
        ctx.rng.shuffle(order)
        n = min(len(order), self.minibatch_size * self.minibatches_per_trial)
        batches = [order[i:i + self.minibatch_size] for i in range(0, n, self.minibatch_size)]
        shared = self.storage is not None
        settings = {"predictors": sorted(name for name, _ in ctx.predictors), "strategies": list(self.strategies),
                    "orders": list(self.orders), "pools": list(self.pools), "max_demos": self.max_demos}
        name = self.study_name or (default_study_name(ctx, self.seed, settings) if shared else None)
        study = open_study(storage=self.storage, study_name=name, sampler=make_sampler(self.sampler, self.seed, shared),
                           pruner=make_pruner(self.pruner))
        self.study_ = study
        check_settings(study, settings)
        max_calls = self.bootstrap_max_calls
        remaining = ctx.meter.remaining_calls("task")
        if remaining is not None:  # bootstrapping may not eat the trials' budget
            max_calls = min(max_calls, remaining // BOOTSTRAP_BUDGET_SHARE)
        pools, built = shared_pools(study, lambda: build_pools(
            ctx, self.pools, max_calls=max_calls, threshold=self.bootstrap_threshold,
            max_per_predictor=BOOTSTRAP_POOL_FACTOR * self.max_demos, teacher=self._teacher(ctx)))
        if not built:
            logger.info("Using the demo pools stored in study {!r}", study.study_name)
        self.pools_ = pools
        space = Space(pools=pools, k_max=largest_k(pools, self.max_demos), strategies=self.strategies,
                      orders=self.orders, embedder=self.embedder_name, influence=self.influence)
        sizes = {name: {pool: len(demos) for pool, demos in by_pool.items()} for name, by_pool in pools.items()}
        logger.info("DemoSelector: study {!r} ({} earlier trials), pools {}, {} trial examples in {} minibatches",
                    study.study_name, len(study.trials), sizes, n, len(batches))
        enqueue_baselines(study, space)
        fields = {name: list(pred.signature.input_fields) for name, pred in ctx.predictors}
        return _Run(ctx=ctx, study=study, space=space, batches=batches, input_fields=fields)

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
            if step + 1 < len(run.batches) and trial.should_prune():
                self._store(run, trial, record, choices, seen, outcomes)
                raise optuna.TrialPruned(f"{value:.3f} after {len(outcomes)} examples")
        self._store(run, trial, record, choices, seen, outcomes)
        return _mean(outcomes)

    def _stop_on_budget(self, run: _Run, trial: optuna.Trial, record: Any, choices: Mapping[str, Choice],
                        seen: list[dspy.Example], outcomes: list[Outcome], state: ProgramState,
                        batch: list[dspy.Example], step: int, exc: BudgetExhausted) -> NoReturn:
        """The budget ran out inside a trial: keep what it scored (PRUNED) or, if nothing, mark it FAIL."""
        run.exhausted = exc
        trial.study.stop()
        trial.set_user_attr("icl_stopped_by_budget", True)
        for example in batch:  # examples of the interrupted minibatch that finished are cached
            outcome = run.ctx.scorer.cached(state, example)
            if outcome is not None:
                seen.append(example)
                outcomes.append(outcome)
        if not outcomes:
            logger.info("Trial {} stopped by the task-model budget before scoring any example: marked FAIL",
                        trial.number)
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # the expected FAIL needs no traceback
            raise exc
        trial.report(_mean(outcomes), step)
        self._store(run, trial, record, choices, seen, outcomes)
        raise optuna.TrialPruned(f"task-model budget spent after {len(outcomes)} examples") from exc

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
        if dynamic:
            trial.set_user_attr("icl_dynamic", {k: self._shown(run, dynamic, o) for k, o in zip(keys, outcomes)})

    def _shown(self, run: _Run, dynamic: Mapping[str, Choice], outcome: Outcome) -> dict[str, list[str]]:
        """Ids of the demos each per-call predictor showed on one example (recomputed from the trace)."""
        shown: dict[str, list[str]] = {}
        for call in outcome.trace:
            name = call.get("predictor")
            if name not in dynamic:
                continue
            settings, pool = split_demos(choice_demos(dynamic[name], run.pool(dynamic[name]), run.space.embedder))
            if settings is None:
                continue
            picked = select_indices(settings, pool, call.get("inputs", {}), run.input_fields[name])
            shown.setdefault(name, []).extend(demo_id(pool[i]) for i in picked)
        return shown

    def _after_trial(self, run: _Run, trial: FrozenTrial) -> None:
        run.ran += 1
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        logger.info("Trial {} {}: {} -> {} on {} examples", trial.number, trial.state.name,
                    trial.user_attrs.get("icl_choice"), "n/a" if value is None else f"{value:.3f}",
                    len(trial.user_attrs.get("icl_scores") or {}))
        run.ctx.checkpoint(step=run.ran)
        if run.exhausted is None and run.ctx.meter.exhausted("task"):
            run.exhausted = _exhausted(run.ctx)
            run.study.stop()

    # ------------------------------------------------------------------------------ the choice
    def _finalize(self, run: _Run) -> None:
        """Score the program as given and the best few trials on the whole valset, and keep the best.

        With the budget spent, only what costs nothing (pairs already scored) gets validated; if
        nothing could be, the trials are compared by their trial score.
        """
        ctx = run.ctx
        records: list[Any] = []
        for trial in ranked_trials(run.study):  # the best few *distinct* programs (several trials can build one)
            record = self._record_of(run, trial)
            if record is not None and all(record.id != r.id for r in records):
                records.append(record)
            if len(records) == self.top_k_full_eval:
                break
        if not records:
            ctx.set_best(ctx.add_candidate(ctx.initial_state, step=0, origin="seed"))
            return
        try:
            best = ctx.choose_by_validation(records)
            logger.info("DemoSelector chose candidate {} (trial {}, val {:.3f} on {} examples)", best.id,
                        best.meta.get("trial"), best.scores["val"], len(ctx.valset))
        except BudgetExhausted as exc:
            run.exhausted = run.exhausted or exc
            if ctx.report.best_candidate is None:  # not even the start was validated
                ctx.set_best(ctx.best_by(records, "trial"))
                ctx.checkpoint()

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
        record.scores.setdefault("trial", float(value))
        return record

    def _record_extras(self, run: _Run) -> None:
        """Influence ranking, accuracy-against-k curve, study summary and pool sizes (no LM call)."""
        trials = run.study.get_trials(deepcopy=False)
        demos = {(name, demo_id(d)): d for name, by_pool in run.space.pools.items()
                 for pool in by_pool.values() for d in pool}
        extra = run.ctx.report.extra
        extra["influence"] = fit_influence(finished(trials), demos=demos)
        extra["k_curve"] = k_curve(trials)
        extra["study"] = summary(run.study, self.storage, run.ran)
        extra["pools"] = {name: {p: len(d) for p, d in by_pool.items()} for name, by_pool in run.space.pools.items()}
        run.ctx.checkpoint()


def _mean(outcomes: Sequence[Outcome]) -> float:
    return sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0


def _exhausted(ctx: SearchContext) -> BudgetExhausted:
    budget = ctx.optimizer.budget
    if ctx.meter.remaining_calls("task") == 0:
        return BudgetExhausted("task", "call", budget.max_task_calls or 0)
    return BudgetExhausted("task", "token", budget.max_task_tokens or 0)


#: BootstrapFewShotWithRandomSearch's arguments with a DemoSelector meaning (see :func:`map_bfsrs_arguments`).
BFSRS_ARGUMENTS = ("max_bootstrapped_demos", "max_labeled_demos", "num_candidate_programs", "metric_threshold")
#: Its arguments without one, and what to do instead.
BFSRS_REFUSED = {
    "teacher_settings": "pass a teacher program to compile(..., teacher=program) (it runs on the task model)",
    "max_rounds": "DemoSelector bootstraps in one round; spend more with bootstrap_max_calls=N",
    "max_errors": "failures are scored failure_score and counted in report.counters, never raised; drop it",
    "stop_at_score": "the search ends at n_trials or the budget; cap it with budget={'max_task_calls': N}",
}
#: The baselines BFSRS tries before its random candidates, as DemoSelector's first trials do.
BFSRS_BASELINES = 3


def map_bfsrs_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take BootstrapFewShotWithRandomSearch's names out of ``kwargs`` and return DemoSelector's settings for them.

    Example:
        >>> map_bfsrs_arguments({"max_bootstrapped_demos": 4, "max_labeled_demos": 16, "num_candidate_programs": 8})
        {'max_demos': 16, 'n_trials': 11}
    """
    for key, instead in BFSRS_REFUSED.items():
        if key in kwargs:
            raise TypeError(f"`{key}` (a BootstrapFewShotWithRandomSearch argument) has no DemoSelector equivalent, "
                            f"but got {key}={kwargs[key]!r}. {instead[0].upper()}{instead[1:]}.")
    mapped: dict[str, Any] = {}
    sizes = [check_int(k, kwargs.pop(k), minimum=0) for k in ("max_bootstrapped_demos", "max_labeled_demos")
             if k in kwargs]
    if sizes:
        mapped["max_demos"] = max(1, *sizes)
    if "num_candidate_programs" in kwargs:
        count = kwargs.pop("num_candidate_programs")
        check_int("num_candidate_programs", count, minimum=0)
        mapped["n_trials"] = count + BFSRS_BASELINES
    if "metric_threshold" in kwargs:
        threshold = kwargs.pop("metric_threshold")
        if threshold is not None:
            mapped["bootstrap_threshold"] = threshold
    return mapped
