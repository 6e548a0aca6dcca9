"""The declarative runner: config -> data, program, LMs -> evaluate, optimize step by step, evaluate.

Output directory layout::

    config.yaml         the run description, as validated
    run.json            its fingerprint (a different config refuses to reuse the directory)
    eval_before.json    held-out score of the starting program (reused on resume)
    steps/00-opro/      one directory per step: journal, report.json, program.json, step.json
    program.json        the final compiled program (DSPy JSON; ``program.load(path)``)
    report.json         the last step's OptimizationReport
    summary.json/.md    before/after accuracy, per-step spending, status

Running again with the same output resumes: finished steps are loaded, an interrupted step of one
of our optimizers resumes from its journal (no LM call repeated), DSPy's optimizers start over.

Example:
    >>> from dspy_icl_opt.pipeline import parse_config, run_pipeline  # doctest: +SKIP
    >>> run_pipeline(parse_config({...}), task_lm=my_lm).summary["after"]["score"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from tqdm.auto import tqdm

from dspy_icl_opt._log import logger
from dspy_icl_opt.demos.dynamic import with_dynamic_demos
from dspy_icl_opt.lm.soft_programs import attach_soft_prompt, has_soft_prompt, save_program
from dspy_icl_opt.lm.soft_prompt import SOFT_PROMPT_FILE, SOFT_PROMPT_JSON
from dspy_icl_opt.pipeline.config import PipelineConfig, dump_config
from dspy_icl_opt.pipeline.data import build_program, check_program_fields, load_data, resolve_metric
from dspy_icl_opt.pipeline.errors import ConfigError, LMOutage, LMProblem, at
from dspy_icl_opt.pipeline.evaluate import EvalResult, eval_identity, evaluate_program
from dspy_icl_opt.pipeline.registry import lookup, run_step, step_error, step_params
from dspy_icl_opt.search.faults import RunInterrupted
from dspy_icl_opt.search.report import PROGRAM_FILE, REPORT_FILE, OptimizationReport, atomic_write_text

SUMMARY_JSON, SUMMARY_MD, RUN_FILE, CONFIG_FILE = "summary.json", "summary.md", "run.json", "config.yaml"
BEFORE_FILE, STEP_FILE, STEPS_DIR = "eval_before.json", "step.json", "steps"
#: Finished evaluation examples (before and after), so an evaluation an LM outage stopped goes on where it stopped.
EVAL_JOURNAL = "eval_journal.jsonl"
#: What ``--fresh`` removes: only files and folders the runner itself writes.
OWNED = (STEPS_DIR, BEFORE_FILE, EVAL_JOURNAL, PROGRAM_FILE, REPORT_FILE, SUMMARY_JSON, SUMMARY_MD, RUN_FILE,
         CONFIG_FILE, SOFT_PROMPT_FILE, SOFT_PROMPT_JSON)


@dataclass
class Components:
    """Everything a run works with, resolved from the config."""

    task: Any
    program: dspy.Module
    metric: Any
    task_lm: dspy.BaseLM
    prompt_lm: dspy.BaseLM


@dataclass
class RunResult:
    output: Path
    summary: dict[str, Any]
    program: dspy.Module
    reports: list[OptimizationReport] = field(default_factory=list)


# ------------------------------------------------------------------------------ set-up
def resolve_lms(config: PipelineConfig, task_lm: dspy.BaseLM | None = None,
                prompt_lm: dspy.BaseLM | None = None) -> tuple[dspy.BaseLM, dspy.BaseLM]:
    """The task and prompt LMs: those passed in, else built from ``config.lm`` (one object when equal)."""
    task = task_lm if task_lm is not None else _resolve(config.lm.task, "lm.task")
    if prompt_lm is not None:
        return task, prompt_lm
    same = config.lm.prompt is None or (task_lm is None and config.lm.prompt == config.lm.task)
    return task, task if same else _resolve(config.lm.prompt, "lm.prompt")


def _resolve(spec: Any, path: str) -> dspy.BaseLM:
    from dspy_icl_opt.lm import CorruptModelError, LlamaModelLoadError, MissingLocalExtraError, resolve_lm

    try:
        return resolve_lm(spec.model, temperature=spec.temperature, max_tokens=spec.max_tokens, cache=spec.cache,
                          **spec.options)
    except (MissingLocalExtraError, CorruptModelError, LlamaModelLoadError) as exc:
        raise LMProblem(f"{path}.model {spec.model!r}: {exc}") from None
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ConfigError(at(f"{path}.model", str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - anything else while building an LM is an LM problem
        raise LMProblem(f"{path}.model {spec.model!r}: {type(exc).__name__}: {exc}") from None


def prepare(config: PipelineConfig, task_lm: dspy.BaseLM | None = None,
            prompt_lm: dspy.BaseLM | None = None) -> Components:
    """Load data, build the program and metric, resolve the LMs (no LM call)."""
    task, program, metric = prepare_data(config)
    task_model, prompt_model = resolve_lms(config, task_lm, prompt_lm)
    logger.info("Task {}: {} train / {} val / {} test; program {}; task LM {}", task.name, len(task.train),
                len(task.val), len(task.test), config.program.name, getattr(task_model, "model", task_model))
    return Components(task, program, metric, task_model, prompt_model)


def prepare_data(config: PipelineConfig) -> tuple[Any, dspy.Module, Any]:
    """The data, the program and the metric, checked against each other (no LM built, no LM call)."""
    task = load_data(config)
    program = build_program(config, task)
    metric = resolve_metric(config, task)
    check_program_fields(program, task, metric)  # a field the program does not output would score 0 everywhere
    return task, program, metric


def plan_pipeline(config: PipelineConfig) -> str:
    """What each optimizer step of ``config`` plans to spend, as text, without building an LM or calling one.

    Every step is planned for the starting program (a chain's later steps get the earlier steps' output,
    which has the same predictors). DSPy's optimizers, which do not plan ahead, print ``no plan``.
    """
    from dspy_icl_opt.pipeline.registry import build_optimizer

    task, program, metric = prepare_data(config)
    lines = [f"Dry run: {task.name}, {len(task.train)} train / {len(task.val)} val / {len(task.test)} test "
             f"examples, program {config.program.name}; no LM is built or called."]
    if config.evaluate.before or config.evaluate.after:
        runs = int(config.evaluate.before) + int(config.evaluate.after)
        lines.append(f"Held-out evaluation: {runs} x {len(eval_examples(config, task))} task-model calls at most "
                     "(cached calls cost nothing).")
    for index, step in enumerate(config.optimize):
        entry = lookup(step.optimizer)
        caps = {k: v for k, v in config.step_budget(step).model_dump().items() if v is not None}
        head = f"[{index}] {entry.name} ({entry.class_name}), budget {caps or 'unlimited'}:"
        if entry.family != "ours":
            lines += [head, "  no plan (DSPy's optimizers are counted, not planned)"]
            continue
        try:
            built = build_optimizer(entry, params_of(config, index, step), metric=metric, task_lm=None,
                                    prompt_lm=None, budget=config.step_budget(step), seed=config.seed,
                                    num_threads=config.num_threads, log_dir=None, progress=False)
            plan = built.optimizer.plan(program, trainset=list(task.train), valset=list(task.val) or None)
        except NotImplementedError:
            lines += [head, f"  no plan ({entry.class_name} does not plan its search ahead)"]
            continue
        except (ValueError, TypeError) as exc:
            raise step_error(f"optimize[{index}]", entry, exc) from None
        lines += [head, *("  " + line for line in plan.render().splitlines())]
    return "\n".join(lines)


def eval_examples(config: PipelineConfig, task: Any) -> list[dspy.Example]:
    return list(task.test if config.evaluate.split == "test" else task.val)


# -------------------------------------------------------------------------------- output
def check_output(out: Path, config: PipelineConfig, *, fresh: bool = False) -> None:
    """Refuse an output dir that holds another config's run (with ``fresh``: clear what the runner wrote there).

    A folder that is not empty and holds no run of ours (no ``run.json``) is refused whatever ``fresh``
    says: nothing the runner did not write is ever deleted or overwritten. The folder must be writable.
    """
    run_file = out / RUN_FILE
    check_output_folder(out)
    if fresh:
        for name in OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8")).get("fingerprint")
        if old != config.fingerprint():
            raise ConfigError(at("output", f"{str(out)!r} holds a run of a different configuration; choose another "
                                           "output directory, or pass --fresh to start over there"))
        logger.info("Resuming the run in {}", out)


def check_output_folder(out: Path) -> None:
    """The output folder is new, empty (hidden files aside) or one of our runs, and writable; else ConfigError."""
    if out.exists() and not out.is_dir():
        raise ConfigError(at("output", f"must be a folder, but {str(out)!r} is a file; choose another output"))
    if out.is_dir() and not (out / RUN_FILE).is_file():
        try:
            foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        except OSError as exc:
            raise ConfigError(at("output", f"{str(out)!r} cannot be read ({exc.strerror or exc}); choose a folder "
                                           "you can write to")) from None
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise ConfigError(at("output", f"must be a new or empty folder, or a run of dspy-icl-opt (with {RUN_FILE}), "
                                           f"but {str(out)!r} holds other files ({shown}); nothing there was changed. "
                                           "Choose another output folder"))
    try:  # writable? (a probe file, removed at once)
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(at("output", f"must be a folder that can be written, but {str(out)!r} cannot "
                                       f"({exc.strerror or exc}); choose another output folder or fix its "
                                       "permissions")) from None


def run_inputs(comps: Components) -> dict[str, str]:
    """What the config's names stand for, as they are now: the metric's code, the LMs' settings, the program, the data."""
    from dspy_icl_opt.search.base import run_fingerprint

    task = comps.task
    found = run_fingerprint(comps.program, list(task.train) + list(task.val), list(task.test), comps.task_lm,
                            comps.prompt_lm, comps.metric)
    return {"metric": found["metric"], "task_model": found["task_model"], "prompt_model": found["prompt_model"],
            "program": found["program"], "data": f"{found['trainset']}/{found['valset']}"}


def check_inputs(out: Path, comps: Components) -> None:
    """Refuse to resume a run whose metric code, LM settings, program or data changed under the same config."""
    from dspy_icl_opt.search.fingerprint import describe_differences

    run_file = out / RUN_FILE
    if not run_file.is_file():
        return
    old = read_json(run_file).get("inputs")
    if old is None:
        return
    differ = describe_differences(old, run_inputs(comps))
    if differ:
        raise ConfigError(at("output", f"{str(out)!r} holds a run whose results depend on other inputs: "
                                       f"{'; '.join(differ)}. Resuming would reuse its scores; choose another "
                                       "output folder, or pass --fresh to start over there"))


def claim_output(out: Path, config: PipelineConfig, comps: Components | None = None) -> None:
    """Mark the output dir as this config's run (once its data, program and LMs are known to be fine)."""
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / CONFIG_FILE, redact=True)  # api keys and URL passwords never land in the output
    record: dict[str, Any] = {"fingerprint": config.fingerprint()}
    if comps is not None:
        record["inputs"] = run_inputs(comps)
    write_json(out / RUN_FILE, record)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------- run
def run_pipeline(config: PipelineConfig, *, task_lm: dspy.BaseLM | None = None,
                 prompt_lm: dspy.BaseLM | None = None, output: str | Path | None = None, progress: bool = True,
                 fresh: bool = False) -> RunResult:
    """Evaluate, optimize (step by step, resumable) and evaluate again; write everything under the output dir.

    Args:
        config: the validated run description.
        task_lm, prompt_lm: ready LMs (e.g. test fakes) used instead of ``config.lm``.
        output: overrides ``config.output``.
        progress: show progress bars.
        fresh: discard an earlier run in the output dir instead of resuming it.

    Raises:
        ConfigError: bad data, program or settings found while starting (before any LM call).
        LMProblem: an LM could not be built or never answered.
        KeyboardInterrupt: after writing the summary (status ``interrupted``); reports and journals stay.
    """
    out = Path(output or config.output)
    check_output(out, config, fresh=fresh)
    check_storages(config)  # before any LM call: a study that cannot be opened must not waste the "before" evaluation
    for index, step in enumerate(config.optimize):  # a temperature set twice is refused before any LM call
        params_of(config, index, step)
    comps = prepare(config, task_lm, prompt_lm)
    check_inputs(out, comps)
    claim_output(out, config, comps)
    summary = _new_summary(config, comps, out)
    started = time.perf_counter()
    try:
        if config.evaluate.before:
            summary["before"] = _before(config, comps, out, progress).to_dict()
        program, reports = _run_steps(config, comps, out, summary, progress)
        if config.evaluate.after:
            unchanged = not config.optimize and summary["before"] is not None
            summary["after"] = summary["before"] if unchanged else _evaluate(config, comps, program, progress,
                                                                             out / EVAL_JOURNAL).to_dict()
        _save_final(out, program, reports)
        summary["status"] = "complete"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except (RunInterrupted, LMOutage) as exc:  # the model stopped answering: resumable, never a result
        summary["status"] = "interrupted"
        summary["interrupted_by"] = str(exc)
        if isinstance(exc, LMOutage):
            raise
        raise LMOutage(str(exc)) from None
    except Exception:
        summary["status"] = "failed"
        raise
    finally:
        summary["wall_seconds"] = round(time.perf_counter() - started, 3)
        _write_summary(out, summary)
    return RunResult(out, summary, program, reports)


def _new_summary(config: PipelineConfig, comps: Components, out: Path) -> dict[str, Any]:
    return {"name": config.name or out.name, "status": "running", "task": comps.task.name,
            "program": config.program.name, "split": config.evaluate.split,
            "sizes": {"train": len(comps.task.train), "val": len(comps.task.val), "test": len(comps.task.test)},
            "task_lm": str(getattr(comps.task_lm, "model", "?")),
            "prompt_lm": str(getattr(comps.prompt_lm, "model", "?")),
            "before": None, "after": None, "steps": [], "fingerprint": config.fingerprint(),
            "files": {"config": CONFIG_FILE}}


def _evaluate(config: PipelineConfig, comps: Components, program: dspy.Module, progress: bool,
              journal: Path | None = None) -> EvalResult:
    return evaluate_program(program, eval_examples(config, comps.task), comps.metric, lm=comps.task_lm,
                            split=config.evaluate.split, num_threads=config.num_threads, progress=progress,
                            journal=journal)


def _before(config: PipelineConfig, comps: Components, out: Path, progress: bool) -> EvalResult:
    cache = out / BEFORE_FILE
    identity = eval_identity(comps.program, comps.task_lm, comps.metric, config.evaluate.split)
    if cache.exists():
        data = read_json(cache)
        cached = EvalResult.from_dict(data)
        if cached.split == config.evaluate.split and data.get("identity") == identity:
            logger.info("Reusing the starting program's {} score {:.3f}", cached.split, cached.score)
            return cached
        logger.info("The saved 'before' score is of another program, LM or metric; evaluating again")
    result = _evaluate(config, comps, comps.program, progress, out / EVAL_JOURNAL)
    write_json(cache, {**result.to_dict(), "identity": identity})
    return result


def _run_steps(config: PipelineConfig, comps: Components, out: Path, summary: dict[str, Any],
               progress: bool) -> tuple[dspy.Module, list[OptimizationReport]]:
    program, reports = comps.program, []
    valset = list(comps.task.val) or None
    bar = tqdm(total=len(config.optimize), desc="optimize", disable=not progress or len(config.optimize) < 2)
    try:
        for index, step in enumerate(config.optimize):
            step_dir = out / STEPS_DIR / step.slug(index)
            program, report, record = _one_step(config, comps, index, step, step_dir, program, valset, progress)
            reports.append(report)
            summary["steps"].append(record)
            _write_summary(out, summary)
            bar.update(1)
    finally:
        bar.close()
    return program, reports


def _one_step(config: PipelineConfig, comps: Components, index: int, step: Any, step_dir: Path,
              program: dspy.Module, valset: list[dspy.Example] | None,
              progress: bool) -> tuple[dspy.Module, OptimizationReport, dict[str, Any]]:
    entry = lookup(step.optimizer)
    marker = step_dir / STEP_FILE
    if marker.exists() and (step_dir / PROGRAM_FILE).exists() and (step_dir / REPORT_FILE).exists():
        logger.info("Step {} ({}) already done; loading its program", index, entry.name)
        loaded = with_dynamic_demos(program)  # a kNN winner needs its per-call demo selection back
        loaded.load(str(step_dir / PROGRAM_FILE))
        if has_soft_prompt(step_dir):  # a SoftPromptTuner step: its soft prompt is saved beside program.json
            attach_soft_prompt(loaded, step_dir, like=comps.task_lm)
        return loaded, OptimizationReport.load(step_dir / REPORT_FILE), read_json(marker)
    logger.info("Step {}: {} ({})", index, entry.name, entry.class_name)
    try:
        result = run_step(entry, params_of(config, index, step), student=program, trainset=list(comps.task.train), valset=valset,
                          metric=comps.metric, task_lm=comps.task_lm, prompt_lm=comps.prompt_lm,
                          budget=config.step_budget(step), seed=config.seed, num_threads=config.num_threads,
                          log_dir=step_dir, progress=progress)
    except (ValueError, TypeError) as exc:
        raise step_error(f"optimize[{index}]", entry, exc) from None
    check_calls_answered(f"optimize[{index}] ({entry.name})", result.report)
    record = step_record(index, entry, result.report, result.seconds, step_dir.relative_to(step_dir.parents[1]))
    write_json(marker, record)
    return result.program, result.report, record


def params_of(config: PipelineConfig, index: int, step: Any, where: str = "optimize") -> dict[str, Any]:
    """The step's params as the optimizer gets them: ``lm.prompt.temperature``, when set, wins (see ``step_params``)."""
    temperature = config.lm.prompt.temperature if config.lm.prompt is not None else None
    return step_params(lookup(step.optimizer), step.params, temperature, f"{where}[{index}]")


def check_calls_answered(where: str, report: OptimizationReport) -> None:
    """A step whose every LM call of a role failed is no result: LMProblem (exit 3), and the step is not marked done."""
    for role, spent in report.spent.items():
        if spent.failed_calls and spent.failed_calls >= spent.calls:
            raise LMProblem(f"{where}: every {role}-model call failed ({spent.failed_calls} failed, "
                            f"{spent.calls - spent.failed_calls} answered); check that the {role} model is reachable "
                            "and its settings, then run the same command again")


def check_storages(config: PipelineConfig, where: str = "optimize") -> None:
    """Open every study storage URL named in the params of ``config.<where>`` steps (no LM call), or raise ConfigError."""
    from dspy_icl_opt.demos.study import StorageError, check_storage

    problems = []
    for i, step in enumerate(getattr(config, where)):
        url = step.params.get("storage")
        if isinstance(url, str):
            try:
                check_storage(url)
            except StorageError as exc:
                problems.append(at(f"{where}[{i}].params.storage", str(exc)))
    if problems:
        raise ConfigError(problems)


def step_record(index: int, entry: Any, report: OptimizationReport, seconds: float, rel_dir: Path) -> dict[str, Any]:
    """A step's line in the summary."""
    return {"index": index, "optimizer": entry.name, "class": entry.class_name, "family": entry.family,
            "dir": rel_dir.as_posix(), "seconds": round(seconds, 3),
            "spent": {role: s.model_dump() for role, s in report.spent.items()},
            "best_scores": report.best_scores, "finished": report.finished,
            "stopped_by_budget": report.stopped_by_budget, "candidates": len(report.candidates)}


def _save_final(out: Path, program: dspy.Module, reports: list[OptimizationReport]) -> None:
    save_program(program, out)  # program.json, and a soft prompt the program carries beside it
    if reports:
        reports[-1].save(out / REPORT_FILE)


# ------------------------------------------------------------------------------ summary
def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    totals = {role: {"calls": 0, "tokens": 0} for role in ("task", "prompt")}
    for step in summary["steps"]:
        for role in totals:
            spent = step["spent"].get(role, {})
            totals[role]["calls"] += spent.get("calls", 0)
            totals[role]["tokens"] += spent.get("tokens", 0)
    summary["spent"] = totals
    if summary.get("before") and summary.get("after"):
        summary["improvement"] = round(summary["after"]["score"] - summary["before"]["score"], 6)
    if (out / PROGRAM_FILE).exists() and summary.get("status") == "complete":
        summary["files"].update({"program": PROGRAM_FILE, "report": REPORT_FILE if summary["steps"] else None})
    write_json(out / SUMMARY_JSON, summary)
    atomic_write_text(out / SUMMARY_MD, summary_markdown(summary))


def _pct(result: dict[str, Any] | None) -> str:
    return "-" if not result else f"{100 * result['score']:.1f}% (n={result['n']})"


def summary_markdown(summary: dict[str, Any]) -> str:
    """A short human-readable summary of a run."""
    lines = [f"# Run {summary['name']}: {summary['status']}", "",
             f"Task `{summary['task']}`, program `{summary['program']}`, task LM `{summary['task_lm']}`, "
             f"prompt LM `{summary['prompt_lm']}`.", "",
             f"| {summary['split']} accuracy | value |", "|---|---|",
             f"| before | {_pct(summary.get('before'))} |", f"| after | {_pct(summary.get('after'))} |", ""]
    if summary["steps"]:
        lines += ["| step | optimizer | task calls | prompt calls | tokens | seconds | finished |",
                  "|---|---|---|---|---|---|---|"]
        for s in summary["steps"]:
            tokens = sum(v.get("tokens", 0) for v in s["spent"].values())
            lines.append(f"| {s['index']} | {s['class']} | {s['spent']['task']['calls']} | "
                         f"{s['spent']['prompt']['calls']} | {tokens} | {s['seconds']:.1f} | "
                         f"{'yes' if s['finished'] else 'budget' if s['stopped_by_budget'] else 'no'} |")
    lines += ["", f"Wall time {summary.get('wall_seconds', 0):.1f} s. Render the full report with "
                  "`dspy-icl-opt report <this directory>`.", ""]
    return "\n".join(lines)
