"""Few-shot demonstration search: the Optuna-driven :class:`DemoSelector`, its demo pools and per-call selection."""

from dspy_icl_opt.demos.dynamic import DynamicPredict, selection_demo, with_dynamic_demos
from dspy_icl_opt.demos.embeddings import LEXICAL, PoolIndex, register_embedder
from dspy_icl_opt.demos.influence import fit_demo_sets, fit_influence
from dspy_icl_opt.demos.pools import demo_id
from dspy_icl_opt.demos.selector import DemoSelector

__all__ = [
    "LEXICAL",
    "DemoSelector",
    "DynamicPredict",
    "PoolIndex",
    "demo_id",
    "fit_demo_sets",
    "fit_influence",
    "register_embedder",
    "selection_demo",
    "with_dynamic_demos",
]
