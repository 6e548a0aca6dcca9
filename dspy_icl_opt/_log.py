"""Logging as a library should do it: Python's ``logging`` under the ``dspy_icl_opt`` name, as DSPy does.

Nothing below WARNING reaches the screen unless the application configures logging (the CLI does:
``--log-level``); a warning with no handler configured prints as its bare message (Python's last-resort
handler). ``logging.getLogger("dspy_icl_opt").setLevel(logging.INFO)`` plus a handler shows the progress
lines, ``logging.getLogger("dspy_icl_opt").setLevel(logging.ERROR)`` hides the warnings.

Call sites keep the brace style, formatted only when the line is emitted::

    from dspy_icl_opt._log import logger
    logger.info("step {} scored {:.3f}", step, score)
"""

from __future__ import annotations

import logging
import sys
from typing import Any

ROOT = "dspy_icl_opt"
TRACE, SUCCESS = 5, 25
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(SUCCESS, "SUCCESS")


class _Message:
    """A brace-style message, formatted when a handler asks for it."""

    __slots__ = ("args", "fmt", "kwargs")

    def __init__(self, fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fmt, self.args, self.kwargs = fmt, args, kwargs

    def __str__(self) -> str:
        if not self.args and not self.kwargs:
            return str(self.fmt)
        try:
            return str(self.fmt).format(*self.args, **self.kwargs)
        except (IndexError, KeyError, ValueError):
            return f"{self.fmt} {self.args}"


class BraceLogger:
    """``logger.info("x {}", value)`` onto ``logging.getLogger(<the calling module>)``."""

    def _log(self, level: int, fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc_info: Any = None) -> None:
        name = sys._getframe(2).f_globals.get("__name__", ROOT)
        target = logging.getLogger(name if name.startswith(ROOT) else ROOT)
        if target.isEnabledFor(level):
            target.log(level, _Message(fmt, args, kwargs), exc_info=exc_info, stacklevel=3)

    def trace(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(TRACE, fmt, args, kwargs)

    def debug(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, fmt, args, kwargs)

    def info(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, fmt, args, kwargs)

    def success(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(SUCCESS, fmt, args, kwargs)

    def warning(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, fmt, args, kwargs)

    def error(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, fmt, args, kwargs)

    def exception(self, fmt: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, fmt, args, kwargs, exc_info=True)


logger = BraceLogger()
