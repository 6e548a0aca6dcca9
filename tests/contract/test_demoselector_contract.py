from dspy_icl_opt.demos import DemoSelector
from tests.contract.suite import ContractSuite


class TestDemoSelectorContract(ContractSuite):
    uses_prompt_model = False

    def make(self, task, *, task_lm, prompt_lm, **common):
        return DemoSelector(task.metric, task_model=task_lm, max_demos=3, n_trials=6, minibatch_size=3, **common)


class TestDemoSelectorKnnContract(ContractSuite):
    uses_prompt_model = False

    def make(self, task, *, task_lm, prompt_lm, **common):
        return DemoSelector(task.metric, task_model=task_lm, max_demos=2, n_trials=5, strategies=("knn", "mmr"),
                            pools=("labeled",), pruner="successive_halving", minibatch_size=2, **common)
