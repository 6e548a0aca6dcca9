"""ABO: Automatic Behavior Optimization (Ma et al., 2024, "Are Large Language Models Good Prompt
Optimizers?", arXiv 2402.02101). The paper publishes no code; this is our reading of its method.

The paper finds that an optimizer's reflections on errors mostly come from its own prior, and that a
valid reflection often fails to become a better prompt because the target model does not follow it.
ABO therefore optimizes the target model's *behaviour*: it gives the model an explicit procedure and
shows it, in one worked demonstration, how to follow that procedure; when the model errs, the
optimizer names the step at which it went wrong and breaks only that step into finer sub-steps.

Per predictor, the loop reads like the paper (Step 0, 1, 2 ...):

0. the prompt model writes ``num_candidates`` numbered procedures for the task; each gets an
   instruction-following demonstration (a training example worked step by step, checked by the
   metric); each pair is scored on a shared minibatch and the best ``beam_size`` are kept;
1. each round: on a fresh shared minibatch, up to ``errors_per_round`` errors of the current pair are
   shown to the prompt model, which names the first wrongly executed step of each; the most frequent
   failing step is split into sub-steps (spliced in code: the other steps stay word for word), the
   demonstration is rewritten for the refined procedure, and the new pair replaces the old one only if
   it scores higher on the minibatch and no lower on ``valset``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import dspy
from loguru import logger

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
from dspy_icl_opt.search.scorer import Metric, metric_value
from dspy_icl_opt.search.surgery import demo_to_dict

#: An outcome scoring at least this is solved; anything lower is an error to localise. A demonstration
#: must reach it too (bool metrics give 1.0 for True; a float metric must give full marks).
CORRECT_SCORE = 1.0
#: Solved training examples shown to the prompt model when it writes a procedure ("a few").
PROCEDURE_EXAMPLES = 3
#: Training examples tried for one demonstration before going without (each costs one prompt call).
DEMO_EXAMPLE_TRIES = 3
#: The paper's ablation: this sentence instead of a demonstration (also used when no demo could be made).
STRICT_SENTENCE = "Follow the steps strictly."
#: The score label of the validation split, shared by all predictors and rounds.
VAL = "val"


@dataclass(frozen=True)
class _Arm:
    """One procedure/demonstration pair of the beam, with its candidate record."""

    record: CandidateRecord
    procedure: Procedure
    demo: Demonstration | None


class ABO(ICLOptimizer):
    """Automatic Behavior Optimization: step-by-step procedures, demonstrations that follow them, and
    refinement of the step the target model fails at (Ma et al., 2024, arXiv 2402.02101).

    Each predictor ends up with a numbered procedure as its instruction and one
    instruction-following demonstration as its only demo (so the compiled program carries both).
    For a ChainOfThought predictor (an output field named ``reasoning`` or a synonym before the
    answer) the demonstration's work fills that field. A plain Predict has nowhere to show the work
    in a demo, so the worked example is written into the instruction below the procedure, and the
    demo carries the inputs and the final outputs. A demonstration is installed only if its final
    outputs pass ``metric``; otherwise up to three training examples are tried, then the predictor
    goes without one and its instruction ends with "Follow the steps strictly." (logged).

    Multi-predictor programs are optimized one predictor at a time, in DSPy's order, with the others
    fixed at their best state so far. Errors are localised with the trace of the predictor being
    optimized (its inputs and outputs on the failing example, and the program's final output); the
    gold output shown is the example's. A predictor whose outputs are not among the examples' labels
    cannot have its demonstration checked by the metric, so it gets a procedure without a demo.

    Where this differs from, or adds to, the paper's description: scores come from ``metric``
    through the cached scorer; an error is an example scoring below 1.0 (full marks), and so is a
    demonstration that fails; a refinement is kept only if it beats its parent on the round's
    minibatch and is no worse on ``valset`` (our guard against refinements the target model does not
    follow); ``beam_size`` > 1 refines independent lineages and returns the best on ``valset``. The
    demonstration replaces the predictor's existing demos (``demonstration=False`` removes them).

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float, higher is better.
        prompt_model: the LM that writes procedures, demonstrations and diagnoses (default: the task model).
        task_model: the LM that runs the program (default: ``dspy.settings.lm``).
        num_candidates: initial procedures written (Step 0). Default 4.
        rounds: refinement rounds after Step 0; 0 keeps the best initial procedure. Default 2.
        minibatch_size: training examples per round's shared minibatch. Default 32.
        errors_per_round: errors localised per round and lineage. Default 8.
        demonstration: write instruction-following demonstrations; ``False`` is the paper's ablation
            (the procedure plus "Follow the steps strictly.", no demo). Default True.
        beam_size: procedures kept after Step 0 and refined side by side. Default 1.
        temperature: prompt-model temperature when writing procedures and sub-steps. Default 1.0.
        **common: the other :class:`~dspy_icl_opt.search.ICLOptimizer` arguments (``budget``, ``seed``,
            ``num_threads``, ``log_dir``, ``failure_score``, ``max_retries``, ``progress``).

    Example:
        >>> import dspy
        >>> from dspy_icl_opt.optimizers import ABO
        >>> from dspy_icl_opt.testing import planted_rule_task
        >>> task = planted_rule_task("vowels", train_size=16, val_size=16)
        >>> abo = ABO(task.metric, prompt_model=dspy.LM("openai/gpt-4o-mini"), task_model=task.lm(),
        ...           num_candidates=4, rounds=2, budget="light", progress=False)
        >>> program = abo.compile(dspy.ChainOfThought("question -> answer"),
        ...                       trainset=task.train, valset=task.val)  # doctest: +SKIP
        >>> [(r["round"], r["histogram"], r["kept"]) for r in abo.report_.extra["rounds"]]  # doctest: +SKIP
    """

    def __init__(self, metric: Metric, *, prompt_model: dspy.BaseLM | None = None,
                 task_model: dspy.BaseLM | None = None, num_candidates: int = 4, rounds: int = 2,
                 minibatch_size: int = 32, errors_per_round: int = 8, demonstration: bool = True,
                 beam_size: int = 1, temperature: float = 1.0, **common: Any) -> None:
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, **common)
        check_int("num_candidates", num_candidates, minimum=1, hint="Ask for at least one initial procedure.")
        check_int("rounds", rounds, minimum=0, hint="Use 0 to keep the best initial procedure without refining it.")
        check_int("minibatch_size", minibatch_size, minimum=1, hint="Score each round on at least one example.")
        check_int("errors_per_round", errors_per_round, minimum=1, hint="Localise at least one error per round.")
        check_int("beam_size", beam_size, minimum=1, hint="Keep at least one procedure.")
        if beam_size > num_candidates:
            raise ValueError(f"`beam_size` must be <= `num_candidates` ({num_candidates}), but got {beam_size}. "
                             "Lower beam_size or raise num_candidates.")
        if not isinstance(demonstration, bool):
            raise TypeError(f"`demonstration` must be True or False, but got {demonstration!r}. "
                            "Pass demonstration=False for the paper's no-demonstration ablation.")
        check_number("temperature", temperature, minimum=0, hint="Try 1.0.")
        self.num_candidates = num_candidates
        self.rounds = rounds
        self.minibatch_size = minibatch_size
        self.errors_per_round = errors_per_round
        self.demonstration = demonstration
        self.beam_size = beam_size
        self.temperature = float(temperature)

    def _params(self) -> dict[str, Any]:
        return {"num_candidates": self.num_candidates, "rounds": self.rounds, "minibatch_size": self.minibatch_size,
                "errors_per_round": self.errors_per_round, "demonstration": self.demonstration,
                "beam_size": self.beam_size, "temperature": self.temperature}

    def _validate(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
        if not any(len(example.labels()) for example in trainset):
            raise ValueError("`trainset` must carry gold outputs, but no example has a label field. ABO shows the "
                             "gold output when localising errors; build examples with the answer, e.g. "
                             "dspy.Example(question=..., answer=...).with_inputs('question').")

    def _search(self, ctx: SearchContext) -> None:
        ctx.report.extra.setdefault("rounds", [])
        ctx.report.extra.setdefault("rejected_demonstrations", 0)
        state = ctx.initial_state
        for index, (name, predictor) in enumerate(ctx.predictors):
            run = _PredictorRun(self, ctx, name, predictor, state, first_step=index * (self.rounds + 1))
            state = run.run()


class _PredictorRun:
    """ABO on one predictor, the others fixed in ``base``."""

    def __init__(self, opt: ABO, ctx: SearchContext, name: str, predictor: dspy.Predict, base: ProgramState,
                 *, first_step: int) -> None:
        self.opt, self.ctx, self.name, self.base, self.first_step = opt, ctx, name, base, first_step
        signature = predictor.signature
        self.reasoning = reasoning_field(signature)
        self.final_fields = {n: f for n, f in signature.output_fields.items() if n != self.reasoning}
        self.input_fields = list(signature.input_fields)
        self.task = f"{describe_signature(predictor)}\nCurrent instruction: {base[name].instruction}"
        self.demo_signature = demonstration_signature(self.final_fields)
        self.key = f"abo/pred:{name}"
        self.seed: CandidateRecord | None = None
        self.prompt_budget_spent: BudgetExhausted | None = None
        self.checkable = any(self._has_gold(example) for example in ctx.trainset)
        if opt.demonstration and not self.checkable:
            logger.info("ABO [{}]: its outputs {} are not among the examples' labels, so a demonstration cannot be "
                        "checked by the metric; it gets a procedure only", name, list(self.final_fields))

    def run(self) -> ProgramState:
        """The best state for this predictor: a procedure (and demonstration), or the one it started with."""
        minibatch = self._minibatch()
        self.seed = self.ctx.add_candidate(self.base, step=self.first_step, origin="seed", predictor=self.name)
        self.ctx.score(self.seed, self.ctx.valset, VAL)  # the program to beat (free when scored before)
        beam = self._initial_beam(minibatch)
        if not beam:
            logger.warning("ABO [{}]: no usable procedure was written; the predictor keeps its state", self.name)
        else:
            self._select(beam)
            if self.prompt_budget_spent is not None:
                raise self.prompt_budget_spent  # what was written and scored is kept; no rounds are possible
            for round_ in range(1, self.opt.rounds + 1):
                minibatch = self._minibatch()
                beam = [self._refine(arm, round_, lineage, minibatch) for lineage, arm in enumerate(beam)]
                self._select(beam)
                self.ctx.checkpoint(self.first_step + round_)
        return self.ctx.state_of(self._select(beam))

    # ------------------------------------------------------------------------------------ Step 0
    def _initial_beam(self, minibatch: list[dspy.Example]) -> list[_Arm]:
        ctx, label, seed = self.ctx, self._label(0), self.seed
        seed_score = ctx.score(seed, minibatch, label)
        arms: list[_Arm] = []
        try:
            for k in range(self.opt.num_candidates):
                procedure = self._write_procedure(k)
                if procedure is None or any(arm.procedure == procedure for arm in arms):
                    continue
                demo = self._write_demo(procedure, f"{self.key}/round0/candidate{k}", preferred=None)
                arm = self._make_arm(procedure, demo, round_=0, origin="procedure", parent=seed.id)
                ctx.score(arm.record, minibatch, label)
                arms.append(arm)
        except BudgetExhausted as exc:
            if exc.role != "prompt":
                raise
            self.prompt_budget_spent = exc  # the procedures already written are still scored and compared
        if not arms:
            return []
        beam = sorted(arms, key=lambda a: (-a.record.scores[label], a.record.id))[: self.opt.beam_size]
        for arm in beam:
            ctx.score(arm.record, ctx.valset, VAL)
        for arm in arms:
            self._report(0, None, arm, kept=arm in beam, parent_score=seed_score, label=label)
        logger.info("ABO [{}] step 0: {} procedure(s); minibatch {:.3f} (unoptimized {:.3f}), val {:.3f}", self.name,
                    len(arms), beam[0].record.scores[label], seed_score, beam[0].record.scores[VAL])
        ctx.checkpoint(self.first_step)
        return beam

    def _write_procedure(self, k: int) -> Procedure | None:
        examples = self.ctx.rng.sample(self.ctx.trainset, min(PROCEDURE_EXAMPLES, len(self.ctx.trainset)))
        shown = "\n\n".join(f"Example {i}:\n{format_fields(demo_to_dict(ex.inputs()))}\n"
                            f"{format_fields(demo_to_dict(ex.labels()))}" for i, ex in enumerate(examples, start=1))
        answer = self._ask(WriteProcedure, f"{self.key}/round0/candidate{k}/procedure",
                           temperature=self.opt.temperature, task=self.task, examples=shown,
                           validate=lambda a: Procedure.parse(a.procedure) is not None)
        return None if answer is None else Procedure.parse(answer.procedure)

    # ------------------------------------------------------------------------- demonstrations
    def _write_demo(self, procedure: Procedure, key: str, preferred: int | None) -> Demonstration | None:
        """A demonstration of ``procedure`` whose final outputs pass the metric, or None (logged)."""
        if not self.opt.demonstration or not self.checkable:
            return None
        for j, index in enumerate(self._demo_pool(preferred)):
            demo = self._demo_attempt(procedure, index, f"{key}/demo{j}")
            if demo is not None:
                return demo
        logger.warning("ABO [{}]: no demonstration passed the metric after {} example(s); going without one ({})",
                       self.name, DEMO_EXAMPLE_TRIES, key)
        return None

    def _demo_pool(self, preferred: int | None) -> list[int]:
        """Training examples to demonstrate on: the previous demonstration's first, then random ones."""
        order = self.ctx.rng.sample(range(len(self.ctx.trainset)), len(self.ctx.trainset))
        if preferred is not None:
            order = [preferred] + [i for i in order if i != preferred]
        return [i for i in order if self._has_gold(self.ctx.trainset[i])][:DEMO_EXAMPLE_TRIES]

    def _demo_attempt(self, procedure: Procedure, index: int, key: str) -> Demonstration | None:
        example = self.ctx.trainset[index]
        inputs = self._demo_inputs(example)
        if inputs is None:
            return None
        gold = {k: v for k, v in demo_to_dict(example.labels()).items() if k in self.final_fields}
        answer = self._ask(self.demo_signature, key, validate=lambda a: follows_every_step(a.execution, procedure),
                           task=self.task, procedure=procedure.render(), example_inputs=format_fields(inputs),
                           correct_outputs=format_fields(gold))
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
        except BudgetExhausted:
            raise
        except Exception as exc:  # the metric is user code: a demonstration it cannot score is not used
            self.ctx.report.counters.metric_errors += 1
            logger.warning("ABO [{}]: the metric raised {} on a demonstration; not used", self.name, exc)
            return False

    def _has_gold(self, example: dspy.Example) -> bool:
        return any(name in example.labels() for name in self.final_fields)

    # ------------------------------------------------------------------------- rounds 1, 2 ...
    def _refine(self, arm: _Arm, round_: int, lineage: int, minibatch: list[dspy.Example]) -> _Arm:
        """One round on one lineage: localise failing steps, split the most frequent, keep it if better."""
        label = self._label(round_)
        outcomes = self.ctx.scorer.evaluate(self.ctx.state_of(arm.record), minibatch, desc=f"round {round_}")
        parent_score = self.ctx.record_outcomes(arm.record, outcomes, label)
        prefix = f"{self.key}/round{round_}/lineage{lineage}"
        findings, n_errors = self._diagnose(arm, minibatch, outcomes, prefix)
        histogram = Counter(step for step, _ in findings)
        if not histogram:
            logger.info("ABO [{}] round {}: no localised error among {} (minibatch {:.3f}); procedure unchanged",
                        self.name, round_, n_errors, parent_score)
            self._report(round_, lineage, None, kept=False, parent=arm, parent_score=parent_score, label=label,
                         errors=n_errors)
            return arm
        step = min(histogram, key=lambda s: (-histogram[s], s))  # most frequent; ties: the earliest step
        reasons = [reason for s, reason in findings if s == step]
        child = self._split(arm, step, reasons, prefix, round_)
        kept = child is not None and self._accept(arm, child, minibatch, label)
        self._report(round_, lineage, child, kept=kept, parent=arm, parent_score=parent_score, label=label,
                     errors=n_errors, histogram=histogram, failing_step=step, reasons=reasons)
        logger.info("ABO [{}] round {}: failing steps {} -> split step {}; minibatch {:.3f} -> {}; {}", self.name,
                    round_, dict(sorted(histogram.items())), step, parent_score,
                    "n/a" if child is None else f"{child.record.scores.get(label, 0.0):.3f}",
                    "kept" if kept else "parent kept")
        return child if kept and child is not None else arm

    def _diagnose(self, arm: _Arm, minibatch: list[dspy.Example], outcomes: list[Outcome],
                  prefix: str) -> tuple[list[tuple[int, str]], int]:
        """(failing step, reason) for a sample of the arm's errors on the minibatch, and the number of errors."""
        errors = [(ex, o) for ex, o in zip(minibatch, outcomes)
                  if o.score < CORRECT_SCORE and not o.failed and self._trace_entry(o) is not None]
        sample = self.ctx.rng.sample(errors, min(self.opt.errors_per_round, len(errors)))
        findings = []
        for i, (example, outcome) in enumerate(sample):
            found = self._locate(arm, example, outcome, f"{prefix}/error{i}")
            if found is not None:
                findings.append(found)
        return findings, len(errors)

    def _locate(self, arm: _Arm, example: dspy.Example, outcome: Outcome, key: str) -> tuple[int, str] | None:
        entry = self._trace_entry(outcome) or {}
        n_steps = len(arm.procedure)
        model_output = format_fields(entry.get("outputs") or {})
        if outcome.prediction and outcome.prediction != entry.get("outputs"):
            model_output += f"\nThe program's final output:\n{format_fields(outcome.prediction)}"
        demonstration = arm.demo.render() if arm.demo else f"(none; the instruction ends: {STRICT_SENTENCE})"
        answer = self._ask(LocateFailingStep, key, validate=lambda a: step_number(a.failing_step, n_steps) is not None,
                           procedure=arm.procedure.render(), demonstration=demonstration,
                           task_input=format_fields(entry.get("inputs") or {}), model_output=model_output,
                           correct_output=format_fields(demo_to_dict(example.labels())))
        number = None if answer is None else step_number(answer.failing_step, n_steps)
        return None if number is None else (number, str(answer.reason))

    def _split(self, arm: _Arm, step: int, reasons: list[str], prefix: str, round_: int) -> _Arm | None:
        """The arm's procedure with ``step`` broken into sub-steps, and a demonstration rewritten for it."""
        answer = self._ask(SplitStep, f"{prefix}/split", temperature=self.opt.temperature,
                           validate=lambda a: parse_sub_steps(a.sub_steps) is not None, task=self.task,
                           procedure=arm.procedure.render(), step_number=step, step=arm.procedure.render_step(step),
                           failures="\n".join(f"- {reason}" for reason in reasons))
        if answer is None:
            return None
        procedure = arm.procedure.refine(step, parse_sub_steps(answer.sub_steps) or [])
        preferred = arm.demo.example_index if arm.demo else None
        demo = self._write_demo(procedure, prefix, preferred)
        return self._make_arm(procedure, demo, round_=round_, origin="refinement", parent=arm.record.id,
                              refined_step=step)

    def _accept(self, parent: _Arm, child: _Arm, minibatch: list[dspy.Example], label: str) -> bool:
        """Better on the shared minibatch, then confirmed (no worse) on the validation set."""
        if self.ctx.score(child.record, minibatch, label) <= parent.record.scores[label]:
            return False
        return self.ctx.score(child.record, self.ctx.valset, VAL) >= self.ctx.score(parent.record, self.ctx.valset, VAL)

    # --------------------------------------------------------------------------------- helpers
    def _make_arm(self, procedure: Procedure, demo: Demonstration | None, *, round_: int, origin: str,
                  parent: int | None, refined_step: int | None = None) -> _Arm:
        pstate = self.base[self.name].with_instruction(self._instruction(procedure, demo))
        pstate = pstate.with_demos([demo.as_demo(self.reasoning)] if demo else [])
        meta = {"procedure": procedure.render(), "demonstration": demo.to_dict() if demo else None,
                "refined_step": refined_step}
        record = self.ctx.add_candidate(self.base.replace(self.name, pstate), step=self.first_step + round_,
                                        origin=origin, predictor=self.name, parent=parent, meta=meta)
        return _Arm(record, procedure, demo)

    def _instruction(self, procedure: Procedure, demo: Demonstration | None) -> str:
        if demo is None:
            return f"{procedure.render()}\n\n{STRICT_SENTENCE}"
        if self.reasoning is None:
            return f"{procedure.render()}\n\nA worked example, every step carried out:\n{demo.render()}"
        return procedure.render()

    def _select(self, beam: list[_Arm]) -> CandidateRecord:
        """The beam's best on valset, unless the state this predictor started from is strictly better there."""
        best_record = self.ctx.best_by([arm.record for arm in beam], VAL)
        seed_val = self.seed.scores.get(VAL)
        if best_record is None or (seed_val is not None and seed_val > best_record.scores[VAL]):
            best_record = self.seed
        self.ctx.set_best(best_record)
        return best_record

    def _minibatch(self) -> list[dspy.Example]:
        trainset = self.ctx.trainset
        picked = self.ctx.rng.sample(range(len(trainset)), min(self.opt.minibatch_size, len(trainset)))
        return [trainset[i] for i in sorted(picked)]

    def _label(self, round_: int) -> str:
        return f"minibatch@{self.first_step + round_}"

    def _trace_entry(self, outcome: Outcome) -> dict[str, Any] | None:
        """The last call of this predictor in an outcome's trace (None if it was not called)."""
        entries = [t for t in outcome.trace if t.get("predictor") == self.name]
        return entries[-1] if entries else None

    def _ask(self, signature: type[dspy.Signature], key: str, **kwargs: Any) -> dspy.Prediction | None:
        logger.debug("ABO ask {} ({}): {}", key, signature.__name__,
                     {k: v for k, v in kwargs.items() if k not in ("validate", "temperature")})
        return self.ctx.ask(signature, key=key, **kwargs)

    def _report(self, round_: int, lineage: int | None, arm: _Arm | None, *, kept: bool, label: str,
                parent_score: float, parent: _Arm | None = None, **diagnosis: Any) -> None:
        """Append one attempt to ``report.extra["rounds"]`` (the paper's Step 0, 1, 2 ...)."""
        scores = dict(arm.record.scores) if arm else {}
        entry = {"predictor": self.name, "round": round_, "lineage": lineage,
                 "candidate": arm.record.id if arm else None,
                 "parent": parent.record.id if parent else (arm.record.parent if arm else None),
                 "procedure": arm.procedure.render() if arm else None,
                 "steps": [{"text": s.text, "sub_steps": list(s.sub_steps)} for s in arm.procedure.steps]
                 if arm else None,
                 "demonstration": arm.demo.to_dict() if arm and arm.demo else None,
                 "histogram": {str(k): v for k, v in sorted((diagnosis.pop("histogram", None) or {}).items())},
                 "scores": {"minibatch": scores.get(label), "parent_minibatch": parent_score, "val": scores.get(VAL),
                            "parent_val": parent.record.scores.get(VAL) if parent else None},
                 "kept": kept, **diagnosis}
        self.ctx.report.extra["rounds"].append(entry)
