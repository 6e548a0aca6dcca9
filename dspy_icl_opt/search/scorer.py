"""The cached scorer: evaluate a program state on examples, never the same (state, example) pair twice.

Each (ProgramState.key(), example key) pair is run once per run and then served from the cache
(the :class:`~dspy_icl_opt.search.journal.Journal`, which also survives a crash). A program that
raises, or a metric that raises, gives ``failure_score`` for that example; the error is logged and
counted in the report, never raised. :class:`~dspy_icl_opt.search.budget.BudgetExhausted` passes
through, after every finished example has been cached.

An LM that did not answer is not an outcome (see :mod:`dspy_icl_opt.search.faults`): an example whose
run met a fault is neither scored nor cached; it is run again, and when the model stays silent,
:class:`~dspy_icl_opt.search.faults.RunInterrupted` passes through like ``BudgetExhausted``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError
from tqdm.auto import tqdm

from dspy_icl_opt._log import logger
from dspy_icl_opt.search.budget import BudgetExhausted, BudgetMeter, MeteredLM, collect_cost
from dspy_icl_opt.search.faults import LMFault, RunInterrupted, is_fault
from dspy_icl_opt.search.journal import Journal, cost_entry
from dspy_icl_opt.search.placement import task_adapter
from dspy_icl_opt.search.report import Counters
from dspy_icl_opt.search.surgery import ProgramState, apply_state, demo_to_dict, named_predictors

Metric = Callable[..., Any]

#: The error prefix of an answer the adapter could not parse.
PARSE_ERROR = "parse:"
#: The error prefixes of a program that raised and of a metric that raised.
PROGRAM_ERROR = "program:"
METRIC_ERROR = "metric:"
#: The report counter of each error prefix (a replayed outcome is counted again by it).
_ERROR_COUNTERS = ((PARSE_ERROR, "task_parse_failures"), (PROGRAM_ERROR, "program_errors"),
                   (METRIC_ERROR, "metric_errors"))
#: Program copies kept ready for reuse; states are revisited in bandits and racing.
_PROGRAM_CACHE_SIZE = 64
#: Evaluations of fewer examples than this show no progress bar (it would only flicker).
_MIN_ITEMS_FOR_A_BAR = 4


def example_key(example: dspy.Example) -> str:
    """A stable digest of an example (inputs and labels)."""
    blob = json.dumps(demo_to_dict(example), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class Outcome:
    """One program state on one example."""

    score: float
    prediction: dict[str, Any] = field(default_factory=dict)
    trace: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    raw: str | None = None  # what the model wrote, when the adapter could not read it

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def unparsable(self) -> bool:
        """The model answered, but not in the format the adapter reads (an outcome worth showing an optimizer)."""
        return self.error is not None and self.error.startswith(PARSE_ERROR)


def metric_value(result: Any) -> float:
    """A metric's result as a float: bools, numbers and objects with a ``score`` (GEPA's style)."""
    if hasattr(result, "score"):
        result = result.score
    value = float(result)
    if not math.isfinite(value):
        raise ValueError(f"the metric returned {value}; it must return a finite number")
    return value


_LABEL_WORDS = {"search": "search set", "train": "training set", "val": "validation", "eval": "evaluation",
                "bootstrap": "bootstrapping demos", "procedure": "the procedure"}


def progress_label(desc: str, n: int, *, name: str = "", steps: int | None = None) -> str:
    """A scoring bar's label in words: ``"step3 #5"`` -> ``"OPRO step 3/6: scoring candidate 5 on 8 examples"``.

    Example:
        >>> progress_label("step3 #5", 8, name="OPRO", steps=6)
        'OPRO step 3/6: scoring candidate 5 on 8 examples'
        >>> progress_label("bandit_round2 #4", 1)
        'bandit round 2: scoring candidate 4 on 1 example'
        >>> progress_label("val #0", 10, name="APO")
        'APO validation: scoring candidate 0 on 10 examples'
    """
    what, _, candidate = desc.partition(" #")
    words = []
    for token in what.replace("_", " ").split():
        match = re.fullmatch(r"([a-z]+)(\d+)", token)
        words += [match.group(1), match.group(2)] if match and match.group(1) not in _LABEL_WORDS else [token]
    phrase = _LABEL_WORDS.get(" ".join(words), " ".join(words))
    if steps and len(words) >= 2 and words[-2] in ("step", "round") and words[-1].isdigit():
        phrase = f"{phrase}/{steps}"
    scoring = f"scoring candidate {candidate}" if candidate.isdigit() else "scoring"
    return f"{name + ' ' if name else ''}{phrase}: {scoring} on {n} example{'s' if n != 1 else ''}"


class Scorer:
    """Evaluates program states of one student with one metric, through the metered task LM.

    Args:
        student: the program being optimized (never modified; copies are made per state).
        metric: ``metric(example, prediction, trace=None)`` returning a bool, a number or an object
            with ``score``.
        task_lm: the metered task model.
        journal: where outcomes are cached (and replayed on resume).
        counters: the report's failure counters.
        num_threads: examples evaluated in parallel.
        failure_score: the score of an example whose program or metric raised.
        progress: show a progress bar for evaluations of more than a few examples.
        name: the strategy's name, first in the progress labels ("OPRO step 2/6: scoring candidate 5 ...").
        steps: the planned number of steps, when known (read when a bar starts).
    """

    #: what every journal key of this scorer starts with (scorers of another kind of score use their own)
    key_prefix = ""

    def __init__(self, student: dspy.Module, metric: Metric, *, task_lm: MeteredLM, meter: BudgetMeter,
                 journal: Journal, counters: Counters, num_threads: int = 1, failure_score: float = 0.0,
                 progress: bool = True, name: str = "", steps: Callable[[], int | None] | None = None) -> None:
        self.name = name
        self.steps = steps
        self.student = student
        self.metric = metric
        self.task_lm = task_lm
        self.meter = meter
        self.journal = journal
        self.counters = counters
        self.num_threads = num_threads
        self.failure_score = failure_score
        self.progress = progress
        self._programs: dict[str, tuple[dspy.Module, dict[int, str]]] = {}
        self._lock = threading.Lock()
        #: the keys (:func:`example_key`) of every example some program state was scored on in this run
        self.scored_examples: set[str] = set()

    # ----------------------------------------------------------------------------------- public
    def evaluate(self, state: ProgramState, examples: Sequence[dspy.Example], *, desc: str = "eval") -> list[Outcome]:
        """Outcomes of ``state`` on ``examples``, in order; cached pairs cost nothing.

        Raises:
            BudgetExhausted: when the task budget ran out; every example finished before is cached.
        """
        skey = state.key()
        example_keys = [example_key(ex) for ex in examples]
        self.scored_examples.update(example_keys)
        keys = [self._pair_key(skey, k) for k in example_keys]
        results: list[Outcome | None] = [self._cached(k) for k in keys]
        first: dict[str, int] = {}
        todo = [first.setdefault(k, i) for i, (k, r) in enumerate(zip(keys, results)) if r is None and k not in first]
        if todo:
            program, names = self._program(state)
            self._run_missing(program, names, examples, keys, todo, results, desc)
        for i, key in enumerate(keys):  # an example listed twice is run once
            if results[i] is None and key in first:
                results[i] = results[first[key]]
        return [r for r in results if r is not None]

    def mean(self, state: ProgramState, examples: Sequence[dspy.Example], *, desc: str = "eval") -> float:
        outcomes = self.evaluate(state, examples, desc=desc)
        return sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0

    def cached(self, state: ProgramState, example: dspy.Example) -> Outcome | None:
        """The outcome if this pair was already evaluated (replayed pairs are charged on first read)."""
        return self._cached(self._pair_key(state.key(), example_key(example)))

    def unscored(self, state: ProgramState, examples: Sequence[dspy.Example]) -> int:
        """How many of ``examples`` still cost a program run (a task call per predictor) for ``state`` in an
        uninterrupted run: not scored yet, or replayed from the journal and not charged yet. Charges and counts
        nothing, so a decision made on it (what to validate, how large a round) is the same on a resume."""
        n, skey = 0, state.key()
        for key in dict.fromkeys(example_key(example) for example in examples):  # an example listed twice runs once
            record, uncharged = self.journal.peek("score", self._pair_key(skey, key))
            n += record is None or uncharged
        return n

    def _pair_key(self, state_key: str, example_key: str) -> str:
        """The journal key of a (program state, example) pair."""
        return f"{self.key_prefix}{state_key}:{example_key}"

    def build(self, state: ProgramState) -> dspy.Module:
        """A fresh program carrying ``state`` (for callers outside the scorer)."""
        return apply_state(self.student, state)

    # ---------------------------------------------------------------------------------- private
    def _cached(self, key: str) -> Outcome | None:
        record, cost = self.journal.get("score", key)
        if record is None:
            return None
        if cost is not None:  # the first read of a replayed pair: charged, and its failure counted as when it ran
            if cost.calls:
                self.meter.charge("task", cost)
            counter = _error_counter(record.get("error"))
            if counter is not None:
                self._count(counter)
            if record.get("faults"):
                self._count("lm_faults", int(record["faults"]))
        return Outcome(record["score"], record.get("prediction") or {}, tuple(record.get("trace") or ()),
                       record.get("error"), record.get("raw"))

    def _program(self, state: ProgramState) -> tuple[dspy.Module, dict[int, str]]:
        skey = state.key()
        with self._lock:
            if skey in self._programs:
                return self._programs[skey]
        program = apply_state(self.student, state)
        names = {}
        for name, predictor in named_predictors(program):
            names[id(predictor)] = name
            if predictor.lm is not None and not isinstance(predictor.lm, MeteredLM):
                predictor.lm = MeteredLM(predictor.lm, self.meter, "task")
        with self._lock:
            if len(self._programs) >= _PROGRAM_CACHE_SIZE:
                self._programs.pop(next(iter(self._programs)))
            self._programs[skey] = (program, names)
        return program, names

    def _run_missing(self, program: dspy.Module, names: dict[int, str], examples: Sequence[dspy.Example],
                     keys: list[str], todo: list[int], results: list[Outcome | None], desc: str) -> None:
        exhausted: list[BudgetExhausted | RunInterrupted] = []
        label = progress_label(desc, len(todo), name=self.name, steps=self.steps() if self.steps else None)
        bar = tqdm(total=len(todo), desc=label, disable=not self.progress or len(todo) < _MIN_ITEMS_FOR_A_BAR,
                   leave=False)

        def one(i: int) -> None:
            if exhausted:
                return
            try:
                outcome, cost, faults = self._run_unit(program, names, examples[i], keys[i])
            except (BudgetExhausted, RunInterrupted) as exc:
                exhausted.append(exc)
                return
            self.journal.put("score", keys[i], {
                "score": outcome.score, "prediction": outcome.prediction, "trace": list(outcome.trace),
                "error": outcome.error, "raw": outcome.raw, "cost": cost_entry(cost),
                **({"faults": faults} if faults else {})})
            results[i] = outcome
            bar.update(1)

        try:
            if self.num_threads <= 1:
                for i in todo:
                    one(i)
            else:
                with ThreadPoolExecutor(max_workers=self.num_threads) as pool:
                    futures = [pool.submit(contextvars.copy_context().run, one, i) for i in todo]
                    for future in futures:
                        future.result()
        finally:
            bar.close()
        if exhausted:  # an outage outranks a spent budget: the run must stop as interrupted, not as finished
            raise next((e for e in exhausted if isinstance(e, RunInterrupted)), exhausted[0])

    def _run_unit(self, program: dspy.Module, names: dict[int, str], example: dspy.Example,
                  key: str) -> tuple[Outcome, Any, int]:
        """Run one example until it gets answers; a faulted run is discarded (never scored) and run again.
        Returns the outcome, its cost and the faults met on the way, this run's and those an interrupted run
        journaled for ``key`` (an outage or a cap that stops the unit journals them, ``kind`` "faults"): the score
        record keeps them, so a replay counts them again."""
        earlier, replayed = self.journal.get("faults", key)
        prior = int((earlier or {}).get("faults", 0))
        if replayed is not None and prior:  # an interrupted run's faults, counted once in this run's report
            self._count("lm_faults", prior)
        attempt = 0
        try:
            while True:
                try:
                    return (*self._run_one(program, names, example), prior + attempt)
                except LMFault as fault:
                    self._count("lm_faults")
                    logger.warning("No answer from the {} model on an example ({}); running it again", fault.role,
                                   fault.cause)
                    attempt += 1
                    self.meter.faults.retry(attempt - 1, fault)
        except (BudgetExhausted, RunInterrupted):
            if attempt:
                self.journal.put("faults", key, {"faults": prior + attempt})
            raise

    def _run_one(self, program: dspy.Module, names: dict[int, str], example: dspy.Example) -> tuple[Outcome, Any]:
        with collect_cost() as cost:
            prediction, trace, raised = self._call_program(program, names, example)
            if cost.fault is not None:  # the program swallowed a fault: no answer is not an outcome
                raise cost.fault
            if cost.refused is not None:  # the program swallowed a refusal: its answer is incomplete
                raise cost.refused
            if raised is not None and is_fault(raised):  # an LM it calls outside the meter got no answer
                raise self.meter.faults.failed("task", raised) from raised
            if isinstance(raised, AdapterParseError):  # the model answered in a format the adapter cannot read
                self._count("task_parse_failures")
                logger.debug("Unparsable task-model answer: {}", raised.lm_response)
                return Outcome(self.failure_score, {}, trace, f"{PARSE_ERROR} {_short(raised)}",
                               str(raised.lm_response or "")), cost
            if raised is not None:  # a bad answer or a bug in the program, once a fault behind it is ruled out
                self._count("program_errors")
                logger.warning("Program raised {} on an example: {}", type(raised).__name__, raised)
                return Outcome(self.failure_score, {}, trace, f"{PROGRAM_ERROR} {raised!r}"), cost
            try:
                with dspy.context(lm=self.task_lm):
                    score = metric_value(self.metric(example, prediction, None))
            except (BudgetExhausted, LMFault, RunInterrupted):
                raise
            except Exception as exc:  # the metric is user code: count it, never crash the search
                if cost.fault is not None:  # an LM judge that got no answer: not an outcome
                    raise cost.fault from exc
                if is_fault(exc):  # ... also one the metric calls outside the meter (its own judge LM)
                    raise self.meter.faults.failed("metric", exc) from exc
                self._count("metric_errors")
                logger.warning("Metric raised {}: {}; scored {}", type(exc).__name__, exc, self.failure_score)
                return Outcome(self.failure_score, _pred_dict(prediction), trace, f"{METRIC_ERROR} {exc!r}"), cost
            if cost.fault is not None:
                raise cost.fault
        return Outcome(score, _pred_dict(prediction), trace), cost

    def _count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + n)

    def _call_program(self, program: dspy.Module, names: dict[int, str], example: dspy.Example):
        """``(prediction, trace, exception)``: what the program returned and its trace, or the exception it raised
        (:meth:`_run_one` tells a fault, an unparsable answer and a program error apart)."""
        try:
            with dspy.context(lm=self.task_lm, trace=[], adapter=task_adapter()):
                prediction = program(**example.inputs())
                trace = tuple(
                    {"predictor": names.get(id(pred), "?"), "inputs": demo_to_dict(inputs),
                     "outputs": _pred_dict(outputs)}
                    for pred, inputs, outputs in dspy.settings.trace
                )
        except (BudgetExhausted, LMFault, RunInterrupted):
            raise
        except Exception as exc:
            return None, (), exc
        return prediction, trace, None


def _error_counter(error: str | None) -> str | None:
    """The report counter an outcome's error text was counted in when it ran (``None``: no error)."""
    if not error:
        return None
    for prefix, counter in _ERROR_COUNTERS:
        if error.startswith(prefix):
            return counter
    return None


def _short(error: AdapterParseError) -> str:
    """The parse error's first line, without the echoed response."""
    names = list(getattr(error.signature, "output_fields", {}) or {})
    return f"expected the output field(s) {names}"


def _pred_dict(prediction: Any) -> dict[str, Any]:
    if prediction is None:
        return {}
    if hasattr(prediction, "toDict"):
        return demo_to_dict(prediction.toDict())
    if isinstance(prediction, dict):
        return demo_to_dict(prediction)
    return {"output": str(prediction)}
