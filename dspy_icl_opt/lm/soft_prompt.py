"""A learned soft prompt: its PEFT method, its tensors, and the two files it is saved as.

``soft_prompt.safetensors`` holds the tensors PEFT saves for a prompt-learning method (the virtual
token embeddings, or for prefix tuning the per-layer keys and values); ``soft_prompt.json`` holds
the method, its settings and the identity of the base model it was trained on, so that it is never
attached to another model. Methods (PEFT's names in brackets):

* ``prompt_tuning`` (``PROMPT_TUNING``): virtual token embeddings prepended to the input;
* ``prefix_tuning`` (``PREFIX_TUNING``): learned keys and values prepended in every layer;
* ``p_tuning`` (``P_TUNING``): virtual tokens produced by a small MLP encoder while training
  (saved as the embeddings it produces, as PEFT does).

Example:
    >>> from dspy_icl_opt.lm.soft_prompt import SOFT_PROMPT_FILE, SOFT_PROMPT_JSON
    >>> SOFT_PROMPT_FILE, SOFT_PROMPT_JSON
    ('soft_prompt.safetensors', 'soft_prompt.json')
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dspy_icl_opt.lm.hf_models import identity_text, require_soft_extra
from dspy_icl_opt.search.report import atomic_write_text

Method = Literal["prompt_tuning", "prefix_tuning", "p_tuning"]
METHODS: tuple[str, ...] = ("prompt_tuning", "prefix_tuning", "p_tuning")
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
SOFT_PROMPT_JSON = "soft_prompt.json"
FORMAT_NAME = "dspy-icl-opt/soft-prompt"
FORMAT_VERSION = 1
#: Hidden size of p-tuning's MLP encoder (PEFT's default follows the model's width, far too big to train on a CPU).
P_TUNING_ENCODER_HIDDEN = 128
_DIGEST_CHARS = 16


def peft_config(method: str, num_virtual_tokens: int, *, inference_mode: bool) -> Any:
    """The PEFT config of ``method`` for a causal LM (model sizes are filled in by PEFT from the model)."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    common = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": num_virtual_tokens,
              "inference_mode": inference_mode}
    if method == "prompt_tuning":
        return PromptTuningConfig(**common)
    if method == "prefix_tuning":
        return PrefixTuningConfig(**common)
    if method == "p_tuning":
        return PromptEncoderConfig(encoder_hidden_size=P_TUNING_ENCODER_HIDDEN, **common)
    raise ValueError(f"`method` must be one of {list(METHODS)}, but got {method!r}.")


@dataclass
class SoftPrompt:
    """The learned part: method, tensors (PEFT's state dict) and where it came from.

    Args:
        method: ``prompt_tuning``, ``prefix_tuning`` or ``p_tuning``.
        num_virtual_tokens: how many virtual tokens it prepends.
        tensors: PEFT's saved state (``{"prompt_embeddings": tensor}``).
        base: the identity of the base model (:func:`~dspy_icl_opt.lm.hf_models.base_identity`).
        settings: how it was trained (learning rate, epochs, seed ...), for the record.
        folder: where it is saved, once it is.
    """

    method: str
    num_virtual_tokens: int
    tensors: dict[str, Any]
    base: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def digest(self) -> str:
        """A digest of the tensors and the method: two soft prompts with one digest answer alike."""
        digest = hashlib.sha256(f"{self.method}:{self.num_virtual_tokens}:{identity_text(self.base)}".encode())
        for name in sorted(self.tensors):
            tensor = self.tensors[name].detach().to("cpu").contiguous()
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:_DIGEST_CHARS]

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "method": self.method,
                "num_virtual_tokens": self.num_virtual_tokens, "base_model": dict(self.base),
                "digest": self.digest, "settings": self.settings}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``soft_prompt.safetensors`` and ``soft_prompt.json`` into ``folder``; returns the folder."""
        from safetensors.torch import save_file

        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}
        partial = target / f".{SOFT_PROMPT_FILE}.partial"
        save_file(tensors, str(partial), metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION)})
        os.replace(partial, target / SOFT_PROMPT_FILE)
        atomic_write_text(target / SOFT_PROMPT_JSON, json.dumps(self.metadata(), indent=2, sort_keys=True,
                                                                default=str))
        self.folder = target
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SoftPrompt:
        """Read a soft prompt saved by :meth:`save`; a ValueError names what is missing or wrong."""
        require_soft_extra()
        from safetensors.torch import load_file

        source = Path(folder)
        missing = [name for name in (SOFT_PROMPT_FILE, SOFT_PROMPT_JSON) if not (source / name).is_file()]
        if missing:
            raise ValueError(f"`folder` must hold a saved soft prompt ({SOFT_PROMPT_FILE} and {SOFT_PROMPT_JSON}), "
                             f"but {str(source)!r} lacks {missing}. Pass the folder a SoftPromptTuner run wrote.")
        meta = json.loads((source / SOFT_PROMPT_JSON).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{source / SOFT_PROMPT_JSON} must be a {FORMAT_NAME} file of version {FORMAT_VERSION}, "
                             f"but it says {meta.get('format')!r} version {meta.get('version')!r}.")
        prompt = cls(meta["method"], int(meta["num_virtual_tokens"]), load_file(str(source / SOFT_PROMPT_FILE)),
                     dict(meta["base_model"]), dict(meta.get("settings") or {}), source)
        if meta.get("digest") and meta["digest"] != prompt.digest:
            raise ValueError(f"{source / SOFT_PROMPT_FILE} does not match the digest in {SOFT_PROMPT_JSON} "
                             "(one of the two files was replaced). Save the soft prompt again.")
        return prompt

    def check_base(self, identity: dict[str, str]) -> None:
        """Raise a ValueError unless ``identity`` is the base model this soft prompt was trained on."""
        if identity_text(identity) != identity_text(self.base):
            raise ValueError(f"This soft prompt was trained on {identity_text(self.base)}, but the model it is "
                             f"attached to is {identity_text(identity)}. Use the base model it was trained on.")

    def attach(self, model: Any, identity: dict[str, str]) -> Any:
        """A PEFT model that runs ``model`` with this soft prompt (inference mode; ``model`` is not changed).

        Raises:
            ValueError: when ``identity`` is not the base model the soft prompt was trained on.
        """
        self.check_base(identity)
        from peft import get_peft_model, set_peft_model_state_dict

        wrapped = get_peft_model(model, peft_config(self.method, self.num_virtual_tokens, inference_mode=True))
        set_peft_model_state_dict(wrapped, self.tensors)
        return wrapped.eval()
