from dspy_icl_opt.optimizers.ape import APE, IterativeAPE
from dspy_icl_opt.testing import format_chat_reply, system_text
from tests.contract.suite import ContractSuite

TINY = {"num_subsamples": 2, "num_demos": 3, "prompts_per_subsample": 2, "eval_rounds": 2, "eval_prompts_per_round": 3,
        "samples_per_eval": 4}


def sampling_responder(rule):
    """Every answer states the rule, worded by the request's sampling seed (as a sampled model's answers differ);
    a variation keeps the rule."""

    def respond(request):
        sample = (request.config.seed or 0) % 997
        if "`variation`" in system_text(request):
            return format_chat_reply({"variation": f"In short: {rule}, then answer ({sample})."})
        return format_chat_reply({"instruction": f"The instruction was to {rule} and answer ({sample})"})

    return respond


class TestAPEContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return APE(task.metric, task_model=task_lm, prompt_model=prompt_lm, **TINY, **common)

    def prompt_responder(self, task):
        return sampling_responder(task.rule)


class TestIterativeAPEContract(ContractSuite):
    def make(self, task, *, task_lm, prompt_lm, **common):
        return IterativeAPE(task.metric, task_model=task_lm, prompt_model=prompt_lm, iterations=2,
                            variations_per_candidate=1, **TINY, **common)

    def prompt_responder(self, task):
        return sampling_responder(task.rule)


class TestAPELikelihoodContract(ContractSuite):
    """APE whose search scores the gold answer's probability: the same contract (exact caps, cache, resume, seed)."""

    def make(self, task, *, task_lm, prompt_lm, **common):
        return APE(task.metric, task_model=task_lm, prompt_model=prompt_lm, scoring="likelihood", **TINY, **common)

    def prompt_responder(self, task):
        return sampling_responder(task.rule)
