"""Deterministic fake LMs and toy tasks for testing prompt optimizers without a real model.

* `scripted_lm`: replies from a script, in order; records every request (prompt models).
* `simulated_task_lm`: parses DSPy's ChatAdapter prompt and answers correctly only when
  ``knows(view)`` says the instruction/demos carry the rule (task models).
* Rules for ``knows``: `rule_in_instruction`, `rule_in_demos`, `rule_anywhere`, `correct_demos`,
  `all_of`, `any_of`, `not_`, `always`, `never`.
* Toy tasks with a planted rule: `planted_rule_task`, `parity_task`.

Both LMs are ``dspy.LM`` objects with DSPy's cache off, built on a custom engine reachable as
``lm.engine``. Use them under ``dspy.context(lm=...)``.

Example:
    >>> import dspy
    >>> from dspy_icl_opt.testing import parity_task
    >>> task = parity_task(6, seed=0)
    >>> with dspy.context(lm=task.lm()):
    ...     task.score(task.program(instructions=f"Say whether the word has an {task.rule}."))
    1.0
"""

from dspy_icl_opt.testing.chat import (
    AsyncEngine,
    conversation,
    estimate_tokens,
    format_chat_reply,
    format_json_reply,
    last_user_text,
    parse_field_blocks,
    prompt_text,
    system_text,
)
from dspy_icl_opt.testing.rules import (
    Rule,
    all_of,
    always,
    any_of,
    correct_demos,
    never,
    not_,
    rule_anywhere,
    rule_in_demos,
    rule_in_instruction,
)
from dspy_icl_opt.testing.scripted import ScriptedEngine, ScriptExhaustedError, make_fake_lm, scripted_lm
from dspy_icl_opt.testing.simulated import (
    DEFAULT_WRONG_ANSWER,
    Demo,
    PromptView,
    SimulatedCall,
    SimulatedTaskEngine,
    parse_prompt,
    simulated_task_lm,
)
from dspy_icl_opt.testing.toy import RULES, PlantedRule, ToyTask, make_words, parity_task, planted_rule_task, toy_metric

__all__ = [
    "DEFAULT_WRONG_ANSWER",
    "RULES",
    "AsyncEngine",
    "Demo",
    "PlantedRule",
    "PromptView",
    "Rule",
    "ScriptExhaustedError",
    "ScriptedEngine",
    "SimulatedCall",
    "SimulatedTaskEngine",
    "ToyTask",
    "all_of",
    "always",
    "any_of",
    "conversation",
    "correct_demos",
    "estimate_tokens",
    "format_chat_reply",
    "format_json_reply",
    "last_user_text",
    "make_fake_lm",
    "make_words",
    "never",
    "not_",
    "parity_task",
    "parse_field_blocks",
    "parse_prompt",
    "planted_rule_task",
    "prompt_text",
    "rule_anywhere",
    "rule_in_demos",
    "rule_in_instruction",
    "scripted_lm",
    "simulated_task_lm",
    "system_text",
    "toy_metric",
]
