"""Held-out evaluation through ``dspy.Evaluate``: a program's mean metric on examples, task-model calls counted.

DSPy's evaluation runs it, so its callbacks (MLflow's ``log_evals``) see every held-out score; the
search itself keeps its cached scorer (:mod:`dspy_icl_opt.search.scorer`).

An LM that does not answer (a fault, see :mod:`dspy_icl_opt.search.faults`) never scores 0: the
example is run again, and when the model stays silent :class:`LMOutage` is raised (nothing is kept).
Failures of the program or the metric on one example score 0 and are counted; when *every*
example fails because of the LM (not reachable, not loadable ...), :class:`LMProblem` is raised so
the CLI can exit with its LM code instead of reporting a meaningless 0.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.pipeline.errors import LMOutage, LMProblem
from dspy_icl_opt.search.budget import Budget, BudgetMeter, MeteredLM, collect_cost, unwrap_lm
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.fingerprint import lm_identity, metric_identity
from dspy_icl_opt.search.journal import Journal, cost_entry
from dspy_icl_opt.search.scorer import metric_value
from dspy_icl_opt.search.surgery import read_state
from dspy_icl_opt.search.placement import PlacementAdapter


@dataclass
class EvalResult:
    """The outcome of one evaluation."""

    split: str
    score: float
    n: int
    errors: int = 0
    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def lm_failure(exc: BaseException) -> bool:
    """Whether an exception comes from the LM layer (provider, engine, model file) rather than the program."""
    from dspy.utils.exceptions import LMError

    from dspy_icl_opt.lm.errors import CorruptModelError, LlamaModelLoadError, MissingLocalExtraError

    lm_types = (LMError, CorruptModelError, LlamaModelLoadError, MissingLocalExtraError, ConnectionError)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, lm_types):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def eval_identity(program: dspy.Module, lm: dspy.BaseLM, metric: Callable[..., Any], split: str) -> str:
    """What decides an evaluation's scores: the program state, the LM and its sampling settings, the metric's code,
    and the LMs predictors carry themselves (a soft prompt lives there, its digest in the LM's name)."""
    own = [lm_identity(predictor.lm) for _, predictor in program.named_predictors() if predictor.lm is not None]
    blob = "\x1f".join([split, read_state(program).key(), lm_identity(lm), metric_identity(metric), *own])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def evaluate_program(program: dspy.Module, examples: Sequence[dspy.Example], metric: Callable[..., Any], *,
                     lm: dspy.BaseLM, split: str = "test", num_threads: int = 1, progress: bool = True,
                     journal: Path | None = None) -> EvalResult:
    """Mean ``metric`` of ``program`` on ``examples`` with ``lm`` as the task model, through ``dspy.Evaluate``.

    The evaluation is DSPy's own, so DSPy's evaluation callbacks fire (MLflow's ``log_evals`` among
    them) with the program as given. What this adds around it: the task model's calls are counted;
    each finished example is journaled, so an evaluation stopped by an LM outage goes on where it
    stopped without repeating a call (a journaled example replays its prediction); an LM that does
    not answer is run again and never scored (:class:`LMOutage` when it stays silent).

    Args:
        journal: a JSONL file keeping each finished example (by program state and inputs).

    Raises:
        LMProblem: when every example failed in the LM layer.
        LMOutage: when the model stopped answering (finished examples stay in ``journal``).
    """
    if not examples:
        logger.warning("No {} examples: evaluation skipped", split)
        return EvalResult(split=split, score=0.0, n=0)
    meter = BudgetMeter(Budget())
    metered = MeteredLM(unwrap_lm(lm), meter, "task")
    started = time.perf_counter()
    state = _HeldOutState(Journal(journal), eval_identity(program, lm, metric, split) if journal is not None
                          else split, meter)
    runner = _replaying_copy(program, state)
    scorer = _held_out_metric(metric, state)
    evaluate = dspy.Evaluate(devset=list(examples), metric=scorer, num_threads=max(1, num_threads),
                             display_progress=progress, max_errors=len(examples) + 1, failure_score=0.0,
                             provide_traceback=False)
    with dspy.context(lm=metered, adapter=PlacementAdapter()):
        outcome = evaluate(runner, callback_metadata={"metric_key": f"held_out_{split}"})
    if state.outage:  # no score for a half-done evaluation; its finished examples stay in the journal
        raise LMOutage(f"the task model stopped answering during the {split} evaluation: {state.outage[0]}")
    scores = [metric_value(score) if score is not None else 0.0 for _, _, score in outcome.results]
    return _result(split, scores, list(state.errors), meter, time.perf_counter() - started)


class _HeldOutState:
    """What the replaying program and the metric share during one evaluation."""

    def __init__(self, journal: Journal, prefix: str, meter: BudgetMeter) -> None:
        self.journal, self.prefix, self.meter = journal, prefix, meter
        self.errors: list[tuple[str, bool]] = []  # (message, failed in the LM layer)
        self.outage: list[RunInterrupted] = []
        self.lock = threading.Lock()

    def key(self, inputs: dict[str, Any]) -> str:
        blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
        return f"{self.prefix}:{hashlib.sha256(blob.encode('utf-8')).hexdigest()[:24]}"

    def error(self, message: str, lm_error: bool) -> None:
        with self.lock:
            self.errors.append((message, lm_error))


class HeldOutError(RuntimeError):
    """An example whose program run failed (replayed from the journal, or just now): DSPy's Evaluate scores it 0."""


class _ReplayMixin:
    """Runs the program once per example and journals the prediction; a journaled example replays it."""

    _held_out: _HeldOutState

    def forward(self, **inputs: Any) -> Any:
        state = self._held_out
        key = state.key(inputs)
        record, replay = state.journal.get("heldout", key)
        if record is not None:
            if replay is not None and replay.calls:
                state.meter.charge("task", replay)
            if record.get("error"):
                state.error(record["error"], bool(record.get("lm_error")))
                raise HeldOutError(record["error"])
            return dspy.Prediction(**record["prediction"])
        attempt = 0
        while True:
            if state.outage:
                raise HeldOutError("stopped: the task model is not answering")
            try:
                return self._run_once(key, inputs)
            except LMFault as fault:  # no answer: run the example again, or stop once the model is gone
                try:
                    state.meter.faults.retry(attempt, fault)
                except RunInterrupted as exc:
                    state.outage.append(exc)
                attempt += 1
            except RunInterrupted as exc:
                state.outage.append(exc)

    def _run_once(self, key: str, inputs: dict[str, Any]) -> Any:
        state = self._held_out
        with collect_cost() as cost:
            try:
                prediction = super().forward(**inputs)  # type: ignore[misc]
                if cost.fault is not None:  # a fault the program caught: no answer is not a prediction
                    raise cost.fault
            except (LMFault, RunInterrupted):
                raise
            except Exception as exc:  # noqa: BLE001 - one failed example scores 0; counted
                if cost.fault is not None:
                    raise cost.fault from exc
                message = f"{type(exc).__name__}: {exc}"
                state.error(message, lm_failure(exc))
                logger.debug("Held-out example failed: {}", message)
                state.journal.put("heldout", key, {"prediction": None, "error": message, "lm_error": lm_failure(exc),
                                                   "cost": cost_entry(cost)})
                raise HeldOutError(message) from exc
        fields = {k: v for k, v in prediction.items()} if hasattr(prediction, "items") else {"answer": prediction}
        state.journal.put("heldout", key, {"prediction": json.loads(json.dumps(fields, default=str)), "error": None,
                                           "cost": cost_entry(cost)})
        return prediction


def _replaying_copy(program: dspy.Module, state: _HeldOutState) -> dspy.Module:
    """A copy of ``program`` of a subclass of its own class (same name, same state) that journals and replays."""
    copy = program.deepcopy()
    cls = type(copy)
    copy.__class__ = type(cls.__name__, (_ReplayMixin, cls), {"__module__": cls.__module__,
                                                             "__qualname__": cls.__qualname__})
    copy._held_out = state
    return copy


def _held_out_metric(metric: Callable[..., Any], state: _HeldOutState) -> Callable[..., float]:
    """The metric as DSPy's Evaluate calls it; one that raises scores 0 and is counted, never stops the run."""

    def held_out_metric(example: Any, prediction: Any, trace: Any = None) -> float:
        try:
            return metric_value(metric(example, prediction, trace))
        except Exception as exc:  # noqa: BLE001 - a metric error is one example's failure
            state.error(f"{type(exc).__name__}: {exc}", False)
            return 0.0

    held_out_metric.__name__ = getattr(metric, "__name__", "metric")
    return held_out_metric


def _result(split: str, scores: list[float], errors: list[tuple[str, bool]], meter: BudgetMeter,
            seconds: float) -> EvalResult:
    first = errors[0][0] if errors else None
    if errors and len(errors) == len(scores) and errors[0][1]:
        raise LMProblem(f"the task model failed on every {split} example; first error: {first}")
    if errors:
        logger.warning("{} of {} {} examples failed (scored 0); first error: {}", len(errors), len(scores), split,
                       first)
    spent = meter.snapshot()["task"]
    result = EvalResult(split=split, score=sum(scores) / len(scores), n=len(scores), errors=len(errors),
                        calls=spent.calls, tokens=spent.tokens, seconds=round(seconds, 3), first_error=first)
    logger.info("{} accuracy {:.3f} on {} examples ({} errors, {} task calls)", split, result.score, result.n,
                result.errors, result.calls)
    return result
