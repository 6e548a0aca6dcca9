"""The optimizer registry: names, lazy imports, parameter routing for DSPy's optimizers."""

from __future__ import annotations

import dspy
import pytest

from dspy_icl_opt.pipeline.registry import REGISTRY, available, build_optimizer, lookup
from dspy_icl_opt.search.budget import Budget


@pytest.mark.parametrize("name,expected", [("MIPROv2", "mipro"), ("LabeledFewShot", "labeled"), ("OPRO", "opro"),
                                           ("demo-selector", "demos"), ("Bootstrap_Few_Shot", "bootstrap"),
                                           ("InstructionDemoSearch", "joint"), ("joint", "joint")])
def test_lookup_accepts_names_class_names_and_aliases(name, expected):
    assert lookup(name).name == expected


def test_every_dspy_entry_imports_and_missing_modules_are_reported_not_raised():
    status = available()
    assert set(status) == set(REGISTRY)
    for name, entry in REGISTRY.items():
        if entry.family == "dspy":
            assert status[name] is None, status[name]


def _metric(example, prediction, trace=None):
    return 1.0


def _build(name, params):
    return build_optimizer(lookup(name), params, metric=_metric, task_lm=dspy.LM("openai/t"),
                           prompt_lm=dspy.LM("openai/x"), budget=Budget(), seed=5, num_threads=2, log_dir=None)


def test_mipro_params_are_routed_to_constructor_and_compile():
    built = _build("mipro", {"num_candidates": 2, "num_trials": 3, "minibatch": False})
    assert built.optimizer.auto is None and built.optimizer.num_candidates == 2  # default auto=None kept
    assert built.compile_kwargs == {"num_trials": 3, "minibatch": False}
    assert built.optimizer.seed == 5 and built.optimizer.num_threads == 2


def test_a_step_setting_auto_drops_the_conflicting_defaults():
    assert _build("gepa", {"auto": "light"}).optimizer.max_metric_calls is None
    built = _build("mipro", {"auto": "light"})
    assert built.optimizer.auto == "light" and "num_trials" not in built.compile_kwargs


def test_gepa_gets_a_five_argument_metric_and_the_prompt_model_as_reflection_lm():
    built = _build("gepa", {})
    assert built.optimizer.metric_fn(None, None, None, "pred", None) == 1.0
    assert built.optimizer.reflection_lm.model == "openai/x"
