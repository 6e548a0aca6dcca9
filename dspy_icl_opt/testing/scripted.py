"""A scripted fake LM: answers requests from a list of strings or callables, in order.

Use it for the *prompt model* of an optimizer (the LM that proposes instructions), or any
place where a test wants to dictate exact replies and inspect exactly what was asked.
Replies are raw completion text: for a DSPy predictor write them in ChatAdapter format,
e.g. with `format_chat_reply`.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.testing import format_chat_reply, scripted_lm
    >>> lm = scripted_lm([format_chat_reply({"answer": "4"})])
    >>> with dspy.context(lm=lm):
    ...     dspy.Predict("question -> answer")(question="2+2?").answer
    '4'
    >>> lm.engine.call_count, "2+2?" in lm.engine.last_user_text()
    (1, True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dspy
from dspy.lm15 import Request, Response

from dspy_icl_opt.testing.chat import (
    AsyncEngine,
    conversation,
    last_user_text,
    make_response,
    stream_events,
    system_text,
)

Responder = Callable[[Request], str]
"""A reply computed from the request."""
Script = str | Responder

DEFAULT_PROMPT_MODEL = "fake/prompt-model"
"""Model name of `scripted_lm` LMs (the ``fake/`` prefix routes nowhere; the engine answers)."""
RESPONSE_MODEL = "fake"
"""Model name reported in the responses."""


class ScriptExhaustedError(RuntimeError):
    """Raised when a `ScriptedEngine` receives more requests than it has replies (and no fallback).

    DSPy re-raises engine failures as ``dspy`` LM errors whose message carries this one; the
    original is the ``__cause__``.
    """


class ScriptedEngine:
    """A DSPy engine that replies from a script and records every request.

    Args:
        responses: A list of replies used in order (each a string, or a callable
            ``(request) -> str``), or one callable used for every request.
        fallback: What to reply once a list is exhausted: a string or a callable. ``None`` (default)
            raises `ScriptExhaustedError` instead.
        model: Model name reported in responses.

    Example:
        >>> engine = ScriptedEngine(["first", lambda request: "second"], fallback="again")
        >>> lm = dspy.LM("fake/prompt-model", engine=engine, cache=False)
        >>> [lm("hi")[0] for _ in range(3)]
        ['first', 'second', 'again']
    """

    def __init__(
        self, responses: Sequence[Script] | Responder, *, fallback: Script | None = None, model: str = RESPONSE_MODEL
    ) -> None:
        self._single = responses if callable(responses) else None
        self._script: tuple[Script, ...] = () if self._single is not None else _check_script(responses)
        if fallback is not None and not isinstance(fallback, str) and not callable(fallback):
            raise TypeError(
                "`fallback` must be a string, a callable (request) -> str, or None, but got "
                f"{type(fallback).__name__}. "
                "Pass e.g. fallback='[[ ## answer ## ]]\\nx\\n\\n[[ ## completed ## ]]'."
            )
        self.fallback = fallback
        self.model = model
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._replies: list[str] = []

    def complete(self, request: Request) -> Response:
        """Answer one request with the next scripted reply."""
        with self._lock:
            index = len(self._requests)
            self._requests.append(request)
        reply = self._reply(index, request)
        with self._lock:
            self._replies.append(reply)
        return make_response(request, reply, model=self.model)

    def stream(self, request: Request) -> Iterator[Any]:
        """Stream the reply to one request (as canonical events)."""
        return stream_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release."""

    def __deepcopy__(self, memo: dict[int, Any]) -> ScriptedEngine:
        # An engine is a borrowed resource: copies of an LM (or a program holding one) share it.
        return self

    @property
    def call_count(self) -> int:
        """How many requests the engine has received."""
        with self._lock:
            return len(self._requests)

    @property
    def requests(self) -> list[Request]:
        """A copy of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def replies(self) -> list[str]:
        """A copy of every reply sent, in the order they were produced."""
        with self._lock:
            return list(self._replies)

    @property
    def remaining(self) -> int | None:
        """Scripted replies not used yet (``None`` for a single callable, which never runs out)."""
        if self._single is not None:
            return None
        return max(0, len(self._script) - self.call_count)

    def system_text(self, index: int = -1) -> str:
        """The system prompt of request ``index`` (default: the last)."""
        return system_text(self._request(index))

    def last_user_text(self, index: int = -1) -> str:
        """The last user message of request ``index`` (default: the last request)."""
        return last_user_text(self._request(index))

    def messages(self, index: int = -1) -> list[tuple[str, str]]:
        """The ``(role, text)`` messages of request ``index`` (default: the last), system excluded."""
        return conversation(self._request(index))

    def _request(self, index: int) -> Request:
        requests = self.requests
        if not requests:
            raise IndexError("The engine has received no requests yet. Call the LM before inspecting requests.")
        return requests[index]

    def _reply(self, index: int, request: Request) -> str:
        if self._single is not None:
            return _call(self._single, request)
        if index < len(self._script):
            item = self._script[index]
        elif self.fallback is not None:
            item = self.fallback
        else:
            raise ScriptExhaustedError(
                f"The scripted LM is exhausted: it has {len(self._script)} replies but received request #{index + 1}. "
                "Script more replies, or pass `fallback=` to answer the extra requests."
            )
        return item if isinstance(item, str) else _call(item, request)


def scripted_lm(
    responses: Sequence[Script] | Responder,
    *,
    name: str = DEFAULT_PROMPT_MODEL,
    fallback: Script | None = None,
) -> dspy.LM:
    """Build a ``dspy.LM`` that answers from a script (see `ScriptedEngine`).

    The engine is ``lm.engine`` (DSPy's read-only property); the LM has DSPy's cache off, so
    every call reaches the script. Async calls (``acall``) use the same engine.

    Args:
        responses: A list of strings/callables ``(request) -> str`` used in order, or one callable.
        name: The LM's model name. Defaults to "fake/prompt-model".
        fallback: Reply (string or callable) after the list is exhausted; ``None`` raises
            `ScriptExhaustedError`.

    Returns:
        The LM.

    Example:
        >>> lm = scripted_lm(lambda request: "pong")
        >>> lm("ping")
        ['pong']
    """
    engine = ScriptedEngine(responses, fallback=fallback)
    return make_fake_lm(engine, name=name)


def make_fake_lm(engine: Any, *, name: str) -> dspy.LM:
    """Wrap a fake engine into an uncached ``dspy.LM``; DSPy exposes the engine as ``lm.engine``.

    Args:
        engine: An object with ``complete``, ``stream`` and ``close``.
        name: The model name, e.g. "fake/model".

    Returns:
        The LM (sync and async calls both use ``engine``).

    Example:
        >>> make_fake_lm(ScriptedEngine(["x"]), name="fake/x").model
        'fake/x'
    """
    return dspy.LM(name, engine=engine, async_engine=AsyncEngine(engine), cache=False)


def _check_script(responses: Any) -> tuple[Script, ...]:
    if isinstance(responses, (str, bytes)) or not isinstance(responses, Sequence):
        raise TypeError(
            f"`responses` must be a list of strings/callables or one callable, but got {type(responses).__name__}. "
            "Wrap a single reply in a list: scripted_lm(['reply'])."
        )
    for position, item in enumerate(responses):
        if not isinstance(item, str) and not callable(item):
            raise TypeError(
                f"`responses[{position}]` must be a string or a callable (request) -> str, but got "
                f"{type(item).__name__}. Format field replies with format_chat_reply({{...}})."
            )
    return tuple(responses)


def _call(responder: Responder, request: Request) -> str:
    reply = responder(request)
    if not isinstance(reply, str):
        raise TypeError(
            f"A scripted responder must return a string, but {responder!r} returned {type(reply).__name__}. "
            "Return the completion text, e.g. format_chat_reply({'answer': ...})."
        )
    return reply
