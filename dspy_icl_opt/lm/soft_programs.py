"""Programs that carry a soft prompt: attach one to a program, save such a program, load it back.

A program's predictor carries a soft prompt through its own ``dspy.LM`` (a
:class:`~dspy_icl_opt.lm.transformers_engine.TransformersEngine` with the soft prompt). DSPy would save
that LM inside ``program.json``, and refuse to load it back without ``allow_unsafe_lm_state=True``;
so :func:`save_program` keeps ``program.json`` to the hard prompt (instructions, demos: it loads
anywhere) and writes the soft prompt beside it, and :func:`load_soft_program` loads both.

Example:
    >>> program = load_soft_program(make_program("qa", task), "runs/soft")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt.lm.model_store import EMBEDDED_MODEL_ID
from dspy_icl_opt.lm.soft_prompt import SOFT_PROMPT_FILE, SoftPrompt
from dspy_icl_opt.lm.transformers_engine import transformers_lm
from dspy_icl_opt.search.budget import unwrap_lm
from dspy_icl_opt.search.report import PROGRAM_FILE

#: The sampling settings of the task model that a soft-prompted model keeps.
KEPT_LM_SETTINGS = ("temperature", "max_tokens", "top_p", "stop")


def soft_prompt_of(lm: Any) -> SoftPrompt | None:
    """The soft prompt an LM runs with (behind any meters), or None."""
    engine = getattr(unwrap_lm(lm), "engine", None) if lm is not None else None
    soft = getattr(engine, "soft_prompt", None)
    return soft if isinstance(soft, SoftPrompt) else None


def save_program(program: dspy.Module, folder: str | os.PathLike[str]) -> Path:
    """Save ``program.json`` (without the LMs that carry a soft prompt) and that soft prompt beside it."""
    target = Path(folder)
    held = [(predictor, predictor.lm) for _, predictor in program.named_predictors()
            if soft_prompt_of(predictor.lm) is not None]
    for predictor, _ in held:
        predictor.lm = None
    try:
        program.save(str(target / PROGRAM_FILE))
    finally:
        for predictor, lm in held:
            predictor.lm = lm
    if held:
        soft_prompt_of(held[0][1]).save(target)  # type: ignore[union-attr]
    return target / PROGRAM_FILE


def soft_lm_settings(like: dspy.BaseLM | None) -> dict[str, Any]:
    """The sampling settings and cache switch the soft-prompted LM takes over from the task model."""
    inner = unwrap_lm(like) if like is not None else None
    kwargs = dict(getattr(inner, "kwargs", None) or {})
    settings = {k: kwargs[k] for k in KEPT_LM_SETTINGS if kwargs.get(k) is not None}
    settings["cache"] = bool(getattr(inner, "cache", True))
    return settings


def attach_soft_prompt(program: dspy.Module, soft: SoftPrompt | str | os.PathLike[str], *,
                       base_model: str | os.PathLike[str] | None = None, like: dspy.BaseLM | None = None,
                       **lm_kwargs: Any) -> dspy.Module:
    """Give ``program``'s one predictor an LM that runs the soft prompt's base model with it; returns ``program``.

    Args:
        soft: a :class:`SoftPrompt` or the folder it was saved in.
        base_model: the base model's file or folder (default: the one recorded when it was trained).
        like: an LM whose sampling settings (temperature, max_tokens ...) and cache switch to keep.
    """
    prompt = soft if isinstance(soft, SoftPrompt) else SoftPrompt.load(soft)
    named = list(program.named_predictors())
    if len(named) != 1:
        raise ValueError(f"`program` must have exactly one predictor to carry a soft prompt, but it has {len(named)}.")
    source = base_model or prompt.settings.get("base_model_path")
    if source is not None and not Path(source).exists() and prompt.base.get("name") == EMBEDDED_MODEL_ID:
        source = "embedded"  # trained on the embedded model on another machine: assemble it here
    if source is None:
        raise ValueError("`base_model` must be given: the soft prompt does not record where its base model is.")
    named[0][1].lm = transformers_lm(source, soft_prompt=prompt, **{**soft_lm_settings(like), **lm_kwargs})
    return program


def load_soft_program(program: dspy.Module, folder: str | os.PathLike[str], *,
                      base_model: str | os.PathLike[str] | None = None, **lm_kwargs: Any) -> dspy.Module:
    """Load a SoftPromptTuner result into ``program``: ``program.json`` (the hard prompt) and, when the run
    kept one, the soft prompt saved beside it. Returns ``program``.

    Example:
        >>> program = load_soft_program(make_program("qa", task), "runs/soft")  # doctest: +SKIP
    """
    target = Path(folder)
    if not (target / PROGRAM_FILE).is_file():
        raise ValueError(f"`folder` must hold a compiled {PROGRAM_FILE}, but {str(target)!r} does not. "
                         "Pass the log_dir of a SoftPromptTuner run.")
    program.load(str(target / PROGRAM_FILE))
    if (target / SOFT_PROMPT_FILE).is_file():
        attach_soft_prompt(program, target, base_model=base_model, **lm_kwargs)
    return program


def has_soft_prompt(folder: str | os.PathLike[str]) -> bool:
    """Whether a saved program's folder holds a soft prompt beside its ``program.json``."""
    return (Path(folder) / SOFT_PROMPT_FILE).is_file()
