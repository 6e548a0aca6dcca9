"""Faults: a language model that did not answer is never an outcome.

An *outcome* is what a program did with an answer of the model, however bad: an unparsable reply
(``AdapterParseError``), a request the model refused as invalid (too long a prompt, HTTP 400), a
bug in the program, anything the metric raised that is not a fault. Outcomes are scored
(``failure_score``), counted and journaled like any other result. A program or metric that calls an LM
of its own, outside the meter (an LM judge in ``dspy.context(lm=judge)``), and gets no answer raises
a fault all the same: the scorer reads its exception with :func:`is_fault`.

A *fault* is a call that got no answer: the server is down or unreachable, the call timed out, was
rate limited, or failed with a server error (5xx), the credentials were refused, the local model
could not be loaded. :func:`is_fault` decides from the exception a call raised (and its causes).
A fault is never scored nor journaled:

* :class:`~dspy_icl_opt.search.budget.MeteredLM` raises :class:`LMFault` for it (the call is not
  charged against the call cap; ``spent[role].failed_calls`` counts it) and marks the unit of work
  in progress (one example, one meta-prompt answer) as faulted, so even a program that catches the
  exception (``dspy.BestOfN``, ``dspy.Refine``) cannot turn it into a result;
* the unit is run again from scratch after a short pause (DSPy already retries each call with its
  own backoff, ``num_retries``; this layer only decides whether the model is *gone*);
* after :data:`FAULT_THRESHOLD` faults in a row of one role (or of one unit), the meter declares an
  outage: :class:`RunInterrupted` is raised, and every later call raises it at once, without
  reaching the model. ``ICLOptimizer.compile`` then saves the report with ``interrupted=True`` and
  re-raises; nothing failed is in the journal, so running the same compile again (same
  ``log_dir``) once the model answers resumes where the healthy part ended, without repeating any
  call that succeeded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Faults in a row (per role, or per unit of work) after which the run stops as interrupted.
FAULT_THRESHOLD = 3
#: Pause before a faulted unit runs again; doubled each time, at most :data:`FAULT_BACKOFF_MAX_S`.
FAULT_BACKOFF_S = 0.25
FAULT_BACKOFF_MAX_S = 4.0

#: HTTP statuses that mean "no answer": unauthorized, forbidden, request timeout, too many requests; 5xx too.
_FAULT_STATUSES = frozenset({401, 402, 403, 408, 429})
#: Exception class names (anywhere in the MRO) that mean "no answer", for SDKs we do not import
#: (LiteLLM, OpenAI, httpx, requests) and DSPy's own LM errors.
_FAULT_NAMES = frozenset({
    # DSPy 3.4 (dspy.utils.exceptions) and its engine errors (dspy.lm15)
    "LMTransportError", "LMTimeoutError", "LMRateLimitError", "LMServerError", "LMAuthError", "LMBillingError",
    "LMLockTimeoutError", "LMNotConfiguredError", "TransportError", "RateLimitError", "ServerError", "AuthError",
    "BillingError", "LockTimeoutError", "MissingCredentialError",
    # LiteLLM / OpenAI SDK
    "APIConnectionError", "APITimeoutError", "Timeout", "ServiceUnavailableError", "InternalServerError",
    "BadGatewayError", "AuthenticationError", "PermissionDeniedError",
    # httpx / requests
    "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "RemoteProtocolError",
    "ReadError", "WriteError", "TimeoutException", "NetworkError",
    # the embedded model could not be loaded
    "CorruptModelError", "LlamaModelLoadError", "MissingLocalExtraError",
})
#: Exception class names that are always outcomes, whatever caused them: the model answered (or refused the
#: request itself), so a different candidate may well do better.
_OUTCOME_NAMES = frozenset({"AdapterParseError", "ContextWindowExceededError", "LMInvalidRequestError",
                            "LMUnsupportedFeatureError", "LMUnsupportedModelError", "ContextLengthError",
                            "InvalidRequestError", "BadRequestError", "LlamaContextOverflowError"})


def is_fault(exc: BaseException) -> bool:
    """Whether an exception raised by an LM call means the model did not answer (see the module docstring).

    Example:
        >>> is_fault(ConnectionRefusedError(111, "Connection refused"))
        True
        >>> is_fault(ValueError("could not parse the answer"))
        False
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _OUTCOME_NAMES:
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError)):  # ConnectionError and socket errors are OSErrors
            return True
        if {cls.__name__ for cls in type(current).__mro__} & _FAULT_NAMES:
            return True
        status = _status(current)
        if status is not None and (status in _FAULT_STATUSES or status >= 500):
            return True
        current = current.__cause__ or current.__context__
    return False


def _status(exc: BaseException) -> int | None:
    for value in (getattr(exc, "status", None), getattr(exc, "status_code", None),
                  getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class LMFault(RuntimeError):
    """An LM call got no answer (see :func:`is_fault`); the unit of work it belongs to is run again."""

    def __init__(self, role: str, cause: BaseException) -> None:
        super().__init__(f"The {role} model did not answer: {describe(cause)}")
        self.role = role
        self.cause = cause


class RunInterrupted(RuntimeError):
    """The model stopped answering: the run stopped cleanly, with nothing failed journaled, and can be resumed.

    ``report`` is the saved :class:`~dspy_icl_opt.search.report.OptimizationReport` (``interrupted=True``)
    when ``ICLOptimizer.compile`` raised it.
    """

    def __init__(self, role: str, faults: int, cause: str) -> None:
        super().__init__(
            f"The {role} model failed {faults} time(s) in a row (last: {cause}), so the run stopped as interrupted; "
            "no failed call was recorded as a result. Run the same command again (same log_dir / output) once the "
            "model answers: it resumes where the healthy part ended, without repeating a successful call.")
        self.role = role
        self.faults = faults
        self.cause = cause
        self.report: Any = None


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, with the root cause when it differs (e.g. a ConnectionRefusedError)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    root = exc
    seen: set[int] = set()
    while (root.__cause__ or root.__context__) is not None and id(root) not in seen:
        seen.add(id(root))
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if root is not exc and type(root).__name__ not in text:
        text += f" (caused by {type(root).__name__}: {root})"
    return text[:500]


@dataclass
class FaultMonitor:
    """Counts faults per role and declares an outage after ``threshold`` in a row (thread-safe).

    One lives on every :class:`~dspy_icl_opt.search.budget.BudgetMeter` (``meter.faults``).
    """

    threshold: int = FAULT_THRESHOLD
    backoff_s: float = FAULT_BACKOFF_S
    streak: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    outage: RunInterrupted | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        """Raise :class:`RunInterrupted` if an outage was declared (no further call reaches the model)."""
        outage = self.outage
        if outage is not None:
            raise RunInterrupted(outage.role, outage.faults, outage.cause)

    def succeeded(self, role: str) -> None:
        with self._lock:
            self.streak[role] = 0

    def failed(self, role: str, exc: BaseException) -> LMFault | RunInterrupted:
        """Record a fault; the exception to raise: an :class:`LMFault`, or :class:`RunInterrupted` past the threshold."""
        with self._lock:
            self.streak[role] = self.streak.get(role, 0) + 1
            self.total[role] = self.total.get(role, 0) + 1
            if self.outage is None and self.streak[role] >= self.threshold:
                self.outage = RunInterrupted(role, self.streak[role], describe(exc))
            outage = self.outage
        if outage is not None:
            return RunInterrupted(outage.role, outage.faults, outage.cause)
        return LMFault(role, exc)

    def retry(self, attempt: int, fault: LMFault) -> None:
        """Before a faulted unit runs again: pause, or declare an outage if it faulted ``threshold`` times."""
        if attempt + 1 >= self.threshold:
            with self._lock:
                if self.outage is None:
                    self.outage = RunInterrupted(fault.role, attempt + 1, describe(fault.cause))
            self.check()
        delay = min(self.backoff_s * 2 ** attempt, FAULT_BACKOFF_MAX_S)
        if delay > 0:
            time.sleep(delay)


def mark_unit(sinks: Any, exc: BaseException) -> None:
    """Mark the units of work in progress (their cost sinks) as faulted."""
    for sink in sinks or []:
        if getattr(sink, "fault", None) is None:
            sink.fault = exc
