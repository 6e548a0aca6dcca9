import zlib

from dspy_icl_opt.optimizers.abo import ABO
from tests.contract.suite import ContractSuite
from tests.optimizers.test_abo import PROCEDURE, ABOScript


class TestABOContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return ABO(task.metric, task_model=task_lm, prompt_model=prompt_lm, num_candidates=2, rounds=2,
                   minibatch_size=4, errors_per_round=3, **common)

    def prompt_responder(self, task):
        return ABOScript()  # valid procedures, demonstrations, diagnoses and sub-steps (which state the rule)


class TestABOBeamAblationContract(TestABOContract):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return ABO(task.metric, task_model=task_lm, prompt_model=prompt_lm, num_candidates=2, rounds=1,
                   minibatch_size=4, errors_per_round=2, beam_size=2, demonstration=False, **common)

    def prompt_responder(self, task):
        variants = (PROCEDURE, PROCEDURE.replace("Read", "Take"))
        return ABOScript(procedures=lambda fields: variants[zlib.crc32(fields["examples"].encode()) % 2])
