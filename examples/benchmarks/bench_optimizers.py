"""Side-by-side benchmark: held-out accuracy of optimizers at (about) the same task-model call budget.

Every method compiles the same bundled program on the same splits with the same LMs; the LMs are
wrapped in meters, so the task-model and prompt-model calls each method really made are counted
(DSPy's own optimizers included). Ours get ``--budget`` as a hard task-call cap (final validation
included); DSPy's are configured to spend about the same and their real count is printed next to
their accuracy. DSPy's response cache is off, so every call counts.

Run (the README's figures come from the three commands it shows, of this form):
    python examples/benchmarks/bench_optimizers.py --tasks date_understanding,disambiguation_qa,hyperbaton \
        --methods uncompiled,copro,opro --budget 80 --test 50 --pivot --out results.jsonl

Methods: uncompiled, zeroshot_cot, copro, opro, apo, ape, iterative_ape, gepa, abo, abo_nodemo, promptagent,
bfsrs, mipro, mipro_light, joint, demos, opro+demos, soft, opro+soft (the last two need the ``soft`` extra and
a local task model; the soft prompt's validation generations count as task calls, its training passes are
in the report only). A method whose module is missing is reported as skipped. A chain's row also scores on the
test set the program each earlier step handed on ("stages"), so "hard then soft" sits beside the hard prompt it
started from; every row carries the process's peak resident memory ("peak_rss_mb").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
from loguru import logger

from dspy_icl_opt.lm import resolve_lm
from dspy_icl_opt.search.budget import Budget, BudgetMeter, MeteredLM
from dspy_icl_opt.programs import load_task, make_program

#: DSPy optimizers cannot be capped from outside without corrupting their scores, so they are sized.
#: COPRO scores ``breadth`` instructions on the whole trainset at each of ``depth`` rounds: two rounds (one
#: refinement) and as wide as ``--budget`` pays for, so it spends the task calls ours are capped at
#: (breadth 5 at 400 calls and 40 training examples; until the change, breadth 4 spent 320 there).
COPRO_DEPTH = 2
BFSRS_DEMOS = 4
#: DemoSelector plans its trials, minibatches and final validation from --budget like OPRO and APO do;
#: only the prompt size is fixed, as BFSRS's (BFSRS_DEMOS).
DEMOS_SETTINGS = {"max_demos": BFSRS_DEMOS}
#: SoftPromptTuner's defaults, named here so a benchmark row says what ran.
SOFT_SETTINGS = {"method": "prompt_tuning", "num_virtual_tokens": 8, "learning_rate": 1e-3, "epochs": 3}


def evaluate(program: dspy.Module, examples: list[dspy.Example], metric: Callable, lm: dspy.BaseLM) -> float:
    evaluator = dspy.Evaluate(devset=examples, metric=metric, num_threads=1, display_progress=False,
                              failure_score=0.0, max_errors=len(examples) + 1)
    with dspy.context(lm=lm):
        return float(evaluator(program).score) / 100.0


def method_registry() -> dict[str, Callable[..., dspy.Module]]:
    return {
        "uncompiled": lambda ctx: ctx["program"],
        # the program as given, answered in PyTorch on float32 weights as a soft prompt's answers are
        "uncompiled_fp32": _uncompiled_fp32,
        "zeroshot_cot": _zeroshot_cot,
        "copro": _copro,
        # ours run with their defaults: each plans its steps from the budget it is given
        "opro": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.opro", "OPRO"),
        "apo": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.apo", "APO"),
        "ape": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.ape", "APE"),
        # APE's search scored by the gold answer's probability (the paper's log-probability score)
        "ape_likelihood": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.ape", "APE", scoring="likelihood"),
        "iterative_ape": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.ape", "IterativeAPE"),
        "abo": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.abo", "ABO"),
        "abo_nodemo": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.abo", "ABO", demonstration=False),
        "promptagent": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.promptagent", "PromptAgent"),
        "demos": lambda ctx: _ours(ctx, "dspy_icl_opt.demos", "DemoSelector", **DEMOS_SETTINGS),
        "opro+demos": _opro_then_demos,
        "soft": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.soft_prompt", "SoftPromptTuner", **SOFT_SETTINGS),
        "opro+soft": _opro_then_soft,
        "gepa": _gepa,
        "bfsrs": _bfsrs,
        "mipro": _mipro,
        "mipro_light": _mipro_light,
        # MIPROv2's drop-in, held to --budget / --prompt-budget (its own plan)
        "joint": lambda ctx: _ours(ctx, "dspy_icl_opt.optimizers.joint", "InstructionDemoSearch"),
    }


def _uncompiled_fp32(ctx: dict[str, Any]) -> dspy.Module:
    """The control for a soft prompt's row: SoftPromptTuner's program answers through PyTorch on the task
    model's dequantized float32 weights, the program as given through llama.cpp on its Q4 weights; this
    runs the program as given the first way, so the two rows differ by the soft prompt alone."""
    from dspy_icl_opt.lm.soft_programs import soft_lm_settings
    from dspy_icl_opt.lm.transformers_engine import transformers_lm

    program = ctx["program"].deepcopy()
    lm = transformers_lm("embedded", **soft_lm_settings(ctx["task_lm"]))
    for _, predictor in program.named_predictors():
        predictor.lm = lm
    return program


def _zeroshot_cot(ctx: dict[str, Any]) -> dspy.Module:
    program = make_program("cot", ctx["task"])
    for _, predictor in program.named_predictors():
        predictor.signature = predictor.signature.with_instructions(
            predictor.signature.instructions + " Let's think step by step.")
    return program


def _ours(ctx: dict[str, Any], module: str, name: str, **params: Any) -> dspy.Module:
    import importlib

    cls = getattr(importlib.import_module(module), name)
    optimizer = cls(ctx["metric"], task_model=ctx["task_lm"], prompt_model=ctx["prompt_lm"],
                    budget=Budget(max_task_calls=ctx["budget"], max_prompt_calls=ctx["prompt_budget"]),
                    seed=ctx["seed"], progress=False, **params)
    program = optimizer.compile(ctx["program"], trainset=ctx["train"], valset=ctx["val"])
    ctx["report"] = optimizer.report_
    # What the optimizer itself counted: a soft prompt's validation runs on an LM of its own (PyTorch),
    # which the benchmark's meter does not see. Chained steps add up (their dict(ctx) copies share it).
    for side in ctx["counted"]:
        ctx["counted"][side] += optimizer.report_.spent[side].calls
    # Each step of a chain, so a row can say what the steps before the last one gave on their own.
    ctx["stages"].append({"optimizer": name, "program": program, "report": optimizer.report_})
    return program


def _opro_then_demos(ctx: dict[str, Any]) -> dspy.Module:
    half = dict(ctx, budget=ctx["budget"] // 2, prompt_budget=ctx["prompt_budget"])
    # On half the budget OPRO validates one finalist (and the seed), so that its steps keep room.
    half["program"] = _ours(half, "dspy_icl_opt.optimizers.opro", "OPRO")
    program = _ours(half, "dspy_icl_opt.demos", "DemoSelector", **DEMOS_SETTINGS)
    ctx["report"] = half["report"]  # DemoSelector's, with its k curve
    return program


def _opro_then_soft(ctx: dict[str, Any]) -> dspy.Module:
    """OPRO writes the instruction on half the task calls; a soft prompt is trained under it on the other half."""
    half = dict(ctx, budget=ctx["budget"] // 2, prompt_budget=ctx["prompt_budget"])
    half["program"] = _ours(half, "dspy_icl_opt.optimizers.opro", "OPRO")
    program = _ours(half, "dspy_icl_opt.optimizers.soft_prompt", "SoftPromptTuner", **SOFT_SETTINGS)
    ctx["report"] = half["report"]  # SoftPromptTuner's, with its training curve
    return program


def copro_breadth(budget: int, train: int) -> int:
    """COPRO's breadth for ``COPRO_DEPTH`` rounds on ``train`` examples within ``budget`` task calls (at least 2,
    COPRO's minimum)."""
    return max(2, budget // (COPRO_DEPTH * max(1, train)))


def _copro(ctx: dict[str, Any]) -> dspy.Module:
    from dspy.teleprompt import COPRO

    breadth = copro_breadth(ctx["budget"], len(ctx["train"]))
    ctx["settings"] = {"breadth": breadth, "depth": COPRO_DEPTH}
    optimizer = COPRO(prompt_model=ctx["prompt_lm"], metric=ctx["metric"], breadth=breadth, depth=COPRO_DEPTH,
                      init_temperature=1.0)
    with dspy.context(lm=ctx["task_lm"]):
        return optimizer.compile(ctx["program"], trainset=ctx["train"],
                                 eval_kwargs={"num_threads": 1, "display_progress": False})


def _gepa(ctx: dict[str, Any]) -> dspy.Module:
    metric = ctx["metric"]

    def gepa_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        return float(metric(gold, pred, trace))

    optimizer = dspy.GEPA(metric=gepa_metric, max_metric_calls=ctx["budget"], reflection_lm=ctx["prompt_lm"],
                          seed=ctx["seed"], num_threads=1)
    with dspy.context(lm=ctx["task_lm"]):
        return optimizer.compile(ctx["program"], trainset=ctx["train"], valset=ctx["val"])


def _bfsrs(ctx: dict[str, Any]) -> dspy.Module:
    from dspy.teleprompt import BootstrapFewShotWithRandomSearch

    per_candidate = len(ctx["val"]) + len(ctx["train"]) // 2
    candidates = max(1, ctx["budget"] // per_candidate - 3)
    optimizer = BootstrapFewShotWithRandomSearch(metric=ctx["metric"], max_bootstrapped_demos=BFSRS_DEMOS,
                                                 max_labeled_demos=BFSRS_DEMOS, num_candidate_programs=candidates,
                                                 num_threads=1)
    with dspy.context(lm=ctx["task_lm"]):
        return optimizer.compile(ctx["program"], trainset=ctx["train"], valset=ctx["val"])


def _mipro(ctx: dict[str, Any]) -> dspy.Module:
    from dspy.teleprompt import MIPROv2

    optimizer = MIPROv2(metric=ctx["metric"], prompt_model=ctx["prompt_lm"], task_model=ctx["task_lm"], auto=None,
                        num_candidates=4, max_bootstrapped_demos=2, max_labeled_demos=2, num_threads=1,
                        seed=ctx["seed"], verbose=False)
    trials = max(1, ctx["budget"] // max(1, len(ctx["val"])) - 2)
    with dspy.context(lm=ctx["task_lm"]):
        return optimizer.compile(ctx["program"], trainset=ctx["train"], valset=ctx["val"], num_trials=trials,
                                 minibatch=False)


def _mipro_light(ctx: dict[str, Any]) -> dspy.Module:
    """MIPROv2 as users run it, ``auto="light"``: the comparison row for "joint" (its calls are only counted)."""
    from dspy.teleprompt import MIPROv2

    optimizer = MIPROv2(metric=ctx["metric"], prompt_model=ctx["prompt_lm"], task_model=ctx["task_lm"], auto="light",
                        num_threads=1, seed=ctx["seed"], verbose=False)
    with dspy.context(lm=ctx["task_lm"]):
        return optimizer.compile(ctx["program"], trainset=ctx["train"], valset=ctx["val"],
                                 minibatch_size=max(1, min(35, len(ctx["val"]))))


def run_method(name: str, task_name: str, args: argparse.Namespace, lms: tuple[dspy.BaseLM, dspy.BaseLM],
               budget: int | None = None, prompt_budget: int | None = None) -> dict:
    task = load_task(task_name, seed=args.seed, train_size=args.train, val_size=args.val, test_size=args.test)
    meter = BudgetMeter(Budget())
    task_lm, prompt_lm = MeteredLM(lms[0], meter, "task"), MeteredLM(lms[1], meter, "prompt")
    ctx = {"task": task, "program": make_program(args.program, task), "metric": task.metric, "train": task.train,
           "val": task.val, "task_lm": task_lm, "prompt_lm": prompt_lm, "seed": args.seed,
           "budget": args.budget if budget is None else budget,
           "prompt_budget": args.prompt_budget if prompt_budget is None else prompt_budget,
           "counted": {"task": 0, "prompt": 0}, "stages": []}
    started = time.perf_counter()
    try:
        program = method_registry()[name](ctx)
    except ImportError as exc:
        return {"task": task_name, "method": name, "skipped": f"not available: {exc}"}
    compile_s = time.perf_counter() - started
    spent, counted = meter.snapshot(), ctx["counted"]
    accuracy = evaluate(program, task.test, task.metric, lms[0])
    row = {"task": task_name, "method": name, "seed": args.seed, "test_accuracy": round(accuracy, 4),
           "budget": ctx["budget"], "prompt_budget": ctx["prompt_budget"],
           "sizes": {"train": args.train, "val": args.val, "test": args.test},
           "task_calls": max(spent["task"].calls, counted["task"]),
           "prompt_calls": max(spent["prompt"].calls, counted["prompt"]),
           "tokens": spent["task"].tokens + spent["prompt"].tokens, "compile_s": round(compile_s, 1),
           # what the method handed back, for any method (DSPy's have no report): instruction and demo count
           "final_program": _program_summary(program)}
    if "settings" in ctx:  # how a DSPy optimizer was sized to the budget
        row["settings"] = ctx["settings"]
    if len(ctx["stages"]) > 1:  # a chain: the program each earlier step handed on, scored on the same test set
        row["stages"] = [_stage_row(stage, task, lms[0]) for stage in ctx["stages"][:-1]]
    # The process's peak resident memory so far (Linux reports KiB): with one method per process, the run's.
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if "report" in ctx:
        report = ctx["report"]
        row["stopped_by_budget"] = report.stopped_by_budget
        row.update(_search_figures(report))
        if "k_curve" in ctx["report"].extra:  # DemoSelector: accuracy against the number of demos
            row["k_curve"] = ctx["report"].extra["k_curve"]
        if "soft_prompt" in ctx["report"].extra:  # SoftPromptTuner: loss and validation per epoch, training spent
            soft = ctx["report"].extra["soft_prompt"]
            row["soft_prompt"] = {key: soft.get(key) for key in ("epochs", "training", "start_val", "chosen_epoch")}
    logger.info("{}", row)
    return row


def _program_summary(program: dspy.Module) -> dict[str, dict[str, Any]]:
    """Each predictor's instruction (cut to 500 characters) and number of demos."""
    return {name: {"instruction": predictor.signature.instructions[:500], "demos": len(predictor.demos)}
            for name, predictor in program.named_predictors()}


def _stage_row(stage: dict, task: Any, lm: dspy.BaseLM) -> dict[str, Any]:
    """One earlier step of a chain: its calls, its search figures and its program's test accuracy alone."""
    report = stage["report"]
    return {"optimizer": stage["optimizer"],
            "test_accuracy": round(evaluate(stage["program"], task.test, task.metric, lm), 4),
            "task_calls": report.spent["task"].calls, "prompt_calls": report.spent["prompt"].calls,
            **_search_figures(report)}


def _final_table(report: Any, choice: dict) -> list[dict[str, Any]]:
    """The start and each finalist at the final choice: its search scores (what ranked it) beside its validation
    score and paired gain over the start, so a row shows whether the search's ranking held on new examples."""
    by_id = {record.id: record for record in report.candidates}
    table = []
    for entry in choice.get("contenders", []):
        record = by_id.get(entry["candidate"])
        search = {k: round(v, 4) for k, v in (record.scores if record else {}).items() if k != "val"}
        table.append({"candidate": entry["candidate"], "origin": record.origin if record else None,
                      "search": search, "val": round(entry["val"], 4), "gain": entry["gain"], "se": entry["se"],
                      "passed": entry["passed"],
                      # chosen: the finalist the rule took; level: within a paired s.e. of the validation leader
                      "chosen": entry["candidate"] == choice.get("chosen"),
                      **({"level_with_leader": entry["level_with_leader"]} if "level_with_leader" in entry else {})})
    return table


def _joint_trials(joint: dict[str, Any] | None) -> dict[str, Any] | None:
    if not joint:
        return None
    rows = [{"candidate": r["candidate"], "phase": r["phase"], "value": r["value"], "examples": r["examples"],
             **({"full": r["full"]} if "full" in r else {}),
             "choice": {n: {k: v for k, v in c.items() if k in ("instruction", "instruction_origin", "demo_set", "k")}
                        for n, c in r["choice"].items()}} for r in joint.get("trials", [])]
    return {"trials": rows, "repeats_told": joint.get("repeats_told", 0),
            "programs": len({r["candidate"] for r in rows}), "full_evaluations": sum("full" in r for r in rows)}


def _search_figures(report: Any) -> dict[str, Any]:
    """What tells whether the search worked: steps run against the plan, the start kept or not, how
    well each meta-prompt was answered, and how often the task model's answer could not be read."""
    plan = report.extra.get("plan") or {}
    choice = report.extra.get("final_choice") or {}
    return {"steps": report.steps_completed, "planned_steps": plan.get("steps"),
            "kept_start": choice.get("chosen") == choice.get("start") if choice else None,
            "val_examples": choice.get("examples"), "final_choice": _final_table(report, choice),
            "meta_prompts": report.extra.get("meta_prompts", {}),
            # answers that were not instructions (search/proposals.py), by reason
            "rejected_proposals": report.extra.get("rejected_proposals", {}),
            # copies, questions and texts about one example, scored since 7bd4ced (check_proposals=True)
            "admitted_proposals": report.extra.get("admitted_proposals", {}),
            # APE / Iterative-APE: prompt calls of each proposing phase, and whether its share cut it short
            "proposing": report.extra.get("proposing"),
            # ABO: prompt calls spent writing demonstrations (retries included)
            "demonstration_calls": report.extra.get("demonstration_calls"),
            # ABO: demonstrations with which none of the task model's first answers could be read (not scored on)
            "unreadable_demonstrations": report.extra.get("unreadable_demonstrations"),
            # InstructionDemoSearch: its trials (choice, value, full evaluation) and the repeats told for free
            "joint_trials": _joint_trials(report.extra.get("joint")),
            "task_parse_failures": getattr(report.counters, "task_parse_failures", 0),
            "candidates": len(report.candidates),
            # every program state the search scored, for instruction_ceiling.py to score on the test set
            "candidate_states": [{"id": r.id, "step": r.step, "origin": r.origin, "state": r.state,
                                  "scores": {k: round(v, 4) for k, v in r.scores.items()}}
                                 for r in report.candidates]}


def _parser() -> argparse.ArgumentParser:
    """The command line: tasks, methods, budgets, split sizes, LMs and where rows go."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="date_understanding,disambiguation_qa,hyperbaton")
    parser.add_argument("--methods", default="uncompiled,copro,opro")
    parser.add_argument("--program", default="qa")
    parser.add_argument("--budget", type=int, default=120, help="task-model calls per method")
    parser.add_argument("--prompt-budget", type=int, default=30, help="prompt-model calls per method (ours)")
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--val", type=int, default=10)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm", default="embedded")
    parser.add_argument("--prompt-lm", default=None,
                        help="prompt model, if not --lm (e.g. embedded-1.5b, the proposer extra); its rows are "
                             "named METHOD@PROMPT_LM so the search and the proposer are measured apart")
    parser.add_argument("--pivot", action="store_true", help="also print a method x task table of accuracy (task calls)")
    parser.add_argument("--budget-from", default=None, metavar="FILE:METHOD",
                        help="cap each task's --budget at the task calls METHOD's row for that task spent in FILE "
                             "(e.g. results.jsonl:bfsrs), so a method gets no more calls than the reference did")
    parser.add_argument("--calls-from", default=None, metavar="FILE:METHOD",
                        help="cap each task's --budget and --prompt-budget at the task and prompt calls METHOD's row "
                             "for that task spent in FILE (e.g. results.jsonl:copro), and name the rows "
                             "METHOD@REF-calls: a method measured at no more calls of either model than the reference")
    parser.add_argument("--out", default=None,
                        help="append each row to this JSONL file as it finishes; rows already there are kept and "
                             "not run again, so an interrupted benchmark resumes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    from dspy_icl_opt.pipeline.cli import setup_logging  # the library logs through `logging`, quiet by default

    setup_logging("INFO")
    if any("soft" in m or "fp32" in m for m in args.methods.split(",")):
        import torch

        torch.set_num_threads(1)  # one thread per model process, as llama.cpp's n_threads=1 (two share the 2 cores)
    task_lm = resolve_lm(args.lm, temperature=0.0, max_tokens=256, cache=False)
    prompt_lm = resolve_lm(args.prompt_lm or args.lm, temperature=1.0, max_tokens=400, cache=False)
    suffix = f"@{args.prompt_lm}" if args.prompt_lm and args.prompt_lm != args.lm else ""
    if args.calls_from:
        suffix += f"@{args.calls_from.rpartition(':')[2]}-calls"
    done, commit = _read_rows(args.out), _commit()  # the code this process imported
    machine = machine_fingerprint()  # rows pair only with rows whose model ran the same kernels
    if machine["machine"] != REFERENCE_MACHINE and args.lm.startswith("embedded"):
        logger.warning("This llama.cpp build ({}) is not the one the committed rows were measured with ({}): its rows "
                       "pair only with rows of this build. For rows that pair with results/, rebuild llama-cpp-python "
                       "with CMAKE_ARGS=\"{}\".", machine["machine"], REFERENCE_MACHINE, REFERENCE_CMAKE_ARGS)
    # what a row's wall time was measured beside: model processes side by side (run_grid.py sets it) and threads
    machine["machine_info"]["side_by_side"] = int(os.environ.get(SIDE_BY_SIDE_ENV, "1"))
    machine["machine_info"]["n_threads"] = getattr(getattr(task_lm, "engine", None), "n_threads", None)
    rows = []
    for t in args.tasks.split(","):
        for m in args.methods.split(","):
            row = done.get((t, m + suffix))
            if row is None:
                budget, prompt_budget = _reference_budget(args.budget_from, t, args.budget), args.prompt_budget
                if args.calls_from:
                    budget, prompt_budget = _reference_calls(args.calls_from, t, budget, prompt_budget)
                row = dict(run_method(m, t, args, (task_lm, prompt_lm), budget, prompt_budget), commit=commit,
                           **machine)
                row["method"] = m + suffix
                _append_row(args.out, row)
            rows.append(row)
    print(render_table(rows))
    if args.pivot:
        print()
        print(render_pivot(rows))
    for row in rows:
        if "k_curve" in row:
            print(f"k curve ({row['task']}, {row['method']}): {json.dumps(row['k_curve'])}")
    return 0


def _read_rows(path: str | None) -> dict[tuple[str, str], dict]:
    """The rows already in ``path`` by (task, method): a line a killed process left half-written is not a row,
    nor is a skipped method's (it is run again)."""
    if not path or not Path(path).exists():
        return {}
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip():
                logger.warning("{}: a line that is not a row (half-written?) is ignored", path)
    return {(r["task"], r["method"]): r for r in rows if "skipped" not in r}


def _reference_budget(spec: str | None, task: str, budget: int) -> int:
    """``budget``, or less: what the reference method's row for ``task`` spent (``FILE:METHOD``)."""
    if not spec:
        return budget
    return min(budget, int(_reference_row(spec, task, "--budget-from")["task_calls"]))


def _reference_calls(spec: str, task: str, budget: int, prompt_budget: int) -> tuple[int, int]:
    """``budget`` and ``prompt_budget``, or less: the task and prompt calls the reference row for ``task`` spent."""
    row = _reference_row(spec, task, "--calls-from", "prompt_calls")
    return min(budget, int(row["task_calls"])), min(prompt_budget, int(row["prompt_calls"]))


def _reference_row(spec: str, task: str, flag: str, *needed: str) -> dict:
    """The reference method's row for ``task`` (``FILE:METHOD``), with its task calls and ``needed`` fields."""
    path, _, method = spec.rpartition(":")
    row = _read_rows(path).get((task, method)) if path else None
    if row is None or any(key not in row for key in ("task_calls", *needed)):
        raise SystemExit(f"{flag} {spec}: no {method!r} row for task {task!r} in {path!r}; run it first.")
    return row


def _append_row(path: str | None, row: dict) -> None:
    """Append ``row`` as one line, on a line of its own even after a half-written one."""
    if path:
        target = Path(path)
        broken = False
        if target.exists() and target.stat().st_size > 0:
            with target.open("rb") as tail:  # only the last byte: is the file's last line whole?
                tail.seek(-1, 2)
                broken = tail.read(1) != b"\n"
        with target.open("a") as handle:
            handle.write(("\n" if broken else "") + json.dumps(row) + "\n")


#: The llama.cpp build the committed rows were measured with: llama-cpp-python 0.3.36 built for AVX2 without
#: AVX-512 (``machine`` c5a720e7 on x86_64). The program as given scores 0.37 on disambiguation_qa split 0 with it
#: and 0.34 with an AVX-512 build of the same version on the same machine, so rows pair only within one build. To
#: add rows that pair with results/, build llama-cpp-python with these flags (``pip install --no-binary
#: llama-cpp-python --no-cache-dir ...`` with them in ``CMAKE_ARGS``).
REFERENCE_MACHINE = "c5a720e7"
REFERENCE_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
                        "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")

#: How many benchmark processes run side by side (set by run_grid.py to its --lanes); rows record it with their
#: wall time.
SIDE_BY_SIDE_ENV = "DSPY_ICL_OPT_BENCH_SIDE_BY_SIDE"


def machine_fingerprint() -> dict[str, Any]:
    """What decides the embedded model's numerics: llama-cpp-python's version and the CPU features its build
    uses (``llama_print_system_info``). The same program as given scored 0.37 on one machine's build and 0.34
    on another's (disambiguation_qa split 0, greedy decoding), so a row records ``machine`` (a short hash) and
    ``machine_info``, and ``summarize_runs.py`` pairs only rows of the same machine."""
    import hashlib
    import platform

    info: dict[str, Any] = {"platform": platform.machine()}
    try:
        import llama_cpp

        info["llama_cpp"] = llama_cpp.__version__
        info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception as exc:  # no local model engine: the rows of a served model share one tag per platform
        info["llama_cpp"] = f"unavailable ({type(exc).__name__})"
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:8]
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {"machine": digest, "machine_info": {**info, "cpu": cpu}}


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_pivot(rows: list[dict]) -> str:
    """One line per method: test accuracy (task calls) on each task, then the means."""
    done = [r for r in rows if "skipped" not in r]
    tasks = list(dict.fromkeys(r["task"] for r in done))
    methods = list(dict.fromkeys(r["method"] for r in done))
    cell = {(r["method"], r["task"]): r for r in done}
    lines = ["| method | " + " | ".join(tasks) + " | mean acc | mean task calls |", "|---" * (len(tasks) + 3) + "|"]
    for m in methods:
        mine = [cell[(m, t)] for t in tasks if (m, t) in cell]
        cells = [f"{cell[(m, t)]['test_accuracy']:.2f} ({cell[(m, t)]['task_calls']})" if (m, t) in cell else "-"
                 for t in tasks]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_means(mine)} |")
    return "\n".join(lines)


def render_table(rows: list[dict]) -> str:
    head = "| task | method | test acc | task calls | prompt calls | tokens | compile s |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['task']} | {r['method']} | skipped | | | | |")
            continue
        lines.append(f"| {r['task']} | {r['method']} | {r['test_accuracy']:.3f} | {r['task_calls']} | "
                     f"{r['prompt_calls']} | {r['tokens']} | {r['compile_s']} |")
    methods = sorted({r["method"] for r in rows if "skipped" not in r}, key=[r["method"] for r in rows].index)
    lines.append("")
    lines.append("| method | mean test acc | mean task calls |")
    lines.append("|---|---|---|")
    for m in methods:
        mine = [r for r in rows if r["method"] == m and "skipped" not in r]
        lines.append(f"| {m} | {_means(mine)} |")
    return "\n".join(lines)


def _means(rows: list[dict]) -> str:
    """Mean test accuracy and mean task calls of ``rows``, as two table cells."""
    acc = sum(r["test_accuracy"] for r in rows) / len(rows)
    calls = sum(r["task_calls"] for r in rows) / len(rows)
    return f"{acc:.3f} | {calls:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
