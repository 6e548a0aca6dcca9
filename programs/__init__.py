"""Ready DSPy programs, bundled BIG-bench tasks and their metrics, for compiling with ``dspy_icl_opt``.

Example:
    >>> from dspy_icl_opt.programs import load_task, make_program
    >>> task = load_task("formal_fallacies", seed=0)
    >>> program = make_program("cot", task)
    >>> task.metric.__name__
    'choice_match'
"""

from dspy_icl_opt.programs.metrics import (
    choice_match,
    exact_match,
    format_options,
    metric_for,
    normalize_answer,
    option_label,
    parse_options,
)
from dspy_icl_opt.programs.programs import (
    QAProgram,
    TwoStepProgram,
    make_program,
    qa_program,
    two_step_program,
)
from dspy_icl_opt.programs.tasks import TASKS, Task, TaskInfo, load_jsonl_task, load_task, task_names

__all__ = [
    "TASKS",
    "QAProgram",
    "Task",
    "TaskInfo",
    "TwoStepProgram",
    "choice_match",
    "exact_match",
    "format_options",
    "load_jsonl_task",
    "load_task",
    "make_program",
    "metric_for",
    "normalize_answer",
    "option_label",
    "parse_options",
    "qa_program",
    "task_names",
    "two_step_program",
]
