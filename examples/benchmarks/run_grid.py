"""Fill the issues' benchmark grid in one command: tasks x seeded splits x methods, each cell one
``bench_optimizers.py`` process (the user's case: 40 train / 40 val / 100 test, 400 task + 40 prompt calls), at
most ``--lanes`` at once. Cells whose row is already written are skipped, so an interrupted grid resumes.

Each cell writes its own file, ``OUT_DIR/run_grid_<task>_seed<seed>_<method>.jsonl`` (one row, with the commit it
ran at), and its log beside it in ``OUT_DIR/logs/``. Two settings follow the issues' comparisons: the joint search
runs at about half of MIPROv2 (light)'s calls (``JOINT_ARGS``), and DemoSelector at the calls BFSRS spent on the same
cell (``--budget-from``), so it starts after that cell's BFSRS row exists.

On 2 cores run ``--lanes 2``: each embedded-model process then gets one llama.cpp thread (its default is half the
CPUs, so on a larger machine more lanes than 2 share the cores), and wall times are for two processes side by
side (rows record both). A row takes 15-80 minutes there.

Run:
    python examples/benchmarks/run_grid.py --dry-run                  # the cells left to run, nothing started
    python examples/benchmarks/run_grid.py --out-dir examples/benchmarks/results/grid --lanes 2
    python examples/benchmarks/summarize_runs.py examples/benchmarks/results/grid/*.jsonl --coverage --targets
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE / "bench_optimizers.py"
DEFAULT_OUT_DIR = HERE / "results" / "grid"
DEFAULT_TASKS = ("date_understanding", "disambiguation_qa", "hyperbaton", "reasoning_about_colored_objects")
DEFAULT_SEEDS = (0, 1, 2)
#: Issues 12-14's methods: the program as given, DSPy's optimizers, ours.
DEFAULT_METHODS = ("uncompiled", "copro", "gepa", "opro", "apo", "abo", "ape", "iterative_ape", "promptagent",
                   "bfsrs", "demos", "mipro_light", "joint")
#: The user's case of issues 12-14.
COMMON_ARGS = ("--budget", "400", "--prompt-budget", "40", "--train", "40", "--val", "40", "--test", "100")
#: About half of the 453-467 task + 14 prompt calls MIPROv2 (light) spent on hyperbaton and date_understanding
#: (issue 13: the joint search at most half of MIPROv2's calls).
JOINT_ARGS = ("--budget", "220", "--prompt-budget", "13")
#: Read by bench_optimizers.py: rows record how many processes ran side by side (their wall times depend on it).
SIDE_BY_SIDE_ENV = "DSPY_ICL_OPT_BENCH_SIDE_BY_SIDE"
#: A method run at the calls another method spent on the same cell: (method, reference method).
AT_CALLS_OF = {"demos": "bfsrs"}


@dataclass(frozen=True)
class Cell:
    task: str
    seed: int
    method: str

    def out(self, out_dir: Path) -> Path:
        return out_dir / f"run_grid_{self.task}_seed{self.seed}_{self.method}.jsonl"

    def log(self, out_dir: Path) -> Path:
        return out_dir / "logs" / f"{self.task}_seed{self.seed}_{self.method}.log"

    def reference(self) -> Cell | None:
        """The cell whose row sets this one's calls, if any."""
        method = AT_CALLS_OF.get(self.method)
        return None if method is None else Cell(self.task, self.seed, method)

    def __str__(self) -> str:
        return f"{self.task} seed {self.seed} {self.method}"


def has_row(cell: Cell, out_dir: Path, suffix: str = "") -> bool:
    """Whether the cell's file holds its row (a truncated last line, from a killed process, does not count, nor
    does a skipped method's). ``suffix``: what bench_optimizers.py appends to the method's name (``@<prompt lm>``)."""
    path = cell.out(out_dir)
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("task") == cell.task and row.get("method") == cell.method + suffix and "skipped" not in row:
            return True
    return False


def method_suffix(extra: Sequence[str]) -> str:
    """The suffix bench_optimizers.py gives its rows' method names for these pass-through arguments: ``@<prompt
    LM>`` when ``--prompt-lm`` names another model than ``--lm``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--lm", default="embedded")
    parser.add_argument("--prompt-lm", default=None)
    known, _ = parser.parse_known_args(list(extra))
    return f"@{known.prompt_lm}" if known.prompt_lm and known.prompt_lm != known.lm else ""


def plan_cells(tasks: Sequence[str], seeds: Sequence[int], methods: Sequence[str], out_dir: Path,
               suffix: str = "") -> list[Cell]:
    """The cells without a row, split by split (every method of split 0 on every task first), each reference
    method before the method that waits for it."""
    order = list(methods)
    for method, reference in AT_CALLS_OF.items():
        if method in order and reference in order and order.index(reference) > order.index(method):
            order.remove(reference)
            order.insert(order.index(method), reference)
    return [cell for seed in seeds for task in tasks for method in order
            if not has_row(cell := Cell(task, seed, method), out_dir, suffix)]


def command_for(cell: Cell, out_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """The ``bench_optimizers.py`` command of one cell."""
    command = [sys.executable, str(BENCH), "--tasks", cell.task, "--methods", cell.method, "--seed", str(cell.seed),
               *COMMON_ARGS, "--out", str(cell.out(out_dir))]
    if cell.method == "joint":
        command += JOINT_ARGS
    reference = cell.reference()
    if reference is not None:
        command += ["--budget-from", f"{reference.out(out_dir)}:{reference.method}{method_suffix(extra)}"]
    return command + list(extra)


def run_cells(cells: Sequence[Cell], out_dir: Path, *, lanes: int,
              command: Callable[[Cell], list[str]], poll_s: float = 5.0,
              say: Callable[[str], None] = print, suffix: str = "") -> dict[Cell, int | None]:
    """Run ``cells`` at most ``lanes`` at a time, in order, a cell that waits for a reference started once the
    reference's row exists (skipped, ``None``, if the reference ends without one). Returns each cell's exit code."""
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, codes = list(cells), {}, {}
    started: dict[Cell, float] = {}
    while pending or running:
        for cell, process in list(running.items()):
            if process.poll() is not None:
                codes[cell] = process.returncode
                del running[cell]
                say(f"{time.strftime('%H:%M:%S')} done {cell}: exit {process.returncode}, "
                    f"{time.monotonic() - started[cell]:.0f} s, "
                    f"row {'written' if has_row(cell, out_dir, suffix) else 'MISSING'}")
        for cell in list(pending):
            if len(running) >= lanes:
                break
            reference = cell.reference()
            if reference is not None and not has_row(reference, out_dir, suffix):
                waiting = reference in running or reference in pending
                if not waiting:
                    pending.remove(cell)
                    codes[cell] = None
                    say(f"{time.strftime('%H:%M:%S')} skipped {cell}: no {reference.method} row to take its calls from")
                continue
            pending.remove(cell)
            log = cell.log(out_dir).open("w")
            running[cell] = subprocess.Popen(command(cell), stdout=log, stderr=subprocess.STDOUT,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1", SIDE_BY_SIDE_ENV: str(lanes)})
            log.close()
            started[cell] = time.monotonic()
            say(f"{time.strftime('%H:%M:%S')} start {cell} ({len(running)}/{lanes} lanes busy)")
        if pending or running:
            time.sleep(poll_s)
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # an abbreviation of bench's options must reach bench
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR))
    parser.add_argument("--lanes", type=int, default=2, help="model processes at once (2 on 2 cores)")
    parser.add_argument("--dry-run", action="store_true", help="print the cells left to run and their commands")
    args, extra = parser.parse_known_args(argv)  # anything else goes to bench_optimizers.py (e.g. --prompt-lm)
    if args.lanes < 1:
        parser.error(f"--lanes must be >= 1, but got {args.lanes}")
    out_dir = Path(args.out_dir)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    suffix = method_suffix(extra)
    cells = plan_cells(args.tasks.split(","), seeds, args.methods.split(","), out_dir, suffix)
    print(f"{len(cells)} cell(s) to run in {out_dir}")
    if args.dry_run:
        for cell in cells:
            print(" ".join(command_for(cell, out_dir, extra)))
        return 0
    codes = run_cells(cells, out_dir, lanes=args.lanes, command=lambda cell: command_for(cell, out_dir, extra),
                      suffix=suffix)
    failed = [cell for cell, code in codes.items() if code != 0]
    print(f"{len(codes) - len(failed)} cell(s) ran, {len(failed)} failed or skipped" +
          "".join(f"\n  {cell}" for cell in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
