"""APE: "Large Language Models Are Human-Level Prompt Engineers" (Zhou et al., ICLR 2023).

Forward generation: show the prompt model a few input-output demonstrations drawn from the
training set and let it say what the instruction was. Several demonstration subsets, several
samples each, give a pool of candidate instructions; duplicates are dropped. A UCB bandit then
spends the task-model budget on the pool by execution accuracy on one shared search set, pulling
the promising candidates more often. Iterative-APE keeps the top of the pool and asks for
variations that keep each instruction's meaning, for further rounds. The finalists and the
starting program meet in a paired validation (the base class's final choice).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.optimizers.ape_prompts import (
    InduceInstruction,
    VaryInstruction,
    read_instruction,
    render_demonstrations,
)
from dspy_icl_opt.optimizers.opro_prompts import normalize_instruction
from dspy_icl_opt.search.bandits import BANDITS, SelectionResult, make_bandit
from dspy_icl_opt.search.base import ICLOptimizer, SearchContext, stable_int
from dspy_icl_opt.search.budget import BudgetExhausted
from dspy_icl_opt.search.grounding import format_instruction, output_spaces
from dspy_icl_opt.search.plan import Phase, SearchPlan, Shape, plan_validation, validation_calls
from dspy_icl_opt.search.proposals import clean_proposal
from dspy_icl_opt.search.report import CandidateRecord
from dspy_icl_opt.search.likelihood import LikelihoodScorer, check_likelihood
from dspy_icl_opt.search.scorer import Metric, Scorer
from dspy_icl_opt.search.surgery import ProgramState, describe_signature

Scoring = Literal["accuracy", "likelihood"]

#: The reference samples the prompt model at this temperature for forward generation.
DEFAULT_TEMPERATURE = 0.9
#: With a task cap, a bandit round pulls at most this share of the pool: the rest waits for its upper bound.
PULLED_SHARE = 0.5
#: The fewest examples per pull: one says almost nothing, and more would leave a large pool half unseen.
MIN_SAMPLES_PER_PULL = 2
#: The reference splits its training data: at most this share (and at most ``MAX_DEMONSTRATION_EXAMPLES``) gives
#: the demonstrations instructions are induced from, the rest scores them, so no candidate is scored on the
#: examples it was written from (it would read them back).
DEMONSTRATION_SHARE = 0.5
MAX_DEMONSTRATION_EXAMPLES = 100
#: Label of a candidate's mean over every search example it was scored on.
SEARCH_LABEL = "search"
#: What ``scores["search"]`` is, by ``scoring`` (the report says it).
_SEARCH_SCORES = {"accuracy": "mean metric score on training examples",
                  "likelihood": "mean probability of the gold answer on training examples"}
#: Ranking counts each candidate as if it had also seen this many examples at the pool's mean: two lucky
#: examples (the fewest a pull gives) do not outrank a long good record.
PRIOR_EXAMPLES = 4
#: Integer settings: (minimum, the reference's default, quoted in error messages).
_INT_SETTINGS = {"iterations": (1, 1), "num_subsamples": (1, 5), "num_demos": (1, 5),
                 "variations_per_candidate": (1, 3), "eval_rounds": (1, 5), "eval_prompts_per_round": (1, 50),
                 "samples_per_eval": (1, 50), "final_candidates": (1, 2)}


@dataclass(frozen=True)
class _Schedule:
    """Prompt-model calls per iteration: the forward generation, then the variations of later iterations."""

    subsamples: int
    per_subsample: int
    variations: tuple[int, ...]  # calls of iterations 2, 3, ...
    extra: int = 0  # the first ``extra`` subsets are sampled once more (a prompt cap not divisible by the subsets)

    @property
    def generation(self) -> int:
        return self.subsamples * self.per_subsample + self.extra

    @property
    def iterations(self) -> int:
        return 1 + len(self.variations)


@dataclass(frozen=True)
class _BanditShape:
    rounds: int
    per_round: int
    samples: int

    def calls(self, n_predictors: int) -> int:
        return self.rounds * self.per_round * self.samples * n_predictors


@dataclass
class _Run:
    names: list[str]
    tasks: dict[str, str]
    search: list[int]
    seen: set[str] = field(default_factory=set)  # normalised (predictor, instruction) texts proposed so far
    item_scores: dict[int, dict[int, float]] = field(default_factory=dict)
    ranked: list[CandidateRecord] = field(default_factory=list)  # the last completed ranking, best first
    dropped: dict[str, int] = field(default_factory=lambda: {"duplicate": 0, "unusable": 0})
    prompt_budget_spent: BudgetExhausted | None = None
    cut_short: bool = False  # the proposing phase under way was cut short by its share of the prompt calls
    scorer: Scorer | None = None  # what scores the search (the run's accuracy scorer, or a likelihood scorer)


class APE(ICLOptimizer):
    """APE: instructions induced from demonstrations, scored by a bandit; ``iterations > 1`` is Iterative-APE.

    Forward generation: ``num_subsamples`` subsets of ``num_demos`` training examples each are
    shown as input-output pairs with the request to say what the instruction was, and each
    subset is sampled ``prompts_per_subsample`` times at ``temperature``. Answers are read by
    :func:`~dspy_icl_opt.optimizers.ape_prompts.read_instruction` and de-duplicated (normalised
    text). The pool (with the starting instruction and the data-grounded format candidate) is
    scored by execution accuracy with the ``evaluator`` bandit (UCB by default, exploration ``c``)
    on training examples every candidate shares. As in the reference, the training set is split (seeded):
    the demonstration subsets come from ``DEMONSTRATION_SHARE`` of it, the bandit scores on the rest
    (a training set of one example serves both). Iterative-APE: for each further iteration,
    the top ``keep_fraction`` of the pool (by mean accuracy over the examples each has seen, shrunk
    toward the pool's mean for those that saw few) is kept and ``variations_per_candidate``
    variations "saying the same in other words" are asked per kept candidate; kept and new
    candidates go to the bandit again. The best ``final_candidates`` then compete with the
    starting program on ``valset`` (:meth:`~dspy_icl_opt.search.base.SearchContext.choose_by_validation`).

    Budget: with caps, the plan (``plan()``) sizes the samples per subsample and the variations
    from the prompt cap, and the bandit rounds, prompts per round and examples per pull from the
    task cap less the held-back validation. Each proposing phase stops where the later iterations'
    planned prompt calls begin, so unusable answers and their retries cannot starve the variations
    (the report's ``proposing`` gives each phase's prompt calls and whether its share cut it short).
    Calls the cache saves go to later iterations, and what the last iteration's bandit leaves scores
    the leaders on examples they have not seen. Without caps the reference's sizes apply (50 samples
    per subsample; 5 rounds of 50 prompts on 50 examples).

    Several predictors: each demonstration subset and each variation works on one predictor's
    instruction (in turn); the demonstrations are the program's inputs and labels.

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float; 1.0 is a perfect answer.
        prompt_model: writes instructions (default: the task model).
        task_model: runs the program (default: ``dspy.settings.lm``).
        iterations: 1 for APE; more for Iterative-APE (each further one varies the best).
        num_subsamples: demonstration subsets (5).
        num_demos: demonstrations per subset (5).
        prompts_per_subsample: samples per subset (``None``: from the prompt cap, 50 without one).
        keep_fraction: share of the pool kept for variation in Iterative-APE (0.2, at least one).
        variations_per_candidate: variations asked per kept candidate (3; the prompt cap may lower it). The
            plan sizes each iteration's variation calls from the pool it expects; when duplicates or unusable
            answers leave fewer candidates to keep, the kept ones take those calls in turn (more than this each),
            so the prompt calls the plan set aside are spent.
        evaluator: a bandit of :mod:`dspy_icl_opt.search.bandits` ("ucb", the paper's).
        eval_rounds: bandit rounds (5); with a task cap, as many as it pays for.
        eval_prompts_per_round: most candidates pulled per round (50).
        samples_per_eval: most examples per pull (50).
        c: UCB's exploration (1.0).
        temperature: the prompt model's sampling temperature; ``None`` (default): the prompt LM's own
            temperature when it was built with one, else the reference's 0.9.
        final_candidates: finalists validated against the start (2).
        format_candidate: also score the start with a sentence naming the answer format.
        generation_share: with a prompt-call cap and ``iterations > 1``, the share of it planned for forward
            generation (``None``: half); the later iterations' variations share the rest. APE (one iteration)
            always gives generation the whole cap.
        scoring: how the search scores a candidate on a training example: "accuracy" (execution
            accuracy) or "likelihood" (the probability the task model gives the gold answer, as the
            adapter formats it: :mod:`dspy_icl_opt.search.likelihood`; one task call per pair, like
            accuracy). Likelihood needs a task model that scores given text (the embedded llama.cpp
            engine does; a served model does not) and a program of one predictor whose outputs the data
            label. The final choice is by accuracy on the valset either way.
        **kwargs: ``budget``, ``seed``, ``num_threads``, ``log_dir``, ``failure_score``, ``max_retries``,
            ``progress`` (see :class:`~dspy_icl_opt.search.ICLOptimizer`).

    Example:
        >>> import dspy
        >>> from dspy_icl_opt.optimizers.ape import APE
        >>> from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm
        >>> task = planted_rule_task("vowels", train_size=8, val_size=4)
        >>> says = lambda request: format_chat_reply({"instruction": "The instruction was to count the vowels"})
        >>> ape = APE(task.metric, prompt_model=scripted_lm(says), task_model=task.lm(), num_subsamples=2,
        ...           prompts_per_subsample=1, progress=False)
        >>> ape.compile(task.program(), trainset=task.train, valset=task.val).signature.instructions
        'Count the vowels.'
    """

    default_temperature = DEFAULT_TEMPERATURE

    def __init__(self, metric: Metric, *, prompt_model: dspy.BaseLM | None = None,
                 task_model: dspy.BaseLM | None = None, iterations: int = 1, num_subsamples: int = 5,
                 num_demos: int = 5, prompts_per_subsample: int | None = None, keep_fraction: float = 0.2,
                 variations_per_candidate: int = 3, evaluator: str = "ucb", eval_rounds: int = 5,
                 eval_prompts_per_round: int = 50, samples_per_eval: int = 50, c: float = 1.0,
                 temperature: float | None = None, final_candidates: int = 2, format_candidate: bool = True,
                 scoring: Scoring = "accuracy", generation_share: float | None = None, **kwargs: Any) -> None:
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, **kwargs)
        settings = {"iterations": iterations, "num_subsamples": num_subsamples, "num_demos": num_demos,
                    "variations_per_candidate": variations_per_candidate, "eval_rounds": eval_rounds,
                    "eval_prompts_per_round": eval_prompts_per_round, "samples_per_eval": samples_per_eval,
                    "final_candidates": final_candidates}
        for name, value in settings.items():
            check_int(name, value, minimum=_INT_SETTINGS[name][0], hint=f"The reference uses {_INT_SETTINGS[name][1]}.")
            setattr(self, name, value)
        if prompts_per_subsample is not None:
            check_int("prompts_per_subsample", prompts_per_subsample, minimum=1,
                      hint="Or pass None to size it from the prompt-call cap.")
        check_number("keep_fraction", keep_fraction, minimum=0, maximum=1, hint="Use 0.2 (keep the top fifth).")
        if keep_fraction == 0:
            raise ValueError("`keep_fraction` must be above 0, but got 0: Iterative-APE would keep nothing to vary. "
                             "Use 0.2.")
        if evaluator not in BANDITS:
            raise ValueError(f"`evaluator` must be one of {list(BANDITS)}, but got {evaluator!r}. "
                             "Use 'ucb' (the APE paper's choice).")
        check_number("c", c, minimum=0, hint="Use 1.0 (the reference default).")
        if temperature is not None:
            check_number("temperature", temperature, minimum=0, hint="Try 0.9, or None for the prompt LM's own.")
        if not isinstance(format_candidate, bool):
            raise TypeError(f"`format_candidate` must be True or False, but got {format_candidate!r}.")
        if scoring not in get_args(Scoring):
            raise ValueError(f"`scoring` must be one of {get_args(Scoring)}, but got {scoring!r}. "
                             "Use 'accuracy' (execution accuracy).")
        self.prompts_per_subsample = prompts_per_subsample
        self.keep_fraction, self.evaluator, self.c = float(keep_fraction), evaluator, float(c)
        self.temperature = None if temperature is None else float(temperature)
        if generation_share is not None:
            check_number("generation_share", generation_share, minimum=0, maximum=1,
                         hint="Use None (the whole prompt cap for APE, half of it for Iterative-APE).")
            if generation_share == 0:
                raise ValueError("`generation_share` must be above 0, but got 0: forward generation would write "
                                 "nothing to vary. Use None, or 0.5.")
        self.format_candidate, self.scoring = format_candidate, scoring
        self.generation_share = None if generation_share is None else float(generation_share)

    def _params(self) -> dict[str, Any]:
        keys = [*_INT_SETTINGS, "prompts_per_subsample", "keep_fraction", "evaluator", "c", "temperature",
                "format_candidate", "scoring"]
        params = {key: getattr(self, key) for key in keys}
        if self.generation_share is not None:  # only when set: a default run's params (and resumes) stay as they were
            params["generation_share"] = self.generation_share
        return params

    def _validate(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
        if self.scoring == "likelihood":
            check_likelihood(student, trainset, self.task_model or dspy.settings.lm)

    # ------------------------------------------------------------------------------ the plan
    def _keep(self, pool: int) -> int:
        return max(1, math.ceil(self.keep_fraction * pool))

    def _first_pool(self, generated: int, n_predictors: int) -> int:
        return generated + 1 + (n_predictors if self.format_candidate else 0)

    def _schedule(self, prompt_cap: int | None, iterations: int, n_predictors: int,
                  generation: int | None = None) -> _Schedule | None:
        """Prompt calls per iteration; ``None`` when the cap cannot pay one variation per later iteration.

        Without a cap: ``num_subsamples * prompts_per_subsample`` generations (50 per subset unless set),
        then ``variations_per_candidate`` per kept candidate. With one, forward generation gets the whole
        cap for APE, ``generation_share`` of it (half by default) for Iterative-APE; the later iterations
        share the rest, and what their ``variations_per_candidate`` leaves over goes back to forward
        generation, as whole rounds over the subsets and then one more sample of the first subsets, so
        every prompt call of the cap is planned.
        """
        per = self.prompts_per_subsample or (50 if prompt_cap is None else None)  # 50: the reference
        if prompt_cap is None:
            generation = self.num_subsamples * per
        else:
            share = 1.0 if iterations == 1 else (0.5 if self.generation_share is None else self.generation_share)
            generation = generation or max(1, int(prompt_cap * share + 1e-9))  # 100 * 0.29 is 28.999...: 29
            if per is not None:
                generation = min(generation, self.num_subsamples * per)
        subsamples = max(1, min(self.num_subsamples, generation))
        per = min(per or generation, max(1, generation // subsamples))
        left = None if prompt_cap is None else prompt_cap - subsamples * per
        pool, variations = self._first_pool(subsamples * per, n_predictors), []
        for t in range(iterations - 1):
            calls = self._keep(pool) * self.variations_per_candidate
            if left is not None:
                calls = min(calls, left // (iterations - 1 - t))
                left -= calls
            if calls < 1:
                return None
            variations.append(calls)
            pool = self._keep(pool) + calls
        spare = subsamples * per + (left or 0)
        if left and spare // subsamples > per and generation < spare and self.prompts_per_subsample is None:
            return self._schedule(prompt_cap, iterations, n_predictors, generation=spare)
        # what is left is fewer calls than subsets: one more sample of the first subsets (when the samples per
        # subset are the caller's, they are kept as given)
        extra = left if left and self.prompts_per_subsample is None else 0
        return _Schedule(subsamples, per, tuple(variations), extra)

    def _bandit_shape(self, pool: int, allotment: int | None, n_items: int, n_predictors: int) -> _BanditShape | None:
        """Rounds, candidates per round and examples per pull for ``pool`` candidates on ``allotment`` task calls.

        Without a cap, the reference's sizes. With one, a round pulls at most ``PULLED_SHARE`` of the
        pool; the examples per pull are sized for ``eval_rounds`` rounds (at least ``MIN_SAMPLES_PER_PULL``),
        then the rounds are what the allotment pays for (``None`` when not even one round fits).
        """
        per_round = min(self.eval_prompts_per_round, pool)
        top = min(self.samples_per_eval, n_items)
        if allotment is None:
            return _BanditShape(self.eval_rounds, per_round, top)
        per_round = min(per_round, max(1, math.ceil(pool * PULLED_SHARE)))
        wanted = allotment // max(1, self.eval_rounds * per_round * n_predictors)
        samples = max(min(MIN_SAMPLES_PER_PULL, top), min(top, wanted))
        rounds = allotment // (per_round * samples * n_predictors)
        return _BanditShape(rounds, per_round, samples) if rounds >= 1 else None

    def _plan(self, shape: Shape) -> SearchPlan:
        """Iterations, generations, variations and the bandit of each iteration, from the caps.

        The held-back validation comes first; the search calls are split evenly over the iterations.
        Iterations are dropped (from the last) until every one's bandit can run a round and the prompt
        cap pays for at least one variation per later iteration.
        """
        m = shape.n_predictors
        finalists, n_val, notes = plan_validation(shape, self.final_candidates)
        held = validation_calls(shape, finalists, n_val)
        search = None if shape.task_cap is None else max(0, shape.task_cap - held)
        shown, scored = (len(part) for part in self._train_split(shape.n_train))
        for iterations in range(self.iterations, 0, -1):
            schedule = self._schedule(shape.prompt_cap, iterations, m)
            if schedule is None:
                continue
            pools = self._pools(schedule, m)
            share = None if search is None else search // iterations
            bandits = [self._bandit_shape(p, share, scored, m) for p in pools]
            if all(bandits) or iterations == 1:
                break
        if schedule.iterations < self.iterations:
            notes.append(f"only {schedule.iterations} iteration(s) fit the caps; {self.iterations} wanted")
        if bandits[0] is None:
            notes.append("the task cap left after validation cannot pay one bandit round: only the start is validated")
        if self.scoring == "likelihood":
            notes.append("the bandits score the gold answer's probability (one task call per candidate and example); "
                         "the final validation scores the metric")
        more = f" (+1 for the first {schedule.extra})" if schedule.extra else ""
        phases = [Phase(f"iteration 1: {schedule.subsamples} demo subsets x {schedule.per_subsample} samples{more}, "
                        f"pool of {pools[0]}", bandits[0].calls(m) if bandits[0] else 0, schedule.generation)]
        phases += [Phase(f"iteration {t + 2}: {calls} variations, pool of {pools[t + 1]}",
                         bandits[t + 1].calls(m) if bandits[t + 1] else 0, calls)
                   for t, calls in enumerate(schedule.variations)]
        phases.append(Phase(f"final validation: start + {finalists} finalist(s)", held))
        settings = {"iterations": schedule.iterations, "subsamples": schedule.subsamples,
                    "prompts_per_subsample": schedule.per_subsample, "extra_samples": schedule.extra,
                    "variations": list(schedule.variations),
                    "bandits": [None if b is None else [b.rounds, b.per_round, b.samples] for b in bandits],
                    "search_examples": scored, "demonstration_examples": shown, "finalists": finalists,
                    "validation_examples": n_val}
        return SearchPlan(type(self).__name__, shape, schedule.iterations, settings, phases, notes)

    def _pools(self, schedule: _Schedule, n_predictors: int) -> list[int]:
        pools = [self._first_pool(schedule.generation, n_predictors)]
        for calls in schedule.variations:
            pools.append(self._keep(pools[-1]) + calls)
        return pools

    # ------------------------------------------------------------------------------ the loop
    def _search(self, ctx: SearchContext) -> None:
        plan = ctx.plan
        run = _Run(names=[name for name, _ in ctx.predictors],
                   tasks={name: describe_signature(p) for name, p in ctx.predictors},
                   search=self._train_split(len(ctx.trainset))[1])
        run.scorer = LikelihoodScorer.beside(ctx.scorer) if self.scoring == "likelihood" else ctx.scorer
        ctx.report.extra["search_score"] = _SEARCH_SCORES[self.scoring]
        seed = ctx.add_candidate(ctx.initial_state, step=0, origin="seed")
        run.seen.update(_norm(name, ctx.initial_state[name].instruction) for name in run.names)
        ctx.set_best(seed)
        ctx.report.extra["iterations"], ctx.report.extra["proposing"] = [], []
        ctx.report.extra["dropped_proposals"] = run.dropped  # the same dict: every checkpoint saves its counts
        with ctx.search_phase(validation_calls=plan.held_back):
            pool = [seed, *self._format_candidates(ctx, run)]
            variations = plan.settings["variations"]
            with _proposing(ctx, run, 1) as phase:
                generated = self._generate(ctx, run, plan, reserve=sum(variations))
                phase["candidates"] = len(generated)
            pool += generated
            for t in range(1, plan.steps + 1):
                if t > 1:
                    kept = self._kept(run, pool)
                    with _proposing(ctx, run, t) as phase:
                        pool = kept + self._vary(ctx, run, t, kept, variations[t - 2],
                                                 reserve=sum(variations[t - 1:]))
                        phase["candidates"] = len(pool) - len(kept)
                # the prompt budget ended (a token cap, say): no later iteration, so this one is the last
                last = t == plan.steps or run.prompt_budget_spent is not None
                if not self._evaluate(ctx, run, t, pool, last=last):
                    break
                if run.prompt_budget_spent is not None:
                    raise run.prompt_budget_spent  # ends the search; what was ranked is still validated
        self._choose_final(ctx, run, plan.settings["finalists"])

    def _format_candidates(self, ctx: SearchContext, run: _Run) -> list[CandidateRecord]:
        if not self.format_candidate:
            return []
        records = []
        for name, predictor in ctx.predictors:
            text = format_instruction(ctx.initial_state[name].instruction, output_spaces(predictor, ctx.trainset))
            if text is not None:
                run.seen.add(_norm(name, text))
                state = ctx.initial_state.replace(name, ctx.initial_state[name].with_instruction(text))
                records.append(ctx.add_candidate(state, step=0, origin="format", predictor=name))
        return records

    # -------------------------------------------------------------------------- proposing
    def _generate(self, ctx: SearchContext, run: _Run, plan: SearchPlan, *, reserve: int) -> list[CandidateRecord]:
        """Forward generation: every demonstration subset sampled in turn, so a prompt cap that ends early
        still leaves candidates from each subset. Under a prompt cap it ends where the later iterations'
        ``reserve`` (their planned variations) begins, retries included."""
        subsets = [self._subset(ctx, j) for j in range(plan.settings["subsamples"])]
        records, per, extra = [], plan.settings["prompts_per_subsample"], plan.settings["extra_samples"]
        for k in range(per + (1 if extra else 0)):
            for j, indices in enumerate(subsets):
                if k == per and j >= extra:
                    break
                room = _prompt_room(ctx, reserve)
                if room is not None and room < 1:
                    run.cut_short = True
                    return records
                name = run.names[j % len(run.names)]
                demos = render_demonstrations([ctx.shown_example(ctx.trainset[i]) for i in indices])
                # the program's own instruction and fields may be about writing instructions: its wording is not
                # the meta-prompt's request echoed
                allowed = f"{ctx.initial_state[name].instruction}\n{run.tasks[name]}"
                text = self._ask(ctx, run, InduceInstruction, f"ape/generate/subset{j}/sample{k}", max_attempts=room,
                                 allowed=allowed, task=run.tasks[name], demonstrations=demos)
                if text is None:
                    if run.prompt_budget_spent:
                        return records
                    continue
                record = self._candidate(ctx, run, ctx.initial_state, name, text, step=1, origin="generation",
                                         parent=None, meta={"subset": j, "sample": k, "demos": indices})
                records += [record] if record is not None else []
        return records

    def _subset(self, ctx: SearchContext, j: int) -> list[int]:
        rng = random.Random(stable_int(self.seed, "ape/demos", j))
        shown = self._train_split(len(ctx.trainset))[0]
        return sorted(rng.sample(shown, min(self.num_demos, len(shown))))

    def _train_split(self, n: int) -> tuple[list[int], list[int]]:
        """Training indices for the demonstrations and for the bandit (disjoint when ``n`` >= 2), seeded."""
        if n < 2:
            return list(range(n)), list(range(n))
        order = list(range(n))
        random.Random(stable_int(self.seed, "ape/split")).shuffle(order)
        shown = max(1, min(int(n * DEMONSTRATION_SHARE), MAX_DEMONSTRATION_EXAMPLES))
        return sorted(order[:shown]), sorted(order[shown:])

    def _vary(self, ctx: SearchContext, run: _Run, t: int, kept: list[CandidateRecord], calls: int, *,
              reserve: int) -> list[CandidateRecord]:
        """``calls`` variations, the kept candidates taking turns (the best first); under a prompt cap they end
        where the later iterations' ``reserve`` begins, retries included."""
        records = []
        for i in range(calls):
            room = _prompt_room(ctx, reserve)
            if room is not None and room < 1:
                run.cut_short = True
                break
            parent = kept[i % len(kept)]
            name = parent.predictor or run.names[i % len(run.names)]
            state = ctx.state_of(parent)
            key = f"ape/iteration{t}/parent{parent.id}/variation{i // len(kept)}"
            text = self._ask(ctx, run, VaryInstruction, key, max_attempts=room, instruction=state[name].instruction)
            if text is None:
                if run.prompt_budget_spent:
                    break
                continue
            record = self._candidate(ctx, run, state, name, text, step=t, origin="variation", parent=parent.id,
                                     meta={"iteration": t})
            records += [record] if record is not None else []
        return records

    def _ask(self, ctx: SearchContext, run: _Run, signature: type[dspy.Signature], key: str, *,
             max_attempts: int | None = None, allowed: str | None = None, **inputs: str) -> str | None:
        """The instruction one answer holds, or ``None`` (unusable, or the prompt budget ended:
        ``run.prompt_budget_spent``).

        An answer is usable when it reads as an instruction (:func:`read_instruction`) that is one
        (:meth:`SearchContext.read_proposal`: not a demonstration copied back, not the meta-prompt); the text
        returned is the one that check read, without DSPy's markers and the sentences restating the meta-prompt.
        ``allowed``: wording it may repeat (default: the instruction a variation varies)."""
        output = next(iter(signature.output_fields))
        allowed = inputs.get("instruction", "") if allowed is None else allowed
        # the answers the validator read, kept alive so that no later answer takes one's id (a journal replay
        # skips the validator: its answer is read after)
        read: dict[int, tuple[dspy.Prediction, str | None]] = {}

        def reading(answer: dspy.Prediction, record: bool = False) -> str | None:
            if id(answer) not in read:
                read[id(answer)] = (answer, ctx.read_proposal(
                    read_instruction(clean_proposal(str(answer[output] or ""))), signature, allowed=allowed,
                    record=record))
            return read[id(answer)][1]

        def usable(answer: dspy.Prediction) -> bool:
            return reading(answer, record=True) is not None

        try:
            answer = ctx.ask(signature, key=key, temperature=ctx.temperature, validate=usable,
                             max_attempts=max_attempts, **inputs)
        except BudgetExhausted as exc:
            if exc.role != "prompt":
                raise
            run.prompt_budget_spent = exc
            return None
        text = None if answer is None else reading(answer)  # replayed: read now (None if the check changed since)
        if text is None:
            run.dropped["unusable"] += 1
            if max_attempts is not None and max_attempts <= self.max_retries:
                run.cut_short = True  # its retries were cut short by the phase's share of the calls
        return text

    def _candidate(self, ctx: SearchContext, run: _Run, base: ProgramState, name: str, text: str, *, step: int,
                   origin: str, parent: int | None, meta: dict[str, Any]) -> CandidateRecord | None:
        """A new candidate with ``name``'s instruction ``text`` (as :meth:`_ask` read it); ``None`` for a duplicate."""
        key = _norm(name, text)
        if key in run.seen:
            run.dropped["duplicate"] += 1
            return None
        run.seen.add(key)
        state = base.replace(name, base[name].with_instruction(text))
        return ctx.add_candidate(state, step=step, origin=origin, predictor=name, parent=parent, meta=meta)

    # --------------------------------------------------------------------------- scoring
    def _evaluate(self, ctx: SearchContext, run: _Run, t: int, pool: list[CandidateRecord], *, last: bool) -> bool:
        """The iteration's bandit on an even share of the task calls left (the last iteration: all of them,
        and what the bandit leaves goes to the leaders, :meth:`_top_up`). False when not even one round
        fits (the search stops)."""
        remaining = ctx.meter.remaining_calls("task")
        allotment = None if remaining is None else remaining if last else remaining // (ctx.plan.steps - t + 1)
        shape = self._bandit_shape(len(pool), allotment, len(run.search), len(ctx.predictors))
        if shape is None:
            ctx.report.stopped_by_budget = True
            logger.info("APE: {} task calls left cannot pay a bandit round for iteration {}", remaining, t)
            return False

        def pull(record: CandidateRecord, items: list[int]) -> list[float]:
            return self._score(ctx, run, record, [run.search[i] for i in items], f"iteration {t}")

        bandit = make_bandit(self.evaluator, eval_rounds=shape.rounds, eval_prompts_per_round=shape.per_round,
                             samples_per_eval=shape.samples, c=self.c)
        result = bandit.select(pool, 1, pull, len(run.search), random.Random(stable_int(self.seed, "ape/bandit", t)))
        self._rank(ctx, run, pool)
        entry = {"iteration": t, "pool": [r.id for r in pool], "bandit": _summary(pool, result, shape)}
        ctx.report.extra["iterations"].append(entry)
        if last and remaining is not None:
            entry["top_up"] = self._top_up(ctx, run, pool)
        entry["ranked"] = [r.id for r in run.ranked]
        best = run.ranked[0]
        logger.info("APE iteration {}: {} candidates, {} evaluations ({} new); best #{} ({:.3f} on {} examples)", t,
                    len(pool), result.evaluations, result.distinct_evaluations, best.id,
                    best.scores.get(SEARCH_LABEL, 0.0), best.n_scored.get(SEARCH_LABEL, 0))
        ctx.checkpoint(t)
        return True

    def _top_up(self, ctx: SearchContext, run: _Run, pool: list[CandidateRecord]) -> int:
        """Spend what the last bandit left (cache hits, rounding) on the leaders: the future finalists take
        turns, each scored on a few search examples it has not seen, until the calls or the examples run out.
        Returns the examples scored. The search examples come first, then the demonstration half's examples that
        no subset showed (a small training set leaves the leaders nothing new in the search half)."""
        order = list(run.search)
        random.Random(stable_int(self.seed, "ape/top-up")).shuffle(order)
        shown = {i for j in range(ctx.plan.settings["subsamples"]) for i in self._subset(ctx, j)}
        unshown = [i for i in self._train_split(len(ctx.trainset))[0] if i not in shown and i not in order]
        random.Random(stable_int(self.seed, "ape/top-up/unshown")).shuffle(unshown)
        order += unshown
        m, scored = len(ctx.predictors), 0
        while True:
            # the finalists as _choose_final takes them: not the start, which is validated anyway
            leaders = [r for r in run.ranked if SEARCH_LABEL in r.scores and r.origin != "seed"]
            leaders = leaders[: ctx.plan.settings["finalists"]]
            pending = [(r, [i for i in order if i not in run.item_scores[r.id]]) for r in leaders]
            pending = [(r, items) for r, items in pending if items]
            affordable = ctx.meter.remaining_calls("task") // m
            if not pending or affordable == 0:
                ctx.report.stopped_by_budget = ctx.report.stopped_by_budget or bool(pending)
                return scored
            share = max(1, min(MIN_SAMPLES_PER_PULL, affordable // len(pending)))
            for record, items in pending:
                chosen = items[: min(share, ctx.meter.remaining_calls("task") // m)]
                if chosen:
                    self._score(ctx, run, record, chosen, "top-up")
                    scored += len(chosen)
            self._rank(ctx, run, pool)

    def _score(self, ctx: SearchContext, run: _Run, record: CandidateRecord, indices: list[int],
               desc: str) -> list[float]:
        """Scores of ``record`` on training examples ``indices``, remembered for its search mean."""
        outcomes = run.scorer.evaluate(ctx.state_of(record), [ctx.trainset[i] for i in indices],
                                       desc=f"{desc} #{record.id}")
        run.item_scores.setdefault(record.id, {}).update((i, o.score) for i, o in zip(indices, outcomes))
        return [o.score for o in outcomes]

    def _rank(self, ctx: SearchContext, run: _Run, pool: list[CandidateRecord]) -> None:
        """Rank the pool by mean accuracy over every search example each has seen, shrunk toward the pool's
        mean by ``PRIOR_EXAMPLES`` (then more examples, then the earlier candidate); never-scored ones last.
        ``scores["search"]`` keeps the plain mean."""
        for record in pool:
            seen = run.item_scores.get(record.id)
            if seen:
                record.scores[SEARCH_LABEL] = sum(seen.values()) / len(seen)
                record.n_scored[SEARCH_LABEL] = len(seen)
        run.ranked = _shrunk_order(pool, run.item_scores)
        ctx.set_best(run.ranked[0])

    def _kept(self, run: _Run, pool: list[CandidateRecord]) -> list[CandidateRecord]:
        ids = {r.id for r in pool}
        scored = [r for r in run.ranked if SEARCH_LABEL in r.scores and r.id in ids]
        return (scored or pool)[: self._keep(len(pool))]

    # --------------------------------------------------------------------------- choosing
    def _choose_final(self, ctx: SearchContext, run: _Run, finalists: int) -> None:
        """The best-ranked candidates (of the last completed ranking) against the start, on ``valset``."""
        ranked = [r for r in run.ranked if r.origin != "seed" and SEARCH_LABEL in r.scores]
        # reserves: the rest of the last ranking, then the candidates earlier iterations dropped (an
        # iteration keeps only its top share, and one whose proposals the prompt cap cut short ranks few)
        last = {r.id for r in run.ranked}
        dropped = [ctx.report.candidates[i] for i in run.item_scores if i not in last]
        dropped = [r for r in _shrunk_order(dropped, run.item_scores) if r.origin != "seed"]
        best = ctx.choose_by_validation(ranked[:finalists], reserves=[*ranked[finalists:], *dropped],
                                        tiebreak=_search_record([*ranked, *dropped]))
        validated = [row["candidate"] for row in ctx.report.extra["final_choice"]["contenders"]][1:]
        logger.info("{} chose candidate {} (val {:.3f}) from the validated {} and the start", type(self).__name__,
                    best.id, best.scores["val"], validated)


def _search_record(order: list[CandidateRecord]) -> Callable[[CandidateRecord], tuple]:
    """The final choice's tiebreak among candidates level on validation: the better place in ``order`` (the
    shrunk ranking), so a reserve lucky on two search examples does not pass a finalist with a long good record
    (the plain search mean would put 2 of 2 above 16 of 20)."""
    place = {record.id: i for i, record in enumerate(order)}
    return lambda record: (-place.get(record.id, len(place)),)


def _shrunk_order(records: list[CandidateRecord], item_scores: dict[int, dict[int, float]]) -> list[CandidateRecord]:
    """``records`` best first by mean accuracy over the search examples each has seen, shrunk toward their
    pooled mean by ``PRIOR_EXAMPLES`` (then more examples, then the earlier candidate); never-scored ones last."""
    seen = {r.id: item_scores.get(r.id, {}) for r in records}
    total = sum(len(s) for s in seen.values())
    pooled = sum(sum(s.values()) for s in seen.values()) / total if total else 0.0

    def key(record: CandidateRecord) -> tuple:
        values = seen[record.id]
        shrunk = (sum(values.values()) + PRIOR_EXAMPLES * pooled) / (len(values) + PRIOR_EXAMPLES)
        return not values, -shrunk, -len(values), record.id

    return sorted(records, key=key)


class IterativeAPE(APE):
    """Iterative-APE: APE whose later iterations vary the best instructions, keeping their meaning.

    The same as :class:`APE` with ``iterations`` defaulting to 3 (the plan lowers it to what the
    caps pay for). See :class:`APE` for every argument.

    Example:
        >>> IterativeAPE(lambda example, prediction, trace=None: 1.0).iterations
        3
    """

    def __init__(self, metric: Metric, *, iterations: int = 3, **kwargs: Any) -> None:
        super().__init__(metric, iterations=iterations, **kwargs)


def _summary(pool: list[CandidateRecord], result: SelectionResult, shape: _BanditShape) -> dict[str, Any]:
    """The bandit's work by candidate id: its shape, means and distinct examples seen, evaluations spent."""
    return {"shape": {"rounds": shape.rounds, "per_round": shape.per_round, "samples": shape.samples},
            "means": {str(r.id): None if m is None else round(m, 6) for r, m in zip(pool, result.means)},
            "items_seen": {str(r.id): n for r, n in zip(pool, result.items_seen)},
            "evaluations": result.evaluations, "distinct_evaluations": result.distinct_evaluations}


@contextmanager
def _proposing(ctx: SearchContext, run: _Run, t: int) -> Iterator[dict[str, Any]]:
    """Iteration ``t``'s proposing phase, written to the report's ``proposing``: the prompt calls it spent and
    whether it stopped at the later iterations' share (rejected answers and their retries spent its own)."""
    before = ctx.meter.snapshot()["prompt"].calls
    phase: dict[str, Any] = {"iteration": t}
    run.cut_short = False
    try:
        yield phase
    finally:
        phase["prompt_calls"] = ctx.meter.snapshot()["prompt"].calls - before
        phase["cut_short"] = run.cut_short
        ctx.report.extra["proposing"].append(phase)
        if run.cut_short and ctx.meter.remaining_calls("prompt") == 0:
            ctx.report.stopped_by_budget = True  # the last phase: the cap itself cut it short


def _prompt_room(ctx: SearchContext, reserve: int) -> int | None:
    """Prompt calls a proposing phase may still spend: what the cap leaves beyond the later phases' ``reserve``
    (``None`` without a prompt cap)."""
    remaining = ctx.meter.remaining_calls("prompt")
    return None if remaining is None else remaining - reserve


def _norm(name: str, text: str) -> str:
    return f"{name}\x1f{normalize_instruction(text)}"
