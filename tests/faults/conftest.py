"""Fault-injection tests: fakes are passed in (FaultyEngine, a loopback HTTP LM server), never patched."""

from __future__ import annotations

import dspy
import pytest


@pytest.fixture(autouse=True)
def _reset_dspy_settings():
    with dspy.context(lm=None, adapter=None):
        yield
