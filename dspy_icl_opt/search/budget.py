"""Budget accounting: LM calls and tokens of the task model and of the prompt model, counted apart.

Every LM an optimizer uses is wrapped in a :class:`MeteredLM` with a *role* (``"task"`` or
``"prompt"``). The wrapper admits a call only while the role's call cap leaves room (a slot is
reserved before the call, so concurrent threads can never overshoot), forwards it to the real
``dspy.LM`` (whose cache, history, usage tracking and callbacks keep working), then records the
calls and tokens of each call. A response served from DSPy's response cache counts against the call
cap like any other call (``cache_hits`` says how many cost nothing), so a run repeated with the same seed
and a warm cache makes the same calls and returns the same program as the first run (were cache hits
free, the second run would search further); its tokens are not charged, since DSPy reports usage only
for calls that reached the model (the meter listens for that report through a usage tracker it installs
around each call), so a *token* cap lets a warm-cache run go further.

Token caps are never passed when the call's completion is capped (``max_tokens`` on the call or the LM, or
the engine's own default, e.g. 512 for the embedded model): a call is admitted only when the tokens left,
after what the calls in flight hold, cover the most it can cost (:func:`token_bound`): its prompt's UTF-8
bytes (a byte-level tokenizer, as GPT's, Llama 3's and Qwen's, writes at most one token per byte, and
SentencePiece's byte fallback too), a margin for the chat template's own tokens, and ``max_tokens``, per
sample. It holds that bound until it returns. The bound is loose (a few times the prompt's real tokens), so
a token-capped run stops when the next call's bound no longer fits: less than one bound short of its cap with
one thread, up to one bound per thread with several (a call is refused while the others hold theirs, never
kept waiting: waiting can hang). A call whose completion has no cap cannot be bounded: it is admitted while
the tokens spent are under the cap, and can pass it by its own tokens. Call caps are exact; they count DSPy LM calls
(``n`` samples count as ``n``), and a call that DSPy retried after a transient provider error is
still one call. A call that got no answer at all (a fault: server down, timeout, rate limit, 5xx;
see :mod:`dspy_icl_opt.search.faults`) is not charged against the cap; ``failed_calls`` counts it.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
from dspy.utils.usage_tracker import UsageTracker
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspy_icl_opt._log import logger
from dspy_icl_opt.search.faults import FaultMonitor, is_fault, mark_unit

try:  # DSPy 3.4 marks the message-dict call an adapter owns, so that it alone skips a deprecation warning.
    from dspy.clients._deprecation import _adapter_call, adapter_message_call
except ImportError:  # pragma: no cover - other DSPy versions
    _adapter_call = None
    adapter_message_call = None

Role = Literal["task", "prompt"]
ROLES: tuple[Role, ...] = ("task", "prompt")

#: Chat-template tokens :func:`token_bound` allows beyond the messages' bytes: per call (a default system text
#: such as Llama 3.1's dates, the assistant header) and per message (role markers, separators).
TEMPLATE_TOKENS_PER_CALL = 64
TEMPLATE_TOKENS_PER_MESSAGE = 16
#: Request options whose text a provider adds to the prompt (and counts in its prompt tokens).
_PROMPT_OPTIONS = ("tools", "functions", "response_format", "tool_choice")

#: Ready-made budgets, by name, for users who do not want to count calls themselves.
BUDGET_PRESETS: dict[str, dict[str, int | None]] = {
    "tiny": {"max_task_calls": 200, "max_prompt_calls": 20},
    "light": {"max_task_calls": 1_000, "max_prompt_calls": 60},
    "medium": {"max_task_calls": 4_000, "max_prompt_calls": 200},
    "heavy": {"max_task_calls": 15_000, "max_prompt_calls": 800},
}


class Budget(BaseModel):
    """Hard caps on what a search may spend; ``None`` means no cap.

    Args:
        max_task_calls: LM calls of the task model (the program being optimized).
        max_task_tokens: tokens (prompt + completion) of the task model.
        max_prompt_calls: LM calls of the prompt (optimizer) model, paraphraser included.
        max_prompt_tokens: tokens of the prompt model.

    Example:
        >>> Budget(max_task_calls=300).max_task_calls
        300
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_task_calls: int | None = Field(default=None, ge=0)
    max_task_tokens: int | None = Field(default=None, ge=0)
    max_prompt_calls: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)

    @classmethod
    def coerce(cls, value: Budget | dict[str, Any] | str | None) -> Budget:
        """Turn a preset name, a mapping or ``None`` into a ``Budget``."""
        if value is None:
            return cls()
        if isinstance(value, Budget):
            return value
        if isinstance(value, str):
            if value not in BUDGET_PRESETS:
                raise ValueError(
                    f"`budget` must be one of {sorted(BUDGET_PRESETS)}, a dict of caps or a Budget, "
                    f"but got {value!r}. Pass e.g. budget={{'max_task_calls': 500}}."
                )
            return cls(**BUDGET_PRESETS[value])
        if isinstance(value, dict):
            try:
                return cls(**value)
            except ValidationError as exc:
                raise ValueError(budget_problem(exc)) from None
        raise TypeError(
            f"`budget` must be a Budget, a dict of caps or a preset name, but got {type(value).__name__}. "
            "Pass e.g. budget={'max_task_calls': 500}."
        )

    def call_cap(self, role: Role) -> int | None:
        return self.max_task_calls if role == "task" else self.max_prompt_calls

    def token_cap(self, role: Role) -> int | None:
        return self.max_task_tokens if role == "task" else self.max_prompt_tokens


def budget_problem(exc: ValidationError) -> str:
    """A Budget's validation errors as one house-style message (no pydantic text or links)."""
    problems = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(part) for part in err["loc"]) or "budget"
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            problems.append(f"`budget` has no cap `{name}` (the caps are {sorted(Budget.model_fields)})")
        else:
            problems.append(f"`budget.{name}` must be None or an integer >= 0, but got {got!r}")
    return "; ".join(problems) + ". Pass e.g. budget={'max_task_calls': 500, 'max_prompt_calls': 50} or a preset name."


class BudgetExhausted(RuntimeError):
    """Raised inside a search when a role's cap leaves no room for another LM call."""

    def __init__(self, role: Role, what: str, cap: int) -> None:
        super().__init__(f"The {role} model's {what} budget ({cap}) is spent.")
        self.role = role
        self.what = what
        self.cap = cap


class Spent(BaseModel):
    """What one role has spent so far."""

    calls: int = 0
    tokens: int = 0
    cache_hits: int = 0
    failed_calls: int = 0


@dataclass
class Cost:
    """Calls and tokens charged while one unit of work ran (one example, one meta-prompt answer).

    ``refused`` is set when a call inside the unit was refused for lack of budget, so the unit is
    known to be incomplete even if the program caught the exception (``dspy.Refine``, ``BestOfN``);
    ``fault`` likewise when a call inside the unit got no answer (see :mod:`dspy_icl_opt.search.faults`).
    """

    calls: int = 0
    tokens: int = 0
    refused: BudgetExhausted | None = None
    fault: BaseException | None = None

    def add(self, calls: int, tokens: int) -> None:
        self.calls += calls
        self.tokens += tokens


_COST_SINK: contextvars.ContextVar[list[Cost] | None] = contextvars.ContextVar("icl_cost_sink", default=None)


@contextmanager
def collect_cost() -> Iterator[Cost]:
    """Collect, in the current context, the cost of every metered call made inside the block."""
    cost = Cost()
    sinks = list(_COST_SINK.get() or [])
    token = _COST_SINK.set([*sinks, cost])
    try:
        yield cost
    finally:
        _COST_SINK.reset(token)


@dataclass
class BudgetMeter:
    """Thread-safe counters of calls and tokens per role, with the caps of a :class:`Budget`."""

    budget: Budget = field(default_factory=Budget)
    spent: dict[str, Spent] = field(default_factory=lambda: {role: Spent() for role in ROLES})
    _in_flight: dict[str, int] = field(default_factory=lambda: {role: 0 for role in ROLES})
    _in_flight_tokens: dict[str, int] = field(default_factory=lambda: {role: 0 for role in ROLES})
    #: calls whose tokens are set aside under a token cap (:meth:`hold_back_tokens`), at the mean tokens per call
    _held_back_calls: dict[str, int] = field(default_factory=lambda: {role: 0 for role in ROLES})
    #: roles already warned that a call under their token cap could not be bounded
    _unbounded_warned: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    faults: FaultMonitor = field(default_factory=FaultMonitor)

    def remaining_calls(self, role: Role) -> int | None:
        cap = self.budget.call_cap(role)
        if cap is None:
            return None
        with self._lock:
            return max(0, cap - self.spent[role].calls - self._in_flight[role])

    def exhausted(self, role: Role) -> bool:
        """True when no further call of this role would be admitted, whatever its size (a call whose token bound
        does not fit what is left is refused even when this is False)."""
        remaining = self.remaining_calls(role)
        token_cap = self.budget.token_cap(role)
        with self._lock:
            committed = self.spent[role].tokens + self._tokens_held_back(role)
        return remaining == 0 or (token_cap is not None and committed >= token_cap)

    def _tokens_held_back(self, role: Role) -> int:
        """The tokens set aside for the held-back calls: that many calls at the mean tokens per call so far
        (none before a call has run). Call with the lock held."""
        spent, calls = self.spent[role], self._held_back_calls[role]
        return calls * math.ceil(spent.tokens / spent.calls) if calls and spent.calls else 0

    def reserve(self, role: Role, slots: int = 1, *, check_tokens: bool = True, tokens: int | None = None) -> int:
        """Reserve ``slots`` calls or raise :class:`BudgetExhausted`; pair with :meth:`settle`.

        ``tokens``: the most the calls can cost (:func:`token_bound`); under a token cap they are admitted only
        when the tokens left after what the calls in flight hold cover it, and it is held until :meth:`settle`.
        A call refused while other calls hold their bounds is refused all the same, not kept waiting (waiting
        can hang: a sync call on an event loop whose async calls hold the tokens, layers of meters across
        threads). Without a bound the calls are admitted while the tokens spent and held are under the cap.
        Returns the tokens held."""
        cap = self.budget.call_cap(role)
        token_cap = self.budget.token_cap(role) if check_tokens else None
        held = tokens if token_cap is not None and tokens is not None else 0
        with self._lock:
            used = self.spent[role].calls + self._in_flight[role]
            committed = self.spent[role].tokens + self._in_flight_tokens[role] + self._tokens_held_back(role)
            refusal = None
            if cap is not None and used + slots > cap:
                refusal = BudgetExhausted(role, "call", cap)
            elif token_cap is not None and (committed + held > token_cap if tokens is not None
                                            else committed >= token_cap):
                refusal = BudgetExhausted(role, "token", token_cap)
            else:
                self._in_flight[role] += slots
                self._in_flight_tokens[role] += held
        if refusal is not None:
            for sink in _COST_SINK.get() or []:
                sink.refused = sink.refused or refusal
            raise refusal
        return held

    def release(self, role: Role, slots: int) -> None:
        """Give back calls reserved with :meth:`reserve` and never made (e.g. a held-back reserve)."""
        with self._lock:
            self._in_flight[role] -= slots

    def hold_back_tokens(self, role: Role, calls: int) -> None:
        """Under the role's token cap, set aside the tokens of ``calls`` later calls until :meth:`release_tokens`:
        calls are admitted only while the tokens left cover them too, counted at the mean tokens per call so far
        (so the estimate follows what the calls really cost). Nothing without a token cap."""
        if self.budget.token_cap(role) is not None and calls > 0:
            with self._lock:
                self._held_back_calls[role] += calls

    def release_tokens(self, role: Role, calls: int) -> None:
        """Give back what :meth:`hold_back_tokens` set aside for ``calls`` calls."""
        if self.budget.token_cap(role) is not None and calls > 0:
            with self._lock:
                self._held_back_calls[role] -= calls

    def settle(self, role: Role, *, reserved: int, calls: int, tokens: int, cache_hit: bool = False,
               failed: bool = False, reserved_tokens: int = 0) -> None:
        """Release a reservation (``reserved`` calls, ``reserved_tokens`` held) and record what the call spent."""
        with self._lock:
            self._in_flight[role] -= reserved
            self._in_flight_tokens[role] -= reserved_tokens
            spent = self.spent[role]
            spent.calls += calls
            spent.tokens += tokens
            spent.cache_hits += int(cache_hit)
            spent.failed_calls += int(failed)
        for sink in _COST_SINK.get() or []:
            sink.add(calls, tokens)

    def charge(self, role: Role, cost: Cost) -> None:
        """Charge work done earlier (replayed from a run log) as if it had just been done. The token cap is not
        checked again: that work was admitted once, and calls admitted together by several threads can pass a
        token cap, so a replay checked against it refused results the uninterrupted run had kept."""
        self.reserve(role, cost.calls, check_tokens=False)
        self.settle(role, reserved=cost.calls, calls=cost.calls, tokens=cost.tokens)

    def record_earlier(self, role: Role, cost: Cost) -> None:
        """Record calls an earlier, interrupted process made and this run will not replay one by one. They were
        made, so they count even past the cap (which then is spent); only :meth:`charge` checks it."""
        self.settle(role, reserved=0, calls=cost.calls, tokens=cost.tokens)

    def snapshot(self) -> dict[str, Spent]:
        with self._lock:
            return {role: s.model_copy() for role, s in self.spent.items()}

    def restore(self, spent: dict[str, Spent]) -> None:
        with self._lock:
            self.spent = {role: spent.get(role, Spent()).model_copy() for role in ROLES}


class _CallCounter(UsageTracker):
    """A usage tracker that also learns whether a call reached the model.

    DSPy calls ``add_usage`` once for every LM call that was not served from its cache (even when
    the provider reported no usage) and never for a cache hit; entries go on to the outer tracker.
    """

    def __init__(self, outer: UsageTracker | None) -> None:
        super().__init__()
        self.outer = outer
        self.calls = 0
        self.tokens = 0

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.calls += 1
        usage = dict(usage_entry or {})
        total = usage.get("total_tokens")
        if total is None:
            total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        self.tokens += int(total or 0)
        if self.outer is not None:
            self.outer.add_usage(lm, usage_entry)


def token_bound(lm: dspy.BaseLM, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> int | None:
    """The most tokens (prompt + completion, all samples) a call of ``lm`` with these arguments can cost, or
    ``None`` when its completion has no cap or its prompt holds something other than text.

    The prompt counts at one token per UTF-8 byte of its text (the text parts of each message, and the tools,
    response format or engine extensions sent with it), plus :data:`TEMPLATE_TOKENS_PER_CALL` and
    :data:`TEMPLATE_TOKENS_PER_MESSAGE`; the completion at ``max_tokens`` (or ``max_completion_tokens``) of the
    call, else of the LM, else the ``default_max_tokens`` of its engine. A call of ``n`` samples costs ``n``
    times both: DSPy sends a canonical engine one request per sample, each with the whole prompt. A
    ``dspy.lm15.Request`` is bounded from itself (DSPy does not merge the LM's settings into it): its
    ``config.max_tokens``, else the engine's default, and its extensions (e.g. a continuation to score, whose
    tokens the engine generates) count twice, as prompt and as completion.
    """
    from dspy.lm15 import Request

    samples = _samples_requested(lm, kwargs)
    engine_default = getattr(getattr(lm, "engine", None), "default_max_tokens", None)
    if isinstance(prompt, Request):  # DSPy's canonical request (the call form DSPy 3.5 keeps)
        limit = prompt.config.max_tokens or engine_default
        size = _request_bytes(prompt)
    else:
        options = {**(getattr(lm, "kwargs", None) or {}), **kwargs}
        limit = options.get("max_tokens") or options.get("max_completion_tokens") or engine_default
        size = _messages_bytes(prompt, messages, options)
    if size is None or not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        return None
    return samples * (size + limit)


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of ``value`` as a provider would send it: a pydantic model class as its JSON schema, other
    structures as JSON (anything else by its text)."""
    import json

    from pydantic import BaseModel

    if isinstance(value, type) and issubclass(value, BaseModel):
        value = value.model_json_schema()
    return len(json.dumps(value, default=repr).encode("utf-8"))


def _messages_bytes(prompt: Any, messages: Any, options: dict[str, Any]) -> int | None:
    """:func:`token_bound`'s prompt part for a call with a prompt string or message dicts."""
    if messages is None:
        messages = [{"role": "user", "content": prompt}] if prompt is not None else []
    size = TEMPLATE_TOKENS_PER_CALL
    for message in messages:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            if isinstance(part, dict):
                if part.get("type", "text") != "text":
                    return None  # an image or audio part: its tokens are not its bytes
                part = part.get("text")
            if part is not None and not isinstance(part, str):
                return None
            size += len((part or "").encode("utf-8"))
        for key in ("tool_calls", "name", "tool_call_id"):
            if message.get(key) is not None:
                size += _text_bytes(message[key])
        size += TEMPLATE_TOKENS_PER_MESSAGE
    for key in _PROMPT_OPTIONS:
        if options.get(key) is not None:
            size += _text_bytes(options[key])
    return size


def _request_bytes(request: Any) -> int | None:
    """:func:`token_bound`'s prompt part for a ``dspy.lm15.Request``: ``None`` if a part is not text."""
    size = TEMPLATE_TOKENS_PER_CALL
    system = request.system
    for part in (system if isinstance(system, (list, tuple)) else [system]):
        text = getattr(part, "text", part)
        if text is not None and not isinstance(text, str):
            return None
        size += len((text or "").encode("utf-8"))
    for message in request.messages:
        for part in message.parts:
            if getattr(part, "type", None) != "text":
                return None
            size += len(part.text.encode("utf-8"))
        size += TEMPLATE_TOKENS_PER_MESSAGE
    for extra in (request.tools, request.config.response_format, request.config.tool_choice):
        if extra:
            size += _text_bytes(extra)
    if request.config.extensions:  # sent as prompt, and e.g. a continuation to score is generated as well
        size += 2 * _text_bytes(request.config.extensions)
    return size


def _samples_requested(lm: dspy.BaseLM, kwargs: dict[str, Any]) -> int:
    n = kwargs.get("n", kwargs.get("num_generations", lm.kwargs.get("n", 1)))
    return max(1, int(n or 1))


class MeteredLM(dspy.BaseLM):
    """A ``dspy.BaseLM`` that meters and caps the calls of the LM it wraps.

    Attribute reads not defined here (``model``, ``kwargs``, ``history``, ``cache`` ...) go to the
    wrapped LM, so adapters see the real model. ``n`` samples count as ``n`` calls.
    """

    def __init__(self, inner: dspy.BaseLM, meter: BudgetMeter, role: Role) -> None:  # noqa: D107
        # BaseLM.__init__ is deliberately not called: every state attribute is the inner LM's.
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_meter", meter)
        object.__setattr__(self, "_role", role)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_inner"), name)

    @property
    def inner(self) -> dspy.BaseLM:
        return self._inner

    @property
    def role(self) -> Role:
        return self._role

    @property
    def supports_function_calling(self) -> bool:  # type: ignore[override]
        return bool(getattr(self._inner, "supports_function_calling", False))

    @property
    def supports_reasoning(self) -> bool:  # type: ignore[override]
        return bool(getattr(self._inner, "supports_reasoning", False))

    @property
    def supports_response_schema(self) -> bool:  # type: ignore[override]
        return bool(getattr(self._inner, "supports_response_schema", False))

    def copy(self, **kwargs: Any) -> MeteredLM:
        return MeteredLM(self._inner.copy(**kwargs), self._meter, self._role)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        slots, bound = self._admit(prompt, messages, kwargs)
        counter = _CallCounter(dspy.settings.usage_tracker)
        held = self._meter.reserve(self._role, slots, tokens=bound)
        try:
            with dspy.context(usage_tracker=counter), self._adapter_owned(messages):
                result = self._inner(prompt, messages=messages, **kwargs)
        except Exception as exc:
            raised = self._failed(exc, slots, held, counter)
            if raised is exc:
                raise
            raise raised from exc
        except BaseException:  # interrupted (KeyboardInterrupt, a cancelled task): what it held is given back
            self._interrupted(slots, held, counter)
            raise
        self._settle(counter, slots, held)
        return result

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        slots, bound = self._admit(prompt, messages, kwargs)
        counter = _CallCounter(dspy.settings.usage_tracker)
        held = self._meter.reserve(self._role, slots, tokens=bound)
        try:
            with dspy.context(usage_tracker=counter), self._adapter_owned(messages):
                result = await self._inner.acall(prompt, messages=messages, **kwargs)
        except Exception as exc:
            raised = self._failed(exc, slots, held, counter)
            if raised is exc:
                raise
            raise raised from exc
        except BaseException:  # cancelled: what it held is given back
            self._interrupted(slots, held, counter)
            raise
        self._settle(counter, slots, held)
        return result

    def _admit(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> tuple[int, int | None]:
        """Refuse every call once the model is declared gone (see faults.py); else the call's slots and, under a
        token cap, the most tokens it can cost (:func:`token_bound`; ``None`` when it cannot be bounded)."""
        try:
            self._meter.faults.check()
        except Exception as exc:
            mark_unit(_COST_SINK.get(), exc)
            raise
        slots = _samples_requested(self._inner, kwargs)
        capped = self._meter.budget.token_cap(self._role) is not None
        bound = token_bound(self._inner, prompt, messages, kwargs) if capped else None
        if capped and bound is None and self._role not in self._meter._unbounded_warned:
            self._meter._unbounded_warned.add(self._role)
            logger.warning("`budget.max_{}_tokens` is set, but a call of the {} model has no completion cap (or "
                           "sends more than text), so its tokens cannot be bounded before it runs and it may pass the "
                           "cap by its own tokens. Set one on the LM to make the cap exact, e.g. "
                           "dspy.LM(..., max_tokens=512).", self._role, self._role)
        return slots, bound

    def _failed(self, exc: Exception, slots: int, held: int = 0, counter: _CallCounter | None = None) -> Exception:
        """Settle a failed call; the exception to raise: a fault (no answer) becomes LMFault or RunInterrupted.
        The tokens of samples that were answered before the failure (DSPy reports them) are charged."""
        tokens = counter.tokens if counter is not None else 0
        if isinstance(exc, BudgetExhausted) or not is_fault(exc):
            # The model answered (an invalid request, say) or a nested meter refused: charge it, conservatively.
            self._meter.settle(self._role, reserved=slots, calls=slots, tokens=tokens, failed=True,
                               reserved_tokens=held)
            return exc
        # No answer: not charged against the call cap (counted in failed_calls), never an outcome.
        self._meter.settle(self._role, reserved=slots, calls=0, tokens=tokens, failed=True, reserved_tokens=held)
        raised = self._meter.faults.failed(self._role, exc)
        mark_unit(_COST_SINK.get(), raised)
        logger.debug("{} model fault: {}", self._role, raised)
        return raised

    def _adapter_owned(self, messages: Any) -> AbstractContextManager[Any]:
        """Hand the adapter's ownership of ``messages`` on to the wrapped LM (no spurious deprecation warning)."""
        if _adapter_call is None or messages is None:
            return nullcontext()
        origin = _adapter_call.get()
        if origin is not None and origin[0] is self and origin[1] is messages:
            return adapter_message_call(self._inner, messages)
        return nullcontext()

    def _interrupted(self, slots: int, held: int, counter: _CallCounter) -> None:
        """Settle a call cut off by an interrupt or a cancellation: it may have reached the model, so its calls are
        charged, and its bound too (what it spent is unknown) unless DSPy reported its usage."""
        tokens = counter.tokens if counter.calls else held
        self._meter.settle(self._role, reserved=slots, calls=slots, tokens=tokens, failed=True, reserved_tokens=held)

    def _settle(self, counter: _CallCounter, slots: int, held: int = 0) -> None:
        self._meter.faults.succeeded(self._role)
        if counter.calls == 0:  # served from DSPy's cache: a call of the search all the same (see the module doc)
            self._meter.settle(self._role, reserved=slots, calls=slots, tokens=0, cache_hit=True,
                               reserved_tokens=held)
            return
        self._meter.settle(self._role, reserved=slots, calls=slots, tokens=counter.tokens, reserved_tokens=held)
        logger.trace("{} call charged: {} sample(s), {} tokens", self._role, slots, counter.tokens)


def unwrap_lm(lm: dspy.BaseLM | None) -> dspy.BaseLM | None:
    """The real LM behind any number of :class:`MeteredLM` layers."""
    while isinstance(lm, MeteredLM):
        lm = lm.inner
    return lm
