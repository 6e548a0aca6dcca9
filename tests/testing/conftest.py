"""Shared fixtures for the tests of `dspy_icl_opt.testing`."""

import dspy
import pytest


@pytest.fixture(autouse=True)
def _fresh_dspy_settings():
    """Each test starts with no LM and the default adapter; whatever it sets in `dspy.context` is undone."""
    with dspy.context(lm=None, adapter=None):
        yield
