"""What determines a run's results, so that a resume never replays results of another run as its own.

A journal replays scores and prompt-model answers by key. Those depend on the metric (its code, not
only its name), on each LM (its model and sampling settings), on the program, on the data and on
the optimizer's settings. :func:`run_fingerprint` digests all of them; resuming a ``log_dir`` whose
fingerprint differs is refused with the list of what differs.

The metric is identified by ``metric.version`` (or ``__version__``) when it has one (a metric that
calls services, or whose source cannot be read, should set it and bump it when its verdicts change),
else by a digest of its source code.

Example:
    >>> def metric(example, prediction, trace=None):
    ...     return 1.0
    >>> metric_identity(metric).startswith("metric@src:")
    True
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

#: LM settings that change what a model answers (secrets, endpoints and retry settings do not).
SAMPLING_KEYS = ("temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k", "n", "stop", "seed",
                 "frequency_penalty", "presence_penalty", "repetition_penalty", "logprobs", "top_logprobs",
                 "reasoning_effort", "response_format", "min_p", "num_ctx", "rollout_id")
_DIGEST_CHARS = 16


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def metric_identity(metric: Any) -> str:
    """``name@version:...`` from an explicit version, else ``name@src:<digest of its source>``."""
    name = getattr(metric, "__qualname__", None) or type(metric).__qualname__
    version = getattr(metric, "version", None) or getattr(metric, "__version__", None)
    if version is not None:
        return f"{name}@version:{version}"
    target = metric
    for attr in ("func", "__func__", "__wrapped__"):  # functools.partial, bound methods, decorated functions
        inner = getattr(target, attr, None)
        if callable(inner):
            target = inner
    extra = ""
    if hasattr(metric, "args") or hasattr(metric, "keywords"):  # a partial's bound arguments change results too
        extra = json.dumps([getattr(metric, "args", ()), getattr(metric, "keywords", {})], default=str, sort_keys=True)
    for candidate in (target, type(target)):
        try:
            return f"{name}@src:{_digest(inspect.getsource(candidate) + extra)}"
        except (OSError, TypeError):
            continue
    return f"{name}@unversioned"


def lm_identity(lm: Any) -> str:
    """The model name and the sampling settings of an LM (behind any meters), as readable JSON."""
    from dspy_icl_opt.search.budget import unwrap_lm

    inner = unwrap_lm(lm)
    kwargs = getattr(inner, "kwargs", None) or {}
    settings = {k: kwargs[k] for k in SAMPLING_KEYS if k in kwargs and kwargs[k] is not None}
    model = str(getattr(inner, "model", type(inner).__name__))
    return json.dumps({"model": model, **settings}, sort_keys=True, default=str)


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key (there: ..., here: ...)`` for every key whose value differs."""
    keys = sorted(set(old) | set(new))
    return [f"{k} (there: {old.get(k, '<missing>')!s}, here: {new.get(k, '<missing>')!s})" for k in keys
            if _norm(old.get(k)) != _norm(new.get(k))]


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))
