"""Shared fixtures for the tests of the `programs` package."""

import dspy
import pytest

from dspy_icl_opt.programs.tasks import load_task


@pytest.fixture(autouse=True)
def _fresh_dspy_settings():
    """Each test starts with no LM and the default adapter; whatever it sets in `dspy.context` is undone."""
    with dspy.context(lm=None, adapter=None):
        yield


@pytest.fixture(scope="session")
def choice_task():
    """A small multiple-choice task (loaded once; tests must not mutate it)."""
    return load_task("date_understanding", seed=0, train_size=5, val_size=6, test_size=4)


@pytest.fixture(scope="session")
def free_task():
    """A small free-answer task (loaded once; tests must not mutate it)."""
    return load_task("penguins_in_a_table", seed=0, train_size=5, val_size=6, test_size=4)
