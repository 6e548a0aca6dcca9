"""The shared llama.cpp model registry: one loaded model per (file, context, threads, format), one lock each.

llama.cpp contexts are not thread-safe, so every engine that uses the same loaded model shares its
lock. Models loaded from a path are kept here until `unload_models`; a model object a caller injects
gets one lock per object (weakly held).
"""

from __future__ import annotations

import importlib
import os
import threading
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.errors import LOCAL_EXTRA_INSTALL_HINT, LlamaModelLoadError, MissingLocalExtraError

LLAMA_CPP_MODULE = "llama_cpp"


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
class ModelKey:
    """What makes two loaded models the same one."""

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


_REGISTRY: dict[ModelKey, SharedModel] = {}
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


def shared_for_injected(llama: Any) -> SharedModel:
    """One lock per injected model object, shared by every engine using it."""
    with _REGISTRY_LOCK:
        try:
            shared = _INJECTED.get(llama)
            if shared is None:
                shared = _INJECTED[llama] = SharedModel(llama=llama, lock=threading.Lock())
            return shared
        except TypeError:  # Not weak-referenceable: the engine keeps this lock for its lifetime.
            return SharedModel(llama=llama, lock=threading.Lock())


def load_shared(key: ModelKey, *, seed: int) -> SharedModel:
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
