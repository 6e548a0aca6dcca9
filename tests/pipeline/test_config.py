"""The run description: schema errors name the field, files round-trip, example configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dspy_icl_opt.pipeline import ConfigError, dump_config, load_config, parse_config
from dspy_icl_opt.pipeline.config import PipelineConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_shorthands_expand(config_dict):
    config_dict.update(program="cot", lm={"task": "openai/gpt-4o-mini"}, budget="tiny", optimize=["labeled"])
    config = parse_config(config_dict)
    assert config.program.name == "cot"
    assert config.lm.task.model == "openai/gpt-4o-mini" and config.lm.prompt is None
    assert config.budget.max_task_calls == 200  # the "tiny" preset
    assert config.optimize[0].optimizer == "labeled" and config.optimize[0].params == {}


def test_schema_errors_name_the_field_what_was_expected_and_found(config_dict):
    config_dict.update(seed=-1, num_threads=0, surprise=1, budget="huge")
    config_dict["data"]["train_size"] = 0
    config_dict["lm"] = {"task": {"model": "embedded", "temperature": "hot"}}
    problems = problems_of(config_dict)
    assert "seed: must be >= 0, but got -1" in problems
    assert "num_threads: must be >= 1, but got 0" in problems
    assert "data.train_size: must be >= 1, but got 0" in problems
    assert any(p.startswith("lm.task.temperature: must be a number, but got 'hot'") for p in problems)
    assert any(p.startswith("surprise: is not a known field (expected one of [") for p in problems)
    assert any(p.startswith("budget: must be one of the presets") and "'huge'" in p for p in problems)


def test_data_needs_exactly_one_source(config_dict):
    config_dict["data"]["task"] = "hyperbaton"
    assert problems_of(config_dict) == ["data: give exactly one of `task`, `path` or `hub`, but got ['task', 'path']"]


def test_optimizer_params_are_checked_by_building_the_optimizer(config_dict):
    pytest.importorskip("dspy_icl_opt.optimizers.abo")
    config_dict["optimize"] = [{"optimizer": "labeled"}, {"optimizer": "abo", "params": {"beam_size": 0}}]
    (problem,) = problems_of(config_dict)
    assert problem == "optimize[1].params.beam_size: must be an integer >= 1, but got 0. Keep at least one procedure."


def test_unknown_optimizer_parameter_and_name(config_dict):
    config_dict["optimize"] = [{"optimizer": "mipro", "params": {"num_trails": 3}}, "oprox",
                               {"optimizer": "copro", "params": {"breadth": 1}},
                               {"optimizer": "gepa", "params": {"auto": "light", "max_metric_calls": 5}}]
    problems = problems_of(config_dict)
    assert problems[0].startswith("optimize[0].params.num_trails: is not a parameter of MIPROv2 (expected one of [")
    assert "num_trials" in problems[0]
    assert problems[1].startswith("optimize[1].optimizer: unknown optimizer 'oprox'; expected one of [")
    assert problems[2] == "optimize[2].params.breadth: Breadth must be greater than 1"
    assert problems[3].startswith("optimize[3].params.auto: Exactly one of max_metric_calls, max_full_evals, auto")


def test_reserved_params_metric_and_program_paths_are_checked(config_dict):
    config_dict["optimize"] = [{"optimizer": "labeled", "params": {"budget": 3}}]
    config_dict.update(metric="no_such_module:fn", program="no_such_module:factory")
    problems = problems_of(config_dict)
    assert any(p.startswith("optimize[0].params.budget: is set by the pipeline") for p in problems)
    assert not any(p.startswith(("metric", "program")) for p in problems)  # a rejected config imports nothing
    config_dict["optimize"] = [{"optimizer": "labeled"}]
    problems = problems_of(config_dict)
    assert any(p.startswith("metric: must be one of ['exact_match', 'choice_match'] or pkg.module:function")
               for p in problems)
    assert any(p.startswith("program.name: must be one of ['qa', 'cot', 'two_step']") for p in problems)


def test_bad_lm_spec_and_data_path(config_dict, tmp_path):
    config_dict["lm"] = {"task": "not a model"}
    config_dict["data"]["path"] = str(tmp_path / "missing.jsonl")
    problems = problems_of(config_dict)
    assert any(p.startswith("data.path: must be an existing file") for p in problems)
    assert any(p.startswith("lm.task.model: must be 'embedded' (or 'embedded-1.5b'), a .gguf path or provider/model")
               for p in problems)


def test_the_opt_in_proposer_model_is_a_valid_lm_name(config_dict):
    config_dict["lm"] = {"task": "embedded", "prompt": "Embedded-1.5B"}
    config = parse_config(config_dict)
    assert config.lm.prompt.model == "Embedded-1.5B"
    config_dict["lm"] = {"task": "embedded", "prompt": "embedded-1.6b"}
    problems = problems_of(config_dict)
    assert any(p.startswith("lm.prompt.model: must be 'embedded' (or 'embedded-1.5b')") for p in problems)


def test_yaml_file_errors_carry_the_file_and_position(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {task: hyperbaton\noptimize: [", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.source == str(bad)
    assert "line" in info.value.problems[0] and "not valid YAML" in info.value.problems[0]
    assert str(bad) in info.value.describe()


def test_relative_data_path_is_read_relative_to_the_config_file(tmp_path, data_file):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": f"../{data_file.name}"}}), encoding="utf-8")
    assert Path(load_config(path).data.path) == data_file.resolve()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_round_trips(config_dict, tmp_path, suffix):
    config_dict.update(budget="light", lm={"task": {"model": "openai/gpt-4o-mini", "temperature": 0.0},
                                           "prompt": "openai/gpt-4o"},
                       evaluate={"split": "val"},
                       bench=[{"optimizer": "bootstrap", "params": {"max_labeled_demos": 1}}])
    first = tmp_path / f"first{suffix}"
    text = dump_config(parse_config(config_dict))
    first.write_text(text if suffix == ".yaml" else PipelineConfig.model_validate(yaml.safe_load(text))
                     .model_dump_json(), encoding="utf-8")
    loaded = load_config(first)
    second = tmp_path / "second.yaml"
    dump_config(loaded, second)
    again = load_config(second)
    assert again == loaded
    assert again.fingerprint() == loaded.fingerprint()


def test_fingerprint_ignores_where_and_how_results_are_reported(config_dict):
    base = parse_config(config_dict)
    moved = parse_config({**config_dict, "output": "elsewhere", "num_threads": 4, "evaluate": {"before": False}})
    reseeded = parse_config({**config_dict, "seed": 7})
    assert base.fingerprint() == moved.fingerprint() != reseeded.fingerprint()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    try:
        config = load_config(path)
    except ConfigError as exc:
        unavailable = [p for p in exc.problems if "is not available here" in p]
        if unavailable and len(unavailable) == len(exc.problems):
            pytest.skip(f"optimizer not written yet: {unavailable}")
        raise
    assert config.optimize or config.bench
    assert config.data.train_size <= 20  # small enough for the embedded model
