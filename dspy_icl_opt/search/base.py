"""The contract every strategy shares: validation, budgets, seeding, the run log, resume, the report.

A strategy subclasses :class:`ICLOptimizer` and implements ``_search(ctx)``, reading like its paper:
expand candidates, score them with ``ctx.scorer``, select, repeat. Everything else (checking the
input, metering both LMs, caching scores, journaling prompt-model answers, saving the report after
every step, stopping cleanly on a budget cap, picking and saving the final program) lives here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter
from dspy.utils.exceptions import AdapterParseError

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.search.budget import Budget, BudgetExhausted, BudgetMeter, Cost, MeteredLM, collect_cost, unwrap_lm
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.fingerprint import describe_differences, lm_identity, metric_identity
from dspy_icl_opt.search.grounding import shown_example
from dspy_icl_opt.search.journal import JOURNAL_FILE, Journal, cost_entry, record_cost
from dspy_icl_opt.search.meta import MetaPromptAdapter
from dspy_icl_opt.search.plan import SearchPlan, Shape
from dspy_icl_opt.search.proposals import LENIENT_PROBLEMS, ProposalChecker
from dspy_icl_opt.search.report import PROGRAM_FILE, REPORT_FILE, CandidateRecord, OptimizationReport
from dspy_icl_opt.search.scorer import Metric, Outcome, Scorer, example_key
from dspy_icl_opt.search.surgery import ProgramState, named_predictors, read_state
from dspy_icl_opt.search.tracking import log_compile

#: Hex characters kept of a SHA-256 digest: plenty to tell runs apart, short enough to read.
_DIGEST_CHARS = 16
#: The score label of the final comparison on the valset (every strategy's choice is made on it).
VAL_LABEL = "val"
#: Where the whole program is saved (dspy.load) when the optimized state added a field to a signature.
WHOLE_PROGRAM_DIR = "program"
#: A finalist replaces the start only if its paired validation gain is at least this many standard errors.
#: 1.0, not 1.5: with 40 validation examples 1.5 asks for about +0.12 to +0.15, and on hyperbaton three runs kept
#: the start with a finalist ahead by 1.22-1.43 s.e. whose test gains were +0.06, +0.07 and +0.18 (100 test
#: examples each); the 21 rows whose finalist passed 1.5 all gained on test, and no finalist on date_understanding or
#: disambiguation_qa came within 1.0 (BENCHMARKS.md, "The final choice's threshold").
VALIDATION_Z = 1.0
#: An input value counts as shown to the prompt model when its first this many characters are in a meta-prompt:
#: APE cuts a demonstration's values at 600 characters and the joint search its solved problems at 400.
SEEN_PREFIX_CHARS = 200
_FAILURE_SCORE_HINT = "Pass the score an example gets when its program or metric raises, e.g. 0.0."
#: Below this many training examples, no validation split is held back (both roles use trainset).
MIN_EXAMPLES_TO_SPLIT = 8


def stable_int(*parts: Any) -> int:
    """A reproducible 32-bit integer from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
    return int(digest[:8], 16)  # 8 hex characters = 32 bits


def paired_gain(scores: Sequence[float], baseline: Sequence[float]) -> tuple[float, float]:
    """Mean of ``scores - baseline`` (same examples, in order) and its standard error."""
    diffs = [a - b for a, b in zip(scores, baseline)]
    n = len(diffs)
    if n == 0:
        return 0.0, 0.0
    mean = sum(diffs) / n
    if n == 1:
        return mean, 0.0
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, (variance / n) ** 0.5


def _choice_entry(start: CandidateRecord, examples: list[dspy.Example], given: list[dspy.Example], z: float,
                  reused: int) -> dict[str, Any]:
    """The report's ``final_choice`` before any validation: the rule, the examples (and how many are training
    examples beyond ``given``), the start as the choice so far."""
    fresh_n = len(examples) - reused
    rule = f"paired: mean gain > 0 and >= {z:g} standard errors over the start"
    if reused:
        rule += (f", and >= 0 on the {fresh_n} examples the finalists were not selected on" if fresh_n else
                 " (every example was one the finalists were selected on)")
    choice = {"rule": rule, "examples": len(examples), "unseen_training_examples": max(0, len(examples) - len(given)),
              "start": start.id, "contenders": [], "chosen": start.id}
    if reused:
        choice.update({"reused_examples": reused, "fresh_examples": fresh_n})
    choice["reserves_validated"] = []
    return choice


def among_passed(passed: Sequence[CandidateRecord], scores: dict[int, list[float]],
                 tiebreak: Callable[[CandidateRecord], tuple] = lambda record: ()) -> tuple[CandidateRecord, set[int]]:
    """The final choice among the finalists that passed the test against the start, and the ids level with the leader.

    The leader has the best validation mean (then ``tiebreak``, then the earliest). A finalist whose validation
    scores trail the leader's by no more than one paired standard error on the same examples is level with it:
    that lead is one or two examples' noise on a small valset. Among the level ones, ``tiebreak`` (the strategy's
    search evidence, e.g. its mean over the training examples it was ranked on) decides, then the validation
    mean, then the earliest. With no ``tiebreak`` this is the leader. On hyperbaton (split 1) Iterative-APE
    validated APE's own pick (0.65) and a variation of another candidate one example ahead (0.675, ranked below it
    in the search): by validation mean alone it took the variation, 0.70 on test against 0.78 for APE's pick.
    """
    def val(record: CandidateRecord) -> float:
        return sum(scores[record.id]) / max(1, len(scores[record.id]))

    leader = max(passed, key=lambda r: (val(r), *tiebreak(r), -r.id))
    level = [r for r in passed if r.id == leader.id or _trails_by_at_most_one_se(scores[leader.id], scores[r.id])]
    best = max(level, key=lambda r: (*tiebreak(r), val(r), -r.id))
    return best, {r.id for r in level}


#: Slack for a gain that is exactly ``z`` standard errors: p wins and q losses with p + q = (p - q) ** 2 (one win
#: and no loss; 3 and 1; 6 and 3) are exactly one standard error ahead, and without it rounding decided such a
#: comparison by the valset's size.
SE_TIE = 1e-9


def _trails_by_at_most_one_se(leader: Sequence[float], other: Sequence[float]) -> bool:
    gain, se = paired_gain(leader, other)
    return gain <= se + SE_TIE  # one example ahead and the rest alike is exactly one standard error


@dataclass(frozen=True)
class PairedTest:
    """The final choice's test of one contender against the start (:func:`paired_test`)."""

    gain: float
    se: float
    fresh_gain: float | None  # the gain on the examples after the first ``reused`` (None: no such split)
    passed: bool


def paired_test(scores: Sequence[float], baseline: Sequence[float], z: float = VALIDATION_Z,
                reused: int = 0) -> PairedTest:
    """The final choice's rule: the paired mean gain over ``baseline`` is above 0 and at least ``z`` standard
    errors; when the first ``reused`` examples are ones the contender was selected on (and some are not), its
    gain on the rest must also not be negative."""
    gain, se = paired_gain(scores, baseline)
    passed = gain > 0 and gain >= z * se - SE_TIE
    fresh_gain = None
    if 0 < reused < min(len(scores), len(baseline)):
        fresh_gain = paired_gain(scores[reused:], baseline[reused:])[0]
        passed = passed and fresh_gain >= 0
    return PairedTest(gain, se, fresh_gain, passed)


def lm_temperature(lm: dspy.BaseLM | None) -> float | None:
    """The sampling temperature ``lm`` was built with (``dspy.LM(..., temperature=0.3)``, behind any meter), or
    ``None`` when it sets none."""
    value = (getattr(unwrap_lm(lm), "kwargs", None) or {}).get("temperature")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_examples(name: str, examples: Any, student: dspy.Module) -> list[dspy.Example]:
    """Validate a trainset/valset: a non-empty list of dspy.Example with inputs the program needs."""
    if not isinstance(examples, Sequence) or isinstance(examples, (str, bytes)):
        raise TypeError(f"`{name}` must be a list of dspy.Example, but got {type(examples).__name__}. "
                        "Build it with [dspy.Example(...).with_inputs('question'), ...].")
    if not examples:
        raise ValueError(f"`{name}` must contain at least one example, but it is empty. "
                         "Pass labeled dspy.Example objects.")
    required = _required_inputs(student)
    for i, example in enumerate(examples):
        if not isinstance(example, dspy.Example):
            raise TypeError(f"`{name}[{i}]` must be a dspy.Example, but got {type(example).__name__}. "
                            "Wrap it: dspy.Example(**row).with_inputs(...).")
        if example._input_keys is None:
            raise ValueError(f"`{name}[{i}]` has no input fields marked. "
                             "Call .with_inputs('question', ...) on every example.")
        missing = [k for k in required if k not in example.inputs()]
        if missing:
            raise ValueError(f"`{name}[{i}]` must provide the program's input field(s) {missing}, but its inputs "
                             f"are {sorted(example.inputs().keys())}. Add them or fix .with_inputs(...).")
    return list(examples)


def _required_inputs(student: dspy.Module) -> list[str]:
    """The inputs the program's forward() cannot do without (a bare Predict: its signature inputs)."""
    if isinstance(student, dspy.Predict):
        return list(student.signature.input_fields)
    params = list(inspect.signature(type(student).forward).parameters.values())[1:]  # without self
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


class SearchContext:
    """What a strategy works with during one ``compile`` call."""

    def __init__(self, *, optimizer: ICLOptimizer, student: dspy.Module, trainset: list[dspy.Example],
                 valset: list[dspy.Example], task_lm: MeteredLM, prompt_lm: MeteredLM, meter: BudgetMeter,
                 journal: Journal, report: OptimizationReport, log_dir: Path | None,
                 temperature: float | None = None) -> None:
        self.optimizer = optimizer
        #: the temperature meta-prompts are sampled at (see :meth:`ICLOptimizer.prompt_temperature`)
        self.temperature = temperature
        self.student = student
        self.trainset = trainset
        self.valset = valset
        self.task_lm = task_lm
        self.prompt_lm = prompt_lm
        self.meter = meter
        self.journal = journal
        self.report = report
        self.log_dir = log_dir
        self.rng = random.Random(optimizer.seed)
        self.predictors = named_predictors(student)
        self.initial_state = read_state(student)
        self._outputs = frozenset(field for _, p in self.predictors for field in p.signature.output_fields)
        self.scorer = Scorer(student, optimizer.metric, task_lm=task_lm, meter=meter, journal=journal,
                             counters=report.counters, num_threads=optimizer.num_threads,
                             failure_score=optimizer.failure_score, progress=optimizer.progress,
                             name=type(optimizer).__name__, steps=lambda: self.plan.steps if self.plan else None)
        self._by_key: dict[str, CandidateRecord] = {}
        self._t0 = time.perf_counter()
        #: how many of the valset's examples the final choice uses (the plan may cut them to fit the cap)
        self.validation_examples = len(valset)
        self.plan: SearchPlan | None = None
        self._checker: ProposalChecker | None = None
        self._tally: dict[str, int] | None = None  # the ask under way's tally (see ask), which its validator adds to
        #: the input texts of every meta-prompt asked in this run (a training example found in one was seen)
        self._asked: list[str] = []

    # ----------------------------------------------------------------------------- candidates
    def add_candidate(self, state: ProgramState, *, step: int, origin: str, predictor: str | None = None,
                      parent: int | None = None, meta: dict[str, Any] | None = None) -> CandidateRecord:
        """Register a candidate; a state seen before returns its existing record."""
        key = state.key()
        if key in self._by_key:
            return self._by_key[key]
        record = CandidateRecord(id=len(self.report.candidates), step=step, origin=origin, predictor=predictor,
                                 parent=parent, state=state.to_dict(), meta=meta or {})
        self.report.candidates.append(record)
        self._by_key[key] = record
        return record

    def state_of(self, record: CandidateRecord) -> ProgramState:
        return ProgramState.from_dict(record.state)

    def best_state(self) -> ProgramState:
        """The state the run returns as it stands: the report's best, else the program as given."""
        return ProgramState.from_dict(self.report.best_state) if self.report.best_state else self.initial_state

    def score(self, record: CandidateRecord, examples: Sequence[dspy.Example], label: str) -> float:
        """Mean score of a candidate on ``examples``, stored in the record under ``label``."""
        outcomes = self.scorer.evaluate(self.state_of(record), examples, desc=f"{label} #{record.id}")
        return self.record_outcomes(record, outcomes, label)

    def record_outcomes(self, record: CandidateRecord, outcomes: list[Outcome], label: str) -> float:
        mean = sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0
        record.scores[label] = mean
        record.n_scored[label] = len(outcomes)
        return mean

    def set_best(self, record: CandidateRecord) -> None:
        self.report.best_candidate = record.id
        self.report.best_state = record.state
        self.report.best_scores = dict(record.scores)

    def best_by(self, records: Sequence[CandidateRecord], label: str) -> CandidateRecord | None:
        """The record with the highest score under ``label`` (earliest wins ties: determinism)."""
        scored = [r for r in records if label in r.scores]
        return max(scored, key=lambda r: (r.scores[label], -r.id)) if scored else None

    def choose_by_validation(self, finalists: Sequence[CandidateRecord], *,
                             tiebreak: Callable[[CandidateRecord], tuple] = lambda record: (),
                             examples: Sequence[dspy.Example] | None = None, z: float = VALIDATION_Z,
                             reserves: Sequence[CandidateRecord] = (), reused: int = 0) -> CandidateRecord:
        """Validate the program as it was given and ``finalists``, and keep a finalist only if it is surely better.

        The start is validated first (its pairs are often cached) and is the result unless a finalist beats it
        on the same validation examples by a paired test: mean difference above zero and at least
        ``VALIDATION_Z`` paired standard errors (:func:`paired_gain`). Among the finalists that pass, the best
        mean leads; those it leads by no more than one paired standard error are level with it, and among them
        ``tiebreak`` decides, then the mean, then the earliest (:func:`among_passed`). The validation examples
        are the first ``validation_examples`` of the valset (all of it unless the plan cut them), or more when
        the budget left pays for them (:meth:`_validation_size`): the rest of the valset, then the training
        examples the search never used (:meth:`unseen_training_examples`), so task calls a search could not
        spend (e.g. when the prompt-model cap ended it) make the choice surer (only under a task-call cap:
        without one, the valset is the validation). ``reserves``, next-best candidates in rank order, are
        validated after the finalists on the same examples, each only if the task calls left under a cap pay for
        its pairs not scored yet. A strategy may pass its own ``examples`` (in the order to use them; e.g.
        examples its search never ranked on) and a larger ``z`` (e.g. when the finalists were selected on these
        same examples), or say with ``reused`` that the first ``reused`` of its ``examples`` are ones the
        finalists were selected on: a finalist then passes only if it also does not lose on the rest (paired
        mean gain >= 0 on the examples no selection saw), so an edge that exists only where it was picked does
        not carry it, while the reused examples (cached for the finalists, so free) still add power. The best so
        far is set after every validation, so a budget that ends here keeps what was validated;
        `BudgetExhausted` propagates. What the choice was based on goes to ``report.extra["final_choice"]``.
        """
        start = self.add_candidate(self.initial_state, step=0, origin="seed")
        contenders = [start, *(record for record in finalists if record.id != start.id)]
        given = list(self.valset if examples is None else examples)
        reserves, examples = self._validation_pool(contenders, reserves, given, own_examples=examples is not None)
        reused = min(max(0, reused), len(examples))
        choice = _choice_entry(start, examples, given, z, reused)
        self.report.extra["final_choice"] = choice
        self.set_best(start)
        best = self._validate_in_turn(start, contenders, reserves, examples, choice, tiebreak, z, reused)
        logger.info("Final choice on {} validation examples: candidate {} (val {:.3f}; the start {:.3f})",
                    len(examples), best.id, best.scores[VAL_LABEL], start.scores[VAL_LABEL])
        return best

    def _validation_pool(self, contenders: list[CandidateRecord], reserves: Sequence[CandidateRecord],
                         given: list[dspy.Example], *, own_examples: bool
                         ) -> tuple[list[CandidateRecord], list[dspy.Example]]:
        """The reserves worth validating (none without a task cap: nothing left to spend; none twice; no
        contender) and the validation examples: ``given``, then the unseen training examples when the calls
        left pay for more than ``given`` and the strategy did not pass its own examples, cut to what the
        budget pays for (:meth:`_validation_size`)."""
        capped = self.meter.remaining_calls("task") is not None
        taken, unique = {record.id for record in contenders}, []
        for reserve in reserves if capped else ():
            if reserve.id not in taken:
                taken.add(reserve.id)
                unique.append(reserve)
        beyond = capped and self._validation_size(len(contenders), len(given) + len(self.trainset)) > len(given)
        fresh = self.unseen_training_examples([*contenders, *unique]) if not own_examples and beyond else []
        pool = given + fresh
        return unique, pool[: self._validation_size(len(contenders), len(pool))]

    def _validate_in_turn(self, start: CandidateRecord, contenders: list[CandidateRecord],
                          reserves: list[CandidateRecord], examples: list[dspy.Example], choice: dict[str, Any],
                          tiebreak: Callable[[CandidateRecord], tuple], z: float, reused: int) -> CandidateRecord:
        """Score the start, the finalists the calls left pay for, then the affordable reserves on ``examples``,
        each paired with the start; the best of those that pass (:func:`among_passed`) is set after each one,
        so a budget that ends here keeps what was validated. Rows go to ``choice["contenders"]``."""
        scores: dict[int, list[float]] = {}
        table, winners, best = choice["contenders"], [], start
        for record in self._validation_queue(start, contenders, reserves, examples, choice):
            outcomes = self.scorer.evaluate(self.state_of(record), examples, desc=f"{VAL_LABEL} #{record.id}")
            self.record_outcomes(record, outcomes, VAL_LABEL)
            scores[record.id] = [o.score for o in outcomes]
            test = paired_test(scores[record.id], scores[start.id], z, reused)
            passed = record.id != start.id and test.passed
            row = {"candidate": record.id, "val": record.scores[VAL_LABEL], "gain": round(test.gain, 6),
                   "se": round(test.se, 6)}
            if test.fresh_gain is not None:
                row["fresh_gain"] = round(test.fresh_gain, 6)
            row["passed"] = passed
            table.append(row)
            if passed:
                winners.append(record)
                best, level_ids = among_passed(winners, scores, tiebreak)
                for entry in table:
                    if entry["passed"]:
                        entry["level_with_leader"] = entry["candidate"] in level_ids
            choice["chosen"] = best.id
            self.set_best(best)
            self.checkpoint()
        return best

    def _validation_queue(self, start: CandidateRecord, contenders: list[CandidateRecord],
                          reserves: list[CandidateRecord], examples: list[dspy.Example],
                          choice: dict[str, Any]) -> Iterator[CandidateRecord]:
        """The start, then each finalist the task calls left pay for (one they cannot is skipped, not the end:
        a later one may be cached, e.g. a stored study's trials of this run), then each reserve that the calls
        left pay for in full (recorded in ``choice["reserves_validated"]``)."""
        def affordable(record: CandidateRecord) -> bool:
            remaining = self.meter.remaining_calls("task")
            needed = self.scorer.unscored(self.state_of(record), examples) * len(self.predictors)
            return remaining is None or remaining >= needed

        yield start
        for record in contenders[1:]:
            if affordable(record):
                yield record
            else:
                choice.setdefault("finalists_unaffordable", []).append(record.id)
                logger.info("Final choice: the task calls left cannot validate candidate {}; skipped", record.id)
        for reserve in reserves:
            if affordable(reserve):
                choice["reserves_validated"].append(reserve.id)
                yield reserve

    def unseen_training_examples(self, contenders: Sequence[CandidateRecord] = ()) -> list[dspy.Example]:
        """Training examples the search never used: scored by no candidate, shown to the prompt model in no
        meta-prompt, a demonstration in none of ``contenders``, and not in the valset. They are as fresh as
        the valset for every contender, so a final choice the budget left can pay more for extends the
        valset with them (in training order) instead of leaving task calls unspent."""
        held = {example_key(ex) for ex in self.valset}
        seen = " ".join(" ".join([*self._asked, *(text for r in contenders for text in _strings(r.state))]).split())

        def texts(example: dspy.Example) -> list[str]:
            return [text for text in (" ".join(str(value).split()) for value in example.inputs().values()) if text]

        # an input value many examples share (e.g. the same options "(A) a (B) b") tells none of them apart:
        # an example was seen when one of its own values was
        counts = Counter(text for example in [*self.trainset, *self.valset] for text in set(texts(example)))
        fresh = []
        for example in self.trainset:
            key = example_key(example)
            if key in held or key in self.scorer.scored_examples:
                continue
            own = [text for text in texts(example) if counts[text] == 1] or texts(example)
            if any(text[:SEEN_PREFIX_CHARS] in seen for text in own):  # meta-prompts show long values cut short
                continue
            held.add(key)
            fresh.append(example)
        return fresh

    def _validation_size(self, contenders: int, available: int | None = None) -> int:
        """The planned validation examples, or more when the budget left pays for them (fewer finalists
        than planned, or a search that spent less): every saved call makes the final choice surer.
        ``available``: how many examples there are to choose from (default: the valset's)."""
        available = len(self.valset) if available is None else available
        size = min(self.validation_examples, available)
        remaining = self.meter.remaining_calls("task")
        if remaining is None:
            return available
        affordable = remaining // max(1, contenders * len(self.predictors))
        return max(size, min(available, affordable))

    # ------------------------------------------------------------------------- prompt model
    def proposal_problem(self, text: str, *, allowed: str = "", signature: type[dspy.Signature] | None = None,
                         record: bool = False) -> str | None:
        """Why a proposed instruction is not one (the meta-prompt echoed, a bare answer, a refusal), or ``None``;
        see :mod:`dspy_icl_opt.search.proposals`. Always ``None`` when the optimizer was built with
        ``check_proposals=False``; a copied example, a question or a text about one example is a problem only with
        ``check_proposals="strict"``. ``record``: count the reason in the report (``extra["rejected_proposals"]``,
        and the admitted copies, questions and texts about one example in ``extra["admitted_proposals"]``); a
        strategy records once per answer, in its validator."""
        checker = self._proposal_checker()
        if checker is None:
            return None
        reason = checker.problem(text, allowed=allowed, meta_texts=meta_prompt_texts(signature, fields=True))
        # scored anyway unless strict: a question or a copy can be the best prompt (see the proposals module)
        admitted = reason in LENIENT_PROBLEMS and self.optimizer.check_proposals != "strict"
        if reason is not None and record:
            self._add_tally({}, {f"{'admitted_proposals' if admitted else 'rejected_proposals'}/{reason}": 1},
                            self._tally)
            logger.debug("Proposal {} ({}): {!r}", "admitted" if admitted else "rejected", reason, text[:200])
        return None if admitted else reason

    def shown_example(self, example: dspy.Example) -> dspy.Example:
        """``example`` as the meta-prompts show it: its inputs and the labels the program writes (see
        :func:`dspy_icl_opt.search.grounding.shown_example`); scoring always uses the example itself."""
        return shown_example(example, self._outputs)

    def read_proposal(self, text: str | None, signature: type[dspy.Signature] | None = None, *,
                      allowed: str = "", record: bool = False) -> str | None:
        """A prompt-model answer read as an instruction: the sentences that restate the asking meta-prompt
        dropped (:meth:`without_meta_sentences`), then checked (:meth:`proposal_problem`). The text kept, or
        ``None`` when there is none or it is not an instruction. ``signature``: the meta-prompt asked;
        ``allowed``: wording the answer may repeat (the instruction it rewrites, the ones it was shown);
        ``record``: count the reason for a refusal in the report (once per answer)."""
        if not text:
            return None
        text = self.without_meta_sentences(text, signature, allowed=allowed)  # never empties a non-empty text
        if self.proposal_problem(text, allowed=allowed, signature=signature, record=record) is not None:
            return None
        return text

    def without_meta_sentences(self, text: str, signature: type[dspy.Signature] | None = None, *,
                               allowed: str = "") -> str:
        """``text`` without the sentences that restate the asking meta-prompt's instructions (see
        :meth:`ProposalChecker.without_meta_sentences`). Unchanged when built with ``check_proposals=False``, and
        when every sentence is the meta-prompt's: :meth:`proposal_problem` then names that ("copies the
        meta-prompt") and counts it. ``allowed``: as for :meth:`proposal_problem`."""
        checker = self._proposal_checker()
        if checker is None:
            return text
        return checker.without_meta_sentences(text, meta_texts=meta_prompt_texts(signature), allowed=allowed) or text

    def _proposal_checker(self) -> ProposalChecker | None:
        """The run's checker, built on first use; ``None`` when built with ``check_proposals=False``."""
        if not self.optimizer.check_proposals:
            return None
        if self._checker is None:
            self._checker = ProposalChecker.for_program(self.student, self.trainset)
        return self._checker

    def ask(self, signature: type[dspy.Signature], *, key: str, temperature: float | None = None,
            max_tokens: int | None = None, validate: Callable[[dspy.Prediction], bool] | None = None,
            max_attempts: int | None = None, **inputs: Any) -> dspy.Prediction | None:
        """One answer of the prompt model to a meta-prompt, journaled under ``key``.

        Unparsable, empty (``validate`` false) or failed answers are retried up to the optimizer's
        ``max_retries`` with a fresh sample, then counted and skipped (``None``). ``max_attempts``
        (at least 1) lowers the tries of this ask, so a phase of a search that has a share of the
        prompt calls cannot spend a later phase's share on retries.
        """
        tries = self.optimizer.max_retries + 1 if max_attempts is None else max(1, min(
            self.optimizer.max_retries + 1, max_attempts))
        self._asked.append(" ".join(str(value) for value in inputs.values()))
        record, replay_cost = self.journal.get("ask", key)
        stats = self.report.extra.setdefault("meta_prompts", {}).setdefault(
            signature.__name__, {"answers": 0, "usable": 0, "unusable": 0})
        # what this ask added to the report, journaled with it: a resumed run's report counts the replayed asks too
        tally = {name: int(value) for name, value in ((record or {}).get("tally") or {}).items()}
        if replay_cost is not None:  # the first read of a replayed record
            if replay_cost.calls:
                self.meter.charge("prompt", replay_cost)
            self._add_tally(stats, tally)
        if record is not None and not record.get("incomplete"):
            return dspy.Prediction(**record["outputs"]) if record.get("outputs") is not None else None
        first = int(record.get("attempts", 0)) if record else 0  # an interrupted ask goes on where it stopped
        spent = record_cost(record)

        def unfinished(attempts: int) -> None:  # a resume goes on with try number ``attempts``
            self.journal.put("ask", key, {"outputs": None, "incomplete": True, "attempts": attempts,
                                          "cost": cost_entry(spent), "tally": tally})

        answer = None
        for attempt in range(first, tries):
            try:
                answer = self._ask_once(signature, key, attempt, temperature, max_tokens, inputs, spent, tally)
            except (BudgetExhausted, RunInterrupted):  # a cap or an outage: the ask goes on when the run resumes
                unfinished(attempt)
                raise
            self._add_tally(stats, {"answers": 1}, tally)
            outer, self._tally = self._tally, tally  # what the validator records goes into this ask's tally
            try:
                usable = answer is not None and (validate is None or validate(answer))
            finally:
                self._tally = outer
            if usable:
                self._add_tally(stats, {"usable": 1}, tally)
                break
            self._add_tally(stats, {"unusable": 1}, tally)
            if answer is not None:
                self._add_tally(stats, {"unparsable_answers": 1}, tally)
                logger.debug("Answer to {} rejected by its validator: {}", key, answer)
            answer = None
            if attempt + 1 < tries:  # a kill before the next try's answer resumes with that try, not this one
                unfinished(attempt + 1)
        outputs = None if answer is None else {k: answer[k] for k in answer.keys()}
        self.journal.put("ask", key, {"outputs": outputs, "cost": cost_entry(spent), "tally": tally})
        if answer is None:
            logger.warning("No usable prompt-model answer for {} after {} tries; skipped", key, tries)
        return answer

    def _add_tally(self, stats: dict[str, int], counts: dict[str, int], tally: dict[str, int] | None = None) -> None:
        """Add ``counts`` to the report (a meta-prompt's ``stats``, the run's counters, or ``extra[kind][reason]``
        for a name ``kind/reason``) and to an ask's ``tally``."""
        for name, n in counts.items():
            kind, slash, reason = name.partition("/")
            if slash:
                counted = self.report.extra.setdefault(kind, {})
                counted[reason] = counted.get(reason, 0) + n
            elif name in stats:
                stats[name] += n
            elif hasattr(self.report.counters, name):
                setattr(self.report.counters, name, getattr(self.report.counters, name) + n)
            if tally is not None:
                tally[name] = tally.get(name, 0) + n

    def _ask_once(self, signature: type[dspy.Signature], key: str, attempt: int, temperature: float | None,
                  max_tokens: int | None, inputs: dict[str, Any], spent: Cost,
                  tally: dict[str, int]) -> dspy.Prediction | None:
        """One sample; a sample that met a fault (no answer) is asked again, never counted as a failed answer."""
        faults = 0
        while True:
            try:
                return self._ask_call(signature, key, attempt, temperature, max_tokens, inputs, spent, tally)
            except LMFault as fault:
                self._add_tally({}, {"lm_faults": 1}, tally)
                logger.warning("No answer from the prompt model for {} ({}); asking again", key, fault.cause)
                self.meter.faults.retry(faults, fault)
                faults += 1

    def _ask_call(self, signature: type[dspy.Signature], key: str, attempt: int, temperature: float | None,
                  max_tokens: int | None, inputs: dict[str, Any], spent: Cost,
                  tally: dict[str, int]) -> dspy.Prediction | None:
        config: dict[str, Any] = {}
        if temperature is not None:
            config["temperature"] = temperature
        if max_tokens is not None:
            config["max_tokens"] = max_tokens
        if attempt > 0 or (temperature or 0) > 0:
            # the sample depends on the journal key, never on how many calls came before (exact replay)
            config["rollout_id"] = config["seed"] = stable_int(self.optimizer.seed, key, attempt)
        with collect_cost() as cost:
            try:
                with dspy.context(lm=self.prompt_lm, adapter=MetaPromptAdapter()):
                    answer = dspy.Predict(signature)(**inputs, config=config)
                if cost.fault is not None:  # a fault swallowed on the way: no answer is not an answer
                    raise cost.fault
                return answer
            except (BudgetExhausted, LMFault, RunInterrupted):
                raise
            except AdapterParseError as exc:
                if cost.fault is not None:
                    raise cost.fault from exc
                self._add_tally({}, {"unparsable_answers": 1}, tally)
                logger.debug("Unparsable prompt-model answer for {}: {}", key, exc)
            except Exception as exc:  # an answer the program could not use: counted, never fatal
                if cost.fault is not None:
                    raise cost.fault from exc
                self._add_tally({}, {"prompt_model_errors": 1}, tally)
                logger.warning("Prompt model failed on {}: {}: {}", key, type(exc).__name__, exc)
            finally:
                spent.add(cost.calls, cost.tokens)
        return None

    # ------------------------------------------------------------------------------ budget
    @contextmanager
    def search_phase(self, *, validation_calls: int) -> Iterator[None]:
        """Run the search part of a strategy so that its final validation keeps its budget.

        The task calls ``validation_calls`` are held back while the block runs (up to what is left), and under
        a task token cap their tokens too, at the mean tokens per task call so far
        (:meth:`~dspy_icl_opt.search.budget.BudgetMeter.hold_back_tokens`); a task or prompt budget running out
        inside the block ends the block, not the run: the strategy then validates what it found.
        """
        remaining = self.meter.remaining_calls("task")
        held = min(validation_calls, remaining) if remaining is not None else 0
        if held:
            self.meter.reserve("task", held)
        self.meter.hold_back_tokens("task", validation_calls)
        try:
            yield
        except BudgetExhausted as exc:
            self.report.stopped_by_budget = True
            logger.info("{} stopped searching ({}); validating what was found", self.report.optimizer, exc)
        finally:
            if held:
                self.meter.release("task", held)
            self.meter.release_tokens("task", validation_calls)

    # ----------------------------------------------------------------------------- progress
    def plan_against_spending(self) -> None:
        """Put the plan's projection beside what the run did in ``report.extra["plan_vs_actual"]``."""
        if self.plan is None:
            return
        spent = self.meter.snapshot()
        self.report.extra["plan_vs_actual"] = {
            "steps": {"planned": self.plan.steps, "run": self.report.steps_completed},
            "task_calls": {"projected": self.plan.task_calls, "spent": spent["task"].calls,
                           "cap": self.plan.shape.task_cap},
            "prompt_calls": {"projected": self.plan.prompt_calls, "spent": spent["prompt"].calls,
                             "cap": self.plan.shape.prompt_cap}}

    def checkpoint(self, step: int | None = None) -> None:
        """Record progress and spending, and rewrite the report (atomically) if there is a log dir."""
        if step is not None:
            self.report.steps_completed = max(self.report.steps_completed, step)
        self.report.spent = self.meter.snapshot()
        self.report.timings["elapsed_s"] = round(time.perf_counter() - self._t0, 3)
        if self.log_dir is not None:
            self.report.save(self.log_dir / REPORT_FILE)


class ICLOptimizer(Teleprompter):
    """Base class of every strategy. See the module docstring for what it takes care of.

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float, higher is better.
        task_model: the LM that runs the program (default: ``dspy.settings.lm``).
        prompt_model: the LM that writes instructions (default: the task model).
        budget: caps on calls/tokens per model: a :class:`Budget`, a dict, or a preset name.
        seed: seeds every random choice; the same seed and cached LMs give the same report.
        num_threads: examples evaluated in parallel.
        log_dir: where the journal, report and compiled program are written; a run given the
            same ``log_dir`` again resumes (see ``compile(resume=...)``).
        failure_score: the score of an example whose program or metric raised.
        max_retries: extra tries for an unparsable or failed prompt-model answer.
        progress: show progress bars.
        check_proposals: reject a proposed instruction that cannot be one before it costs task calls (the
            meta-prompt echoed, a bare answer, code, a refusal: see :mod:`dspy_icl_opt.search.proposals`);
            rejected answers count as unusable and are asked again. An example copied back, a question or a
            text about one example is scored (it can be the best prompt a small model answers to) and counted
            in the report; ``"strict"`` rejects those too, ``False`` checks nothing.
    """

    #: The temperature a strategy with a ``temperature`` setting samples its prompt model at when neither that
    #: setting nor the prompt LM sets one (``None``: the strategy has no such setting).
    default_temperature: float | None = None

    def __init__(self, metric: Metric, *, task_model: dspy.BaseLM | None = None,
                 prompt_model: dspy.BaseLM | None = None, budget: Budget | dict[str, Any] | str | None = None,
                 seed: int = 0, num_threads: int = 1, log_dir: str | Path | None = None,
                 failure_score: float = 0.0, max_retries: int = 2, progress: bool = True,
                 check_proposals: bool | str = True) -> None:
        super().__init__()
        if not callable(metric):
            raise TypeError(f"`metric` must be callable as metric(example, prediction, trace=None), but got "
                            f"{type(metric).__name__}. Pass a function.")
        for name, lm in (("task_model", task_model), ("prompt_model", prompt_model)):
            if lm is not None and not isinstance(lm, dspy.BaseLM):
                raise TypeError(f"`{name}` must be a dspy.BaseLM (e.g. dspy.LM('openai/gpt-4o-mini') or "
                                f"dspy_icl_opt.lm.resolve_lm('embedded')), but got {type(lm).__name__}.")
        check_int("seed", seed, minimum=0)
        check_int("num_threads", num_threads, minimum=1)
        check_int("max_retries", max_retries, minimum=0)
        if not isinstance(check_proposals, bool) and check_proposals != "strict":
            raise TypeError(f"`check_proposals` must be True, False or 'strict', but got "
                            f"{type(check_proposals).__name__} {check_proposals!r}. Pass False to score every "
                            "proposal the prompt model writes, 'strict' to turn down copied examples and questions too.")
        self.check_proposals = check_proposals
        self.metric = metric
        self.task_model = task_model
        self.prompt_model = prompt_model
        self.budget = Budget.coerce(budget)
        self.seed = seed
        self.num_threads = num_threads
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"`log_dir` must be a folder path (str or pathlib.Path) or None, but got "
                            f"{type(log_dir).__name__} {log_dir!r}. Pass e.g. log_dir='runs/opro'.")
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.failure_score = check_number("failure_score", failure_score, hint=_FAILURE_SCORE_HINT)
        self.max_retries = max_retries
        self.progress = progress
        self.report_: OptimizationReport | None = None

    # ------------------------------------------------------------------ for subclasses
    def _params(self) -> dict[str, Any]:
        """The strategy's parameters, as written into the report (and checked on resume)."""
        return {}

    def _search(self, ctx: SearchContext) -> None:
        raise NotImplementedError

    def _plan(self, shape: Shape) -> SearchPlan | None:
        """The strategy's schedule for ``shape`` (no LM call); ``None`` if it does not plan."""
        return None

    def _shape(self, predictors: list[tuple[str, dspy.Predict]], trainset: list[dspy.Example],
               valset: list[dspy.Example]) -> Shape:
        """What the plan is made for; a strategy whose first step depends on the data adds what it reads there."""
        return Shape.of(self.budget, len(trainset), len(valset), len(predictors))

    def prompt_temperature(self, prompt_lm: dspy.BaseLM | None) -> float | None:
        """The temperature the meta-prompts go out at: the strategy's ``temperature`` when it is given, else the
        prompt LM's own when it was built with one, else :attr:`default_temperature`. A temperature the user
        wrote, on the optimizer or on the prompt LM, is never replaced by a default. With no prompt model the
        task model writes the proposals too, at the default: its own temperature is for its answers."""
        given = getattr(self, "temperature", None)
        if given is not None:
            return float(given)
        own = lm_temperature(prompt_lm)
        return own if own is not None else self.default_temperature

    # ------------------------------------------------------------------------------- plan
    def plan(self, student: dspy.Module, *, trainset: list[dspy.Example],
             valset: list[dspy.Example] | None = None) -> SearchPlan:
        """How ``compile`` with the same arguments would spend the budget, computed without any LM call.

        Returns:
            A :class:`~dspy_icl_opt.search.plan.SearchPlan`: steps, per-step sizes and the projected
            task and prompt calls per phase (``print(plan.render())``).

        Example:
            >>> # print(OPRO(metric, budget={"max_task_calls": 400}).plan(program, trainset=train).render())
        """
        named = named_predictors(student)
        trainset = check_examples("trainset", trainset, student)
        trainset, valset = self._split(trainset, valset, student)
        plan = self._planned(self._shape(named, trainset, valset))
        if plan is None:
            raise NotImplementedError(f"{type(self).__name__} does not plan its search ahead.")
        return plan

    def _planned(self, shape: Shape) -> SearchPlan | None:
        """:meth:`_plan`, with what the prompt-call projection leaves out: answers that are asked again."""
        plan = self._plan(shape)
        if plan is not None and plan.prompt_calls and self.max_retries:
            most = plan.prompt_calls * (1 + self.max_retries)
            if shape.prompt_cap is not None:
                most = min(most, shape.prompt_cap)
            if most > plan.prompt_calls:
                plan.notes.append(f"an unusable prompt-model answer (unparsable, or not an instruction) is asked again "
                                  f"up to {self.max_retries} time(s): up to {most} prompt calls; the search ends "
                                  f"when the prompt cap does, and the task calls it leaves go to the final choice")
        return plan

    def _validate(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example]) -> None:
        """Extra checks a strategy needs on the data (called before any LM call)."""

    # ---------------------------------------------------------------------------- compile
    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example] | None = None,
                resume: bool | None = None, log_dir: str | Path | None = None, **kwargs: Any) -> dspy.Module:
        """Optimize ``student`` and return an optimized copy (``student`` is never modified).

        Args:
            student: the DSPy program.
            trainset: labeled examples used by the search.
            valset: examples for the final choice; by default part of ``trainset`` is held back.
            resume: continue the run journaled in ``log_dir`` (``None``: resume when one is there).
            log_dir: overrides the constructor's ``log_dir``.
        """
        if kwargs:
            raise TypeError(f"compile() got unexpected argument(s) {sorted(kwargs)}. It takes student, trainset, "
                            "valset, resume and log_dir.")
        named_predictors(student)
        trainset = check_examples("trainset", trainset, student)
        trainset, valset = self._split(trainset, valset, student)
        self._validate(student, trainset, valset)
        run_dir = Path(log_dir) if log_dir is not None else self.log_dir
        ctx = self._context(student.deepcopy(), trainset, valset, run_dir, resume)
        logger.info("{}: {} predictor(s), {} train / {} val examples, budget {}", type(self).__name__,
                    len(ctx.predictors), len(trainset), len(valset), self.budget.model_dump(exclude_none=True))
        plan = self._planned(self._shape(ctx.predictors, trainset, valset))
        if plan is not None:
            ctx.plan = plan
            ctx.validation_examples = int(plan.settings.get("validation_examples", len(valset)))
            ctx.report.extra["plan"] = plan.to_dict()
            logger.info("{}", plan.render())
        ctx.checkpoint()  # the report exists from the start, so a crash before step 1 can be resumed safely
        try:
            self._search(ctx)
            ctx.report.finished = True
        except BudgetExhausted as exc:
            ctx.report.stopped_by_budget = True
            logger.info("{} stopped: {}", type(self).__name__, exc)
        except (RunInterrupted, LMFault) as exc:  # the model stopped answering: save, then say so (never a result)
            ctx.report.interrupted = True
            self.report_ = ctx.report
            stop = exc if isinstance(exc, RunInterrupted) else RunInterrupted(exc.role, 1, str(exc.cause))
            stop.report = ctx.report
            logger.warning("{} interrupted: {}", type(self).__name__, stop)
            if stop is exc:
                raise
            raise stop from exc
        finally:
            ctx.plan_against_spending()
            ctx.checkpoint()
        program = self._finish(ctx)
        log_compile(self, ctx.report, program)  # MLflow, when mlflow.dspy.autolog(log_compiles=True) is on
        return program

    def _split(self, trainset: list[dspy.Example], valset: list[dspy.Example] | None,
               student: dspy.Module) -> tuple[list[dspy.Example], list[dspy.Example]]:
        if valset is not None:
            return trainset, check_examples("valset", valset, student)
        if len(trainset) < MIN_EXAMPLES_TO_SPLIT:
            logger.warning("Only {} training examples and no valset: the final choice uses trainset too.",
                           len(trainset))
            return trainset, list(trainset)
        order = list(range(len(trainset)))
        random.Random(self.seed).shuffle(order)
        cut = len(order) // 2
        return [trainset[i] for i in order[cut:]], [trainset[i] for i in order[:cut]]

    def _context(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example],
                 run_dir: Path | None, resume: bool | None) -> SearchContext:
        task = self.task_model or dspy.settings.lm
        if task is None:
            raise ValueError("No task model: pass `task_model=` or call dspy.configure(lm=...) first. "
                             "For the embedded model: dspy_icl_opt.lm.resolve_lm('embedded').")
        prompt = self.prompt_model or task  # an LM already metered elsewhere keeps counting there too
        # the task LM's temperature (usually 0) is for answers, not for sampling proposals: only a prompt model
        # the user passed lends its own temperature
        params, temperature = self._params(), self.prompt_temperature(self.prompt_model)
        if "temperature" in params:  # the report says the temperature used, not the setting (None: see above)
            params["temperature"] = temperature
        if self.check_proposals is not True:  # changes which proposals are scored: a resume must not mix them
            params["check_proposals"] = self.check_proposals
        report = OptimizationReport(optimizer=type(self).__name__, params=params, seed=self.seed,
                                    budget=self.budget,
                                    fingerprint=run_fingerprint(student, trainset, valset, task, prompt, self.metric,
                                                                failure_score=repr(self.failure_score),
                                                                max_retries=str(self.max_retries)))
        journal = Journal(self._prepare_dir(run_dir, resume, report))
        meter = BudgetMeter(self.budget)
        return SearchContext(optimizer=self, student=student, trainset=trainset, valset=valset,
                             task_lm=MeteredLM(task, meter, "task"), prompt_lm=MeteredLM(prompt, meter, "prompt"),
                             meter=meter, journal=journal, report=report, log_dir=run_dir, temperature=temperature)

    def _prepare_dir(self, run_dir: Path | None, resume: bool | None, report: OptimizationReport) -> Path | None:
        if run_dir is None:
            if resume:
                raise ValueError("`resume=True` needs a `log_dir` holding an earlier run. Pass log_dir=...")
            return None
        journal_path = run_dir / JOURNAL_FILE
        report_path = run_dir / REPORT_FILE
        if journal_path.exists() and resume is False:
            logger.info("resume=False: starting over in {}", run_dir)
            if report_path.exists() and _wrote_whole_program(report_path):
                _remove_whole_program(run_dir / WHOLE_PROGRAM_DIR)
            for stale in (journal_path, report_path, run_dir / PROGRAM_FILE):
                stale.unlink(missing_ok=True)
        elif journal_path.exists():
            if not report_path.exists():  # written before the first journal record: without it nothing can be checked
                raise ValueError(f"`log_dir` {run_dir} holds a journal but no {REPORT_FILE}, so it cannot be checked "
                                 "that the journal belongs to this run. Restore the report, use another log_dir, or "
                                 "pass resume=False (the CLI: --fresh) to start over there.")
            _check_same_run(run_dir, OptimizationReport.load(report_path), report)
            logger.info("Resuming the run in {}", run_dir)
        elif resume:
            raise ValueError(f"`resume=True` but {run_dir} holds no earlier run. Drop resume or fix log_dir.")
        check_writable_dir("log_dir", run_dir)
        return journal_path

    def _finish(self, ctx: SearchContext) -> dspy.Module:
        report = ctx.report
        state = ctx.best_state()
        program = ctx.scorer.build(state)
        self.report_ = report
        if ctx.log_dir is not None:
            from dspy_icl_opt.lm.soft_programs import save_program  # here: lm/ imports search/ at its top

            save_program(program, ctx.log_dir)  # a soft prompt the program carries goes beside program.json
            added = _reasoning_added(state)
            if added:  # program.json loads only into a program with that field: save the whole program too
                program.save(str(ctx.log_dir / WHOLE_PROGRAM_DIR), save_program=True)
                logger.warning("Predictor(s) {} gained a reasoning output; load {} with dspy.load(..., "
                               "allow_pickle=True), or program.json into a program that has that field",
                               added, ctx.log_dir / WHOLE_PROGRAM_DIR)
            elif (ctx.log_dir / WHOLE_PROGRAM_DIR).exists():
                logger.warning("{} is left from another run and is not this run's program (this run's is {}); "
                               "it was not removed", ctx.log_dir / WHOLE_PROGRAM_DIR, ctx.log_dir / PROGRAM_FILE)
            logger.info("Saved the compiled program and report in {}", ctx.log_dir)
        logger.info("{} done: best candidate {} with scores {}; spent {}", type(self).__name__,
                    report.best_candidate, report.best_scores,
                    {r: s.model_dump() for r, s in report.spent.items()})
        return program


def _reasoning_added(state: ProgramState) -> list[str]:
    """The predictors of ``state`` that gained a reasoning output (``_finish`` then saves the whole program)."""
    return [name for name, pstate in state.predictors if pstate.reasoning_field]


def _wrote_whole_program(report_path: Path) -> bool:
    """Whether the run whose report this is saved the whole program (see ``_reasoning_added``); ``False`` when
    the report cannot be read."""
    try:
        best = OptimizationReport.load(report_path).best_state
        return bool(best) and bool(_reasoning_added(ProgramState.from_dict(best)))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_whole_program(folder: Path) -> None:
    """Remove the files ``dspy.Module.save(..., save_program=True)`` writes there, and the folder when that empties
    it (anything else in it is left)."""
    for name in ("program.pkl", "metadata.json"):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def check_writable_dir(name: str, folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there, else a ValueError naming ``name``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"`{name}` must be a folder that can be written, but {str(folder)!r} cannot "
                         f"({exc.strerror or type(exc).__name__}). Pass another folder or fix its permissions.") from None


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like value (a program state's instructions and demonstrations)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _jsonish(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_fingerprint(student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example],
                    task_lm: dspy.BaseLM, prompt_lm: dspy.BaseLM, metric: Metric,
                    **settings: str) -> dict[str, str]:
    """What a journal's answers depend on (see :mod:`dspy_icl_opt.search.fingerprint`): a resume with another is refused.

    The models are their names with their sampling settings; the metric is its ``version`` or a digest
    of its source; ``settings`` are further strings that decide results (``failure_score`` ...).
    """

    def digest(examples: list[dspy.Example]) -> str:
        return hashlib.sha256("".join(example_key(e) for e in examples).encode()).hexdigest()[:_DIGEST_CHARS]

    return {"trainset": digest(trainset), "valset": digest(valset), "program": read_state(student).key(),
            "task_model": lm_identity(task_lm), "prompt_model": lm_identity(prompt_lm),
            "metric": metric_identity(metric), **settings}


def _check_same_run(run_dir: Path, old: OptimizationReport, new: OptimizationReport) -> None:
    mine = {"optimizer": new.optimizer, "seed": new.seed, "params": new.params, "fingerprint": new.fingerprint}
    theirs = {"optimizer": old.optimizer, "seed": old.seed, "params": old.params, "fingerprint": old.fingerprint}
    differ = sorted(k for k in mine if _jsonish(mine[k]) != _jsonish(theirs[k]))
    if differ:
        details = [f"{k} (there: {theirs[k]!s}, here: {mine[k]!s})" for k in differ if k != "fingerprint"]
        details += describe_differences(old.fingerprint, new.fingerprint) if "fingerprint" in differ else []
        raise ValueError(f"`log_dir` {run_dir} holds a run that differs in {differ}: {'; '.join(details)}. Resuming "
                         "would replay its results as this run's; it needs the same optimizer, seed, parameters, data, "
                         "program, models (and their sampling settings) and metric (its code or `version`). Use "
                         "another log_dir, or resume=False (the CLI: --fresh) to start over there.")


def meta_prompt_texts(signature: type[dspy.Signature] | None, *, fields: bool = False) -> tuple[str, ...]:
    """The asking meta-prompt's own instructions, which a proposal must not restate; with ``fields``, also its
    fields' descriptions, which the adapter shows the prompt model too (a proposal made of one, such as "what the
    training data looks like, and the answers its labels use", is the meta-prompt copied back)."""
    if signature is None:
        return ()
    descriptions = [(info.json_schema_extra or {}).get("desc") for info in signature.fields.values()] if fields else []
    return (signature.instructions, *(d for d in descriptions if isinstance(d, str) and not d.startswith("${")))
