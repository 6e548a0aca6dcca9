from dspy_icl_opt.optimizers.promptagent import PromptAgent
from tests.contract.suite import ContractSuite

TINY = {"iterations": 2, "expand_width": 2, "depth_limit": 2, "min_depth": 1, "batch_size": 3, "eval_size": 4}


class TestPromptAgentContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return PromptAgent(task.metric, task_model=task_lm, prompt_model=prompt_lm, **TINY, **common)


class TestPromptAgentWiderContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return PromptAgent(task.metric, task_model=task_lm, prompt_model=prompt_lm, final_candidates=2,
                           format_candidate=False, **{**TINY, "iterations": 3, "expand_width": 1}, **common)
