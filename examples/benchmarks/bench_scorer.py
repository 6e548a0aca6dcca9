"""The cached scorer against dspy.Evaluate on the same program and examples.

Prints the wall time of each on a first pass (same LM calls), the ratio scorer / Evaluate (target:
<= 1.0, i.e. no slower), and the LM calls of a second pass over the same pairs (target: 0 for the
scorer). Both run single-threaded, interleaved, with DSPy's response cache off.

By default the task model is a simulated LM with a fixed latency per call (the overhead is what is
measured); ``--lm embedded`` uses the real embedded model instead (slower; use few examples).

Run:
    python examples/benchmarks/bench_scorer.py                       # simulated LM, 200 examples
    python examples/benchmarks/bench_scorer.py --lm embedded --n 10  # the real model
"""

from __future__ import annotations

import argparse
import time

import dspy

from dspy_icl_opt.search import BudgetMeter, Journal, MeteredLM, read_state
from dspy_icl_opt.search.report import Counters
from dspy_icl_opt.search.scorer import Scorer
from dspy_icl_opt.testing import planted_rule_task, simulated_task_lm


def slow(solve, latency_s: float):
    def solve_slowly(inputs):
        time.sleep(latency_s)
        return solve(inputs)

    return solve_slowly


def make_lm(args: argparse.Namespace, task) -> tuple[dspy.BaseLM, callable]:
    if args.lm == "simulated":
        lm = simulated_task_lm(solve=slow(task.solve, args.latency_ms / 1000), knows=task.knows())
        return lm, lambda: lm.engine.call_count
    from dspy_icl_opt.lm import resolve_lm

    lm = resolve_lm(args.lm, temperature=0.0, max_tokens=64, cache=False)
    metered = MeteredLM(lm, BudgetMeter(), "task")
    return metered, lambda: metered._meter.spent["task"].calls


def run_evaluate(program, examples, metric, lm) -> float:
    evaluate = dspy.Evaluate(devset=examples, metric=metric, num_threads=1, display_progress=False)
    started = time.perf_counter()
    with dspy.context(lm=lm):
        evaluate(program)
    return time.perf_counter() - started


def run_scorer(program, examples, metric, lm) -> tuple[float, Scorer]:
    meter = BudgetMeter()
    scorer = Scorer(program, metric, task_lm=MeteredLM(lm, meter, "task"), meter=meter, journal=Journal(None),
                    counters=Counters(), num_threads=1, progress=False)
    started = time.perf_counter()
    scorer.evaluate(read_state(program), examples)
    return time.perf_counter() - started, scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", default="simulated")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    task = planted_rule_task("vowels", train_size=args.n, val_size=1, seed=0)
    program = task.program(instructions=f"Please {task.rule}.")
    lm, calls = make_lm(args, task)
    evaluate_s, scorer_s = [], []
    for _ in range(args.repeats):
        evaluate_s.append(run_evaluate(program, task.train, task.metric, lm))
        seconds, scorer = run_scorer(program, task.train, task.metric, lm)
        scorer_s.append(seconds)
    before = calls()
    scorer.evaluate(read_state(program), task.train)
    second_pass_calls = calls() - before
    best_eval, best_scorer = min(evaluate_s), min(scorer_s)
    print(f"examples: {args.n}, lm: {args.lm}, repeats: {args.repeats} (best of each)")
    print(f"dspy.Evaluate first pass: {best_eval:.3f} s")
    print(f"Scorer first pass:        {best_scorer:.3f} s")
    print(f"ratio scorer/Evaluate:    {best_scorer / best_eval:.3f}  (target <= 1.0)")
    print(f"Scorer second pass LM calls: {second_pass_calls}  (target 0)")


if __name__ == "__main__":
    main()
