"""A DSPy 3.4 LM engine that runs GGUF models in-process with llama.cpp.

`LlamaCppEngine` implements DSPy's canonical engine contract
(``complete(Request) -> Response``, ``stream``, ``close``, ``dump_state`` /
``load_state``). Pass it as ``dspy.LM(name, engine=LlamaCppEngine(...))``; DSPy
keeps owning the response cache, history, usage tracking, callbacks, retries and
the ``n > 1`` fan-out (it calls `LlamaCppEngine.complete` once per candidate).

Thread safety: llama.cpp contexts are not thread-safe. All engines that use the
same loaded model share one lock, and every call into that model holds it, so
concurrent callers (e.g. ``dspy.Evaluate(num_threads=4)``) are serialized
rather than corrupting the context.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.lm.llama_engine import LlamaCppEngine
    >>> engine = LlamaCppEngine("model.gguf", n_ctx=2048)  # doctest: +SKIP
    >>> lm = dspy.LM("gguf/model", engine=engine, max_tokens=64)  # doctest: +SKIP
    >>> lm("Say hi")  # doctest: +SKIP
    ['Hi!']
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from collections.abc import AsyncIterator
from typing import Any

from dspy.clients.engines.base import validate_request
from dspy.lm15 import (
    InvalidRequestError,
    Message,
    ProviderError,
    Request,
    Response,
    TextPart,
    UnsupportedFeatureError,
    Usage,
    response_to_events,
)
from loguru import logger

from dspy_icl_opt._validation import check_int
from dspy_icl_opt.lm.errors import (
    LOCAL_EXTRA_INSTALL_HINT,
    LlamaContextOverflowError,
    LlamaModelLoadError,
    MissingLocalExtraError,
)
from dspy_icl_opt.lm.model_store import EMBEDDED_MODEL_FILE_NAME, ensure_embedded_model

LLAMA_CPP_MODULE = "llama_cpp"
PROVIDER_NAME = "llama.cpp"
DEFAULT_N_CTX = 4096
MIN_N_CTX = 256  # llama.cpp rounds smaller contexts up to this, which llama-cpp-python mishandles.
DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 0.95  # llama.cpp's own default; only matters when temperature > 0.
DEFAULT_SEED = 0
SEED_MODULUS = 2**31 - 1  # llama.cpp seeds are uint32; stay clear of the "random" sentinel.
DEVELOPER_PREFIX = "[developer] "
PART_SEPARATOR = "\n"
SYSTEM_JOIN = "\n\n"
CONTEXT_OVERFLOW_MARKER = "exceed context window"
LENGTH_FINISH_REASON = "length"
STOP_FINISH_REASON = "stop"
STATE_VERSION = 1
# Default threads = CPUs // 2 (llama.cpp's own heuristic). llama.cpp's OpenMP threads spin-wait, so using
# every CPU makes calls 5-20x slower as soon as anything else runs on the machine.
CPUS_PER_DEFAULT_THREAD = 2
# Sampling knobs from Config.extensions that llama.cpp's create_chat_completion accepts.
PASSTHROUGH_EXTENSIONS = frozenset(
    {"min_p", "typical_p", "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta"}
)


def load_llama_cpp(*, module_name: str = LLAMA_CPP_MODULE) -> ModuleType:
    """Import the llama.cpp bindings or raise `MissingLocalExtraError` with the fix.

    Args:
        module_name: Module to import (overridable for tests).

    Returns:
        The imported module.

    Raises:
        MissingLocalExtraError: If the module cannot be imported.

    Example:
        >>> llama_cpp = load_llama_cpp()  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingLocalExtraError(
            f"Local GGUF models need the `{module_name}` package (llama-cpp-python), but it could not be "
            f"imported ({exc}). Install it with: {LOCAL_EXTRA_INSTALL_HINT}"
        ) from exc


def available_cpus() -> int:
    """Return the number of CPUs this process may run on (at least 1).

    Example:
        >>> available_cpus() >= 1
        True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # Not available on macOS / Windows.
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class _ModelKey:
    path: str
    n_ctx: int
    n_threads: int
    chat_format: str | None
    verbose: bool


@dataclass
class SharedModel:
    """A loaded llama model plus the lock that serializes every call into it."""

    llama: Any
    lock: threading.Lock


_REGISTRY: dict[_ModelKey, SharedModel] = {}
_REGISTRY_LOCK = threading.Lock()
_INJECTED: weakref.WeakKeyDictionary[Any, SharedModel] = weakref.WeakKeyDictionary()


def loaded_model_count() -> int:
    """Return how many llama.cpp models are currently held by the shared registry.

    Example:
        >>> loaded_model_count() >= 0
        True
    """
    with _REGISTRY_LOCK:
        return len(_REGISTRY)


def unload_models() -> int:
    """Drop every shared llama.cpp model so its memory can be freed.

    Engines keep working: the next call loads the model again.

    Returns:
        The number of models released.

    Example:
        >>> unload_models() >= 0
        True
    """
    with _REGISTRY_LOCK:
        released = list(_REGISTRY.values())
        _REGISTRY.clear()
    for shared in released:
        with shared.lock:  # Let running calls finish before closing.
            close = getattr(shared.llama, "close", None)
            if callable(close):
                close()
    logger.debug("Unloaded {} llama.cpp model(s)", len(released))
    return len(released)


def _shared_for_injected(llama: Any) -> SharedModel:
    """One lock per injected model object, shared by every engine using it."""
    with _REGISTRY_LOCK:
        try:
            shared = _INJECTED.get(llama)
            if shared is None:
                shared = _INJECTED[llama] = SharedModel(llama=llama, lock=threading.Lock())
            return shared
        except TypeError:  # Not weak-referenceable: the engine keeps this lock for its lifetime.
            return SharedModel(llama=llama, lock=threading.Lock())


def _load_shared(key: _ModelKey, *, seed: int) -> SharedModel:
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(key)
        if shared is not None:
            return shared
        llama_cpp = load_llama_cpp()
        logger.info("Loading {} with llama.cpp (n_ctx={}, n_threads={})", key.path, key.n_ctx, key.n_threads)
        try:
            llama = llama_cpp.Llama(
                model_path=key.path, n_ctx=key.n_ctx, n_threads=key.n_threads, n_threads_batch=key.n_threads,
                seed=seed, chat_format=key.chat_format, verbose=key.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise LlamaModelLoadError(
                f"`model_path` must be a GGUF file llama.cpp can load, but loading {key.path} failed: {exc}. "
                "Check the file; for the embedded model call ensure_embedded_model(repair=True)."
            ) from exc
        shared = _REGISTRY[key] = SharedModel(llama=llama, lock=threading.Lock())
        return shared


def _parts_text(parts: tuple[Any, ...], *, where: str) -> str:
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, TextPart):
            raise UnsupportedFeatureError(
                f"The llama.cpp engine accepts text only, but {where}.parts[{index}] is "
                f"{type(part).__name__}. Send text, or use a multimodal provider model.",
                feature=f"{where}.parts[{index}]", provider=PROVIDER_NAME,
            )
        texts.append(part.text)
    return PART_SEPARATOR.join(texts)


def request_to_messages(request: Request) -> list[dict[str, str]]:
    """Convert a canonical request to llama.cpp chat messages.

    The system prompt comes first. Developer messages before the first user or
    assistant turn are merged into it; later ones become user messages prefixed
    with ``[developer]`` (chat templates allow one leading system message).

    Args:
        request: The canonical DSPy request.

    Returns:
        OpenAI-style ``{"role", "content"}`` dictionaries.

    Raises:
        UnsupportedFeatureError: For tools, tool messages or non-text parts.

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> request_to_messages(Request(model="m", system="Be brief.", messages=(Message.user("Hi"),)))
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    if request.tools:
        raise UnsupportedFeatureError(
            "The llama.cpp engine does not support tools, but the request has "
            f"{len(request.tools)}. Use a provider model for tool calling.", feature="tools", provider=PROVIDER_NAME,
        )
    system: list[str] = []
    if request.system is not None:
        is_text = isinstance(request.system, str)
        system.append(request.system if is_text else _parts_text(request.system, where="system"))
    turns: list[dict[str, str]] = []
    for index, message in enumerate(request.messages):
        text = _parts_text(message.parts, where=f"messages[{index}]")
        if message.role == "developer":
            if not turns:
                system.append(text)
            else:
                turns.append({"role": "user", "content": DEVELOPER_PREFIX + text})
        elif message.role in ("user", "assistant"):
            turns.append({"role": message.role, "content": text})
        else:
            raise UnsupportedFeatureError(
                f"The llama.cpp engine accepts user, assistant and developer messages, but messages[{index}] "
                f"has role {message.role!r}.", feature=f"messages[{index}].role", provider=PROVIDER_NAME,
            )
    head = [{"role": "system", "content": SYSTEM_JOIN.join(system)}] if system else []
    return head + turns


def _response_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Map lm15's canonical response formats onto llama.cpp's JSON grammar option.

    lm15 allows exactly ``{"type": "json_object"}`` and
    ``{"type": "json_schema", "schema": {...}, ...}``.
    """
    if not value:
        return None
    schema = value.get("schema") if value.get("type") == "json_schema" else None
    return {"type": "json_object", **({"schema": schema} if schema else {})}


def derive_seed(base: int, *, call_index: int) -> int:
    """Derive a deterministic per-call sampling seed from a base seed and a call counter.

    Args:
        base: The engine's (or request's) seed.
        call_index: 0 for the first sampled call, 1 for the next, ...

    Returns:
        A seed in ``[0, 2**31 - 1)``.

    Example:
        >>> derive_seed(0, call_index=0) == derive_seed(0, call_index=0)
        True
        >>> derive_seed(0, call_index=0) != derive_seed(0, call_index=1)
        True
    """
    digest = hashlib.blake2b(f"{base}:{call_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SEED_MODULUS


def _usage(result: dict[str, Any]) -> Usage:
    usage = result.get("usage") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        total_tokens=usage.get("total_tokens"),
    )


def _finish_reason(choice: dict[str, Any]) -> str:
    return LENGTH_FINISH_REASON if choice.get("finish_reason") == LENGTH_FINISH_REASON else STOP_FINISH_REASON


class LlamaCppEngine:
    """DSPy engine that answers canonical requests with a local llama.cpp model.

    The model is loaded lazily on the first call and shared, through a
    module-level registry, by every engine with the same model path and load
    settings (``n_ctx``, ``n_threads``, ``chat_format``, ``verbose``). llama.cpp
    is not thread-safe, so all calls into one loaded model are serialized with a
    lock shared by those engines.

    Sampling: ``temperature`` defaults to 0.0 (greedy) and ``max_tokens`` to 512
    when the request leaves them unset. At temperature > 0 each call gets its own
    seed derived from the base seed (the request's ``seed``, else the engine's)
    and a per-engine call counter, so DSPy's ``n > 1`` fan-out (n calls with the
    same request) yields different samples, reproducibly for a given seed.

    Args:
        model_path: Path of the GGUF file.
        n_ctx: Context window in tokens.
        n_threads: CPU threads for prompt processing and generation (default: half the
            CPUs available to the process, at least 1; more threads are faster only on
            an otherwise idle machine).
        seed: Base sampling seed.
        chat_format: llama.cpp chat format name (default: the template in the GGUF file).
        verbose: Let llama.cpp log to stderr.
        llama: An already-built object with llama.cpp's ``create_chat_completion``
            interface, used instead of loading ``model_path`` (tests, benchmarks).

    Raises:
        FileNotFoundError: If ``model_path`` does not exist and no ``llama`` is given.
        ValueError: If ``n_ctx`` < 256 or ``n_threads`` is not a positive integer.

    Example:
        >>> import dspy
        >>> engine = LlamaCppEngine("/models/qwen.gguf", n_ctx=2048, seed=7)  # doctest: +SKIP
        >>> lm = dspy.LM("gguf/qwen", engine=engine, temperature=0.0, max_tokens=128)  # doctest: +SKIP
        >>> dspy.Predict("question -> answer", lm=lm)(question="2+2?").answer  # doctest: +SKIP
        '4'
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        seed: int = DEFAULT_SEED,
        chat_format: str | None = None,
        verbose: bool = False,
        llama: Any = None,
    ) -> None:
        for name, value, minimum in (("n_ctx", n_ctx, MIN_N_CTX), ("n_threads", n_threads or 1, 1)):
            check_int(name, value, minimum=minimum, hint=f"Pass e.g. {name}={minimum}.")
        path = Path(model_path).expanduser()
        if llama is None and not path.is_file():
            raise FileNotFoundError(
                f"`model_path` must be an existing GGUF file, but got {str(model_path)!r}. "
                "Pass the path of a downloaded .gguf file, or use resolve_lm('embedded')."
            )
        self.model_path = str(path.resolve())
        self.n_ctx = n_ctx
        self.requested_n_threads = n_threads
        self.n_threads = n_threads or max(1, available_cpus() // CPUS_PER_DEFAULT_THREAD)
        self.seed = int(seed)
        self.chat_format = chat_format
        self.verbose = verbose
        self._llama = llama
        self._injected = _shared_for_injected(llama) if llama is not None else None
        self._calls = 0
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LlamaCppEngine(model_path={self.model_path!r}, n_ctx={self.n_ctx}, seed={self.seed})"

    # Engines are borrowed handles to a shared model: copies of a DSPy program share them.
    def __deepcopy__(self, memo: dict[int, Any]) -> LlamaCppEngine:
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_calls_lock", None)
        state.pop("_injected", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls_lock = threading.Lock()
        self._injected = _shared_for_injected(self._llama) if self._llama is not None else None

    def _model(self) -> SharedModel:
        if self._injected is not None:
            return self._injected
        key = _ModelKey(self.model_path, self.n_ctx, self.n_threads, self.chat_format, self.verbose)
        return _load_shared(key, seed=self.seed)

    def load(self) -> LlamaCppEngine:
        """Load (or join) the shared model now instead of on the first call.

        Returns:
            This engine.

        Example:
            >>> engine = LlamaCppEngine("/models/qwen.gguf").load()  # doctest: +SKIP
        """
        self._model()
        return self

    @property
    def llama(self) -> Any:
        """The underlying llama object (loads it if needed).

        Example:
            >>> engine.llama.n_ctx()  # doctest: +SKIP
            4096
        """
        return self._model().llama

    def _call_seed(self, base: int, *, temperature: float) -> int:
        if temperature <= 0:
            return base
        with self._calls_lock:
            index, self._calls = self._calls, self._calls + 1
        return derive_seed(base, call_index=index)

    def completion_kwargs(self, request: Request) -> dict[str, Any]:
        """Build the ``create_chat_completion`` keyword arguments for ``request``.

        Each call at temperature > 0 consumes one per-call seed.

        Args:
            request: The canonical DSPy request.

        Returns:
            Keyword arguments for ``llama_cpp.Llama.create_chat_completion``.

        Example:
            >>> from dspy.lm15 import Message, Request
            >>> engine = LlamaCppEngine("m.gguf", llama=object())
            >>> engine.completion_kwargs(Request(model="m", messages=(Message.user("Hi"),)))["max_tokens"]
            512
        """
        config = request.config
        temperature = DEFAULT_TEMPERATURE if config.temperature is None else float(config.temperature)
        base_seed = self.seed if config.seed is None else int(config.seed)
        kwargs: dict[str, Any] = {
            "messages": request_to_messages(request),
            "temperature": temperature,
            "max_tokens": DEFAULT_MAX_TOKENS if config.max_tokens is None else config.max_tokens,
            "top_p": DEFAULT_TOP_P if config.top_p is None else config.top_p,
            "stop": list(config.stop),
            "seed": self._call_seed(base_seed, temperature=temperature),
        }
        optional = {"top_k": config.top_k, "presence_penalty": config.presence_penalty,
                    "frequency_penalty": config.frequency_penalty,
                    "response_format": _response_format(config.response_format)}
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        for key, value in (config.extensions or {}).items():
            if key in PASSTHROUGH_EXTENSIONS:
                kwargs[key] = value
            else:
                logger.warning("Ignoring option {}={!r}: the llama.cpp engine does not support it", key, value)
        return kwargs

    def _create(self, llama: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            return llama.create_chat_completion(**kwargs)
        except ValueError as exc:
            if CONTEXT_OVERFLOW_MARKER in str(exc):
                raise LlamaContextOverflowError(
                    f"The prompt must fit in the context window n_ctx={self.n_ctx} of {self.model_path}, "
                    f"but llama.cpp reported: {exc}. Pass a larger n_ctx (e.g. resolve_lm(..., n_ctx="
                    f"{2 * self.n_ctx})) or shorten the prompt (fewer demonstrations).",
                    n_ctx=self.n_ctx,
                ) from exc
            raise InvalidRequestError(f"llama.cpp rejected the request: {exc}", provider=PROVIDER_NAME) from exc
        except RuntimeError as exc:
            raise ProviderError(f"llama.cpp failed during generation: {exc}", provider=PROVIDER_NAME) from exc

    def complete(self, request: Request) -> Response:
        """Run one chat completion for ``request`` (one candidate).

        Args:
            request: The canonical DSPy request.

        Returns:
            The canonical response with text, finish reason and token usage.

        Raises:
            LlamaContextOverflowError: If the prompt does not fit in ``n_ctx``.
            UnsupportedFeatureError: For tools or non-text content.

        Example:
            >>> from dspy.lm15 import Message, Request
            >>> engine.complete(Request(model="m", messages=(Message.user("Hi"),))).text  # doctest: +SKIP
            'Hello!'
        """
        validate_request(request)
        kwargs = self.completion_kwargs(request)
        shared = self._model()
        with shared.lock:
            result = self._create(shared.llama, kwargs)
        choice = result["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        return Response(
            id=result.get("id"),
            model=request.model,
            message=Message.assistant((TextPart(text),)),
            finish_reason=_finish_reason(choice),
            usage=_usage(result),
        )

    def stream(self, request: Request):
        """Return the stream events of one completed response (no token streaming).

        Args:
            request: The canonical DSPy request.

        Returns:
            An iterator of canonical stream events.

        Example:
            >>> events = list(engine.stream(request))  # doctest: +SKIP
        """
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Release nothing: the loaded model is shared; free it with `unload_models()`.

        Example:
            >>> engine.close()  # doctest: +SKIP
        """
        logger.debug("close() on {}: shared model kept loaded", self)

    def dump_state(self) -> dict[str, Any]:
        """Return a JSON-serializable description from which `load_state` rebuilds the engine.

        An injected ``llama`` object is not saved; the loaded engine loads ``model_path``.

        Returns:
            The engine settings.

        Example:
            >>> LlamaCppEngine("m.gguf", llama=object()).dump_state()["n_ctx"]
            4096
        """
        return {
            "version": STATE_VERSION,
            "model_path": self.model_path,
            "embedded": Path(self.model_path).name == EMBEDDED_MODEL_FILE_NAME,
            "n_ctx": self.n_ctx,
            "n_threads": self.requested_n_threads,
            "seed": self.seed,
            "chat_format": self.chat_format,
            "verbose": self.verbose,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        """Rebuild an engine from `dump_state` output.

        The embedded model is re-located (and assembled if needed) when the saved
        path does not exist on this machine.

        Args:
            state: The dictionary returned by `dump_state`.

        Returns:
            A new engine; the model loads on first use.

        Raises:
            ValueError: If the state comes from an unknown format version.

        Example:
            >>> engine = LlamaCppEngine.load_state(saved_state)  # doctest: +SKIP
        """
        if state.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError(
                f"LlamaCppEngine state `version` must be {STATE_VERSION}, but got {state.get('version')!r}. "
                "Save the program again with this version of dspy-icl-opt."
            )
        path = state["model_path"]
        if state.get("embedded") and not Path(path).is_file():
            path = str(ensure_embedded_model())
        return cls(
            path,
            n_ctx=state.get("n_ctx", DEFAULT_N_CTX),
            n_threads=state.get("n_threads"),
            seed=state.get("seed", DEFAULT_SEED),
            chat_format=state.get("chat_format"),
            verbose=state.get("verbose", False),
        )


class AsyncLlamaCppEngine:
    """Async counterpart of `LlamaCppEngine` for ``dspy.LM(..., async_engine=...)``.

    Each call runs the wrapped engine's blocking `LlamaCppEngine.complete` in a
    worker thread (`asyncio.to_thread`), so the event loop stays responsive; the
    shared model lock still serializes the actual llama.cpp calls.

    Args:
        engine: The synchronous engine to run.

    Example:
        >>> import dspy
        >>> sync = LlamaCppEngine("/models/qwen.gguf")  # doctest: +SKIP
        >>> lm = dspy.LM("gguf/qwen", engine=sync, async_engine=AsyncLlamaCppEngine(sync))  # doctest: +SKIP
        >>> await lm.acall("Hi")  # doctest: +SKIP
        ['Hello!']
    """

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncLlamaCppEngine:
        return self

    async def complete(self, request: Request) -> Response:
        """Run `LlamaCppEngine.complete` in a worker thread.

        Args:
            request: The canonical DSPy request.

        Returns:
            The canonical response.

        Example:
            >>> response = await AsyncLlamaCppEngine(engine).complete(request)  # doctest: +SKIP
        """
        return await asyncio.to_thread(self.engine.complete, request)

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        """Yield the stream events of one completed response.

        Args:
            request: The canonical DSPy request.

        Yields:
            Canonical stream events.

        Example:
            >>> events = [e async for e in AsyncLlamaCppEngine(engine).stream(request)]  # doctest: +SKIP
        """
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Release nothing (see `LlamaCppEngine.close`).

        Example:
            >>> await AsyncLlamaCppEngine(engine).aclose()  # doctest: +SKIP
        """
        self.engine.close()

    def dump_state(self) -> dict[str, Any]:
        """Return the wrapped engine's state (see `LlamaCppEngine.dump_state`).

        Example:
            >>> AsyncLlamaCppEngine(LlamaCppEngine("m.gguf", llama=object())).dump_state()["n_ctx"]
            4096
        """
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLlamaCppEngine:
        """Rebuild from `dump_state` output (the model itself is shared through the registry).

        Args:
            state: The dictionary returned by `dump_state`.

        Returns:
            A new async engine around a new `LlamaCppEngine`.

        Example:
            >>> engine = AsyncLlamaCppEngine.load_state(saved_state)  # doctest: +SKIP
        """
        return cls(LlamaCppEngine.load_state(state))
