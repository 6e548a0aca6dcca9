"""MLflow tracking the way DSPy users already turn it on: ``mlflow.dspy.autolog(log_compiles=True)``.

MLflow's DSPy autologging wraps ``compile`` of the teleprompters it finds and logs what DSPy's
``Evaluate`` reports during a compile. Our strategies score candidates with their own cached scorer
(not ``Evaluate``), so after every ``compile`` :func:`log_compile` adds what the run did, when that
autologging is on:

* the compile's parameters (the strategy, its seed and its settings, as in ``report.params``);
* each candidate's scores, one metric per score label (``candidate_val``, ``candidate_train``,
  ``candidate_step3`` ...) at step = the candidate's id, and the returned program's scores as
  ``best_<label>``;
* the report (``report.json``) and, when MLflow did not wrap this compile itself (autolog was turned
  on before the strategy was imported), the final program (``best_model.json``) in a run of its own.

Nothing happens when MLflow is not imported or its DSPy autologging (with ``log_compiles``) is off;
a logging failure is a warning, never a failed compile. Held-out evaluations in the pipeline go
through ``dspy.Evaluate``, so ``log_evals=True`` logs them as MLflow does for any DSPy program.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from dspy_icl_opt._log import logger

#: MLflow's longest parameter value; longer settings are cut.
MAX_PARAM_CHARS = 500


def autolog_compiles() -> bool:
    """Whether ``mlflow.dspy.autolog(log_compiles=True)`` is on in this process (without importing MLflow)."""
    if "mlflow" not in sys.modules:
        return False
    try:
        from mlflow.utils.autologging_utils import autologging_is_disabled, get_autologging_config
    except ImportError:
        return False
    try:
        return not autologging_is_disabled("dspy") and bool(get_autologging_config("dspy", "log_compiles", False))
    except Exception:  # noqa: BLE001 - an MLflow without these internals: no tracking
        return False


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def compile_params(report: Any) -> dict[str, str]:
    """The compile's parameters as MLflow parameters (strings, cut to MLflow's limit)."""
    params = {"optimizer": report.optimizer, "seed": str(report.seed)}
    for key, value in report.params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[_metric_name(key)] = text[:MAX_PARAM_CHARS]
    for key, value in report.budget.model_dump(exclude_none=True).items():
        params[f"budget.{key}"] = str(value)
    return params


def log_compile(optimizer: Any, report: Any, program: Any) -> None:
    """Log a finished compile to MLflow when DSPy autologging with ``log_compiles`` is on (see the module docs)."""
    if not autolog_compiles():
        return
    import mlflow

    own_run = mlflow.active_run() is None  # autolog did not wrap this compile (turned on before our import)
    try:
        if own_run:
            mlflow.start_run(run_name=f"{type(optimizer).__name__}.compile")
        mlflow.log_params(compile_params(report))
        for record in report.candidates:
            if record.scores:
                mlflow.log_metrics({_metric_name(f"candidate_{label}"): float(value)
                                    for label, value in record.scores.items()}, step=record.id)
        if report.best_scores:
            mlflow.log_metrics({_metric_name(f"best_{label}"): float(value)
                                for label, value in report.best_scores.items()})
        mlflow.log_dict(json.loads(report.model_dump_json()), "report.json")
        if own_run:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "best_model.json"
                program.save(str(path))
                mlflow.log_artifact(str(path))
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a compile
        logger.warning("MLflow logging of the compile failed: {}: {}", type(exc).__name__, exc)
    finally:
        if own_run and mlflow.active_run() is not None:
            mlflow.end_run()
