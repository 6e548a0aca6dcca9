"""The examples in the `programs` docstrings run and stay true."""

import doctest
import importlib

import pytest

MODULES = ["programs", "programs.metrics", "programs.programs", "programs.tasks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
