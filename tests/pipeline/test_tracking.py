"""DSPy users' own tools see our runs (issue 16, item 7): held-out scores through dspy.Evaluate and its callbacks,
and MLflow's DSPy autologging (a local file store) gets the compile's parameters, each candidate's scores and the
final program. The MLflow test is skipped when MLflow is not installed (the `test` extra installs it)."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from dspy_icl_opt.pipeline import parse_config, run_pipeline


class EvaluateRecorder(BaseCallback):
    def __init__(self) -> None:
        self.started: list[dict] = []
        self.ended: list[float] = []

    def on_evaluate_start(self, call_id, instance, inputs):
        self.started.append(inputs)

    def on_evaluate_end(self, call_id, outputs, exception=None):
        self.ended.append(float(outputs.score) if outputs is not None else None)


def test_held_out_evaluation_runs_through_dspy_evaluate_and_its_callbacks(config_dict, task_lm):
    recorder = EvaluateRecorder()
    with dspy.context(callbacks=[recorder]):
        result = run_pipeline(parse_config(config_dict), task_lm=task_lm, progress=False)
    assert result.summary["before"]["score"] == 0.0 and result.summary["after"]["score"] == 1.0
    assert recorder.ended == [0.0, 100.0]  # DSPy's Evaluate reports percent: before, then after
    assert [s["callback_metadata"] for s in recorder.started] == [{"metric_key": "held_out_test"}] * 2
    assert all(type(s["program"]).__name__ == type(result.program).__name__ for s in recorder.started)


def test_held_out_evaluation_resumed_from_its_journal_repeats_no_call(config_dict, make_task_lm):
    config = parse_config(config_dict)
    run_pipeline(config, task_lm=make_task_lm(), progress=False)
    recorder, again = EvaluateRecorder(), make_task_lm()
    with dspy.context(callbacks=[recorder]):
        result = run_pipeline(config, task_lm=again, progress=False)
    assert again.engine.call_count == 0 and result.summary["after"]["score"] == 1.0


def _runs(store: Path) -> list[dict]:
    """Every run of the file store: its params, metric histories and artifacts (read as files, no MLflow API)."""
    runs = []
    for meta in store.glob("*/*/meta.yaml"):
        run = meta.parent
        if not (run / "params").is_dir() and not (run / "metrics").is_dir() and not (run / "artifacts").is_dir():
            continue
        params = {p.name: p.read_text() for p in (run / "params").glob("*")} if (run / "params").is_dir() else {}
        metrics = {}
        for m in (run / "metrics").glob("*") if (run / "metrics").is_dir() else []:
            metrics[m.name] = [(int(line.split()[2]), float(line.split()[1])) for line in m.read_text().splitlines()]
        artifacts = sorted(str(p.relative_to(run / "artifacts")) for p in (run / "artifacts").rglob("*")
                           if p.is_file()) if (run / "artifacts").is_dir() else []
        runs.append({"dir": run, "params": params, "metrics": metrics, "artifacts": artifacts})
    return runs


@pytest.mark.parametrize("autolog_first", [False, True], ids=["optimizer-imported-first", "autolog-first"])
def test_mlflow_dspy_autolog_logs_params_candidate_scores_and_the_final_program(config_dict, task_lm, prompt_lm,
                                                                                tmp_path, autolog_first, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional test dependency (pip install -e .[test])")
    import mlflow.dspy

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store, in maintenance mode

    store = tmp_path / "mlruns"
    mlflow.set_tracking_uri(store.as_uri())
    mlflow.set_experiment(f"habits-{autolog_first}")
    try:
        if autolog_first:  # autolog cannot wrap a class defined after it: our hook opens the run itself
            mlflow.dspy.autolog(log_compiles=True, log_evals=True, log_traces=False, silent=True)
        from dspy_icl_opt.optimizers.opro import OPRO  # noqa: F401 - defined before autolog in the other case

        if not autolog_first:
            mlflow.dspy.autolog(log_compiles=True, log_evals=True, log_traces=False, silent=True)
        from mlflow.dspy.callback import MlflowCallback

        config_dict["optimize"] = [{"optimizer": "opro", "params": {"steps": 1, "candidates_per_step": 2}}]
        # autolog registers its callback with dspy.configure; the tests run inside a dspy.context (conftest),
        # which shadows the global settings, so the callback is passed the way a context takes it
        with dspy.context(callbacks=[MlflowCallback()]):
            result = run_pipeline(parse_config(config_dict), task_lm=task_lm, prompt_lm=prompt_lm, progress=False)
    finally:
        mlflow.dspy.autolog(disable=True)
        while mlflow.active_run() is not None:
            mlflow.end_run()
    report = result.reports[-1]
    runs = _runs(store)
    compile_runs = [r for r in runs if r["params"].get("optimizer") == "OPRO"]
    assert len(compile_runs) == 1, [r["params"] for r in runs]
    run = compile_runs[0]
    assert run["params"]["steps"] == "1" and run["params"]["candidates_per_step"] == "2"
    assert run["params"]["budget.max_task_calls"] == "200"
    for label in ("train", "val"):
        logged = run["metrics"][f"candidate_{label}"]
        expected = [(r.id, r.scores[label]) for r in report.candidates if label in r.scores]
        assert sorted(logged) == sorted(expected)
    assert run["metrics"]["best_val"] == [(0, report.best_scores["val"])]
    assert "best_model.json" in run["artifacts"] and "report.json" in run["artifacts"]
    saved = json.loads((run["dir"] / "artifacts" / "best_model.json").read_text())
    assert saved["predictor"]["signature"]["instructions"] == report.best_state["predictor"]["instruction"]
    held_out = [r for r in runs if "eval" in r["metrics"] and r is not run]
    assert sorted(r["metrics"]["eval"][0][1] for r in held_out) == [0.0, 100.0]  # log_evals: before and after
