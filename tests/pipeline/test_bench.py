"""bench: one row per optimizer, the calls of DSPy's optimizers counted like ours; table, CSV and chart."""

from __future__ import annotations

import csv
import io
import json

import pytest

from dspy_icl_opt.pipeline import ConfigError, parse_config, run_bench
from dspy_icl_opt.pipeline.bench import bench_steps


def test_bench_writes_one_row_per_optimizer_with_counted_calls(config_dict, task_lm, prompt_lm, tmp_path):
    pytest.importorskip("dspy_icl_opt.optimizers.opro")
    config_dict["bench"] = [{"optimizer": "labeled", "params": {"k": 3}},
                            {"optimizer": "mipro", "params": {"num_candidates": 2, "num_trials": 2}},
                            {"optimizer": "opro", "params": {"steps": 1, "candidates_per_step": 2}}]
    names = ["labeled", "mipro", "opro"]
    result = run_bench(parse_config(config_dict), names, task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    out = tmp_path / "run" / "bench"
    assert result.output == out
    rows = {r["optimizer"]: r for r in result.rows}
    assert list(rows) == ["baseline", *names]
    assert rows["baseline"]["accuracy"] == 0.0 and rows["labeled"]["accuracy"] == 1.0
    assert rows["labeled"]["task_calls"] == 0 and rows["labeled"]["prompt_calls"] == 0  # demos cost no call
    assert rows["mipro"]["prompt_calls"] > 0 and rows["mipro"]["task_calls"] > 0  # DSPy's calls are counted
    assert rows["mipro"]["tokens"] > 0
    assert rows["opro"]["prompt_calls"] == 2 and rows["opro"]["family"] == "ours"
    table = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert [r["optimizer"] for r in table] == ["baseline", *names]
    assert table[2]["prompt_calls"] == str(rows["mipro"]["prompt_calls"])
    assert json.loads((out / "bench.json").read_text())["rows"] == result.rows
    markdown = (out / "bench.md").read_text()
    assert markdown.count("\n") == len(names) + 3 and "| labeled | 100.0% |" in markdown
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    for name in names:
        assert (out / f"{names.index(name):02d}-{name}" / "report.json").exists()
    from dspy_icl_opt.pipeline import render_report

    page = render_report(out, fmt="html").read_text()
    assert "Benchmark" in page and "MIPROv2" in page and "LabeledFewShot" in page


def test_bench_takes_params_from_the_config_and_defaults_otherwise(config_dict):
    config_dict["bench"] = [{"optimizer": "LabeledFewShot", "params": {"k": 1}}]
    steps = bench_steps(parse_config(config_dict), ["labeled", "bootstrap"])
    assert [(s.optimizer, s.params) for s in steps] == [("LabeledFewShot", {"k": 1}), ("bootstrap", {})]


def test_bench_rejects_unknown_optimizers_before_any_call(config_dict, task_lm):
    with pytest.raises(ConfigError, match=r"--optimizers: unknown optimizer 'nope'"):
        run_bench(parse_config(config_dict), ["labeled", "nope"], task_lm=task_lm, progress=False)
    assert task_lm.engine.call_count == 0


def test_a_failing_competitor_gets_a_row_and_the_rest_still_run(config_dict, task_lm, tmp_path):
    config_dict["bench"] = [{"optimizer": "copro", "params": {"breadth": 2, "depth": 1}},
                            {"optimizer": "labeled", "params": {"k": 3}}]
    from dspy_icl_opt.testing import scripted_lm

    broken_prompt = scripted_lm([])  # COPRO's prompt model fails
    result = run_bench(parse_config(config_dict), task_lm=task_lm, prompt_lm=broken_prompt, progress=False)
    rows = {r["optimizer"]: r for r in result.rows}
    assert rows["copro"]["status"].startswith("failed: ")
    assert rows["labeled"]["accuracy"] == 1.0
