"""Held-out evaluation: a program's mean metric on examples, with the task model's calls counted.

An LM that does not answer (a fault, see :mod:`dspy_icl_opt.search.faults`) never scores 0: the
example is run again, and when the model stays silent :class:`LMOutage` is raised (nothing is kept).
Failures of the program or the metric on one example score 0 and are counted; when *every*
example fails because of the LM (not reachable, not loadable ...), :class:`LMProblem` is raised so
the CLI can exit with its LM code instead of reporting a meaningless 0.
"""

from __future__ import annotations

import contextvars
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy_icl_opt._log import logger
from tqdm.auto import tqdm

from dspy_icl_opt.pipeline.errors import LMOutage, LMProblem
from dspy_icl_opt.search.budget import Budget, BudgetMeter, MeteredLM, collect_cost, unwrap_lm
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.fingerprint import lm_identity, metric_identity
from dspy_icl_opt.search.journal import Journal
from dspy_icl_opt.search.scorer import example_key, metric_value
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
    """What decides an evaluation's scores: the program state, the LM and its sampling settings, the metric's code."""
    blob = "\x1f".join([split, read_state(program).key(), lm_identity(lm), metric_identity(metric)])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def evaluate_program(program: dspy.Module, examples: Sequence[dspy.Example], metric: Callable[..., Any], *,
                     lm: dspy.BaseLM, split: str = "test", num_threads: int = 1, progress: bool = True,
                     journal: Path | None = None) -> EvalResult:
    """Mean ``metric`` of ``program`` on ``examples`` with ``lm`` as the task model.

    Args:
        journal: a JSONL file keeping each finished example (by program state and example), so an
            evaluation stopped by an LM outage goes on where it stopped, without repeating a call.

    Raises:
        LMProblem: when every example failed in the LM layer.
        LMOutage: when the model stopped answering (finished examples stay in ``journal``).
    """
    if not examples:
        logger.warning("No {} examples: evaluation skipped", split)
        return EvalResult(split=split, score=0.0, n=0)
    meter = BudgetMeter(Budget())
    metered = MeteredLM(unwrap_lm(lm), meter, "task")
    scores: list[float] = [0.0] * len(examples)
    errors: list[tuple[str, bool]] = []  # (message, failed in the LM layer)
    started = time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"evaluate {split}", disable=not progress, leave=False)
    done = Journal(journal)
    prefix = eval_identity(program, lm, metric, split) if journal is not None else split
    keys = [f"{prefix}:{example_key(example)}" for example in examples]

    outage: list[RunInterrupted] = []

    def once(i: int) -> None:
        record, replay = done.get("eval", keys[i])
        if record is not None:
            if replay is not None and replay.calls:
                meter.charge("task", replay)
            scores[i] = float(record["score"])
            if record.get("error"):
                errors.append((record["error"], bool(record.get("lm_error"))))
            return
        error: tuple[str, bool] | None = None
        with collect_cost() as cost:
            try:
                with dspy.context(lm=metered, adapter=PlacementAdapter()):
                    prediction = program(**examples[i].inputs())
                    if cost.fault is not None:  # a fault the program caught: no answer is not a score
                        raise cost.fault
                    scores[i] = metric_value(metric(examples[i], prediction, None))
                if cost.fault is not None:
                    raise cost.fault
            except (LMFault, RunInterrupted):
                raise
            except Exception as exc:  # noqa: BLE001 - one failed example scores 0; counted below
                if cost.fault is not None:
                    raise cost.fault from exc
                error = (f"{type(exc).__name__}: {exc}", lm_failure(exc))
                errors.append(error)
                logger.debug("Evaluation of {} example {} failed: {}: {}", split, i, type(exc).__name__, exc)
        done.put("eval", keys[i], {"score": scores[i], "error": error[0] if error else None,
                                   "lm_error": bool(error and error[1]),
                                   "cost": {"calls": cost.calls, "tokens": cost.tokens}})

    def one(i: int) -> None:
        attempt = 0
        while not outage:
            try:
                once(i)
                break
            except LMFault as fault:  # no answer: run the example again, or stop once the model is gone
                try:
                    meter.faults.retry(attempt, fault)
                except RunInterrupted as exc:
                    outage.append(exc)
                attempt += 1
            except RunInterrupted as exc:
                outage.append(exc)
        bar.update(1)

    try:
        if num_threads <= 1:
            for i in range(len(examples)):
                one(i)
        else:
            with ThreadPoolExecutor(max_workers=num_threads) as pool:
                for future in [pool.submit(contextvars.copy_context().run, one, i) for i in range(len(examples))]:
                    future.result()
    finally:
        bar.close()
    if outage:  # no score for a half-done evaluation; its finished examples stay in the journal
        raise LMOutage(f"the task model stopped answering during the {split} evaluation: {outage[0]}")
    return _result(split, scores, errors, meter, time.perf_counter() - started)


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
