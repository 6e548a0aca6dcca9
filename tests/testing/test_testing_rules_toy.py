"""Rules for `knows` and the planted-rule toy tasks."""

import dspy
import pytest

from dspy_icl_opt.testing import (
    RULES,
    Demo,
    PromptView,
    all_of,
    always,
    any_of,
    correct_demos,
    make_words,
    never,
    not_,
    parity_task,
    planted_rule_task,
    rule_anywhere,
    rule_in_demos,
    rule_in_instruction,
    toy_metric,
)


def _view(instruction="", demos=(), user_text=""):
    return PromptView(
        instruction=instruction, demos=tuple(demos), inputs={}, user_text=user_text, output_fields=("answer",)
    )


HINT_DEMO = Demo(inputs={"question": "abc"}, outputs={"answer": "cba", "reasoning": "Reverse the word."})
PLAIN_DEMO = Demo(inputs={"question": "pots"}, outputs={"answer": "stop"})


def test_rule_in_instruction_is_case_insensitive_substring():
    rule = rule_in_instruction("Reverse the word")
    assert rule(_view("First, REVERSE THE WORD."))
    assert not rule(_view("Reverse it."))
    assert not rule(_view("", demos=[HINT_DEMO]))


def test_rule_in_demos_text_predicate_and_count():
    assert rule_in_demos("reverse the word")(_view(demos=[PLAIN_DEMO, HINT_DEMO]))
    assert not rule_in_demos("reverse the word")(_view("reverse the word", demos=[PLAIN_DEMO]))
    assert not rule_in_demos("reverse the word", at_least=2)(_view(demos=[HINT_DEMO, PLAIN_DEMO]))
    assert rule_in_demos(lambda demo: "question" in demo.inputs, at_least=2)(_view(demos=[HINT_DEMO, PLAIN_DEMO]))


def test_rule_anywhere_checks_instruction_demos_and_user_message():
    rule = rule_anywhere("reverse the word")
    assert rule(_view("Reverse the word."))
    assert rule(_view(demos=[HINT_DEMO]))
    assert rule(_view(user_text="[[ ## question ## ]]\nreverse the word: abc"))
    assert not rule(_view("Answer.", demos=[PLAIN_DEMO], user_text="abc"))


def test_correct_demos_counts_demos_with_the_right_answer():
    def solve(inputs):
        return inputs["question"][::-1]

    wrong_demo = Demo(inputs={"question": "abc"}, outputs={"answer": "abc"})
    assert correct_demos(solve)(_view(demos=[PLAIN_DEMO]))
    assert not correct_demos(solve)(_view(demos=[wrong_demo]))
    assert not correct_demos(solve, at_least=2)(_view(demos=[PLAIN_DEMO, wrong_demo]))
    assert not correct_demos(solve)(_view(demos=[Demo(inputs={}, outputs={"answer": "x"})]))  # solve fails: no match


def test_combinators_and_constants():
    told = _view("Reverse the word.")
    assert all_of(rule_in_instruction("reverse"), always())(told)
    assert not all_of(rule_in_instruction("reverse"), never())(told)
    assert any_of(never(), rule_in_instruction("reverse"))(told)
    assert not any_of(never(), rule_in_demos("reverse"))(told)
    assert not_(never())(told) and not not_(always())(told)
    assert any_of(lambda view: True)(told)  # plain callables work too


def test_rules_describe_themselves():
    rule = all_of(rule_in_instruction("count"), any_of(rule_in_demos("vowel", at_least=2), never()))
    assert repr(rule) == "all_of(rule_in_instruction('count'), any_of(rule_in_demos('vowel', at_least=2), never()))"


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: rule_in_instruction(""), ValueError, "`rule_text` must be a non-empty string"),
        (lambda: rule_anywhere(None), ValueError, "`text` must be a non-empty string"),
        (lambda: rule_in_demos("x", at_least=0), ValueError, "`at_least` must be an int >= 1"),
        (lambda: rule_in_demos(3), TypeError, "`predicate_or_text` must be a string or a callable"),
        (lambda: any_of(), TypeError, "`any_of` needs one or more callables"),
        (lambda: all_of("x"), TypeError, "`all_of` needs one or more callables"),
    ],
)
def test_rule_validation(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("kind", sorted(RULES))
def test_planted_rule_task_is_deterministic_disjoint_and_follows_the_rule(kind):
    task = planted_rule_task(kind, train_size=10, val_size=8, seed=5)
    again = planted_rule_task(kind, train_size=10, val_size=8, seed=5)
    other = planted_rule_task(kind, train_size=10, val_size=8, seed=6)
    questions = [example.question for example in task.train + task.val]
    assert questions == [example.question for example in again.train + again.val]
    assert questions != [example.question for example in other.train + other.val]
    assert len(set(questions)) == 18 and (len(task.train), len(task.val)) == (10, 8)
    assert task.rule == RULES[kind].phrase
    for example in task.train + task.val:
        assert example.inputs().toDict() == {"question": example.question}
        assert task.solve(example.inputs()) == example.answer == RULES[kind].apply(example.question)


def test_rule_answers_are_varied():
    task = planted_rule_task("parity", train_size=20, val_size=0, seed=0)
    assert {example.answer for example in task.train} == {"even", "odd"}
    assert len({example.answer for example in planted_rule_task("vowels", val_size=0).train}) > 1


def test_parity_task_splits_n_in_half():
    task = parity_task(7, seed=2)
    assert (len(task.train), len(task.val)) == (4, 3)
    assert task.name == "parity"


def test_toy_task_model_solves_only_with_the_rule_in_instruction_or_demo():
    task = planted_rule_task("vowels", train_size=3, val_size=5, seed=1)
    lm = task.lm()
    with dspy.context(lm=lm):
        assert task.score(task.program()) == 0.0
        assert task.score(task.program(instructions=f"Please {task.rule} in the word.")) == 1.0
        shown = task.program()
        shown.demos = [dspy.Example(question="abe", answer=f"2 (I {task.rule})")]
        assert task.score(shown) == 1.0
    assert lm.engine.call_count == 15


def test_toy_task_model_with_correct_demos_rule():
    task = planted_rule_task("reverse", train_size=4, val_size=4, seed=0)
    lm = task.lm(knows=correct_demos(task.solve, at_least=2))
    program = task.program()
    with dspy.context(lm=lm):
        program.demos = task.train[:1]
        assert task.score(program) == 0.0
        program.demos = task.train[:2]
        assert task.score(program) == 1.0


def test_toy_task_validation():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        planted_rule_task("sorting")
    with pytest.raises(ValueError, match="`train_size` must be an int >= 0"):
        planted_rule_task("parity", train_size=-1)
    with pytest.raises(ValueError, match="`n` must be an int >= 0"):
        parity_task(2.5)


def test_make_words_distinct_and_seeded():
    words = make_words(200, seed=9)
    assert len(set(words)) == 200 and words == make_words(200, seed=9)
    assert all(word.isalpha() and word.islower() for word in words)


def test_toy_metric():
    gold = dspy.Example(answer="Odd")
    assert toy_metric(gold, dspy.Prediction(answer=" odd ")) == 1.0
    assert toy_metric(gold, dspy.Prediction(answer="even")) == 0.0
    assert toy_metric(gold, dspy.Prediction()) == 0.0
    assert toy_metric(gold, None) == 0.0
