"""Turn a user's ``lm`` setting into a ready `dspy.BaseLM`.

Accepted specs:

* ``None`` or ``"embedded"``: the embedded Qwen2.5-Coder-0.5B model from the
  ``local`` extra, run in-process by `LlamaCppEngine`;
* ``"embedded-1.5b"``: the opt-in Qwen2.5-Coder-1.5B model from the ``proposer``
  extra (a stronger prompt model), run the same way;
* a path to a ``.gguf`` file: that model, run by `LlamaCppEngine`;
* a `dspy.BaseLM`: returned unchanged;
* a provider/model string such as ``"openai/gpt-4o-mini"`` or
  ``"ollama_chat/qwen2.5"``: ``dspy.LM(spec, ...)``.

Example:
    >>> from dspy_icl_opt.lm import resolve_lm
    >>> lm = resolve_lm("openai/gpt-4o-mini", temperature=0.0)
    >>> lm.model
    'openai/gpt-4o-mini'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.llama_engine import DEFAULT_N_CTX, AsyncLlamaCppEngine, LlamaCppEngine
from dspy_icl_opt.lm.llama_models import load_llama_cpp
from dspy_icl_opt.lm.model_store import EMBEDDED_MODEL_ID, EMBEDDED_MODELS, ensure_embedded_model

EMBEDDED_SPEC = "embedded"
EMBEDDED_LM_NAME = f"embedded/{EMBEDDED_MODEL_ID}"
GGUF_LM_PREFIX = "gguf"
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
ENGINE_OPTIONS = ("n_threads", "seed", "chat_format", "verbose")
PROVIDER_MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/\S+$")
SPEC_ERROR = (
    "`lm` must be 'embedded' (or 'embedded-1.5b'), a path to a .gguf file, or a provider/model string such "
    "as 'openai/gpt-4o-mini', but got {spec!r}."
)


def _has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def _gguf_path(spec: str | os.PathLike[str]) -> Path | None:
    """Return the GGUF path ``spec`` names, None if it is not a path, or raise with the fix."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == GGUF_SUFFIX or _has_gguf_magic(path):
            return path
        raise ValueError(
            f"`lm` must be a GGUF model file when it names a file, but {str(spec)!r} is not one "
            "(no GGUF header). Convert the model to GGUF or pass a provider/model string."
        )
    if path.suffix.lower() == GGUF_SUFFIX or isinstance(spec, os.PathLike):
        raise FileNotFoundError(
            f"`lm` must be an existing .gguf file, but {str(spec)!r} does not exist. "
            "Check the path, or pass lm='embedded' to use the bundled model."
        )
    return None


def _split_engine_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    engine = {key: kwargs[key] for key in ENGINE_OPTIONS if key in kwargs}
    rest = {key: value for key, value in kwargs.items() if key not in ENGINE_OPTIONS}
    return engine, rest


def local_lm(
    path: str | os.PathLike[str],
    *,
    name: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
    cache: bool = True,
    n_ctx: int = DEFAULT_N_CTX,
    **kwargs: Any,
) -> dspy.LM:
    """Build a `dspy.LM` backed by a `LlamaCppEngine` (and its async twin) for a local GGUF file.

    Args:
        path: The GGUF file.
        name: The DSPy model name (used in history, usage and cache keys).
        temperature: Default sampling temperature (None: the engine's 0.0).
        max_tokens: Default completion budget (None: the engine's 512).
        cache: Whether DSPy caches responses.
        n_ctx: Context window in tokens.
        **kwargs: ``n_threads``, ``seed``, ``chat_format``, ``verbose`` go to the
            engine; everything else to `dspy.LM`.

    Returns:
        The LM; the model itself loads on the first call.

    Raises:
        MissingLocalExtraError: If llama-cpp-python is not installed.

    Example:
        >>> lm = local_lm("/models/phi.gguf", name="gguf/phi")  # doctest: +SKIP
    """
    load_llama_cpp()
    engine_options, lm_options = _split_engine_options(kwargs)
    engine = LlamaCppEngine(path, n_ctx=n_ctx, **engine_options)
    logger.debug("Local LM {} -> {}", name, engine)
    return dspy.LM(name, engine=engine, async_engine=AsyncLlamaCppEngine(engine), temperature=temperature,
                   max_tokens=max_tokens, cache=cache, **lm_options)


def resolve_lm(
    spec: str | os.PathLike[str] | dspy.BaseLM | None = None,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    cache: bool = True,
    n_ctx: int = DEFAULT_N_CTX,
    **kwargs: Any,
) -> dspy.BaseLM:
    """Resolve ``spec`` to a DSPy language model.

    Args:
        spec: None, ``"embedded"`` or ``"embedded-1.5b"``, a ``.gguf`` path, a `dspy.BaseLM`, or a
            provider/model string (``"openai/gpt-4o-mini"``, ``"ollama_chat/qwen2.5"``).
        temperature: Default sampling temperature.
        max_tokens: Default completion budget.
        cache: Whether DSPy caches responses.
        n_ctx: Context window for local models.
        **kwargs: For local models ``n_threads``, ``seed``, ``chat_format`` and
            ``verbose`` configure the engine; other keywords go to `dspy.LM`.

    Returns:
        The language model (an existing `dspy.BaseLM` is returned unchanged).

    Raises:
        ValueError: If ``spec`` is none of the accepted forms, or engine options
            are given for a provider model.
        FileNotFoundError: If a ``.gguf`` path does not exist.
        MissingLocalExtraError: If a local model is requested without the ``local`` extra.
        CorruptModelError: If the cached embedded model is damaged.

    Example:
        >>> lm = resolve_lm("embedded", max_tokens=128)  # doctest: +SKIP
        >>> lm.model  # doctest: +SKIP
        'embedded/qwen2.5-coder-0.5b-instruct-q4_k_m'
    """
    options = dict(temperature=temperature, max_tokens=max_tokens, cache=cache)
    if isinstance(spec, dspy.BaseLM):
        if temperature is not None or max_tokens is not None or kwargs:
            logger.warning("resolve_lm got an LM instance; ignoring temperature/max_tokens/{}", sorted(kwargs))
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in EMBEDDED_MODELS):
        model = EMBEDDED_MODELS[EMBEDDED_SPEC if spec is None else spec.strip().lower()]
        load_llama_cpp()  # Fail with the install hint before assembling 0.5 GB or more.
        return local_lm(ensure_embedded_model(model=model.name), name=model.lm_name, n_ctx=n_ctx, **options, **kwargs)
    if not isinstance(spec, (str, os.PathLike)) or (isinstance(spec, str) and not spec.strip()):
        raise ValueError(SPEC_ERROR.format(spec=spec))
    path = _gguf_path(spec)
    if path is not None:
        return local_lm(path, name=f"{GGUF_LM_PREFIX}/{path.stem}", n_ctx=n_ctx, **options, **kwargs)
    if PROVIDER_MODEL_PATTERN.match(spec):
        engine_options, lm_options = _split_engine_options(kwargs)
        if engine_options:
            raise ValueError(
                f"{sorted(engine_options)} must only be given for local models, but `lm` is the provider "
                f"model {spec!r}. Remove them, or pass a .gguf path or 'embedded'."
            )
        return dspy.LM(spec, **options, **lm_options)
    raise ValueError(SPEC_ERROR.format(spec=spec))
