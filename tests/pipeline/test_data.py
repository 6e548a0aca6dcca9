"""Data sources: local files in several formats with field mapping; the hub says clearly when it is unreachable."""

from __future__ import annotations

import csv
import json

import pytest

from dspy_icl_opt.pipeline import ConfigError, parse_config
from dspy_icl_opt.pipeline.data import build_program, hub_reachable, load_data


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
    with pytest.raises(ConfigError, match=r"data.fields: the examples need an `answer` field"):
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
