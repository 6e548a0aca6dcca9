"""The simulated task model: prompt parsing, rule-gated answers, reply format, records."""

from typing import Literal

import dspy
import pytest
from dspy.lm15 import Message, Request

from dspy_icl_opt.testing import (
    DEFAULT_WRONG_ANSWER,
    Demo,
    SimulatedTaskEngine,
    always,
    never,
    parse_prompt,
    rule_in_demos,
    rule_in_instruction,
    simulated_task_lm,
)

REVERSE_RULE = "reverse the word"
MULTILINE_INSTRUCTION = "Reverse the word.\n\nRules:\n    - keep the case\n    - no spaces"


def reverse(inputs):
    return inputs["question"][::-1]


def _reverse_lm(knows=None, wrong=None):
    return simulated_task_lm(solve=reverse, knows=knows or rule_in_instruction(REVERSE_RULE), wrong=wrong)


def _predict(instructions="Answer the question.", signature="question -> answer"):
    return dspy.Predict(dspy.Signature(signature, instructions))


def test_parses_instruction_fields_and_inputs_of_a_chat_adapter_prompt():
    lm = _reverse_lm()
    predict = _predict(MULTILINE_INSTRUCTION, "question, hint -> reasoning, answer")
    with dspy.context(lm=lm):
        predict(question="stressed", hint="two\nlines")
    view = lm.engine.calls[0].view
    assert view.instruction == MULTILINE_INSTRUCTION
    assert view.input_fields == ("question", "hint")
    assert view.output_fields == ("reasoning", "answer")
    assert view.output_types == {"reasoning": "str", "answer": "str"}
    assert view.inputs == {"question": "stressed", "hint": "two\nlines"}  # no output-format reminder
    assert "Respond with the corresponding output fields" in view.user_text
    assert view.demos == ()
    assert not view.json_mode


def test_answers_right_only_when_instruction_carries_rule():
    lm = _reverse_lm()
    with dspy.context(lm=lm):
        assert _predict("Please REVERSE THE WORD you get.")(question="abc").answer == "cba"
        assert _predict("Answer the question.")(question="abc").answer == DEFAULT_WRONG_ANSWER
    assert [call.knew for call in lm.engine.calls] == [True, False]
    assert [call.answer for call in lm.engine.calls] == ["cba", DEFAULT_WRONG_ANSWER]
    assert lm.engine.known_count == 1 and lm.engine.call_count == 2


def test_custom_wrong_answer():
    lm = _reverse_lm(wrong=lambda inputs: inputs["question"].upper())
    with dspy.context(lm=lm):
        assert _predict()(question="abc").answer == "ABC"


def test_parses_complete_and_incomplete_demos():
    lm = _reverse_lm(knows=rule_in_demos(REVERSE_RULE))
    predict = _predict("Answer the question.", "question -> reasoning, answer")
    predict.demos = [
        dspy.Example(question="pots", answer="stop"),  # incomplete: no reasoning
        dspy.Example(question="live", reasoning=f"I {REVERSE_RULE}.", answer="evil"),
    ]
    with dspy.context(lm=lm):
        assert predict(question="drawer").answer == "reward"
    view = lm.engine.calls[0].view
    assert view.demos == (
        Demo(inputs={"question": "pots"}, outputs={"answer": "stop"}),
        Demo(inputs={"question": "live"}, outputs={"reasoning": f"I {REVERSE_RULE}.", "answer": "evil"}),
    )
    assert view.inputs == {"question": "drawer"}


def test_demos_without_the_rule_do_not_help():
    lm = _reverse_lm(knows=rule_in_demos(REVERSE_RULE))
    predict = _predict()
    predict.demos = [dspy.Example(question="pots", answer="stop")]
    with dspy.context(lm=lm):
        assert predict(question="drawer").answer == DEFAULT_WRONG_ANSWER


def test_chain_of_thought_gets_reasoning_line():
    lm = _reverse_lm(knows=always())
    with dspy.context(lm=lm):
        prediction = dspy.ChainOfThought("question -> answer")(question="abc")
    assert prediction.answer == "cba"
    assert prediction.reasoning
    assert lm.engine.calls[0].reply.endswith("[[ ## completed ## ]]")


def test_non_answer_outputs_get_placeholders_and_solve_can_fill_them():
    lm = simulated_task_lm(solve=lambda inputs: {"answer": "x", "notes": "filled"}, knows=always())
    with dspy.context(lm=lm):
        prediction = dspy.Predict("question -> notes, extra, answer")(question="q")
    assert (prediction.answer, prediction.notes, prediction.extra) == ("x", "filled", "N/A")


def test_without_answer_field_the_last_output_gets_the_answer():
    lm = simulated_task_lm(solve=lambda inputs: "facts", knows=always())
    with dspy.context(lm=lm):
        prediction = dspy.Predict("question -> reasoning, analysis")(question="q")
    assert prediction.analysis == "facts"


def test_typed_output_fields_parse():
    signature = dspy.Signature(
        {
            "question": (str, dspy.InputField()),
            "count": (int, dspy.OutputField()),
            "flag": (bool, dspy.OutputField()),
            "label": (Literal["yes", "no"], dspy.OutputField()),
            "items": (list[str], dspy.OutputField()),
            "answer": (int, dspy.OutputField()),
        }
    )
    lm = simulated_task_lm(solve=lambda inputs: 7, knows=always())
    with dspy.context(lm=lm):
        prediction = dspy.Predict(signature)(question="q")
    assert (prediction.count, prediction.flag, prediction.label, prediction["items"], prediction.answer) == (
        0,
        False,
        "yes",
        [],
        7,
    )


def test_json_adapter_prompts_get_json_replies():
    lm = _reverse_lm()
    predict = _predict("Reverse the word.")
    predict.demos = [dspy.Example(question="pots", answer="stop")]
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert predict(question="abc").answer == "cba"
    view = lm.engine.calls[0].view
    assert view.json_mode
    assert view.instruction == "Reverse the word."
    assert view.inputs == {"question": "abc"}
    assert view.demos == (Demo(inputs={"question": "pots"}, outputs={"answer": "stop"}),)


def test_plain_lm_call_is_answered():
    lm = simulated_task_lm(solve=lambda inputs: "hi", knows=always())
    reply = lm("hello there")[0]
    assert "[[ ## answer ## ]]\nhi" in reply
    view = lm.engine.calls[0].view
    assert view.inputs == {} and view.user_text == "hello there" and view.output_fields == ("answer",)


def test_parse_prompt_on_a_handmade_request():
    request = Request(
        model="fake",
        system=(
            "Your output fields are:\n1. `answer` (str): the answer\n"
            "In adhering to this structure, your objective is: \n        Be exact."
        ),
        messages=(
            Message.user("[[ ## question ## ]]\nq1"),
            Message.assistant("[[ ## answer ## ]]\na1\n\n[[ ## completed ## ]]"),
            Message.user("[[ ## question ## ]]\nq2\n\nRespond with the corresponding output fields, starting with ..."),
        ),
    )
    view = parse_prompt(request)
    assert view.instruction == "Be exact."
    assert view.output_fields == ("answer",)
    assert view.demos == (Demo(inputs={"question": "q1"}, outputs={"answer": "a1"}),)
    assert view.inputs == {"question": "q2"}
    assert view.answer_field == "answer"


def test_engine_is_usable_directly_with_dspy_lm():
    engine = SimulatedTaskEngine(solve=reverse, knows=never())
    lm = dspy.LM("fake/direct", engine=engine, cache=False)
    with dspy.context(lm=lm):
        assert _predict()(question="abc").answer == DEFAULT_WRONG_ANSWER
    assert engine.requests[0].model == "fake/direct"


def test_callables_are_validated():
    with pytest.raises(TypeError, match="`knows` must be callable"):
        simulated_task_lm(solve=reverse, knows="reverse")
    with pytest.raises(TypeError, match="`solve` must be callable"):
        simulated_task_lm(solve="cba", knows=always())


def test_parallel_calls_are_all_recorded():
    examples = [dspy.Example(question=f"word{i}", answer=f"word{i}"[::-1]).with_inputs("question") for i in range(24)]
    lm = _reverse_lm()
    program = _predict("Reverse the word.")
    evaluate = dspy.Evaluate(
        devset=examples, metric=lambda ex, pred, trace=None: float(ex.answer == pred.answer), num_threads=6
    )
    with dspy.context(lm=lm):
        assert evaluate(program).score == 100.0
    assert lm.engine.call_count == len(lm.engine.calls) == len(examples)
    assert sorted(call.view.inputs["question"] for call in lm.engine.calls) == sorted(ex.question for ex in examples)
