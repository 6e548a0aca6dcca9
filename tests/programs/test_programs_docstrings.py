"""The examples in the `programs` docstrings run and stay true."""

import doctest
import importlib

import pytest

MODULES = ["dspy_icl_opt.programs", "dspy_icl_opt.programs.metrics", "dspy_icl_opt.programs.programs",
           "dspy_icl_opt.programs.tasks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
