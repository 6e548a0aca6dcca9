"""Benchmark several optimizers on the same program, data, LMs and budget.

Each optimizer starts from the same program (not chained). A row gives held-out accuracy, the
task- and prompt-model calls and tokens the optimization spent (DSPy's optimizers are counted by
wrapping both LMs in :class:`~dspy_icl_opt.search.budget.MeteredLM`), the cache hits and the wall
time. Written into the output dir: ``bench.json``, ``bench.csv``, ``bench.md``, ``bench.png`` and one
directory per optimizer with its report and program.

Calls answered from DSPy's response cache count as calls (so a competitor's search is the same
whether the cache is warm or not) and are also shown as cache hits: a second benchmark with
``cache: true`` LMs shows how many of its calls cost nothing.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt.pipeline import plots
from dspy_icl_opt.pipeline.config import PipelineConfig, StepConfig
from dspy_icl_opt.pipeline.errors import ConfigError, LMProblem, at
from dspy_icl_opt.pipeline.evaluate import evaluate_program
from dspy_icl_opt.pipeline.registry import check_steps, lookup, run_step
from dspy_icl_opt.pipeline.runner import Components, check_storages, eval_examples, params_of, prepare, write_json
from dspy_icl_opt.search.report import atomic_write_text

COLUMNS = ["optimizer", "family", "accuracy", "n", "errors", "task_calls", "prompt_calls", "tokens", "cache_hits",
           "wall_seconds", "eval_calls", "status"]
BENCH_DIR = "bench"


@dataclass
class BenchResult:
    output: Path
    rows: list[dict[str, Any]]


def bench_steps(config: PipelineConfig, names: list[str] | None = None) -> list[StepConfig]:
    """The competitors: ``names`` (with params from the config's ``bench``/``optimize`` entries of the same
    optimizer), else ``config.bench``, else each ``config.optimize`` step on its own."""
    if not names:
        steps = list(config.bench or config.optimize)
        if not steps:
            raise ConfigError(at("bench", "no optimizers to compare: pass --optimizers a,b,c or list them under "
                                          "`bench:` in the config"))
        return steps
    known = config.bench + config.optimize
    steps = []
    for name in names:
        try:
            entry = lookup(name)
        except KeyError as exc:
            raise ConfigError(at("--optimizers", exc.args[0])) from None
        match = next((s for s in known if _entry_name(s.optimizer) == entry.name), None)
        steps.append(match if match is not None else StepConfig(optimizer=entry.name))
    problems = check_steps(steps, "--optimizers", config)
    if problems:
        raise ConfigError(problems)
    return steps


def _entry_name(name: str) -> str | None:
    try:
        return lookup(name).name
    except KeyError:
        return None


def run_bench(config: PipelineConfig, names: list[str] | None = None, *, task_lm: dspy.BaseLM | None = None,
              prompt_lm: dspy.BaseLM | None = None, output: str | Path | None = None,
              progress: bool = True) -> BenchResult:
    """Run every competitor from the same starting program and write the table and chart.

    Raises:
        ConfigError: unknown optimizer or bad settings (before any LM call).
        LMProblem: an LM could not be built or never answered.
    """
    steps = bench_steps(config, names)
    out = Path(output) if output is not None else Path(config.output) / BENCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    check_storages(config, "bench")  # before any LM call
    for index, step in enumerate(steps):  # as is a temperature set twice
        params_of(config, index, step, "bench")
    comps = prepare(config, task_lm, prompt_lm)
    rows = [_baseline_row(config, comps, progress)]
    _write(out, rows, config)
    for index, step in enumerate(steps):
        rows.append(_bench_one(config, comps, (index, len(steps)), step, out, progress))
        _write(out, rows, config)
    return BenchResult(out, rows)


def _baseline_row(config: PipelineConfig, comps: Components, progress: bool) -> dict[str, Any]:
    result = evaluate_program(comps.program, eval_examples(config, comps.task), comps.metric, lm=comps.task_lm,
                              split=config.evaluate.split, num_threads=config.num_threads, progress=progress)
    return {"optimizer": "baseline", "family": "baseline", "accuracy": round(result.score, 4), "n": result.n,
            "errors": result.errors, "task_calls": 0, "prompt_calls": 0, "tokens": 0, "cache_hits": 0,
            "wall_seconds": 0.0, "eval_calls": result.calls, "status": "ok"}


def _bench_one(config: PipelineConfig, comps: Components, position: tuple[int, int], step: StepConfig, out: Path,
               progress: bool) -> dict[str, Any]:
    index, total = position
    entry = lookup(step.optimizer)
    row: dict[str, Any] = {"optimizer": step.label or entry.name, "family": entry.family}
    started = time.perf_counter()
    logger.info("Benchmark {}/{}: {}", index + 1, total, entry.class_name)
    try:
        result = run_step(entry, params_of(config, index, step, "bench"), student=comps.program, trainset=list(comps.task.train),
                          valset=list(comps.task.val) or None, metric=comps.metric, task_lm=comps.task_lm,
                          prompt_lm=comps.prompt_lm, budget=config.step_budget(step), seed=config.seed,
                          num_threads=config.num_threads, log_dir=out / step.slug(index), progress=progress,
                          resume=False)
    except (LMProblem, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - one failing competitor must not sink the benchmark
        logger.error("{} failed: {}: {}", entry.class_name, type(exc).__name__, exc)
        return {**row, **dict.fromkeys(COLUMNS[2:-1]), "wall_seconds": round(time.perf_counter() - started, 3),
                "status": f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
    evaluation = evaluate_program(result.program, eval_examples(config, comps.task), comps.metric,
                                  lm=comps.task_lm, split=config.evaluate.split, num_threads=config.num_threads,
                                  progress=progress)
    spent = result.report.spent
    return {**row, "accuracy": round(evaluation.score, 4), "n": evaluation.n, "errors": evaluation.errors,
            "task_calls": spent["task"].calls, "prompt_calls": spent["prompt"].calls,
            "tokens": spent["task"].tokens + spent["prompt"].tokens,
            "cache_hits": spent["task"].cache_hits + spent["prompt"].cache_hits,
            "wall_seconds": round(result.seconds, 3), "eval_calls": evaluation.calls,
            "status": "ok" if result.report.finished else "stopped by budget" if result.report.stopped_by_budget
            else "unfinished"}


# ------------------------------------------------------------------------------- output
def bench_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def bench_markdown(rows: list[dict[str, Any]], split: str) -> str:
    header = ["optimizer", f"{split} accuracy", "task calls", "prompt calls", "tokens", "cache hits", "wall time (s)",
              "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}%"
        wall = "-" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.1f}"
        cells = [r["optimizer"], acc, r.get("task_calls"), r.get("prompt_calls"), r.get("tokens"), r.get("cache_hits"),
                 wall, r.get("status")]
        lines.append("| " + " | ".join("-" if c is None else str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _write(out: Path, rows: list[dict[str, Any]], config: PipelineConfig) -> None:
    write_json(out / "bench.json", {"columns": COLUMNS, "rows": rows, "split": config.evaluate.split,
                                    "fingerprint": config.fingerprint()})
    atomic_write_text(out / "bench.csv", bench_csv(rows))
    atomic_write_text(out / "bench.md", bench_markdown(rows, config.evaluate.split))
    (out / "bench.png").write_bytes(plots.bench_png(rows))
