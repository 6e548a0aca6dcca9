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


class TestOPROMetricErrorsContract(ContractSuite):
    """A metric that raises on some examples: its errors are outcomes, and a resumed run's report counts the
    replayed ones as the uninterrupted run's does (the contract's killed-and-resumed test compares counters)."""

    def make(self, task, *, task_lm, prompt_lm, **common):
        def metric(example, prediction, trace=None):
            if len(example.question) % 3 == 0:
                raise ValueError("the metric cannot read this example")
            return task.metric(example, prediction, trace)

        return OPRO(metric, task_model=task_lm, prompt_model=prompt_lm, steps=2, candidates_per_step=2, **common)

    def test_the_metric_errors_are_counted(self):
        optimizer, *_ = self._run()
        assert optimizer.report_.counters.metric_errors > 0
