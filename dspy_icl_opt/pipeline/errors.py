"""The pipeline's errors, each with the exit code the CLI returns for it.

A :class:`ConfigError` lists every problem found in a run description, one line each, in the form
``optimize[1].params.beam_size: must be an integer >= 1, but got 0.``; it is raised before any LM
call. An :class:`LMProblem` means a language model could not be built or did not answer at all.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LM = 3
EXIT_INTERRUPTED = 130


class PipelineError(Exception):
    """Base of the pipeline's expected failures (reported without a stack trace)."""

    exit_code = EXIT_FAILURE


class ConfigError(PipelineError, ValueError):
    """A run description (file, flags or object) is invalid.

    Args:
        problems: one ``path: what was expected, what was found`` line per problem.
        source: the file the description came from, if any.

    Example:
        >>> str(ConfigError(["seed: must be >= 0, but got -1."]))
        'seed: must be >= 0, but got -1.'
    """

    exit_code = EXIT_USAGE

    def __init__(self, problems: str | Iterable[str], *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__("\n".join(self.problems))

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.problems, source=source)

    def describe(self) -> str:
        head = f"invalid configuration {self.source}" if self.source else "invalid configuration"
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


class LMProblem(PipelineError):
    """A language model could not be built, loaded, or reached."""

    exit_code = EXIT_LM


class LMOutage(LMProblem):
    """A language model stopped answering mid-run: the run stopped as interrupted, with no failed call kept
    as a result; running the same command again once the model answers resumes it."""


def at(path: str, message: str) -> str:
    """One problem line: ``path: message``."""
    return f"{path}: {message}" if path else message
