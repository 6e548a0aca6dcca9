"""Data sources: local files in several formats with field mapping; the hub says clearly when it is unreachable."""

from __future__ import annotations

import csv
import json

import dspy
import pytest

from dspy_icl_opt.pipeline import ConfigError, parse_config, run_pipeline
from dspy_icl_opt.pipeline.data import build_program, hub_reachable, load_data
from dspy_icl_opt.testing import correct_demos, make_words, simulated_task_lm


def _config(path, **data):
    return parse_config({"data": {"path": str(path), "train_size": 2, "val_size": 1, "test_size": 1, **data}})


def test_csv_with_field_mapping(tmp_path):
    path = tmp_path / "qa.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "noise"])
        writer.writerows([[f"q{i}", f"a{i}", "x"] for i in range(5)])
    task = load_data(_config(path, fields={"question": "text", "answer": "label"}))
    assert len(task.train) == 2 and task.input_keys == ("question",)
    assert set(task.train[0].keys()) == {"question", "answer"}
    assert task.metric.__name__ == "exact_match"


def test_json_list_with_choices_becomes_multiple_choice(tmp_path):
    path = tmp_path / "mc.json"
    rows = [{"question": f"q{i}", "choices": ["yes", "no"], "answer": "yes"} for i in range(4)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    task = load_data(_config(path))
    assert task.multiple_choice and task.input_keys == ("question", "options")
    assert task.train[0].options.startswith("(A) yes")
    assert task.metric.__name__ == "choice_match"
    program = build_program(parse_config({"data": {"path": str(path)}, "program": "qa"}), task)
    assert list(program.predictor.signature.input_fields) == ["question", "options"]


def test_parquet_is_read(tmp_path):
    pandas = pytest.importorskip("pandas")
    path = tmp_path / "qa.parquet"
    pandas.DataFrame({"question": [f"q{i}" for i in range(4)], "answer": ["a"] * 4}).to_parquet(path)
    assert len(load_data(_config(path)).test) == 1


def test_mapping_a_missing_column_names_the_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"q{i}", "a": "x"}) for i in range(4)), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.fields.answer: must name a column of the data \['a', 'q'\]"):
        load_data(_config(path, fields={"question": "q", "answer": "label"}))
    with pytest.raises(ConfigError, match=r"data.fields: the examples need a gold-answer field besides their inputs"):
        load_data(_config(path))


def test_split_sizes_larger_than_the_data_are_refused(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"question": "q", "answer": "a"}) for _ in range(3)), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data: train_size \+ val_size \+ test_size must be at most the 3"):
        load_data(_config(path, test_size=5))


def test_bundled_task_sizes_and_seed():
    config = parse_config({"data": {"task": "hyperbaton", "train_size": 3, "val_size": 2, "test_size": 4}, "seed": 1})
    task = load_data(config)
    assert (len(task.train), len(task.val), len(task.test)) == (3, 2, 4)
    assert load_data(config).train[0] == task.train[0]


@pytest.mark.skipif(hub_reachable(), reason="the hub is reachable here; this checks the offline message")
def test_unreachable_hub_says_so():
    with pytest.raises(ConfigError, match="data.hub: the Hugging Face hub is not reachable from here"):
        load_data(parse_config({"data": {"hub": "gsm8k", "subset": "main"}}))


# ----------------------------------------------------------- own data, checked against the program (issue 16, item 3)
def label_program() -> dspy.Module:
    """A user's program: text -> label."""
    return dspy.Predict("text -> label")


def label_metric(example, prediction, trace=None) -> float:
    return float(example.label == getattr(prediction, "label", None))


def _text_label_csv(tmp_path, n=40):
    path = tmp_path / "mine.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([[w, w[::-1]] for w in make_words(n, seed=2)])
    return path


def _text_lm(field="answer"):
    def solve(inputs):
        return inputs["text"][::-1]

    return simulated_task_lm(solve=solve, knows=correct_demos(solve, at_least=2, field=field))


def _run_config(path, tmp_path, **extra):
    return parse_config({"data": {"path": str(path), "train_size": 10, "val_size": 10, "test_size": 10,
                                  **extra.pop("data", {})},
                         "optimize": [{"optimizer": "labeled", "params": {"k": 3}}],
                         "output": str(tmp_path / "run"), **extra})


def test_a_text_label_csv_runs_as_it_is_with_the_bundled_program(tmp_path):
    task_lm = _text_lm()
    result = run_pipeline(_run_config(_text_label_csv(tmp_path), tmp_path), task_lm=task_lm, progress=False)
    assert result.summary["after"]["score"] == 1.0  # label read as the answer, text as the input; demos teach it
    assert list(result.program.predictor.signature.input_fields) == ["text"]


def test_a_mapping_onto_a_field_the_program_does_not_output_is_refused_before_any_lm_call(tmp_path):
    task_lm = _text_lm()
    path = _text_label_csv(tmp_path)
    mine = "tests.pipeline.test_data:label_program"
    with pytest.raises(ConfigError, match=r"^data.fields: the examples' gold field\(s\) \['answer'\] must be "
                                          r"output\(s\) of the program \['label'\], but none is: .* score 0 on "
                                          r"every example. Map the label column onto an output: fields: \{label: "):
        run_pipeline(_run_config(path, tmp_path, program=mine, metric="tests.pipeline.test_data:label_metric"),
                     task_lm=task_lm, progress=False)
    with pytest.raises(ConfigError, match=r"^data.fields: the program's input field\(s\) \['text'\] must be inputs"):
        run_pipeline(_run_config(path, tmp_path, program=mine, data={"fields": {"question": "text", "label": "label"}}),
                     task_lm=task_lm, progress=False)
    with pytest.raises(ConfigError, match=r"^metric: exact_match compares the `answer` fields .* the program "
                                          r"outputs \['label'\] and the examples hold \['label'\]"):
        run_pipeline(_run_config(path, tmp_path, program=mine, data={"fields": {"text": "text", "label": "label"}}),
                     task_lm=task_lm, progress=False)
    assert task_lm.engine.call_count == 0
    result = run_pipeline(_run_config(path, tmp_path, program=mine, metric="tests.pipeline.test_data:label_metric",
                                      data={"fields": {"text": "text", "label": "label"}}),
                          task_lm=_text_lm("label"), progress=False, fresh=True)
    assert result.summary["after"]["score"] == 1.0


def test_cli_field_flags_map_columns(tmp_path):
    from dspy_icl_opt.pipeline.cli import build_parser, config_from_flags

    path = _text_label_csv(tmp_path)
    args = build_parser().parse_args(["compile", "--data", str(path), "--field", "question=text", "--field",
                                      "answer=label", "--optimizer", "labeled"])
    config = config_from_flags(args, evaluate=False)
    assert config.data.fields == {"question": "text", "answer": "label"}
    assert load_data(config).input_keys == ("question",)
