"""What every strategy shares: program surgery, the cached scorer, budgets, bandits, the report."""

from dspy_icl_opt.search.base import ICLOptimizer, SearchContext, stable_int
from dspy_icl_opt.search.budget import BUDGET_PRESETS, Budget, BudgetExhausted, BudgetMeter, MeteredLM, Spent
from dspy_icl_opt.search.journal import Journal
from dspy_icl_opt.search.placement import POSITIONS, PlacementAdapter, Position
from dspy_icl_opt.search.report import CandidateRecord, OptimizationReport
from dspy_icl_opt.search.scorer import Outcome, Scorer, example_key
from dspy_icl_opt.search.surgery import (
    PredictorState,
    ProgramState,
    apply_state,
    describe_signature,
    named_predictors,
    read_state,
)

__all__ = [
    "BUDGET_PRESETS",
    "Budget",
    "BudgetExhausted",
    "BudgetMeter",
    "CandidateRecord",
    "ICLOptimizer",
    "Journal",
    "MeteredLM",
    "OptimizationReport",
    "Outcome",
    "POSITIONS",
    "PlacementAdapter",
    "Position",
    "PredictorState",
    "ProgramState",
    "Scorer",
    "SearchContext",
    "Spent",
    "apply_state",
    "describe_signature",
    "example_key",
    "named_predictors",
    "read_state",
    "stable_int",
]
