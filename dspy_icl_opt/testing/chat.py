"""Reading ``dspy.lm15.Request`` objects and speaking DSPy's ChatAdapter format, for fake LMs.

ChatAdapter writes every field as a ``[[ ## name ## ]]`` header followed by the value, and
ends an assistant reply with ``[[ ## completed ## ]]``. These helpers parse and produce that
format so a fake engine can answer any DSPy predictor.

Example:
    >>> reply = format_chat_reply({"answer": "42"})
    >>> parse_field_blocks(reply)
    {'answer': '42'}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

FIELD_HEADER = re.compile(r"^\s*\[\[ ## (\w+) ## \]\]\s*$", re.MULTILINE)
"""ChatAdapter's field header line, as in ``dspy.adapters.chat_adapter.field_header_pattern``."""
COMPLETED_FIELD = "completed"
"""The marker field ChatAdapter expects at the end of every reply."""
OUTPUT_REMINDER = re.compile(
    r"\n*(?:Respond with the corresponding output fields|Respond with a JSON object in the following order of fields)"
    r".*\Z",
    re.DOTALL,
)
"""The output-format reminder DSPy appends to the last user message (ChatAdapter and JSONAdapter wording)."""
SYSTEM_ROLES = frozenset({"system", "developer"})
FINISH_REASON = "stop"


def system_text(request: Request) -> str:
    """Return the request's system prompt as one string ("" when there is none).

    Args:
        request: The request an engine received.

    Returns:
        ``request.system`` joined into text, followed by any system/developer messages.

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> system_text(Request(model="m", system="Be brief.", messages=(Message.user("hi"),)))
        'Be brief.'
    """
    system = request.system
    if system is None:
        parts = []
    elif isinstance(system, str):
        parts = [system]
    else:
        parts = ["".join(getattr(part, "text", "") or "" for part in system)]
    parts.extend(message.text or "" for message in request.messages if message.role in SYSTEM_ROLES)
    return "\n".join(parts)


def conversation(request: Request) -> list[tuple[str, str]]:
    """Return the non-system messages as ``(role, text)`` pairs, in order.

    Args:
        request: The request an engine received.

    Returns:
        The ``(role, text)`` pairs; roles are "user" and "assistant" (and "tool" if present).

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> conversation(Request(model="m", messages=(Message.user("hi"),)))
        [('user', 'hi')]
    """
    return [(m.role, m.text or "") for m in request.messages if m.role not in SYSTEM_ROLES]


def last_user_text(request: Request) -> str:
    """Return the text of the last user message ("" when there is none).

    Args:
        request: The request an engine received.

    Returns:
        The last user message's text.

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> last_user_text(Request(model="m", messages=(Message.user("a"), Message.user("b"))))
        'b'
    """
    return next((text for role, text in reversed(conversation(request)) if role == "user"), "")


def prompt_text(request: Request) -> str:
    """Return the whole prompt (system text and every message) as one string, for substring checks.

    Args:
        request: The request an engine received.

    Returns:
        The system text and the message texts, joined by blank lines.

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> prompt_text(Request(model="m", system="S", messages=(Message.user("U"),)))
        'S\\n\\nU'
    """
    return "\n\n".join([system_text(request), *(text for _, text in conversation(request))])


def parse_field_blocks(text: str) -> dict[str, str]:
    """Parse ``[[ ## name ## ]]`` blocks into ``{name: value}``; JSON objects are read as JSON.

    Text before the first header (such as DSPy's "This is an example of the task..." prefix),
    the ``completed`` marker and the trailing output-format reminder are dropped. When a field
    repeats, the first value wins (as in ChatAdapter.parse).

    Args:
        text: A user or assistant message in ChatAdapter format (or a JSONAdapter JSON object).

    Returns:
        The field values, stripped, as strings.

    Example:
        >>> parse_field_blocks("[[ ## question ## ]]\\nWhy?\\n\\n[[ ## answer ## ]]\\nBecause.")
        {'question': 'Why?', 'answer': 'Because.'}
    """
    text = OUTPUT_REMINDER.sub("", text)
    if text.lstrip().startswith("{"):
        parsed = _parse_json_object(text)
        if parsed is not None:
            return parsed
    headers = list(FIELD_HEADER.finditer(text))
    fields: dict[str, str] = {}
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        name = header.group(1)
        if name != COMPLETED_FIELD and name not in fields:
            fields[name] = text[header.end() : end].strip()
    return fields


def format_chat_reply(fields: Mapping[str, Any]) -> str:
    """Format output fields as a ChatAdapter reply, ending with ``[[ ## completed ## ]]``.

    Non-string values are written as JSON (so ``list``/``dict`` fields parse), others with ``str``.

    Args:
        fields: Output field names and values, in the order to write them.

    Returns:
        The reply text.

    Example:
        >>> print(format_chat_reply({"answer": "Paris"}))
        [[ ## answer ## ]]
        Paris
        <BLANKLINE>
        [[ ## completed ## ]]
    """
    blocks = [f"[[ ## {name} ## ]]\n{_render_value(value)}" for name, value in fields.items()]
    blocks.append(f"[[ ## {COMPLETED_FIELD} ## ]]")
    return "\n\n".join(blocks)


def format_json_reply(fields: Mapping[str, Any]) -> str:
    """Format output fields as a JSONAdapter reply (one JSON object).

    Args:
        fields: Output field names and values.

    Returns:
        The JSON text.

    Example:
        >>> format_json_reply({"answer": "Paris"})
        '{"answer": "Paris"}'
    """
    return json.dumps(dict(fields), ensure_ascii=False, default=str)


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: the number of whitespace-separated words, at least 1.

    Args:
        text: Any text.

    Returns:
        The estimate, never 0, so budget code always sees some usage.

    Example:
        >>> estimate_tokens("three little words")
        3
    """
    return max(1, len(text.split()))


def make_response(request: Request, text: str, *, model: str) -> Response:
    """Build the ``Response`` a fake engine returns, with word-count usage.

    Args:
        request: The request being answered (its prompt is counted as input tokens).
        text: The assistant's reply.
        model: The model name reported in the response.

    Returns:
        A finished ``dspy.lm15.Response``.

    Example:
        >>> from dspy.lm15 import Message, Request
        >>> request = Request(model="m", messages=(Message.user("hi there"),))
        >>> make_response(request, "ok", model="fake").usage.input_tokens
        2
    """
    usage = Usage(input_tokens=estimate_tokens(prompt_text(request)), output_tokens=estimate_tokens(text))
    return Response(
        id=None, model=model, message=Message.assistant((TextPart(text),)), finish_reason=FINISH_REASON, usage=usage
    )


class AsyncEngine:
    """The async counterpart of a sync fake engine, for ``dspy.LM(..., async_engine=...)``.

    It runs the sync engine inline, so ``acall``/``aforward`` see the same script and records.

    Args:
        sync: The sync engine (with ``complete`` and ``stream``).

    Example:
        >>> from dspy_icl_opt.testing import ScriptedEngine
        >>> AsyncEngine(ScriptedEngine(["hi"])).sync.call_count
        0
    """

    def __init__(self, sync: Any) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        """Answer one request with the sync engine."""
        return self.sync.complete(request)

    async def stream(self, request: Request) -> Any:
        """Stream the sync engine's events."""
        for event in self.sync.stream(request):
            yield event

    async def aclose(self) -> None:
        """Nothing to release."""


def stream_events(response: Response) -> Iterator[Any]:
    """The canonical stream events of a finished response (for an engine's ``stream``)."""
    return response_to_events(response)


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict, tuple, bool, int, float)) or value is None:
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _parse_json_object(text: str) -> dict[str, str] | None:
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in parsed.items()}
