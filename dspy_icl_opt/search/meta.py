"""Meta-prompt input and output that a small prompt model can produce, read by our own tolerant parsers.

Meta-prompt signatures have plain-text (``str``) outputs only: a 0.5B model answers a ``list[str]``
or ``int`` field in prose ("Step 3", "1) ... 2) ..."), DSPy's parser rejects it, and its JSON
fallback doubles the calls. :class:`MetaPromptAdapter` is a ChatAdapter without that fallback
which, when the field markers are missing, gives the whole answer to the one output field that
is missing (so "just the text" is a usable answer); the strategies then read numbered lines, tags
or a step number out of the text with the helpers below.
"""

from __future__ import annotations

import re
from typing import Any

from dspy.adapters import ChatAdapter
from dspy.utils.exceptions import AdapterParseError

_HEADER = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")
_NUMBERED = re.compile(r"^\s*(?:[-*\u2022]\s*)?(?:\*\*)?(?:step|reason|instruction|option)?\s*#?\s*(\d{1,2})\s*[.):\-]\s*"
                       r"(?:\*\*)?\s*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*\u2022]\s+(.+)$")
_INT = re.compile(r"(?<![\d.])(\d{1,3})(?![\d])")
_LABEL = re.compile(r"^[\W_]*[\w ]{1,30}?:\s*")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


class MetaPromptAdapter(ChatAdapter):
    """ChatAdapter for meta-prompts: no JSON fallback, and missing markers are forgiven for one field."""

    def __init__(self) -> None:
        super().__init__(use_json_adapter_fallback=False)

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        try:
            return super().parse(signature, completion)
        except AdapterParseError:
            pass
        outputs = list(signature.output_fields)
        found: dict[str, str] = {}
        pieces = _HEADER.split(completion or "")
        leading = pieces[0]
        for name, text in zip(pieces[1::2], pieces[2::2]):
            if name in outputs and name not in found:
                found[name] = text.strip()
        missing = [name for name in outputs if name not in found]
        if len(missing) > 1 and leading.strip():  # "Reason: ...\nFailing step: 2" instead of markers
            labelled, before = _labelled(leading, missing)
            found.update(labelled)
            missing = [name for name in outputs if name not in found]
            leading = before if labelled else leading  # only unlabelled text before the labels is left over
        if len(missing) == 1 and missing[0] == outputs[-1] and len(outputs) > 1 and found.get(outputs[-2]):
            # the last marker forgotten (or cut off by max_tokens): the field before it usually ends with
            # the value, as its last line ("Final answer: 04/12/1986")
            last = [line.strip() for line in found[outputs[-2]].splitlines() if line.strip()][-1]
            found[missing[0]] = _LABEL.sub("", last, count=1).strip() or last
        elif len(missing) == 1 and leading.strip():
            found[missing[0]] = leading.strip()
        elif len(missing) == 1 and len(outputs) == 1:
            found[missing[0]] = (completion or "").strip()
        if set(found) != set(outputs) or not all(isinstance(signature.output_fields[n].annotation, type)
                                                 and issubclass(signature.output_fields[n].annotation, str)
                                                 for n in outputs):
            raise AdapterParseError(adapter_name="MetaPromptAdapter", signature=signature,
                                    lm_response=completion, parsed_result=found)
        return {name: found[name] for name in outputs}


def _labelled(text: str, names: list[str]) -> tuple[dict[str, str], str]:
    """Values of ``names`` written as labelled lines ("Failing step: 2", "**reason**: ..."), and the text
    before the first label."""
    label = {name: re.compile(rf"^\W*{'[ _]'.join(map(re.escape, name.split('_')))}\W*[:=\-]\s*(.*)$", re.IGNORECASE)
             for name in names}
    found: dict[str, list[str]] = {}
    current = None
    before: list[str] = []
    for line in text.splitlines():
        matched = next(((name, m) for name, pattern in label.items() if (m := pattern.match(line.strip()))), None)
        if matched is not None:
            current = matched[0]
            found[current] = [matched[1].group(1).strip().lstrip("*").strip()]
        elif current is not None:
            found[current].append(line)
        else:
            before.append(line)
    values = {name: "\n".join(lines).strip() for name, lines in found.items() if "\n".join(lines).strip()}
    return values, "\n".join(before).strip()


def clean(value: Any) -> str:
    """Text without surrounding whitespace, quotes or markdown emphasis."""
    text = str(value or "").strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        text = text[1:-1].strip()
    if text.startswith("**") and text.endswith("**") and len(text) > 4:
        text = text[2:-2].strip()
    return text


def numbered_items(text: Any, limit: int | None = None, *, drop_lead_in: bool = True) -> list[str]:
    """Items of a numbered or bulleted list; unnumbered lines continue the item above.

    Text with no list at all counts as one item (a model asked for one reason often just writes it).
    Lines before the list that end in a colon introduce it ("Here is the reason:") and are dropped, unless
    ``drop_lead_in`` is false (a caller for which such a line may be the answer itself); other lines before
    a list are an item of their own.

    Example:
        >>> numbered_items("Here is the reason:\\n1. It never says to count.")
        ['It never says to count.']
        >>> numbered_items("Here is the reason:\\n1. It never says to count.", drop_lead_in=False)
        ['Here is the reason:', 'It never says to count.']
    """
    items: list[str] = []
    listed = False
    for raw in str(text or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        numbered, bullet = _NUMBERED.match(line), _BULLET.match(line)
        if (numbered and numbered.group(2).strip()) or bullet:
            if not listed and drop_lead_in and items and items[-1].rstrip().endswith(":"):
                items.pop()  # a lead-in to the list, not an item (the lines it continued with it)
            items.append((numbered.group(2) if numbered and numbered.group(2).strip() else bullet.group(1)).strip())
            listed = True
        elif items:
            items[-1] += " " + line
        else:
            items.append(line)
    if not listed:
        joined = " ".join(items).strip()
        items = [joined] if joined else []
    cleaned = [clean(item) for item in items]
    cleaned = [item for item in cleaned if item]
    return cleaned[:limit] if limit is not None else cleaned


def first_number_in(text: Any, low: int, high: int) -> int | None:
    """The first integer in ``text`` between ``low`` and ``high`` ("Step 3", "3.", "the third" is not read)."""
    for match in _INT.finditer(str(text or "")):
        number = int(match.group(1))
        if low <= number <= high:
            return number
    return None
