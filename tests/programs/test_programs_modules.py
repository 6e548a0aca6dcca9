"""The ready programs run end to end against the simulated task model."""

import dspy
import pytest

from dspy_icl_opt.testing import (
    DEFAULT_WRONG_ANSWER,
    always,
    never,
    rule_in_instruction,
    simulated_task_lm,
)
from dspy_icl_opt.programs import QAProgram, TwoStepProgram, make_program, qa_program, two_step_program
from dspy_icl_opt.programs.programs import CHOICE_INSTRUCTIONS, QA_INSTRUCTIONS

CHOICE_RULE = "exact text of the correct option"
"""A phrase of the default multiple-choice instruction: the fake solves only when it is there."""


def _answer_key(task):
    """solve(inputs) for a loaded task: look the question up in all its splits."""
    gold = {example.question: example.answer for example in task.train + task.val + task.test}
    return lambda inputs: gold[inputs["question"]]


def _run(program, examples, lm):
    with dspy.context(lm=lm):
        return [program(**example.inputs()) for example in examples]


def test_qa_predict_answers_multiple_choice_when_instruction_carries_rule(choice_task):
    lm = simulated_task_lm(solve=_answer_key(choice_task), knows=rule_in_instruction(CHOICE_RULE))
    program = make_program("qa", choice_task)
    predictions = _run(program, choice_task.val, lm)
    assert [choice_task.metric(ex, pred) for ex, pred in zip(choice_task.val, predictions)] == [1.0] * 6
    views = [call.view for call in lm.engine.calls]
    assert len(views) == len(choice_task.val)
    assert all(view.instruction == CHOICE_INSTRUCTIONS for view in views)
    assert views[0].input_fields == ("question", "options")
    assert views[0].output_fields == ("answer",)
    assert views[0].inputs == choice_task.val[0].inputs().toDict()


def test_qa_predict_fails_when_instruction_lacks_rule(choice_task):
    lm = simulated_task_lm(solve=_answer_key(choice_task), knows=rule_in_instruction(CHOICE_RULE))
    program = make_program("qa", choice_task, instructions="Answer.")
    predictions = _run(program, choice_task.val, lm)
    assert {pred.answer for pred in predictions} == {DEFAULT_WRONG_ANSWER}
    assert sum(choice_task.metric(ex, pred) for ex, pred in zip(choice_task.val, predictions)) == 0.0
    assert lm.engine.known_count == 0


def test_free_answer_qa_has_no_options_field(free_task):
    program = make_program("qa", free_task)
    assert list(program.predictor.signature.input_fields) == ["question"]
    assert program.predictor.signature.instructions == QA_INSTRUCTIONS
    lm = simulated_task_lm(solve=_answer_key(free_task), knows=always())
    predictions = _run(program, free_task.test, lm)
    assert all(free_task.metric(ex, pred) == 1.0 for ex, pred in zip(free_task.test, predictions))


def test_chain_of_thought_fills_reasoning_and_answer(choice_task):
    lm = simulated_task_lm(solve=_answer_key(choice_task), knows=always())
    program = make_program("cot", choice_task)
    assert [name for name, _ in program.named_predictors()] == ["predictor.predict"]
    prediction = _run(program, choice_task.val[:1], lm)[0]
    assert prediction.answer == choice_task.val[0].answer
    assert prediction.reasoning
    assert lm.engine.calls[0].view.output_fields == ("reasoning", "answer")


def test_two_step_calls_analysis_then_answer(choice_task):
    solve = _answer_key(choice_task)
    knows = rule_in_instruction("extract the facts")  # only the analysis step's instruction says this
    lm = simulated_task_lm(solve=solve, knows=always())
    program = make_program("two_step", choice_task)
    assert isinstance(program, TwoStepProgram)
    assert [name for name, _ in program.named_predictors()] == ["analyze", "respond"]
    example = choice_task.val[0]
    prediction = _run(program, [example], lm)[0]
    first, second = (call.view for call in lm.engine.calls)
    assert first.output_fields == ("analysis",)
    assert first.input_fields == ("question", "options")
    assert knows(first) and not knows(second)
    assert second.input_fields == ("question", "options", "analysis")
    assert second.inputs["analysis"] == prediction.analysis == example.answer
    assert prediction.answer == example.answer


def test_two_step_answer_depends_on_second_instruction(free_task):
    lm = simulated_task_lm(solve=_answer_key(free_task), knows=rule_in_instruction("using the analysis"))
    predictions = _run(make_program("two_step", free_task), free_task.val, lm)
    assert all(free_task.metric(ex, pred) == 1.0 for ex, pred in zip(free_task.val, predictions))
    assert [call.knew for call in lm.engine.calls[:2]] == [False, True]


def test_two_step_with_cot_answering_step(choice_task):
    program = two_step_program(kind="cot", input_keys=choice_task.input_keys, instructions="Pick one.")
    lm = simulated_task_lm(solve=_answer_key(choice_task), knows=always())
    prediction = _run(program, choice_task.val[:1], lm)[0]
    assert set(prediction.keys()) == {"analysis", "reasoning", "answer"}
    assert lm.engine.calls[1].view.instruction == "Pick one."


def test_instructions_override_reaches_the_prompt():
    program = qa_program(kind="predict", input_keys=("question",), instructions="Reverse the word.\nThen stop.")
    lm = simulated_task_lm(solve=lambda inputs: inputs["question"][::-1], knows=rule_in_instruction("reverse the word"))
    with dspy.context(lm=lm):
        assert program(question="abc").answer == "cba"
    assert lm.engine.calls[0].view.instruction == "Reverse the word.\nThen stop."


def test_program_ignores_extra_keys_and_refuses_missing_inputs(choice_task):
    program = make_program("qa", choice_task)
    lm = simulated_task_lm(solve=_answer_key(choice_task), knows=always())
    example = choice_task.val[0]
    with dspy.context(lm=lm):
        assert program(**example.toDict()).answer == example.answer  # choices/answer are ignored
        with pytest.raises(ValueError, match="options"):
            program(question=example.question)


def test_evaluate_in_threads_scores_rule_and_no_rule(choice_task):
    metric = choice_task.metric
    evaluate = dspy.Evaluate(devset=choice_task.val, metric=metric, num_threads=4, display_progress=False)
    told = simulated_task_lm(solve=_answer_key(choice_task), knows=always())
    blind = simulated_task_lm(solve=_answer_key(choice_task), knows=never())
    program = make_program("cot", choice_task)
    with dspy.context(lm=told):
        assert evaluate(program).score == 100.0
    with dspy.context(lm=blind):
        assert evaluate(program).score == 0.0
    assert told.engine.call_count == blind.engine.call_count == len(choice_task.val)


def test_async_call_matches_sync(choice_task):
    import asyncio

    lm = simulated_task_lm(solve=_answer_key(choice_task), knows=always())
    example = choice_task.val[0]

    async def run():
        with dspy.context(lm=lm):
            return await make_program("two_step", choice_task).acall(**example.inputs())

    assert asyncio.run(run()).answer == example.answer


def test_factories_return_fresh_modules(choice_task):
    first, second = make_program("qa", choice_task), make_program("qa", choice_task)
    assert isinstance(first, QAProgram) and first is not second
    first.predictor.signature = first.predictor.signature.with_instructions("Changed.")
    assert second.predictor.signature.instructions == CHOICE_INSTRUCTIONS


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda task: make_program("react", task), "`name` must be one of"),
        (lambda task: qa_program(kind="tot"), "`kind` must be one of"),
        (lambda task: two_step_program(kind="react"), "`kind` must be one of"),
        (lambda task: qa_program(input_keys=("question", "answer")), "`input_keys` must be distinct"),
        (lambda task: qa_program(input_keys=("question", "question")), "`input_keys` must be distinct"),
        (lambda task: qa_program(input_keys=()), "`input_keys` must be distinct"),
        (lambda task: two_step_program(input_keys=("analysis",)), "`input_keys` must be distinct"),
    ],
)
def test_program_validation(choice_task, call, message):
    with pytest.raises(ValueError, match=message):
        call(choice_task)
