"""APO / ProTeGi: "Automatic Prompt Optimization with Gradient Descent and Beam Search" (Pryzant et al., 2023).

Each round: run every beam prompt on one shared minibatch, ask the prompt model why the prompt got
sampled errors wrong (the textual gradient), ask it for edited prompts that fix each reason, add
paraphrases of the edits and of the parent (local Monte Carlo search), de-duplicate and cap the
children, then keep the best ``beam_size`` of parents + children with a best-arm-identification
bandit. The final prompt is the beam member that scores best on ``valset``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.optimizers.apo_prompts import (
    DiagnoseErrors,
    Failure,
    FixInstruction,
    Paraphrase,
    clean_text,
    culprit,
    edited_instructions,
    is_failure,
    render_failures,
)
from dspy_icl_opt.search.bandits import BestArmIdentifier, SelectionResult, make_bandit
from dspy_icl_opt.search.base import ICLOptimizer, SearchContext
from dspy_icl_opt.search.grounding import data_summary, format_instruction, output_spaces
from dspy_icl_opt.search.meta import numbered_items
from dspy_icl_opt.search.proposals import clean_proposal
from dspy_icl_opt.search.plan import (
    MIN_SEARCH_EXAMPLES,
    Phase,
    SearchPlan,
    Shape,
    plan_validation,
    search_subset,
    validation_calls,
)
from dspy_icl_opt.search.budget import BudgetExhausted, MeteredLM, unwrap_lm
from dspy_icl_opt.search.report import CandidateRecord
from dspy_icl_opt.search.scorer import Metric
from dspy_icl_opt.search.surgery import ProgramState, describe_signature

Evaluator = Literal["ucb", "ucb-e", "successive_rejects", "successive_halving", "brute_force"]
Blame = Literal["trace", "each"]

#: The reference samples the optimizer LM at this temperature (used when neither APO nor the prompt LM sets one).
DEFAULT_TEMPERATURE = 0.7
#: The fewest rounds a capped plan aims for before it accepts fewer (fewer is a random sample, not a search).
MIN_ROUNDS = 3
#: Rounds without a task cap when ``rounds`` is left to the plan (the paper's default).
UNCAPPED_ROUNDS = 6
#: Rounds in a row that build only programs already scored before the search stops. Such a round costs no
#: task call (its pairs are cached), so with rounds from the budget nothing else would end a proposer that
#: repeats itself; a fresh sample may still bring something new, so one such round is not the end.
MAX_IDLE_ROUNDS = 2
#: With ``reject_on_errors``, children are pre-scored on at most this many of the parent's errors (as the reference).
ERROR_PRESCORE_SIZE = 16
#: ... and only a random ``PRESCORE_POOL_FACTOR * max_expansion_factor`` of them (the reference's speed-up).
PRESCORE_POOL_FACTOR = 2
#: Integer settings: (minimum, the reference's default, quoted in error messages).
_INT_SETTINGS = {"rounds": (1, 6), "beam_size": (1, 4), "minibatch_size": (1, 64), "n_gradients": (0, 4),
                 "errors_per_gradient": (1, 4), "gradients_per_error": (1, 1), "steps_per_gradient": (1, 1),
                 "mc_samples_per_step": (0, 2), "max_expansion_factor": (1, 8), "eval_rounds": (1, 8),
                 "eval_prompts_per_round": (1, 8), "samples_per_eval": (1, 32)}


@dataclass
class _Child:
    """A proposed instruction for one predictor, before it becomes a candidate."""

    predictor: str
    text: str
    origin: str  # "edit" or "paraphrase"
    meta: dict[str, Any]
    state: ProgramState | None = None


@dataclass
class _Run:
    names: list[str]
    tasks: dict[str, str]
    paraphrase_lm: dspy.BaseLM
    paraphrase_temperature: float | None
    summaries: dict[str, str]
    search: list[int]
    beam_size: int
    n_gradients: int
    mc_samples: int
    bandit: BestArmIdentifier
    gradients: list[dict[str, Any]] = field(default_factory=list)
    ranked: list[CandidateRecord] = field(default_factory=list)  # the last selection's pool, best first
    prompt_budget_spent: BudgetExhausted | None = None


class APO(ICLOptimizer):
    """APO (ProTeGi): textual gradients, edits and paraphrases, kept by beam search with a bandit.

    Per round, ONE minibatch of up to ``minibatch_size`` examples of the run's search set (all of it when
    the set is no larger, as under a task cap, where the plan sizes it) is drawn and shared by every
    beam prompt. For each beam prompt: run it on the minibatch and collect its errors (examples
    scoring below 1.0, with inputs, gold, prediction and the reasoning when the predictor has one,
    taken from the scorer's trace); ``n_gradients`` times, sample ``errors_per_gradient`` errors and
    ask the prompt model for ``gradients_per_error`` reasons (one call); for each reason ask for
    ``steps_per_gradient`` edited instructions (one call); ask ``paraphrase_model`` for
    ``mc_samples_per_step`` paraphrases of each distinct edit and of the parent (one call each).
    Children are de-duplicated and, beyond ``max_expansion_factor`` per parent, sampled at random
    or (``reject_on_errors``) ranked by their score on up to 16 of the parent's errors. The
    ``evaluator`` bandit then picks ``beam_size`` of parents + children, scoring on ``trainset``.
    After ``rounds`` rounds, the beam member best on ``valset`` is returned.

    Several predictors: a gradient works on one predictor's instruction. With ``blame="trace"``
    (default) it is the predictor the trace blames: the last call whose output became a wrong
    field of the final answer (the majority over the sampled errors, the later predictor on a
    tie); when no trace tells (e.g. the program crashed), the predictors take turns. With
    ``blame="each"`` they always take turns, so upstream predictors of a chain get gradients too.
    The errors are shown as that predictor saw them (its inputs and outputs), with the program's
    final and expected outputs.

    Prompt-model calls per beam member and round (without retries), at most ``n_gradients * (1 +
    gradients_per_error) + mc_samples_per_step * (E + P)``, with ``E <= n_gradients *
    gradients_per_error * steps_per_gradient`` distinct edits and ``P`` the predictors they edit
    (1 when there is none). Task calls: the minibatch, the bandit's budget (see
    :mod:`dspy_icl_opt.search.bandits`; cached pairs are free), the pre-scoring of
    ``reject_on_errors`` and the final ``valset`` check.

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float; 1.0 is a perfect answer.
        prompt_model: writes gradients and edits (default: the task model).
        task_model: runs the program (default: ``dspy.settings.lm``).
        paraphrase_model: writes paraphrases (default: the prompt model); metered as the prompt role.
        rounds: beam-search rounds; ``None`` (default): as many as the task budget pays for (6 with no task cap).
        beam_size: prompts kept per round (4).
        minibatch_size: examples per round's shared minibatch (64).
        n_gradients: gradient calls per beam prompt and round (4).
        errors_per_gradient: errors shown per gradient call (4).
        gradients_per_error: reasons asked per gradient call (1).
        steps_per_gradient: edited prompts asked per reason (1).
        mc_samples_per_step: paraphrases per edit and of the parent (2).
        max_expansion_factor: most children kept per beam prompt (8).
        reject_on_errors: keep the children that score best on the parent's errors instead of a random sample.
        evaluator: "ucb", "ucb-e", "successive_rejects", "successive_halving" or "brute_force".
        eval_rounds: bandit rounds (8).
        eval_prompts_per_round: prompts pulled per UCB round (8).
        samples_per_eval: examples per pull (32); the elimination methods and brute force spend
            at most ``eval_rounds * eval_prompts_per_round * samples_per_eval`` evaluations. Under a task
            cap the plan sets the bandit's rounds, pulls and samples from the calls a round may spend.
        c: exploration of UCB and UCB-E (1.0).
        temperature: sampling temperature of the prompt and paraphrase models; ``None`` (default): each
            model's own temperature when it was built with one, else the reference's 0.7. The report's
            ``params`` say which was used.
        blame: "trace" or "each" (see above).
        **kwargs: ``budget``, ``seed``, ``num_threads``, ``log_dir``, ``failure_score``, ``max_retries``,
            ``progress`` (see :class:`~dspy_icl_opt.search.ICLOptimizer`).

    Example:
        >>> import dspy
        >>> from dspy_icl_opt.optimizers.apo import APO
        >>> from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm, system_text
        >>> task = planted_rule_task("vowels", train_size=8, val_size=4)
        >>> replies = {"reasons": ["It never says to count the vowels."],
        ...            "new_instructions": ["Count the vowels in the word."], "paraphrase": "Count the word's vowels."}
        >>> def reply(request):  # stands in for a real LM, e.g. dspy.LM("openai/gpt-4o-mini")
        ...     field = next(f for f in replies if f"`{f}`" in system_text(request))
        ...     return format_chat_reply({field: replies[field]})
        >>> apo = APO(task.metric, prompt_model=scripted_lm(reply), task_model=task.lm(), rounds=1, beam_size=2,
        ...           minibatch_size=4, n_gradients=1, mc_samples_per_step=1, eval_rounds=2,
        ...           eval_prompts_per_round=2, samples_per_eval=4, progress=False)
        >>> program = apo.compile(task.program(), trainset=task.train, valset=task.val)
        >>> program.signature.instructions
        'Count the vowels in the word.'
    """

    default_temperature = DEFAULT_TEMPERATURE

    def __init__(self, metric: Metric, *, prompt_model: dspy.BaseLM | None = None,
                 task_model: dspy.BaseLM | None = None, paraphrase_model: dspy.BaseLM | None = None,
                 rounds: int | None = None, beam_size: int = 4, minibatch_size: int = 64, n_gradients: int = 4,
                 errors_per_gradient: int = 4, gradients_per_error: int = 1, steps_per_gradient: int = 1,
                 mc_samples_per_step: int = 2, max_expansion_factor: int = 8, reject_on_errors: bool = False,
                 evaluator: Evaluator = "successive_halving", eval_rounds: int = 8, eval_prompts_per_round: int = 8,
                 samples_per_eval: int = 32, c: float = 1.0, temperature: float | None = None,
                 blame: Blame = "trace", format_candidate: bool = True, **kwargs: Any) -> None:
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, **kwargs)
        settings = {"rounds": rounds, "beam_size": beam_size, "minibatch_size": minibatch_size,
                    "n_gradients": n_gradients, "errors_per_gradient": errors_per_gradient,
                    "gradients_per_error": gradients_per_error, "steps_per_gradient": steps_per_gradient,
                    "mc_samples_per_step": mc_samples_per_step, "max_expansion_factor": max_expansion_factor,
                    "eval_rounds": eval_rounds, "eval_prompts_per_round": eval_prompts_per_round,
                    "samples_per_eval": samples_per_eval}
        for name, value in settings.items():
            if name == "rounds" and value is None:  # as many rounds as the budget pays for
                self.rounds = None
                continue
            check_int(name, value, minimum=_INT_SETTINGS[name][0],
                      hint=f"The paper's default is {_INT_SETTINGS[name][1]}.")
            setattr(self, name, value)
        if not isinstance(format_candidate, bool):
            raise TypeError(f"`format_candidate` must be True or False, but got {format_candidate!r}.")
        self.format_candidate = format_candidate
        _check_options(paraphrase_model, n_gradients, mc_samples_per_step, reject_on_errors, evaluator, c,
                       temperature, blame)
        self.paraphrase_model = paraphrase_model
        self.reject_on_errors = reject_on_errors
        self.evaluator, self.c, self.blame = evaluator, float(c), blame
        self.temperature = None if temperature is None else float(temperature)
        self.bandit: BestArmIdentifier = make_bandit(evaluator, eval_rounds=eval_rounds,
                                                     eval_prompts_per_round=eval_prompts_per_round,
                                                     samples_per_eval=samples_per_eval, c=c)

    def _params(self) -> dict[str, Any]:
        keys = [*_INT_SETTINGS, "reject_on_errors", "evaluator", "c", "temperature", "blame", "format_candidate"]
        params = {key: getattr(self, key) for key in keys}
        # resuming with another paraphrase model would replay the old one's paraphrases
        params["paraphrase_model"] = getattr(self.paraphrase_model, "model", None)
        if self.paraphrase_model is not None:  # its own temperature may differ from the prompt model's
            params["paraphrase_temperature"] = self.prompt_temperature(self.paraphrase_model)
        return params

    # -------------------------------------------------------------------------------- the plan
    def _children_per_parent(self, g: int, mc: int) -> int:
        edits = g * self.gradients_per_error * self.steps_per_gradient
        return min(self.max_expansion_factor, edits + mc * (edits + 1))

    def _plan(self, shape: Shape) -> SearchPlan:
        """Rounds, beam, gradients and paraphrases per parent, and the search set, from the caps.

        Each round costs, per beam parent, ``g * (1 + gradients_per_error) + mc * (edits + 1)`` prompt
        calls and about ``3/4 * search_examples`` task calls per child (successive halving on the
        shared search set; the parents' pairs are cached). Gradients and paraphrases shrink before
        the rounds do; the final beam and the start are validated.
        """
        m = shape.n_predictors
        finalists, n_val, notes = plan_validation(shape, self.beam_size)
        held = validation_calls(shape, finalists, n_val)
        search = None if shape.task_cap is None else max(0, shape.task_cap - held)
        beam = finalists
        top = min(shape.n_train, self.minibatch_size)
        size = top if search is None else max(min(MIN_SEARCH_EXAMPLES, top), min(top, search // 16))
        first = (2 if self.format_candidate else 1) * size * m
        wanted = self.rounds if self.rounds is not None else (UNCAPPED_ROUNDS if search is None else MIN_ROUNDS)
        # gradients shrink first, then paraphrases; at least one gradient (it is what makes this APO) and,
        # while it fits, one paraphrase (the paper's local Monte Carlo search) are kept
        lowest = 1 if self.n_gradients else 0
        gradients = range(self.n_gradients, lowest - 1, -1)
        configs = [(g, mc) for mc in range(self.mc_samples_per_step, 0, -1) for g in gradients]
        configs += [(g, 0) for g in gradients if g]
        best = None
        for g, mc in configs:
            prompt = beam * (g * (1 + self.gradients_per_error) + mc * (g * self.gradients_per_error
                                                                         * self.steps_per_gradient + 1))
            per_round = beam * self._children_per_parent(g, mc) * max(1, (3 * size) // 4) * m
            by_task = wanted if search is None else max(0, (search - first) // max(1, per_round))
            by_prompt = wanted if shape.prompt_cap is None else shape.prompt_cap // max(1, prompt)
            rounds = min(by_task, by_prompt)
            if best is None or rounds > best[0]:
                best = (rounds, g, mc, prompt, per_round)
            if rounds >= wanted:
                best = (rounds if self.rounds is None and search is not None else wanted, g, mc, prompt, per_round)
                break
        rounds, g, mc, prompt, per_round = best
        if self.rounds is not None:
            rounds = min(rounds, self.rounds)
        if rounds < wanted:
            notes.append(f"only {rounds} round(s) fit the caps; {wanted} wanted")
        if (g, mc) != (self.n_gradients, self.mc_samples_per_step):
            notes.append(f"gradients per parent {self.n_gradients} -> {g}, paraphrases {self.mc_samples_per_step} -> {mc}")
        phases = [Phase("step 0: the start and the format candidate", first),
                  Phase(f"rounds 1-{rounds}: beam {beam}, {self._children_per_parent(g, mc)} children per parent",
                        rounds * per_round, rounds * prompt),
                  Phase(f"final validation: start + beam of {finalists}", held)]
        settings = {"beam_size": beam, "n_gradients": g, "mc_samples_per_step": mc, "search_examples": size,
                    "evaluations_per_round": None if search is None else per_round,
                    "finalists": finalists, "validation_examples": n_val}
        return SearchPlan("APO", shape, int(rounds), settings, phases, notes)

    # -------------------------------------------------------------------------------- the loop
    def _search(self, ctx: SearchContext) -> None:
        names = [name for name, _ in ctx.predictors]
        plan = ctx.plan
        run = _Run(names=names, tasks={name: describe_signature(p) for name, p in ctx.predictors},
                   paraphrase_lm=self._paraphrase_lm(ctx),
                   paraphrase_temperature=self._paraphrase_temperature(ctx),
                   summaries={name: data_summary(p, ctx.trainset) for name, p in ctx.predictors},
                   search=search_subset(len(ctx.trainset), plan.settings["search_examples"], self.seed),
                   beam_size=plan.settings["beam_size"], n_gradients=plan.settings["n_gradients"],
                   mc_samples=plan.settings["mc_samples_per_step"], bandit=self._bandit(plan))
        seed = ctx.add_candidate(ctx.initial_state, step=0, origin="seed")
        ctx.set_best(seed)
        ctx.report.extra["beams"] = [{"round": 0, "beam": [seed.id]}]
        ctx.report.extra["gradients"] = run.gradients
        beam = [seed]
        with ctx.search_phase(validation_calls=plan.held_back):
            beam = self._first_beam(ctx, run, seed)
            ctx.checkpoint(0)
            round_index, idle = 0, 0
            while self.rounds is None or round_index < self.rounds:
                round_index += 1
                if not self._room_for_a_round(ctx, run, plan, round_index):
                    break
                known = len(ctx.report.candidates)
                beam, grew = self._round(ctx, run, round_index, beam)
                if run.prompt_budget_spent is not None:
                    raise run.prompt_budget_spent  # ends the search; this round's beam is still validated
                if not grew:
                    logger.info("APO round {}: no beam prompt made an error to learn from; the search is done",
                                round_index)
                    break
                idle = idle + 1 if len(ctx.report.candidates) == known else 0  # only programs already scored
                if idle >= MAX_IDLE_ROUNDS:
                    logger.info("APO: {} rounds in a row proposed only programs already scored; the search is done",
                                idle)
                    break
        self._choose_final(ctx, run, beam)

    def _room_for_a_round(self, ctx: SearchContext, run: _Run, plan: SearchPlan, round_index: int) -> bool:
        if ctx.meter.exhausted("prompt"):  # no child can be asked for: the round's minibatch is not paid for
            ctx.report.stopped_by_budget = True
            logger.info("APO: the prompt calls are spent before round {}; validating the beam", round_index)
            return False
        remaining = ctx.meter.remaining_calls("task")
        if remaining is None:
            return self.rounds is not None or round_index <= UNCAPPED_ROUNDS
        if remaining < len(run.search) * len(ctx.predictors):  # not even one child could be scored: stop
            ctx.report.stopped_by_budget = True
            logger.info("APO: {} task calls left cannot pay for round {}; validating the beam", remaining, round_index)
            return False
        return True

    def _first_beam(self, ctx: SearchContext, run: _Run, seed: CandidateRecord) -> list[CandidateRecord]:
        """The start and the data-grounded format candidate, scored on the search set; the best form the beam."""
        pool = [seed]
        if self.format_candidate:
            state = ctx.initial_state
            for name, predictor in ctx.predictors:
                text = format_instruction(state[name].instruction, output_spaces(predictor, ctx.trainset))
                if text is not None:
                    state = state.replace(name, state[name].with_instruction(text))
            if state.key() != ctx.initial_state.key():
                pool.append(ctx.add_candidate(state, step=0, origin="format", parent=seed.id))
        examples = [ctx.trainset[i] for i in run.search]
        for record in pool:
            ctx.score(record, examples, "search")
        beam = sorted(pool, key=lambda r: (-r.scores["search"], r.id))[: run.beam_size]
        ctx.report.extra["beams"][0] = {"round": 0, "pool": [r.id for r in pool], "beam": [r.id for r in beam]}
        return beam

    def _bandit(self, plan: SearchPlan) -> BestArmIdentifier:
        """The reference's bandit budget without a task cap; the plan's per-round budget with one."""
        per_round = plan.settings["evaluations_per_round"]
        if per_round is None:
            return self.bandit
        # the parents' pairs are cached, so the nominal budget counts them on top of the children's
        nominal = max(1, per_round * (1 + plan.settings["beam_size"]) // max(1, plan.settings["beam_size"]))
        samples = max(1, min(self.samples_per_eval, plan.settings["search_examples"] // 2))
        prompts = max(1, min(self.eval_prompts_per_round, 4))
        return make_bandit(self.evaluator, eval_rounds=max(1, nominal // (prompts * samples)),
                           eval_prompts_per_round=prompts, samples_per_eval=samples, c=self.c)

    def _round(self, ctx: SearchContext, run: _Run, r: int,
               beam: list[CandidateRecord]) -> tuple[list[CandidateRecord], bool]:
        """One round; returns the new beam and whether any child was proposed."""
        size = min(self.minibatch_size, len(run.search))
        minibatch = sorted(ctx.rng.sample(run.search, size))
        children: list[CandidateRecord] = []
        for j, parent in enumerate(beam):
            children += self._expand(ctx, run, r, j, parent, minibatch)
            if run.prompt_budget_spent is not None:
                break  # no more prompt-model answers: select among what this round has
        pool = list({record.id: record for record in [*beam, *children]}.values())
        result = self._select(ctx, run, r, pool)
        new_beam = list(result.chosen)
        ctx.report.extra["beams"].append({"round": r, "minibatch": minibatch, "pool": [rec.id for rec in pool],
                                          "beam": [rec.id for rec in new_beam], "bandit": _summary(pool, result)})
        ctx.set_best(new_beam[0])
        logger.info("APO round {}: {} children of {} beam prompt(s); new beam {} (bandit means {}); "
                    "{} evaluations", r, len(pool) - len(beam), len(beam),
                    [rec.id for rec in new_beam], [_fmt(result.means[pool.index(rec)]) for rec in new_beam],
                    result.evaluations)
        ctx.checkpoint(r)
        return new_beam, bool(children)

    # ---------------------------------------------------------------------------- expanding
    def _expand(self, ctx: SearchContext, run: _Run, r: int, j: int, parent: CandidateRecord,
                minibatch: list[int]) -> list[CandidateRecord]:
        state = ctx.state_of(parent)
        examples = [ctx.trainset[i] for i in minibatch]
        outcomes = ctx.scorer.evaluate(state, examples, desc=f"round {r} minibatch #{parent.id}")
        ctx.record_outcomes(parent, outcomes, f"minibatch_round{r}")
        failures = [Failure(i, ex, o) for i, ex, o in zip(minibatch, examples, outcomes) if is_failure(o)]
        raw_edits: list[_Child] = []
        paraphrases: list[_Child] = []
        try:
            self._gradient_steps(ctx, run, r, j, parent, state, failures, raw_edits)
            edits = _distinct(state, raw_edits)
            targets = list(dict.fromkeys(c.predictor for c in edits)) or [run.names[(r - 1 + j) % len(run.names)]]
            self._paraphrases(ctx, run, r, j, state, edits, targets, paraphrases)
        except BudgetExhausted as exc:
            if exc.role != "prompt":
                raise
            run.prompt_budget_spent = exc  # the answers already paid for still become children
        children = self._cap(ctx, r, _distinct(state, [*raw_edits, *paraphrases]), failures)
        logger.debug("APO round {} beam #{}: {} errors, {} edits, {} paraphrases, {} children kept", r, parent.id,
                     len(failures), len(raw_edits), len(paraphrases), len(children))
        return [ctx.add_candidate(child.state, step=r, origin=child.origin, predictor=child.predictor,
                                  parent=parent.id, meta=child.meta) for child in children]

    def _gradient_steps(self, ctx: SearchContext, run: _Run, r: int, j: int, parent: CandidateRecord,
                        state: ProgramState, failures: list[Failure], children: list[_Child]) -> None:
        """Append to ``children`` the edits of every gradient (as they come, so a budget end keeps them)."""
        if not failures:
            logger.debug("APO round {}: beam prompt #{} made no error on the minibatch", r, parent.id)
            return
        for g in range(run.n_gradients):
            shown = ctx.rng.sample(failures, min(len(failures), self.errors_per_gradient))
            name, how = self._target(run, shown, r, g)
            seen = [replace(f, example=ctx.shown_example(f.example)) for f in shown]  # labels the program writes
            inputs = {"task": run.tasks[name], "data_summary": run.summaries[name],
                      "instruction": state[name].instruction, "failures": render_failures(seen, name)}
            key = f"apo/round{r}/beam{j}/gradient{g}"
            answer = ctx.ask(DiagnoseErrors, key=f"{key}/reasons", temperature=ctx.temperature,
                             validate=lambda a: bool(numbered_items(a.reasons)), n_reasons=self.gradients_per_error,
                             **inputs)
            reasons = numbered_items(answer.reasons, self.gradients_per_error) if answer is not None else []
            run.gradients.append({"round": r, "beam": j, "parent": parent.id, "gradient": g, "predictor": name,
                                  "blame": how, "errors": [f.index for f in shown], "reasons": reasons})
            for i, reason in enumerate(reasons):
                meta = {"round": r, "beam": j, "gradient": g, "reason": i, "problem": reason}
                children += self._apply_gradient(ctx, f"{key}/reason{i}", name, inputs, reason, meta)

    def _apply_gradient(self, ctx: SearchContext, key: str, name: str, inputs: dict[str, str], reason: str,
                        meta: dict[str, Any]) -> list[_Child]:
        parent = inputs["instruction"]
        answer = ctx.ask(FixInstruction, key=f"{key}/edit", temperature=ctx.temperature,
                         validate=lambda a: bool(self._edits(ctx, a.new_instructions, parent, record=True)),
                         problem=reason, n_instructions=self.steps_per_gradient, **inputs)
        if answer is None:
            return []
        edits = self._edits(ctx, answer.new_instructions, parent)
        return [_Child(name, text, "edit", {**meta, "step": s, "key": f"{key}/step{s}"})
                for s, text in enumerate(edits)]

    def _paraphrases(self, ctx: SearchContext, run: _Run, r: int, j: int, state: ProgramState,
                     edits: list[_Child], targets: list[str], children: list[_Child]) -> None:
        """Append to ``children`` the paraphrases of each edit and of the parent."""
        sources = [(c.predictor, c.text, c.meta["key"], {**c.meta, "of": "edit"}) for c in edits]
        sources += [(name, state[name].instruction, f"apo/round{r}/beam{j}/parent/{name}",
                     {"round": r, "beam": j, "of": "parent"}) for name in targets]
        for name, text, key, meta in sources:
            for m in range(run.mc_samples):
                answer = ctx.ask(Paraphrase, key=f"{key}/mc{m}", temperature=run.paraphrase_temperature,
                                 validate=lambda a: self._paraphrase(ctx, a, text, record=True) is not None,
                                 instruction=text, lm=run.paraphrase_lm)
                if answer is not None and (paraphrase := self._paraphrase(ctx, answer, text)) is not None:
                    child_meta = {**meta, "key": f"{key}/mc{m}", "sample": m}
                    children.append(_Child(name, paraphrase, "paraphrase", child_meta))

    def _edits(self, ctx: SearchContext, value: Any, parent: str, *, record: bool = False) -> list[str]:
        """The edits of an answer that are instructions (see :meth:`SearchContext.proposal_problem`), without
        sentences that restate the meta-prompt."""
        texts = [ctx.read_proposal(clean_proposal(text), FixInstruction, allowed=parent, record=record)
                 for text in edited_instructions(value, self.steps_per_gradient)]
        return [text for text in texts if text]

    @staticmethod
    def _paraphrase(ctx: SearchContext, answer: dspy.Prediction, source: str, *, record: bool = False) -> str | None:
        """The paraphrase of an answer when it is an instruction, else ``None``."""
        return ctx.read_proposal(clean_proposal(clean_text(answer.paraphrase)), Paraphrase, allowed=source,
                                 record=record)

    def _target(self, run: _Run, shown: list[Failure], r: int, g: int) -> tuple[str, str]:
        """The predictor a gradient works on, and why ("trace" or "turn")."""
        if self.blame == "trace":
            found = Counter(name for name in map(culprit, shown) if name in run.names)
            if found:
                top = max(found.values())
                return max((n for n, k in found.items() if k == top), key=run.names.index), "trace"
        return run.names[((r - 1) * max(1, run.n_gradients) + g) % len(run.names)], "turn"

    def _cap(self, ctx: SearchContext, r: int, children: list[_Child], failures: list[Failure]) -> list[_Child]:
        """At most ``max_expansion_factor`` children: a random sample, or the best on the parent's errors."""
        limit = self.max_expansion_factor
        if len(children) <= limit:
            return children
        if not self.reject_on_errors or not failures:
            return [children[i] for i in sorted(ctx.rng.sample(range(len(children)), limit))]
        pool = sorted(ctx.rng.sample(range(len(children)), min(len(children), PRESCORE_POOL_FACTOR * limit)))
        probe = [f.example for f in ctx.rng.sample(failures, min(len(failures), ERROR_PRESCORE_SIZE))]
        scores = {i: ctx.scorer.mean(children[i].state, probe, desc=f"round {r} error pre-score") for i in pool}
        kept = sorted(sorted(pool, key=lambda i: (-scores[i], i))[:limit])
        for i in kept:
            children[i].meta["error_score"] = scores[i]
        return [children[i] for i in kept]

    # ---------------------------------------------------------------------------- selecting
    def _select(self, ctx: SearchContext, run: _Run, r: int, pool: list[CandidateRecord]) -> SelectionResult:
        def pull(record: CandidateRecord, items: list[int]) -> list[float]:
            examples = [ctx.trainset[run.search[i]] for i in items]  # items index the shared search set
            outcomes = ctx.scorer.evaluate(ctx.state_of(record), examples, desc=f"round {r} #{record.id}")
            return [o.score for o in outcomes]

        result = self._round_bandit(ctx, run, pool).select(pool, run.beam_size, pull, len(run.search), ctx.rng)
        run.ranked = [pool[i] for i in result.ranking]
        for record, mean, seen in zip(pool, result.means, result.items_seen):
            if mean is not None:
                record.scores[f"bandit_round{r}"] = mean
                record.n_scored[f"bandit_round{r}"] = seen
        return result

    def _round_bandit(self, ctx: SearchContext, run: _Run, pool: list[CandidateRecord]) -> BestArmIdentifier:
        """The round's bandit; a last, partial round gets a budget the task calls left can pay (the parents'
        pairs are cached, so the nominal budget counts them on top of the children's). The UCB family keeps
        its schedule: a budget that ends inside it ends the search."""
        remaining = ctx.meter.remaining_calls("task")
        per_round = ctx.plan.settings["evaluations_per_round"]
        if (remaining is None or per_round is None or remaining >= per_round
                or self.evaluator in ("ucb", "ucb-e")):
            return run.bandit
        # the members with pairs left to score (a child that repeats an earlier round's program keeps that round's
        # step, so counting this round's step undercounted them and inflated the budget)
        examples = [ctx.trainset[i] for i in run.search]
        children = max(1, sum(1 for r in pool if ctx.scorer.unscored(ctx.state_of(r), examples)))
        nominal = max(1, int(0.9 * remaining * len(pool) / children) // len(ctx.predictors))
        logger.info("APO: a partial round on the {} task calls left", remaining)
        return make_bandit(self.evaluator, eval_rounds=1, eval_prompts_per_round=1, samples_per_eval=nominal, c=self.c)

    def _choose_final(self, ctx: SearchContext, run: _Run, beam: list[CandidateRecord]) -> None:
        """The final beam (and, when it holds the start, the next best of the last round) against the start."""
        wanted = ctx.plan.settings["finalists"]
        seen: set[int] = set()
        ranked = [r for r in [*beam, *run.ranked] if r.origin != "seed" and not (r.id in seen or seen.add(r.id))]
        best = ctx.choose_by_validation(ranked[:wanted], reserves=ranked[wanted:])  # the starting prompt competes too
        logger.info("APO chose candidate {} (val {:.3f}) from the final beam {} and the starting prompt", best.id,
                    best.scores["val"], [record.id for record in beam])

    def _paraphrase_temperature(self, ctx: SearchContext) -> float | None:
        """The prompt model's temperature, or a separate paraphrase model's own (see ``prompt_temperature``)."""
        return ctx.temperature if self.paraphrase_model is None else self.prompt_temperature(self.paraphrase_model)

    def _paraphrase_lm(self, ctx: SearchContext) -> dspy.BaseLM:
        if self.paraphrase_model is None:
            return ctx.prompt_lm
        return MeteredLM(unwrap_lm(self.paraphrase_model), ctx.meter, "prompt")


def _distinct(state: ProgramState, children: list[_Child]) -> list[_Child]:
    """Children with a new program state each (the parent's own state and repeats dropped)."""
    seen = {state.key()}
    kept = []
    for child in children:
        child.state = state.replace(child.predictor, state[child.predictor].with_instruction(child.text))
        if child.state.key() not in seen:
            seen.add(child.state.key())
            kept.append(child)
    return kept


def _summary(pool: list[CandidateRecord], result: SelectionResult) -> dict[str, Any]:
    """The bandit's work by candidate id: means, distinct items seen, evaluations spent."""
    return {"means": {str(rec.id): None if m is None else round(m, 6) for rec, m in zip(pool, result.means)},
            "items_seen": {str(rec.id): n for rec, n in zip(pool, result.items_seen)},
            "evaluations": result.evaluations, "distinct_evaluations": result.distinct_evaluations}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _check_options(paraphrase_model: Any, n_gradients: int, mc_samples_per_step: int, reject_on_errors: Any,
                   evaluator: Any, c: Any, temperature: Any, blame: Any) -> None:
    if paraphrase_model is not None and not isinstance(paraphrase_model, dspy.BaseLM):
        raise TypeError(f"`paraphrase_model` must be a dspy.BaseLM or None, but got {type(paraphrase_model).__name__}. "
                        "Pass e.g. dspy.LM('openai/gpt-4o-mini'), or leave it out to use the prompt model.")
    if n_gradients == 0 and mc_samples_per_step == 0:
        raise ValueError("`n_gradients` and `mc_samples_per_step` must not both be 0, but both are: no child "
                         "prompt could be made. Set n_gradients=4 (the paper's default).")
    if not isinstance(reject_on_errors, bool):
        raise TypeError(f"`reject_on_errors` must be True or False, but got {reject_on_errors!r}.")
    if evaluator not in get_args(Evaluator):
        raise ValueError(f"`evaluator` must be one of {get_args(Evaluator)}, but got {evaluator!r}. "
                         "Use 'ucb' (the paper's choice) when unsure.")
    check_number("c", c, minimum=0, hint="Use 1.0 (the reference default).")
    if temperature is not None:
        check_number("temperature", temperature, minimum=0, hint="Or pass None to use the prompt model's own.")
    if blame not in get_args(Blame):
        raise ValueError(f"`blame` must be one of {get_args(Blame)}, but got {blame!r}. Use 'trace' (the default) "
                         "to edit the predictor that produced the wrong answer.")
