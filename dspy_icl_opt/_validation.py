"""Argument checks shared by every public constructor, so that each names the argument the same way.

Messages follow the house shape: "`name` must be ..., but got .... How to fix." A value of the wrong
type raises ``TypeError``; a value of the right type out of range raises ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any


def check_int(name: str, value: Any, *, minimum: int, hint: str = "") -> int:
    """Return ``value`` if it is an integer (``bool`` excluded) of at least ``minimum``, else raise.

    Args:
        name: the argument's name as the user wrote it, shown in backticks.
        value: what the user passed.
        minimum: the smallest value allowed.
        hint: how to fix it (e.g. the paper's default), appended to the message.

    Example:
        >>> check_int("rounds", 3, minimum=1)
        3
    """
    tail = f" {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer >= {minimum}, but got {type(value).__name__} {value!r}.{tail}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, but got {value!r}.{tail}")
    return value


def check_number(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 hint: str = "") -> float:
    """Return ``value`` as a float if it is a finite real number (``bool`` excluded, NaN and infinities refused) within
    the bounds.

    Example:
        >>> check_number("temperature", 1, minimum=0)
        1.0
    """
    tail = f" {hint}" if hint else ""
    if minimum is not None and maximum is not None:
        wanted = f"a number in [{minimum}, {maximum}]"
    elif minimum is not None:
        wanted = f"a number >= {minimum}"
    elif maximum is not None:
        wanted = f"a number <= {maximum}"
    else:
        wanted = "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be {wanted}, but got {type(value).__name__} {value!r}.{tail}")
    if math.isinf(value):  # an infinite weight, temperature or rate is never meant; it would poison the arithmetic
        finite = wanted.replace("a number", "a finite number", 1)
        raise ValueError(f"`{name}` must be {finite}, but got {value!r}.{tail}")
    inside = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if math.isnan(value) or not inside:
        raise ValueError(f"`{name}` must be {wanted}, but got {value!r}.{tail}")
    return float(value)
