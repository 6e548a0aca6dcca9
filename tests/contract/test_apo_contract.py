from dspy_icl_opt.optimizers.apo import APO
from tests.contract.suite import ContractSuite

TINY = {"rounds": 2, "beam_size": 2, "minibatch_size": 4, "n_gradients": 1, "errors_per_gradient": 2,
        "mc_samples_per_step": 1, "max_expansion_factor": 3, "eval_rounds": 2, "eval_prompts_per_round": 2,
        "samples_per_eval": 4}


class TestAPOContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return APO(task.metric, task_model=task_lm, prompt_model=prompt_lm, **TINY, **common)


class TestAPOSuccessiveRejectsContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return APO(task.metric, task_model=task_lm, prompt_model=prompt_lm, evaluator="successive_rejects",
                   reject_on_errors=True, **{**TINY, "n_gradients": 2}, **common)
