"""Conversion between DSPy's canonical requests/responses and llama.cpp's chat-completion dictionaries."""

from __future__ import annotations

import hashlib
from typing import Any

from dspy.lm15 import Request, TextPart, UnsupportedFeatureError, Usage

PROVIDER_NAME = "llama.cpp"
SEED_MODULUS = 2**31 - 1  # llama.cpp seeds are uint32; stay clear of the "random" sentinel.
DEVELOPER_PREFIX = "[developer] "
PART_SEPARATOR = "\n"
SYSTEM_JOIN = "\n\n"
LENGTH_FINISH_REASON = "length"
STOP_FINISH_REASON = "stop"
#: The ``Config.extensions`` key of a request that scores given text instead of sampling: an engine with
#: ``supports_continuation_scoring`` makes the model write that text and returns its tokens' log-probabilities.
CONTINUATION = "score_continuation"


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


def response_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
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


def usage_of(result: dict[str, Any]) -> Usage:
    usage = result.get("usage") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        total_tokens=usage.get("total_tokens"),
    )


def finish_reason(choice: dict[str, Any]) -> str:
    return LENGTH_FINISH_REASON if choice.get("finish_reason") == LENGTH_FINISH_REASON else STOP_FINISH_REASON
