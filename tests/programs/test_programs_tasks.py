"""Loading bundled and user tasks: determinism, disjoint splits, size validation, formatting."""

import dataclasses
import json
import socket

import dspy
import pytest

from dspy_icl_opt.programs import TASKS, choice_match, exact_match, load_jsonl_task, load_task, metric_for, task_names
from dspy_icl_opt.programs.metrics import parse_options
from dspy_icl_opt.programs.tasks import DATA_DIR, DEFAULT_TEST_CAP, DEFAULT_TRAIN_SIZE, DEFAULT_VAL_SIZE

EXPECTED_TASKS = {
    "date_understanding",
    "disambiguation_qa",
    "formal_fallacies",
    "hyperbaton",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "temporal_sequences",
    "tracking_shuffled_objects_three_objects",
    "word_sorting",
}
FREE_ANSWER_TASKS = {"penguins_in_a_table", "word_sorting"}


def _questions(examples):
    return [example.question for example in examples]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_registry_lists_the_nine_bundled_tasks_with_their_files():
    assert set(task_names()) == EXPECTED_TASKS
    for name, info in TASKS.items():
        assert (DATA_DIR / info.filename).is_file(), name
        assert info.description
        assert info.multiple_choice == (name not in FREE_ANSWER_TASKS)
    assert (DATA_DIR / "ATTRIBUTION.md").is_file()
    assert "Apache" in (DATA_DIR / "ATTRIBUTION.md").read_text()


def test_same_seed_gives_same_splits_and_other_seed_reshuffles():
    first = load_task("formal_fallacies", seed=3)
    again = load_task("formal_fallacies", seed=3)
    other = load_task("formal_fallacies", seed=4)
    for split in ("train", "val", "test"):
        assert _questions(getattr(first, split)) == _questions(getattr(again, split))
    assert _questions(first.train) != _questions(other.train)


@pytest.mark.parametrize("name", sorted(EXPECTED_TASKS))
def test_splits_are_disjoint_and_sized_by_default(name):
    task = load_task(name)
    train, val, test = (set(_questions(split)) for split in (task.train, task.val, task.test))
    assert not train & val and not train & test and not val & test
    assert len(task.train) == DEFAULT_TRAIN_SIZE
    assert len(task.val) == DEFAULT_VAL_SIZE
    assert 0 < len(task.test) <= DEFAULT_TEST_CAP


def test_default_test_split_takes_the_rest_of_a_small_task():
    task = load_task("penguins_in_a_table")  # 149 examples
    assert (len(task.train), len(task.val), len(task.test)) == (30, 30, 89)


def test_explicit_sizes_are_honoured():
    task = load_task("hyperbaton", seed=1, train_size=7, val_size=0, test_size=11)
    assert (len(task.train), len(task.val), len(task.test)) == (7, 0, 11)


@pytest.mark.parametrize(
    ("sizes", "label"),
    [
        ({"train_size": 0}, "train_size"),
        ({"train_size": -3}, "train_size"),
        ({"train_size": 2.5}, "train_size"),
        ({"train_size": True}, "train_size"),
        ({"val_size": -1}, "val_size"),
        ({"test_size": "10"}, "test_size"),
        ({"train_size": 300, "val_size": 100, "test_size": 1}, "train_size \\+ val_size \\+ test_size"),
        ({"train_size": 390, "val_size": 30}, "train_size \\+ val_size \\+ test_size"),
    ],
)
def test_bad_sizes_are_refused_with_the_field_named(sizes, label):
    with pytest.raises(ValueError, match=label):
        load_task("word_sorting", **sizes)


def test_bad_seed_is_refused():
    with pytest.raises(ValueError, match="`seed` must be an int"):
        load_task("word_sorting", seed="zero")


def test_unknown_task_name_lists_the_known_names():
    with pytest.raises(ValueError, match="word_sorting") as info:
        load_task("no_such_task")
    assert "no_such_task" in str(info.value)
    assert "date_understanding" in str(info.value)


def test_multiple_choice_examples_carry_lettered_options(choice_task):
    assert choice_task.multiple_choice
    assert choice_task.input_keys == ("question", "options")
    example = choice_task.train[0]
    assert set(example.inputs().keys()) == {"question", "options"}
    assert set(example.labels().keys()) == {"choices", "answer"}
    lines = example.options.split("\n")
    assert len(lines) == len(example.choices)
    assert lines[0] == f"(A) {example.choices[0]}"
    assert lines[1].startswith("(B) ")
    assert parse_options(example.options) == example.choices
    assert example.answer in example.choices


def test_free_answer_examples_have_only_a_question_input(free_task):
    assert not free_task.multiple_choice
    assert free_task.input_keys == ("question",)
    example = free_task.test[0]
    assert set(example.inputs().keys()) == {"question"}
    assert "options" not in example
    assert isinstance(example.answer, str) and example.answer


def test_metric_matches_task_kind(choice_task, free_task):
    assert choice_task.metric is choice_match
    assert free_task.metric is exact_match
    assert metric_for(choice_task) is choice_match
    assert metric_for(free_task) is exact_match


def test_task_is_frozen(free_task):
    with pytest.raises(dataclasses.FrozenInstanceError):
        free_task.name = "other"


def test_loading_makes_no_network_call(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    path = _write_jsonl(tmp_path / "fresh.jsonl", [{"question": f"q{i}?", "answer": str(i)} for i in range(12)])
    task = load_jsonl_task(path, train_size=4, val_size=4)
    assert len(task.train) == 4
    assert len(load_task("word_sorting", train_size=2, val_size=2, test_size=2).test) == 2


def test_user_jsonl_free_answer_task(tmp_path):
    path = _write_jsonl(tmp_path / "capitals.jsonl", [{"question": f"Capital #{i}?", "answer": i} for i in range(9)])
    task = load_jsonl_task(path, seed=2)
    assert task.name == "capitals"
    assert not task.multiple_choice
    assert (len(task.train), len(task.val), len(task.test)) == (3, 3, 3)
    assert all(isinstance(example.answer, str) for example in task.train)
    assert sorted(_questions(task.train + task.val + task.test)) == sorted(f"Capital #{i}?" for i in range(9))


def test_user_jsonl_multiple_choice_task(tmp_path):
    rows = [{"question": f"Pick {i}", "choices": ["x", "y", str(i)], "answer": str(i)} for i in range(6)]
    task = load_jsonl_task(_write_jsonl(tmp_path / "mc.jsonl", rows), name="picks", description="Pick.")
    assert task.name == "picks" and task.description == "Pick."
    assert task.multiple_choice and task.metric is choice_match
    example = task.train[0]
    assert example.options == f"(A) x\n(B) y\n(C) {example.answer}"


def test_user_jsonl_refuses_mixed_choices(tmp_path):
    rows = [{"question": "a", "choices": ["1", "2"], "answer": "1"}, {"question": "b", "answer": "2"}]
    with pytest.raises(ValueError, match="`choices` must be given on every line or on none"):
        load_jsonl_task(_write_jsonl(tmp_path / "mixed.jsonl", rows))


def test_user_jsonl_refuses_answer_outside_choices(tmp_path):
    rows = [{"question": "a", "choices": ["1", "2"], "answer": "3"}] * 3
    with pytest.raises(ValueError, match="must be one of the `choices`"):
        load_jsonl_task(_write_jsonl(tmp_path / "bad.jsonl", rows))


def test_user_jsonl_refuses_missing_keys_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="`question` and `answer`"):
        load_jsonl_task(_write_jsonl(tmp_path / "nokeys.jsonl", [{"prompt": "a", "answer": "b"}] * 3))
    with pytest.raises(FileNotFoundError, match="existing JSONL file"):
        load_jsonl_task(tmp_path / "absent.jsonl")


def test_user_jsonl_too_small_for_defaults(tmp_path):
    path = _write_jsonl(tmp_path / "tiny.jsonl", [{"question": "a", "answer": "b"}, {"question": "c", "answer": "d"}])
    with pytest.raises(ValueError, match="too small"):
        load_jsonl_task(path)
    task = load_jsonl_task(path, train_size=1, val_size=1, test_size=0)
    assert len(task.train) == len(task.val) == 1


def test_examples_are_dspy_examples_with_inputs(choice_task):
    for example in choice_task.train + choice_task.val + choice_task.test:
        assert isinstance(example, dspy.Example)
        assert example._input_keys == {"question", "options"}


def test_bundled_multiple_choice_tasks_do_not_give_the_answer_away_by_its_position():
    # The BIG-bench files list the gold choice first in 364 of 369 date_understanding and 400 of 400
    # temporal_sequences examples; load_task reorders each example's choices from its own text.
    for name in ("date_understanding", "temporal_sequences"):
        examples = [*load_task(name, seed=0).train, *load_task(name, seed=0).val, *load_task(name, seed=0).test]
        first = sum(ex.choices.index(ex.answer) == 0 for ex in examples)
        assert first < 0.4 * len(examples), (name, first, len(examples))
        assert all(ex.answer in ex.choices and ex.options.startswith("(A) ") for ex in examples)
    again = load_task("date_understanding", seed=3, train_size=369 - 2, val_size=1, test_size=1)
    by_question = {ex.question: ex.choices for ex in again.train + again.val + again.test}
    for ex in load_task("date_understanding", seed=0).train:  # the same order in every split and run
        assert by_question[ex.question] == ex.choices


def test_a_users_file_keeps_its_choice_order_unless_asked(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "choices": ["right", "wrong", "other"],
                                        "answer": "right"}) + "\n" for i in range(12)))
    kept = load_jsonl_task(path, train_size=4, val_size=4)
    assert all(ex.choices == ["right", "wrong", "other"] for ex in kept.train + kept.val + kept.test)
    shuffled = load_jsonl_task(path, train_size=4, val_size=4, shuffle_choices=True)
    orders = {tuple(ex.choices) for ex in shuffled.train + shuffled.val + shuffled.test}
    assert len(orders) > 1 and all(sorted(o) == ["other", "right", "wrong"] for o in orders)
