"""ABO: Automatic Behavior Optimization (Ma et al., 2024, "Are Large Language Models Good Prompt
Optimizers?", arXiv 2402.02101). The paper publishes no code; this is our reading of its method.

The paper finds that an optimizer's reflections on errors mostly come from its own prior, and that a
valid reflection often fails to become a better prompt because the target model does not follow it.
ABO therefore optimizes the target model's *behaviour*: it gives the model an explicit procedure and
shows it, in one worked demonstration, how to follow that procedure; when the model errs, the
optimizer names the step at which it went wrong and breaks only that step into finer sub-steps.

Per predictor, the loop reads like the paper (Step 0, 1, 2 ...), every candidate scored on one shared
search set planned from the budget (so all comparisons are paired):

0. the prompt model writes numbered procedures for the task; each is run by the task model as it is
   (with "Follow the steps strictly.", the paper's ablation) and with an instruction-following
   demonstration: one of the task model's own correct runs that carries out every step, or, when
   there is none, a worked example the prompt model writes (checked by the metric). Whether the
   demonstration helps is decided by running the task model with it, on the same examples (an arm
   whose first answers all become unreadable with it, when they were read without it, stops there). The best
   ``beam_size`` pairs, the program as given and a data-grounded format candidate compete;
1. each round: up to ``errors_per_round`` errors of the current pair (wrong answers, and answers the
   adapter could not read, with what the model wrote) are shown to the prompt model, which names the
   first wrongly executed step of each; the most frequent failing step is split into sub-steps
   (spliced in code: the other steps stay word for word), the demonstration is renewed for the
   refined procedure, and the refinement replaces its parent only if it scores higher on the search
   set. The final choice is made on the valset, the program as given competing.

A plain Predict has nowhere to follow steps: ABO adds a ``reasoning`` output before its outputs (as
ChainOfThought does), recorded in the state, so the compiled program keeps it. Its ``program.json``
then has the fields of ``dspy.Predict("question -> reasoning, answer")`` (load it into that).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.optimizers.abo_prompts import (
    Demonstration,
    LocateFailingStep,
    Procedure,
    SplitStep,
    WriteProcedure,
    demonstration_signature,
    follows_every_step,
    format_fields,
    parse_sub_steps,
    reasoning_field,
    render_solved_examples,
    step_number,
)
from dspy_icl_opt.search import (
    BudgetExhausted,
    CandidateRecord,
    ICLOptimizer,
    Outcome,
    ProgramState,
    SearchContext,
    describe_signature,
)
from dspy_icl_opt.search.budget import collect_cost
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.grounding import data_summary, format_sentence, output_spaces
from dspy_icl_opt.search.plan import (
    Phase,
    SearchPlan,
    Shape,
    plan_validation,
    search_subset,
    shrink_to_fit,
    validation_calls,
)
from dspy_icl_opt.search.scorer import Metric, metric_value
from dspy_icl_opt.search.surgery import demo_to_dict

#: An outcome scoring at least this is solved; anything lower is an error to localise. A demonstration
#: must reach it too (bool metrics give 1.0 for True; a float metric must give full marks).
CORRECT_SCORE = 1.0
#: Solved training examples shown to the prompt model when it writes a procedure ("a few").
PROCEDURE_EXAMPLES = 3
#: Training examples tried for one demonstration before going without (each costs one prompt call).
DEMO_EXAMPLE_TRIES = 3
#: After this many demonstrations in a row that the prompt model could not write (each up to
#: ``DEMO_EXAMPLE_TRIES`` examples, with retries), it is asked for no more: measured on date_understanding
#: (0.5B writer, split 0), 4 of 5 demonstrations failed (1 passed), and their 32 prompt calls took the
#: budget before round 2 could run.
DEMO_GIVE_UP = 2
#: A demonstration arm is first run on this many examples of the search set; when every answer is unreadable there
#: while the procedure without it was read on them all, the demonstration is what breaks the answers and the arm is
#: not scored further. Measured (examples/benchmarks/probe_abo_length.py): the 1.5B writer's demonstrations made the
#: 0.5B task model restate the question and options and run out of tokens on 16 of 16 answers (0 of 16 without
#: one), each such answer taking ~35 s; ABO's step 0 on date_understanding took 65 minutes.
UNREADABLE_PROBE = 3
#: The paper's ablation: this sentence instead of a demonstration (also used when no demo could be made).
STRICT_SENTENCE = "Follow the steps strictly."
#: The score label of the shared search set, on which every candidate is compared.
SEARCH = "search"
#: The output field ABO adds to a predictor without one, so the procedure has somewhere to be followed.
ADDED_REASONING = "reasoning"
#: The fewest refinement rounds a capped plan aims for before it accepts fewer.
MIN_ROUNDS = 3
#: Refinement rounds without a task cap when ``rounds`` is left to the plan.
UNCAPPED_ROUNDS = 2
#: Rounds in a row that may add no candidate because the prompt model's split was unusable (or scored the
#: same as a procedure already tried) before the refinement stops: the next round asks afresh (new keys,
#: new samples). A round with no localised error to split ends the refinement at once.
MAX_IDLE_ROUNDS = 2
#: The plan keeps the search set at least this large before it writes fewer procedures.
PREFERRED_SEARCH_EXAMPLES = 16
#: Procedures are sampled at this temperature when neither ABO nor the prompt LM sets one (varied drafts).
DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True)
class _Arm:
    """One procedure/demonstration pair of the beam, with its candidate record."""

    record: CandidateRecord
    procedure: Procedure
    demo: Demonstration | None


class ABO(ICLOptimizer):
    """Automatic Behavior Optimization: step-by-step procedures, demonstrations that follow them, and
    refinement of the step the target model fails at (Ma et al., 2024, arXiv 2402.02101).

    Each predictor ends up with a numbered procedure as its instruction and, where running the task
    model says it helps, one instruction-following demonstration as its only demo. The demonstration's
    work fills the predictor's reasoning output (ChainOfThought's ``reasoning``, or the one ABO adds to a
    plain Predict with ``add_reasoning``). With ``add_reasoning=False`` a plain Predict carries the worked
    example in its instruction instead. A demonstration written by the prompt model is used only if its
    final outputs pass ``metric`` (up to three training examples are tried). A demonstration with which the
    task model's first answers on the search set are all unreadable (when they were read without it) is
    not scored further (``report.extra["unreadable_demonstrations"]``) and counts as one the writer failed.

    Multi-predictor programs are optimized one predictor at a time, in DSPy's order, with the others
    fixed at their best state so far. Errors are localised with the trace of the predictor being
    optimized. A predictor whose outputs are not among the examples' labels gets a procedure without
    a demo.

    Budget: :meth:`plan` sizes the shared search set, the procedures written, the rounds and the
    errors localised per round from the caps (sizes shrink before counts, both before rounds), and
    holds back the final validation of the start and ``final_candidates`` finalists. Under a prompt cap,
    writing demonstrations (retries included) spends at most the plan's one call per procedure
    (``report.extra["demonstration_calls"]``); a writer whose demonstrations skip steps leaves the rest of
    the calls to localising and splitting steps.

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float, higher is better.
        prompt_model: the LM that writes procedures, demonstrations and diagnoses (default: the task model).
        task_model: the LM that runs the program (default: ``dspy.settings.lm``).
        num_candidates: most initial procedures written (Step 0). Default 4.
        rounds: refinement rounds after Step 0; 0 keeps the best initial procedure; ``None`` (default):
            as many as the budget pays for (2 without a task cap).
        minibatch_size: most training examples in the shared search set. Default 32.
        errors_per_round: most errors localised per round and lineage. Default 8.
        demonstration: use instruction-following demonstrations; ``False`` is the paper's ablation
            (the procedure plus "Follow the steps strictly.", no demo). Default True.
        beam_size: arms kept after Step 0 and refined side by side (an arm is a procedure, with or without its
            demonstration, so one procedure can hold two places). Default 1.
        temperature: prompt-model temperature when writing procedures and sub-steps; ``None``
            (default): the prompt LM's own temperature when it was built with one, else 1.0. The
            report's ``params`` say which was used.
        add_reasoning: give a predictor without a reasoning output one (default True).
        format_candidate: let the data-grounded format candidate compete and end procedures with the
            answer format the labels use (default True).
        final_candidates: finalists validated beside the start (default 2).
        **common: the other :class:`~dspy_icl_opt.search.ICLOptimizer` arguments (``budget``, ``seed``,
            ``num_threads``, ``log_dir``, ``failure_score``, ``max_retries``, ``progress``).

    Example:
        >>> import dspy
        >>> from dspy_icl_opt.optimizers import ABO
        >>> from dspy_icl_opt.testing import planted_rule_task
        >>> task = planted_rule_task("vowels", train_size=16, val_size=16)
        >>> abo = ABO(task.metric, prompt_model=dspy.LM("openai/gpt-4o-mini"), task_model=task.lm(),
        ...           budget={"max_task_calls": 400, "max_prompt_calls": 40}, progress=False)
        >>> program = abo.compile(dspy.Predict("question -> answer"),
        ...                       trainset=task.train, valset=task.val)  # doctest: +SKIP
        >>> [(r["round"], r["histogram"], r["kept"]) for r in abo.report_.extra["rounds"]]  # doctest: +SKIP
    """

    default_temperature = DEFAULT_TEMPERATURE

    def __init__(self, metric: Metric, *, prompt_model: dspy.BaseLM | None = None,
                 task_model: dspy.BaseLM | None = None, num_candidates: int = 4, rounds: int | None = None,
                 minibatch_size: int = 32, errors_per_round: int = 8, demonstration: bool = True,
                 beam_size: int = 1, temperature: float | None = None, add_reasoning: bool = True,
                 format_candidate: bool = True, final_candidates: int = 2, **common: Any) -> None:
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, **common)
        check_int("num_candidates", num_candidates, minimum=1, hint="Ask for at least one initial procedure.")
        if rounds is not None:
            check_int("rounds", rounds, minimum=0,
                      hint="Use 0 to keep the best initial procedure without refining it, or None to let the plan "
                           "decide.")
        check_int("minibatch_size", minibatch_size, minimum=1, hint="Score each round on at least one example.")
        check_int("errors_per_round", errors_per_round, minimum=1, hint="Localise at least one error per round.")
        check_int("beam_size", beam_size, minimum=1, hint="Keep at least one procedure.")
        check_int("final_candidates", final_candidates, minimum=1, hint="Validate at least one finalist.")
        if beam_size > num_candidates:
            raise ValueError(f"`beam_size` must be <= `num_candidates` ({num_candidates}), but got {beam_size}. "
                             "Lower beam_size or raise num_candidates.")
        for name, value in (("demonstration", demonstration), ("add_reasoning", add_reasoning),
                            ("format_candidate", format_candidate)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False, but got {value!r}."
                                + (" Pass demonstration=False for the paper's no-demonstration ablation."
                                   if name == "demonstration" else ""))
        if temperature is not None:
            check_number("temperature", temperature, minimum=0, hint="Try 1.0, or None for the prompt LM's own.")
        self.num_candidates = num_candidates
        self.rounds = rounds
        self.minibatch_size = minibatch_size
        self.errors_per_round = errors_per_round
        self.demonstration = demonstration
        self.beam_size = beam_size
        self.temperature = None if temperature is None else float(temperature)
        self.add_reasoning = add_reasoning
        self.format_candidate = format_candidate
        self.final_candidates = final_candidates

    def _params(self) -> dict[str, Any]:
        keys = ("num_candidates", "rounds", "minibatch_size", "errors_per_round", "demonstration", "beam_size",
                "temperature", "add_reasoning", "format_candidate", "final_candidates")
        return {key: getattr(self, key) for key in keys}

    def _validate(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
        if not any(len(example.labels()) for example in trainset):
            raise ValueError("`trainset` must carry gold outputs, but no example has a label field. ABO shows the "
                             "gold output when localising errors; build examples with the answer, e.g. "
                             "dspy.Example(question=..., answer=...).with_inputs('question').")

    # ------------------------------------------------------------------------------------ the plan
    def _plan(self, shape: Shape) -> SearchPlan:
        """Search set, procedures, rounds and errors per round that fit the caps (see search/plan.py)."""
        m = shape.n_predictors
        finalists, n_val, notes = plan_validation(shape, self.final_candidates)
        held = validation_calls(shape, finalists, n_val)
        search = None if shape.task_cap is None else max(0, shape.task_cap - held)
        runs = 2 if self.demonstration else 1  # each procedure runs with and without its demonstration
        first = 2 if self.format_candidate else 1  # the start and the format candidate
        wanted = self.rounds if self.rounds is not None else (UNCAPPED_ROUNDS if search is None else MIN_ROUNDS)
        top = min(shape.n_train, self.minibatch_size)
        counts = list(range(self.num_candidates, self.beam_size - 1, -1))

        def cost(size: int, count: int) -> tuple[int, int]:
            return m * (first + count * runs) * size, m * self.beam_size * runs * size

        rounds, size, count = shrink_to_fit(cost, steps_wanted=wanted, sizes=list(range(top, 0, -1)),
                                            counts=counts, budget=search,
                                            preferred_min_size=min(PREFERRED_SEARCH_EXAMPLES, top))
        fixed, per_round = cost(size, count)
        if search is not None and self.rounds is None and per_round:
            rounds = max(rounds, (search - fixed) // per_round)
        writer = 1 if self.demonstration else 0  # a demonstration the prompt model may have to write
        errors = self.errors_per_round
        if shape.prompt_cap is not None:
            per_predictor = shape.prompt_cap // m - count * (1 + writer)
            affordable = per_predictor // max(1, rounds * self.beam_size) - 1 - writer if rounds else errors
            errors = max(1, min(errors, affordable))
            rounds = min(rounds, max(0, per_predictor // max(1, self.beam_size * (errors + 1 + writer))))
        if rounds < wanted:
            notes.append(f"only {rounds} refinement round(s) fit the caps; {wanted} wanted")
        phases = [Phase("step 0: the start, the format candidate, procedures with and without a demonstration",
                        fixed, m * count * (1 + writer)),
                  Phase(f"rounds 1-{rounds}: localise {errors} error(s), split a step, renew the demonstration",
                        rounds * per_round, m * rounds * self.beam_size * (errors + 1 + writer)),
                  Phase(f"final validation: start + {finalists} finalist(s)", held)]
        # what writing demonstrations may spend per predictor (retries included), one call per procedure
        demo_calls = None if shape.prompt_cap is None else count + max(int(rounds), self.rounds or 0) * self.beam_size
        settings = {"num_candidates": count, "search_examples": size, "errors_per_round": errors,
                    "finalists": finalists, "validation_examples": n_val, "demonstration_calls": demo_calls}
        return SearchPlan("ABO", shape, int(rounds), settings, phases, notes)

    # ------------------------------------------------------------------------------------ the loop
    def _search(self, ctx: SearchContext) -> None:
        ctx.report.extra.setdefault("rounds", [])
        ctx.report.extra.setdefault("rejected_demonstrations", 0)
        ctx.report.extra.setdefault("unreadable_demonstrations", 0)
        plan = ctx.plan
        examples = [ctx.trainset[i] for i in search_subset(len(ctx.trainset), plan.settings["search_examples"],
                                                            self.seed)]
        state = ctx.initial_state
        with ctx.search_phase(validation_calls=plan.held_back):
            for index, (name, predictor) in enumerate(ctx.predictors):
                run = _PredictorRun(self, ctx, name, predictor, state, examples,
                                    first_step=index * (max(plan.steps, self.rounds or 0) + 1),
                                    last=index == len(ctx.predictors) - 1)
                state = run.run()
        ranked = sorted((r for r in ctx.report.candidates if SEARCH in r.scores and r.origin != "seed"),
                        key=lambda r: (-r.scores[SEARCH], r.id))
        ctx.choose_by_validation(ranked[: plan.settings["finalists"]], reserves=ranked[plan.settings["finalists"]:])

    def _rounds_left(self, ctx: SearchContext, round_: int, per_round: int, *, last: bool = True) -> bool:
        """Whether refinement round ``round_`` runs: as set, or while the budget pays for one. A predictor that
        is not the program's last stops at the planned rounds, so the ones after it get their share (the plan
        costs every predictor's step 0 and rounds); the last may go on with what is left."""
        if self.rounds is not None:
            return round_ <= self.rounds
        remaining = ctx.meter.remaining_calls("task")
        if remaining is None:
            return round_ <= UNCAPPED_ROUNDS
        if not last and ctx.plan is not None and round_ > ctx.plan.steps:
            return False
        return remaining >= per_round


class _PredictorRun:
    """ABO on one predictor, the others fixed in ``base``; every candidate scored on ``examples``."""

    def __init__(self, opt: ABO, ctx: SearchContext, name: str, predictor: dspy.Predict, base: ProgramState,
                 examples: list[dspy.Example], *, first_step: int, last: bool = True) -> None:
        self.opt, self.ctx, self.name, self.examples, self.first_step = opt, ctx, name, examples, first_step
        self.last = last  # the program's last predictor: it may spend what the others left
        signature = predictor.signature
        self.reasoning = reasoning_field(signature)
        self.start = base  # this predictor as the run found it (before any field is added)
        if self.reasoning is None and opt.add_reasoning and ADDED_REASONING not in signature.fields:
            self.reasoning = ADDED_REASONING  # room to follow the steps; kept in the compiled state
            base = base.replace(name, base[name].with_reasoning_field(ADDED_REASONING))
        self.base = base
        self.final_fields = {n: f for n, f in signature.output_fields.items() if n != self.reasoning}
        self.input_fields = list(signature.input_fields)
        self.task = task_description(predictor, ctx.initial_state[name].instruction, ctx.trainset)
        spaces = output_spaces(predictor, ctx.trainset) if opt.format_candidate else {}
        self.format = format_sentence(spaces) if spaces else ""
        self.demo_signature = demonstration_signature(self.final_fields)
        self.key = f"abo/pred:{name}"
        self.seed: CandidateRecord | None = None
        self.prompt_budget_spent: BudgetExhausted | None = None
        self.arms: list[_Arm] = []
        self.failed_demos = 0  # written demonstrations in a row that could not be used
        self.splits_asked = 0  # splits asked for in the current round
        # Under a prompt cap, writing demonstrations (retries included) may spend what the plan gave it: the rest
        # of the calls localise and split steps whatever the writer's success rate.
        self.demo_allowance = ctx.plan.settings["demonstration_calls"]
        self.demo_calls = 0
        self.checkable = any(self._has_gold(example) for example in ctx.trainset)
        if opt.demonstration and not self.checkable:
            logger.info("ABO [{}]: its outputs {} are not among the examples' labels, so a demonstration cannot be "
                        "checked by the metric; it gets a procedure only", name, list(self.final_fields))

    def run(self) -> ProgramState:
        """The best state for this predictor on the search set: a procedure (and demonstration), or the start."""
        ctx = self.ctx
        self.seed = ctx.add_candidate(self.start, step=self.first_step, origin="seed", predictor=self.name)
        contenders = [self.seed]
        if self.format:
            pstate = self.base[self.name]
            state = self.base.replace(self.name, pstate.with_instruction(f"{pstate.instruction}\n\n{self.format}"))
            contenders.append(ctx.add_candidate(state, step=self.first_step, origin="format", predictor=self.name,
                                                parent=self.seed.id))
        for record in contenders:
            ctx.score(record, self.examples, SEARCH)
        beam = self._initial_beam()
        if not beam:
            logger.warning("ABO [{}]: no usable procedure was written; the predictor keeps its state", self.name)
        elif self.prompt_budget_spent is not None:
            raise self.prompt_budget_spent  # what was written and scored is compared in the final choice
        else:
            round_, idle = 1, 0
            while self.opt._rounds_left(ctx, round_, len(beam) * self._runs() * len(self.examples)
                                        * len(ctx.predictors), last=self.last):
                known, self.splits_asked = {r.id for r in contenders} | {a.record.id for a in self.arms}, 0
                beam = [self._refine(arm, round_, lineage) for lineage, arm in enumerate(beam)]
                ctx.checkpoint(self.first_step + round_)
                round_ += 1
                # a round is idle when it built no program not seen before: a split the writer repeats rebuilds a
                # candidate already scored, which costs no task call, so the budget alone would never end the rounds
                idle = idle + 1 if all(a.record.id in known for a in self.arms) else 0
                # nothing localised: more rounds would repeat this one. A split asked for but unusable (a 0.5B
                # writer often is) or repeated is asked again next round, with a fresh sample, up to MAX_IDLE_ROUNDS.
                if idle and (not self.splits_asked or idle >= MAX_IDLE_ROUNDS):
                    break
        best = ctx.best_by([*contenders, *(arm.record for arm in self.arms)], SEARCH)
        ctx.set_best(best)
        return ctx.state_of(best)

    # ------------------------------------------------------------------------------------ Step 0
    def _initial_beam(self) -> list[_Arm]:
        ctx = self.ctx
        arms: list[_Arm] = []
        procedures: list[Procedure] = []
        try:
            for k in range(ctx.plan.settings["num_candidates"]):
                procedure = self._write_procedure(k)
                if procedure is None or procedure in procedures:
                    continue
                procedures.append(procedure)
                arms += self._arms_for(procedure, f"{self.key}/round0/candidate{k}", round_=0, origin="procedure",
                                       parent=self.seed.id, preferred=None)
        except BudgetExhausted as exc:
            if exc.role != "prompt":
                raise
            self.prompt_budget_spent = exc  # the procedures already written are still scored and compared
        if not arms:
            return []
        beam = sorted(arms, key=_rank)[: self.opt.beam_size]
        for arm in arms:
            self._report(0, None, arm, kept=arm in beam, parent_score=self.seed.scores[SEARCH])
        logger.info("ABO [{}] step 0: {} procedure(s); best {:.3f} on the search set (unoptimized {:.3f})",
                    self.name, len(procedures), beam[0].record.scores[SEARCH], self.seed.scores[SEARCH])
        ctx.checkpoint(self.first_step)
        return beam

    def _arms_for(self, procedure: Procedure, key: str, *, round_: int, origin: str, parent: int,
                  preferred: int | None, refined_step: int | None = None) -> list[_Arm]:
        """The procedure run as it is and with a demonstration (when one can be had), both scored."""
        plain = self._make_arm(procedure, None, round_=round_, origin=origin, parent=parent, refined_step=refined_step)
        outcomes = self.ctx.scorer.evaluate(self.ctx.state_of(plain.record), self.examples, desc="procedure")
        self.ctx.record_outcomes(plain.record, outcomes, SEARCH)
        arms = [plain]
        demo, written = self._demonstration(procedure, outcomes, key, preferred)
        if demo is not None and self._breaks_answers(procedure, demo, outcomes, key):
            if written:
                self._demo_failed()
        elif demo is not None:
            if written:
                self.failed_demos = 0
            shown = self._make_arm(procedure, demo, round_=round_, origin=origin, parent=parent,
                                   refined_step=refined_step)
            self.ctx.score(shown.record, self.examples, SEARCH)  # the probe's examples come from the cache
            arms.append(shown)
        self.arms += arms
        return arms

    def _breaks_answers(self, procedure: Procedure, demo: Demonstration, plain: list[Outcome], key: str) -> bool:
        """Whether the task model's answers with ``demo`` cannot be read on the search set's first examples while
        those without it were: then the arm is not scored further (``report.extra["unreadable_demonstrations"]``).
        A paired check on the same examples; only unreadable answers count, never wrong ones."""
        n = min(UNREADABLE_PROBE, len(self.examples))
        if n == 0 or any(outcome.failed for outcome in plain[:n]):  # (an unreadable answer is a failed one)
            return False
        probe = self.ctx.scorer.evaluate(self._arm_state(procedure, demo), self.examples[:n], desc="demonstration")
        if not all(outcome.unparsable for outcome in probe):
            return False
        self.ctx.report.extra["unreadable_demonstrations"] += 1
        logger.info("ABO [{}]: with the demonstration on training example {}, none of the task model's first {} "
                    "answers could be read (all were without it); the procedure runs without it ({})",
                    self.name, demo.example_index, n, key)
        return True

    def _write_procedure(self, k: int) -> Procedure | None:
        examples = [self.ctx.shown_example(ex) for ex in
                    self.ctx.rng.sample(self.ctx.trainset, min(PROCEDURE_EXAMPLES, len(self.ctx.trainset)))]
        shown = render_solved_examples(examples)
        answer = self._ask(WriteProcedure, f"{self.key}/round0/candidate{k}/procedure",
                           temperature=self.ctx.temperature, task=self.task, examples=shown,
                           validate=lambda a: Procedure.parse(a.procedure) is not None)
        return None if answer is None else Procedure.parse(answer.procedure)

    # ------------------------------------------------------------------------- demonstrations
    def _demos_wanted(self) -> bool:
        """Whether procedures still get a demonstration: asked for, checkable, and the writer not given up on."""
        return self.opt.demonstration and self.checkable and self.failed_demos < DEMO_GIVE_UP

    def _runs(self) -> int:
        """Scorings of the search set per procedure: as it is, and with its demonstration while there are any."""
        return 2 if self._demos_wanted() else 1

    def _demonstration(self, procedure: Procedure, outcomes: list[Outcome], key: str,
                       preferred: int | None) -> tuple[Demonstration | None, bool]:
        """One of the task model's own correct runs that labels every step, else one the prompt model writes;
        and whether the prompt model wrote it."""
        if not self.opt.demonstration or not self.checkable:
            return None, False
        own = self._own_run(procedure, outcomes)
        return (own, False) if own is not None else (self._write_demo(procedure, key, preferred), True)

    def _own_run(self, procedure: Procedure, outcomes: list[Outcome]) -> Demonstration | None:
        if self.reasoning is None:
            return None
        index_of = {id(example): i for i, example in enumerate(self.ctx.trainset)}
        for example, outcome in zip(self.examples, outcomes):
            entry = self._trace_entry(outcome)
            if outcome.failed or outcome.score < CORRECT_SCORE or entry is None:
                continue
            work = str((entry.get("outputs") or {}).get(self.reasoning, ""))
            if follows_every_step(work, procedure):
                outputs = {n: entry["outputs"].get(n) for n in self.final_fields}
                inputs = {f: entry["inputs"].get(f) for f in self.input_fields}
                return Demonstration(index_of.get(id(example), -1), inputs, work, demo_to_dict(outputs))
        return None

    def _write_demo(self, procedure: Procedure, key: str, preferred: int | None) -> Demonstration | None:
        """A demonstration the prompt model writes, whose final outputs pass the metric, or None (logged).

        After ``DEMO_GIVE_UP`` failures in a row the prompt model is not asked again in this run: its calls
        go to localising and splitting steps instead (``report.extra["demonstrations_given_up"]``)."""
        if self.failed_demos >= DEMO_GIVE_UP or self._demo_allowance_spent():
            return None  # (a spent allowance is the plan's doing, not the writer's failure: not counted)
        for j, index in enumerate(self._demo_pool(preferred)):
            demo = self._demo_attempt(procedure, index, f"{key}/demo{j}")
            if demo is not None:
                return demo  # counted as a success once the task model's answers with it can be read
        logger.info("ABO [{}]: no demonstration passed the metric after {} example(s); going without one ({})",
                    self.name, DEMO_EXAMPLE_TRIES, key)
        self._demo_failed()
        return None

    def _demo_failed(self) -> None:
        """One more written demonstration in a row that could not be used; at ``DEMO_GIVE_UP`` the writer is not
        asked again in this run."""
        self.failed_demos += 1
        if self.failed_demos >= DEMO_GIVE_UP:
            self.ctx.report.extra.setdefault("demonstrations_given_up", []).append(self.name)
            logger.info("ABO [{}]: {} written demonstrations in a row could not be used; no more are asked for in "
                        "this run", self.name, DEMO_GIVE_UP)

    def _demo_room(self) -> int | None:
        """Prompt calls left of the plan's allowance for writing demonstrations (``None``: no prompt cap)."""
        return None if self.demo_allowance is None else self.demo_allowance - self.demo_calls

    def _demo_allowance_spent(self) -> bool:
        room = self._demo_room()
        return room is not None and room < 1

    def _demo_pool(self, preferred: int | None) -> list[int]:
        """Training examples to demonstrate on: the previous demonstration's first, then random ones; those
        outside the search set before those in it. (A demonstration of a search example the procedure got wrong
        hands the arm that shows it that example: one example in 23 of search score that is not the procedure's.)"""
        order = self.ctx.rng.sample(range(len(self.ctx.trainset)), len(self.ctx.trainset))
        if preferred is not None and preferred >= 0:
            order = [preferred] + [i for i in order if i != preferred]
        searched = {id(example) for example in self.examples}
        order.sort(key=lambda i: id(self.ctx.trainset[i]) in searched)  # stable: the order above within each part
        return [i for i in order if self._has_gold(self.ctx.trainset[i])][:DEMO_EXAMPLE_TRIES]

    def _demo_attempt(self, procedure: Procedure, index: int, key: str) -> Demonstration | None:
        example = self.ctx.trainset[index]
        inputs = self._demo_inputs(example)
        if inputs is None:
            return None
        gold = {k: v for k, v in demo_to_dict(example.labels()).items() if k in self.final_fields}
        if self._demo_allowance_spent():
            return None
        room = self._demo_room()
        before = self.ctx.meter.snapshot()["prompt"].calls
        try:
            answer = self._ask(self.demo_signature, key, validate=lambda a: follows_every_step(a.execution, procedure),
                               max_attempts=room, task=self.task, procedure=procedure.render(),
                               example_inputs=format_fields(inputs), correct_outputs=format_fields(gold))
        finally:
            spent = self.ctx.meter.snapshot()["prompt"].calls - before
            self.demo_calls += spent
            extra = self.ctx.report.extra
            extra["demonstration_calls"] = extra.get("demonstration_calls", 0) + spent
        if answer is None:
            return None
        outputs = {name: answer.get(f"final_{name}") for name in self.final_fields}
        demo = Demonstration(index, inputs, str(answer.execution), demo_to_dict(outputs))
        if self._passes_metric(example, demo):
            return demo
        self.ctx.report.extra["rejected_demonstrations"] += 1
        logger.info("ABO [{}]: the demonstration on training example {} ends in {}, which fails the metric; "
                    "not used", self.name, index, demo.outputs)
        return None

    def _demo_inputs(self, example: dspy.Example) -> dict[str, Any] | None:
        """The predictor's inputs on ``example``: from the example, or from the program's trace on it."""
        given = demo_to_dict(example.inputs())
        if all(f in given for f in self.input_fields):
            return {f: given[f] for f in self.input_fields}
        entry = self._trace_entry(self.ctx.scorer.evaluate(self.base, [example], desc="demo inputs")[0])
        return None if entry is None else {f: entry["inputs"].get(f) for f in self.input_fields}

    def _passes_metric(self, example: dspy.Example, demo: Demonstration) -> bool:
        work = {self.reasoning: demo.execution} if self.reasoning else {}
        prediction = dspy.Prediction(**work, **demo.outputs)
        try:
            with collect_cost() as cost, dspy.context(lm=self.ctx.task_lm):
                passed = metric_value(self.opt.metric(example, prediction, None)) >= CORRECT_SCORE
            if cost.refused is not None:  # the metric swallowed a budget refusal: its verdict is incomplete
                raise cost.refused
            return passed
        except (BudgetExhausted, LMFault, RunInterrupted):  # out of budget, or the LM did not answer: no verdict
            raise
        except Exception as exc:  # the metric is user code: a demonstration it cannot score is not used
            self.ctx.report.counters.metric_errors += 1
            logger.warning("ABO [{}]: the metric raised {} on a demonstration; not used", self.name, exc)
            return False

    def _has_gold(self, example: dspy.Example) -> bool:
        return any(name in example.labels() for name in self.final_fields)

    # ------------------------------------------------------------------------- rounds 1, 2 ...
    def _refine(self, arm: _Arm, round_: int, lineage: int) -> _Arm:
        """One round on one lineage: localise failing steps, split the most frequent, keep it if better."""
        outcomes = self.ctx.scorer.evaluate(self.ctx.state_of(arm.record), self.examples, desc=f"round {round_}")
        parent_score = self.ctx.record_outcomes(arm.record, outcomes, SEARCH)
        prefix = f"{self.key}/round{round_}/lineage{lineage}"
        findings, n_errors = self._diagnose(arm, outcomes, prefix)
        histogram = Counter(step for step, _ in findings)
        if not histogram:
            logger.info("ABO [{}] round {}: no localised error among {} (search set {:.3f}); procedure unchanged",
                        self.name, round_, n_errors, parent_score)
            self._report(round_, lineage, None, kept=False, parent=arm, parent_score=parent_score, errors=n_errors)
            return arm
        step = min(histogram, key=lambda s: (-histogram[s], s))  # most frequent; ties: the earliest step
        reasons = [reason for s, reason in findings if s == step]
        self.splits_asked += 1
        children = self._split(arm, step, reasons, prefix, round_)
        child = sorted(children, key=_rank)[0] if children else None
        kept = child is not None and child.record.scores[SEARCH] > parent_score
        self._report(round_, lineage, child, kept=kept, parent=arm, parent_score=parent_score, errors=n_errors,
                     histogram=histogram, failing_step=step, reasons=reasons)
        logger.info("ABO [{}] round {}: failing steps {} -> split step {}; search set {:.3f} -> {}; {}", self.name,
                    round_, dict(sorted(histogram.items())), step, parent_score,
                    "n/a" if child is None else f"{child.record.scores[SEARCH]:.3f}",
                    "kept" if kept else "parent kept")
        return child if kept and child is not None else arm

    def _diagnose(self, arm: _Arm, outcomes: list[Outcome], prefix: str) -> tuple[list[tuple[int, str]], int]:
        """(failing step, reason) for a sample of the arm's errors, and the number of errors."""
        errors = [(ex, o) for ex, o in zip(self.examples, outcomes) if o.score < CORRECT_SCORE
                  and ((not o.failed and self._trace_entry(o) is not None) or o.unparsable)]
        sample = self.ctx.rng.sample(errors, min(self._errors_this_round(), len(errors)))
        findings = []
        for i, (example, outcome) in enumerate(sample):
            found = self._locate(arm, example, outcome, f"{prefix}/error{i}")
            if found is not None:
                findings.append(found)
        return findings, len(errors)

    def _errors_this_round(self) -> int:
        """Errors to localise now: the plan's number, or fewer when the prompt calls left must also pay for
        the rounds the task calls left can buy (calls saved earlier, e.g. by duplicate procedures, buy rounds)."""
        planned = self.ctx.plan.settings["errors_per_round"]
        prompt_left = self.ctx.meter.remaining_calls("prompt")
        task_left = self.ctx.meter.remaining_calls("task")
        if prompt_left is None or task_left is None:
            return planned
        rounds = max(1, task_left // max(1, self._runs() * len(self.examples) * len(self.ctx.predictors)))
        per_round = prompt_left // rounds - 1 - (1 if self._demos_wanted() else 0)  # the split and a demo
        return max(1, min(planned, per_round))

    def _locate(self, arm: _Arm, example: dspy.Example, outcome: Outcome, key: str) -> tuple[int, str] | None:
        entry = self._trace_entry(outcome) or {}
        n_steps = len(arm.procedure)
        if outcome.unparsable:
            model_output = (f"(unreadable: {outcome.error}) The model wrote:\n{outcome.raw}")
            task_input = format_fields({f: example.get(f) for f in self.input_fields if f in example})
        else:
            model_output = format_fields(entry.get("outputs") or {})
            if outcome.prediction and outcome.prediction != entry.get("outputs"):
                model_output += f"\nThe program's final output:\n{format_fields(outcome.prediction)}"
            task_input = format_fields(entry.get("inputs") or {})
        demonstration = arm.demo.render() if arm.demo else f"(none; the instruction ends: {STRICT_SENTENCE})"
        answer = self._ask(LocateFailingStep, key, validate=lambda a: step_number(a.failing_step, n_steps) is not None,
                           procedure=arm.procedure.render(), demonstration=demonstration, task_input=task_input,
                           model_output=model_output,
                           correct_output=format_fields(demo_to_dict(self.ctx.shown_example(example).labels())))
        number = None if answer is None else step_number(answer.failing_step, n_steps)
        return None if number is None else (number, str(answer.reason))

    def _split(self, arm: _Arm, step: int, reasons: list[str], prefix: str, round_: int) -> list[_Arm]:
        """The arm's procedure with ``step`` broken into sub-steps, run as it is and with a renewed demonstration."""
        others = [s.text for s in arm.procedure.steps]  # an answer that repeats the procedure is no split
        answer = self._ask(SplitStep, f"{prefix}/split", temperature=self.ctx.temperature,
                           validate=lambda a: parse_sub_steps(a.sub_steps, other_steps=others) is not None,
                           task=self.task, step=arm.procedure.render_step(step),
                           failures="\n".join(f"- {reason}" for reason in reasons))
        if answer is None:
            return []
        procedure = arm.procedure.refine(step, parse_sub_steps(answer.sub_steps, other_steps=others) or [])
        preferred = arm.demo.example_index if arm.demo else None
        return self._arms_for(procedure, prefix, round_=round_, origin="refinement", parent=arm.record.id,
                              preferred=preferred, refined_step=step)

    # --------------------------------------------------------------------------------- helpers
    def _make_arm(self, procedure: Procedure, demo: Demonstration | None, *, round_: int, origin: str,
                  parent: int | None, refined_step: int | None = None) -> _Arm:
        meta = {"procedure": procedure.render(), "demonstration": demo.to_dict() if demo else None,
                "refined_step": refined_step}
        record = self.ctx.add_candidate(self._arm_state(procedure, demo), step=self.first_step + round_,
                                        origin=origin, predictor=self.name, parent=parent, meta=meta)
        return _Arm(record, procedure, demo)

    def _arm_state(self, procedure: Procedure, demo: Demonstration | None) -> ProgramState:
        """The program with this predictor running ``procedure``, ``demo`` its only demo when there is one (the
        demonstration check and the arm's record build it here alike, so they share the scorer's cache)."""
        pstate = self.base[self.name].with_instruction(arm_instruction(procedure, demo, fmt=self.format,
                                                                       reasoning=self.reasoning))
        return self.base.replace(self.name, pstate.with_demos([demo.as_demo(self.reasoning)] if demo else []))

    def _trace_entry(self, outcome: Outcome) -> dict[str, Any] | None:
        """The last call of this predictor in an outcome's trace (None if it was not called)."""
        entries = [t for t in outcome.trace if t.get("predictor") == self.name]
        return entries[-1] if entries else None

    def _ask(self, signature: type[dspy.Signature], key: str, **kwargs: Any) -> dspy.Prediction | None:
        logger.debug("ABO ask {} ({}): {}", key, signature.__name__,
                     {k: v for k, v in kwargs.items() if k not in ("validate", "temperature")})
        return self.ctx.ask(signature, key=key, **kwargs)

    def _report(self, round_: int, lineage: int | None, arm: _Arm | None, *, kept: bool, parent_score: float,
                parent: _Arm | None = None, **diagnosis: Any) -> None:
        """Append one attempt to ``report.extra["rounds"]`` (the paper's Step 0, 1, 2 ...)."""
        entry = {"predictor": self.name, "round": round_, "lineage": lineage,
                 "candidate": arm.record.id if arm else None,
                 "parent": parent.record.id if parent else (arm.record.parent if arm else None),
                 "procedure": arm.procedure.render() if arm else None,
                 "steps": [{"text": s.text, "sub_steps": list(s.sub_steps)} for s in arm.procedure.steps]
                 if arm else None,
                 "demonstration": arm.demo.to_dict() if arm and arm.demo else None,
                 "histogram": {str(k): v for k, v in sorted((diagnosis.pop("histogram", None) or {}).items())},
                 "scores": {"search": arm.record.scores.get(SEARCH) if arm else None, "parent_search": parent_score},
                 "kept": kept, **diagnosis}
        self.ctx.report.extra["rounds"].append(entry)


def task_description(predictor: dspy.Predict, instruction: str, trainset: list[dspy.Example]) -> str:
    """The task as ABO's meta-prompts are told it: the predictor's fields, its instruction and a data summary."""
    return (f"{describe_signature(predictor)}\nCurrent instruction: {instruction}\n"
            f"The data: {data_summary(predictor, trainset)}")


def arm_instruction(procedure: Procedure, demo: Demonstration | None, *, fmt: str, reasoning: str | None) -> str:
    """The instruction an arm runs with: the procedure, then "Follow the steps strictly." when it has no
    demonstration, or the worked example when the predictor has no reasoning output to hold it as a demo (with one,
    the demonstration is installed as a demo instead); then the answer-format sentence ``fmt``, if any."""
    tail = f"\n\n{fmt}" if fmt else ""
    if demo is None:
        return f"{procedure.render()}\n\n{STRICT_SENTENCE}{tail}"
    if reasoning is None:
        return f"{procedure.render()}\n\nA worked example, every step carried out:\n{demo.render()}{tail}"
    return f"{procedure.render()}{tail}"


def _rank(arm: _Arm) -> tuple:
    """Best search score first; on a tie the arm with a demonstration (the paper's method), then the earliest."""
    return (-arm.record.scores[SEARCH], arm.demo is None, arm.record.id)
