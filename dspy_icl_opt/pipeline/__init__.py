"""The declarative pipeline: config schema, optimizer registry, runner, benchmark, reports and CLI.

Example:
    >>> from dspy_icl_opt.pipeline import parse_config
    >>> parse_config({"data": "hyperbaton", "optimize": ["labeled"]}).data.task
    'hyperbaton'
"""

from dspy_icl_opt.pipeline.bench import BenchResult, run_bench
from dspy_icl_opt.pipeline.config import PipelineConfig, StepConfig, dump_config, load_config, parse_config
from dspy_icl_opt.pipeline.errors import ConfigError, LMOutage, LMProblem, PipelineError
from dspy_icl_opt.pipeline.evaluate import EvalResult, evaluate_program
from dspy_icl_opt.pipeline.registry import REGISTRY, OptimizerEntry, lookup
from dspy_icl_opt.pipeline.render import render_report
from dspy_icl_opt.pipeline.runner import RunResult, run_pipeline

__all__ = [
    "REGISTRY",
    "BenchResult",
    "ConfigError",
    "EvalResult",
    "LMOutage",
    "LMProblem",
    "OptimizerEntry",
    "PipelineConfig",
    "PipelineError",
    "RunResult",
    "StepConfig",
    "dump_config",
    "evaluate_program",
    "load_config",
    "lookup",
    "parse_config",
    "render_report",
    "run_bench",
    "run_pipeline",
]
