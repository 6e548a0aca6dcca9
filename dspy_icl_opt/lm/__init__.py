"""Language-model plumbing: the embedded GGUF model, the llama.cpp engine, and `resolve_lm`.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.lm import resolve_lm
    >>> dspy.configure(lm=resolve_lm("embedded", max_tokens=256))  # doctest: +SKIP
"""

from dspy_icl_opt.lm.errors import (
    LOCAL_EXTRA_INSTALL_HINT,
    PROPOSER_EXTRA_INSTALL_HINT,
    CorruptModelError,
    LlamaContextOverflowError,
    LlamaModelLoadError,
    MissingLocalExtraError,
)
from dspy_icl_opt.lm.llama_engine import (
    AsyncLlamaCppEngine,
    DEFAULT_MAX_TOKENS,
    DEFAULT_N_CTX,
    DEFAULT_TEMPERATURE,
    LlamaCppEngine,
)
from dspy_icl_opt.lm.llama_messages import derive_seed, request_to_messages
from dspy_icl_opt.lm.llama_models import load_llama_cpp, loaded_model_count, unload_models
from dspy_icl_opt.lm.model_store import (
    CACHE_DIR_ENV_VAR,
    EMBEDDED_MODEL_DISPLAY_NAME,
    EMBEDDED_MODEL_DISTRIBUTIONS,
    EMBEDDED_MODEL_FILE_NAME,
    EMBEDDED_MODEL_ID,
    EMBEDDED_MODEL_SHA256,
    EMBEDDED_MODELS,
    PROPOSER_EMBEDDED,
    EmbeddedModel,
    assemble_model,
    default_cache_dir,
    embedded_model,
    ensure_embedded_model,
    locate_parts,
    sha256_file,
)
from dspy_icl_opt.lm.resolve import EMBEDDED_LM_NAME, local_lm, resolve_lm

__all__ = [
    "CACHE_DIR_ENV_VAR",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_N_CTX",
    "DEFAULT_TEMPERATURE",
    "EMBEDDED_LM_NAME",
    "EMBEDDED_MODEL_DISPLAY_NAME",
    "EMBEDDED_MODEL_DISTRIBUTIONS",
    "EMBEDDED_MODEL_FILE_NAME",
    "EMBEDDED_MODEL_ID",
    "EMBEDDED_MODEL_SHA256",
    "EMBEDDED_MODELS",
    "LOCAL_EXTRA_INSTALL_HINT",
    "PROPOSER_EMBEDDED",
    "PROPOSER_EXTRA_INSTALL_HINT",
    "AsyncLlamaCppEngine",
    "CorruptModelError",
    "EmbeddedModel",
    "LlamaContextOverflowError",
    "LlamaCppEngine",
    "LlamaModelLoadError",
    "MissingLocalExtraError",
    "assemble_model",
    "default_cache_dir",
    "derive_seed",
    "embedded_model",
    "ensure_embedded_model",
    "load_llama_cpp",
    "loaded_model_count",
    "local_lm",
    "locate_parts",
    "request_to_messages",
    "resolve_lm",
    "sha256_file",
    "unload_models",
]
