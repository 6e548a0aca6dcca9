"""Fault injection for tests: an engine that stops answering (and recovers) on cue.

`FaultyEngine` wraps any fake engine (``simulated_task_lm(...).engine``, ``scripted_lm(...).engine``)
and raises a fault instead of answering: after ``die_after`` answered calls (until `recover` is
called), on the 1-based request numbers in ``fail_calls`` (blips), or whenever ``down`` is set.
The inner engine is never asked while a fault is injected, so ``inner.call_count`` counts exactly
the calls that got an answer.

Example:
    >>> from dspy_icl_opt.testing import scripted_lm
    >>> lm = faulty_lm(scripted_lm(["pong"]).engine, name="fake/flaky", die_after=0)
    >>> try:
    ...     lm("ping")
    ... except Exception as exc:
    ...     print(type(exc.__cause__).__name__)
    ConnectionRefusedError
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import dspy

from dspy_icl_opt.testing.chat import AsyncEngine, stream_events


def connection_refused() -> Exception:
    """The error a client gets from a server that is gone."""
    return ConnectionRefusedError(111, "Connection refused")


class FaultyEngine:
    """A fake engine that raises ``error()`` instead of answering while a fault is injected.

    Args:
        inner: the engine that answers when no fault is injected.
        die_after: answered calls after which every call fails, until `recover`.
        fail_calls: 1-based request numbers that fail once each (blips).
        error: makes the exception raised (default: `connection_refused`).
    """

    def __init__(self, inner: Any, *, die_after: int | None = None, fail_calls: Iterable[int] = (),
                 error: Callable[[], Exception] = connection_refused) -> None:
        if die_after is not None and (isinstance(die_after, bool) or not isinstance(die_after, int) or die_after < 0):
            raise ValueError(f"`die_after` must be None or an integer >= 0, but got {die_after!r}.")
        self.inner = inner
        self.die_after = die_after
        self.fail_calls = frozenset(fail_calls)
        self.error = error
        self.down = False
        self.answered = 0
        self.received = 0
        self.faults = 0
        self._lock = threading.Lock()

    def _admit(self) -> None:
        with self._lock:
            self.received += 1
            dead = self.down or (self.die_after is not None and self.answered >= self.die_after)
            if dead or self.received in self.fail_calls:
                self.faults += 1
                raise self.error()
            self.answered += 1

    def complete(self, request: Any) -> Any:
        self._admit()
        return self.inner.complete(request)

    def stream(self, request: Any) -> Any:
        return stream_events(self.complete(request))

    def close(self) -> None:
        self.inner.close()

    @property
    def supports_continuation_scoring(self) -> bool:
        """Whether the inner engine scores given text (then so does this one, faults aside)."""
        return bool(getattr(self.inner, "supports_continuation_scoring", False))

    def kill(self) -> None:
        """Stop answering until `recover`."""
        self.down = True

    def recover(self) -> None:
        """Answer again (``die_after`` is dropped)."""
        self.down = False
        self.die_after = None

    def __deepcopy__(self, memo: dict[int, Any]) -> FaultyEngine:
        return self  # a borrowed resource, shared by copies of the LM (as the other fake engines)


def faulty_lm(inner_engine: Any, *, name: str = "fake/faulty-model", die_after: int | None = None,
              fail_calls: Iterable[int] = (), error: Callable[[], Exception] = connection_refused,
              **lm_kwargs: Any) -> dspy.LM:
    """An uncached ``dspy.LM`` on a `FaultyEngine` (``lm.engine``) with DSPy's own retries off.

    DSPy retries transient errors of a call itself (``num_retries``, with seconds of backoff); tests
    set it to 0 so that a fault reaches the optimizer at once. Pass ``num_retries=`` to keep them.
    """
    engine = FaultyEngine(inner_engine, die_after=die_after, fail_calls=fail_calls, error=error)
    lm_kwargs.setdefault("num_retries", 0)
    return dspy.LM(name, engine=engine, async_engine=AsyncEngine(engine), cache=False, **lm_kwargs)
