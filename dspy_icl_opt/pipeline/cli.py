"""``dspy-icl-opt``: run, compile, evaluate, benchmark and report prompt optimizations.

Exit codes: 0 ok, 1 unexpected failure, 2 bad config or usage, 3 LM/model problem, 130 interrupted.
This is the only module that prints; everything else logs through ``logging`` (``dspy_icl_opt._log``), which
is quiet below WARNING in a library and shown from ``--log-level`` (default INFO) here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dspy_icl_opt import _log  # noqa: F401 - registers the TRACE and SUCCESS level names --log-level takes
from dspy_icl_opt.pipeline.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    LMOutage,
    LMProblem,
    PipelineError,
)

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR")
#: The demo: a clear held-out gain for the embedded 0.5B model in a few minutes on 2 CPU cores. The project's
#: figures (BENCHMARKS.md, five splits of date_understanding, 10 train / 10 val / 50 test) show demonstrations
#: lifting date_understanding by about 35 points (DemoSelector 0.68-0.82 and BFSRS 0.70-0.82 against 0.34-0.46
#: zero-shot, about 61 task calls each), while instruction search moved it by 8-22 points, and no method
#: lifted hyperbaton, the earlier demo task, on average. So: DemoSelector on date_understanding, with the
#: labeled pool only (for a one-step QA program a bootstrapped demo is a labeled example the model already
#: answers, bought with calls) and two trials: zero-shot (the start) and the largest labeled set (k=4). The
#: final choice is made on validation examples the trials never saw, at the usual VALIDATION_Z (1.5 then),
#: so it needs enough of them: with 20 examples serving both (z raised to 2.0 for the reuse) the start
#: kept its place on split seed 0 (0.55 against 0.60), and so it did with 15 held out (0.53 against
#: 0.73, +0.20 short of 1.5 standard errors). So: 50 validation examples, 25 for the two trials and
#: 25 held out for the choice; 90 task calls of search, then 2 x 50 test calls. 50 test examples put
#: the gain's standard error near 9 points.
DEMO_TASK = "date_understanding"
DEMO_OPTIMIZER = "demos"
DEMO_SIZES = {"train_size": 10, "val_size": 50, "test_size": 50}
#: Each optimizer the demo offers: its parameters and its budget (the default first).
DEMO_STEPS: dict[str, dict[str, Any]] = {
    "demos": {"params": {"max_demos": 4, "n_trials": 2, "pools": ["labeled"], "strategies": ["random"],
                         "orders": ["as_selected"], "minibatch_size": 10, "minibatches_per_trial": 2,
                         "top_k_full_eval": 1},
              # a cap, not a target: the plan spends 90 (2 trials on 20, the start and the finalist on 25)
              "budget": {"max_task_calls": 145, "max_prompt_calls": 0}},
    # OPRO: the seed and 2 steps x 2 proposals on minibatches of 6, then the start and 2 finalists on validation
    "opro": {"params": {"steps": 2, "candidates_per_step": 2, "scoring": "minibatch", "minibatch_size": 6,
                        "final_candidates": 2, "num_exemplars": 2},
             "budget": {"max_task_calls": 70, "max_prompt_calls": 4}},
    "labeled": {"params": {"k": 4}},  # DSPy's LabeledFewShot: 4 training examples as demos, no LM call
}
DEMO_LM = {"task": {"model": "embedded", "temperature": 0.0, "max_tokens": 128},
           "prompt": {"model": "embedded", "temperature": 0.8, "max_tokens": 256}}

EPILOGS = {
    "run": """example:
  dspy-icl-opt run examples/configs/opro.yaml
  dspy-icl-opt run examples/configs/abo_then_demos.yaml --output runs/chain   # again to resume

config (YAML/JSON): program {name, args}; data {task | path | hub, fields, input_keys, train_size,
val_size, test_size, seed}; metric; lm {task, prompt: {model, temperature, max_tokens, cache}};
optimize [{optimizer, params, budget, label}, ...]; bench [...]; budget; seed; num_threads; output;
evaluate {before, after, split}. Optimizers: see `dspy-icl-opt list`.

A config is as trusted as code: a pkg.module:factory program or pkg.module:function metric is
imported (running the module) and called. Only run configs you would run as a Python script.""",
    "compile": """example:
  dspy-icl-opt compile --task hyperbaton --program qa --lm openai/gpt-4o-mini --optimizer opro \\
      --param steps=3 --budget light --output runs/hyperbaton-opro""",
    "eval": """example:
  dspy-icl-opt eval --task date_understanding --program qa --lm embedded --load runs/demo/program.json \\
      --train-size 10 --val-size 20 --test-size 50   # the demo's split: its test set, none of its examples""",
    "bench": """example:
  dspy-icl-opt bench examples/configs/bench.yaml --optimizers opro,labeled,mipro""",
    "report": """example:
  dspy-icl-opt report runs/demo --format html   # writes runs/demo/report.html""",
    "demo": """example:
  dspy-icl-opt demo                        # DemoSelector picks worked examples; a few minutes on 2 cores
  dspy-icl-opt demo --optimizer opro       # OPRO rewrites the instruction instead
  dspy-icl-opt demo --optimizer labeled    # DSPy's LabeledFewShot: 4 training examples, no search

It compiles the bundled `qa` program on date_understanding (10 train / 50 val / 50 test examples)
with the embedded model, prints held-out accuracy before and after, what changed in the program
and why that program was kept, and saves the program, its report and report.html.""",
    "list": """example:
  dspy-icl-opt list""",
}


# ------------------------------------------------------------------------------ handlers
def cmd_run(args: argparse.Namespace) -> int:
    from dspy_icl_opt.pipeline.config import load_config
    from dspy_icl_opt.pipeline.runner import run_pipeline

    config = load_config(args.config)
    if args.dry_run:
        return _dry_run(config)
    result = run_pipeline(config, output=args.output, progress=args.progress, fresh=args.fresh)
    _print_summary(result.summary, result.output)
    return EXIT_OK


def _dry_run(config: Any) -> int:
    from dspy_icl_opt.pipeline.runner import plan_pipeline

    print(plan_pipeline(config))
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    from dspy_icl_opt.pipeline.runner import run_pipeline

    config = config_from_flags(args, evaluate=args.evaluate)
    if not config.optimize:
        raise ConfigError("--optimizer: name at least one optimizer (e.g. --optimizer opro)")
    if args.dry_run:
        return _dry_run(config)
    result = run_pipeline(config, output=args.output, progress=args.progress, fresh=args.fresh)
    _print_summary(result.summary, result.output)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from dspy_icl_opt.pipeline.evaluate import evaluate_program
    from dspy_icl_opt.pipeline.runner import eval_examples, prepare

    config = config_from_flags(args, evaluate=True)
    comps = prepare(config)
    program = comps.program
    if args.load:
        program = _load_program(program, Path(args.load))
    result = evaluate_program(program, eval_examples(config, comps.task), comps.metric, lm=comps.task_lm,
                              split=config.evaluate.split, num_threads=config.num_threads, progress=args.progress)
    print(f"{result.split} accuracy: {100 * result.score:.1f}% on {result.n} examples "
          f"({result.errors} errors, {result.calls} task-model calls)")
    if args.output:
        Path(args.output).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        print(f"saved: {args.output}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from dspy_icl_opt.pipeline.bench import bench_markdown, run_bench
    from dspy_icl_opt.pipeline.config import load_config

    config = load_config(args.config)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] if args.optimizers else None
    result = run_bench(config, names, output=args.output, progress=args.progress)
    print(bench_markdown(result.rows, config.evaluate.split))
    print(f"saved: {result.output}/bench.md, bench.csv, bench.png")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from dspy_icl_opt.pipeline.render import render_report

    path = render_report(args.run_dir, fmt=args.format, out=args.out)
    print(f"saved: {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, *, task_lm: Any = None, prompt_lm: Any = None) -> int:
    """The demo; ``task_lm``/``prompt_lm`` replace the embedded model (tests pass fakes)."""
    from dspy_icl_opt.pipeline.config import parse_config
    from dspy_icl_opt.pipeline.registry import lookup
    from dspy_icl_opt.pipeline.render import render_report
    from dspy_icl_opt.pipeline.runner import prepare_data, run_pipeline

    config = parse_config(demo_config(args.optimizer, task=args.task, seed=args.seed, output=args.output))
    entry, cap = lookup(args.optimizer), config.optimize[0].budget
    search = f", at most {cap.max_task_calls} task-model calls of search" if cap and cap.max_task_calls else ""
    print(f"Demo: {entry.class_name} compiles the `qa` program on `{config.data.task}` with the embedded model "
          f"({config.data.train_size} train / {config.data.val_size} val / {config.data.test_size} test "
          f"examples{search}); the test set is scored before and after. This takes a few minutes on a laptop CPU.")
    result = run_pipeline(config, task_lm=task_lm, prompt_lm=prompt_lm, progress=args.progress, fresh=args.fresh)
    _print_summary(result.summary, result.output)
    _print_explanation(result, start=prepare_data(config)[1])
    print(f"report: {render_report(result.output, fmt='html')}")
    return EXIT_OK


def _print_explanation(result: Any, *, start: Any) -> None:
    """The held-out gain with its error, what changed in the program, and why the returned program won."""
    from dspy_icl_opt.pipeline.explain import held_out_gain, what_changed, why_kept
    from dspy_icl_opt.search.surgery import read_state

    gain = held_out_gain(result.summary.get("before"), result.summary.get("after"))
    if gain is not None:
        print(f"gain: {gain}")
    report = result.reports[-1] if result.reports else None
    print(f"what changed: {what_changed(read_state(start), read_state(result.program), report)}")
    print(f"why it was kept: {why_kept(report)}")


def cmd_list(args: argparse.Namespace) -> int:
    from dspy_icl_opt.programs import task_names
    from dspy_icl_opt.programs.programs import PROGRAM_NAMES

    from dspy_icl_opt.pipeline.registry import REGISTRY, available

    status = available()
    print("optimizers (name: class, summary):")
    for name, entry in REGISTRY.items():
        note = "" if status[name] is None else "  [not available]"
        print(f"  {name:<14} {entry.class_name:<34} {entry.summary}{note}")
    print(f"programs: {', '.join(PROGRAM_NAMES)} (or pkg.module:factory)")
    print(f"tasks: {', '.join(task_names())}")
    return EXIT_OK


# ------------------------------------------------------------------------------ helpers
def demo_config(optimizer: str = DEMO_OPTIMIZER, *, task: str = DEMO_TASK, seed: int = 0,
                output: str = "runs/demo") -> dict[str, Any]:
    """The demo's run description (a plain mapping, validated by the schema like any file)."""
    if optimizer not in DEMO_STEPS:
        raise ConfigError(f"--optimizer: the demo offers {sorted(DEMO_STEPS)}, but got {optimizer!r}")
    return {"name": "demo", "program": "qa", "data": {"task": task, **DEMO_SIZES}, "lm": DEMO_LM,
            "optimize": [{"optimizer": optimizer, **DEMO_STEPS[optimizer]}], "seed": seed, "output": output}


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag}: must be KEY=VALUE, but got {item!r}")
        out[key.strip()] = _parse_value(value)
    return out


def config_from_flags(args: argparse.Namespace, *, evaluate: bool) -> Any:
    """A config from ``--config`` (optional) with the common flags applied on top."""
    from dspy_icl_opt.pipeline.config import load_config, parse_config

    data: dict[str, Any] = load_config(args.config, check=False).model_dump(mode="json") if args.config else {}
    if args.task or args.data:
        data["data"] = {**({"task": args.task} if args.task else {"path": str(Path(args.data).resolve())})}
    if "data" not in data:
        raise ConfigError("--task: give --task NAME, --data FILE or --config FILE")
    if getattr(args, "field", None):
        data["data"]["fields"] = {k: str(v) for k, v in _key_values(args.field, "--field").items()}
    for size in ("train_size", "val_size", "test_size"):
        if getattr(args, size, None) is not None:
            data["data"][size] = getattr(args, size)
    if args.program:
        data["program"] = {"name": args.program}
    if args.lm:
        data.setdefault("lm", {})["task"] = args.lm
    if getattr(args, "prompt_lm", None):
        data.setdefault("lm", {})["prompt"] = args.prompt_lm
    if getattr(args, "optimizer", None):
        names = [n.strip() for n in args.optimizer.split(",") if n.strip()]
        data["optimize"] = [{"optimizer": n} for n in names]
        data["optimize"][-1]["params"] = _key_values(args.param, "--param")
    if getattr(args, "budget", None):
        budget = args.budget
        data["budget"] = budget if "=" not in budget else _key_values(budget.split(","), "--budget")
    if args.seed is not None:
        data["seed"] = args.seed
    if getattr(args, "split", None):
        data.setdefault("evaluate", {})["split"] = args.split
    data.setdefault("evaluate", {}).update({"before": evaluate, "after": evaluate} if not args.config else {})
    return parse_config(data)


def _load_program(program: Any, path: Path) -> Any:
    from dspy_icl_opt.search.report import PROGRAM_FILE

    file = path / PROGRAM_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"--load: must be a program.json file or a run directory holding one, but got {str(path)!r}")
    from dspy_icl_opt.demos.dynamic import with_dynamic_demos

    loaded = with_dynamic_demos(program)  # a kNN winner needs its per-call demo selection back
    try:
        loaded.load(str(file))
    except Exception as exc:  # noqa: BLE001 - a file saved from another program does not fit
        raise ConfigError(f"--load: {str(file)!r} does not fit the program ({type(exc).__name__}: {exc})") from None
    return loaded


def _print_summary(summary: dict[str, Any], output: Path) -> None:
    def pct(result: dict[str, Any] | None) -> str:
        return "-" if not result else f"{100 * result['score']:.1f}% (n={result['n']})"

    split = summary["split"]
    if summary.get("before") or summary.get("after"):
        print(f"{split} accuracy before: {pct(summary.get('before'))}")
        print(f"{split} accuracy after:  {pct(summary.get('after'))}")
    spent = summary.get("spent", {})
    print(f"optimization spent {spent.get('task', {}).get('calls', 0)} task-model and "
          f"{spent.get('prompt', {}).get('calls', 0)} prompt-model calls in {summary.get('wall_seconds', 0):.0f} s")
    print(f"saved: {output}/program.json, report.json, summary.json, summary.md")


# ------------------------------------------------------------------------------- parser
def _common_flags(parser: argparse.ArgumentParser, *, optimizer: bool) -> None:
    parser.add_argument("--config", help="a YAML/JSON run description; the flags below override it")
    parser.add_argument("--task", help="a bundled task name (see `dspy-icl-opt list`)")
    parser.add_argument("--data", help="a local JSON/JSONL/CSV/Parquet file instead of --task")
    parser.add_argument("--field", action="append", metavar="FIELD=COLUMN",
                        help="map a data column onto a program field, e.g. --field question=text --field "
                             "answer=label; repeatable")
    parser.add_argument("--program", help="qa, cot, two_step, or pkg.module:factory (imported and run: as trusted "
                                          "as code)")
    parser.add_argument("--lm", help="task model: 'embedded', a .gguf path or provider/model")
    parser.add_argument("--seed", type=int, help="run seed (data shuffle, optimizers)")
    for size in ("train", "val", "test"):
        parser.add_argument(f"--{size}-size", dest=f"{size}_size", type=int, help=f"{size} examples")
    if optimizer:
        parser.add_argument("--prompt-lm", help="prompt model (default: the task model); 'embedded-1.5b' is the "
                                                "stronger local one of the proposer extra")
        parser.add_argument("--optimizer", help="registry name(s), comma-separated to chain, e.g. abo,demos")
        parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                            help="a parameter of the (last) optimizer; repeatable")
        parser.add_argument("--budget", help="preset (tiny, light, medium, heavy) or max_task_calls=N,...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspy-icl-opt", description="Prompt optimizers for DSPy programs.",
                                     epilog="example:\n  dspy-icl-opt demo\n  dspy-icl-opt run config.yaml\n\n"
                                            "A config is as trusted as code: pkg.module:factory programs and metrics\n"
                                            "are imported and run.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from dspy_icl_opt import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _output_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS[name],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.set_defaults(handler=handler)
        _output_flags(cmd, defaults=False)  # `dspy-icl-opt run x.yaml --log-level DEBUG` works too
        return cmd

    run = add("run", cmd_run, "run a YAML/JSON config: evaluate, optimize, evaluate, save (resumable)")
    run.add_argument("config", help="the run description")
    compile_ = add("compile", cmd_compile, "optimize a program from flags (a config file is optional)")
    _common_flags(compile_, optimizer=True)
    compile_.add_argument("--evaluate", action="store_true", help="also evaluate before and after")
    evaluate = add("eval", cmd_eval, "evaluate a (saved) program on the held-out split")
    _common_flags(evaluate, optimizer=False)
    evaluate.add_argument("--load", help="a program.json (or a run directory holding one)")
    evaluate.add_argument("--split", choices=("test", "val"), help="default test")
    bench = add("bench", cmd_bench, "compare optimizers on the same program, data, LMs and budget")
    bench.add_argument("config", help="the run description (program, data, lm, budget, bench list)")
    bench.add_argument("--optimizers", help="comma-separated registry names (default: the config's bench list)")
    report = add("report", cmd_report, "render a run directory as Markdown or self-contained HTML")
    report.add_argument("run_dir", help="a run output directory (or an optimizer log_dir, or a bench dir)")
    report.add_argument("--format", choices=("md", "html"), default="html")
    report.add_argument("--out", help="output file (default: RUN_DIR/report.md|html)")
    demo = add("demo", cmd_demo, "compile the bundled QA program on a bundled task with the embedded LM")
    demo.add_argument("--optimizer", choices=sorted(DEMO_STEPS), default=DEMO_OPTIMIZER,
                      help="demos (DemoSelector, the default: searches worked examples), opro (rewrites the "
                           "instruction) or labeled (DSPy's LabeledFewShot)")
    demo.add_argument("--task", default=DEMO_TASK, help=f"bundled task (default {DEMO_TASK})")
    demo.add_argument("--seed", type=int, default=0)
    add("list", cmd_list, "list optimizers, bundled programs and tasks")
    for cmd in (run, compile_):
        cmd.add_argument("--dry-run", action="store_true",
                         help="print each optimizer step's plan (steps, candidates, projected calls) and exit; "
                              "no LM is built or called")
    for cmd in (run, compile_, bench, demo):
        cmd.add_argument("--output", help="output directory (default: the config's `output`)")
        cmd.add_argument("--fresh", action="store_true", help="discard an earlier run there instead of resuming")
    evaluate.add_argument("--output", help="write the result as JSON to this file")
    demo.set_defaults(output="runs/demo")
    return parser


def _output_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--log-level and --no-progress, before or after the command (after it, they override the ones before)."""
    extra = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, help="what to log (default INFO)",
                        **({"default": "INFO"} if defaults else extra))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars",
                        **extra)


_COLORS = {"TRACE": "36", "DEBUG": "34", "INFO": "1", "SUCCESS": "32", "WARNING": "33", "ERROR": "31",
           "CRITICAL": "31;1"}


def use_color(stream: Any) -> bool:
    """Colors only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and bool(getattr(stream, "isatty", lambda: False)())


class _LineFormatter(logging.Formatter):
    """``12:03:41 INFO    OPRO step 2: ...``: the time, the level in words, the message; no module paths."""

    def __init__(self, color: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname: <7}"
        if self.color:
            level = f"\x1b[{_COLORS.get(record.levelname, '0')}m{level}\x1b[0m"
        line = f"{self.formatTime(record, self.datefmt)} {level} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _TqdmHandler(logging.Handler):
    """Log lines written through tqdm, so they do not tear a progress bar (to ``sys.stderr`` as it is then)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.target = stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.target or sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def setup_logging(level: str, stream: Any = None) -> None:
    """The CLI's log lines: ``dspy_icl_opt`` at ``level`` to stderr through tqdm; third-party loggers quiet."""
    ours = logging.getLogger("dspy_icl_opt")
    for handler in [h for h in ours.handlers if isinstance(h, _TqdmHandler)]:
        ours.removeHandler(handler)
    handler = _TqdmHandler(stream)
    handler.setFormatter(_LineFormatter(use_color(stream or sys.stderr)))
    ours.addHandler(handler)
    ours.setLevel(logging.getLevelName(level))
    quiet = logging.DEBUG if level in ("TRACE", "DEBUG") else logging.WARNING
    for name in ("dspy", "LiteLLM", "httpx", "datasets", "optuna"):
        logging.getLogger(name).setLevel(quiet)


def main(argv: list[str] | None = None) -> int:
    """The console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    # LiteLLM's price table ships with it; fetching a fresh copy would stall every start-up offline.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with _sigterm_as_interrupt():
        return _run(args)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a container stopping) ends a run as Ctrl-C does: summary written, status interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"error: {exc.describe()}", file=sys.stderr)
        return exc.exit_code
    except LMOutage as exc:
        print(f"error: language model problem: the model stopped answering, so the run stopped as interrupted with "
              f"nothing failed recorded; run the same command again once it answers to resume.\n  {exc}",
              file=sys.stderr)
        return exc.exit_code
    except LMProblem as exc:
        print(f"error: language model problem: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: reports and journals are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a message, the trace only at DEBUG
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    from dspy_icl_opt.pipeline.evaluate import lm_failure

    logging.getLogger("dspy_icl_opt.cli").debug("Traceback", exc_info=exc)
    if lm_failure(exc):
        print(f"error: language model problem: {type(exc).__name__}: {exc}", file=sys.stderr)
        return LMProblem.exit_code
    print(f"error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for the traceback)", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
