from dspy_icl_opt.optimizers.opro import OPRO
from tests.contract.suite import ContractSuite


class TestOPROContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return OPRO(task.metric, task_model=task_lm, prompt_model=prompt_lm, steps=2, candidates_per_step=2,
                    **common)


class TestOPRORacingContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return OPRO(task.metric, task_model=task_lm, prompt_model=prompt_lm, steps=2, candidates_per_step=3,
                    scoring="racing", racing_block=4, positions=("system", "q_end"), **common)
