from dspy_icl_opt.optimizers.joint import InstructionDemoSearch
from tests.contract.suite import ContractSuite


class TestInstructionDemoSearchContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return InstructionDemoSearch(task.metric, task_model=task_lm, prompt_model=prompt_lm, auto=None,
                                     num_candidates=3, max_bootstrapped_demos=1, max_labeled_demos=2,
                                     minibatch_full_eval_steps=2, **common)


class TestInstructionDemoSearchZeroShotContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return InstructionDemoSearch(task.metric, task_model=task_lm, prompt_model=prompt_lm, auto=None,
                                     num_candidates=3, num_trials=4, max_bootstrapped_demos=0, max_labeled_demos=0,
                                     **common)
