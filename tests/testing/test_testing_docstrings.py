"""The examples in the `dspy_icl_opt.testing` docstrings run and stay true."""

import doctest
import importlib

import pytest

MODULES = [
    "dspy_icl_opt.testing",
    "dspy_icl_opt.testing.chat",
    "dspy_icl_opt.testing.rules",
    "dspy_icl_opt.testing.scripted",
    "dspy_icl_opt.testing.simulated",
    "dspy_icl_opt.testing.toy",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
