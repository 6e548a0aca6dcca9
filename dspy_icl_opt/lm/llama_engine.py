"""A DSPy 3.4 LM engine that runs GGUF models in-process with llama.cpp.

`LlamaCppEngine` implements DSPy's canonical engine contract
(``complete(Request) -> Response``, ``stream``, ``close``, ``dump_state`` /
``load_state``). Pass it as ``dspy.LM(name, engine=LlamaCppEngine(...))``; DSPy
keeps owning the response cache, history, usage tracking, callbacks, retries and
the ``n > 1`` fan-out (it calls `LlamaCppEngine.complete` once per candidate).

Thread safety: llama.cpp contexts are not thread-safe. All engines that use the
same loaded model share one lock, and every call into that model holds it, so
concurrent callers (e.g. ``dspy.Evaluate(num_threads=4)``) are serialized
rather than corrupting the context. The loaded models and their locks live in
`dspy_icl_opt.lm.llama_models`; request and response conversion in
`dspy_icl_opt.lm.llama_messages`.

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
import dataclasses
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from dspy.clients.engines.base import validate_request
from dspy.lm15 import (
    InvalidRequestError,
    Message,
    ProviderError,
    Request,
    Response,
    TextPart,
    TokenLogprob,
    response_to_events,
)

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int
from dspy_icl_opt.lm.errors import LlamaContextOverflowError
from dspy_icl_opt.lm.llama_messages import (
    CONTINUATION,
    PROVIDER_NAME,
    derive_seed,
    finish_reason,
    request_to_messages,
    response_format,
    usage_of,
)
from dspy_icl_opt.lm.llama_models import (
    ModelKey,
    SharedModel,
    available_cpus,
    load_shared,
    shared_for_injected,
)
from dspy_icl_opt.lm.model_store import EMBEDDED_MODELS, ensure_embedded_model

DEFAULT_N_CTX = 4096
MIN_N_CTX = 256  # llama.cpp rounds smaller contexts up to this, which llama-cpp-python mishandles.
DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 0.95  # llama.cpp's own default; only matters when temperature > 0.
DEFAULT_SEED = 0
CONTEXT_OVERFLOW_MARKER = "exceed context window"
STATE_VERSION = 1
# Default threads = CPUs // 2 (llama.cpp's own heuristic). llama.cpp's OpenMP threads spin-wait, so using
# every CPU makes calls 5-20x slower as soon as anything else runs on the machine.
CPUS_PER_DEFAULT_THREAD = 2
# Sampling knobs from Config.extensions that llama.cpp's create_chat_completion accepts.
PASSTHROUGH_EXTENSIONS = frozenset(
    {"min_p", "typical_p", "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta"}
)


class LlamaCppEngine:
    """DSPy engine that answers canonical requests with a local llama.cpp model.

    The model is loaded lazily on the first call and shared, through a
    module-level registry, by every engine with the same model path and load
    settings (``n_ctx``, ``n_threads``, ``chat_format``, ``verbose``). llama.cpp
    is not thread-safe, so all calls into one loaded model are serialized with a
    lock shared by those engines.

    Sampling: ``temperature`` defaults to 0.0 (greedy) and ``max_tokens`` to 512
    when the request leaves them unset. At temperature > 0 each call gets its own
    seed derived from the base seed and a counter, so DSPy's ``n > 1`` fan-out
    (n calls with the same request) yields different samples. With a request
    ``seed`` the counter is per seed value (the k-th call with seed s samples
    with ``derive_seed(s, k)``), so a call's sample depends only on its own seed
    and never on how many other calls came first: a resumed run that asks the
    remaining questions with the same seeds samples what the uninterrupted run
    did. Without one, the engine's seed and a per-engine call counter are used.

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

    #: The completion cap of a request that sets none; the budget meter bounds a call's tokens with it.
    default_max_tokens = DEFAULT_MAX_TOKENS

    #: ``complete`` scores given text (``Config.extensions={"score_continuation": text}``).
    supports_continuation_scoring = True

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
        self._injected = shared_for_injected(llama) if llama is not None else None
        self._calls = 0
        self._seed_uses: dict[int, int] = {}
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
        self._injected = shared_for_injected(self._llama) if self._llama is not None else None

    def _model(self) -> SharedModel:
        if self._injected is not None:
            return self._injected
        key = ModelKey(self.model_path, self.n_ctx, self.n_threads, self.chat_format, self.verbose)
        return load_shared(key, seed=self.seed)

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

    def _call_seed(self, base: int, *, temperature: float, explicit: bool = False) -> int:
        if temperature <= 0:
            return base
        with self._calls_lock:
            if explicit:
                uses = getattr(self, "_seed_uses", None)
                if uses is None:
                    uses = self._seed_uses = {}
                index = uses.get(base, 0)
                uses[base] = index + 1
            else:
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
            "seed": self._call_seed(base_seed, temperature=temperature, explicit=config.seed is not None),
        }
        optional = {"top_k": config.top_k, "presence_penalty": config.presence_penalty,
                    "frequency_penalty": config.frequency_penalty,
                    "response_format": response_format(config.response_format)}
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        for key, value in (config.extensions or {}).items():
            if key == CONTINUATION:
                continue  # read by complete()
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

        With ``Config.extensions={"score_continuation": text}`` the model does not sample: it is made to write
        ``text`` after the prompt (one decoding step per token, the prompt formatted exactly as for a
        generation), and the response carries ``text`` with each token's log-probability under the model
        (``Response.logprobs``), so a caller can score an answer it did not write (APE's likelihood scoring).

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
        continuation = (request.config.extensions or {}).get(CONTINUATION)
        if continuation is not None:
            return self._score_continuation(request, continuation)
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
            finish_reason=finish_reason(choice),
            usage=usage_of(result),
        )

    def _score_continuation(self, request: Request, text: Any) -> Response:
        """The response to a request that scores ``text`` (see :meth:`complete`). Its arguments are built at
        temperature 0, so it draws no sampling seed: the samples of other calls stay what they would be."""
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(f"`{CONTINUATION}` must be a non-empty string, but got {text!r}.",
                                      provider=PROVIDER_NAME)
        greedy = dataclasses.replace(request, config=dataclasses.replace(request.config, temperature=0.0))
        kwargs = self.completion_kwargs(greedy)
        shared = self._model()
        with shared.lock:
            llama = shared.llama
            tokens = list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
            forced = _ForcedTokens(tokens, eos=llama.token_eos())
            kwargs.update(max_tokens=len(tokens), stop=[], logits_processor=[forced])
            kwargs.pop("response_format", None)
            result = self._create(llama, kwargs)
            pieces = [llama.detokenize([token], special=True).decode("utf-8", errors="replace") for token in tokens]
        if len(forced.logprobs) != len(tokens):
            raise InvalidRequestError(
                f"The text to score ends the model's turn before its last token (the model stopped after "
                f"{len(forced.logprobs)} of its {len(tokens)} tokens); score text that holds no end-of-turn token "
                "before its end.", provider=PROVIDER_NAME)
        logprobs = tuple(TokenLogprob(token=piece, logprob=value, token_id=token)
                         for piece, value, token in zip(pieces, forced.logprobs, tokens))
        return Response(id=result.get("id"), model=request.model, message=Message.assistant((TextPart(text),)),
                        finish_reason="stop", usage=usage_of(result), logprobs=logprobs)

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
            "embedded": self._embedded_name(),
            "n_ctx": self.n_ctx,
            "n_threads": self.requested_n_threads,
            "seed": self.seed,
            "chat_format": self.chat_format,
            "verbose": self.verbose,
        }

    def _embedded_name(self) -> str | None:
        """The name of the embedded model this engine runs (re-assembled on load elsewhere), else None."""
        file_name = Path(self.model_path).name
        return next((model.name for model in EMBEDDED_MODELS.values() if model.file_name == file_name), None)

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
        embedded = state.get("embedded")
        if embedded and not Path(path).is_file():  # True: a state saved before there were two embedded models
            path = str(ensure_embedded_model(model=embedded if isinstance(embedded, str) else "embedded"))
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


class _ForcedTokens:
    """A llama.cpp logits processor that makes greedy decoding write ``tokens`` and records each one's
    log-probability under the model's own logits (before anything else in the sampler chain)."""

    def __init__(self, tokens: list[int], *, eos: int) -> None:
        self.tokens, self.eos = tokens, eos
        self.logprobs: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        step = len(self.logprobs)
        token = self.tokens[step] if step < len(self.tokens) else self.eos
        logits = np.asarray(scores, dtype=np.float64)
        top = float(logits.max())
        self.logprobs.append(float(logits[token] - top - np.log(np.exp(logits - top).sum())))
        forced = np.full_like(scores, -np.inf)
        forced[token] = 0.0
        return forced
