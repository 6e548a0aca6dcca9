"""Pool the rows of several ``bench_optimizers.py`` runs (one JSONL file per seed) and compare methods.

No LM call: it reads the files. For every method it prints the mean test accuracy and task calls
over every (seed, task) cell it has, and for each pair named with ``--pair A,B`` the cells both
have: a seed x task grid of both, how often A is above, level with or below B, and the mean
difference with its paired standard error. A row's seed is its ``seed`` field, else a ``seed<N>``
in its file's name, else the file's name itself (so rows of different files never mix unless they
name the same seed).

Run (the README's figures come from this command):
    python examples/benchmarks/summarize_runs.py examples/benchmarks/results/run_e_seed*.jsonl \
        --pair demos,bfsrs --pair demos,uncompiled --pair bfsrs,uncompiled
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path


def read_cells(paths: Sequence[str]) -> dict[tuple[str, str, str], dict]:
    """``{(method, seed, task): row}`` from the files (a later file's row wins)."""
    cells: dict[tuple[str, str, str], dict] = {}
    for path in paths:
        match = re.search(r"seed(\d+)", Path(path).name)
        default = match.group(1) if match else Path(path).name
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "skipped" not in row:
                    cells[(row["method"], str(row.get("seed", default)), row["task"])] = row
    return cells


def method_table(cells: dict[tuple[str, str, str], dict]) -> str:
    methods = list(dict.fromkeys(m for m, _, _ in cells))
    lines = ["| method | cells | mean test acc | mean task calls | mean prompt calls | steps run (planned) | start kept |",
             "|---|---|---|---|---|---|---|"]
    for method in methods:
        rows = [r for (m, _, _), r in cells.items() if m == method]
        acc = sum(r["test_accuracy"] for r in rows) / len(rows)
        calls = sum(r["task_calls"] for r in rows) / len(rows)
        prompt = sum(r.get("prompt_calls", 0) for r in rows) / len(rows)
        searched = [r for r in rows if r.get("steps") is not None]
        steps = (f"{sum(r['steps'] for r in searched) / len(searched):.1f} "
                 f"({sum(r.get('planned_steps') or 0 for r in searched) / len(searched):.1f})" if searched else "-")
        kept = [r["kept_start"] for r in rows if r.get("kept_start") is not None]
        kept_cell = f"{sum(kept)}/{len(kept)}" if kept else "-"
        lines.append(f"| {method} | {len(rows)} | {acc:.3f} | {calls:.1f} | {prompt:.1f} | {steps} | {kept_cell} |")
    return "\n".join(lines)


def pair_line(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> str:
    both = sorted((s, t) for m, s, t in cells if m == a and (b, s, t) in cells)
    if not both:
        return f"{a} vs {b}: no cell has both"
    diffs = [cells[(a, s, t)]["test_accuracy"] - cells[(b, s, t)]["test_accuracy"] for s, t in both]
    calls = [cells[(a, s, t)]["task_calls"] - cells[(b, s, t)]["task_calls"] for s, t in both]
    above, level = sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs)
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) if len(diffs) > 1 else 0.0
    se = f"{math.sqrt(var / len(diffs)):.3f}" if len(diffs) > 1 else "n/a, one cell"
    per_cell = ", ".join(f"seed {s} {t} {d:+.2f}" for (s, t), d in zip(both, diffs))
    return (f"{a} vs {b} on {len(both)} cells: above {above}, level {level}, below {len(both) - above - level}; "
            f"mean difference {mean:+.3f} (paired s.e. {se}); {a} spent {sum(calls) / len(calls):+.1f} task "
            f"calls per cell against {b}\n  {per_cell}")


def pair_grid(cells: dict[tuple[str, str, str], dict], a: str, b: str) -> str:
    """One line per seed, one column per task: ``A / B`` test accuracy (task calls)."""
    seeds = sorted({s for m, s, _ in cells if m in (a, b)}, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
    tasks = list(dict.fromkeys(t for m, _, t in cells if m in (a, b)))

    def cell(seed: str, task: str) -> str:
        parts = [cells.get((m, seed, task)) for m in (a, b)]
        return " / ".join("-" if r is None else f"{r['test_accuracy']:.2f} ({r['task_calls']})" for r in parts)

    lines = ["| seed | " + " | ".join(f"{t}: {a} / {b}" for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {seed} | " + " | ".join(cell(seed, t) for t in tasks) + " |" for seed in seeds]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="JSONL files written by bench_optimizers.py --out")
    parser.add_argument("--pair", action="append", default=[], metavar="A,B", help="compare method A with B")
    args = parser.parse_args(argv)
    cells = read_cells(args.files)
    print(method_table(cells))
    for pair in args.pair:
        a, _, b = pair.partition(",")
        print()
        print(pair_grid(cells, a, b))
        print()
        print(pair_line(cells, a, b))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
