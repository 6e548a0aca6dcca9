"""Likelihood scoring: how probable the task model finds the gold answer under a program state (APE's
"log probability" score, Zhou et al. 2023), instead of whether the answer it writes is right.

A program state is scored on an example by one task-model call that does not sample: the request is the
one the program would send (the adapter's messages, the state's instruction and demos), and the model is
made to write the gold answer as the adapter formats an answer (``[[ ## answer ## ]]`` blocks for the
ChatAdapter); the engine returns each token's log-probability. The score of the pair is the probability of
that whole answer, ``exp(sum of log-probabilities)``, in [0, 1] like an accuracy, so the bandits' bounds keep
their scale; the log-likelihood and the token count stay in the outcome. Each pair costs one task call and
is cached and journaled like an accuracy score, under its own key.

Only engines that can score given text do this (``supports_continuation_scoring``: the embedded llama.cpp
engine). A served model cannot: chat APIs return log-probabilities for the tokens they generate, never for
text the caller supplies, so :func:`check_likelihood` refuses it before any call.
"""

from __future__ import annotations

import math
from typing import Any

import dspy
from dspy.lm15 import Config, Message, Request

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.llama_messages import CONTINUATION
from dspy_icl_opt.search.budget import BudgetExhausted, collect_cost, unwrap_lm
from dspy_icl_opt.search.faults import LMFault, RunInterrupted
from dspy_icl_opt.search.placement import task_adapter
from dspy_icl_opt.search.scorer import PROGRAM_ERROR, Outcome, Scorer
from dspy_icl_opt.search.surgery import named_predictors

#: The scorer's journal keys start with this, so likelihoods and accuracies of one state never mix.
KEY_PREFIX = "likelihood/"


def scores_given_text(lm: dspy.BaseLM | None) -> bool:
    """Whether ``lm`` (metered or not) runs on an engine that scores given text."""
    engine = getattr(unwrap_lm(lm), "engine", None)
    return bool(getattr(engine, "supports_continuation_scoring", False))


def check_likelihood(student: dspy.Module, trainset: list[dspy.Example], lm: dspy.BaseLM | None) -> None:
    """Refuse, before any call, what likelihood scoring cannot score: a task model that cannot score given
    text, a program of more than one predictor, or outputs the training examples do not label.

    Raises:
        ValueError: naming the argument, what was expected and the fix.
    """
    predictors = named_predictors(student)
    models = [lm, *(p.lm for _, p in predictors if p.lm is not None)]
    for model in models:
        if model is not None and not scores_given_text(model):  # no model at all: compile names that itself
            name = getattr(unwrap_lm(model), "model", type(unwrap_lm(model)).__name__)
            raise ValueError(
                f"`scoring='likelihood'` needs a task model that can score given text (the gold answer), and "
                f"{name!r} cannot: served chat models return log-probabilities only for tokens they generate. "
                "Use the embedded model (resolve_lm('embedded')) or a GGUF file (resolve_lm('/path/model.gguf')) "
                "as the task model, or scoring='accuracy'.")
    if len(predictors) != 1:
        raise ValueError(
            f"`scoring='likelihood'` scores programs of one predictor, but the student has {len(predictors)} "
            f"({', '.join(name for name, _ in predictors)}): the gold answer of an inner step is not in the data. "
            "Use scoring='accuracy'.")
    name, predictor = predictors[0]
    outputs = list(predictor.signature.output_fields)
    for i, example in enumerate(trainset):
        missing = [field for field in outputs if field not in example.labels()]
        if missing:
            raise ValueError(
                f"`scoring='likelihood'` scores the gold value of every output of {name!r} ({outputs}), but "
                f"trainset[{i}] has no label for {missing}. Use a Predict whose outputs are all labelled (not "
                "ChainOfThought, whose reasoning is not in the data) or scoring='accuracy'.")


class LikelihoodScorer(Scorer):
    """A :class:`Scorer` whose score of a (state, example) pair is the probability of the gold answer.

    Built from the run's accuracy scorer (:meth:`beside`), it shares its journal, meter, task model and
    counters; its keys start with :data:`KEY_PREFIX`."""

    key_prefix = KEY_PREFIX

    @classmethod
    def beside(cls, scorer: Scorer) -> LikelihoodScorer:
        """A likelihood scorer on ``scorer``'s program, model, journal and budget. Both record the examples they
        scored in one set, so an example the search scored by likelihood is never taken for a fresh one
        (:meth:`~dspy_icl_opt.search.base.SearchContext.unseen_training_examples`)."""
        likelihood = cls(scorer.student, scorer.metric, task_lm=scorer.task_lm, meter=scorer.meter,
                         journal=scorer.journal, counters=scorer.counters, num_threads=scorer.num_threads,
                         failure_score=scorer.failure_score, progress=scorer.progress, name=scorer.name,
                         steps=scorer.steps)
        likelihood.scored_examples = scorer.scored_examples
        return likelihood

    def _run_one(self, program: dspy.Module, names: dict[int, str], example: dspy.Example) -> tuple[Outcome, Any]:
        with collect_cost() as cost:
            _, predictor = named_predictors(program)[0]
            lm = predictor.lm or self.task_lm
            request = gold_request(predictor, example, model=str(getattr(lm, "model", "task-model")))
            try:
                response = lm(request)
            except (BudgetExhausted, LMFault, RunInterrupted):
                raise
            except Exception as exc:  # a request the model refused (too long for its context, say): an outcome
                if cost.fault is not None:
                    raise cost.fault from exc
                self._count("program_errors")
                logger.warning("The task model could not score the gold answer of an example: {}", exc)
                return Outcome(self.failure_score, {}, (), f"{PROGRAM_ERROR} {exc!r}"), cost
            if cost.fault is not None:
                raise cost.fault
            logprobs = getattr(response, "logprobs", None)
            if not logprobs:
                raise ValueError(f"The task model {getattr(lm, 'model', lm)!r} returned no log-probabilities for the "
                                 "gold answer; it cannot score given text. Use scoring='accuracy'.")
            total = sum(float(token.logprob) for token in logprobs)
        return Outcome(math.exp(total), {"log_likelihood": round(total, 4), "tokens": len(logprobs)}), cost


def gold_request(predictor: dspy.Predict, example: dspy.Example, *, model: str) -> Request:
    """The request ``predictor`` would send for ``example``, asking the model to write the gold answer as the
    adapter formats one (the adapter in ``dspy.settings``, else the instruction-placing ChatAdapter)."""
    adapter = task_adapter()
    signature = predictor.signature
    messages = adapter.format(signature, list(predictor.demos or []), example.inputs().toDict())
    gold = adapter.format_assistant_message_content(signature, {k: example[k] for k in signature.output_fields})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = tuple(Message.assistant(m["content"]) if m["role"] == "assistant" else Message.user(m["content"])
                  for m in messages if m["role"] != "system")
    return Request(model=model, system=system, messages=turns,
                   config=Config(temperature=0.0, logprobs=0, extensions={CONTINUATION: gold.rstrip()}))
